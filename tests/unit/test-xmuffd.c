/* xenmem's uffd backend: a real guest workload under the kernel's dirty
 * tracking (userfaultfd async write-protect + PAGEMAP_SCAN).
 *
 * The dirty log is checked exactly, not statistically: between two
 * pauses the test replays the guest's own pseudo-random walk from the
 * context blob's rng and write count, and the log must hold precisely
 * those pages plus the state page.  Then in-process migrations without a
 * stream (round 0, dirty rounds, pause, last round, context) must give a
 * byte-identical destination that runs on and verifies, while a migration
 * that drops its last round must be caught.
 *
 * What the kernel lacks is simulated with seccomp in a child: each
 * missing piece must stop open_source with a message that names it.
 *
 * XMUFFD_MEASURE=1 adds timings on a 1 GiB guest (printed as comments). */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>

#include "backend.h"
#include "fullio.h"
#include "log.h"
#include "monotime.h"
#include "tap.h"

#define PAGE XM_PAGE_SIZE
#define MIB (UINT64_C (1) << 20)

static const struct xm_backend_ops *B = &xm_backend_uffd;
static char last_err[1024];

static void
sink (enum sxm_log_level level, const char *msg)
{
  if (level != SXM_LOG_ERROR)
    return;
  snprintf (last_err, sizeof last_err, "%s", msg);
  printf ("# (error) %s\n", msg);
}

static bool
err_has (const char *s)
{
  return strstr (last_err, s) != NULL;
}

static void
sleep_s (double s)
{
  struct timespec ts = { (time_t) s, (long) ((s - (time_t) s) * 1e9) };

  nanosleep (&ts, NULL);
}

static bool
bit (const uint8_t *bm, uint64_t i)
{
  return bm[i / 8] >> (i % 8) & 1;
}

/* The context blob, version 2, as backend-uffd.c lays it out (little-
 * endian, offsets fixed): the test reads it to replay the guest.  Version
 * 2 appended the disk fields from offset 88. */
enum {
  CTX_VERSION = 8, CTX_SIZE = 12, CTX_NPAGES = 16, CTX_COUNTER = 24,
  CTX_RNG = 32, CTX_CHECKSUM = 40, CTX_RSTART = 48, CTX_RLEN = 56,
  CTX_RATE = 64, CTX_BUDGET = 72, CTX_WRITES = 80, CTX_NDISKS = 88,
  CTX_DISK_SLOTS = 92, CTX_DISK_SEQ = 112, CTX_DISK_PENDING = 136,
  CTX_DISK_SIZE = 176, CTX_LEN = 240,
};

static uint64_t
ctx_u64 (const void *blob, unsigned off)
{
  uint64_t v;

  memcpy (&v, (const uint8_t *) blob + off, 8);
  return v;
}

static void
ctx_set_u64 (void *blob, unsigned off, uint64_t v)
{
  memcpy ((uint8_t *) blob + off, &v, 8);
}

/* The guest's walk (backend-uffd.c step()): each write advances xorshift64
 * once and lands in page region_start + x % region_len. */
static uint64_t
xorshift (uint64_t x)
{
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return x;
}

struct ctx {
  void *blob;
  size_t len;
  uint64_t counter, rng, writes, rstart, rlen;
};

static int
paused_ctx (struct xm_source *s, struct ctx *c)
{
  if (B->get_context (s, &c->blob, &c->len) == -1)
    return -1;
  c->counter = ctx_u64 (c->blob, CTX_COUNTER);
  c->rng = ctx_u64 (c->blob, CTX_RNG);
  c->writes = ctx_u64 (c->blob, CTX_WRITES);
  c->rstart = ctx_u64 (c->blob, CTX_RSTART);
  c->rlen = ctx_u64 (c->blob, CTX_RLEN);
  return 0;
}

static struct xm_source *
open_guest (uint64_t mem, uint64_t rate, uint64_t region)
{
  struct xm_guest_opts g = {
    .mem_bytes = mem, .dirty_rate = rate, .dirty_bytes = region,
  };
  struct xm_source *s = NULL;

  if (B->open_source (NULL, &g, &s) == -1)
    return NULL;
  return s;
}

/* ---- refusals ---------------------------------------------------------- */

