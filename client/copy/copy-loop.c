/* The copy (and verify) loop.
 *
 * The source is cut into segments (--segment-size).  Workers take segments
 * in order from a shared counter; for each one the worker asks the source
 * for its allocation map and plans operations:
 *
 *   copy mode   data  -> OP_COPY pieces (read, then write the non-zero runs),
 *                        or OP_RELAY pieces where the destination copies
 *                        them itself (--live: the mirror filter)
 *               zeros -> nothing if the destination reads zeros there,
 *                        else OP_ZERO (write_zeroes / punch hole)
 *   verify mode data  -> OP_CMP (read both sides, compare)
 *               zeros -> OP_CHKZERO on whatever the destination does not
 *                        itself report as zeros
 *
 * Each worker owns one connection to each side and keeps up to --requests
 * operations in flight.  A segment is complete when all its operations
 * are; completed segments become durable (and go into the checkpoint) after
 * the worker's next destination flush.
 *
 * Errors: a transient error (connection lost, EIO) makes the worker drain
 * what is in flight, reconnect dead connections with exponential backoff,
 * and redo every unfinished segment, plus finished-but-unflushed ones when
 * the destination connection was lost (the server may have lost them).
 * After --retries attempts without progress, or at once for an error that
 * cannot heal (EROFS, ENOSPC, EINVAL...), the whole copy stops. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bitmap.h"
#include "copy.h"
#include "monotime.h"
#include "zero.h"

#define ZERO_GRAIN 4096         /* zero detection granularity */

enum op_kind { OP_COPY, OP_ZERO, OP_CMP, OP_CHKZERO, OP_RELAY };

struct seg;

struct op {
  enum op_kind kind;
  uint64_t off, len;
  struct seg *seg;
  char *buf;
  unsigned refs;                /* requests outstanding */
  bool failed;
};

struct seg {
  uint64_t idx, start, end;
  struct op *ops;
  size_t nops, cap, next_op;
  unsigned outstanding;         /* ops started and not finished */
  uint64_t skipped;             /* bytes left alone (holes already zero) */
  bool failed;
  struct seg *next;
};

struct worker {
  struct copy *cp;
  unsigned idx;
  struct conn *src, *dst;
  bool own_conns;               /* connected by us (not the probe conns) */
  pthread_t tid;
  struct req *done_head, *done_tail;
  struct seg *active;           /* planned, not finished */
  struct seg *retry;            /* to plan again */
  unsigned inflight;            /* ops started, not finished */
  char **free_bufs;
  unsigned nfree;
  char *bufmem;
  uint64_t *pending;            /* finished segments awaiting a flush */
  size_t npending, pending_cap;
  size_t flush_covers;          /* pending[0..flush_covers) in the flush */
  bool flush_inflight;
  double last_flush;
  unsigned attempt;
  bool failing;                 /* draining after an error */
  bool fatal;
  char errmsg[512];
  bool dst_lost;
  struct conn *map_failed;      /* which side a failed block status was on */
  bool dirty;                   /* wrote since the last flush */
  double rate_wait;             /* seconds until the next read may start */
  double last_reply;            /* when a request last completed */
  bool abandoned;               /* stalled connections shut down */
};

static char *zero_buf;          /* request_size of zeros, read-only */

static bool
aborted (struct copy *cp)
{
  return __atomic_load_n (&cp->abort, __ATOMIC_RELAXED);
}

static void
stat_add (uint64_t *p, uint64_t n)
{
  __atomic_fetch_add (p, n, __ATOMIC_RELAXED);
}

/* Pace reads to --rate with a shared clock: a read may start once the
 * clock allows, and reserves its own slot.  Returns 0 when the read may go
 * now, else the seconds to wait (the worker keeps serving completions
 * meanwhile rather than sleeping with requests in flight). */
static double
rate_slot (struct copy *cp, uint64_t len)
{
  double now, wait = 0;

  if (cp->o->rate == 0)
    return 0;
  pthread_mutex_lock (&cp->lock);
  now = sxm_now ();
  if (cp->rate_next > now + 0.0005)
    wait = cp->rate_next - now;
  else
    cp->rate_next = (cp->rate_next > now ? cp->rate_next : now) +
                    (double) len / cp->o->rate;
  pthread_mutex_unlock (&cp->lock);
  return wait;
}

/* ---- requests -------------------------------------------------------- */

