/* nbdkit-mirror-filter: live storage migration's dirty-block tracker.
 *
 * Idle, the filter passes everything through.  Once a control client
 * starts a mirror to a destination NBD export, every guest write,
 * write_zeroes and trim on the mirrored export is applied to the source
 * (the plugin below) and then made true on the destination before the guest
 * gets its reply; a dirty map (one bit per granule) records which granules
 * guest writes have touched since the start.  The bulk copy (sxm-copy
 * --live) reads the source and writes through a private "copy export" of
 * this filter, which forwards to the destination only the granules that
 * are still clean, under a range lock shared with guest writes.
 *
 * The invariant and why it holds under every interleaving are in
 * doc/design.md ("Live mirror"); the control protocol is in
 * doc/nbdkit-mirror-filter.pod. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "bitmap.h"
#include "log.h"
#include "mirror.h"
#include "nbdpolicy.h"
#include "rangelock.h"
#include "zero.h"

#define COPY_PREFIX "sxm-mirror-copy-"

/* ---- configuration -------------------------------------------------- */

static char *control_path;
/* mirror-uri: how clients reach this export, reported by "status" so
 * that sxm migrate needs nothing but the control socket. */
static char *self_uri;
static bool strict;                     /* mirror-on-error=fail */
static uint32_t gran = 4096;            /* mirror-granularity */

/* ---- state ---------------------------------------------------------- */

/* The write gate: every write-type request on the mirrored export and
 * every copy-export request holds it open for its whole duration; start,
 * switchover and abort close it, which holds new requests and waits for
 * the ones in flight.  (Not a pthread rwlock: the control thread that
 * closes it for a switchover need not be the one that reopens it.) */
static struct {
  pthread_mutex_t m;
  pthread_cond_t cv;
  unsigned active;
  bool closed;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false };

static int state = M_IDLE;              /* atomic; changes with the gate closed */
static nbdkit_backend *backend;         /* from after_fork, for background contexts */

/* Fixed while a mirror runs (set with the gate closed). */
static struct dest *dest;
static struct dest_info dinfo;
static char *mirror_export;             /* the export being mirrored */
static char *dest_uri;
static uint64_t size;                   /* of the source */
static uint64_t ngran;
static uint8_t *dirty;                  /* one bit per granule, MSB first */
static char token[33];
static bool mirror_all;                 /* no "export" given: every export */
static uint64_t generation;             /* bumped by each start */
static double started_at;
static struct rangelock rl = RANGELOCK_INIT;

/* Status, written by any thread. */
static pthread_mutex_t info_lock = PTHREAD_MUTEX_INITIALIZER;
static char reason[512];                /* why the mirror broke */
static bool copy_seen, copy_done;
static uint64_t st_dirty_gran, st_writes, st_write_bytes, st_readback,
  st_copied, st_copy_skipped, st_dest_errors, st_source_errors, st_held;

static inline void
add (uint64_t *v, uint64_t n)
{
  __atomic_fetch_add (v, n, __ATOMIC_RELAXED);
}

static inline uint64_t
get (uint64_t *v)
{
  return __atomic_load_n (v, __ATOMIC_RELAXED);
}

static inline int
cur_state (void)
{
  return __atomic_load_n (&state, __ATOMIC_ACQUIRE);
}

const char *
mirror_state_name (enum mirror_state s)
{
  switch (s) {
  case M_IDLE: return "idle";
  case M_MIRRORING: return "mirroring";
  case M_READY: return "ready";
  case M_BROKEN: return "broken";
  case M_COMPLETED: return "completed";
  }
  return "?";
}

static void
gate_enter (void)
{
  pthread_mutex_lock (&gate.m);
  if (gate.closed) {
    add (&st_held, 1);
    while (gate.closed)
      pthread_cond_wait (&gate.cv, &gate.m);
  }
  gate.active++;
  pthread_mutex_unlock (&gate.m);
}

static void
gate_leave (void)
{
  pthread_mutex_lock (&gate.m);
  if (--gate.active == 0 && gate.closed)
    pthread_cond_broadcast (&gate.cv);
  pthread_mutex_unlock (&gate.m);
}

static void
gate_close (void)
{
  pthread_mutex_lock (&gate.m);
  gate.closed = true;
  while (gate.active > 0)
    pthread_cond_wait (&gate.cv, &gate.m);
  pthread_mutex_unlock (&gate.m);
}

static void
gate_open (void)
{
  pthread_mutex_lock (&gate.m);
  gate.closed = false;
  pthread_cond_broadcast (&gate.cv);
  pthread_mutex_unlock (&gate.m);
}

/* The destination failed: the mirror is broken (the first reason wins).
 * The guest carries on with the source unless strict. */
static void
set_broken (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));
static void
set_broken (const char *fmt, ...)
{
  va_list ap;
  int expect = M_MIRRORING;

  pthread_mutex_lock (&info_lock);
  if (__atomic_compare_exchange_n (&state, &expect, M_BROKEN, false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    va_start (ap, fmt);
    vsnprintf (reason, sizeof reason, fmt, ap);
    va_end (ap);
    nbdkit_error ("mirror: broken: %s", reason);
  }
  pthread_mutex_unlock (&info_lock);
}

static int
dest_failed (int e, const char *what, uint64_t off, uint64_t len, int *err)
{
  add (&st_dest_errors, 1);
  set_broken ("destination %s at offset %" PRIu64 " length %" PRIu64
              " failed: %s", what, off, len, strerror (e));
  if (strict) {
    *err = EIO;
    return -1;
  }
  return 0;
}

/* ---- dirty map ------------------------------------------------------- */

static inline bool
is_dirty (uint64_t g)
{
  return bitmap_get (dirty, g);
}

static void
mark_dirty (uint64_t start, uint64_t end)
{
  uint64_t n = 0;

  for (uint64_t g = start / gran; g * gran < end; g++) {
    uint8_t mask = 0x80 >> (g & 7);
    if (!(__atomic_fetch_or (&dirty[g >> 3], mask, __ATOMIC_RELAXED) & mask))
      n++;
  }
  add (&st_dirty_gran, n);
}

/* ---- filter lifecycle ------------------------------------------------ */

static __thread char last_msg[512];

static void
log_sink (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR) {
    snprintf (last_msg, sizeof last_msg, "%s", msg);
    nbdkit_error ("mirror: %s", msg);
  }
  else
    nbdkit_debug ("mirror: %s", msg);
}

