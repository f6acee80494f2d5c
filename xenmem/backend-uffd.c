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
 * Disks: the guest may have up to XM_DISKS_MAX virtual block devices
 * (libnbd handles, vbd.h).  At its disk rate the vCPU writes numbered,
 * checksummed 4096-byte records round-robin over them, synchronously
 * within its loop, and counts one as written (disk_seq) only once the
 * server acknowledged it; every 4th record it re-reads an earlier one.
 * A record's bytes follow from (nonce, seq, disk, slot) alone and slot
 * placement from (seq, ndisks, slots, disk size), all kept in page 0, so
 * a check can say exactly what every slot of every disk must hold
 * (doc/xenmem.pod, "DISK RECORDS").  Only page 0 migrates: the handles
 * are the host's, and a receiver brings its own (set_disks).
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
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/fs.h>
#include <linux/userfaultfd.h>

#include <libnbd.h>

#include "backend.h"
#include "log.h"
#include "monotime.h"
#include "vbd.h"

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

/* Guest RAM: a multiple of 2 MiB, at least 4 MiB. */
#define MIN_PAGES 1024u
#define PAGES_ALIGN 512u
/* Bound on RAM so that byte sizes never overflow anything downstream. */
#define MAX_PAGES (UINT64_C (1) << 36)

/* ---- the guest's own state, page 0 of its RAM ------------------------ */

#define GST_MAGIC "XMUFGST1"
#define GST_VERSION 2

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
  /* Disks (GST_VERSION 2); all zero but the nonce without disks. */
  uint32_t ndisks;              /* 0 .. XM_DISKS_MAX */
  uint32_t disk_slots;          /* record slots per disk */
  uint64_t disk_rate;           /* records/s */
  uint64_t disk_budget;         /* micro-records, BUDGET_REC per record */
  uint64_t disk_seq;            /* records the disks acknowledged */
  uint64_t disk_nonce;          /* random at creation: whose records */
  uint64_t disk_rng;            /* xorshift64: which record to re-read */
  uint64_t disk_pending;        /* a record whose write failed, until a
                                 * retry succeeds (0: none) */
  uint64_t disk_reads_ok, disk_reads_bad;
  uint64_t disk_first_bad;      /* seq of the first bad re-read, 0: none */
  uint64_t disk_io_errors;      /* failed writes and re-reads */
  uint64_t disk_size[XM_DISKS_MAX];     /* bytes, at creation */
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
/* The throttle's period (set_throttle): QEMU's CPU throttle uses the
 * same 10 ms slice. */
#define THROTTLE_NS UINT64_C (10000000)

/* Disk records, budgeted like pages: BUDGET_REC micro-records each.  The
 * rate cap keeps the same sums far from overflow.  After a failed write
 * the vCPU waits DISK_RETRY_NS before its next iteration (and so before
 * the retry) rather than hammering a server in trouble. */
#define BUDGET_REC UINT64_C (1000000)
#define DISK_RATE_MAX UINT64_C (1000000)
#define DISK_RETRY_NS 5000000
#define DISK_SLOTS_MAX (UINT32_C (1) << 20)
#define REC_SIZE 4096u
#define REC_MAGIC "SXMDREC1"
#define REC_SUM_OFF 4092u
#define GROUP_ALIGN (UINT64_C (2) << 20)
/* One read of the check covers this many records of a group. */
#define CHECK_CHUNK 256u
#define GOLDEN UINT64_C (0x9e3779b97f4a7c15)

/* ---- the context blob (little-endian) -------------------------------- */

#define CTX_MAGIC "XMUFCTX1"
#define CTX_VERSION 2

/* Version 2 appends the disk fields of struct guest_state (offsets 88 to
 * 240); everything before them is as in version 1. */
struct uffd_ctx {
  char magic[8];
  uint32_t version;
  uint32_t size;                /* sizeof (struct uffd_ctx) */
  uint64_t npages;
  uint64_t counter, rng, checksum;
  uint64_t region_start, region_len;
  uint64_t rate, budget, writes;
  uint32_t ndisks, disk_slots;
  uint64_t disk_rate, disk_budget, disk_seq, disk_nonce, disk_rng;
  uint64_t disk_pending, disk_reads_ok, disk_reads_bad, disk_first_bad;
  uint64_t disk_io_errors;
  uint64_t disk_size[XM_DISKS_MAX];
};
_Static_assert (sizeof (struct uffd_ctx) == 240,
                "the uffd context blob has a fixed layout");

/* The disk fields the context carries besides disk_size, with their
 * widths: encoded, decoded, agreed with page 0 and loaded alike. */
#define CTX_DISK_FIELDS(X)                                              \
  X (ndisks, 32) X (disk_slots, 32) X (disk_rate, 64) X (disk_budget, 64) \
  X (disk_seq, 64) X (disk_nonce, 64) X (disk_rng, 64)                  \
  X (disk_pending, 64) X (disk_reads_ok, 64) X (disk_reads_bad, 64)     \
  X (disk_first_bad, 64) X (disk_io_errors, 64)

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
  unsigned throttle;            /* atomic: percent of each THROTTLE_NS the
                                 * vCPU sleeps (set_throttle), 0: none */
  uint64_t slice_t;             /* the vCPU's: when its run slice began */
  uint64_t counter_resumed;     /* counter when it last started running */
  uint64_t disk_seq_resumed;    /* and disk_seq */
  /* The disks (borrowed, vbd.h): as many as page 0's ndisks once the
   * guest can run. */
  struct xm_vbd *disks[XM_DISKS_MAX];
  unsigned ndisks;
  uint8_t *wbuf, *rbuf;         /* the vCPU's record buffers */
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