void
req_complete (struct req *r, int err)
{
  struct worker *w = r->conn->w;

  w->last_reply = sxm_now ();
  r->err = err;
  r->next = NULL;
  if (w->done_tail)
    w->done_tail->next = r;
  else
    w->done_head = r;
  w->done_tail = r;
}

static void op_fail (struct worker *w, struct op *op, struct req *r, int err);

static void
start_req (struct worker *w, struct op *op, struct conn *c,
           enum req_kind kind, uint64_t off, uint64_t len, char *data,
           bool fast_zero)
{
  struct req *r = calloc (1, sizeof *r);
  int (*fn) (struct conn *, struct req *);

  if (r == NULL) {
    op_fail (w, op, NULL, ENOMEM);
    return;
  }
  r->kind = kind;
  r->conn = c;
  r->off = off;
  r->len = len;
  r->data = data;
  r->fast_zero = fast_zero;
  r->op = op;
  if (op)
    op->refs++;
  switch (kind) {
  case RQ_READ: fn = c->ep->ops->pread; break;
  case RQ_WRITE: fn = c->ep->ops->pwrite; break;
  case RQ_ZERO: fn = c->ep->ops->zero; break;
  case RQ_RELAY: fn = c->ep->ops->relay; break;
  default: fn = c->ep->ops->flush; break;
  }
  if (fn (c, r) == -1)
    req_complete (r, errno ? errno : EIO);
}

/* ---- errors ---------------------------------------------------------- */

static bool
permanent (int err)
{
  switch (err) {
  case EROFS: case EPERM: case EACCES: case ENOSPC: case EDQUOT:
  case EINVAL: case EFBIG: case EOVERFLOW: case ENOTSUP: case ENOMEM:
    return true;
  default:
    return false;
  }
}

static const char *
req_name (enum req_kind k)
{
  switch (k) {
  case RQ_READ: return "read";
  case RQ_WRITE: return "write";
  case RQ_ZERO: return "zero";
  case RQ_RELAY: return "relay";
  default: return "flush";
  }
}

static void
op_fail (struct worker *w, struct op *op, struct req *r, int err)
{
  if (op) {
    op->failed = true;
    op->seg->failed = true;
  }
  if (!w->failing || !w->errmsg[0]) {
    if (r)
      snprintf (w->errmsg, sizeof w->errmsg,
                "%s: %s at offset %" PRIu64 " (length %" PRIu64 "): %s",
                r->conn->ep->name, req_name (r->kind), r->off, r->len,
                strerror (err));
    else
      snprintf (w->errmsg, sizeof w->errmsg, "%s", strerror (err));
  }
  if (r && (err == ESHUTDOWN || err == ENOTCONN || err == ECONNRESET ||
            err == EPIPE || err == ETIMEDOUT))
    r->conn->broken = true;     /* e.g. a server shutting down (NBD_ESHUTDOWN) */
  if (r && r->conn == w->dst && (r->conn->broken || conn_is_dead (r->conn)))
    w->dst_lost = true;
  w->failing = true;
  if (permanent (err))
    w->fatal = true;
}

/* ---- planning -------------------------------------------------------- */

static int
seg_add_op (struct seg *s, enum op_kind kind, uint64_t off, uint64_t len)
{
  if (s->nops == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    struct op *n = realloc (s->ops, cap * sizeof *n);
    if (n == NULL)
      return -1;
    s->ops = n;
    s->cap = cap;
  }
  s->ops[s->nops++] = (struct op) { .kind = kind, .off = off, .len = len,
                                    .seg = s };
  return 0;
}

/* Add KIND ops covering [off, off+len), cut at multiples of 'piece'. */
static int
seg_add_pieces (struct seg *s, enum op_kind kind, uint64_t off, uint64_t len,
                uint64_t piece)
{
  while (len > 0) {
    uint64_t n = piece - off % piece;
    if (n > len)
      n = len;
    if (seg_add_op (s, kind, off, n) == -1)
      return -1;
    off += n;
    len -= n;
  }
  return 0;
}

struct extent { uint64_t off, len; bool zero; };
struct extent_list { struct extent *e; size_t n, cap; };

static int
collect_extent (void *opaque, uint64_t off, uint64_t len, bool zero)
{
  struct extent_list *l = opaque;

  if (l->n > 0 && l->e[l->n - 1].zero == zero &&
      l->e[l->n - 1].off + l->e[l->n - 1].len == off) {
    l->e[l->n - 1].len += len;
    return 0;
  }
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 32;
    struct extent *n = realloc (l->e, cap * sizeof *n);
    if (n == NULL)
      return -1;
    l->e = n;
    l->cap = cap;
  }
  l->e[l->n++] = (struct extent) { off, len, zero };
  return 0;
}