static void
mirror_load (void)
{
  sxm_log_set_sink (log_sink);
}

static int
mirror_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "mirror-control") == 0) {
    free (control_path);
    control_path = strdup (value);
    return control_path ? 0 : -1;
  }
  if (strcmp (key, "mirror-uri") == 0) {
    free (self_uri);
    self_uri = strdup (value);
    return self_uri ? 0 : -1;
  }
  if (strcmp (key, "mirror-on-error") == 0) {
    if (strcmp (value, "fail") == 0)
      strict = true;
    else if (strcmp (value, "continue") == 0)
      strict = false;
    else {
      nbdkit_error ("mirror-on-error=%s: expected 'continue' or 'fail'",
                    value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "mirror-granularity") == 0) {
    int64_t g = nbdkit_parse_size (value);
    if (g == -1)
      return -1;
    if (g < 512 || g > (1 << 20) || (g & (g - 1))) {
      nbdkit_error ("mirror-granularity=%s: must be a power of two from "
                    "512 to 1M", value);
      return -1;
    }
    gran = g;
    return 0;
  }
  return next (nxdata, key, value);
}

static int
mirror_config_complete (nbdkit_next_config_complete *next,
                        nbdkit_backend *nxdata)
{
  if (!control_path) {
    nbdkit_error ("mirror: the mirror-control=SOCKET parameter is required");
    return -1;
  }
  if (control_check (control_path) == -1)
    return -1;
  return next (nxdata);
}

#define mirror_config_help \
  "mirror-control=SOCKET     (required) control socket (unix, mode 0600)\n" \
  "mirror-uri=URI            the URI clients reach this export at (status)\n" \
  "mirror-on-error=continue|fail  destination failure: guest carries on, or\n" \
  "                          its writes fail (default continue)\n" \
  "mirror-granularity=SIZE   dirty-map granule (default 4K)"

static int
mirror_after_fork (nbdkit_backend *nxdata)
{
  backend = nxdata;
  return control_start (control_path);
}

static void
mirror_cleanup (nbdkit_backend *nxdata)
{
  control_stop ();
  if (dest) {
    /* nbdkit is exiting: whatever was mirrored should be durable there. */
    if (cur_state () == M_MIRRORING || cur_state () == M_READY)
      dest_flush (dest);
    dest_close (dest);
    dest = NULL;
  }
}

static void
mirror_unload (void)
{
  free (control_path);
  free (self_uri);
  free (mirror_export);
  free (dest_uri);
  free (dirty);
}

/* ---- connections ------------------------------------------------------ */

struct handle {
  bool copy;                    /* the copier's export */
  uint64_t gen;                 /* copy: the mirror it was opened for */
  char *exportname;             /* guest connections: the export they use */
};

static void *
mirror_open (nbdkit_next_open *next, nbdkit_context *ctx, int readonly,
             const char *exportname, int is_tls)
{
  struct handle *h = calloc (1, sizeof *h);

  if (!h) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  if (strncmp (exportname, COPY_PREFIX, strlen (COPY_PREFIX)) == 0) {
    char *exp = NULL;
    bool ok;
    pthread_mutex_lock (&info_lock);    /* token/export change under it */
    ok = cur_state () == M_MIRRORING &&
         strcmp (exportname + strlen (COPY_PREFIX), token) == 0;
    if (ok) {
      exp = strdup (mirror_export);
      h->gen = generation;
    }
    pthread_mutex_unlock (&info_lock);
    if (!ok) {
      nbdkit_error ("mirror: copy export '%s': no mirror is running with "
                    "that token", exportname);
      free (h);
      return NULL;
    }
    /* The copier only reads the source; it never writes it. */
    if (!exp || next (ctx, 1, exp) == -1) {
      free (exp);
      free (h);
      return NULL;
    }
    free (exp);
    h->copy = true;
    pthread_mutex_lock (&info_lock);
    copy_seen = true;
    pthread_mutex_unlock (&info_lock);
    return h;
  }
  if (next (ctx, readonly, exportname) == -1) {
    free (h);
    return NULL;
  }
  h->exportname = strdup (exportname);
  if (!h->exportname) {
    nbdkit_error ("strdup: %m");
    free (h);
    return NULL;
  }
  return h;
}

static void
mirror_close (void *handle)
{
  struct handle *h = handle;
  free (h->exportname);
  free (h);
}

/* The copy export: writable (into the destination), never trimmed. */
static int
mirror_can_write (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? 1 : next->can_write (next);
}

static int
mirror_can_flush (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? 1 : next->can_flush (next);
}

static int
mirror_can_fua (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? NBDKIT_FUA_NATIVE
         : next->can_fua (next);
}

static int
mirror_can_zero (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? NBDKIT_ZERO_NATIVE
         : next->can_zero (next);
}

static int
mirror_can_fast_zero (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? 0 : next->can_fast_zero (next);
}