static void
test_refusals (void)
{
  struct xm_guest_opts g = { .mem_bytes = 3 * MIB };
  struct xm_source *s = NULL;
  struct xm_dest *d = NULL;

  ok (B->open_source (NULL, &g, &s) == -1 && err_has ("at least 4 MiB"),
      "3 MiB of RAM refused");
  g.mem_bytes = 5 * MIB;
  ok (B->open_source (NULL, &g, &s) == -1 && err_has ("multiple of 2 MiB"),
      "5 MiB (not a multiple of 2 MiB) refused");
  g.mem_bytes = 4 * MIB + 4096;
  ok (B->open_source (NULL, &g, &s) == -1, "4 MiB + 4 KiB refused");
  g.mem_bytes = 4 * MIB;
  g.dirty_bytes = 4 * MIB;
  ok (B->open_source (NULL, &g, &s) == -1 && err_has ("does not fit"),
      "a dirty region as large as RAM (no room for the state page) refused");
  ok (B->create_dest (NULL, 1000, &d) == -1, "a 1000-page destination "
      "refused");
  ok (B->create_dest (NULL, UINT64_MAX, &d) == -1, "a 2^64-page destination "
      "refused");
}

/* ---- a kernel without what we need (seccomp in a child) ---------------- */

#ifndef PAGEMAP_SCAN
struct pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask;
  uint64_t return_mask;
};
#define PAGEMAP_SCAN _IOWR ('f', 16, struct pm_scan_arg)
#endif

static int child_fd = -1;

static void
child_sink (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR && write (child_fd, msg, strlen (msg)) < 0)
    _exit (3);
}

/* In a child: syscall NR (and, if CMD is not -1, only ioctl request CMD)
 * fails with ERR; open_source must then fail with a message holding WANT. */
