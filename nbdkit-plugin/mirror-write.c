/* The mirror filter's guest write path: a guest write, write_zeroes or
 * trim on the mirrored export while mirroring (mirrored_op), and
 * copy_back, which makes a range of the destination read what the source
 * reads now.
 *
 * Why each step is there, and why together they keep the destination
 * equal to the source over every dirty granule, is in doc/design.md
 * ("Live mirror", "Invariant"). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "mirror.h"
#include "zero.h"

uint64_t
mirror_source_extent (nbdkit_next *next, uint64_t pos, uint32_t count,
                      uint64_t end, bool *zero)
{
  struct nbdkit_extents *ex;
  uint64_t len = 0;
  int err = 0;

  *zero = false;
  if (next->can_extents (next) != 1)
    return 0;
  ex = nbdkit_extents_new (pos, end);
  if (ex && next->extents (next, count, pos, NBDKIT_FLAG_REQ_ONE, ex,
                           &err) == 0 && nbdkit_extents_count (ex) > 0) {
    struct nbdkit_extent x = nbdkit_get_extent (ex, 0);
    if (x.offset == pos && x.length > 0) {
      len = x.length;
      *zero = (x.type & NBDKIT_EXTENT_ZERO) != 0;
    }
  }
  nbdkit_extents_free (ex);
  return len;
}

/* ---- making the destination equal the source ---------------------------- */

/* Copy source [start, end) to the destination as it reads now: holes and
 * zero runs as write_zeroes, data as writes.  Used where the destination
 * cannot simply be sent what the guest sent: the unwritten part of a
 * granule a small write_zeroes touched first, a trimmed range, and repair
 * after a failed source write.  Returns 0, or an errno from the
 * destination (or -errno from the source). */
static int
copy_back (nbdkit_next *next, uint64_t start, uint64_t end)
{
  char *buf = NULL;
  const uint32_t chunk = 1 << 20;
  int e = 0;

  while (start < end && e == 0) {
    uint64_t run = end - start, len;
    bool zero;
    int err = 0;

    if (run > 0xfffff000u)
      run = 0xfffff000u;
    len = mirror_source_extent (next, start, run, end, &zero);
    if (len > 0 && len < run)
      run = len;
    if (zero) {
      e = dest_zero (mirror_dest, DEST_GUEST, run, start, false);
      start += run;
      continue;
    }
    if (run > chunk)
      run = chunk;
    if (!buf && !(buf = malloc (chunk))) {
      nbdkit_error ("mirror: malloc: %m");
      return -ENOMEM;
    }
    if (next->pread (next, buf, run, start, 0, &err) == -1) {
      free (buf);
      return -(err ? err : EIO);
    }
    mirror_stat_add (&mirror_stats.readback, run);
    e = buf_is_zero (buf, run)
      ? dest_zero (mirror_dest, DEST_GUEST, run, start, false)
      : dest_pwrite (mirror_dest, DEST_GUEST, buf, run, start, false);
    start += run;
  }
  free (buf);
  return e;
}

/* ---- the guest write path ------------------------------------------------ */

enum wkind { W_DATA, W_ZERO, W_TRIM };

static const char *const wkind_name[] = {
  [W_DATA] = "write", [W_ZERO] = "write_zeroes", [W_TRIM] = "trim",
};

/* One mirrored request and the granules it touches. */
struct mop {
  nbdkit_next *next;
  enum wkind kind;
  const void *buf;              /* W_DATA */
  uint32_t count, flags;
  bool fua;
  uint64_t off, end;            /* the request: [off, end) */
  uint64_t gs, ge;              /* its granules: [gs, ge) */
  uint64_t tail_g;              /* where the last of them starts */
  /* The first / last granule is clean and only partly covered: the
   * destination may not hold its other bytes yet, and once the granule
   * is dirty the copier will not send them. */
  bool head_partial, tail_partial;
};