static int
mirror_can_trim (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? 0 : next->can_trim (next);
}

static int
mirror_can_multi_conn (nbdkit_next *next, void *handle)
{
  /* Copy connections: every write is on the destination before its reply
   * and a flush flushes every destination connection. */
  return ((struct handle *) handle)->copy ? 1 : next->can_multi_conn (next);
}

/* ---- making the destination equal the source ---------------------- */

/* Copy source [start, end) to the destination as it reads now: holes and
 * zero runs as write_zeroes, data as writes.  Used where the destination
 * cannot simply be sent what the guest sent: the unwritten part of a
 * granule a small write touched first, a trimmed range, and repair after a
 * failed source write.  Returns 0, or an errno from the destination (or
 * -errno from the source). */
static int
copy_back (nbdkit_next *next, uint64_t start, uint64_t end)
{
  char *buf = NULL;
  const uint32_t chunk = 1 << 20;
  int e = 0;

  while (start < end && e == 0) {
    uint64_t run = end - start;
    bool zero = false;
    int err = 0;

    if (run > 0xfffff000u)
      run = 0xfffff000u;
    if (next->can_extents (next) == 1) {
      struct nbdkit_extents *ex = nbdkit_extents_new (start, end);
      if (ex && next->extents (next, run, start, NBDKIT_FLAG_REQ_ONE, ex,
                               &err) == 0 && nbdkit_extents_count (ex) > 0) {
        struct nbdkit_extent x = nbdkit_get_extent (ex, 0);
        if (x.offset == start && x.length > 0) {
          if (x.length < run)
            run = x.length;
          zero = (x.type & NBDKIT_EXTENT_ZERO) != 0;
        }
      }
      nbdkit_extents_free (ex);
    }
    if (zero) {
      e = dest_zero (dest, run, start, false);
      start += run;
      continue;
    }
    if (run > chunk)
      run = chunk;
    if (!buf && !(buf = malloc (chunk)))
      return -ENOMEM;
    if (next->pread (next, buf, run, start, 0, &err) == -1) {
      free (buf);
      return -(err ? err : EIO);
    }
    add (&st_readback, run);
    e = buf_is_zero (buf, run) ? dest_zero (dest, run, start, false)
                               : dest_pwrite (dest, buf, run, start, false);
    start += run;
  }
  free (buf);
  return e;
}

enum wkind { W_DATA, W_ZERO, W_TRIM };

/* A guest write-type request on the mirrored export while mirroring.
 * Under the range lock of the granules it touches:
 *   1. apply it to the source;
 *   2. make the destination read, over those granules, what the source
 *      reads there (the guest's bytes; for a clean granule only partly
 *      covered, the rest read back from the source);
 *   3. mark the granules dirty.
 * A write that needs no read-back goes to both sides at once. */
static int
mirrored_op (nbdkit_next *next, enum wkind kind, const void *buf,
             uint32_t count, uint64_t off, uint32_t flags, int *err)
{
  const uint64_t end = off + count;
  const uint64_t gs = off / gran * gran;
  const uint64_t up = (end + gran - 1) / gran * gran;
  const uint64_t ge = up < size ? up : size > end ? size : end;
  const uint64_t tail_g = (ge - 1) / gran * gran;
  const bool fua = flags & NBDKIT_FLAG_FUA;
  struct range_held *tok;
  bool head_partial, tail_partial;
  int r, e = 0;

  if (count == 0)
    return next->pwrite (next, buf, 0, off, flags, err);
  tok = rangelock_lock (&rl, gs, ge - gs);
  if (!tok) {
    *err = ENOMEM;
    return -1;
  }
  head_partial = off > gs && !is_dirty (gs / gran);
  tail_partial = end < ge && !is_dirty (tail_g / gran);

  if (kind == W_DATA && !head_partial && !tail_partial) {
    struct dest_req dr;
    int se = dest_start_pwrite (dest, &dr, buf, count, off, fua);
    r = next->pwrite (next, buf, count, off, flags, err);
    e = se ? se : dest_wait (dest, &dr);
    /* FUA the destination cannot do natively: a flush. */
    if (r == 0 && e == 0 && fua && !dinfo.can_fua)
      e = dest_flush (dest);
    if (r == 0 && e == 0) {
      mark_dirty (gs, ge);
      add (&st_writes, 1);
      add (&st_write_bytes, count);
      rangelock_unlock (&rl, tok);
      return 0;
    }
    if (r == 0) {
      rangelock_unlock (&rl, tok);
      return dest_failed (e, "write", off, count, err);
    }
    /* The source failed: the destination may hold bytes the source does
     * not.  Make it read what the source reads. */
    goto source_failed;
  }

  switch (kind) {
  case W_DATA: r = next->pwrite (next, buf, count, off, flags, err); break;
  case W_ZERO: r = next->zero (next, count, off, flags, err); break;
  default:     r = next->trim (next, count, off, flags, err); break;
  }
  if (r == -1) {
    if (kind == W_ZERO && (flags & NBDKIT_FLAG_FAST_ZERO) &&
        *err == ENOTSUP) {
      rangelock_unlock (&rl, tok);      /* nothing was changed */
      return -1;
    }
    goto source_failed;
  }

  switch (kind) {
  case W_DATA: {
    /* Widen to the partly covered clean granules, read back from the
     * source (which already holds the guest's bytes). */
    uint64_t ds = head_partial ? gs : off, de = tail_partial ? ge : end;
    char *b = malloc (de - ds);
    if (!b) {
      e = ENOMEM;
      break;
    }
    memcpy (b + (off - ds), buf, count);
    if (head_partial && next->pread (next, b, off - gs, gs, 0, err) == -1)
      e = -1;
    if (e == 0 && tail_partial &&
        next->pread (next, b + (end - ds), ge - end, end, 0, err) == -1)
      e = -1;
    if (e == -1) {
      free (b);
      goto source_failed_after;
    }
    add (&st_readback, (off - ds) + (de - end));
    e = dest_pwrite (dest, b, de - ds, ds, fua);
    free (b);
    break;
  }
  case W_ZERO: {
    uint64_t zs = off, ze = end;
    if (head_partial) {
      uint64_t hend = gs + gran < ge ? gs + gran : ge;
      e = copy_back (next, gs, hend);
      zs = hend;
    }
    if (e == 0 && tail_partial && tail_g >= zs) {
      e = copy_back (next, tail_g, ge);
      ze = tail_g;
    }
    if (e == 0 && ze > zs)
      e = dest_zero (dest, ze - zs, zs, fua);
    break;
  }
  case W_TRIM:
    /* After a trim the source's contents are its own business (zeros,
     * or unchanged): the destination gets whatever it now reads. */
    e = copy_back (next, gs, ge);
    break;
  }
  if (e < 0) {
    *err = -e;
    goto source_failed_after;
  }
  /* FUA covers what was read back too (copy_back writes without it). */
  if (e == 0 && fua && (!dinfo.can_fua || kind != W_DATA))
    e = dest_flush (dest);
  if (e > 0) {
    rangelock_unlock (&rl, tok);
    return dest_failed (e, kind == W_DATA ? "write" :
                        kind == W_ZERO ? "write_zeroes" : "trim", off, count,
                        err);
  }
  mark_dirty (gs, ge);
  add (&st_writes, 1);
  add (&st_write_bytes, count);
  rangelock_unlock (&rl, tok);
  return 0;

 source_failed:
 source_failed_after:
  /* The guest gets the source's error.  Whatever the source now reads
   * there, the destination must read too. */
  add (&st_source_errors, 1);
  {
    int saved = *err;
    int re = copy_back (next, gs, ge);
    if (re != 0)
      set_broken ("source error at offset %" PRIu64 ", and the range could "
                  "not be made equal on the destination afterwards: %s",
                  off, strerror (re < 0 ? -re : re));
    mark_dirty (gs, ge);
    *err = saved ? saved : EIO;
  }
  rangelock_unlock (&rl, tok);
  return -1;
}