/* Where the source reads zeros: what must happen on the destination. */
static int
plan_zeros (struct worker *w, struct seg *s, uint64_t off, uint64_t len)
{
  struct copy *cp = w->cp;
  struct extent_list d = { 0 };
  uint64_t piece = cp->mode == MODE_COPY ? cp->o->segment_size
                                         : cp->o->request_size;
  enum op_kind kind = cp->mode == MODE_COPY ? OP_ZERO : OP_CHKZERO;
  int r = 0;

  /* Nothing to do where the destination reads zeros already, or where
   * it keeps what it holds (an increment: the source's holes are the
   * ranges it did not change). */
  if (cp->mode == MODE_COPY && (cp->dst_zero || cp->o->allocated_only)) {
    s->skipped += len;
    return 0;
  }
  if (!cp->dst->has_extents)
    return seg_add_pieces (s, kind, off, len, piece);
  if (cp->dst->ops->extents (w->dst, off, len, collect_extent, &d) == -1) {
    int err = errno;
    free (d.e);
    errno = err;
    w->map_failed = w->dst;
    return -2;
  }
  for (size_t i = 0; i < d.n && r == 0; i++) {
    if (d.e[i].zero)
      s->skipped += d.e[i].len;
    else
      r = seg_add_pieces (s, kind, d.e[i].off, d.e[i].len, piece);
  }
  free (d.e);
  return r;
}

/* Plan segment S.  0 ok; -1 out of memory; -2 an I/O error asking for the
 * map (errno set; the segment stays for a retry). */
static int
plan_segment (struct worker *w, struct seg *s)
{
  struct copy *cp = w->cp;
  struct extent_list l = { 0 };
  int r = 0;

  s->nops = s->next_op = 0;
  s->outstanding = 0;
  s->skipped = 0;
  s->failed = false;
  if (cp->src->ops->extents (w->src, s->start, s->end - s->start,
                             collect_extent, &l) == -1) {
    int err = errno;
    free (l.e);
    errno = err;
    w->map_failed = w->src;
    return -2;
  }
  for (size_t i = 0; i < l.n && r == 0; i++) {
    if (l.e[i].zero)
      r = plan_zeros (w, s, l.e[i].off, l.e[i].len);
    else if (cp->mode == MODE_COPY && cp->relay_max)
      r = seg_add_pieces (s, OP_RELAY, l.e[i].off, l.e[i].len,
                          cp->o->request_size < cp->relay_max
                          ? cp->o->request_size : cp->relay_max);
    else
      r = seg_add_pieces (s, cp->mode == MODE_COPY ? OP_COPY : OP_CMP,
                          l.e[i].off, l.e[i].len, cp->o->request_size);
  }
  free (l.e);
  return r;
}

/* The next segment to work on: a retried one first, then a fresh one that
 * is not already durable (resume) and not past a found difference. */
static struct seg *
next_segment (struct worker *w)
{
  struct copy *cp = w->cp;
  struct seg *s;

  if (w->retry) {
    s = w->retry;
    w->retry = s->next;
  }
  else {
    uint64_t i;
    for (;;) {
      i = __atomic_fetch_add (&cp->next_seg, 1, __ATOMIC_RELAXED);
      if (i >= cp->nseg)
        return NULL;
      if (!bitmap_get (cp->done_map, i))
        break;
    }
    s = calloc (1, sizeof *s);
    if (s == NULL) {
      op_fail (w, NULL, NULL, ENOMEM);
      return NULL;
    }
    s->idx = i;
    s->start = i * cp->o->segment_size;
    s->end = s->start + cp->o->segment_size;
    if (s->end > cp->size)
      s->end = cp->size;
  }
  if (cp->mode == MODE_VERIFY &&
      s->start > __atomic_load_n (&cp->first_diff, __ATOMIC_RELAXED)) {
    free (s->ops);
    free (s);
    return NULL;
  }
  s->next = w->active;
  w->active = s;
  switch (plan_segment (w, s)) {
  case 0:
    return s;
  case -2:
    if (errno == ETIMEDOUT)
      snprintf (w->errmsg, sizeof w->errmsg,
                "%s: no reply for %.0f s (block status at %" PRIu64 ")",
                w->map_failed->ep->name, cp->o->timeout, s->start);
    else
      snprintf (w->errmsg, sizeof w->errmsg,
                "%s: block status in %" PRIu64 "-%" PRIu64 ": %s",
                w->map_failed->ep->name, s->start, s->end, strerror (errno));
    if (errno == ESHUTDOWN || errno == ENOTCONN || errno == ECONNRESET ||
        errno == EPIPE || errno == ETIMEDOUT)
      w->map_failed->broken = true;
    if (w->map_failed == w->dst && (w->dst->broken || conn_is_dead (w->dst)))
      w->dst_lost = true;
    s->failed = true;
    w->failing = true;
    return NULL;
  default:
    s->failed = true;
    op_fail (w, NULL, NULL, ENOMEM);
    return NULL;
  }
}

