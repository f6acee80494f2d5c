/* A test guest's virtual block device: one libnbd connection to an NBD
 * export, named by its URI.
 *
 * The uffd guest (backend-uffd.c) writes and re-reads records on its
 * disks through these.  They are host-side objects: the guest's RAM says
 * how many disks it has and how big each one was, the handles themselves
 * never migrate.  A receiver opens its own (xenmem receive --disk=URI)
 * before the stream starts and gives them to the destination
 * (xm_backend_ops.set_disks).  Whoever opened a disk closes it, after the
 * guest that borrowed it is gone. */
#ifndef XENMEM_VBD_H
#define XENMEM_VBD_H

#include <stdint.h>

/* At most this many disks per guest (--disk is repeatable up to here). */
#define XM_DISKS_MAX 8

struct nbd_handle;

struct xm_vbd {
  char *uri;                    /* as given, for messages */
  struct nbd_handle *nbd;       /* connected; thread-safe (libnbd locks) */
  uint64_t size;                /* export size in bytes */
};

/* Connect to URI (nbd_connect_uri) and read its size.  NULL after
 * sxm_error() naming the URI and libnbd's reason. */
struct xm_vbd *xm_vbd_open (const char *uri);
/* Disconnect and free; NULL is a no-op. */
void xm_vbd_close (struct xm_vbd *v);

#endif