/* Which path a guest write-type request takes.  Called with the gate held
 * open. */
enum route { R_PASS, R_MIRROR, R_REFUSE };

static enum route
route (struct handle *h, int *err)
{
  int s = cur_state ();

  if (s == M_IDLE ||
      (!mirror_all && strcmp (h->exportname, mirror_export) != 0))
    return R_PASS;
  switch (s) {
  case M_MIRRORING:
    return R_MIRROR;
  case M_BROKEN:
    if (!strict)
      return R_PASS;
    nbdkit_error ("mirror: refusing the write: the mirror is broken and "
                  "mirror-on-error=fail");
    *err = EIO;
    return R_REFUSE;
  case M_COMPLETED:
    nbdkit_error ("mirror: refusing the write: this disk has migrated "
                  "(mirror completed)");
    *err = EIO;
    return R_REFUSE;
  default:                      /* M_READY is never seen inside the gate */
    *err = EIO;
    return R_REFUSE;
  }
}

/* ---- the copy export ------------------------------------------------ */

/* Forward to the destination the parts of [off, off+count) whose granules
 * are clean; dirty granules already hold the guest's newer data there. */
static int
copy_forward (struct handle *h, bool zero, const void *buf, uint32_t count,
              uint64_t off, uint32_t flags, int *err)
{
  const uint64_t end = off + count;
  uint64_t gs, ge, pos, sent = 0;
  struct range_held *tok;
  int e = 0;

  gate_enter ();
  if (cur_state () != M_MIRRORING || h->gen != generation) {
    nbdkit_error ("mirror: copy write refused: %s",
                  h->gen != generation ? "this copy connection belongs to an "
                  "earlier mirror" : mirror_state_name (cur_state ()));
    gate_leave ();
    *err = EPERM;
    return -1;
  }
  gs = off / gran * gran;
  ge = (end + gran - 1) / gran * gran;
  tok = rangelock_lock (&rl, gs, ge - gs);
  if (!tok) {
    gate_leave ();
    *err = ENOMEM;
    return -1;
  }
  pos = off;
  while (pos < end && e == 0) {
    uint64_t g = pos / gran, rend;
    bool d = is_dirty (g);
    rend = (g + 1) * gran;
    while (rend < end && is_dirty (rend / gran) == d)
      rend += gran;
    if (rend > end)
      rend = end;
    if (!d) {
      e = zero ? dest_zero (dest, rend - pos, pos, flags & NBDKIT_FLAG_FUA)
               : dest_pwrite (dest, (const char *) buf + (pos - off),
                              rend - pos, pos, flags & NBDKIT_FLAG_FUA);
      sent += rend - pos;
    }
    pos = rend;
  }
  rangelock_unlock (&rl, tok);
  if (e) {
    dest_failed (e, zero ? "copy write_zeroes" : "copy write", off, count,
                 err);
    gate_leave ();
    *err = EIO;
    return -1;
  }
  add (&st_copied, sent);
  add (&st_copy_skipped, count - sent);
  gate_leave ();
  return 0;
}

/* ---- guest callbacks ----------------------------------------------- */