/* ---- disk records ------------------------------------------------------ */

static void
put_le (uint8_t *p, uint64_t v, unsigned bytes)
{
  for (unsigned i = 0; i < bytes; i++)
    p[i] = v >> (8 * i);
}

/* FNV-1a, 32 bits: a checker in any language has it in a few lines. */
static uint32_t
fnv1a (const uint8_t *p, size_t len)
{
  uint32_t h = UINT32_C (0x811c9dc5);

  for (size_t i = 0; i < len; i++)
    h = (h ^ p[i]) * UINT32_C (0x01000193);
  return h;
}

/* Record SEQ of the guest NONCE as it lies in SLOT of DISK (the layout is
 * in doc/xenmem.pod): everything follows from those four numbers, so the
 * check regenerates what each slot must hold instead of remembering it.
 * The payload is splitmix64 from nonce XOR seq * golden: value_of (state
 * + i * golden) is its i-th output. */
static void
record_make (uint8_t *rec, uint64_t seq, uint64_t nonce, uint32_t disk,
             uint32_t slot)
{
  uint64_t x = nonce ^ (seq * GOLDEN);

  memcpy (rec, REC_MAGIC, 8);
  put_le (rec + 8, seq, 8);
  put_le (rec + 16, nonce, 8);
  put_le (rec + 24, disk, 4);
  put_le (rec + 28, slot, 4);
  for (unsigned off = 32; off < REC_SUM_OFF; off += 8) {
    unsigned n = REC_SUM_OFF - off < 8 ? REC_SUM_OFF - off : 8;
    put_le (rec + off, value_of (x), n);
    x += GOLDEN;
  }
  put_le (rec + REC_SUM_OFF, fnv1a (rec, REC_SUM_OFF), 4);
}

/* Where record Q (1-based) goes: round-robin over the disks, and on each
 * disk round-robin over its slots. */
static inline uint32_t
rec_disk (uint64_t q, unsigned ndisks)
{
  return (q - 1) % ndisks;
}

static inline uint32_t
rec_slot (uint64_t q, unsigned ndisks, uint32_t slots)
{
  return (q - 1) / ndisks % slots;
}

/* Slots are in four groups, one per quarter of the disk, each group's
 * start rounded down to 2 MiB: records land all over a large disk (past
 * 4 GiB on a big one) while touching few 2 MiB VHD blocks. */
static uint64_t
group_start (uint64_t size, unsigned grp)
{
  uint64_t q = grp * (size / 4) + grp * (size % 4) / 4;

  return q & ~(GROUP_ALIGN - 1);
}

static uint64_t
slot_offset (uint64_t size, uint32_t slot)
{
  return group_start (size, slot % 4) + (uint64_t) (slot / 4) * REC_SIZE;
}

/* Every group fits before the next one (the last before the end). */
static bool
layout_fits (uint64_t size, uint32_t slots)
{
  uint64_t need = (uint64_t) (slots / 4) * REC_SIZE;

  for (unsigned grp = 0; grp < 4; grp++) {
    uint64_t end = grp < 3 ? group_start (size, grp + 1) : size;
    if (group_start (size, grp) + need > end)
      return false;
  }
  return true;
}

/* A size that is always enough for SLOTS (any size from it on fits). */
static uint64_t
layout_min (uint32_t slots)
{
  uint64_t need = (uint64_t) (slots / 4) * REC_SIZE;

  return 4 * ((need + GROUP_ALIGN - 1) & ~(GROUP_ALIGN - 1));
}

/* The newest record at or before SEQ that lives in SLOT of DISK, or 0 if
 * none ever went there: records for DISK are q = disk + 1 + ndisks * j,
 * in slot j % slots. */
static uint64_t
newest_record (uint64_t seq, unsigned ndisks, uint32_t slots, uint32_t disk,
               uint32_t slot)
{
  uint64_t jmax;

  if (seq <= disk)
    return 0;
  jmax = (seq - 1 - disk) / ndisks;
  if (jmax < slot)
    return 0;
  return disk + 1 + ndisks * (slot + (jmax - slot) / slots * slots);
}

static bool
slots_ok (uint64_t slots)
{
  return slots >= 4 && slots % 4 == 0 && slots <= DISK_SLOTS_MAX;
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
  st->budget_t = sxm_now_ns ();
}

static void
sleep_ns (long ns)
{
  struct timespec ts = { 0, ns };

  nanosleep (&ts, NULL);
}

/* Every 4th record: read back one still on disk (one of the last
 * ndisks * slots, which no later record has overwritten) and compare it
 * with what it must be. */
