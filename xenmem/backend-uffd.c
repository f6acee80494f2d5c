/* xenmem's uffd backend: a test guest that runs here, under the kernel's
 * own dirty tracking.
 *
 * The guest is an anonymous private mapping (its RAM) and one thread (its
 * vCPU).  The vCPU keeps all the state that matters in page 0 of that RAM,
 * loading and storing it through memory every iteration, so a copy of the
 * RAM taken while it is parked is the whole guest.  Each iteration bumps a
 * counter and, when its dirty budget allows, writes a value derived from
 * the counter into a pseudo-random word of a pseudo-random page of its
 * dirty region, keeping in page 0 the XOR of every word of that region.
 * At any parked point XOR(region) == checksum; a migration that loses or
 * tears a single write breaks that equation, which is what check_dest
 * looks for (besides the counter going on from where it was).
 *
 * Dirty log: userfaultfd write-protect in asynchronous mode (Linux 6.7+):
 * the kernel resolves write faults on protected pages itself, noting them
 * as written, and the PAGEMAP_SCAN ioctl on /proc/self/pagemap returns the
 * written ranges and protects them again in one atomic walk — the
 * mechanism CRIU uses for incremental dumps.  Neither KVM nor Xen is
 * needed.
 *
 * Pause is host-side: a flag and a condition variable in struct guest
 * (not in guest RAM, which would migrate a pause request).  The vCPU looks
 * at the flag between iterations, records in page 0 that it stopped, and
 * parks; a parked guest is at a consistent point by construction. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>
#include <linux/userfaultfd.h>

#include "backend.h"
#include "log.h"

/* The uapi this needs is newer than Debian 12's 6.1 headers; the values
 * are the kernel's ABI (include/uapi/linux/userfaultfd.h and fs.h, 6.7). */
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef PAGEMAP_SCAN
struct page_region {
  uint64_t start, end, categories;
};
struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask;
  uint64_t return_mask;
};
#define PAGEMAP_SCAN _IOWR ('f', 16, struct pm_scan_arg)
#endif
#ifndef PAGE_IS_WRITTEN
#define PAGE_IS_WRITTEN (1 << 1)
#endif
#ifndef PM_SCAN_WP_MATCHING
#define PM_SCAN_WP_MATCHING (1 << 0)
#endif
#ifndef PM_SCAN_CHECK_WPASYNC
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#endif

/* Guest RAM: a multiple of 2 MiB, at least 4 MiB (as for the kvm guest). */
#define MIN_PAGES 1024u
#define PAGES_ALIGN 512u
/* Bound on RAM so that byte sizes never overflow anything downstream. */
#define MAX_PAGES (UINT64_C (1) << 36)

/* ---- the guest's own state, page 0 of its RAM ------------------------ */

#define GST_MAGIC "XMUFGST1"
#define GST_VERSION 1

struct guest_state {
  char magic[8];
  uint32_t version;
  uint32_t stop_req;            /* the vCPU saw a pause request ... */
  uint32_t parked;              /* ... and parked: set in every image taken
                                 * at pause, cleared when it runs again */
  uint32_t pad;
  uint64_t counter;             /* iterations, one per loop */
  uint64_t rng;                 /* xorshift64 state, never 0 */
  uint64_t checksum;            /* XOR of every word of the region */
  uint64_t region_start;        /* dirty region, in pages */
  uint64_t region_len;
  uint64_t rate;                /* bytes/s of pages to dirty */
  uint64_t budget;              /* micro-bytes, BUDGET_PAGE per page */
  uint64_t budget_t;            /* CLOCK_MONOTONIC ns of the last refill:
                                 * this host's clock, reset on resume */
  uint64_t writes;              /* pages written so far */
};

/* Token budget, in micro-bytes: elapsed ns * bytes/s / 1000 adds up in
 * integers, losing under a micro-byte an iteration.  Elapsed time counts up to CATCHUP_NS per
 * iteration, and the budget holds at most CATCHUP_NS worth: a vCPU the
 * host descheduled for a while catches up, as a real guest's writes would,
 * but time spent parked or in transit is not a burst (resume_state).  The
 * rate is capped at 2^40 B/s, far beyond what the vCPU reaches, which is
 * "unthrottled"; then every sum and product stays under 2^58. */
#define BUDGET_PAGE (UINT64_C (4096) * 1000000u)
#define CATCHUP_NS UINT64_C (100000000)
#define RATE_MAX (UINT64_C (1) << 40)
#define IDLE_NS 50000           /* wait for budget: 50 us, still counting */

/* ---- the context blob (little-endian) -------------------------------- */

#define CTX_MAGIC "XMUFCTX1"
#define CTX_VERSION 1

struct uffd_ctx {
  char magic[8];
  uint32_t version;
  uint32_t size;                /* sizeof (struct uffd_ctx) */
  uint64_t npages;
  uint64_t counter, rng, checksum;
  uint64_t region_start, region_len;
  uint64_t rate, budget, writes;
};

/* ---- host side -------------------------------------------------------- */