static int
mirror_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t off, uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r;

  if (h->copy)
    return copy_forward (h, false, buf, count, off, flags, err);
  gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->pwrite (next, buf, count, off, flags, err); break;
  case R_MIRROR: r = mirrored_op (next, W_DATA, buf, count, off, flags, err);
    break;
  default: r = -1;
  }
  gate_leave ();
  return r;
}

static int
mirror_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t off,
             uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r;

  if (h->copy)
    return copy_forward (h, true, NULL, count, off, flags, err);
  gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->zero (next, count, off, flags, err); break;
  case R_MIRROR: r = mirrored_op (next, W_ZERO, NULL, count, off, flags, err);
    break;
  default: r = -1;
  }
  gate_leave ();
  return r;
}

static int
mirror_trim (nbdkit_next *next, void *handle, uint32_t count, uint64_t off,
             uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r;

  if (h->copy) {
    *err = EINVAL;
    return -1;
  }
  gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->trim (next, count, off, flags, err); break;
  case R_MIRROR: r = mirrored_op (next, W_TRIM, NULL, count, off, flags, err);
    break;
  default: r = -1;
  }
  gate_leave ();
  return r;
}

static int
mirror_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r, e;

  if (h->copy) {
    gate_enter ();
    if (cur_state () != M_MIRRORING || h->gen != generation) {
      gate_leave ();
      *err = EPERM;
      return -1;
    }
    e = dest_flush (dest);
    if (e)
      dest_failed (e, "flush", 0, 0, err);
    gate_leave ();
    if (e)
      *err = EIO;
    return e ? -1 : 0;
  }
  gate_enter ();
  r = next->flush (next, flags, err);
  if (r == 0 && cur_state () == M_MIRRORING &&
      (mirror_all || strcmp (h->exportname, mirror_export) == 0)) {
    e = dest_flush (dest);
    if (e)
      r = dest_failed (e, "flush", 0, 0, err);
  }
  gate_leave ();
  return r;
}

/* ---- control commands (serialised by mirror-control.c) ------------ */

