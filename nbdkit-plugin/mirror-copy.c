/* The mirror filter's copy export, "sxm-mirror-copy-TOKEN": a copier
 * either asks the filter to relay each data run (NBD_CMD_CACHE, which on
 * this export means "copy this range from the source to the
 * destination": the filter reads the source and forwards, and no byte
 * crosses the copier's socket; sxm-copy --live does this), or reads the
 * source through it (reads go straight to the plugin) and writes back
 * what it read (any NBD client can).  Either way copy_forward sends the
 * destination only the granules that are still clean, under the range
 * lock that guest writes take too.  A connection belongs to the mirror it was opened for:
 * the token changes with each start, and every request checks the
 * generation again inside the gate, so a copier of an earlier mirror
 * cannot write stale data into a later one.
 *
 * The copy's data is forwarded in pieces of at most MIRROR_FORWARD_PIECE.
 * Pacing ("guest_priority", the default): while a mirrored guest request
 * is in flight the copy steps aside.  No piece starts then (for at most
 * MIRROR_COPY_YIELD_MAX_S, so the copy always moves), and after that
 * only MIRROR_COPY_BUSY_WINDOW pieces forward at a time, whatever the
 * copier keeps in flight; whenever the guest has nothing in flight the
 * copy is unlimited.  So a guest writing little costs the copy little,
 * and one writing all the time gets a copy one piece wide.  Why these
 * values, with measurements: doc/design.md, "Guest I/O during the live
 * copy". */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nbdkit-filter.h>

#include "mirror.h"
#include "monotime.h"
#include "zero.h"

#define MIRROR_COPY_YIELD_MAX_S 0.004
#define MIRROR_COPY_BUSY_WINDOW 1
#define MIRROR_FORWARD_PIECE    (512u << 10)

/* ---- pacing: the guest first ------------------------------------------- */

/* Pieces wait in a queue whose head alone watches the guest, so a guest
 * request's end wakes at most one thread (and only when the head waits
 * for exactly that), not every queued piece: on two cores those wakeups
 * cost the guest more than the copy they held back. */
static unsigned guest_pending;          /* atomic: mirrored requests in flight */
static unsigned head_yielding;          /* atomic: the head waits for the guest */
static pthread_mutex_t pace_m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t queue_cv;         /* the head left; CLOCK_MONOTONIC */
static pthread_cond_t turn_cv;          /* for the head: guest idle, window */
static pthread_once_t pace_once = PTHREAD_ONCE_INIT;
static bool pace_head;                  /* under pace_m: a piece is the head */
static unsigned pace_forwarding;        /* under pace_m: pieces forwarding */

static void
pace_init (void)
{
  sxm_cond_init_monotonic (&queue_cv);
  sxm_cond_init_monotonic (&turn_cv);
}

void
mirror_guest_begin (void)
{
  __atomic_fetch_add (&guest_pending, 1, __ATOMIC_SEQ_CST);
}

void
mirror_guest_end (void)
{
  if (__atomic_sub_fetch (&guest_pending, 1, __ATOMIC_SEQ_CST) == 0 &&
      __atomic_load_n (&head_yielding, __ATOMIC_SEQ_CST)) {
    pthread_mutex_lock (&pace_m);
    pthread_cond_signal (&turn_cv);
    pthread_mutex_unlock (&pace_m);
  }
}

/* Under pace_m: may a piece start now?  YIELD_UNTIL bounds the wait for
 * the guest's requests in flight. */
static bool
pace_may_start (double now, double yield_until)
{
  if (__atomic_load_n (&guest_pending, __ATOMIC_SEQ_CST) == 0)
    return true;
  return now >= yield_until && pace_forwarding < MIRROR_COPY_BUSY_WINDOW;
}

/* Under pace_m: wait on CV until NOW + S at the latest. */
static void
wait_for (pthread_cond_t *cv, double now, double s)
{
  struct timespec ts = sxm_timespec (now + s);

  pthread_cond_timedwait (cv, &pace_m, &ts);
}

/* Wait for a piece's turn (at once without guest priority). */
static void
pace_enter (void)
{
  const double t0 = sxm_now ();
  double now = t0;

  pthread_once (&pace_once, pace_init);
  pthread_mutex_lock (&pace_m);
  if (mirror_guest_priority) {
    while (pace_head) {
      wait_for (&queue_cv, now, 0.010);
      now = sxm_now ();
    }
    pace_head = true;
    /* (The yield is bounded from when this piece became the head.) */
    for (double yield_until = now + MIRROR_COPY_YIELD_MAX_S;
         !pace_may_start (now, yield_until); now = sxm_now ()) {
      /* Woken by a piece ending, or by the guest's last request ending
       * while we wait for it; the millisecond bound is a safety net. */
      __atomic_store_n (&head_yielding,
                        __atomic_load_n (&guest_pending, __ATOMIC_SEQ_CST) > 0,
                        __ATOMIC_SEQ_CST);
      wait_for (&turn_cv, now, 0.001);
    }
    __atomic_store_n (&head_yielding, 0, __ATOMIC_SEQ_CST);
    pace_head = false;
    pthread_cond_signal (&queue_cv);
  }
  pace_forwarding++;
  pthread_mutex_unlock (&pace_m);
  if (now > t0) {
    mirror_stat_add (&mirror_stats.copy_yields, 1);
    mirror_stat_add (&mirror_stats.copy_yield_us,
                     (uint64_t) ((now - t0) * 1e6));
  }
}