static void
disk_reread (struct guest *g, volatile struct guest_state *st)
{
  uint64_t q = st->disk_seq, window = (uint64_t) st->ndisks * st->disk_slots;
  uint64_t lo = q > window ? q - window + 1 : 1, x = xorshift (st->disk_rng);
  uint64_t p = lo + x % (q - lo + 1);
  uint32_t disk = rec_disk (p, st->ndisks);
  uint32_t slot = rec_slot (p, st->ndisks, st->disk_slots);

  st->disk_rng = x;
  if (nbd_pread (g->disks[disk]->nbd, g->rbuf, REC_SIZE,
                 slot_offset (st->disk_size[disk], slot), 0) == -1) {
    sxm_debug ("uffd: %s guest: re-reading record %" PRIu64 " from %s: %s",
               g->role, p, g->disks[disk]->uri, nbd_get_error ());
    st->disk_io_errors++;
    return;
  }
  record_make (g->wbuf, p, st->disk_nonce, disk, slot);
  if (memcmp (g->rbuf, g->wbuf, REC_SIZE) == 0)
    st->disk_reads_ok++;
  else {
    st->disk_reads_bad++;
    if (!st->disk_first_bad)
      st->disk_first_bad = p;
  }
}

/* The next record, synchronously.  Acknowledged: count it.  Failed: count
 * the error, keep the same record for a later iteration (never skipped:
 * the check expects every number up to disk_seq on disk) and back off. */
static void
disk_write (struct guest *g, volatile struct guest_state *st)
{
  uint64_t q = st->disk_seq + 1;
  uint32_t disk = rec_disk (q, st->ndisks);
  uint32_t slot = rec_slot (q, st->ndisks, st->disk_slots);

  record_make (g->wbuf, q, st->disk_nonce, disk, slot);
  if (nbd_pwrite (g->disks[disk]->nbd, g->wbuf, REC_SIZE,
                  slot_offset (st->disk_size[disk], slot), 0) == -1) {
    sxm_debug ("uffd: %s guest: writing record %" PRIu64 " to %s: %s",
               g->role, q, g->disks[disk]->uri, nbd_get_error ());
    st->disk_io_errors++;
    st->disk_pending = q;
    sleep_ns (DISK_RETRY_NS);
    return;
  }
  st->disk_seq = q;
  st->disk_pending = 0;
  st->disk_budget -= BUDGET_REC;
  if (q % 4 == 0)
    disk_reread (g, st);
}

/* Budget after DT ns at RATE units/s, capped at CATCHUP_NS worth (at
 * least one UNIT). */
static uint64_t
refill (uint64_t budget, uint64_t dt, uint64_t rate, uint64_t unit)
{
  uint64_t cap = CATCHUP_NS / 1000 * rate;

  if (cap < unit)
    cap = unit;
  budget += dt / 1000 * rate + dt % 1000 * rate / 1000;
  return budget > cap ? cap : budget;
}

/* One iteration; everything it reads and writes is in guest RAM, but for
 * the disk handles and the record buffers. */
static void
step (struct guest *g, volatile struct guest_state *st)
{
  uint8_t *ram = g->ram;
  uint64_t c = st->counter + 1, now = sxm_now_ns (), t = st->budget_t;
  uint64_t rate = st->rate, budget, dt, drate = st->disk_rate;
  bool busy = false;

  if (rate > RATE_MAX)
    rate = RATE_MAX;
  if (drate > DISK_RATE_MAX)
    drate = DISK_RATE_MAX;
  dt = now > t ? now - t : 0;
  if (dt > CATCHUP_NS)
    dt = CATCHUP_NS;
  budget = refill (st->budget, dt, rate, BUDGET_PAGE);
  st->counter = c;
  st->budget_t = now;

  if (st->ndisks) {
    st->disk_budget = refill (st->disk_budget, dt, drate, BUDGET_REC);
    if (drate > 0 && st->disk_budget >= BUDGET_REC) {
      disk_write (g, st);
      busy = true;
    }
  }

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
    st->budget = budget;
    if (!busy)
      sleep_ns (IDLE_NS);
  }
}

/* Throttled (set_throttle): run (100 - pct) % of every THROTTLE_NS and
 * sleep the rest, waking at once for a pause or a stop (a throttle must
 * not lengthen the downtime).  The time slept earns no budget: the
 * guest's writes are work its vCPU does, and a vCPU held off the CPU does
 * not do it later (unlike a host's short deschedule, which step catches
 * up) -- the CPU-bound guest that auto-converge can slow down.  A guest
 * whose writes arrive at an outside pace (DMA, a network) cannot be
 * slowed this way; doc/design.md, "Auto-converge". */
static void
throttle_wait (struct guest *g, volatile struct guest_state *st)
{
  unsigned pct = __atomic_load_n (&g->throttle, __ATOMIC_ACQUIRE);
  uint64_t now = sxm_now_ns (), off;
  struct timespec dl;
  int e = 0;

  if (pct == 0) {
    g->slice_t = 0;
    return;
  }
  if (g->slice_t == 0)
    g->slice_t = now;
  if (now - g->slice_t < THROTTLE_NS / 100 * (100 - pct))
    return;
  off = THROTTLE_NS / 100 * pct;
  clock_gettime (CLOCK_MONOTONIC, &dl);
  dl.tv_nsec += off;
  dl.tv_sec += dl.tv_nsec / 1000000000;
  dl.tv_nsec %= 1000000000;
  pthread_mutex_lock (&g->lock);
  while (!g->pause_req && !g->stop && e != ETIMEDOUT)
    e = pthread_cond_timedwait (&g->cond, &g->lock, &dl);
  pthread_mutex_unlock (&g->lock);
  g->slice_t = sxm_now_ns ();
  st->budget_t = g->slice_t;
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
    throttle_wait (g, st);
    step (g, st);
  }
}