static void
seg_unlink (struct worker *w, struct seg *s)
{
  for (struct seg **p = &w->active; *p; p = &(*p)->next)
    if (*p == s) {
      *p = s->next;
      return;
    }
}

static void
seg_finished (struct worker *w, struct seg *s)
{
  struct copy *cp = w->cp;

  seg_unlink (w, s);
  /* Counted once, even if a lost destination makes us redo it. */
  if (!bitmap_get (cp->counted_map, s->idx)) {
    bitmap_set (cp->counted_map, s->idx);
    stat_add (&cp->bytes_skipped, s->skipped);
    stat_add (&cp->alloc_done, cp->seg_alloc[s->idx]);
  }
  if (cp->mode == MODE_COPY) {
    if (w->npending == w->pending_cap) {
      size_t cap = w->pending_cap ? w->pending_cap * 2 : 64;
      uint64_t *n = realloc (w->pending, cap * sizeof *n);
      if (n == NULL) {
        op_fail (w, NULL, NULL, ENOMEM);
        return;
      }
      w->pending = n;
      w->pending_cap = cap;
    }
    w->pending[w->npending++] = s->idx;
  }
  w->dirty = true;
  w->attempt = 0;               /* progress: the retry budget starts again */
  free (s->ops);
  free (s);
}

/* ---- operations ------------------------------------------------------ */

static void
start_op (struct worker *w, struct op *op)
{
  struct copy *cp = w->cp;

  if (w->inflight == 0)
    w->last_reply = sxm_now ();         /* the stall clock starts now */
  op->seg->outstanding++;
  w->inflight++;
  switch (op->kind) {
  case OP_COPY:
    op->buf = w->free_bufs[--w->nfree];
    start_req (w, op, w->src, RQ_READ, op->off, op->len, op->buf, false);
    break;
  case OP_ZERO:
    if (cp->dst->can_zero)
      start_req (w, op, w->dst, RQ_ZERO, op->off, op->len, NULL,
                 cp->dst->can_fast_zero && !cp->dst->fast_zero_failed);
    else {
      /* No efficient zeroing: write zeros, a request at a time. */
      for (uint64_t o = 0; o < op->len; o += cp->o->request_size) {
        uint64_t n = op->len - o < cp->o->request_size ? op->len - o
                                                        : cp->o->request_size;
        start_req (w, op, w->dst, RQ_WRITE, op->off + o, n, zero_buf, false);
      }
    }
    break;
  case OP_CMP:
    op->buf = w->free_bufs[--w->nfree];
    start_req (w, op, w->src, RQ_READ, op->off, op->len, op->buf, false);
    start_req (w, op, w->dst, RQ_READ, op->off, op->len,
               op->buf + cp->o->request_size, false);
    break;
  case OP_CHKZERO:
    op->buf = w->free_bufs[--w->nfree];
    start_req (w, op, w->dst, RQ_READ, op->off, op->len, op->buf, false);
    break;
  case OP_RELAY:
    start_req (w, op, w->dst, RQ_RELAY, op->off, op->len, NULL, false);
    break;
  }
}

static void
note_diff (struct copy *cp, uint64_t off, const char *what)
{
  pthread_mutex_lock (&cp->lock);
  if (off < cp->first_diff) {
    cp->first_diff = off;
    cp->diff_what = what;
  }
  pthread_mutex_unlock (&cp->lock);
}

/* The source data of an OP_COPY arrived: write it, leaving out (or
 * zeroing) the all-zero ZERO_GRAIN blocks when zero detection is on. */