static void
mop_init (struct mop *op, nbdkit_next *next, enum wkind kind,
          const void *buf, uint32_t count, uint64_t off, uint32_t flags)
{
  const uint64_t gran = mirror_gran, size = mirror_size;
  uint64_t up;

  op->next = next;
  op->kind = kind;
  op->buf = buf;
  op->count = count;
  op->flags = flags;
  op->fua = flags & NBDKIT_FLAG_FUA;
  op->off = off;
  op->end = off + count;
  op->gs = off / gran * gran;
  /* Granule-aligned, except that the last granule of a disk whose size
   * is no multiple of the granule ends with the disk. */
  up = (op->end + gran - 1) / gran * gran;
  op->ge = up < size ? up : size > op->end ? size : op->end;
  op->tail_g = (op->ge - 1) / gran * gran;
}

/* The fast path, for a write covering whole or already dirty granules:
 * nothing needs reading back, so the destination's write travels while
 * the source writes.  Step results, here and below: 0; > 0, an errno
 * from the destination (the source has the request); < 0, -errno from
 * the source (the range needs repair). */
static int
write_both (const struct mop *op, int *err)
{
  struct dest_req dr;
  int se = dest_start_pwrite (mirror_dest, DEST_GUEST, &dr, op->buf,
                              op->count, op->off, op->fua);
  int r = op->next->pwrite (op->next, op->buf, op->count, op->off, op->flags,
                            err);
  int e = se ? se : dest_wait (mirror_dest, &dr);

  /* The source failed: the destination may hold bytes the source does
   * not. */
  if (r != 0)
    return -(*err ? *err : EIO);
  /* FUA the destination cannot do natively: a flush. */
  if (e == 0 && op->fua && !mirror_dinfo.can_fua)
    e = dest_flush (mirror_dest);
  return e;
}

/* The slow path's first step: the source first, because the destination
 * is then made to read what the source reads. */
static int
apply_to_source (const struct mop *op, int *err)
{
  nbdkit_next *next = op->next;
  int r;

  switch (op->kind) {
  case W_DATA:
    r = next->pwrite (next, op->buf, op->count, op->off, op->flags, err);
    break;
  case W_ZERO:
    r = next->zero (next, op->count, op->off, op->flags, err);
    break;
  default:
    r = next->trim (next, op->count, op->off, op->flags, err);
    break;
  }
  return r == -1 ? -(*err ? *err : EIO) : 0;
}

/* A write into a partly covered clean granule: widen it to whole
 * granules, the rest read back from the source (which already holds the
 * guest's bytes). */
static int
write_widened (const struct mop *op, int *err)
{
  nbdkit_next *next = op->next;
  const uint64_t ds = op->head_partial ? op->gs : op->off;
  const uint64_t de = op->tail_partial ? op->ge : op->end;
  char *b = malloc (de - ds);
  int e;

  if (!b) {
    /* The destination cannot be given the write: that breaks the mirror
     * like a failed destination write. */
    nbdkit_error ("mirror: malloc: %m");
    return ENOMEM;
  }
  memcpy (b + (op->off - ds), op->buf, op->count);
  if ((op->head_partial &&
       next->pread (next, b, op->off - op->gs, op->gs, 0, err) == -1) ||
      (op->tail_partial &&
       next->pread (next, b + (op->end - ds), op->ge - op->end, op->end, 0,
                    err) == -1)) {
    free (b);
    return -(*err ? *err : EIO);
  }
  mirror_stat_add (&mirror_stats.readback, (op->off - ds) + (de - op->end));
  e = dest_pwrite (mirror_dest, DEST_GUEST, b, de - ds, ds, op->fua);
  free (b);
  return e;
}

/* write_zeroes: zeros where the guest zeroed, except that a partly
 * covered clean granule is copied back whole from the source (there is no
 * buffer to widen, and the source decides what it reads there now). */
static int
zero_with_edges (const struct mop *op)
{
  uint64_t zs = op->off, ze = op->end;
  int e = 0;

  if (op->head_partial) {
    uint64_t hend = op->gs + mirror_gran < op->ge ? op->gs + mirror_gran
                                                  : op->ge;
    e = copy_back (op->next, op->gs, hend);
    zs = hend;
  }
  if (e == 0 && op->tail_partial && op->tail_g >= zs) {
    e = copy_back (op->next, op->tail_g, op->ge);
    ze = op->tail_g;
  }
  if (e == 0 && ze > zs)
    e = dest_zero (mirror_dest, DEST_GUEST, ze - zs, zs, op->fua);
  return e;
}