/* ---- host-side control ---------------------------------------------- */

/* The park/release rendezvous (a guest adopted as a source gets its own). */
static void
guest_sync_init (struct guest *g)
{
  sxm_cond_init_monotonic (&g->cond);
  pthread_mutex_init (&g->lock, NULL);
  g->sync_init = true;
}

static int
guest_map (struct guest *g, const char *role, uint64_t npages)
{
  g->role = role;
  g->wbuf = malloc (REC_SIZE);
  g->rbuf = malloc (REC_SIZE);
  if (!g->wbuf || !g->rbuf) {
    sxm_error ("uffd: out of memory");
    return -1;
  }
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
  guest_sync_init (g);
  return 0;
}

static int
guest_spawn (struct guest *g)
{
  int e;

  g->counter_resumed = state_of (g)->counter;
  g->disk_seq_resumed = state_of (g)->disk_seq;
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
  /* An absolute timespec on the condition's clock (CLOCK_MONOTONIC, as
   * sxm_now's), which is what pthread_cond_timedwait takes. */
  clock_gettime (CLOCK_MONOTONIC, &dl);
  dl.tv_sec += PARK_TIMEOUT_S;
  pthread_mutex_lock (&g->lock);
  g->pause_req = true;
  __atomic_store_n (&g->req, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast (&g->cond);    /* a throttled vCPU's sleep */
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
    g->disk_seq_resumed = state_of (g)->disk_seq;
    g->pause_req = false;
    __atomic_store_n (&g->req, g->stop, __ATOMIC_RELEASE);
    pthread_cond_broadcast (&g->cond);
  }
  pthread_mutex_unlock (&g->lock);
  return 0;
}

/* End the vCPU thread (its RAM stays).  A parked vCPU leaves page 0 as
 * it parked it; a running one stops between two iterations. */
static void
guest_stop (struct guest *g)
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
}

static void
guest_destroy (struct guest *g)
{
  guest_stop (g);
  free (g->wbuf);
  free (g->rbuf);
  g->wbuf = g->rbuf = NULL;
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
  /* The vCPU indexes g->disks by page 0's numbers. */
  if (st->ndisks != g->ndisks) {
    sxm_error ("uffd: %s: page 0 of the %s guest says it has %" PRIu32
               " disk(s), it was given %u", what, g->role,
               (uint32_t) st->ndisks, g->ndisks);
    return -1;
  }
  if (st->ndisks && (!slots_ok (st->disk_slots) || st->disk_rng == 0)) {
    sxm_error ("uffd: %s: page 0 of the %s guest has %" PRIu32 " record "
               "slots per disk and disk rng %" PRIu64 " (slots: a multiple "
               "of 4 from 4 to %" PRIu32 "; rng: not 0)", what, g->role,
               (uint32_t) st->disk_slots, (uint64_t) st->disk_rng,
               DISK_SLOTS_MAX);
    return -1;
  }
  for (unsigned i = 0; i < g->ndisks; i++)
    if (st->disk_size[i] != g->disks[i]->size ||
        !layout_fits (st->disk_size[i], st->disk_slots)) {
      sxm_error ("uffd: %s: page 0 of the %s guest says disk %u is %"
                 PRIu64 " bytes with %" PRIu32 " slots; %s is %" PRIu64
                 " bytes", what, g->role, i, (uint64_t) st->disk_size[i],
                 (uint32_t) st->disk_slots, g->disks[i]->uri,
                 g->disks[i]->size);
      return -1;
    }
  return 0;
}

/* A consistent look at a guest, pausing it for the read if it runs. */
struct snapshot {
  const char *state;            /* running, paused, loaded */
  uint64_t counter, writes, checksum, actual;
  unsigned ndisks;
  uint64_t disk_seq, reads_ok, reads_bad, io_errors;
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
    sn->ndisks = st->ndisks;
    sn->disk_seq = st->disk_seq;
    sn->reads_ok = st->disk_reads_ok;
    sn->reads_bad = st->disk_reads_bad;
    sn->io_errors = st->disk_io_errors;
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
  if (sn.ok && sn.ndisks)
    jbuf_add (buf, ",\"disks\":%u,\"disk_seq\":%" PRIu64
              ",\"disk_reads_ok\":%" PRIu64 ",\"disk_reads_bad\":%" PRIu64
              ",\"disk_io_errors\":%" PRIu64, sn.ndisks, sn.disk_seq,
              sn.reads_ok, sn.reads_bad, sn.io_errors);
}

/* What the check found on the disks. */
struct disk_verdict {
  uint64_t verified, bad, pending, unreadable;
};