static void
copy_read_done (struct worker *w, struct op *op)
{
  struct copy *cp = w->cp;
  uint64_t pos = 0;

  stat_add (&cp->bytes_read, op->len);
  if (!cp->o->zero_detect) {
    stat_add (&cp->bytes_written, op->len);
    start_req (w, op, w->dst, RQ_WRITE, op->off, op->len, op->buf, false);
    return;
  }
  while (pos < op->len) {
    /* The run of blocks with the same zero-ness as the block at pos. */
    uint64_t n = op->len - pos < ZERO_GRAIN ? op->len - pos : ZERO_GRAIN;
    bool zero = buf_is_zero (op->buf + pos, n);
    uint64_t end = pos + n;
    while (end < op->len) {
      uint64_t m = op->len - end < ZERO_GRAIN ? op->len - end : ZERO_GRAIN;
      if (buf_is_zero (op->buf + end, m) != zero)
        break;
      end += m;
    }
    n = end - pos;
    if (!zero) {
      stat_add (&cp->bytes_written, n);
      start_req (w, op, w->dst, RQ_WRITE, op->off + pos, n, op->buf + pos,
                 false);
    }
    else if (cp->dst_zero)
      stat_add (&cp->bytes_skipped, n);
    else if (cp->dst->can_zero) {
      stat_add (&cp->bytes_zeroed, n);
      start_req (w, op, w->dst, RQ_ZERO, op->off + pos, n, NULL,
                 cp->dst->can_fast_zero && !cp->dst->fast_zero_failed);
    }
    else {
      stat_add (&cp->bytes_written, n);
      start_req (w, op, w->dst, RQ_WRITE, op->off + pos, n, op->buf + pos,
                 false);
    }
    pos = end;
  }
}

static void
op_finished (struct worker *w, struct op *op)
{
  struct seg *s = op->seg;

  if (op->buf) {
    w->free_bufs[w->nfree++] = op->buf;
    op->buf = NULL;
  }
  w->inflight--;
  s->outstanding--;
  if (s->outstanding == 0 && s->next_op == s->nops && !s->failed)
    seg_finished (w, s);
}

static void
flush_done (struct worker *w, struct req *r)
{
  struct copy *cp = w->cp;

  w->flush_inflight = false;
  if (r->err) {
    op_fail (w, NULL, r, r->err);
    return;
  }
  pthread_mutex_lock (&cp->lock);
  for (size_t i = 0; i < w->flush_covers; i++)
    bitmap_set (cp->done_map, w->pending[i]);
  cp->ckpt_dirty = true;
  pthread_mutex_unlock (&cp->lock);
  memmove (w->pending, w->pending + w->flush_covers,
           (w->npending - w->flush_covers) * sizeof *w->pending);
  w->npending -= w->flush_covers;
  w->flush_covers = 0;
}

static void
handle_done (struct worker *w, struct req *r)
{
  struct copy *cp = w->cp;
  struct op *op = r->op;

  if (r->kind == RQ_FLUSH) {
    flush_done (w, r);
    return;
  }
  if (r->err && r->kind == RQ_ZERO && r->fast_zero &&
      (r->err == ENOTSUP || r->err == EOPNOTSUPP)) {
    /* Fast zeroing refused: zero the slow way, and stop asking. */
    cp->dst->fast_zero_failed = true;
    start_req (w, op, w->dst, RQ_ZERO, r->off, r->len, NULL, false);
  }
  else if (r->err)
    op_fail (w, op, r, r->err);
  else if (!op->failed && !w->failing) {
    /* (Once failing, nothing new starts: the segment is redone.) */
    switch (op->kind) {
    case OP_COPY:
      if (r->kind == RQ_READ)
        copy_read_done (w, op);
      break;
    case OP_ZERO:
      if (r->kind == RQ_ZERO || r->data == zero_buf)
        stat_add (&cp->bytes_zeroed, r->len);
      break;
    case OP_RELAY:
      stat_add (&cp->bytes_relayed, op->len);
      stat_add (&cp->bytes_read, op->len);
      stat_add (&cp->bytes_written, op->len);
      break;
    case OP_CMP:
      if (op->refs == 1) {      /* the second of the two reads */
        const char *a = op->buf, *b = op->buf + cp->o->request_size;
        stat_add (&cp->bytes_read, 2 * op->len);
        stat_add (&cp->bytes_compared, op->len);
        if (memcmp (a, b, op->len) != 0) {
          uint64_t i = 0;
          while (a[i] == b[i])
            i++;
          note_diff (cp, op->off + i, "source and destination differ");
        }
      }
      break;
    case OP_CHKZERO:
      stat_add (&cp->bytes_read, op->len);
      stat_add (&cp->bytes_zero_checked, op->len);
      if (!buf_is_zero (op->buf, op->len)) {
        uint64_t i = 0;
        while (op->buf[i] == 0)
          i++;
        note_diff (cp, op->off + i,
                   "destination is not zero where the source reads zeros");
      }
      break;
    }
  }
  if (--op->refs == 0)
    op_finished (w, op);
}