static void
pace_leave (void)
{
  pthread_mutex_lock (&pace_m);
  pace_forwarding--;
  pthread_cond_signal (&turn_cv);
  pthread_mutex_unlock (&pace_m);
}

/* ---- the copy export ----------------------------------------------------- */

char *
mirror_copy_accept (const char *exportname, uint64_t *gen)
{
  const char *tok = exportname + strlen (MIRROR_COPY_PREFIX);
  char *exp = NULL;
  bool ok;

  pthread_mutex_lock (&mirror_info_lock);  /* token/export change under it */
  ok = mirror_cur_state () == M_MIRRORING && strcmp (tok, mirror_token) == 0;
  if (ok) {
    exp = strdup (mirror_export);
    *gen = mirror_generation;
  }
  pthread_mutex_unlock (&mirror_info_lock);
  if (!ok)
    nbdkit_error ("mirror: copy export '%s': no mirror is running with "
                  "that token", exportname);
  else if (!exp)
    nbdkit_error ("mirror: strdup: %m");
  return exp;
}

void
mirror_copy_opened (void)
{
  pthread_mutex_lock (&mirror_info_lock);
  mirror_copy_seen = true;
  pthread_mutex_unlock (&mirror_info_lock);
}

/* Enter the gate for a request WHAT of a copy connection opened for
 * generation GEN: 0 inside it, with that mirror running; or -1 with *ERR
 * = EPERM and the gate left (the mirror ended, or the connection belongs
 * to an earlier one). */
static int
enter_current (uint64_t gen, const char *what, int *err)
{
  mirror_gate_enter ();
  if (mirror_cur_state () == M_MIRRORING && gen == mirror_generation)
    return 0;
  nbdkit_error ("mirror: copy %s refused: %s", what,
                gen != mirror_generation ? "this copy connection belongs "
                "to an earlier mirror"
                : mirror_state_name (mirror_cur_state ()));
  mirror_gate_leave ();
  *err = EPERM;
  return -1;
}

/* Forward to the destination the parts of [off, off+count) whose granules
 * are clean; dirty granules already hold the guest's newer data there.
 * One piece: under the range lock of its granules.  *SENT: the bytes
 * forwarded.  0, an errno from the destination, or -ENOMEM. */
static int
forward_piece (bool zero, const char *buf, uint64_t count, uint64_t off,
               bool fua, uint64_t *sent)
{
  const uint64_t gran = mirror_gran, end = off + count;
  const uint64_t gs = off / gran * gran, ge = (end + gran - 1) / gran * gran;
  struct range_held *tok;
  uint64_t pos = off;
  int e = 0;

  tok = rangelock_lock (&mirror_rl, gs, ge - gs);
  if (!tok) {
    nbdkit_error ("mirror: range lock: %m");
    return -ENOMEM;
  }
  while (pos < end && e == 0) {
    uint64_t g = pos / gran, rend;
    bool d = mirror_is_dirty (g);
    /* The run of granules as clean (or as dirty) as this one. */
    rend = (g + 1) * gran;
    while (rend < end && mirror_is_dirty (rend / gran) == d)
      rend += gran;
    if (rend > end)
      rend = end;
    if (!d) {
      e = zero ? dest_zero (mirror_dest, DEST_COPY, rend - pos, pos, fua)
               : dest_pwrite (mirror_dest, DEST_COPY, buf + (pos - off),
                              rend - pos, pos, fua);
      *sent += rend - pos;
    }
    pos = rend;
  }
  rangelock_unlock (&mirror_rl, tok);
  return e;
}

/* The copy's data goes to the destination in pieces of at most
 * MIRROR_FORWARD_PIECE (whole granules), each paced on its own: a guest
 * write then never waits behind more than one piece, whatever the
 * copier's request size.  (Zeros go whole: no payload.) */