struct guest {
  const char *role;             /* "source" or "destination", for messages */
  uint8_t *ram;
  uint64_t npages;
  pthread_mutex_t lock;
  pthread_cond_t cond;          /* park/release, both directions */
  bool sync_init;
  pthread_t thread;
  bool live;                    /* the vCPU thread exists */
  int req;                      /* atomic: pause_req || stop, the vCPU's
                                 * one cheap look per iteration */
  bool pause_req, stop, parked; /* under lock */
  uint64_t counter_resumed;     /* counter when it last started running */
};

struct xm_source {
  struct guest g;
  int uffd, pagemap;
  bool logging;
  struct page_region *vec;
};

struct xm_dest {
  struct guest g;
  bool loaded;                  /* a context was accepted */
};

#define SCAN_VEC 1024u
#define PARK_TIMEOUT_S 2

static uint64_t
now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static inline uint64_t
xorshift (uint64_t x)
{
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

/* The value the guest writes at iteration C (splitmix64's finaliser: no
 * two counters give the same word). */
static inline uint64_t
value_of (uint64_t c)
{
  c += UINT64_C (0x9e3779b97f4a7c15);
  c = (c ^ (c >> 30)) * UINT64_C (0xbf58476d1ce4e5b9);
  c = (c ^ (c >> 27)) * UINT64_C (0x94d049bb133111eb);
  return c ^ (c >> 31);
}

/* The blob is little-endian on the wire.  (Not <endian.h>'s le64:
 * with -Icommon that name finds common/endian.h.) */
static inline uint64_t
le64 (uint64_t x)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap64 (x);
#else
  return x;
#endif
}

static inline uint32_t
le32 (uint32_t x)
{
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return __builtin_bswap32 (x);
#else
  return x;
#endif
}

static inline volatile struct guest_state *
state_of (const struct guest *g)
{
  return (volatile struct guest_state *) g->ram;
}

static uint64_t
region_xor (const struct guest *g, uint64_t start, uint64_t len)
{
  const uint64_t *w = (const uint64_t *) (g->ram + start * XM_PAGE_SIZE);
  uint64_t x = 0, n = len * (XM_PAGE_SIZE / 8);

  for (uint64_t i = 0; i < n; i++)
    x ^= w[i];
  return x;
}

/* ---- the vCPU --------------------------------------------------------- */

/* Running again (first start, or released from park): the guest clears
 * its halt record, and its budget clock restarts on this host's clock so
 * time spent parked or in transit is not a burst of writes. */
static void
resume_state (volatile struct guest_state *st)
{
  st->stop_req = 0;
  st->parked = 0;
  st->budget_t = now_ns ();
}

/* One iteration; everything it reads and writes is in guest RAM. */
static void
step (uint8_t *ram, volatile struct guest_state *st)
{
  uint64_t c = st->counter + 1, now = now_ns (), t = st->budget_t;
  uint64_t rate = st->rate, budget = st->budget, dt, cap;

  if (rate > RATE_MAX)
    rate = RATE_MAX;
  dt = now > t ? now - t : 0;
  if (dt > CATCHUP_NS)
    dt = CATCHUP_NS;
  cap = CATCHUP_NS / 1000 * rate;
  if (cap < BUDGET_PAGE)
    cap = BUDGET_PAGE;
  budget += dt / 1000 * rate + dt % 1000 * rate / 1000;
  if (budget > cap)
    budget = cap;
  st->counter = c;
  st->budget_t = now;

  if (rate > 0 && budget >= BUDGET_PAGE) {
    uint64_t x = xorshift (st->rng);
    uint64_t pfn = st->region_start + x % st->region_len;
    volatile uint64_t *w = (volatile uint64_t *) (ram + pfn * XM_PAGE_SIZE)
      + ((x >> 52) & (XM_PAGE_SIZE / 8 - 1));
    uint64_t old = *w, new = value_of (c);

    *w = new;
    st->rng = x;
    st->checksum ^= old ^ new;
    st->writes++;
    st->budget = budget - BUDGET_PAGE;
  }
  else {
    struct timespec ts = { 0, IDLE_NS };

    st->budget = budget;
    nanosleep (&ts, NULL);
  }
}

/* Between iterations, when asked: park for a pause, or report a stop. */
static bool
park (struct guest *g, volatile struct guest_state *st)
{
  bool stop;

  pthread_mutex_lock (&g->lock);
  if (g->pause_req && !g->stop) {
    st->stop_req = 1;
    st->parked = 1;
    g->parked = true;
    pthread_cond_broadcast (&g->cond);
    while (g->pause_req && !g->stop)
      pthread_cond_wait (&g->cond, &g->lock);
    g->parked = false;
    if (!g->stop)
      resume_state (st);
  }
  stop = g->stop;
  pthread_mutex_unlock (&g->lock);
  return stop;
}

static void *
vcpu (void *arg)
{
  struct guest *g = arg;
  volatile struct guest_state *st = state_of (g);

  /* The idle wait is 50 us and a pause waits for it to end; the default
   * 50 us timer slack would double it. */
  prctl (PR_SET_TIMERSLACK, 1000UL);
  resume_state (st);
  for (;;) {
    if (__atomic_load_n (&g->req, __ATOMIC_ACQUIRE) && park (g, st))
      return NULL;
    step (g->ram, st);
  }
}