static void
process_done (struct worker *w)
{
  while (w->done_head) {
    struct req *r = w->done_head;
    w->done_head = r->next;
    if (w->done_head == NULL)
      w->done_tail = NULL;
    handle_done (w, r);
    free (r);
  }
}

/* Wait for any NBD connection with requests in flight to make progress,
 * or for the rate limiter's next slot. */
static void
wait_io (struct worker *w)
{
  struct pollfd fds[2];
  struct conn *cs[2];
  int n = 0, timeout = 1000;

  if (w->rate_wait > 0) {
    timeout = w->rate_wait < 0.1 ? (int) (w->rate_wait * 1000) + 1 : 100;
    w->rate_wait = 0;
  }
  for (int i = 0; i < 2; i++) {
    struct conn *c = i == 0 ? w->src : w->dst;
    if (c->ep->ops->poll_setup && c->ep->ops->poll_setup (c, &fds[n]))
      cs[n++] = c;
  }
  if (n == 0) {
    /* Nothing to poll: pacing, or requests on a connection that died and
     * whose completions libnbd has yet to deliver. */
    usleep (timeout < 1000 ? timeout * 1000 : 1000);
    return;
  }
  if (poll (fds, n, timeout) > 0) {
    for (int i = 0; i < n; i++)
      if (fds[i].revents)
        cs[i]->ep->ops->poll_done (cs[i], fds[i].revents);
    return;
  }
  /* Nothing happened: a server that stopped answering (stopped process,
   * dead link without a reset) would otherwise hang the copy forever. */
  if (w->cp->o->timeout > 0 && !w->abandoned &&
      sxm_now () - w->last_reply > w->cp->o->timeout) {
    for (int i = 0; i < n; i++) {
      if (!cs[i]->ep->ops->abandon)
        continue;
      if (!w->errmsg[0])
        snprintf (w->errmsg, sizeof w->errmsg, "%s: no reply for %.0f s",
                  cs[i]->ep->name, w->cp->o->timeout);
      cs[i]->ep->ops->abandon (cs[i]);
      if (cs[i] == w->dst)
        w->dst_lost = true;
    }
    w->failing = true;
    w->abandoned = true;
  }
}

/* Start operations until the worker is full or has nothing left. */
static bool
fill (struct worker *w)
{
  struct seg *s = NULL;
  bool any = false;

  /* The segment still being issued, if any, is the newest active one. */
  if (w->active && w->active->next_op < w->active->nops)
    s = w->active;
  while (!w->failing && !aborted (w->cp) && w->inflight < w->cp->o->requests) {
    struct op *op;
    if (s == NULL || s->next_op == s->nops) {
      if (s && s->outstanding == 0 && !s->failed)
        seg_finished (w, s);    /* a segment with nothing to do */
      s = next_segment (w);
      if (s == NULL)
        break;
      any = true;
      continue;
    }
    op = &s->ops[s->next_op];
    if (op->kind != OP_ZERO && op->kind != OP_RELAY && w->nfree == 0)
      break;
    if ((op->kind == OP_COPY || op->kind == OP_CMP || op->kind == OP_RELAY) &&
        (w->rate_wait = rate_slot (w->cp, op->len)) > 0)
      break;
    s->next_op++;
    start_op (w, op);
    any = true;
  }
  if (s && s->next_op == s->nops && s->outstanding == 0 && !s->failed)
    seg_finished (w, s);
  return any;
}

static void
start_flush (struct worker *w)
{
  if (w->inflight == 0)
    w->last_reply = sxm_now ();
  w->flush_inflight = true;
  w->flush_covers = w->npending;
  w->dirty = false;
  w->last_flush = sxm_now ();
  start_req (w, NULL, w->dst, RQ_FLUSH, 0, 0, NULL, false);
}

/* After an error, with nothing in flight: reconnect and re-plan.
 * Returns false when the worker must give up. */
