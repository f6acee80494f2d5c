/* xenmem's VM monitor: a running test guest that persists in its own
 * process and takes requests on a unix socket, as QEMU's monitor does —
 * so that a guest that arrived by migration can be migrated on.
 *
 * Protocol (doc/xenmem.pod, MONITOR): a client connects and sends one
 * request, argc (u32 LE) then argc times (u32 LE length, bytes), with its
 * stdout, stderr and current directory (an O_DIRECTORY fd) as SCM_RIGHTS;
 * the monitor answers one line of JSON holding at least "exit" (an enum
 * xm_exit) and closes.  Requests: status, check SECONDS, cont, quit, and
 * send OPTIONS... ADDR [-- HOOK...] (exactly `xenmem send`'s argv, run
 * with the client's fds 1 and 2 and directory). */
#ifndef XENMEM_MONITOR_H
#define XENMEM_MONITOR_H

#include "backend.h"
#include "vbd.h"

/* Limits of a request. */
#define XM_MONITOR_MAX_ARGS 256
#define XM_MONITOR_MAX_ARG 4096

/* Serve the monitor at PATH for the running source S of backend B (DISKS:
 * its NDISKS disks) until the guest has migrated away or is told to quit
 * (returns 0), or SIGTERM/SIGINT (1), or the socket cannot be created
 * (XM_CANNOT).  Takes S and DISKS: both are closed when it returns. */
int xm_monitor_serve (const char *path, const struct xm_backend_ops *b,
                      struct xm_source *s, struct xm_vbd **disks,
                      unsigned ndisks, bool quiet);

/* Whether a monitor could be served at PATH (not too long, nothing but a
 * stale socket there): 0, or -1 with the reason reported.  receive
 * --monitor asks before it takes a guest it could not keep. */
int xm_monitor_usable (const char *path);

/* The client: send ARGV[0..argc) as one request to the monitor at PATH,
 * with our fds 1 and 2 and our current directory, and wait for the reply.
 * Returns the reply's "exit", with the reply line in *REPLY (malloc'd, no
 * newline; NULL if none came).  Without a reply: XM_CANNOT if the monitor
 * could not be reached, else XM_FAILED (errors reported). */
int xm_monitor_call (const char *path, int argc, char *const *argv,
                     char **reply);

#endif
