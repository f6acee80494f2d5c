/* Preparing a libnbd handle for an NBD URI, the same way in every sxm
 * program that connects to one (sxm-copy's NBD endpoints, the mirror
 * filter's destination connections, xenmem's guest disks). */
#ifndef SXM_NBDCONNECT_H
#define SXM_NBDCONNECT_H

#include <libnbd.h>

/* Settings every sxm connection wants, before nbd_[aio_]connect_uri: the
 * handle named NAME (libnbd's debug lines), pread buffers not zeroed first
 * (they are only used after a successful read), base:allocation requested,
 * local files allowed in the URI (tls-psk-file=, socket=), and a TLS
 * identity when the URI names a PSK file but no user: the name of the user
 * running the program.  (Without one libnbd asks getlogin_r(), which fails
 * wherever there is no login session -- services, containers, cron -- with
 * "getlogin_r: No such device or address".)  0, or -1 with libnbd's error
 * set (nbd_get_error). */
int sxm_nbd_prepare (struct nbd_handle *h, const char *name, const char *uri);

#endif