static bool
recover (struct worker *w)
{
  struct copy *cp = w->cp;
  struct seg *s, *next;

  if (w->fatal || aborted (cp))
    return false;
  for (;;) {
    double delay;
    if (++w->attempt > cp->o->retries)
      return false;
    stat_add (&cp->retries_done, 1);
    delay = 0.5 * (1u << (w->attempt - 1));
    fprintf (stderr, "sxm-copy: %s; retry %u of %u in %.1f s\n",
               w->errmsg, w->attempt, cp->o->retries, delay);
    for (double t = 0; t < delay && !aborted (cp); t += 0.1)
      usleep (100000);
    if (aborted (cp))
      return false;
    bool ok = true;
    for (int i = 0; ok && i < 2; i++) {
      struct conn *c = i == 0 ? w->src : w->dst;
      if (!c->broken && !conn_is_dead (c))
        continue;
      if (c == w->dst)
        w->dst_lost = true;
      conn_disconnect (c);
      c->broken = false;
      if (conn_connect (c) == -1) {
        c->broken = true;
        snprintf (w->errmsg, sizeof w->errmsg, "%s: cannot reconnect: %s",
                  c->ep->name, c->error);
        ok = false;
      }
    }
    if (ok)
      break;
  }
  /* Redo unfinished segments; if the destination went away, also those
   * finished since its last flush (the server may not have kept them). */
  for (s = w->active; s; s = next) {
    next = s->next;
    s->next = w->retry;
    w->retry = s;
  }
  w->active = NULL;
  if (w->dst_lost) {
    for (size_t i = 0; i < w->npending; i++) {
      struct seg *n = calloc (1, sizeof *n);
      if (n == NULL)
        return false;
      n->idx = w->pending[i];
      n->start = n->idx * cp->o->segment_size;
      n->end = n->start + cp->o->segment_size < cp->size
               ? n->start + cp->o->segment_size : cp->size;
      n->next = w->retry;
      w->retry = n;
    }
    w->npending = 0;
    w->dst_lost = false;
  }
  w->failing = false;
  w->abandoned = false;
  w->errmsg[0] = 0;
  return true;
}

static bool
idle (struct worker *w)
{
  return w->inflight == 0 && !w->flush_inflight && w->done_head == NULL &&
         w->active == NULL && w->retry == NULL;
}

static void *
worker_main (void *arg)
{
  struct worker *w = arg;
  struct copy *cp = w->cp;
  bool checkpointing = cp->o->checkpoint && cp->mode == MODE_COPY;
  bool flush_at_end = cp->mode == MODE_COPY && (cp->o->flush || checkpointing);
  bool abort_flush_tried = false;

  w->last_flush = sxm_now ();
  for (;;) {
    bool progress;

    if (w->failing) {
      process_done (w);
      if (w->inflight == 0 && !w->flush_inflight && w->done_head == NULL) {
        if (!recover (w))
          break;
        continue;
      }
      wait_io (w);
      continue;
    }
    if (aborted (cp)) {
      /* Another worker gave up: drain, then flush what we finished so
       * that the checkpoint keeps it. */
      process_done (w);
      if (w->inflight || w->flush_inflight) {
        wait_io (w);
        continue;
      }
      if (checkpointing && w->npending > 0 && !abort_flush_tried) {
        abort_flush_tried = true;
        start_flush (w);
        continue;
      }
      break;
    }
    progress = fill (w);
    process_done (w);
    if (checkpointing && !w->flush_inflight && w->npending > 0 &&
        sxm_now () - w->last_flush >= cp->o->checkpoint_interval) {
      start_flush (w);
      progress = true;
    }
    if (!w->failing && idle (w)) {
      /* Out of work: a last flush makes everything we wrote durable. */
      if (flush_at_end && w->dirty) {
        start_flush (w);
        continue;
      }
      break;
    }
    if (!progress && w->done_head == NULL)
      wait_io (w);
  }
  if (w->failing && !aborted (cp)) {
    fprintf (stderr, "sxm-copy: %s\n", w->errmsg);
    __atomic_store_n (&cp->failed, 1, __ATOMIC_RELAXED);
    __atomic_store_n (&cp->abort, 1, __ATOMIC_RELAXED);
  }
  else if (w->failing)
    __atomic_store_n (&cp->failed, 1, __ATOMIC_RELAXED);
  pthread_mutex_lock (&cp->lock);
  if (--cp->running == 0)
    pthread_cond_signal (&cp->finished);
  pthread_mutex_unlock (&cp->lock);
  return NULL;
}

