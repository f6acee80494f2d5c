/* Client side of the mirror filter's control socket (one JSON object per
 * line each way; doc/nbdkit-mirror-filter.pod), for sxm-mirror and
 * sxm-copy --live. */
#ifndef SXM_MIRRORCTL_H
#define SXM_MIRRORCTL_H

#include "jsonline.h"

/* Connect to the control socket at PATH: a file descriptor, or -1 with a
 * message through sxm_error(). */
int mirrorctl_connect (const char *path);

/* Send REQUEST (one JSON object, no newline) and read the reply line into
 * *reply (the raw line, malloc'd, in *raw if raw is not NULL) and parse it.
 * 0 on a reply (whatever its "ok"), -1 with a message on a transport or
 * parse failure.  TIMEOUT seconds (0: none) bounds the wait. */
int mirrorctl_call (int fd, const char *request, double timeout,
                    struct json_obj *reply, char **raw);

#endif
