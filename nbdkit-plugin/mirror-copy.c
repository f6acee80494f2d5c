/* The mirror filter's copy export, "sxm-mirror-copy-TOKEN": sxm-copy
 * --live reads the source through it (reads go straight to the plugin)
 * and writes back what it read; copy_forward sends the destination only
 * the granules that are still clean, under the range lock that guest
 * writes take too.  A connection belongs to the mirror it was opened for:
 * the token changes with each start, and every request checks the
 * generation again inside the gate, so a copier of an earlier mirror
 * cannot write stale data into a later one. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "mirror.h"

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

/* Inside the gate: is the connection's mirror the one running? */
static bool
current (uint64_t gen)
{
  return mirror_cur_state () == M_MIRRORING && gen == mirror_generation;
}

/* Forward to the destination the parts of [off, off+count) whose granules
 * are clean; dirty granules already hold the guest's newer data there.
 * *SENT: the bytes forwarded.  0 or an errno from the destination. */
static int
copy_forward (bool zero, const void *buf, uint32_t count, uint64_t off,
              uint32_t flags, uint64_t *sent)
{
  const uint64_t gran = mirror_gran, end = off + count;
  const uint64_t gs = off / gran * gran, ge = (end + gran - 1) / gran * gran;
  const bool fua = flags & NBDKIT_FLAG_FUA;
  struct range_held *tok;
  uint64_t pos = off;
  int e = 0;

  *sent = 0;
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
      e = zero ? dest_zero (mirror_dest, rend - pos, pos, fua)
               : dest_pwrite (mirror_dest, (const char *) buf + (pos - off),
                              rend - pos, pos, fua);
      *sent += rend - pos;
    }
    pos = rend;
  }
  rangelock_unlock (&mirror_rl, tok);
  return e;
}

int
mirror_copy_write (uint64_t gen, bool zero, const void *buf, uint32_t count,
                   uint64_t off, uint32_t flags, int *err)
{
  uint64_t sent;
  int e;

  mirror_gate_enter ();
  if (!current (gen)) {
    nbdkit_error ("mirror: copy write refused: %s",
                  gen != mirror_generation ? "this copy connection belongs "
                  "to an earlier mirror"
                  : mirror_state_name (mirror_cur_state ()));
    mirror_gate_leave ();
    *err = EPERM;
    return -1;
  }
  e = copy_forward (zero, buf, count, off, flags, &sent);
  if (e < 0) {
    mirror_gate_leave ();
    *err = -e;
    return -1;
  }
  if (e) {
    mirror_dest_failed (e, zero ? "copy write_zeroes" : "copy write", off,
                        count, err);
    mirror_gate_leave ();
    *err = EIO;
    return -1;
  }
  mirror_stat_add (&mirror_stats.copied, sent);
  mirror_stat_add (&mirror_stats.copy_skipped, count - sent);
  mirror_gate_leave ();
  return 0;
}

/* The copier's flush is the destination's: that is where its writes
 * went. */
int
mirror_copy_flush (uint64_t gen, int *err)
{
  int e;

  mirror_gate_enter ();
  if (!current (gen)) {
    mirror_gate_leave ();
    *err = EPERM;
    return -1;
  }
  e = dest_flush (mirror_dest);
  if (e)
    mirror_dest_failed (e, "flush", 0, 0, err);
  mirror_gate_leave ();
  if (e)
    *err = EIO;
  return e ? -1 : 0;
}