/* The slow path's second step, after the source has the request: make
 * the destination read, over the granules, what the source reads. */
static int
level_destination (const struct mop *op, int *err)
{
  int e;

  switch (op->kind) {
  case W_DATA:
    e = write_widened (op, err);
    break;
  case W_ZERO:
    e = zero_with_edges (op);
    break;
  default:
    /* After a trim the source's contents are its own business (zeros,
     * or unchanged): the destination gets whatever it now reads. */
    e = copy_back (op->next, op->gs, op->ge);
    break;
  }
  /* FUA covers what was read back too (copy_back writes without it). */
  if (e == 0 && op->fua && (!mirror_dinfo.can_fua || op->kind != W_DATA))
    e = dest_flush (mirror_dest);
  return e;
}

/* The source failed.  Whatever it now reads over the range (a failed
 * write may have changed part of it; the fast path may have written the
 * destination already), the destination must read too. */
static void
repair (const struct mop *op)
{
  int re;

  mirror_stat_add (&mirror_stats.source_errors, 1);
  re = copy_back (op->next, op->gs, op->ge);
  if (re != 0)
    mirror_set_broken ("source error at offset %" PRIu64 ", and the range "
                       "could not be made equal on the destination "
                       "afterwards: %s",
                       op->off, strerror (re < 0 ? -re : re));
  mirror_mark_dirty (op->gs, op->ge);
}

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
  struct mop op;
  struct range_held *tok;
  int e;

  /* Nothing to mirror: the source answers. */
  if (count == 0)
    return next->pwrite (next, buf, 0, off, flags, err);
  mop_init (&op, next, kind, buf, count, off, flags);
  mirror_guest_begin ();
  tok = rangelock_lock (&mirror_rl, op.gs, op.ge - op.gs);
  if (!tok) {
    mirror_guest_end ();
    nbdkit_error ("mirror: range lock: %m");
    *err = ENOMEM;
    return -1;
  }
  op.head_partial = off > op.gs && !mirror_is_dirty (op.gs / mirror_gran);
  op.tail_partial = op.end < op.ge &&
                    !mirror_is_dirty (op.tail_g / mirror_gran);

  if (kind == W_DATA && !op.head_partial && !op.tail_partial)
    e = write_both (&op, err);
  else {
    e = apply_to_source (&op, err);
    if (e == -ENOTSUP && kind == W_ZERO && (flags & NBDKIT_FLAG_FAST_ZERO)) {
      /* The source cannot zero fast and changed nothing; the guest falls
       * back to writing zeros, which will be mirrored. */
      rangelock_unlock (&mirror_rl, tok);
      mirror_guest_end ();
      return -1;
    }
    if (e == 0)
      e = level_destination (&op, err);
  }
  if (e < 0)
    repair (&op);
  else if (e == 0) {
    mirror_mark_dirty (op.gs, op.ge);
    mirror_stat_add (&mirror_stats.writes, 1);
    mirror_stat_add (&mirror_stats.write_bytes, count);
  }
  rangelock_unlock (&mirror_rl, tok);
  mirror_guest_end ();

  if (e > 0)
    return mirror_dest_failed (e, wkind_name[kind], off, count, err);
  if (e < 0) {
    *err = -e;                  /* the guest gets the source's error */
    return -1;
  }
  return 0;
}

int
mirror_write_data (nbdkit_next *next, const void *buf, uint32_t count,
                   uint64_t off, uint32_t flags, int *err)
{
  return mirrored_op (next, W_DATA, buf, count, off, flags, err);
}

int
mirror_write_zero (nbdkit_next *next, uint32_t count, uint64_t off,
                   uint32_t flags, int *err)
{
  return mirrored_op (next, W_ZERO, NULL, count, off, flags, err);
}

int
mirror_write_trim (nbdkit_next *next, uint32_t count, uint64_t off,
                   uint32_t flags, int *err)
{
  return mirrored_op (next, W_TRIM, NULL, count, off, flags, err);
}
