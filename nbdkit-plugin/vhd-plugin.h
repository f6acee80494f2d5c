/* nbdkit-vhd-plugin: what vhd.c (the callbacks) and vhd-live.c (the
 * control socket that snapshots and relinks the served file while it is
 * in use) share.  Everything here is file= mode; sr= mode has no control
 * socket. */
#ifndef SXM_VHD_PLUGIN_H
#define SXM_VHD_PLUGIN_H

#include <pthread.h>

#include "vhd.h"

extern char *filename;                  /* file=, absolute */
extern enum vhd_size_rule size_rule;

/* The chain every connection reads and writes.  With control=, each
 * request holds chain_lock's read side while it uses the chain (without
 * it the chain never changes and nothing locks); the control commands
 * that replace the chain hold the write side (the lock prefers writers,
 * so a stream of guest requests cannot starve them).  NULL after a
 * replacement failed to reopen the file: every request then fails with
 * EIO, and the log says why. */
extern struct vhd_layer *chain;
extern pthread_rwlock_t chain_lock;

/* The last error common/ code reported on this thread (for replies). */
extern __thread char last_error[1024];

/* vhd-live.c: control=SOCKET (doc/nbdkit-vhd-plugin.pod). */
int live_check (const char *path);      /* config time */
int live_start (const char *path);      /* after fork */
void live_stop (void);                  /* cleanup */

#endif
