/* The mirror filter's internals (see doc/design.md, "Live mirror").
 *
 *   mirror.c          nbdkit callbacks: guest write path, copy connections
 *   mirror-dest.c     the destination: a pool of libnbd connections, each
 *                     with an I/O thread, every request bounded by a timeout
 *   mirror-control.c  the control socket (one-line JSON) and the commands
 *                     start / status / copied / switchover / resume /
 *                     complete / abort */
#ifndef SXM_MIRROR_H
#define SXM_MIRROR_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "jsonline.h"

/* ---- mirror-dest.c ------------------------------------------------------ */

struct dest;

#define MIRROR_MAX_CONNS 16     /* destination connections, "start" checks */

struct dest_info {
  uint64_t size;
  bool readonly, can_flush, can_fua, can_zero, multi_conn, has_extents;
  bool all_zero;                /* mirror.c: reads zeros over the source's size */
};

/* Connect NCONNS connections to URI (TLS from the URI).  NULL with a
 * message in err on failure. */
struct dest *dest_open (const char *uri, unsigned nconns, double timeout,
                        struct dest_info *info, char *err, size_t errlen);
/* Every request must have completed (the gate guarantees it). */
void dest_close (struct dest *d);

/* An asynchronous request: started by dest_start_*, finished by dest_wait,
 * which returns 0 or an errno (ETIMEDOUT if the destination did not answer
 * within the timeout, after which that connection is shut down).  The
 * struct lives in the caller until dest_wait returns; the data buffer must
 * stay valid until then too. */
struct dest_req {
  pthread_mutex_t m;
  pthread_cond_t cv;
  bool done;
  int err;
  struct dest_conn *conn;
};

int dest_start_pwrite (struct dest *d, struct dest_req *r, const void *buf,
                       uint32_t len, uint64_t off, bool fua);
int dest_start_zero (struct dest *d, struct dest_req *r, uint32_t len,
                     uint64_t off, bool fua);
int dest_start_pread (struct dest *d, struct dest_req *r, void *buf,
                      uint32_t len, uint64_t off);
int dest_wait (struct dest *d, struct dest_req *r);

/* Synchronous conveniences. */
int dest_pwrite (struct dest *d, const void *buf, uint32_t len, uint64_t off,
                 bool fua);
int dest_zero (struct dest *d, uint32_t len, uint64_t off, bool fua);
int dest_pread (struct dest *d, void *buf, uint32_t len, uint64_t off);
int dest_flush (struct dest *d);        /* every connection (one if multi-conn) */
struct dest_flush {
  unsigned n;
  int err;
  bool started[MIRROR_MAX_CONNS];
  struct dest_req r[MIRROR_MAX_CONNS];
};
void dest_flush_start (struct dest *d, struct dest_flush *f);
int dest_flush_wait (struct dest *d, struct dest_flush *f);
/* 1 if [off, off+len) reads as zeros per block status, 0 if not or unknown,
 * -errno on failure. */
int dest_is_zero (struct dest *d, uint64_t off, uint64_t len);
/* *ZLEN = how many bytes from OFF (at most LEN) read as zeros per block
 * status (0 if unknown); 0, or -errno on failure. */
int dest_zero_prefix (struct dest *d, uint64_t off, uint64_t len,
                      uint64_t *zlen);

/* ---- mirror.c: the state the control commands act on ------------------- */

enum mirror_state {
  M_IDLE,          /* pass-through; no destination */
  M_MIRRORING,     /* guest writes reissued; copy connections accepted */
  M_READY,         /* switchover done: guest writes held, dest identical */
  M_BROKEN,        /* the destination failed; the source carries on */
  M_COMPLETED,     /* migrated: guest writes refused */
};

const char *mirror_state_name (enum mirror_state s);

/* Control commands (mirror.c), called from the control thread(s), one at a
 * time (mirror-control.c serialises them).  Each appends the reply's
 * fields (after '"ok":true' or '"ok":false') to the buffer and returns 0
 * for success, -1 for failure (with an "error" field appended). */
int mirror_cmd_start (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_status (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_copied (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_switchover (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_resume (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_complete (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_flush (const struct json_obj *req, struct jbuf *out);
int mirror_cmd_abort (const struct json_obj *req, struct jbuf *out);

/* ---- mirror-control.c -------------------------------------------------- */

int control_check (const char *path);   /* config time: usable path? */
int control_start (const char *path);   /* after fork: listen, start thread */
void control_stop (void);               /* cleanup: stop thread, unlink */

double mirror_now (void);               /* monotonic seconds */

#endif