/* Compare BUF (N records of group GRP of DISK, from index IDX0) with what
 * each slot must hold as of disk_seq. */
static void
verify_chunk (struct guest *g, volatile struct guest_state *st,
              uint32_t disk, unsigned grp, uint64_t idx0, unsigned n,
              const uint8_t *buf, uint8_t *want, struct disk_verdict *v)
{
  for (unsigned k = 0; k < n; k++) {
    uint32_t slot = (idx0 + k) * 4 + grp;
    uint64_t q = newest_record (st->disk_seq, st->ndisks, st->disk_slots,
                                disk, slot);
    const uint8_t *got = buf + (size_t) k * REC_SIZE;

    if (q == 0)
      continue;                 /* never written */
    record_make (want, q, st->disk_nonce, disk, slot);
    if (memcmp (got, want, REC_SIZE) == 0) {
      v->verified++;
      continue;
    }
    /* A write that failed may still have reached the disk, whole or in
     * part: that one slot may hold the record being retried. */
    if (st->disk_pending && rec_disk (st->disk_pending, st->ndisks) == disk &&
        rec_slot (st->disk_pending, st->ndisks, st->disk_slots) == slot) {
      v->pending++;
      continue;
    }
    if (v->bad++ == 0) {
      uint64_t seq = 0;
      memcpy (&seq, got + 8, 8);
      sxm_error ("uffd: the %s guest's disk %" PRIu32 " (%s), slot %" PRIu32
                 " at offset %" PRIu64 ": record %" PRIu64 " expected, the "
                 "slot holds %s (seq field %" PRIu64 ")", g->role, disk,
                 g->disks[disk]->uri, slot,
                 slot_offset (st->disk_size[disk], slot), q,
                 memcmp (got, REC_MAGIC, 8) ? "no record" : "another record",
                 le64 (seq));
    }
  }
}

/* Every slot of every disk against the newest record that maps to it;
 * the guest is parked.  -1 only if it could not look at all. */
static int
verify_disks (struct guest *g, struct disk_verdict *v)
{
  volatile struct guest_state *st = state_of (g);
  uint64_t per_group = st->disk_slots / 4;
  uint8_t *buf = malloc ((size_t) CHECK_CHUNK * REC_SIZE);
  uint8_t *want = malloc (REC_SIZE);

  memset (v, 0, sizeof *v);
  if (!buf || !want) {
    sxm_error ("uffd: out of memory");
    free (buf);
    free (want);
    return -1;
  }
  for (uint32_t disk = 0; disk < st->ndisks; disk++)
    for (unsigned grp = 0; grp < 4; grp++)
      for (uint64_t idx = 0; idx < per_group; idx += CHECK_CHUNK) {
        unsigned n = per_group - idx < CHECK_CHUNK ? per_group - idx
          : CHECK_CHUNK;
        uint64_t off = group_start (st->disk_size[disk], grp) + idx * REC_SIZE;

        if (nbd_pread (g->disks[disk]->nbd, buf, (size_t) n * REC_SIZE, off,
                       0) == -1) {
          if (v->unreadable == 0)
            sxm_error ("uffd: the %s guest's disk %" PRIu32 " (%s): reading "
                       "%u records at offset %" PRIu64 ": %s", g->role, disk,
                       g->disks[disk]->uri, n, off, nbd_get_error ());
          v->unreadable += n;
          continue;
        }
        verify_chunk (g, st, disk, grp, idx, n, buf, want, v);
      }
  free (buf);
  free (want);
  return 0;
}

