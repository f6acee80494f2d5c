/* Virtual block devices of the test guests: libnbd connections (vbd.h). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "log.h"
#include "nbdconnect.h"
#include "vbd.h"

/* A disk server that accepts but never answers must not hold a guest's
 * start (or a receiver's) for ever. */
#define VBD_CONNECT_TIMEOUT 30

struct xm_vbd *
xm_vbd_open (const char *uri)
{
  struct xm_vbd *v = calloc (1, sizeof *v);
  struct sxm_nbd_info info;
  char err[256];

  if (!v || !(v->uri = strdup (uri))) {
    sxm_error ("disk %s: out of memory", uri);
    free (v);
    return NULL;
  }
  v->nbd = sxm_nbd_connect ("xenmem-vbd", uri, VBD_CONNECT_TIMEOUT, err,
                            sizeof err);
  if (!v->nbd) {
    sxm_error ("disk %s: cannot connect: %s", uri, err);
    goto fail;
  }
  if (sxm_nbd_probe (v->nbd, &info) == -1) {
    sxm_error ("disk %s: cannot get its size: %s", uri, sxm_nbd_error ());
    goto fail;
  }
  /* The guest writes to it: a read-only export would fail every record
   * long after the migration started, so refuse it now. */
  if (info.readonly) {
    sxm_error ("disk %s: the export is read-only; a guest disk must be "
               "writable", uri);
    goto fail;
  }
  v->size = info.size;
  return v;

 fail:
  xm_vbd_close (v);
  return NULL;
}

void
xm_vbd_close (struct xm_vbd *v)
{
  if (!v)
    return;
  /* A clean NBD_CMD_DISC; the server has every acknowledged write. */
  sxm_nbd_close (v->nbd);
  free (v->uri);
  free (v);
}