static int
worker_init (struct worker *w, struct copy *cp, unsigned idx,
             struct conn *src0, struct conn *dst0)
{
  size_t bufsize = cp->o->request_size * (cp->mode == MODE_VERIFY ? 2 : 1);
  unsigned n = cp->o->requests;

  w->cp = cp;
  w->idx = idx;
  if (idx == 0) {
    w->src = src0;
    w->dst = dst0;
  }
  else {
    struct conn *failed = NULL;
    w->own_conns = true;
    w->src = conn_new (cp->src);
    w->dst = conn_new (cp->dst);
    if (!w->src || !w->dst) {
      fprintf (stderr, "sxm-copy: out of memory\n");
      return -1;
    }
    if (conn_connect (w->src) == -1)
      failed = w->src;
    else if (conn_connect (w->dst) == -1)
      failed = w->dst;
    if (failed) {
      fprintf (stderr, "sxm-copy: %s: cannot open connection %u: %s\n",
               failed->ep->name, idx + 1, failed->error);
      return -1;
    }
  }
  w->src->w = w->dst->w = w;
  if (posix_memalign ((void **) &w->bufmem, 4096, bufsize * n) != 0 ||
      (w->free_bufs = malloc (n * sizeof *w->free_bufs)) == NULL) {
    fprintf (stderr, "sxm-copy: out of memory for %u buffers of %zu bytes\n",
             n, bufsize);
    return -1;
  }
  for (unsigned i = 0; i < n; i++)
    w->free_bufs[i] = w->bufmem + i * bufsize;
  w->nfree = n;
  return 0;
}

static void
worker_fini (struct worker *w)
{
  struct seg *s, *next;

  for (s = w->active; s; s = next) {
    next = s->next;
    free (s->ops);
    free (s);
  }
  for (s = w->retry; s; s = next) {
    next = s->next;
    free (s->ops);
    free (s);
  }
  /* (Worker 0 borrowed the probe connections: they are the caller's.) */
  if (w->own_conns) {
    conn_free (w->src);
    conn_free (w->dst);
  }
  free (w->bufmem);
  free (w->free_bufs);
  free (w->pending);
}

int
copy_run (struct copy *cp, unsigned nworkers, struct conn *src0,
          struct conn *dst0, void (*monitor) (struct copy *cp, bool last))
{
  struct worker *ws = calloc (nworkers, sizeof *ws);
  unsigned started = 0;
  int rc = 0;

  if (zero_buf == NULL)
    zero_buf = calloc (1, cp->o->request_size);
  if (ws == NULL || zero_buf == NULL) {
    fprintf (stderr, "sxm-copy: out of memory\n");
    free (ws);
    return -1;
  }
  cp->next_seg = 0;
  cp->first_diff = SEG_NONE;
  for (unsigned i = 0; i < nworkers; i++)
    if (worker_init (&ws[i], cp, i, src0, dst0) == -1) {
      rc = -1;
      goto out;
    }
  cp->running = nworkers;
  for (; started < nworkers; started++)
    if (pthread_create (&ws[started].tid, NULL, worker_main, &ws[started])) {
      fprintf (stderr, "sxm-copy: cannot start a thread\n");
      __atomic_store_n (&cp->abort, 1, __ATOMIC_RELAXED);
      pthread_mutex_lock (&cp->lock);
      cp->running -= nworkers - started;
      pthread_mutex_unlock (&cp->lock);
      rc = -1;
      break;
    }
  /* The monitor (progress, checkpoint) runs every 100 ms until the last
   * worker signals. */
  pthread_mutex_lock (&cp->lock);
  while (cp->running > 0) {
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100000000;
    if (ts.tv_nsec >= 1000000000) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000;
    }
    if (pthread_cond_timedwait (&cp->finished, &cp->lock, &ts) == ETIMEDOUT) {
      pthread_mutex_unlock (&cp->lock);
      monitor (cp, false);
      pthread_mutex_lock (&cp->lock);
    }
  }
  pthread_mutex_unlock (&cp->lock);
  for (unsigned i = 0; i < started; i++)
    pthread_join (ws[i].tid, NULL);
  monitor (cp, true);
  if (cp->failed || cp->abort)
    rc = -1;
 out:
  for (unsigned i = 0; i < nworkers; i++)
    worker_fini (&ws[i]);
  free (ws);
  return rc;
}