/* Run SECONDS, park, verify, run on. */
static int
check (struct guest *g, double seconds, struct jbuf *buf)
{
  volatile struct guest_state *st = state_of (g);
  uint64_t c0, c1, cs, want, got;
  struct timespec ts;
  bool advanced, sum_ok, disks_ok = true, disk_advanced = true;
  double t0;

  if (!guest_running (g)) {
    sxm_error ("uffd: the %s guest is not running, so it cannot be checked",
               g->role);
    jbuf_add (buf, ",\"running\":false");
    return -1;
  }
  /* The guest's pace during the check (a throttle left on would show). */
  cs = __atomic_load_n (&st->counter, __ATOMIC_RELAXED);
  t0 = sxm_now ();
  if (seconds > 0) {
    ts = sxm_timespec (seconds);
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
  jbuf_add (buf, ",\"progress_rate\":%.0f", (c1 - cs) / (sxm_now () - t0));
  want = st->checksum;
  got = region_xor (g, st->region_start, st->region_len);
  advanced = c1 > c0;
  sum_ok = got == want;
  jbuf_add (buf, ",\"counter_at_resume\":%" PRIu64 ",\"counter\":%" PRIu64
            ",\"counter_advanced\":%s,\"writes\":%" PRIu64
            ",\"checksum\":\"%016" PRIx64 "\",\"region_xor\":\"%016" PRIx64
            "\",\"checksum_ok\":%s", c0, c1, advanced ? "true" : "false",
            (uint64_t) st->writes, want, got, sum_ok ? "true" : "false");
  if (st->ndisks) {
    struct disk_verdict v;
    uint64_t d0 = g->disk_seq_resumed, d1 = st->disk_seq;

    disks_ok = verify_disks (g, &v) == 0;
    disk_advanced = d1 > d0 || seconds <= 0;
    jbuf_add (buf, ",\"disks\":%" PRIu32 ",\"disk_seq_at_resume\":%" PRIu64
              ",\"disk_seq\":%" PRIu64 ",\"disk_seq_advanced\":%s"
              ",\"records_verified\":%" PRIu64 ",\"records_bad\":%" PRIu64
              ",\"records_pending\":%" PRIu64 ",\"records_unreadable\":%"
              PRIu64 ",\"disk_reads_ok\":%" PRIu64 ",\"disk_reads_bad\":%"
              PRIu64 ",\"disk_io_errors\":%" PRIu64,
              (uint32_t) st->ndisks, d0, d1, d1 > d0 ? "true" : "false",
              v.verified, v.bad, v.pending, v.unreadable,
              (uint64_t) st->disk_reads_ok, (uint64_t) st->disk_reads_bad,
              (uint64_t) st->disk_io_errors);
    if (disks_ok && (v.bad || v.unreadable)) {
      sxm_error ("uffd: the %s guest's disks are inconsistent: %" PRIu64
                 " of %" PRIu64 " written slots hold the wrong record, %"
                 PRIu64 " could not be read", g->role, v.bad,
                 v.verified + v.bad + v.pending + v.unreadable, v.unreadable);
      disks_ok = false;
    }
    if (st->disk_reads_bad) {
      sxm_error ("uffd: the %s guest read back %" PRIu64 " bad record(s) "
                 "from its disks, the first one record %" PRIu64, g->role,
                 (uint64_t) st->disk_reads_bad, (uint64_t) st->disk_first_bad);
      disks_ok = false;
    }
    if (!disk_advanced)
      sxm_error ("uffd: the %s guest wrote no disk record in %.3f s (disk_seq "
                 "still %" PRIu64 ", %" PRIu64 " I/O errors)", g->role,
                 seconds, d1, (uint64_t) st->disk_io_errors);
  }
  guest_unpause (g);
  if (!advanced)
    sxm_error ("uffd: the %s guest's counter did not advance in %.3f s "
               "(still %" PRIu64 ")", g->role, seconds, c1);
  if (!sum_ok)
    sxm_error ("uffd: the %s guest's memory is inconsistent: its dirty "
               "region XORs to %016" PRIx64 ", its state says %016" PRIx64,
               g->role, got, want);
  return advanced && sum_ok && disks_ok && disk_advanced ? 0 : -1;
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
 * the rest zero, so that zero-page handling matters in a migration.  The
 * disks' nonce is random, so that a guest never takes another one's
 * records on a reused disk for its own. */
static void
guest_fill (struct guest *g, uint64_t region_len, uint64_t rate,
            const struct xm_guest_opts *o)
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

  st->disk_nonce = 0;
  if (getrandom ((void *) &st->disk_nonce, sizeof st->disk_nonce, 0) !=
      (ssize_t) sizeof st->disk_nonce)
    st->disk_nonce = sxm_now_ns () ^ ((uint64_t) getpid () << 32);
  st->ndisks = o->ndisks;
  if (o->ndisks) {
    st->disk_slots = o->disk_slots;
    st->disk_rate = o->disk_rate;
    st->disk_rng = xorshift (st->disk_nonce | 1);
    for (unsigned i = 0; i < o->ndisks; i++)
      st->disk_size[i] = o->disks[i]->size;
  }
}

/* The disk options of a new guest, and each disk against the layout. */
static int
disks_ok (const struct xm_guest_opts *o)
{
  if (o->ndisks > XM_DISKS_MAX) {
    sxm_error ("uffd: %u disks: the uffd guest takes at most %d", o->ndisks,
               XM_DISKS_MAX);
    return -1;
  }
  if (o->ndisks == 0)
    return 0;
  if (!slots_ok (o->disk_slots)) {
    sxm_error ("uffd: %" PRIu32 " record slots per disk: a multiple of 4 "
               "from 4 to %" PRIu32 " is needed", o->disk_slots,
               DISK_SLOTS_MAX);
    return -1;
  }
  if (o->disk_rate > DISK_RATE_MAX) {
    sxm_error ("uffd: a disk rate of %" PRIu64 " records/s is over the "
               "guest's limit of %" PRIu64, o->disk_rate, DISK_RATE_MAX);
    return -1;
  }
  for (unsigned i = 0; i < o->ndisks; i++)
    if (!layout_fits (o->disks[i]->size, o->disk_slots)) {
      sxm_error ("uffd: disk %u (%s) is too small: %" PRIu64 " bytes "
                 "cannot hold %" PRIu32 " record slots in four groups at "
                 "2 MiB-aligned quarters; %" PRIu64 " bytes would", i,
                 o->disks[i]->uri, o->disks[i]->size, o->disk_slots,
                 layout_min (o->disk_slots));
      return -1;
    }
  return 0;
}

static void uffd_close_source (struct xm_source *s, bool migrated);

/* An empty source: no RAM, no tracking yet, its scan vector ready. */
static struct xm_source *
source_alloc (void)
{
  struct xm_source *s = calloc (1, sizeof *s);

  if (s) {
    s->uffd = s->pagemap = -1;
    s->vec = calloc (SCAN_VEC, sizeof *s->vec);
    if (s->vec)
      return s;
    free (s);
  }
  sxm_error ("uffd: out of memory");
  return NULL;
}

static int
uffd_open_source (const char *id, const struct xm_guest_opts *o,
                  struct xm_source **out)
{
  struct xm_source *s;
  uint64_t npages, region;

  if (!ram_ok (o->mem_bytes, "a guest of") || disks_ok (o) == -1)
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

  if (!(s = source_alloc ()))
    return -1;
  if (guest_map (&s->g, "source", npages) == -1)
    goto fail;
  if (tracking_open (s) == -1)
    goto fail;
  for (unsigned i = 0; i < o->ndisks; i++)
    s->g.disks[i] = o->disks[i];
  s->g.ndisks = o->ndisks;
  guest_fill (&s->g, region, o->dirty_rate, o);
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
#define X(f, w) c->f = le##w (st->f);
  CTX_DISK_FIELDS (X)
#undef X
  for (unsigned i = 0; i < XM_DISKS_MAX; i++)
    c->disk_size[i] = le64 (st->disk_size[i]);
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

static int
uffd_set_throttle (struct xm_source *s, unsigned pct)
{
  __atomic_store_n (&s->g.throttle, pct > 99 ? 99 : pct, __ATOMIC_RELEASE);
  return 0;
}

static uint64_t
uffd_guest_progress (struct xm_source *s)
{
  return __atomic_load_n (&state_of (&s->g)->counter, __ATOMIC_RELAXED);
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

/* The blob's disk fields: in range, and what this receiver's disks
 * (set_disks) can run (their number, and each one's size, which fixes
 * where every record lies). */
static int
ctx_disks_ok (const struct uffd_ctx *c)
{
  uint64_t cap;

  if (c->ndisks > XM_DISKS_MAX) {
    sxm_error ("uffd: context: 'ndisks' is %" PRIu32 ", at most %d",
               c->ndisks, XM_DISKS_MAX);
    return -1;
  }
  for (unsigned i = c->ndisks; i < XM_DISKS_MAX; i++)
    if (c->disk_size[i]) {
      sxm_error ("uffd: context: 'disk_size[%u]' is %" PRIu64 " for a "
                 "guest with %" PRIu32 " disk(s)", i, c->disk_size[i],
                 c->ndisks);
      return -1;
    }
  if (c->ndisks == 0) {
    /* Nothing but the nonce and the rng means anything without disks. */
#define X(f, w)                                                         \
    if (c->f && strcmp (#f, "disk_nonce") && strcmp (#f, "disk_rng")) { \
      sxm_error ("uffd: context: '%s' is %" PRIu64 " for a guest without " \
                 "disks", #f, (uint64_t) c->f);                         \
      return -1;                                                        \
    }
    CTX_DISK_FIELDS (X)
#undef X
    return 0;
  }
  if (!slots_ok (c->disk_slots)) {
    sxm_error ("uffd: context: 'disk_slots' is %" PRIu32 ", not a multiple "
               "of 4 from 4 to %" PRIu32, c->disk_slots, DISK_SLOTS_MAX);
    return -1;
  }
  if (c->disk_rate > DISK_RATE_MAX) {
    sxm_error ("uffd: context: 'disk_rate' %" PRIu64 " is over %" PRIu64,
               c->disk_rate, DISK_RATE_MAX);
    return -1;
  }
  cap = CATCHUP_NS / 1000 * c->disk_rate;
  if (c->disk_budget > (cap > BUDGET_REC ? cap : BUDGET_REC)) {
    sxm_error ("uffd: context: 'disk_budget' %" PRIu64 " is over its cap "
               "at 'disk_rate' %" PRIu64, c->disk_budget, c->disk_rate);
    return -1;
  }
  if (c->disk_rng == 0) {
    sxm_error ("uffd: context: 'disk_rng' is 0, which xorshift never "
               "reaches");
    return -1;
  }
  if (c->disk_seq > c->counter) {
    sxm_error ("uffd: context: 'disk_seq' %" PRIu64 " exceeds 'counter' %"
               PRIu64 " (one record per iteration at most)", c->disk_seq,
               c->counter);
    return -1;
  }
  if (c->disk_pending && c->disk_pending != c->disk_seq + 1) {
    sxm_error ("uffd: context: 'disk_pending' %" PRIu64 " is not the record "
               "after 'disk_seq' %" PRIu64, c->disk_pending, c->disk_seq);
    return -1;
  }
  if (c->disk_reads_ok > c->disk_seq / 4 ||
      c->disk_reads_bad > c->disk_seq / 4 - c->disk_reads_ok) {
    sxm_error ("uffd: context: 'disk_reads_ok' %" PRIu64 " and "
               "'disk_reads_bad' %" PRIu64 " add up to more than one re-read "
               "per 4 of 'disk_seq' %" PRIu64, c->disk_reads_ok,
               c->disk_reads_bad, c->disk_seq);
    return -1;
  }
  if ((c->disk_reads_bad == 0) != (c->disk_first_bad == 0) ||
      c->disk_first_bad > c->disk_seq) {
    sxm_error ("uffd: context: 'disk_first_bad' %" PRIu64 " with %" PRIu64
               " bad re-reads of %" PRIu64 " records", c->disk_first_bad,
               c->disk_reads_bad, c->disk_seq);
    return -1;
  }
  for (unsigned i = 0; i < c->ndisks; i++)
    if (!layout_fits (c->disk_size[i], c->disk_slots)) {
      sxm_error ("uffd: context: 'disk_size[%u]' %" PRIu64 " bytes cannot "
                 "hold %" PRIu32 " record slots", i, c->disk_size[i],
                 c->disk_slots);
      return -1;
    }
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
#define X(f, w) c.f = le##w (c.f);
  CTX_DISK_FIELDS (X)
#undef X
  for (unsigned i = 0; i < XM_DISKS_MAX; i++)
    c.disk_size[i] = le64 (c.disk_size[i]);
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
  if (ctx_disks_ok (&c) == -1)
    return -1;

  /* The guest's own disks must be the ones it finds here. */
  if (c.ndisks != d->g.ndisks) {
    sxm_error ("uffd: the guest has %" PRIu32 " disk(s), this receiver was "
               "given %u (--disk): refusing it", c.ndisks, d->g.ndisks);
    return -1;
  }
  for (unsigned i = 0; i < c.ndisks; i++)
    if (c.disk_size[i] != d->g.disks[i]->size) {
      sxm_error ("uffd: the guest's disk %u is %" PRIu64 " bytes, this "
                 "receiver's disk %u (%s) is %" PRIu64 " bytes: refusing it",
                 i, c.disk_size[i], i, d->g.disks[i]->uri,
                 d->g.disks[i]->size);
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
#define X(f, w) AGREE (f);
  CTX_DISK_FIELDS (X)
#undef X
  for (unsigned i = 0; i < XM_DISKS_MAX; i++)
    AGREE (disk_size[i]);
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
#define X(f, w) st->f = c.f;
  CTX_DISK_FIELDS (X)
#undef X
  for (unsigned i = 0; i < XM_DISKS_MAX; i++)
    st->disk_size[i] = c.disk_size[i];
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

static int
uffd_set_disks (struct xm_dest *d, struct xm_vbd *const *disks, unsigned n)
{
  if (d->g.live || d->loaded) {
    sxm_error ("uffd: the destination guest's disks are given before its "
               "context, not after");
    return -1;
  }
  if (n > XM_DISKS_MAX) {
    sxm_error ("uffd: %u disks: the uffd guest takes at most %d", n,
               XM_DISKS_MAX);
    return -1;
  }
  for (unsigned i = 0; i < n; i++)
    d->g.disks[i] = disks[i];
  d->g.ndisks = n;
  return 0;
}

/* The received guest becomes a source: the same RAM and disks under a new
 * vCPU thread, now with a dirty log.  Everything the guest is lives in
 * its RAM, so a vCPU parked by one thread and resumed by another is, to
 * the guest, one pause — as short as starting a thread. */
static int
uffd_adopt_dest (struct xm_dest *d, struct xm_source **out)
{
  struct xm_source *s;

  if (!d->g.live) {
    sxm_error ("uffd: only a started destination guest can become a "
               "source");
    return -1;
  }
  if (!(s = source_alloc ()))
    return -1;
  /* What can fail without the guest noticing comes first: the dirty
   * tracking (its probe only looks at page 0). */
  s->g.role = "source";
  s->g.ram = d->g.ram;
  s->g.npages = d->g.npages;
  if (tracking_open (s) == -1) {
    s->g.ram = NULL;
    uffd_close_source (s, false);
    return -1;
  }
  if (guest_pause (&d->g) == -1) {
    s->g.ram = NULL;
    uffd_close_source (s, false);
    return -1;
  }
  guest_stop (&d->g);

  memcpy (s->g.disks, d->g.disks, sizeof s->g.disks);
  s->g.ndisks = d->g.ndisks;
  s->g.wbuf = d->g.wbuf;
  s->g.rbuf = d->g.rbuf;
  d->g.wbuf = d->g.rbuf = NULL;
  d->g.ram = NULL;
  guest_sync_init (&s->g);
  if (guest_spawn (&s->g) == -1) {
    /* Give it back to the destination's thread rather than lose it. */
    d->g.ram = s->g.ram;
    d->g.wbuf = s->g.wbuf;
    d->g.rbuf = s->g.rbuf;
    s->g.ram = NULL;
    s->g.wbuf = s->g.rbuf = NULL;
    uffd_close_source (s, false);
    if (guest_spawn (&d->g) == -1)
      sxm_error ("uffd: the received guest could not be restarted either");
    return -1;
  }
  uffd_close_dest (d, true);
  *out = s;
  return 0;
}

const struct xm_backend_ops xm_backend_uffd = {
  .name = "uffd",
  .id = XM_BACKEND_UFFD,
  .test_guest = true,
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
  .set_throttle = uffd_set_throttle,
  .guest_progress = uffd_guest_progress,
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
  .set_disks = uffd_set_disks,
  .adopt_dest = uffd_adopt_dest,
};