static void
refused_without (const char *what, long nr, long cmd, int err,
                 const char *want)
{
  int fd[2], status = -1;
  char msg[1024] = "";
  ssize_t got;
  pid_t pid;

  fflush (stdout);
  if (pipe (fd) == -1 || (pid = fork ()) == -1) {
    ok (0, "fork for %s", what);
    return;
  }
  if (pid == 0) {
    struct sock_filter f[] = {
      BPF_STMT (BPF_LD | BPF_W | BPF_ABS, offsetof (struct seccomp_data, nr)),
      BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, nr, 0, 3),
      /* the low 32 bits of the ioctl request (little-endian) */
      BPF_STMT (BPF_LD | BPF_W | BPF_ABS,
                offsetof (struct seccomp_data, args[1])),
      BPF_JUMP (BPF_JMP | BPF_JEQ | BPF_K, (uint32_t) cmd, 0, 1),
      BPF_STMT (BPF_RET | BPF_K, SECCOMP_RET_ERRNO | err),
      BPF_STMT (BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    struct xm_guest_opts g = { .mem_bytes = 4 * MIB };
    struct xm_source *s;

    if (cmd == -1)              /* every call of NR: straight to ERRNO */
      f[1].jt = 2;
    close (fd[0]);
    child_fd = fd[1];
    sxm_log_set_sink (child_sink);
    if (prctl (PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1 ||
        prctl (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == -1)
      _exit (2);
    _exit (B->open_source (NULL, &g, &s) == 0);
  }
  close (fd[1]);
  got = full_read (fd[0], msg, sizeof msg - 1);   /* to the child's exit */
  msg[got > 0 ? got : 0] = 0;
  close (fd[0]);
  waitpid (pid, &status, 0);
  printf ("# %s: %s\n", what, msg);
  ok (WIFEXITED (status) && WEXITSTATUS (status) == 0 && strstr (msg, want),
      "without %s, open_source fails saying so", what);
}

static void
test_missing_kernel (void)
{
  refused_without ("userfaultfd (ENOSYS)", SYS_userfaultfd, -1, ENOSYS,
                   "no userfaultfd");
  refused_without ("userfaultfd (EPERM, seccomp)", SYS_userfaultfd, -1, EPERM,
                   "not permitted");
  refused_without ("UFFD_FEATURE_WP_ASYNC", SYS_ioctl, UFFDIO_API, EINVAL,
                   "UFFD_FEATURE_WP_ASYNC");
  refused_without ("PAGEMAP_SCAN", SYS_ioctl, PAGEMAP_SCAN, ENOTTY,
                   "lacks the PAGEMAP_SCAN ioctl");
}

/* ---- the dirty log ------------------------------------------------------ */

static void
test_idle_guest (void)
{
  struct xm_source *s = open_guest (8 * MIB, 0, 0);
  uint64_t np, count = 0;
  uint8_t *bm;
  struct ctx c0 = { 0 }, c1 = { 0 };

  ok (s != NULL, "8 MiB guest with dirty_rate 0 runs");
  if (!s)
    return;
  np = B->npages (s);
  bm = calloc (np / 8, 1);
  ok (B->log_fetch (s, bm, &count) == -1 && err_has ("not enabled"),
      "log_fetch before log_enable refused");
  ok (B->log_enable (s) == 0, "log_enable");
  B->pause (s);
  paused_ctx (s, &c0);
  B->unpause (s);
  sleep_s (0.05);
  B->log_fetch (s, bm, &count);
  sleep_s (0.1);
  ok (B->log_fetch (s, bm, &count) == 0 && count == 1 && bit (bm, 0),
      "idle guest: only page 0 (its state) is dirty (%" PRIu64 " pages)",
      count);
  B->pause (s);
  paused_ctx (s, &c1);
  B->unpause (s);
  ok (c1.counter > c0.counter && c1.writes == 0,
      "idle guest still counts (%" PRIu64 " iterations in 0.15 s) and wrote "
      "no page", c1.counter - c0.counter);
  free (c0.blob);
  free (c1.blob);
  free (bm);
  B->close_source (s, false);
}

/* Between two pauses the log must be exactly the replayed walk + page 0. */
static void
test_exact_log (struct xm_source *s, double secs, uint64_t rate)
{
  uint64_t np = B->npages (s), count = 0, missing = 0, extra = 0, x;
  uint8_t *bm = calloc (np / 8, 1), *want = calloc (np / 8, 1);
  struct ctx a = { 0 }, b = { 0 };
  double t0, t1, per_s;

  B->pause (s);
  B->log_fetch (s, bm, &count);         /* start clean */
  paused_ctx (s, &a);
  t0 = sxm_now ();
  B->unpause (s);
  sleep_s (secs);
  B->pause (s);
  t1 = sxm_now ();
  ok (B->log_fetch (s, bm, &count) == 0, "log_fetch");
  paused_ctx (s, &b);
  B->unpause (s);

  x = a.rng;
  want[0] |= 1;
  for (uint64_t i = a.writes; i < b.writes; i++) {
    x = xorshift (x);
    uint64_t p = a.rstart + x % a.rlen;
    want[p / 8] |= 1u << (p % 8);
  }
  ok (x == b.rng, "replaying %" PRIu64 " writes from the first context's rng "
      "reaches the second's", b.writes - a.writes);
  for (uint64_t p = 0; p < np; p++) {
    if (bit (want, p) && !bit (bm, p))
      missing++;
    if (!bit (want, p) && bit (bm, p))
      extra++;
  }
  ok (missing == 0 && extra == 0, "the dirty log is exactly the pages the "
      "guest wrote plus page 0: %" PRIu64 " pages, %" PRIu64 " missing, %"
      PRIu64 " extra", count, missing, extra);
  per_s = (b.writes - a.writes) / (t1 - t0);
  ok (per_s > 0.6 * rate / PAGE && per_s < 1.4 * rate / PAGE,
      "write rate %.0f pages/s for dirty_rate %" PRIu64 " B/s (%.0f pages/s)",
      per_s, rate, (double) rate / PAGE);
  free (a.blob);
  free (b.blob);
  free (bm);
  free (want);
}

/* The guest's write count, read live from page 0 (struct guest_state in
 * backend-uffd.c: writes is the u64 at offset 88).  An aligned 8-byte load
 * is atomic, and the count only grows. */
static uint64_t
live_writes (struct xm_source *s)
{
  uint64_t pfn = 0, w;
  uint8_t page[PAGE];

  B->read_pages (s, &pfn, 1, page);
  memcpy (&w, page + 88, 8);
  return w;
}

/* Running (no pauses): a fetch that follows guest writes must never be
 * empty.  The guest's own count says when it wrote: if it rose by 2 or
 * more between just after one fetch and just before the next, the second
 * of those writes stored after the first fetch had ended (a write stores
 * before it counts), so its page is in the next log. */
static void
test_never_empty (struct xm_source *s)
{
  uint64_t np = B->npages (s), count, pages = 0, w0, w1 = 0, first, last;
  uint64_t pre, post;
  uint8_t *bm = calloc (np / 8, 1);
  int n = 25, active = 0, empty = 0;

  pre = live_writes (s);
  B->log_fetch (s, bm, &count);
  first = w0 = live_writes (s);
  for (int i = 0; i < n; i++) {
    sleep_s (0.02);
    w1 = live_writes (s);
    if (B->log_fetch (s, bm, &count) == -1)
      count = 0;
    if (w1 >= w0 + 2) {
      active++;
      if (count < 2 || !bit (bm, 0))
        empty++;
    }
    pages += count ? count - 1 : 0;
    w0 = live_writes (s);
  }
  last = w1;
  post = w0;
  ok (active >= 5 && empty == 0, "running: of %d fetches 20 ms apart, the "
      "%d that followed guest writes all hold guest pages (%d empty)", n,
      active, empty);
  /* Each write dirties one page, so no more pages than the writes counted
   * from before the first fetch to after the last (+1: one store may be
   * in flight); a page written twice in one window counts once, so at
   * least 90% of those counted strictly between the fetches. */
  ok (pages <= post - pre + 1 && pages + 2 >= (last - first) * 9 / 10,
      "%" PRIu64 " dirty pages over the fetches for %" PRIu64 "..%" PRIu64
      " guest writes", pages, last - first, post - pre);
  free (bm);
}

/* Pause/unpause N times; prints the distribution, returns the median
 * (-1 if a pause failed). */
static double
pause_latency (struct xm_source *s, const char *label)
{
  enum { N = 200 };
  double t[N], tmp;
  int bad = 0;

  for (int i = 0; i < N; i++) {
    double t0 = sxm_now ();
    if (B->pause (s) == -1)
      bad++;
    t[i] = sxm_now () - t0;
    B->unpause (s);
    sleep_s (0.0005);
  }
  for (int i = 1; i < N; i++)
    for (int j = i; j > 0 && t[j] < t[j - 1]; j--)
      tmp = t[j], t[j] = t[j - 1], t[j - 1] = tmp;
  printf ("# pause latency, %s, %d pauses: median %.1f us, p90 %.1f us, "
          "p99 %.1f us, max %.1f us\n", label, N, t[N / 2] * 1e6,
          t[N * 9 / 10] * 1e6, t[N * 99 / 100] * 1e6, t[N - 1] * 1e6);
  return bad ? -1 : t[N / 2];
}

static void
test_pause_latency (struct xm_source *s)
{
  double m = pause_latency (s, "64 MiB guest at 16 MiB/s, log on");

  ok (m >= 0 && m < 0.005, "pause parks the vCPU quickly (median %.1f us)",
      m * 1e6);
}

static void
test_disable (struct xm_source *s)
{
  uint64_t np = B->npages (s), count = 0;
  uint8_t *bm = calloc (np / 8, 1);
  struct ctx a = { 0 }, b = { 0 };

  ok (B->log_disable (s) == 0, "log_disable");
  ok (B->log_fetch (s, bm, &count) == -1, "log_fetch after log_disable "
      "refused");
  B->pause (s);
  paused_ctx (s, &a);
  B->unpause (s);
  sleep_s (0.05);
  B->pause (s);
  paused_ctx (s, &b);
  B->unpause (s);
  ok (b.writes > a.writes, "the guest writes on without the log (%" PRIu64
      " writes in 50 ms)", b.writes - a.writes);
  ok (B->log_enable (s) == 0, "log_enable again");
  sleep_s (0.05);
  ok (B->log_fetch (s, bm, &count) == 0 && count > 1,
      "re-enabled log sees writes (%" PRIu64 " pages)", count);
  free (a.blob);
  free (b.blob);
  free (bm);
}

/* ---- in-process migration ---------------------------------------------- */

enum last_round { FULL, LAST_ROUND_PAGE0_ONLY, NO_LAST_ROUND };

static bool
page_is_zero (const uint8_t *p)
{
  const uint64_t *w = (const uint64_t *) p;

  for (unsigned i = 0; i < PAGE / 8; i++)
    if (w[i])
      return false;
  return true;
}

/* Copy the pages set in BM (NULL: all), zero pages as zero writes. */
static int
copy_pages (struct xm_source *s, struct xm_dest *d, const uint8_t *bm,
            uint64_t *sent, uint64_t *zeros)
{
  uint64_t np = B->npages (s);
  uint8_t buf[PAGE];

  for (uint64_t p = 0; p < np; p++) {
    if (bm && !bit (bm, p))
      continue;
    if (B->read_pages (s, &p, 1, buf) == -1)
      return -1;
    if (page_is_zero (buf)) {
      if (B->write_pages (d, &p, 1, NULL) == -1)
        return -1;
      ++*zeros;
    }
    else if (B->write_pages (d, &p, 1, buf) == -1)
      return -1;
    ++*sent;
  }
  return 0;
}

/* Differing pages between the paused source and the destination. */
static uint64_t
memory_diff (struct xm_source *s, struct xm_dest *d)
{
  uint64_t np = B->npages (s), diff = 0;
  uint8_t a[PAGE], b[PAGE];

  for (uint64_t p = 0; p < np; p++) {
    if (B->read_pages (s, &p, 1, a) == -1 || B->read_dest (d, &p, 1, b) == -1)
      return UINT64_MAX;
    diff += memcmp (a, b, PAGE) != 0;
  }
  return diff;
}

struct mig {
  struct xm_dest *d;
  void *blob;
  size_t len;
  int set_context;              /* set_context's result */
  uint64_t diff;                /* pages differing after the context */
  uint64_t last;                /* pages in the stop-and-copy round */
};

static void
migrate (struct xm_source *s, enum last_round mode, struct mig *m)
{
  uint64_t np = B->npages (s), count = 0, sent = 0, zeros = 0;
  uint8_t *dirty = calloc (np / 8, 1), *more = calloc (np / 8, 1);
  uint8_t *page0 = calloc (np / 8, 1);

  memset (m, 0, sizeof *m);
  m->set_context = -1;
  if (B->create_dest (NULL, np, &m->d) == -1)
    goto out;
  B->log_fetch (s, dirty, &count);      /* round 0 copies everything after */
  copy_pages (s, m->d, NULL, &sent, &zeros);
  if (mode == FULL)
    ok (sent == np && zeros > np / 16, "round 0: %" PRIu64 " pages, %" PRIu64
        " of them zero", sent, zeros);
  B->log_fetch (s, dirty, &count);
  for (int r = 1; r <= 3; r++) {
    sent = zeros = 0;
    copy_pages (s, m->d, dirty, &sent, &zeros);
    B->log_fetch (s, dirty, &count);
  }
  sleep_s (0.03);                       /* let the last round have pages */
  B->pause (s);
  B->log_fetch (s, more, &count);
  m->last = 0;
  for (uint64_t i = 0; i < np / 8; i++) {
    dirty[i] |= more[i];
    m->last += __builtin_popcount (dirty[i]);
  }
  sent = zeros = 0;
  page0[0] = 1;
  if (mode == FULL)
    copy_pages (s, m->d, dirty, &sent, &zeros);
  else if (mode == LAST_ROUND_PAGE0_ONLY)
    copy_pages (s, m->d, page0, &sent, &zeros);
  B->get_context (s, &m->blob, &m->len);
  m->set_context = B->set_context (m->d, m->blob, m->len);
  m->diff = memory_diff (s, m->d);
 out:
  free (dirty);
  free (more);
  free (page0);
}

static void
test_migration (struct xm_source *s)
{
  struct mig m;
  struct jbuf rep = { 0 };
  struct xm_dest *d;
  uint64_t pfn = 0, count;
  uint8_t page[PAGE];

  migrate (s, FULL, &m);
  d = m.d;
  ok (d != NULL && m.set_context == 0, "set_context accepts the paused "
      "source's context");
  ok (m.last > 1, "the stop-and-copy round had %" PRIu64 " pages", m.last);
  ok (m.diff == 0, "destination memory is byte-identical to the paused "
      "source's (%" PRIu64 " pages differ)", m.diff);
  if (!d)
    return;
  ok (B->check_dest (d, 0.1, &rep) == -1 && err_has ("not running"),
      "check_dest before start refused");
  jbuf_free (&rep);

  /* The blob must agree with page 0. */
  {
    void *bad = malloc (m.len);
    memcpy (bad, m.blob, m.len);
    ctx_set_u64 (bad, CTX_COUNTER, ctx_u64 (bad, CTX_COUNTER) + 1);
    ok (B->set_context (d, bad, m.len) == -1 && err_has ("disagree on "
        "'counter'"), "a context whose counter is not page 0's is refused");
    memcpy (bad, m.blob, m.len);
    ctx_set_u64 (bad, CTX_CHECKSUM, ctx_u64 (bad, CTX_CHECKSUM) ^ 1);
    ok (B->set_context (d, bad, m.len) == -1 && err_has ("'checksum'"),
        "a context whose checksum is not page 0's is refused");
    free (bad);
    ok (B->set_context (d, m.blob, m.len) == 0, "the true context again");
  }

  ok (B->start (d) == 0, "start the destination");
  ok (B->write_pages (d, &pfn, 1, page) == -1, "write_pages into a running "
      "guest refused");
  ok (B->set_context (d, m.blob, m.len) == -1, "set_context on a running "
      "guest refused");
  ok (B->start (d) == -1, "a second start refused");
  ok (B->check_dest (d, 0.3, &rep) == 0 && rep.s &&
      strstr (rep.s, "\"checksum_ok\":true") &&
      strstr (rep.s, "\"counter_advanced\":true"),
      "check_dest: the destination counts on from %" PRIu64 " and its "
      "checksum verifies", ctx_u64 (m.blob, CTX_COUNTER));
  printf ("# check_dest: %s\n", rep.s ? rep.s : "");
  jbuf_free (&rep);
  {
    uint64_t c0 = ctx_u64 (m.blob, CTX_COUNTER), cr = 0;
    const char *p;
    jbuf_add (&rep, "{");
    B->check_dest (d, 0.05, &rep);
    p = rep.s ? strstr (rep.s, "\"counter_at_resume\":") : NULL;
    if (p)
      cr = strtoull (p + 20, NULL, 10);
    ok (cr > c0, "the destination's counter went on from the migrated "
        "value (%" PRIu64 " > %" PRIu64 ")", cr, c0);
    jbuf_free (&rep);
  }
  B->describe_dest (d, &rep);
  ok (rep.s && strstr (rep.s, "\"guest\":\"running\"") &&
      strstr (rep.s, "\"checksum_ok\":true"), "describe_dest: %s",
      rep.s ? rep.s : "");
  jbuf_free (&rep);
  B->close_dest (d, true);
  free (m.blob);

  /* The source stayed paused; describe it, then it runs on. */
  B->describe_source (s, &rep);
  ok (rep.s && strstr (rep.s, "\"guest\":\"paused\"") &&
      strstr (rep.s, "\"checksum_ok\":true"), "describe_source: %s",
      rep.s ? rep.s : "");
  jbuf_free (&rep);
  ok (B->check_source (s, 0.1, &rep) == -1, "check_source on a paused "
      "source refused");
  jbuf_free (&rep);
  B->unpause (s);
  ok (B->check_source (s, 0.1, &rep) == 0, "check_source on the resumed "
      "source passes");
  jbuf_free (&rep);
  {
    uint8_t *bm = calloc (B->npages (s) / 8, 1);
    B->log_fetch (s, bm, &count);
    free (bm);
  }
}

/* Negative controls: the check must be able to fail. */
static void
test_negative (struct xm_source *s)
{
  struct mig m;
  struct jbuf rep = { 0 };

  migrate (s, LAST_ROUND_PAGE0_ONLY, &m);
  ok (m.set_context == 0 && m.diff > 0, "last round reduced to page 0: the "
      "context loads, %" PRIu64 " pages differ from the source", m.diff);
  B->unpause (s);
  if (m.d && m.set_context == 0) {
    ok (B->start (m.d) == 0, "start it anyway");
    ok (B->check_dest (m.d, 0.2, &rep) == -1 && rep.s &&
        strstr (rep.s, "\"checksum_ok\":false"),
        "check_dest catches the lost last round (checksum mismatch)");
    jbuf_free (&rep);
  }
  if (m.d)
    B->close_dest (m.d, false);
  free (m.blob);

  migrate (s, NO_LAST_ROUND, &m);
  ok (m.set_context == -1 && err_has ("disagree"), "no last round at all: "
      "set_context refuses (page 0 disagrees with the context)");
  ok (B->start (m.d) == -1 && err_has ("no context"), "and start refuses a "
      "guest without a context");
  B->unpause (s);
  if (m.d)
    B->close_dest (m.d, false);
  free (m.blob);
}

/* Corrupted blobs, each refused with the field named. */
static void
test_bad_blobs (struct xm_source *s)
{
  struct xm_dest *d;
  void *good, *bad;
  size_t len;
  uint64_t np = B->npages (s);
  struct {
    unsigned off, width;
    uint64_t val;
    const char *field;
  } cases[] = {
    { 0, 1, 'Y', "'magic'" },
    { CTX_VERSION, 4, 1, "'version'" },
    { CTX_SIZE, 4, 80, "'size'" },
    { CTX_NPAGES, 8, np * 2, "'npages'" },
    { CTX_RSTART, 8, 0, "'region_start'" },
    { CTX_RSTART, 8, np, "'region_start'" },
    { CTX_RLEN, 8, np, "'region_len'" },
    { CTX_RLEN, 8, 0, "'region_len'" },
    { CTX_RLEN, 8, UINT64_MAX, "'region_len'" },
    { CTX_RNG, 8, 0, "'rng'" },
    { CTX_WRITES, 8, UINT64_MAX, "'writes'" },
    { CTX_NDISKS, 4, 9, "'ndisks'" },
    { CTX_NDISKS, 4, 1, "'disk_slots'" },
    { CTX_DISK_SLOTS, 4, 1024, "'disk_slots'" },
    { CTX_DISK_SEQ, 8, 5, "'disk_seq'" },
    { CTX_DISK_PENDING, 8, 1, "'disk_pending'" },
    { CTX_DISK_SIZE, 8, 64 * MIB, "'disk_size[0]'" },
    { CTX_DISK_SIZE + 56, 8, 64 * MIB, "'disk_size[7]'" },
  };

  if (B->create_dest (NULL, np, &d) == -1)
    return;
  B->pause (s);
  ok (B->get_context (s, &good, &len) == 0 && len == CTX_LEN,
      "get_context: %zu bytes", len);
  B->unpause (s);
  ok (B->get_context (s, &bad, &len) == -1, "get_context on a running guest "
      "refused");
  bad = malloc (len + 8);
  ok (B->set_context (d, good, len - 1) == -1 && err_has ("'len'"),
      "a short context refused");
  memcpy (bad, good, len);
  memset ((uint8_t *) bad + len, 0, 8);
  ok (B->set_context (d, bad, len + 8) == -1 && err_has ("'len'"),
      "a long context refused");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    memcpy (bad, good, len);
    memcpy ((uint8_t *) bad + cases[i].off, &cases[i].val, cases[i].width);
    last_err[0] = 0;
    ok (B->set_context (d, bad, len) == -1 && err_has (cases[i].field),
        "context with bad %s (%#" PRIx64 ") refused", cases[i].field,
        cases[i].val);
  }
  ok (B->set_context (d, good, len) == -1 && err_has ("never loaded"),
      "a good context over an unloaded page 0 refused");
  {
    uint64_t pfn = np;
    uint8_t page[PAGE];
    ok (B->read_pages (s, &pfn, 1, page) == -1 &&
        B->write_pages (d, &pfn, 1, NULL) == -1 &&
        B->read_dest (d, &pfn, 1, page) == -1, "pfn %" PRIu64 " (past the "
        "end) refused everywhere", pfn);
  }
  free (good);
  free (bad);
  B->close_dest (d, false);
}

/* ---- measurements (XMUFFD_MEASURE=1) ------------------------------------ */

static void
measure (void)
{
  struct xm_source *s;
  uint64_t np, count;
  uint8_t *bm;
  struct ctx a = { 0 }, b = { 0 };
  double t, tmin = 1e9, tmax = 0, tsum = 0;
  int n = 20;

  s = open_guest (1024 * MIB, 0, 0);
  if (!s)
    return;
  np = B->npages (s);
  bm = calloc (np / 8, 1);
  t = sxm_now ();
  B->log_enable (s);
  printf ("# 1 GiB: log_enable (register + protect) %.2f ms\n",
          (sxm_now () - t) * 1e3);
  t = sxm_now ();
  B->log_fetch (s, bm, &count);
  printf ("# 1 GiB: first fetch %.2f ms (%" PRIu64 " pages)\n",
          (sxm_now () - t) * 1e3, count);
  for (int i = 0; i < n; i++) {
    sleep_s (0.01);
    t = sxm_now ();
    B->log_fetch (s, bm, &count);
    t = sxm_now () - t;
    tsum += t;
    tmin = t < tmin ? t : tmin;
    tmax = t > tmax ? t : tmax;
  }
  printf ("# 1 GiB idle guest: PAGEMAP_SCAN fetch mean %.3f ms, min %.3f, "
          "max %.3f (%" PRIu64 " dirty pages)\n", tsum / n * 1e3, tmin * 1e3,
          tmax * 1e3, count);
  pause_latency (s, "1 GiB idle guest");
  B->close_source (s, false);

  /* Unthrottled: the vCPU's own ceiling, without and with the log. */
  s = open_guest (1024 * MIB, UINT64_MAX, 0);
  if (!s)
    return;
  for (int logging = 0; logging < 2; logging++) {
    uint64_t pages = 0;
    double t0;
    if (logging) {
      B->log_enable (s);
      B->log_fetch (s, bm, &count);
    }
    B->pause (s);
    paused_ctx (s, &a);
    t0 = sxm_now ();
    B->unpause (s);
    tsum = 0;
    for (int i = 0; i < 10; i++) {
      sleep_s (0.1);
      if (logging) {
        t = sxm_now ();
        B->log_fetch (s, bm, &count);
        tsum += sxm_now () - t;
        pages += count;
      }
    }
    B->pause (s);
    t = sxm_now () - t0;
    paused_ctx (s, &b);
    B->unpause (s);
    printf ("# 1 GiB unthrottled, log %s: %.2f M writes/s (%.0f MiB/s of "
            "pages), %.2f M iterations/s", logging ? "on" : "off",
            (b.writes - a.writes) / t / 1e6,
            (b.writes - a.writes) / t * PAGE / MIB,
            (b.counter - a.counter) / t / 1e6);
    if (logging)
      printf ("; %.0f distinct dirty pages/s (%.0f MiB/s); each fetch "
              "(one every 100 ms of sleep) took %.2f ms", pages / t,
              pages / t * PAGE / MIB, tsum / 10 * 1e3);
    printf ("\n");
    free (a.blob);
    free (b.blob);
    pause_latency (s, logging ? "1 GiB unthrottled, log on"
                   : "1 GiB unthrottled, log off");
  }
  B->close_source (s, false);
  free (bm);
}

int
main (void)
{
  struct xm_source *s;
  const uint64_t rate = 16 * MIB;

  setvbuf (stdout, NULL, _IOLBF, 0);
  sxm_log_set_sink (sink);
  ok (strcmp (B->name, "uffd") == 0 && B->id == XM_BACKEND_UFFD,
      "backend uffd");
  test_refusals ();
  test_missing_kernel ();               /* before any guest thread: forks */
  test_idle_guest ();

  s = open_guest (64 * MIB, rate, 0);
  ok (s != NULL, "64 MiB guest dirtying 16 MiB/s runs");
  if (!s) {
    printf ("Bail out! no uffd guest: %s\n", last_err);
    return tap_done ();
  }
  ok (B->npages (s) == 64 * MIB / PAGE, "npages");
  ok (B->log_enable (s) == 0, "log_enable");
  test_exact_log (s, 0.25, rate);
  test_never_empty (s);
  test_pause_latency (s);
  test_disable (s);
  test_migration (s);
  test_negative (s);
  test_bad_blobs (s);
  B->close_source (s, false);

  /* A small dirty region: the log stays inside it. */
  s = open_guest (16 * MIB, 64 * MIB, 256 * PAGE);
  if (s) {
    uint64_t np = B->npages (s), count = 0, outside = 0;
    uint8_t *bm = calloc (np / 8, 1);
    B->log_enable (s);
    sleep_s (0.05);
    B->log_fetch (s, bm, &count);
    for (uint64_t p = 257; p < np; p++)
      outside += bit (bm, p);
    ok (count > 100 && outside == 0, "256-page dirty region: %" PRIu64
        " dirty pages, none outside pages 0..256", count);
    free (bm);
    B->close_source (s, false);
  }

  if (getenv ("XMUFFD_MEASURE"))
    measure ();
  return tap_done ();
}
