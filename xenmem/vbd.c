/* Virtual block devices of the test guests: libnbd connections (vbd.h). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "log.h"
#include "nbdconnect.h"
#include "vbd.h"

struct xm_vbd *
xm_vbd_open (const char *uri)
{
  struct xm_vbd *v = calloc (1, sizeof *v);
  int64_t size;

  if (!v || !(v->uri = strdup (uri))) {
    sxm_error ("disk %s: out of memory", uri);
    free (v);
    return NULL;
  }
  v->nbd = nbd_create ();
  if (!v->nbd) {
    sxm_error ("disk %s: cannot create a libnbd handle: %s", uri,
               nbd_get_error ());
    goto fail;
  }
  if (sxm_nbd_prepare (v->nbd, "xenmem-vbd", uri) == -1 ||
      nbd_connect_uri (v->nbd, uri) == -1) {
    sxm_error ("disk %s: cannot connect: %s", uri, nbd_get_error ());
    goto fail;
  }
  size = nbd_get_size (v->nbd);
  if (size == -1) {
    sxm_error ("disk %s: cannot get its size: %s", uri, nbd_get_error ());
    goto fail;
  }
  /* The guest writes to it: a read-only export would fail every record
   * long after the migration started, so refuse it now. */
  if (nbd_is_read_only (v->nbd) == 1) {
    sxm_error ("disk %s: the export is read-only; a guest disk must be "
               "writable", uri);
    goto fail;
  }
  v->size = size;
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
  if (v->nbd) {
    /* A clean NBD_CMD_DISC; the server has every acknowledged write. */
    if (nbd_aio_is_ready (v->nbd))
      nbd_shutdown (v->nbd, 0);
    nbd_close (v->nbd);
  }
  free (v->uri);
  free (v);
}
