/* xenmem's pre-copy engine (see engine.h and doc/xenmem-stream.md). */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>

#include "engine.h"
#include "log.h"
#include "monotime.h"
#include "stream.h"
#include "zero.h"

extern char **environ;

/* The hook (xm_send_opts.paused_hook) runs twice.  XENMEM_HOOK_PHASE=
 * prepare: when the final round is announced, the guest still running,
 * waited for before the pause (sxm migrate: flush the disks, so that the
 * switchover's flush has little left to do).  XENMEM_HOOK_PHASE=paused:
 * as soon as the guest is paused, so that what it does (the disks'
 * switchover) overlaps the last memory round; waited for before END,
 * because the receiver must not be told to commit before it succeeded. */
pid_t
xm_hook_start (char *const *argv, const char *phase)
{
  pid_t pid;
  size_t n = 0;
  char **env, var[64];
  int e;

  /* The environment plus XENMEM_HOOK_PHASE, without setenv (the guest's
   * threads run meanwhile). */
  while (environ[n])
    n++;
  env = calloc (n + 2, sizeof *env);
  if (!env) {
    sxm_error ("hook %s: out of memory", argv[0]);
    return -1;
  }
  snprintf (var, sizeof var, "XENMEM_HOOK_PHASE=%s", phase);
  size_t j = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp (environ[i], "XENMEM_HOOK_PHASE=", 18) != 0)
      env[j++] = environ[i];
  env[j] = var;
  e = posix_spawnp (&pid, argv[0], NULL, NULL, argv, env);
  free (env);

  if (e != 0) {
    sxm_error ("hook %s: cannot start it: %s", argv[0], strerror (e));
    return -1;
  }
  return pid;
}

/* For tests only (doc/xenmem.pod, ENVIRONMENT): XENMEM_TEST_HOLD=WHERE:MS
 * holds the migration for MS milliseconds at one point that a test cannot
 * otherwise hit in time, saying so on standard error first, so that a test
 * can fault the network exactly there (tests/sxm-netfault.t).  WHERE is
 * "paused" (send: the guest just paused, before the hook's paused phase
 * and the last round: inside the downtime) or "committed" (receive: the
 * commit received, before the guest starts and "running" is sent).  Only
 * the page-level engine has these points (not the xen backend). */