static int
copy_forward (bool zero, const void *buf, uint32_t count, uint64_t off,
              uint32_t flags, uint64_t *sent)
{
  const uint64_t gran = mirror_gran, end = off + count;
  const uint64_t piece = MIRROR_FORWARD_PIECE > gran
    ? MIRROR_FORWARD_PIECE / gran * gran : gran;
  uint64_t pos = off;
  int e = 0;

  *sent = 0;
  while (pos < end && e == 0) {
    uint64_t pend = zero ? end : (pos / gran * gran) + piece;
    if (pend > end)
      pend = end;
    pace_enter ();
    /* A piece may have waited its turn (pace_enter) behind one whose
     * destination request failed or timed out and broke the mirror: it
     * must not go to the destination then.  Sent anyway, it can wait out
     * a timeout of its own on another stalled connection, and each piece
     * queued so in turn, while the copier (and a rollback waiting for it)
     * waits for them all (tests/sxm-netfault.t, a stall in the live
     * copy).  EIO, as the piece that broke it got. */
    if (mirror_cur_state () != M_MIRRORING)
      e = -EIO;
    else
      e = forward_piece (zero, (const char *) buf + (pos - off), pend - pos,
                         pos, flags & NBDKIT_FLAG_FUA, sent);
    pace_leave ();
    pos = pend;
  }
  return e;
}

/* Inside the gate, for the current mirror: forward the request (WHAT, for
 * messages) and count it.  0, or -1 with *ERR (a destination failure has
 * broken the mirror: EIO). */
static int
forward_counted (bool zero, const void *buf, uint32_t count, uint64_t off,
                 uint32_t flags, const char *what, int *err)
{
  uint64_t sent;
  int e = copy_forward (zero, buf, count, off, flags, &sent);

  if (e < 0) {
    *err = -e;
    return -1;
  }
  if (e) {
    mirror_dest_failed (e, what, off, count, err);
    *err = EIO;
    return -1;
  }
  mirror_stat_add (&mirror_stats.copied, sent);
  mirror_stat_add (&mirror_stats.copy_skipped, count - sent);
  return 0;
}

int
mirror_copy_write (uint64_t gen, bool zero, const void *buf, uint32_t count,
                   uint64_t off, uint32_t flags, int *err)
{
  int r;

  if (enter_current (gen, zero ? "write_zeroes" : "write", err) == -1)
    return -1;
  r = forward_counted (zero, buf, count, off, flags,
                       zero ? "copy write_zeroes" : "copy write", err);
  mirror_gate_leave ();
  return r;
}

/* The relay's buffer: one per nbdkit thread, kept (a fresh 1 MiB
 * allocation per request is an mmap and page faults each time). */
static pthread_key_t relay_key;
static pthread_once_t relay_once = PTHREAD_ONCE_INIT;

static void
relay_init (void)
{
  pthread_key_create (&relay_key, free);
}

static char *
relay_buffer (void)
{
  char *b;

  pthread_once (&relay_once, relay_init);
  b = pthread_getspecific (relay_key);
  if (!b && (b = malloc (MIRROR_RELAY_MAX)) != NULL &&
      pthread_setspecific (relay_key, b) != 0) {
    free (b);
    b = NULL;
  }
  if (!b)
    nbdkit_error ("mirror: relay buffer: %m");
  return b;
}

/* Inside the gate, for the current mirror: read the source, forward.  An
 * all-zero run goes as write_zeroes.  0, or -1 with *ERR (a destination
 * failure has broken the mirror). */
static int
relay_run (nbdkit_next *next, char *buf, uint32_t count, uint64_t off,
           int *err)
{
  if (next->pread (next, buf, count, off, 0, err) == -1) {
    nbdkit_error ("mirror: relay: source read at offset %" PRIu64
                  " (length %" PRIu32 ") failed", off, count);
    if (*err == 0)
      *err = EIO;
    return -1;
  }
  return forward_counted (buf_is_zero (buf, count), buf, count, off, 0,
                         "copy relay", err);
}

int
mirror_copy_relay (uint64_t gen, nbdkit_next *next, uint32_t count,
                   uint64_t off, int *err)
{
  char *buf;
  int r;

  if (count > MIRROR_RELAY_MAX) {
    nbdkit_error ("mirror: relay of %" PRIu32 " bytes at offset %" PRIu64
                  ": at most %u at a time", count, off, MIRROR_RELAY_MAX);
    *err = EINVAL;
    return -1;
  }
  if (!(buf = relay_buffer ())) {
    *err = ENOMEM;
    return -1;
  }
  if (enter_current (gen, "relay", err) == -1)
    return -1;
  r = relay_run (next, buf, count, off, err);
  mirror_gate_leave ();
  return r;
}

/* The copier's flush is the destination's: that is where its writes
 * went. */
int
mirror_copy_flush (uint64_t gen, int *err)
{
  int e;

  if (enter_current (gen, "flush", err) == -1)
    return -1;
  e = dest_flush (mirror_dest);
  if (e)
    mirror_dest_failed (e, "flush", 0, 0, err);
  mirror_gate_leave ();
  if (e)
    *err = EIO;
  return e ? -1 : 0;
}