/* ---- host-side control ---------------------------------------------- */

static int
guest_map (struct guest *g, const char *role, uint64_t npages)
{
  pthread_condattr_t ca;

  g->role = role;
  g->npages = npages;
  g->ram = mmap (NULL, npages * XM_PAGE_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (g->ram == MAP_FAILED) {
    g->ram = NULL;
    sxm_error ("uffd: cannot map %" PRIu64 " MiB of %s guest RAM: %m",
               npages * XM_PAGE_SIZE >> 20, role);
    return -1;
  }
  /* The dirty log is per page table entry: a transparent huge page would
   * be one 2 MiB "written" unit, so keep the guest in 4 KiB pages like a
   * VM's dirty log. */
  madvise (g->ram, npages * XM_PAGE_SIZE, MADV_NOHUGEPAGE);
  /* Back all of it now, as a VM's RAM is: first-touch faults one page at a
   * time cost ~16 us each on the (software-virtualised) test machines,
   * which made a receiver's round 0 run at 30 MiB/s; populating in the
   * kernel is ~30x cheaper.  Best effort (Linux 5.14+). */
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
  madvise (g->ram, npages * XM_PAGE_SIZE, MADV_POPULATE_WRITE);

  pthread_condattr_init (&ca);
  pthread_condattr_setclock (&ca, CLOCK_MONOTONIC);
  pthread_cond_init (&g->cond, &ca);
  pthread_condattr_destroy (&ca);
  pthread_mutex_init (&g->lock, NULL);
  g->sync_init = true;
  return 0;
}

static int
guest_spawn (struct guest *g)
{
  int e;

  g->counter_resumed = state_of (g)->counter;
  g->pause_req = g->stop = g->parked = false;
  __atomic_store_n (&g->req, 0, __ATOMIC_RELEASE);
  e = pthread_create (&g->thread, NULL, vcpu, g);
  if (e) {
    sxm_error ("uffd: cannot start the %s guest's vCPU thread: %s", g->role,
               strerror (e));
    return -1;
  }
  g->live = true;
  return 0;
}

static bool
guest_running (struct guest *g)
{
  bool r;

  if (!g->live)
    return false;
  pthread_mutex_lock (&g->lock);
  r = !g->pause_req;
  pthread_mutex_unlock (&g->lock);
  return r;
}

static int
guest_pause (struct guest *g)
{
  struct timespec dl;
  int e = 0;

  if (!g->live) {
    sxm_error ("uffd: the %s guest is not running", g->role);
    return -1;
  }
  clock_gettime (CLOCK_MONOTONIC, &dl);
  dl.tv_sec += PARK_TIMEOUT_S;
  pthread_mutex_lock (&g->lock);
  g->pause_req = true;
  __atomic_store_n (&g->req, 1, __ATOMIC_RELEASE);
  while (!g->parked && e != ETIMEDOUT)
    e = pthread_cond_timedwait (&g->cond, &g->lock, &dl);
  if (!g->parked) {
    g->pause_req = false;
    __atomic_store_n (&g->req, g->stop, __ATOMIC_RELEASE);
    pthread_mutex_unlock (&g->lock);
    sxm_error ("uffd: the %s guest's vCPU did not park within %d s",
               g->role, PARK_TIMEOUT_S);
    return -1;
  }
  pthread_mutex_unlock (&g->lock);
  return 0;
}

static int
guest_unpause (struct guest *g)
{
  if (!g->live) {
    sxm_error ("uffd: the %s guest is not running", g->role);
    return -1;
  }
  pthread_mutex_lock (&g->lock);
  if (g->pause_req) {
    /* Parked, so page 0 is stable. */
    g->counter_resumed = state_of (g)->counter;
    g->pause_req = false;
    __atomic_store_n (&g->req, g->stop, __ATOMIC_RELEASE);
    pthread_cond_broadcast (&g->cond);
  }
  pthread_mutex_unlock (&g->lock);
  return 0;
}

static void
guest_destroy (struct guest *g)
{
  if (g->live) {
    pthread_mutex_lock (&g->lock);
    g->stop = true;
    __atomic_store_n (&g->req, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast (&g->cond);
    pthread_mutex_unlock (&g->lock);
    pthread_join (g->thread, NULL);
    g->live = false;
  }
  if (g->sync_init) {
    pthread_cond_destroy (&g->cond);
    pthread_mutex_destroy (&g->lock);
  }
  if (g->ram)
    munmap (g->ram, g->npages * XM_PAGE_SIZE);
  g->ram = NULL;
}

/* Page 0 fields a vCPU can run from (region inside RAM, a live rng). */
static int
state_sane (const struct guest *g, const char *what)
{
  volatile struct guest_state *st = state_of (g);
  uint64_t rs = st->region_start, rl = st->region_len;

  if (memcmp ((const char *) st->magic, GST_MAGIC, 8) != 0 ||
      st->version != GST_VERSION) {
    sxm_error ("uffd: %s: page 0 of the %s guest holds no uffd guest state "
               "(magic/version)", what, g->role);
    return -1;
  }
  if (rs < 1 || rl < 1 || rs > g->npages || rl > g->npages - rs) {
    sxm_error ("uffd: %s: page 0 of the %s guest has its dirty region at "
               "pages %" PRIu64 "+%" PRIu64 ", outside pages 1..%" PRIu64,
               what, g->role, rs, rl, g->npages - 1);
    return -1;
  }
  if (st->rng == 0) {
    sxm_error ("uffd: %s: page 0 of the %s guest has a zero rng state",
               what, g->role);
    return -1;
  }
  return 0;
}

/* A consistent look at a guest, pausing it for the read if it runs. */
struct snapshot {
  const char *state;            /* running, paused, loaded */
  uint64_t counter, writes, checksum, actual;
  bool ok;                      /* a consistent view was taken */
};

static void
snapshot (struct guest *g, struct snapshot *sn)
{
  volatile struct guest_state *st = state_of (g);
  bool was_running = guest_running (g);

  memset (sn, 0, sizeof *sn);
  sn->state = was_running ? "running" : g->live ? "paused" : "loaded";
  if (was_running && guest_pause (g) == -1)
    return;
  if (state_sane (g, "describe") == 0) {
    sn->counter = st->counter;
    sn->writes = st->writes;
    sn->checksum = st->checksum;
    sn->actual = region_xor (g, st->region_start, st->region_len);
    sn->ok = true;
  }
  if (was_running)
    guest_unpause (g);
}

static void
describe (struct guest *g, struct jbuf *buf)
{
  struct snapshot sn;

  snapshot (g, &sn);
  jbuf_add (buf, ",\"guest\":\"%s\"", sn.state);
  if (sn.ok)
    jbuf_add (buf, ",\"counter\":%" PRIu64 ",\"writes\":%" PRIu64
              ",\"checksum_ok\":%s", sn.counter, sn.writes,
              sn.actual == sn.checksum ? "true" : "false");
}

/* Run SECONDS, park, verify, run on. */
static int
check (struct guest *g, double seconds, struct jbuf *buf)
{
  volatile struct guest_state *st = state_of (g);
  uint64_t c0, c1, want, got;
  struct timespec ts;
  bool advanced, sum_ok;

  if (!guest_running (g)) {
    sxm_error ("uffd: the %s guest is not running, so it cannot be checked",
               g->role);
    jbuf_add (buf, ",\"running\":false");
    return -1;
  }
  if (seconds > 0) {
    ts.tv_sec = (time_t) seconds;
    ts.tv_nsec = (long) ((seconds - ts.tv_sec) * 1e9);
    while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
      ;
  }
  if (guest_pause (g) == -1) {
    jbuf_add (buf, ",\"running\":true,\"parked\":false");
    return -1;
  }
  if (state_sane (g, "check") == -1) {
    jbuf_add (buf, ",\"state_ok\":false");
    guest_unpause (g);
    return -1;
  }
  c0 = g->counter_resumed;
  c1 = st->counter;
  want = st->checksum;
  got = region_xor (g, st->region_start, st->region_len);
  advanced = c1 > c0;
  sum_ok = got == want;
  jbuf_add (buf, ",\"counter_at_resume\":%" PRIu64 ",\"counter\":%" PRIu64
            ",\"counter_advanced\":%s,\"writes\":%" PRIu64
            ",\"checksum\":\"%016" PRIx64 "\",\"region_xor\":\"%016" PRIx64
            "\",\"checksum_ok\":%s", c0, c1, advanced ? "true" : "false",
            (uint64_t) st->writes, want, got, sum_ok ? "true" : "false");
  guest_unpause (g);
  if (!advanced)
    sxm_error ("uffd: the %s guest's counter did not advance in %.3f s "
               "(still %" PRIu64 ")", g->role, seconds, c1);
  if (!sum_ok)
    sxm_error ("uffd: the %s guest's memory is inconsistent: its dirty "
               "region XORs to %016" PRIx64 ", its state says %016" PRIx64,
               g->role, got, want);
  return advanced && sum_ok ? 0 : -1;
}

static int
check_pfns (const struct guest *g, const uint64_t *pfns, unsigned n)
{
  for (unsigned i = 0; i < n; i++)
    if (pfns[i] >= g->npages) {
      sxm_error ("uffd: pfn %" PRIu64 " is beyond the %s guest's %" PRIu64
                 " pages", pfns[i], g->role, g->npages);
      return -1;
    }
  return 0;
}

static bool
ram_ok (uint64_t bytes, const char *what)
{
  if (bytes % (PAGES_ALIGN * XM_PAGE_SIZE) || bytes < MIN_PAGES * XM_PAGE_SIZE
      || bytes > MAX_PAGES * XM_PAGE_SIZE) {
    sxm_error ("uffd: %s %" PRIu64 " bytes of RAM: the uffd guest needs a "
               "multiple of 2 MiB, at least 4 MiB and at most %" PRIu64
               " GiB", what, bytes, MAX_PAGES * XM_PAGE_SIZE >> 30);
    return false;
  }
  return true;
}

/* ---- source ------------------------------------------------------------ */

/* What the kernel lacks, from the errno of the step that failed. */
static int
tracking_open (struct xm_source *s)
{
  struct uffdio_api api = {
    .api = UFFD_API,
    .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED,
  };
  struct pm_scan_arg a;

  s->uffd = syscall (SYS_userfaultfd,
                     O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
  if (s->uffd == -1) {
    int e = errno;
    sxm_error ("uffd: userfaultfd(): %s: %s", strerror (e),
               e == ENOSYS ? "this kernel has no userfaultfd "
               "(CONFIG_USERFAULTFD)"
               : e == EPERM ? "not permitted here (a seccomp filter, as in "
               "many containers, or an LSM; vm.unprivileged_userfaultfd "
               "does not apply to UFFD_USER_MODE_ONLY)"
               : e == EINVAL ? "this kernel does not know UFFD_USER_MODE_ONLY "
               "(Linux 5.11); the uffd backend needs Linux 6.7 or later"
               : "cannot create a userfaultfd");
    return -1;
  }
  if (ioctl (s->uffd, UFFDIO_API, &api) == -1) {
    sxm_error ("uffd: UFFDIO_API: %m: %s", errno == EINVAL
               ? "this kernel lacks asynchronous userfaultfd write-protect "
               "(UFFD_FEATURE_WP_ASYNC, WP_UNPOPULATED: Linux 6.7 or later)"
               : "cannot negotiate userfaultfd features");
    return -1;
  }
  if (!(api.ioctls & (UINT64_C (1) << _UFFDIO_REGISTER))) {
    sxm_error ("uffd: this kernel's userfaultfd offers no UFFDIO_REGISTER");
    return -1;
  }

  s->pagemap = open ("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (s->pagemap == -1) {
    sxm_error ("uffd: /proc/self/pagemap: %m (is /proc mounted?)");
    return -1;
  }
  /* Ask once, on page 0 and without protecting anything, so that a
   * kernel without PAGEMAP_SCAN is found before the guest starts. */
  memset (&a, 0, sizeof a);
  a.size = sizeof a;
  a.start = (uintptr_t) s->g.ram;
  a.end = a.start + XM_PAGE_SIZE;
  a.vec = (uintptr_t) s->vec;
  a.vec_len = SCAN_VEC;
  a.category_mask = a.return_mask = PAGE_IS_WRITTEN;
  if (ioctl (s->pagemap, PAGEMAP_SCAN, &a) == -1) {
    sxm_error ("uffd: PAGEMAP_SCAN on /proc/self/pagemap: %m: %s",
               errno == ENOTTY || errno == EINVAL
               ? "this kernel lacks the PAGEMAP_SCAN ioctl (Linux 6.7 or "
               "later)" : "the dirty log cannot be read");
    return -1;
  }
  return 0;
}

/* Deterministic content: the first half of RAM (after page 0) pseudo-random,
 * the rest zero, so that zero-page handling matters in a migration. */
static void
guest_fill (struct guest *g, uint64_t region_len, uint64_t rate)
{
  volatile struct guest_state *st = state_of (g);
  uint64_t x = UINT64_C (0x2545f4914f6cdd1d);
  uint64_t *w = (uint64_t *) (g->ram + XM_PAGE_SIZE);
  uint64_t n = (g->npages / 2 - 1) * (XM_PAGE_SIZE / 8);

  for (uint64_t i = 0; i < n; i++) {
    x = xorshift (x);
    w[i] = x;
  }
  memcpy ((char *) st->magic, GST_MAGIC, 8);
  st->version = GST_VERSION;
  st->counter = 0;
  st->rng = UINT64_C (0x9e3779b97f4a7c15);
  st->region_start = 1;
  st->region_len = region_len;
  st->rate = rate;
  st->checksum = region_xor (g, 1, region_len);
}

static void uffd_close_source (struct xm_source *s, bool migrated);

static int
uffd_open_source (const char *id, const struct xm_guest_opts *o,
                  struct xm_source **out)
{
  struct xm_source *s;
  uint64_t npages, region;

  if (!ram_ok (o->mem_bytes, "a guest of"))
    return -1;
  npages = o->mem_bytes / XM_PAGE_SIZE;
  region = o->dirty_bytes ? (o->dirty_bytes + XM_PAGE_SIZE - 1) / XM_PAGE_SIZE
    : npages - 1;
  if (region > npages - 1) {
    sxm_error ("uffd: a dirty region of %" PRIu64 " bytes does not fit in "
               "the guest's %" PRIu64 " bytes of RAM after its state page",
               o->dirty_bytes, o->mem_bytes);
    return -1;
  }

  s = calloc (1, sizeof *s);
  if (!s) {
    sxm_error ("uffd: out of memory");
    return -1;
  }
  s->uffd = s->pagemap = -1;
  s->vec = calloc (SCAN_VEC, sizeof *s->vec);
  if (!s->vec) {
    sxm_error ("uffd: out of memory");
    goto fail;
  }
  if (guest_map (&s->g, "source", npages) == -1)
    goto fail;
  if (tracking_open (s) == -1)
    goto fail;
  guest_fill (&s->g, region, o->dirty_rate);
  if (guest_spawn (&s->g) == -1)
    goto fail;
  *out = s;
  return 0;

 fail:
  uffd_close_source (s, false);
  return -1;
}

static uint64_t
uffd_npages (struct xm_source *s)
{
  return s->g.npages;
}

static int
uffd_log_enable (struct xm_source *s)
{
  struct uffdio_register r = {
    .range = { (uintptr_t) s->g.ram, s->g.npages * XM_PAGE_SIZE },
    .mode = UFFDIO_REGISTER_MODE_WP,
  };
  struct uffdio_writeprotect wp = {
    .range = r.range,
    .mode = UFFDIO_WRITEPROTECT_MODE_WP,
  };

  if (!s->logging) {
    if (ioctl (s->uffd, UFFDIO_REGISTER, &r) == -1) {
      sxm_error ("uffd: UFFDIO_REGISTER (write-protect mode) of the guest's "
                 "RAM: %m%s", errno == EINVAL ? ": this kernel cannot "
                 "write-protect anonymous memory through userfaultfd" : "");
      return -1;
    }
    if (!(r.ioctls & (UINT64_C (1) << _UFFDIO_WRITEPROTECT))) {
      sxm_error ("uffd: this kernel offers no UFFDIO_WRITEPROTECT on the "
                 "guest's RAM");
      goto unregister;
    }
    s->logging = true;
  }
  /* Everything protected: from here a write is a page the next scan
   * reports.  (Re-enabling starts the log afresh.) */
  while (ioctl (s->uffd, UFFDIO_WRITEPROTECT, &wp) == -1) {
    if (errno == EAGAIN || errno == EINTR)
      continue;                 /* the mm changed under us: try again */
    sxm_error ("uffd: UFFDIO_WRITEPROTECT of the guest's RAM: %m");
    goto unregister;
  }
  return 0;

 unregister:
  ioctl (s->uffd, UFFDIO_UNREGISTER, &r.range);
  s->logging = false;
  return -1;
}

static int
uffd_log_fetch (struct xm_source *s, uint8_t *bitmap, uint64_t *count)
{
  uintptr_t base = (uintptr_t) s->g.ram;
  struct pm_scan_arg a = {
    .size = sizeof a,
    .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
    .start = base,
    .end = base + s->g.npages * XM_PAGE_SIZE,
    .vec = (uintptr_t) s->vec,
    .vec_len = SCAN_VEC,
    .category_mask = PAGE_IS_WRITTEN,
    .return_mask = PAGE_IS_WRITTEN,
  };
  uint64_t n = 0;

  if (!s->logging) {
    sxm_error ("uffd: the dirty log is not enabled");
    return -1;
  }
  memset (bitmap, 0, (s->g.npages + 7) / 8);
  /* One walk reports and re-protects; it stops early when VEC is full,
   * saying where in walk_end, and the next one goes on from there. */
  while (a.start < a.end) {
    int r = ioctl (s->pagemap, PAGEMAP_SCAN, &a);

    if (r == -1) {
      if (errno == EINTR || errno == EAGAIN)
        continue;
      sxm_error ("uffd: PAGEMAP_SCAN of the guest's RAM: %m%s",
                 errno == EPERM ? ": the RAM is not (or no longer) under "
                 "asynchronous write-protect" : "");
      return -1;
    }
    for (int i = 0; i < r; i++) {
      uint64_t p = (s->vec[i].start - base) / XM_PAGE_SIZE;
      uint64_t e = (s->vec[i].end - base) / XM_PAGE_SIZE;
      for (; p < e && p < s->g.npages; p++) {
        bitmap[p / 8] |= 1u << (p % 8);
        n++;
      }
    }
    if (a.walk_end <= a.start && r == 0) {
      sxm_error ("uffd: PAGEMAP_SCAN made no progress at %#" PRIx64,
                 a.start - base);
      return -1;
    }
    a.start = a.walk_end;
  }
  *count = n;
  return 0;
}

static int
uffd_log_disable (struct xm_source *s)
{
  struct uffdio_range r = { (uintptr_t) s->g.ram, s->g.npages * XM_PAGE_SIZE };

  if (!s->logging)
    return 0;
  s->logging = false;
  if (ioctl (s->uffd, UFFDIO_UNREGISTER, &r) == -1) {
    sxm_error ("uffd: UFFDIO_UNREGISTER of the guest's RAM: %m");
    return -1;
  }
  return 0;
}

static int
uffd_read_pages (struct xm_source *s, const uint64_t *pfns, unsigned n,
                 void *buf)
{
  if (check_pfns (&s->g, pfns, n) == -1)
    return -1;
  for (unsigned i = 0; i < n; i++)
    memcpy ((uint8_t *) buf + (size_t) i * XM_PAGE_SIZE,
            s->g.ram + pfns[i] * XM_PAGE_SIZE, XM_PAGE_SIZE);
  return 0;
}

static int
uffd_pause (struct xm_source *s)
{
  return guest_pause (&s->g);
}

static int
uffd_unpause (struct xm_source *s)
{
  return guest_unpause (&s->g);
}

static int
uffd_get_context (struct xm_source *s, void **blob, size_t *len)
{
  volatile struct guest_state *st = state_of (&s->g);
  struct uffd_ctx *c;

  if (guest_running (&s->g)) {
    sxm_error ("uffd: the source guest's context is only defined while it "
               "is paused");
    return -1;
  }
  c = calloc (1, sizeof *c);
  if (!c) {
    sxm_error ("uffd: out of memory");
    return -1;
  }
  memcpy (c->magic, CTX_MAGIC, 8);
  c->version = le32 (CTX_VERSION);
  c->size = le32 (sizeof *c);
  c->npages = le64 (s->g.npages);
  c->counter = le64 (st->counter);
  c->rng = le64 (st->rng);
  c->checksum = le64 (st->checksum);
  c->region_start = le64 (st->region_start);
  c->region_len = le64 (st->region_len);
  c->rate = le64 (st->rate);
  c->budget = le64 (st->budget);
  c->writes = le64 (st->writes);
  *blob = c;
  *len = sizeof *c;
  return 0;
}

static void
uffd_describe_source (struct xm_source *s, struct jbuf *buf)
{
  describe (&s->g, buf);
}

static int
uffd_check_source (struct xm_source *s, double seconds, struct jbuf *buf)
{
  return check (&s->g, seconds, buf);
}

static void
uffd_close_source (struct xm_source *s, bool migrated)
{
  if (!s)
    return;
  /* The vCPU stops before its RAM goes; closing the userfaultfd then
   * drops the registration. */
  guest_destroy (&s->g);
  if (s->uffd >= 0)
    close (s->uffd);
  if (s->pagemap >= 0)
    close (s->pagemap);
  free (s->vec);
  free (s);
}

/* ---- destination ------------------------------------------------------- */

static int
uffd_create_dest (const char *id, uint64_t npages, struct xm_dest **out)
{
  struct xm_dest *d;

  if (npages > MAX_PAGES) {
    sxm_error ("uffd: a destination of %" PRIu64 " pages is over the uffd "
               "guest's limit of %" PRIu64, npages, MAX_PAGES);
    return -1;
  }
  if (!ram_ok (npages * XM_PAGE_SIZE, "a destination of"))
    return -1;
  d = calloc (1, sizeof *d);
  if (!d) {
    sxm_error ("uffd: out of memory");
    return -1;
  }
  if (guest_map (&d->g, "destination", npages) == -1) {
    free (d);
    return -1;
  }
  *out = d;
  return 0;
}

static int
uffd_write_pages (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                  const void *buf)
{
  if (d->g.live) {
    sxm_error ("uffd: the destination guest runs; its pages are its own");
    return -1;
  }
  if (check_pfns (&d->g, pfns, n) == -1)
    return -1;
  for (unsigned i = 0; i < n; i++) {
    uint8_t *p = d->g.ram + pfns[i] * XM_PAGE_SIZE;
    if (buf)
      memcpy (p, (const uint8_t *) buf + (size_t) i * XM_PAGE_SIZE,
              XM_PAGE_SIZE);
    else
      memset (p, 0, XM_PAGE_SIZE);
  }
  return 0;
}

static int
uffd_read_dest (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                void *buf)
{
  if (check_pfns (&d->g, pfns, n) == -1)
    return -1;
  for (unsigned i = 0; i < n; i++)
    memcpy ((uint8_t *) buf + (size_t) i * XM_PAGE_SIZE,
            d->g.ram + pfns[i] * XM_PAGE_SIZE, XM_PAGE_SIZE);
  return 0;
}

/* The blob must say what page 0 (loaded in the last round) already says:
 * both were taken from the same parked guest.  A difference means page 0
 * was not loaded from the paused guest — a sender or engine bug that a
 * silent overwrite would hide. */
#define AGREE(field)                                                    \
  do {                                                                  \
    if (st->field != c.field) {                                         \
      sxm_error ("uffd: the context and the destination's page 0 disagree " \
                 "on '%s' (context %" PRIu64 ", page 0 %" PRIu64 "): page " \
                 "0 was not loaded from the paused guest", #field,      \
                 (uint64_t) c.field, (uint64_t) st->field);             \
      return -1;                                                        \
    }                                                                   \
  } while (0)

static int
uffd_set_context (struct xm_dest *d, const void *blob, size_t len)
{
  volatile struct guest_state *st = state_of (&d->g);
  struct uffd_ctx c;

  if (d->g.live) {
    sxm_error ("uffd: the destination guest already runs");
    return -1;
  }
  if (len != sizeof c) {
    sxm_error ("uffd: context: 'len' is %zu bytes, a version %u uffd "
               "context is %zu", len, CTX_VERSION, sizeof c);
    return -1;
  }
  memcpy (&c, blob, sizeof c);
  if (memcmp (c.magic, CTX_MAGIC, 8) != 0) {
    sxm_error ("uffd: context: 'magic' is not %s (not a uffd guest's "
               "context)", CTX_MAGIC);
    return -1;
  }
  c.version = le32 (c.version);
  c.size = le32 (c.size);
  c.npages = le64 (c.npages);
  c.counter = le64 (c.counter);
  c.rng = le64 (c.rng);
  c.checksum = le64 (c.checksum);
  c.region_start = le64 (c.region_start);
  c.region_len = le64 (c.region_len);
  c.rate = le64 (c.rate);
  c.budget = le64 (c.budget);
  c.writes = le64 (c.writes);
  if (c.version != CTX_VERSION) {
    sxm_error ("uffd: context: 'version' is %" PRIu32 ", this xenmem reads "
               "version %u", c.version, CTX_VERSION);
    return -1;
  }
  if (c.size != sizeof c) {
    sxm_error ("uffd: context: 'size' says %" PRIu32 " bytes, the blob is "
               "%zu", c.size, sizeof c);
    return -1;
  }
  if (c.npages != d->g.npages) {
    sxm_error ("uffd: context: 'npages' is %" PRIu64 ", the destination "
               "has %" PRIu64, c.npages, d->g.npages);
    return -1;
  }
  if (c.region_start < 1 || c.region_start >= d->g.npages) {
    sxm_error ("uffd: context: 'region_start' %" PRIu64 " is not in pages "
               "1..%" PRIu64, c.region_start, d->g.npages - 1);
    return -1;
  }
  if (c.region_len < 1 || c.region_len > d->g.npages - c.region_start) {
    sxm_error ("uffd: context: 'region_len' %" PRIu64 " pages from page %"
               PRIu64 " goes beyond the guest's %" PRIu64 " pages",
               c.region_len, c.region_start, d->g.npages);
    return -1;
  }
  if (c.rng == 0) {
    sxm_error ("uffd: context: 'rng' is 0, which xorshift never reaches");
    return -1;
  }
  if (c.writes > c.counter) {
    sxm_error ("uffd: context: 'writes' %" PRIu64 " exceeds 'counter' %"
               PRIu64 " (one write per iteration at most)", c.writes,
               c.counter);
    return -1;
  }

  if (memcmp ((const char *) st->magic, GST_MAGIC, 8) != 0 ||
      st->version != GST_VERSION) {
    sxm_error ("uffd: the destination's page 0 holds no uffd guest state: "
               "it was never loaded");
    return -1;
  }
  AGREE (counter);
  AGREE (rng);
  AGREE (checksum);
  AGREE (region_start);
  AGREE (region_len);
  AGREE (rate);
  AGREE (budget);
  AGREE (writes);
  if (!st->parked) {
    sxm_error ("uffd: the destination's page 0 was taken from a running "
               "guest, not a parked one");
    return -1;
  }

  /* Authoritative (and, having agreed, the same bytes). */
  st->counter = c.counter;
  st->rng = c.rng;
  st->checksum = c.checksum;
  st->region_start = c.region_start;
  st->region_len = c.region_len;
  st->rate = c.rate;
  st->budget = c.budget;
  st->writes = c.writes;
  d->loaded = true;
  return 0;
}

#undef AGREE

static int
uffd_start (struct xm_dest *d)
{
  if (d->g.live) {
    sxm_error ("uffd: the destination guest already runs");
    return -1;
  }
  if (!d->loaded) {
    sxm_error ("uffd: the destination guest has no context loaded");
    return -1;
  }
  /* Pages may not be written after the context, but check what the vCPU
   * will trust rather than assume it. */
  if (state_sane (&d->g, "start") == -1)
    return -1;
  return guest_spawn (&d->g);
}

static void
uffd_describe_dest (struct xm_dest *d, struct jbuf *buf)
{
  if (!d->loaded && !d->g.live) {
    jbuf_add (buf, ",\"guest\":\"empty\"");
    return;
  }
  describe (&d->g, buf);
}

static int
uffd_check_dest (struct xm_dest *d, double seconds, struct jbuf *buf)
{
  return check (&d->g, seconds, buf);
}

static void
uffd_close_dest (struct xm_dest *d, bool keep)
{
  /* Our guest lives in this process: it cannot outlive it, kept or not. */
  if (!d)
    return;
  guest_destroy (&d->g);
  free (d);
}

const struct xm_backend_ops xm_backend_uffd = {
  .name = "uffd",
  .id = XM_BACKEND_UFFD,
  .open_source = uffd_open_source,
  .npages = uffd_npages,
  .log_enable = uffd_log_enable,
  .log_fetch = uffd_log_fetch,
  .log_disable = uffd_log_disable,
  .read_pages = uffd_read_pages,
  .pause = uffd_pause,
  .unpause = uffd_unpause,
  .get_context = uffd_get_context,
  .describe_source = uffd_describe_source,
  .close_source = uffd_close_source,
  .create_dest = uffd_create_dest,
  .write_pages = uffd_write_pages,
  .set_context = uffd_set_context,
  .read_dest = uffd_read_dest,
  .start = uffd_start,
  .describe_dest = uffd_describe_dest,
  .check_source = uffd_check_source,
  .check_dest = uffd_check_dest,
  .close_dest = uffd_close_dest,
};