static int
fail_reply (struct jbuf *out, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static int
fail_reply (struct jbuf *out, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  jbuf_add (out, ",\"error\":");
  jbuf_str (out, msg);
  jbuf_add (out, ",\"state\":\"%s\"", mirror_state_name (cur_state ()));
  return -1;
}

/* A context into the plugin for the control thread (not tied to any
 * client connection). */
static nbdkit_next *
bg_open (const char *exp, int readonly)
{
  nbdkit_next *n;

  if (!backend)
    return NULL;
  n = nbdkit_next_context_open (backend, readonly, exp, 1);
  if (!n)
    return NULL;
  /* nbdkit checks requests against what these return, so they must be
   * asked before any request is made on a manual context. */
  if (n->prepare (n) == -1 || n->get_size (n) == -1 ||
      n->can_write (n) == -1 || n->can_flush (n) == -1 ||
      n->can_extents (n) == -1) {
    n->finalize (n);
    nbdkit_next_context_close (n);
    return NULL;
  }
  return n;
}

static void
bg_close (nbdkit_next *n)
{
  if (n) {
    n->finalize (n);
    nbdkit_next_context_close (n);
  }
}

static void
random_token (char *out)
{
  unsigned char r[16];
  int fd = open ("/dev/urandom", O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? read (fd, r, sizeof r) : -1;

  if (fd >= 0)
    close (fd);
  if (got != (ssize_t) sizeof r) {
    /* Not a secret, only a guard against stale copiers: time will do. */
    uint64_t t = (uint64_t) (mirror_now () * 1e9) ^ (uint64_t) getpid ();
    memcpy (r, &t, 8);
    memcpy (r + 8, &t, 8);
  }
  for (int i = 0; i < 16; i++)
    sprintf (out + 2 * i, "%02x", r[i]);
}

int
mirror_cmd_start (const struct json_obj *req, struct jbuf *out)
{
  const char *uri = json_str (req, "dest");
  const char *exp = json_str (req, "export");
  uint64_t nconns = 2;
  double timeout = 30;
  bool insecure = false;
  struct dest *d;
  struct dest_info di;
  nbdkit_next *n;
  int64_t ssize;
  uint8_t *map;
  char err[512];

  if (cur_state () != M_IDLE)
    return fail_reply (out, "a mirror is already %s; abort it first",
                       mirror_state_name (cur_state ()));
  if (!uri)
    return fail_reply (out, "start needs \"dest\": the destination NBD URI");
  if (json_has (req, "export") && !exp)
    return fail_reply (out, "\"export\" must be a string");
  if (json_u64 (req, "connections", &nconns) == -1 || nconns < 1 ||
      nconns > MIRROR_MAX_CONNS)
    return fail_reply (out, "\"connections\" must be 1 to %d",
                       MIRROR_MAX_CONNS);
  if (json_num (req, "timeout", &timeout) == -1 || !(timeout > 0))
    return fail_reply (out, "\"timeout\" must be a positive number of seconds");
  if (json_bool (req, "insecure", &insecure) == -1)
    return fail_reply (out, "\"insecure\" must be true or false");
  last_msg[0] = 0;
  if (nbd_uri_policy (uri, insecure) == -1)
    return fail_reply (out, "%s", last_msg);

  n = bg_open (exp ? exp : "", 1);
  if (!n)
    return fail_reply (out, "cannot open the source export '%s'",
                       exp ? exp : "");
  ssize = n->get_size (n);
  bg_close (n);
  if (ssize < 0)
    return fail_reply (out, "cannot get the size of the source export '%s'",
                       exp ? exp : "");

  d = dest_open (uri, nconns, timeout, &di, err, sizeof err);
  if (!d)
    return fail_reply (out, "%s: cannot connect: %s", uri, err);
  if (di.readonly) {
    dest_close (d);
    return fail_reply (out, "%s: destination is read-only", uri);
  }
  if (di.size < (uint64_t) ssize) {
    dest_close (d);
    return fail_reply (out, "%s: destination is smaller (%" PRIu64
                       " bytes) than the source (%" PRId64 " bytes)",
                       uri, di.size, ssize);
  }
  /* Does the destination read zeros where the source lies?  Then the
   * copier may skip the source's holes. */
  {
    int z = dest_is_zero (d, 0, ssize);
    di.all_zero = z == 1;
  }
  map = calloc ((ssize / gran + 1) / 8 + 1, 1);
  if (!map || !(exp = strdup (exp ? exp : "")) || !(uri = strdup (uri))) {
    free (map);
    dest_close (d);
    return fail_reply (out, "out of memory");
  }

  /* Writes in flight finish unmirrored before the mirror exists; from
   * here on every write is mirrored. */
  gate_close ();
  free (dirty);
  dirty = map;
  size = ssize;
  ngran = (size + gran - 1) / gran;
  dest = d;
  dinfo = di;
  pthread_mutex_lock (&info_lock);
  free (mirror_export);
  mirror_export = (char *) exp;
  mirror_all = !json_has (req, "export");
  free (dest_uri);
  dest_uri = (char *) uri;
  random_token (token);
  generation++;
  reason[0] = 0;
  copy_seen = copy_done = false;
  st_dirty_gran = st_writes = st_write_bytes = st_readback = st_copied = 0;
  st_copy_skipped = st_dest_errors = st_source_errors = st_held = 0;
  pthread_mutex_unlock (&info_lock);
  started_at = mirror_now ();
  __atomic_store_n (&state, M_MIRRORING, __ATOMIC_RELEASE);
  gate_open ();
  nbdkit_debug ("mirror: started to %s (export '%s', %" PRIu64 " bytes)",
                dest_uri, mirror_export, size);

  jbuf_add (out, ",\"state\":\"mirroring\",\"copy_export\":\"" COPY_PREFIX
            "%s\",\"dest_zero\":%s,\"size\":%" PRIu64 ",\"granularity\":%u",
            token, di.all_zero ? "true" : "false", size, gran);
  return 0;
}

int
mirror_cmd_status (const struct json_obj *req, struct jbuf *out)
{
  int s = cur_state ();

  jbuf_add (out, ",\"state\":\"%s\"", mirror_state_name (s));
  pthread_mutex_lock (&info_lock);
  if (s == M_BROKEN) {
    jbuf_add (out, ",\"reason\":");
    jbuf_str (out, reason);
  }
  jbuf_add (out, ",\"copy\":\"%s\"",
            copy_done ? "done" : copy_seen ? "running" : "none");
  pthread_mutex_unlock (&info_lock);
  jbuf_add (out, ",\"on_error\":\"%s\"", strict ? "fail" : "continue");
  if (self_uri) {
    jbuf_add (out, ",\"uri\":");
    jbuf_str (out, self_uri);
  }
  if (s != M_IDLE) {
    pthread_mutex_lock (&info_lock);
    if (mirror_all)
      jbuf_add (out, ",\"export\":null");
    else {
      jbuf_add (out, ",\"export\":");
      jbuf_str (out, mirror_export);
    }
    if (s == M_MIRRORING || s == M_READY)
      jbuf_add (out, ",\"copy_export\":\"" COPY_PREFIX "%s\","
                "\"dest_zero\":%s", token, dinfo.all_zero ? "true" : "false");
    pthread_mutex_unlock (&info_lock);
    jbuf_add (out, ",\"size\":%" PRIu64 ",\"granularity\":%u,"
              "\"dirty_bytes\":%" PRIu64 ",\"mirrored_writes\":%" PRIu64
              ",\"mirrored_bytes\":%" PRIu64 ",\"readback_bytes\":%" PRIu64
              ",\"copied_bytes\":%" PRIu64 ",\"copy_skipped_bytes\":%" PRIu64
              ",\"dest_errors\":%" PRIu64 ",\"source_errors\":%" PRIu64
              ",\"held_writes\":%" PRIu64 ",\"elapsed\":%.3f",
              size, gran, get (&st_dirty_gran) * gran, get (&st_writes),
              get (&st_write_bytes), get (&st_readback), get (&st_copied),
              get (&st_copy_skipped), get (&st_dest_errors),
              get (&st_source_errors), get (&st_held),
              mirror_now () - started_at);
  }
  return 0;
}

int
mirror_cmd_copied (const struct json_obj *req, struct jbuf *out)
{
  if (cur_state () != M_MIRRORING)
    return fail_reply (out, "no mirror is running");
  pthread_mutex_lock (&info_lock);
  copy_done = true;
  pthread_mutex_unlock (&info_lock);
  jbuf_add (out, ",\"state\":\"mirroring\",\"copy\":\"done\"");
  return 0;
}

/* Flush the source (through N) and the destination at once: the
 * destination's flush travels while the source flushes (one after the
 * other, they held the demo's guest writes for 194 ms).  0, or -1 with
 * "flush failed on the source|destination: ..." in WHAT; a destination
 * failure breaks the mirror. */
static int
flush_both (nbdkit_next *n, char *what, size_t whatlen)
{
  struct dest_flush df;
  int err = 0, r, e;

  dest_flush_start (dest, &df);
  r = n->can_flush (n) == 1 ? n->flush (n, 0, &err) : 0;
  e = dest_flush_wait (dest, &df);
  if (e) {
    int ignored = 0;
    dest_failed (e, "flush", 0, 0, &ignored);
  }
  if (r == -1 || e) {
    snprintf (what, whatlen, "flush failed on the %s: %s",
              r == -1 ? "source" : "destination",
              strerror (r == -1 ? (err ? err : EIO) : e));
    return -1;
  }
  return 0;
}

/* Compare source and destination over the whole disk, with the gate
 * closed.  Source holes need the destination to read zeros (its own block
 * status saying so is enough).  0 if equal; otherwise the first
 * difference in *diff and a description in what. */
static int
compare_all (nbdkit_next *n, uint64_t *compared, uint64_t *diff,
             char *what, size_t whatlen)
{
  const uint32_t chunk = 1 << 20;
  char *a = malloc (chunk), *b = malloc (chunk);
  uint64_t pos = 0;
  /* The source extent containing pos, asked for once (REQ_ONE) and walked
   * in chunks: asking per chunk for everything to the end of the disk cost
   * steps x extents (a fragmented 1 GiB disk held the guest 26-56 s). */
  uint64_t ext_end = 0;
  bool ext_hole = false;
  int rc = 0;

  *diff = UINT64_MAX;
  *compared = 0;
  if (!a || !b) {
    snprintf (what, whatlen, "out of memory");
    rc = -1;
    goto out;
  }
  while (pos < size) {
    uint64_t run = size - pos;
    bool hole = false;
    int err = 0;

    if (run > 0xfffff000u)
      run = 0xfffff000u;
    if (pos >= ext_end && n->can_extents (n) == 1) {
      struct nbdkit_extents *ex = nbdkit_extents_new (pos, size);
      ext_end = pos;
      if (ex && n->extents (n, run, pos, NBDKIT_FLAG_REQ_ONE, ex, &err) == 0 &&
          nbdkit_extents_count (ex) > 0) {
        struct nbdkit_extent x = nbdkit_get_extent (ex, 0);
        if (x.offset == pos && x.length > 0) {
          ext_end = pos + x.length;
          ext_hole = (x.type & NBDKIT_EXTENT_ZERO) != 0;
        }
      }
      nbdkit_extents_free (ex);
    }
    if (pos < ext_end) {
      if (ext_end - pos < run)
        run = ext_end - pos;
      hole = ext_hole;
    }
    if (hole) {
      /* Skip what the destination says is zero too; read only where it
       * claims data inside the source's hole.  (Asking "is all of the
       * hole zero?" and reading 1 MiB when not made one mirrored write
       * at the end of a 4 GiB hole cost a 4 GiB read, with the guest's
       * writes held: 38 s in the demo.) */
      uint64_t zlen;
      int z = dest_zero_prefix (dest, pos, run, &zlen);
      if (z < 0) {
        snprintf (what, whatlen, "destination block status at %" PRIu64
                  ": %s", pos, strerror (-z));
        rc = -1;
        goto out;
      }
      if (zlen > 0) {
        pos += zlen;
        continue;
      }
    }
    if (run > chunk)
      run = chunk;
    {
      struct dest_req dr;
      int se = dest_start_pread (dest, &dr, b, run, pos), de;
      int r = hole ? (memset (a, 0, run), 0)
                   : n->pread (n, a, run, pos, 0, &err);
      de = se ? se : dest_wait (dest, &dr);
      if (r == -1 || de) {
        snprintf (what, whatlen, "reading %s at %" PRIu64 ": %s",
                  r == -1 ? "the source" : "the destination", pos,
                  strerror (r == -1 ? (err ? err : EIO) : de));
        rc = -1;
        goto out;
      }
    }
    if (memcmp (a, b, run) != 0) {
      uint64_t i = 0;
      while (a[i] == b[i])
        i++;
      *diff = pos + i;
      snprintf (what, whatlen, "destination differs from the source at "
                "offset %" PRIu64 " (source byte 0x%02x, destination 0x%02x)",
                pos + i, (unsigned char) a[i], (unsigned char) b[i]);
      rc = 1;
      goto out;
    }
    *compared += run;
    pos += run;
  }
 out:
  free (a);
  free (b);
  return rc;
}

int
mirror_cmd_switchover (const struct json_obj *req, struct jbuf *out)
{
  bool verify = true;
  double t0 = mirror_now (), t_drained, t_flushed;
  uint64_t compared = 0, diff;
  nbdkit_next *n;
  char what[512];
  int r;

  if (json_bool (req, "verify", &verify) == -1)
    return fail_reply (out, "\"verify\" must be true or false");
  if (cur_state () != M_MIRRORING)
    return fail_reply (out, "switchover needs a running mirror (state is %s)",
                       mirror_state_name (cur_state ()));
  if (!verify) {
    bool done;
    pthread_mutex_lock (&info_lock);
    done = copy_done;
    pthread_mutex_unlock (&info_lock);
    if (!done)
      return fail_reply (out, "switchover without verify needs a finished "
                         "bulk copy (sxm-copy --live reports it with "
                         "\"copied\"); nothing proves the destination "
                         "complete otherwise");
  }
  gate_close ();                /* hold new writes, drain the ones in flight */
  t_drained = mirror_now ();
  if (cur_state () != M_MIRRORING) {
    gate_open ();
    pthread_mutex_lock (&info_lock);
    snprintf (what, sizeof what, "%s", reason);
    pthread_mutex_unlock (&info_lock);
    return fail_reply (out, "the mirror broke: %s", what);
  }
  n = bg_open (mirror_export, 0);
  if (!n) {
    gate_open ();
    return fail_reply (out, "cannot open the source export for the "
                       "switchover");
  }
  r = flush_both (n, what, sizeof what);
  t_flushed = mirror_now ();
  if (r == -1) {
    bg_close (n);
    gate_open ();
    return fail_reply (out, "%s", what);
  }
  if (verify) {
    r = compare_all (n, &compared, &diff, what, sizeof what);
    if (r != 0) {
      bg_close (n);
      gate_open ();
      return fail_reply (out, "not ready: %s", what);
    }
  }
  bg_close (n);
  __atomic_store_n (&state, M_READY, __ATOMIC_RELEASE);
  nbdkit_debug ("mirror: ready (guest writes held)");
  jbuf_add (out, ",\"state\":\"ready\",\"verified\":%s,\"compared_bytes\":%"
            PRIu64 ",\"drain_ms\":%.1f,\"flush_ms\":%.1f,\"hold_ms\":%.1f",
            verify ? "true" : "false", compared, (t_drained - t0) * 1e3,
            (t_flushed - t_drained) * 1e3, (mirror_now () - t0) * 1e3);
  return 0;
}

int
mirror_cmd_resume (const struct json_obj *req, struct jbuf *out)
{
  if (cur_state () != M_READY)
    return fail_reply (out, "resume needs state ready (state is %s)",
                       mirror_state_name (cur_state ()));
  __atomic_store_n (&state, M_MIRRORING, __ATOMIC_RELEASE);
  gate_open ();
  jbuf_add (out, ",\"state\":\"mirroring\"");
  return 0;
}

/* "flush": make both sides durable now, without holding the guest's
 * writes.  Run just before the guest is paused (xenmem's prepare hook),
 * it leaves the switchover's own flush only the writes of the last
 * moments: on a sparse VHD every block allocated since the last flush
 * costs its metadata and the file system's extent update at flush time
 * (about 0.14 ms each here), which the paused guest would otherwise wait
 * for. */
int
mirror_cmd_flush (const struct json_obj *req, struct jbuf *out)
{
  double t0 = mirror_now ();
  char what[512];
  nbdkit_next *n;
  int r;

  if (cur_state () == M_IDLE) {
    /* No mirror: make the disk itself durable (sxm detach flushes a
     * disk service this way before stopping it). */
    int err = 0;

    n = bg_open ("", 0);
    if (!n)
      return fail_reply (out, "cannot open the disk to flush it");
    r = n->can_flush (n) == 1 ? n->flush (n, 0, &err) : 0;
    bg_close (n);
    if (r == -1)
      return fail_reply (out, "flush failed: %s", strerror (err ? err : EIO));
    jbuf_add (out, ",\"state\":\"idle\",\"flush_ms\":%.1f",
              (mirror_now () - t0) * 1e3);
    return 0;
  }
  if (cur_state () != M_MIRRORING)
    return fail_reply (out, "flush needs state idle or mirroring (state is %s)",
                       mirror_state_name (cur_state ()));
  n = bg_open (mirror_export, 0);
  if (!n)
    return fail_reply (out, "cannot open the source export to flush it");
  r = flush_both (n, what, sizeof what);
  bg_close (n);
  if (r == -1)
    return fail_reply (out, "%s", what);
  jbuf_add (out, ",\"state\":\"%s\",\"flush_ms\":%.1f",
            mirror_state_name (cur_state ()), (mirror_now () - t0) * 1e3);
  return 0;
}

int
mirror_cmd_complete (const struct json_obj *req, struct jbuf *out)
{
  if (cur_state () != M_READY)
    return fail_reply (out, "complete needs state ready (state is %s)",
                       mirror_state_name (cur_state ()));
  /* The gate is closed (ready): nothing is in flight. */
  dest_close (dest);
  dest = NULL;
  __atomic_store_n (&state, M_COMPLETED, __ATOMIC_RELEASE);
  gate_open ();
  nbdkit_debug ("mirror: completed; further guest writes are refused");
  jbuf_add (out, ",\"state\":\"completed\"");
  return 0;
}

int
mirror_cmd_abort (const struct json_obj *req, struct jbuf *out)
{
  int s = cur_state ();

  if (s == M_IDLE)
    return fail_reply (out, "no mirror to abort");
  if (s != M_READY)
    gate_close ();
  if (dest) {
    dest_close (dest);
    dest = NULL;
  }
  __atomic_store_n (&state, M_IDLE, __ATOMIC_RELEASE);
  pthread_mutex_lock (&info_lock);
  copy_seen = copy_done = false;
  pthread_mutex_unlock (&info_lock);
  gate_open ();
  nbdkit_debug ("mirror: aborted (was %s)", mirror_state_name (s));
  jbuf_add (out, ",\"state\":\"idle\",\"was\":\"%s\"", mirror_state_name (s));
  return 0;
}

static struct nbdkit_filter filter = {
  .name              = "mirror",
  .longname          = "sxm mirror filter (live storage migration)",
  .load              = mirror_load,
  .unload            = mirror_unload,
  .config            = mirror_config,
  .config_complete   = mirror_config_complete,
  .config_help       = mirror_config_help,
  .after_fork        = mirror_after_fork,
  .cleanup           = mirror_cleanup,
  .open              = mirror_open,
  .close             = mirror_close,
  .can_write         = mirror_can_write,
  .can_flush         = mirror_can_flush,
  .can_fua           = mirror_can_fua,
  .can_zero          = mirror_can_zero,
  .can_fast_zero     = mirror_can_fast_zero,
  .can_trim          = mirror_can_trim,
  .can_multi_conn    = mirror_can_multi_conn,
  .pwrite            = mirror_pwrite,
  .zero              = mirror_zero,
  .trim              = mirror_trim,
  .flush             = mirror_flush,
};

NBDKIT_REGISTER_FILTER (filter)