static void
xm_test_hold (const char *where)
{
  const char *v = getenv ("XENMEM_TEST_HOLD");
  size_t n = strlen (where);
  char *end;
  long ms;

  if (!v || strncmp (v, where, n) != 0 || v[n] != ':')
    return;
  ms = strtol (v + n + 1, &end, 10);
  if (*end || ms <= 0 || ms > 600000)
    return;
  sxm_error ("XENMEM_TEST_HOLD: %s, holding %ld ms", where, ms);
  struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

/* Wait for the hook *PID (then -1: nothing left to wait for). */
int
xm_hook_wait (pid_t *pid, const char *name)
{
  int status;
  pid_t p = *pid;

  *pid = -1;
  while (waitpid (p, &status, 0) == -1)
    if (errno != EINTR) {
      sxm_error ("hook %s: waitpid: %m", name);
      return -1;
    }
  if (WIFEXITED (status) && WEXITSTATUS (status) == 0)
    return 0;
  if (WIFEXITED (status))
    sxm_error ("hook %s failed (exit status %d); the guest stays here",
               name, WEXITSTATUS (status));
  else
    sxm_error ("hook %s was killed by signal %d; the guest stays here",
               name, WTERMSIG (status));
  return -1;
}

/* sha256 over every page of the guest, in pfn order: the end-to-end check
 * that the receiver loaded exactly what the paused source held. */
static int
memory_digest (int (*rd) (void *, const uint64_t *, unsigned, void *),
               void *obj, uint64_t npages, uint8_t *buf, uint8_t out[32])
{
  gnutls_hash_hd_t h;
  uint64_t pfns[XM_BATCH_MAX];

  if (gnutls_hash_init (&h, GNUTLS_DIG_SHA256) < 0) {
    sxm_error ("cannot initialise sha256");
    return -1;
  }
  for (uint64_t p = 0; p < npages; ) {
    unsigned n = npages - p < XM_BATCH_MAX ? npages - p : XM_BATCH_MAX;
    for (unsigned i = 0; i < n; i++)
      pfns[i] = p + i;
    if (rd (obj, pfns, n, buf) == -1) {
      gnutls_hash_deinit (h, out);
      return -1;
    }
    gnutls_hash (h, buf, (size_t) n * XM_PAGE_SIZE);
    p += n;
  }
  gnutls_hash_deinit (h, out);
  return 0;
}

/* ---- send ------------------------------------------------------------ */

struct sender {
  const struct xm_backend_ops *b;
  struct xm_source *s;
  struct xm_conn *c;
  const struct xm_send_opts *o;
  uint64_t npages;
  uint8_t *rec;                 /* one encoded record */
  uint8_t *pages;               /* one batch of page data */
  uint64_t pfns[XM_BATCH_MAX];
  bool zero[XM_BATCH_MAX];
  unsigned n;                   /* pfns queued */
  uint32_t seq;
  /* totals */
  uint64_t wire_bytes, pages_sent, zero_pages;
  struct xm_rate rate;          /* --rate */
  /* The policy (with the options as this backend can honour them: PO,
   * which O points to once send_start ran), and auto-converge's
   * mid-round looks at the dirty log (sample): DIRTY is the round's set
   * (then the final round's), NEXT collects the pages the next round
   * sends, TMP is one fetch; the last observation's time and wire
   * bytes. */
  struct xm_send_opts po;
  struct xm_policy pol;
  bool sampling;
  uint8_t *dirty, *next, *tmp;
  uint64_t count;               /* pages set in DIRTY */
  uint32_t round;
  const char *why;              /* the policy's stop reason */
  double t_obs, bw;
  uint64_t w_obs;
  /* The throttle the guest runs under (percent), since when, and the
   * time spent throttled before that. */
  unsigned throttle, throttle_max;
  double t_throttle, throttled_s;
  /* The end: the round answers' decoder and record, the hook, where the
   * guest stands, the times the report gives (monotonic seconds), the
   * guest's progress at the start and lately, the memory digest. */
  struct xm_decoder ad;
  struct xm_record r;
  pid_t hook;
  bool paused, committed;
  double t0, t_pause, t_run, t_digest, t_hook, t_prepare;
  uint64_t prog0, prog;
  uint8_t digest[32];
  struct jbuf rounds;           /* round_stats */
};

/* Auto-converge looks at the dirty log this often within a round: often
 * enough that the throttle reaches what a fast guest needs within the
 * first second of round 0 (ten steps), rarely enough that the log walks
 * (a few ms for 1 GiB) cost little. */
#define XM_SAMPLE_S 0.1

static int
src_read (void *obj, const uint64_t *pfns, unsigned n, void *buf)
{
  struct sender *S = obj;
  return S->b->read_pages (S->s, pfns, n, buf);
}

void
xm_rate_spend (struct xm_rate *r, uint64_t rate, size_t len)
{
  double now;

  if (!rate)
    return;
  /* Spend first, then sleep off the debt: smooth at record size. */
  now = sxm_now ();
  r->bucket += (now - r->t) * rate;
  if (r->bucket > rate / 10.0)
    r->bucket = rate / 10.0;            /* at most 100 ms of burst */
  r->t = now;
  r->bucket -= len;
  if (r->bucket < 0) {
    double wait = -r->bucket / rate;
    struct timespec ts = { (time_t) wait,
                           (long) ((wait - (time_t) wait) * 1e9) };
    nanosleep (&ts, NULL);
  }
}

static int
put (struct sender *S, const void *buf, size_t len)
{
  xm_rate_spend (&S->rate, S->o->rate, len);
  if (xm_write (S->c, buf, len) == -1)
    return -1;
  S->wire_bytes += len;
  return 0;
}

static int
flush_batch (struct sender *S)
{
  size_t len;

  if (S->n == 0)
    return 0;
  if (S->b->read_pages (S->s, S->pfns, S->n, S->pages) == -1)
    return -1;
  for (unsigned i = 0; i < S->n; i++) {
    S->zero[i] = buf_is_zero (S->pages + (size_t) i * XM_PAGE_SIZE,
                               XM_PAGE_SIZE);
    S->zero_pages += S->zero[i];
  }
  len = xm_encode_pages (S->rec, S->seq++, S->pfns, S->zero, S->n, S->pages);
  S->pages_sent += S->n;
  S->n = 0;
  return put (S, S->rec, len);
}

static int
queue_page (struct sender *S, uint64_t pfn)
{
  S->pfns[S->n++] = pfn;
  return S->n == XM_BATCH_MAX ? flush_batch (S) : 0;
}

static int
send_round_record (struct sender *S, uint32_t round, uint64_t count)
{
  size_t len = xm_encode_round (S->rec, S->seq++, round, count);
  return put (S, S->rec, len);
}

/* Apply the policy's throttle to the guest if it changed, keeping the
 * time spent throttled; DIRTY_RATE and BANDWIDTH (bytes/s) are what the
 * policy saw, for the line that says so. */
static int
apply_throttle (struct sender *S, unsigned pct, double dirty_rate,
                double bandwidth)
{
  double now = sxm_now ();

  if (pct == S->throttle)
    return 0;
  if (S->b->set_throttle (S->s, pct) == -1)
    return -1;
  if (!S->o->quiet)
    fprintf (stderr, "xenmem: throttle %u%%: the guest dirtied %.1f MiB/s, "
             "the link carried %.1f MiB/s\n", pct, dirty_rate / 1048576,
             bandwidth / 1048576);
  if (S->throttle)
    S->throttled_s += now - S->t_throttle;
  S->t_throttle = now;
  S->throttle = pct;
  return 0;
}

/* Auto-converge's look at the dirty log in the middle of a round that has
 * queued every page before byte CURSOR of its bitmap CUR (NULL: round 0,
 * every page).  A page found dirty ahead of the cursor goes in this round
 * (round 0 sends it anyway), one behind it in the next: either way it is
 * sent after its last write seen so far.  The policy then sees the dirty
 * rate and the bandwidth since the previous observation. */
static int
sample (struct sender *S, uint8_t *cur, uint64_t cursor)
{
  uint64_t n;
  double now, dt, rate, bw;

  if (S->b->log_fetch (S->s, S->tmp, &n) == -1)
    return -1;
  for (uint64_t i = 0; i < (S->npages + 7) / 8; i++) {
    if (!S->tmp[i])
      continue;
    if (i < cursor)
      S->next[i] |= S->tmp[i];
    else if (cur)
      cur[i] |= S->tmp[i];
  }
  now = sxm_now ();
  dt = now - S->t_obs;
  rate = n * (double) XM_PAGE_SIZE / dt;
  bw = (S->wire_bytes - S->w_obs) / dt;
  xm_policy_sample (&S->pol, rate, bw, S->o);
  S->t_obs = now;
  S->w_obs = S->wire_bytes;
  return apply_throttle (S, S->pol.throttle, rate, bw);
}

/* The pages of BITMAP (NULL: all); with auto-converge, looking at the
 * dirty log every XM_SAMPLE_S, which may add pages to BITMAP ahead of the
 * loop. */
static int
send_pages (struct sender *S, uint8_t *bitmap)
{
  for (uint64_t byte = 0; byte < (S->npages + 7) / 8; byte++) {
    uint8_t v = bitmap ? bitmap[byte] : 0xff;
    if (!v)
      continue;
    for (unsigned bit = 0; bit < 8; bit++) {
      uint64_t pfn = byte * 8 + bit;
      if ((v >> bit & 1) && pfn < S->npages && queue_page (S, pfn) == -1)
        return -1;
    }
    if (S->sampling && sxm_now () - S->t_obs >= XM_SAMPLE_S &&
        sample (S, bitmap, byte + 1) == -1)
      return -1;
  }
  return flush_batch (S);
}

int
xm_read_ack (struct xm_conn *c, struct xm_decoder *d, struct xm_record *r,
          uint8_t *buf)
{
  int64_t blen;

  if (xm_read (c, buf, XM_REC_HDR_SIZE, false) == -1)
    return -1;
  blen = xm_record_body_len (d, buf);
  if (blen < 0 || blen > 4096) {
    sxm_error ("receiver's reply: %s", blen < 0 ? d->err : "too long");
    return -1;
  }
  if (xm_read (c, buf + XM_REC_HDR_SIZE, blen, false) == -1)
    return -1;
  if (xm_decode_record (d, buf, XM_REC_HDR_SIZE + blen, r) == -1) {
    sxm_error ("receiver's reply: %s", d->err);
    return -1;
  }
  return 0;
}

int
xm_read_verdict (struct xm_conn *c, struct xm_decoder *d, struct xm_record *r,
                 uint8_t *buf)
{
  if (xm_read_ack (c, d, r, buf) == -1)
    return -1;
  if (r->u.ack.status != 0) {
    sxm_error ("the receiver refused the guest: %s", r->u.ack.msg);
    return -1;
  }
  return 0;
}

void
xm_progress_round (const struct xm_send_opts *o, unsigned round, bool paused,
                   uint64_t pages, uint64_t bytes, double secs, int64_t dirty,
                   double predicted_ms, unsigned throttle)
{
  if (!o->progress)
    return;
  fprintf (o->progress, "{\"version\":1,\"event\":\"round\",\"round\":%u,"
           "\"paused\":%s,\"pages\":%" PRIu64 ",\"bytes\":%" PRIu64
           ",\"seconds\":%.6f,\"dirty_pages\":%" PRId64
           ",\"predicted_ms\":%.3f,\"throttle\":%u}\n", round,
           paused ? "true" : "false", pages, bytes, secs, dirty,
           dirty < 0 ? -1.0 : predicted_ms, throttle);
  fflush (o->progress);
}

/* A round's line on stderr, in the report's round_stats and on the
 * progress channel.  THROTTLE: the percent the guest ran under at the
 * round's end; PROGRESS: the guest's own progress (the backend's
 * guest_progress) per second during the round, < 0 unknown. */
static void
round_line (const struct xm_send_opts *o, struct jbuf *rounds, uint32_t round,
            uint64_t sent, uint64_t zeros, uint64_t bytes, double secs,
            uint64_t dirty, double predicted_ms, bool paused,
            unsigned throttle, double progress)
{
  double bw = secs > 0 ? bytes / secs : 0;
  double drate = secs > 0 ? dirty * (double) XM_PAGE_SIZE / secs : 0;

  if (!o->quiet)
    fprintf (stderr, "xenmem: round %u%s: sent %" PRIu64 " pages (%" PRIu64
             " zero), %.1f MiB in %.3f s = %.0f MiB/s; dirtied meanwhile %"
             PRIu64 " pages (%.1f MiB/s); predicted downtime %.2f ms; "
             "throttle %u%%\n", round, paused ? " (paused)" : "", sent, zeros,
             bytes / 1048576.0, secs, bw / 1048576.0, dirty,
             drate / 1048576.0, predicted_ms, throttle);
  jbuf_add (rounds, "%s{\"round\":%u,\"paused\":%s,\"pages\":%" PRIu64
            ",\"zero_pages\":%" PRIu64 ",\"bytes\":%" PRIu64
            ",\"seconds\":%.6f,\"dirty_after\":%" PRIu64
            ",\"dirty_rate\":%.0f,\"bandwidth\":%.0f,\"predicted_ms\":%.3f"
            ",\"throttle\":%u",
            rounds->len > 1 ? "," : "", round, paused ? "true" : "false",
            sent, zeros, bytes, secs, dirty, drate, bw, predicted_ms,
            throttle);
  if (progress >= 0)
    jbuf_add (rounds, ",\"guest_progress_rate\":%.0f", progress);
  jbuf_add (rounds, "}");
  xm_progress_round (o, round, paused, sent, bytes, secs, (int64_t) dirty,
                     predicted_ms, throttle);
}

/* The pre-copy policy (engine.h): here, and nowhere else, for the
 * engine's rounds and libxenguest's (backend-xen.c, precopy_policy). */
double
xm_predicted_ms (const struct xm_round_stats *r)
{
  return r->bandwidth > 0 ? r->dirty * (double) XM_PAGE_SIZE / r->bandwidth
         * 1e3 : 1e9;
}

/* One observation for auto-converge: count it hot or not, and raise the
 * throttle when it has been hot long enough (engine.h). */
static void
converge (struct xm_policy *p, bool hot, const struct xm_send_opts *o)
{
  if (!o->converge.on)
    return;
  p->hot = hot ? p->hot + 1 : 0;
  if (p->throttle == 0 && p->hot >= 2)
    p->throttle = o->converge.initial_pct;
  else if (p->throttle > 0 && p->hot >= 1)
    p->throttle += o->converge.step_pct;
  else
    return;
  if (p->throttle > o->converge.max_pct)
    p->throttle = o->converge.max_pct;
  p->hot = 0;
}

static bool
too_fast (double dirty_rate, double bandwidth)
{
  return dirty_rate >= 0 && bandwidth > 0 &&
    dirty_rate > XM_THROTTLE_TRIGGER * bandwidth;
}

void
xm_policy_sample (struct xm_policy *p, double dirty_rate, double bandwidth,
                  const struct xm_send_opts *o)
{
  converge (p, too_fast (dirty_rate, bandwidth), o);
}

const char *
xm_policy_round (struct xm_policy *p, const struct xm_round_stats *r,
                 const struct xm_send_opts *o)
{
  /* "Shrinking": under 90% of the previous decision's count (the first
   * decision has nothing to compare with, and counts as shrinking). */
  bool shrank = !p->have_prev || r->dirty * 10 < p->prev_dirty * 9;
  bool on_target = xm_predicted_ms (r) <= o->downtime_ms;
  bool can_throttle = o->converge.on && p->throttle < o->converge.max_pct;
  const char *why = NULL;

  p->stuck = shrank ? 0 : p->stuck + 1;
  if (on_target)
    why = "predicted downtime under the target";
  else if (r->rounds >= o->max_rounds)
    why = "round limit";
  else if (p->stuck >= 2 && !can_throttle)
    why = "dirty set stopped shrinking";
  else if (p->stuck >= 2) {
    /* Not converging on its own: as hot as it gets, raise at once. */
    p->hot = p->throttle ? p->hot : 1;
    converge (p, true, o);
    p->stuck = 0;
  }
  else
    converge (p, too_fast (r->dirty_rate, r->bandwidth), o);
  p->prev_dirty = r->dirty;
  p->have_prev = true;
  return why;
}

/* ---- xm_send's steps ---------------------------------------------------
 * Each returns 0, or -1 after reporting why; xm_send (below) runs them in
 * order and undoes what a failed one leaves. */

/* Buffers, the options as this backend can honour them, dirty logging on,
 * the stream header out. */
static int
send_start (struct sender *S)
{
  struct xm_header hdr = { XM_STREAM_VERSION, S->b->id, S->npages, 0 };
  size_t bitmap = (S->npages + 7) / 8;

  S->rec = malloc (XM_REC_MAX);
  S->pages = malloc ((size_t) XM_BATCH_MAX * XM_PAGE_SIZE);
  S->dirty = calloc (bitmap, 1);
  S->next = calloc (bitmap, 1);
  S->tmp = calloc (bitmap, 1);
  if (!S->rec || !S->pages || !S->dirty || !S->next || !S->tmp) {
    sxm_error ("out of memory");
    return -1;
  }
  /* Auto-converge needs a guest it can slow down: without set_throttle
   * the policy runs with it off. */
  S->po = *S->o;
  S->po.converge.on = S->o->converge.on && S->b->set_throttle;
  S->o = &S->po;
  S->sampling = S->po.converge.on;
  S->rate.t = sxm_now ();

  if (S->b->log_enable (S->s) == -1)
    return -1;
  S->t_obs = sxm_now ();
  if (S->b->guest_progress)
    S->prog0 = S->prog = S->b->guest_progress (S->s);
  return put (S, S->rec, xm_encode_header (S->rec, &hdr));
}

/* One live round: round 0 is every page, a later one what the previous
 * let the guest dirty; then the next round's set, and the policy's word
 * on it (S->why: stop pre-copying). */
static int
precopy_round (struct sender *S)
{
  const struct xm_backend_ops *b = S->b;
  uint64_t p0 = S->pages_sent, z0 = S->zero_pages, w0 = S->wire_bytes, n;
  double ts = sxm_now (), secs, now, rate = -1;
  bool first = S->round == 0;

  if (send_round_record (S, S->round, first ? S->npages : S->count) == -1 ||
      send_pages (S, first ? NULL : S->dirty) == -1)
    return -1;
  now = sxm_now ();
  secs = now - ts;
  if (secs > 0 && S->wire_bytes > w0)
    S->bw = (S->wire_bytes - w0) / secs;
  /* The next round: what the samples put behind the cursor and what the
   * guest dirtied since the last of them. */
  if (b->log_fetch (S->s, S->tmp, &n) == -1)
    return -1;
  S->count = 0;
  for (uint64_t i = 0; i < (S->npages + 7) / 8; i++) {
    S->dirty[i] = S->next[i] | S->tmp[i];
    S->next[i] = 0;
    S->count += __builtin_popcount (S->dirty[i]);
  }
  /* A rate over much less than a sample's time is noise (a guest's writes
   * come in bursts): then only the dirty set's size speaks. */
  if (now - S->t_obs >= XM_SAMPLE_S / 2)
    rate = n * (double) XM_PAGE_SIZE / (now - S->t_obs);
  S->t_obs = now;
  S->w_obs = S->wire_bytes;
  /* Stopping now leaves the COUNT dirty pages for the pause, after ROUND
   * + 1 live rounds.  Dirty pages that are zero go as 16-byte markers;
   * counted full, the estimate errs on the long side. */
  struct xm_round_stats rs = { S->round + 1, S->count, S->bw, rate };
  S->why = xm_policy_round (&S->pol, &rs, S->o);
  if (apply_throttle (S, S->pol.throttle, rate, S->bw) == -1)
    return -1;

  uint64_t p1 = b->guest_progress ? b->guest_progress (S->s) : 0;
  round_line (S->o, &S->rounds, S->round, S->pages_sent - p0,
              S->zero_pages - z0, S->wire_bytes - w0, secs, S->count,
              xm_predicted_ms (&rs), false, S->throttle,
              b->guest_progress && secs > 0 ? (p1 - S->prog) / secs : -1);
  S->prog = p1;
  return 0;
}

static int
precopy (struct sender *S)
{
  for (;;) {
    if (precopy_round (S) == -1)
      return -1;
    if (S->why)
      return 0;
    S->round++;
  }
}

/* Announce the final round and wait until the receiver has read up to it,
 * so that no backlog sits in socket buffers (on loopback TCP, tens of
 * megabytes) while the guest is paused; the hook's prepare phase runs
 * meanwhile. */
static int
barrier (struct sender *S)
{
  char want[32];
  double tp = sxm_now ();

  S->round++;
  if (send_round_record (S, S->round, S->count) == -1)
    return -1;
  if (S->o->paused_hook &&
      (S->hook = xm_hook_start (S->o->paused_hook, "prepare")) == -1)
    return -1;
  xm_decoder_init_acks (&S->ad);
  snprintf (want, sizeof want, "round %u", S->round);
  do {
    if (xm_read_verdict (S->c, &S->ad, &S->r, S->rec) == -1)
      return -1;
  } while (strcmp (S->r.u.ack.msg, want) != 0);

  if (S->hook != -1) {
    if (xm_hook_wait (&S->hook, S->o->paused_hook[0]) == -1)
      return -1;
    S->t_prepare = sxm_now () - tp;
  }
  return 0;
}

/* The paused round: the last dirty pages and the context. */
static int
final_round (struct sender *S)
{
  uint64_t p0 = S->pages_sent, z0 = S->zero_pages, w0 = S->wire_bytes, n;
  double ts = sxm_now ();
  void *blob = NULL;
  size_t blen = 0;
  int r;

  if (S->b->log_fetch (S->s, S->tmp, &n) == -1)
    return -1;
  for (uint64_t i = 0; i < (S->npages + 7) / 8; i++)
    S->dirty[i] |= S->tmp[i];
  if (send_pages (S, S->dirty) == -1 ||
      S->b->get_context (S->s, &blob, &blen) == -1)
    return -1;
  if (blen > XM_CONTEXT_MAX) {
    sxm_error ("the guest's context is %zu bytes, over the stream's limit "
               "of %u", blen, XM_CONTEXT_MAX);
    free (blob);
    return -1;
  }
  r = put (S, S->rec, xm_encode_context (S->rec, S->seq++, S->b->id, blob,
                                         blen));
  free (blob);
  if (r == -1)
    return -1;
  round_line (S->o, &S->rounds, S->round, S->pages_sent - p0,
              S->zero_pages - z0, S->wire_bytes - w0, sxm_now () - ts, 0, 0,
              true, S->throttle, -1);
  return 0;
}

/* Pause; the hook's paused phase overlaps the last round; the memory
 * digest; END once the hook succeeded. */
static int
stop_and_copy (struct sender *S)
{
  S->t_pause = sxm_now ();
  if (S->b->guest_progress)
    S->prog = S->b->guest_progress (S->s);
  if (S->b->pause (S->s) == -1)
    return -1;
  S->paused = true;
  xm_test_hold ("paused");
  if (S->o->paused_hook &&
      (S->hook = xm_hook_start (S->o->paused_hook, "paused")) == -1)
    return -1;
  if (final_round (S) == -1)
    return -1;
  if (S->o->verify_memory) {
    double td = sxm_now ();
    if (memory_digest (src_read, S, S->npages, S->pages, S->digest) == -1)
      return -1;
    S->t_digest = sxm_now () - td;
  }
  if (S->hook != -1) {
    if (xm_hook_wait (&S->hook, S->o->paused_hook[0]) == -1)
      return -1;
    S->t_hook = sxm_now () - S->t_pause;
  }
  return put (S, S->rec, xm_encode_end (S->rec, S->seq++, S->pages_sent,
                                        S->digest));
}

/* The commit handshake: the receiver says it holds everything; only then
 * do we give up the source for good and tell it to start.  XM_OK,
 * XM_IN_DOUBT (committed, no word back), or XM_FAILED (not committed). */
static int
commit (struct sender *S)
{
  /* Round acknowledgements after the barrier's are not expected (no ROUND
   * follows it), so the next reply is the answer to END. */
  if (xm_read_verdict (S->c, &S->ad, &S->r, S->rec) == -1)
    return XM_FAILED;
  S->committed = true;
  if (put (S, S->rec, xm_encode_ack (S->rec, S->seq++, 0, "commit")) == -1 ||
      xm_read_ack (S->c, &S->ad, &S->r, S->rec) == -1 ||
      S->r.u.ack.status != 0) {
    sxm_error ("committed, but the receiver did not confirm that the guest "
               "runs there%s%s; the source guest stays paused: check the "
               "destination before resuming or destroying it",
               S->r.u.ack.status ? ": " : "",
               S->r.u.ack.status ? S->r.u.ack.msg : "");
    return XM_IN_DOUBT;
  }
  S->t_run = sxm_now ();
  return XM_OK;
}

/* A send that failed before the commit: a hook still running is waited
 * for (what it started, the disks' switchover, must be over before the
 * caller undoes it), and the source guest, still the guest, runs on. */
static void
give_back (struct sender *S)
{
  if (S->hook != -1)
    xm_hook_wait (&S->hook, S->o->paused_hook[0]);
  if (S->paused && !S->committed)
    S->b->unpause (S->s);
  S->b->log_disable (S->s);
}

/* Never leave the guest throttled: the source runs on at full speed after
 * a failure, resumes at full speed after "in doubt", and is a discarded
 * copy after a migration (the destination's guest was never throttled:
 * the throttle is the host's, not part of the guest). */
static void
unthrottle (struct sender *S)
{
  if (!S->throttle)
    return;
  S->throttled_s += (S->t_pause > 0 ? S->t_pause : sxm_now ())
    - S->t_throttle;
  S->throttle_max = S->throttle;
  if (S->b->set_throttle (S->s, 0) == -1)
    sxm_error ("could not take the throttle off the source guest");
  S->throttle = 0;
}

static void
send_report (struct sender *S, int ret, struct jbuf *report)
{
  jbuf_add (&S->rounds, "]");
  jbuf_add (report, ",\"result\":\"%s\",\"rounds\":%u,\"stop_reason\":",
            ret == XM_OK ? "migrated" : ret == XM_IN_DOUBT ? "in-doubt"
            : "failed, source resumed", S->round + 1);
  jbuf_str (report, S->why ? S->why : "none");
  jbuf_add (report, ",\"pages_sent\":%" PRIu64 ",\"zero_pages\":%" PRIu64
            ",\"wire_bytes\":%" PRIu64 ",\"guest_bytes\":%" PRIu64
            ",\"wire_over_ram\":%.4f,\"total_s\":%.3f",
            S->pages_sent, S->zero_pages, S->wire_bytes,
            S->npages * (uint64_t) XM_PAGE_SIZE,
            S->npages ? S->wire_bytes / (double) (S->npages * XM_PAGE_SIZE)
            : 0, sxm_now () - S->t0);
  if (ret == XM_OK)
    jbuf_add (report, ",\"downtime_ms\":%.3f,\"digest_ms\":%.3f",
              (S->t_run - S->t_pause - S->t_digest) * 1e3, S->t_digest * 1e3);
  if (S->o->paused_hook && S->t_hook > 0)
    jbuf_add (report, ",\"hook_ms\":%.3f,\"prepare_ms\":%.3f",
              S->t_hook * 1e3, S->t_prepare * 1e3);
  jbuf_add (report, ",\"auto_converge\":%s,\"throttle_max\":%u,"
            "\"throttled_s\":%.3f", S->sampling ? "true" : "false",
            S->throttle_max, S->throttled_s);
  if (S->b->guest_progress && S->t_pause > S->t0)
    jbuf_add (report, ",\"guest_progress_rate_live\":%.0f",
              (S->prog - S->prog0) / (S->t_pause - S->t0));
  jbuf_add (report, ",\"verified_memory\":%s,\"tls\":%s,\"round_stats\":%s",
            S->o->verify_memory ? "true" : "false",
            xm_conn_is_tls (S->c) ? "true" : "false",
            S->rounds.s ? S->rounds.s : "[]");
}

int
xm_send (const struct xm_backend_ops *b, struct xm_source *s,
         struct xm_conn *c, const struct xm_send_opts *o, struct jbuf *report)
{
  struct sender S = { .b = b, .s = s, .c = c, .o = o, .hook = -1,
                      .npages = b->npages (s), .t0 = sxm_now () };
  int ret = XM_FAILED;

  jbuf_add (&S.rounds, "[");
  if (send_start (&S) == 0 && precopy (&S) == 0 && barrier (&S) == 0 &&
      stop_and_copy (&S) == 0)
    ret = commit (&S);
  if (ret == XM_FAILED)
    give_back (&S);
  unthrottle (&S);
  send_report (&S, ret, report);
  jbuf_free (&S.rounds);
  free (S.rec);
  free (S.pages);
  free (S.dirty);
  free (S.next);
  free (S.tmp);
  return ret;
}

/* ---- receive --------------------------------------------------------- */

static int
dst_read (void *obj, const uint64_t *pfns, unsigned n, void *buf)
{
  void **p = obj;
  const struct xm_backend_ops *b = p[0];
  return b->read_dest (p[1], pfns, n, buf);
}

int
xm_send_ack (struct xm_conn *c, uint32_t *seq, int32_t status, const char *msg)
{
  uint8_t buf[XM_REC_HDR_SIZE + 8 + 256];
  size_t len = xm_encode_ack (buf, (*seq)++, status, msg);
  return xm_write (c, buf, len);
}

/* ---- xm_receive's steps -----------------------------------------------
 * Each returns an enum xm_rx (engine.h): XM_RX_ON (the next record),
 * XM_RX_REFUSE (R->why says why), XM_RX_GONE or XM_RX_DONE (R->ret is the
 * outcome). */

struct receiver {
  const struct xm_backend_ops *b;
  struct xm_conn *c;
  const struct xm_recv_opts *o;
  struct xm_decoder d;
  struct xm_header h;
  struct xm_record r;
  struct xm_dest *dst;
  uint8_t *buf;                 /* one record */
  uint8_t *tmp;                 /* pages for the digest, when asked */
  uint64_t dpfn[XM_BATCH_MAX], zpfn[XM_BATCH_MAX];
  uint64_t pages, zeros, rounds;
  uint32_t aseq;                /* our ACKs' numbers */
  bool started;
  int ret;
  char why[300];
  double t0;
};

int
xm_rx_refuse (char *why, size_t whylen, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (why, whylen, fmt, ap);
  va_end (ap);
  return XM_RX_REFUSE;
}

#define refuse(R, ...) xm_rx_refuse ((R)->why, sizeof (R)->why, __VA_ARGS__)

/* The header, then a paused guest of its size with the receiver's disks. */
static int
recv_start (struct receiver *R, const char *id)
{
  const struct xm_backend_ops *b = R->b;

  if (xm_read (R->c, R->buf, XM_HEADER_SIZE, false) == -1)
    return XM_RX_GONE;
  if (xm_decode_header (&R->d, R->buf, XM_HEADER_SIZE, &R->h) == -1)
    return refuse (R, "stream header: %s", R->d.err);
  if (R->h.backend != (uint32_t) b->id)
    return refuse (R, "the stream is from backend %" PRIu32 ", this "
                   "receiver runs %s", R->h.backend, b->name);
  if (b->create_dest (id, R->h.npages, &R->dst) == -1)
    return refuse (R, "cannot create the destination guest");
  if (R->o->ndisks && (!b->set_disks ||
                       b->set_disks (R->dst, R->o->disks,
                                     R->o->ndisks) == -1))
    return refuse (R, "cannot give the destination guest its disks");
  return XM_RX_ON;
}

/* One record into R->r, every length and field checked before use. */
static int
recv_record (struct receiver *R)
{
  int64_t blen;

  if (xm_read (R->c, R->buf, XM_REC_HDR_SIZE, false) == -1)
    return XM_RX_GONE;
  blen = xm_record_body_len (&R->d, R->buf);
  if (blen < 0)
    return refuse (R, "%s", R->d.err);
  if (xm_read (R->c, R->buf + XM_REC_HDR_SIZE, blen, false) == -1)
    return XM_RX_GONE;
  if (xm_decode_record (&R->d, R->buf, XM_REC_HDR_SIZE + blen, &R->r) == -1)
    return refuse (R, "%s", R->d.err);
  return XM_RX_ON;
}

/* Every ROUND is answered: the sender waits for the answer to the last
 * one before it pauses the guest (the barrier). */
static int
on_round (struct receiver *R)
{
  char msg[32];

  R->rounds++;
  snprintf (msg, sizeof msg, "round %" PRIu32, R->r.u.round.round);
  return xm_send_ack (R->c, &R->aseq, 0, msg) == -1 ? XM_RX_GONE : XM_RX_ON;
}

static int
on_pages (struct receiver *R)
{
  const struct xm_record *r = &R->r;
  unsigned nd = 0, nz = 0;

  for (uint32_t i = 0; i < r->u.pages.count; i++) {
    uint64_t e = xm_pages_entry (r, i);
    if (e & XM_PFN_ZERO)
      R->zpfn[nz++] = e & XM_PFN_MASK;
    else
      R->dpfn[nd++] = e & XM_PFN_MASK;
  }
  if ((nd && R->b->write_pages (R->dst, R->dpfn, nd, r->u.pages.data) == -1)
      || (nz && R->b->write_pages (R->dst, R->zpfn, nz, NULL) == -1))
    return refuse (R, "cannot load pages into the guest");
  R->pages += r->u.pages.count;
  R->zeros += nz;
  return XM_RX_ON;
}

static int
on_context (struct receiver *R)
{
  if (R->b->set_context (R->dst, R->r.u.context.blob,
                         R->r.u.context.len) == -1)
    return refuse (R, "the guest's context was refused");
  return XM_RX_ON;
}

/* END: the page count and (if sent) the digest must agree with what was
 * loaded before we say "loaded". */
static int
on_end (struct receiver *R)
{
  static const uint8_t none[32];
  uint8_t mine[32];
  void *rd[2] = { (void *) R->b, R->dst };

  if (R->r.u.end.pages_sent != R->pages)
    return refuse (R, "END says %" PRIu64 " pages were sent, %" PRIu64
                   " arrived", R->r.u.end.pages_sent, R->pages);
  if (memcmp (R->r.u.end.digest, none, 32) != 0) {
    if (!R->tmp &&
        !(R->tmp = malloc ((size_t) XM_BATCH_MAX * XM_PAGE_SIZE)))
      return refuse (R, "out of memory");
    if (memory_digest (dst_read, rd, R->h.npages, R->tmp, mine) == -1 ||
        memcmp (mine, R->r.u.end.digest, 32) != 0)
      return refuse (R, "the loaded memory's sha256 differs from the "
                     "source's at pause");
  }
  return xm_send_ack (R->c, &R->aseq, 0, "loaded") == -1 ? XM_RX_GONE
    : XM_RX_ON;
}

/* The sender's commit (the decoder allows an ACK only after END): start
 * the guest, then say "running". */
static int
on_commit (struct receiver *R)
{
  if (R->r.u.ack.status != 0) {
    snprintf (R->why, sizeof R->why, "the sender called it off: %s",
              R->r.u.ack.msg);
    return XM_RX_GONE;
  }
  xm_test_hold ("committed");
  if (R->b->start (R->dst) == -1)
    return refuse (R, "cannot start the guest");
  R->started = true;
  R->ret = XM_OK;
  if (R->o->test_no_running) {
    sxm_error ("XENMEM_TEST_NO_RUNNING: not confirming to the sender");
    return XM_RX_DONE;
  }
  /* If this fails the sender is left in doubt with the source paused; the
   * guest runs here, which is what it committed to. */
  if (xm_send_ack (R->c, &R->aseq, 0, "running") == -1)
    sxm_error ("could not confirm to the sender; the guest runs here");
  return XM_RX_DONE;
}

static int
on_record (struct receiver *R)
{
  switch (R->r.type) {
  case XM_REC_ROUND: return on_round (R);
  case XM_REC_PAGES: return on_pages (R);
  case XM_REC_CONTEXT: return on_context (R);
  case XM_REC_END: return on_end (R);
  case XM_REC_ACK: return on_commit (R);
  }
  return refuse (R, "record type %" PRIu32 " unexpected", R->r.type);
}

/* The check (--check), the report, and the guest: kept for the caller,
 * closed started (it runs: ours to keep) or discarded. */
static void
recv_finish (struct receiver *R, struct jbuf *report)
{
  const struct xm_backend_ops *b = R->b;
  const struct xm_recv_opts *o = R->o;

  if (R->ret == XM_OK && o->check_seconds > 0 && b->check_dest) {
    jbuf_add (report, ",\"check\":{\"seconds\":%.3f", o->check_seconds);
    if (b->check_dest (R->dst, o->check_seconds, report) == -1)
      R->ret = XM_FAILED;
    jbuf_add (report, ",\"ok\":%s}", R->ret == XM_OK ? "true" : "false");
  }
  jbuf_add (report, ",\"result\":\"%s\",\"rounds\":%" PRIu64 ",\"pages\":%"
            PRIu64 ",\"zero_pages\":%" PRIu64 ",\"total_s\":%.3f",
            R->ret == XM_OK ? "running" : R->started ? "started, check failed"
            : "discarded", R->rounds, R->pages, R->zeros, sxm_now () - R->t0);
  if (!R->started && R->why[0] == 0 && R->ret != XM_OK)
    snprintf (R->why, sizeof R->why, "the stream ended early");
  if (R->why[0]) {
    jbuf_add (report, ",\"error\":");
    jbuf_str (report, R->why);
  }
  if (R->dst && b->describe_dest)
    b->describe_dest (R->dst, report);
  if (o->keep)
    *o->keep = NULL;
  if (R->dst && o->keep && R->started && R->ret == XM_OK)
    *o->keep = R->dst;
  else if (R->dst)
    b->close_dest (R->dst, R->started);
}

int
xm_receive (const struct xm_backend_ops *b, const char *id,
            struct xm_conn *c, const struct xm_recv_opts *o,
            struct jbuf *report)
{
  struct receiver *R = calloc (1, sizeof *R);   /* ~16 KiB of pfns */
  int st, ret;

  if (!R || !(R->buf = malloc (XM_REC_MAX))) {
    sxm_error ("out of memory");
    free (R);
    return XM_FAILED;
  }
  *R = (struct receiver) { .b = b, .c = c, .o = o, .buf = R->buf,
                           .ret = XM_FAILED, .t0 = sxm_now () };
  xm_decoder_init (&R->d);

  st = recv_start (R, id);
  while (st == XM_RX_ON && (st = recv_record (R)) == XM_RX_ON)
    st = on_record (R);
  if (st == XM_RX_REFUSE) {
    sxm_error ("%s", R->why);
    /* Best effort: the sender resumes its guest either way. */
    xm_send_ack (c, &R->aseq, -EPROTO, R->why);
  }
  recv_finish (R, report);
  ret = R->ret;
  free (R->buf);
  free (R->tmp);
  free (R);
  return ret;
}
