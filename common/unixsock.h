/* Private listening unix sockets: the mirror filter's control socket,
 * xenmem receive's unix:PATH and the xenmem VM monitor.  Whoever connects
 * to one can steer a VM (switch its disk over, hand it a guest, migrate
 * it), so only our own user may: the socket is mode 0600 from the moment
 * it exists.
 *
 * The helpers report nothing themselves: the filter's messages go through
 * nbdkit_error, xenmem's through its log, each with its own prefix. */
#ifndef SXM_UNIXSOCK_H
#define SXM_UNIXSOCK_H

#include <sys/stat.h>

/* Listen on a new unix stream socket at PATH, with BACKLOG.  A socket
 * already at PATH (left by a killed process) is removed first; anything
 * else there is refused and left alone.
 *
 * Returns the listening socket (blocking, close-on-exec).  If BOUND is not
 * NULL, *BOUND is the socket file's stat, for unix_unlink_own.
 *
 * On failure returns -1 with errno set, *STEP (if STEP is not NULL) a
 * constant string naming what failed, for the caller's message, and
 * nothing of ours left at PATH:
 *   "path too long for a unix socket"   ENAMETOOLONG
 *   "exists and is not a socket"        EEXIST (only here)
 *   "removing the stale socket", "socket", "bind", "stat", "listen"
 *                                       the system call's errno */
int unix_listen_private (const char *path, int backlog, struct stat *bound,
                         const char **step);

/* Remove PATH if it is still the socket file BOUND describes (from
 * unix_listen_private), not one that a later process bound there since. */
void unix_unlink_own (const char *path, const struct stat *bound);

#endif
