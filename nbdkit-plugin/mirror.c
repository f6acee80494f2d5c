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
 * This file holds the nbdkit callbacks: configuration, lifecycle, and
 * which path each request takes.  The paths themselves and the state they
 * share are in the other mirror*.c files (see mirror.h).
 *
 * The invariant and why it holds under every interleaving are in
 * doc/design.md ("Live mirror"); the control protocol is in
 * doc/nbdkit-mirror-filter.pod. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-filter.h>

#include "log.h"
#include "mirror.h"

/* ---- configuration -------------------------------------------------- */

static char *control_path;
char *mirror_self_uri;
bool mirror_strict;
uint32_t mirror_gran = 4096;
nbdkit_backend *mirror_backend;

static void
mirror_load (void)
{
  sxm_log_set_sink (mirror_log_sink);
}

/* KEY=VALUE into *P (freeing what was there). */
static int
config_str (char **p, const char *key, const char *value)
{
  free (*p);
  *p = strdup (value);
  if (!*p) {
    nbdkit_error ("%s: strdup: %m", key);
    return -1;
  }
  return 0;
}

static int
mirror_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
               const char *key, const char *value)
{
  if (strcmp (key, "mirror-control") == 0)
    return config_str (&control_path, key, value);
  if (strcmp (key, "mirror-uri") == 0)
    return config_str (&mirror_self_uri, key, value);
  if (strcmp (key, "mirror-on-error") == 0) {
    if (strcmp (value, "fail") == 0)
      mirror_strict = true;
    else if (strcmp (value, "continue") == 0)
      mirror_strict = false;
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
    mirror_gran = g;
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

/* ---- lifecycle ------------------------------------------------------ */

static int
mirror_after_fork (nbdkit_backend *nxdata)
{
  mirror_backend = nxdata;
  return control_start (control_path);
}

static void
mirror_cleanup (nbdkit_backend *nxdata)
{
  control_stop ();
  if (mirror_dest) {
    /* nbdkit is exiting: whatever was mirrored should be durable there. */
    if (mirror_cur_state () == M_MIRRORING || mirror_cur_state () == M_READY)
      dest_flush (mirror_dest);
    dest_close (mirror_dest);
    mirror_dest = NULL;
  }
}

static void
mirror_unload (void)
{
  free (control_path);
  free (mirror_self_uri);
  mirror_state_free ();
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
    nbdkit_error ("mirror: calloc: %m");
    return NULL;
  }
  if (strncmp (exportname, MIRROR_COPY_PREFIX,
               strlen (MIRROR_COPY_PREFIX)) == 0) {
    char *exp = mirror_copy_accept (exportname, &h->gen);
    /* The copier only reads the source; it never writes it. */
    if (!exp || next (ctx, 1, exp) == -1) {
      free (exp);
      free (h);
      return NULL;
    }
    free (exp);
    h->copy = true;
    mirror_copy_opened ();
    return h;
  }
  if (next (ctx, readonly, exportname) == -1) {
    free (h);
    return NULL;
  }
  h->exportname = strdup (exportname);
  if (!h->exportname) {
    nbdkit_error ("mirror: strdup: %m");
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

/* On the copy export, NBD_CMD_CACHE relays a range from the source to
 * the destination (mirror-copy.c); elsewhere it is the plugin's. */
static int
mirror_can_cache (nbdkit_next *next, void *handle)
{
  return ((struct handle *) handle)->copy ? NBDKIT_CACHE_NATIVE
         : next->can_cache (next);
}

/* ---- routing guest requests ----------------------------------------- */

/* Is this connection's export the one being mirrored? */
static bool
mirrored_export (struct handle *h)
{
  return mirror_all || strcmp (h->exportname, mirror_export) == 0;
}

/* Which path a guest write-type request takes.  Called with the gate held
 * open. */
enum route { R_PASS, R_MIRROR, R_REFUSE };

static enum route
route (struct handle *h, int *err)
{
  int s = mirror_cur_state ();

  if (s == M_IDLE || !mirrored_export (h))
    return R_PASS;
  switch (s) {
  case M_MIRRORING:
    return R_MIRROR;
  case M_BROKEN:
    if (!mirror_strict)
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

static int
mirror_pwrite (nbdkit_next *next, void *handle, const void *buf,
               uint32_t count, uint64_t off, uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r;

  if (h->copy)
    return mirror_copy_write (h->gen, false, buf, count, off, flags, err);
  mirror_gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->pwrite (next, buf, count, off, flags, err); break;
  case R_MIRROR: r = mirror_write_data (next, buf, count, off, flags, err);
    break;
  default: r = -1;
  }
  mirror_gate_leave ();
  return r;
}

static int
mirror_zero (nbdkit_next *next, void *handle, uint32_t count, uint64_t off,
             uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r;

  if (h->copy)
    return mirror_copy_write (h->gen, true, NULL, count, off, flags, err);
  mirror_gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->zero (next, count, off, flags, err); break;
  case R_MIRROR: r = mirror_write_zero (next, count, off, flags, err); break;
  default: r = -1;
  }
  mirror_gate_leave ();
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
  mirror_gate_enter ();
  switch (route (h, err)) {
  case R_PASS: r = next->trim (next, count, off, flags, err); break;
  case R_MIRROR: r = mirror_write_trim (next, count, off, flags, err); break;
  default: r = -1;
  }
  mirror_gate_leave ();
  return r;
}

static int
mirror_cache (nbdkit_next *next, void *handle, uint32_t count, uint64_t off,
              uint32_t flags, int *err)
{
  struct handle *h = handle;

  if (h->copy)
    return mirror_copy_relay (h->gen, next, count, off, err);
  return next->cache (next, count, off, flags, err);
}

/* A guest flush while mirroring flushes the destination too: the guest's
 * earlier writes are on both sides, and it asked for them to be durable. */
static int
mirror_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  struct handle *h = handle;
  int r, e;

  if (h->copy)
    return mirror_copy_flush (h->gen, err);
  mirror_gate_enter ();
  r = next->flush (next, flags, err);
  if (r == 0 && mirror_cur_state () == M_MIRRORING && mirrored_export (h)) {
    e = dest_flush (mirror_dest);
    if (e)
      r = mirror_dest_failed (e, "flush", 0, 0, err);
  }
  mirror_gate_leave ();
  return r;
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
  .can_cache         = mirror_can_cache,
  .pwrite            = mirror_pwrite,
  .zero              = mirror_zero,
  .trim              = mirror_trim,
  .flush             = mirror_flush,
  .cache             = mirror_cache,
};

NBDKIT_REGISTER_FILTER (filter)
