/* The mirror filter's internals (see doc/design.md, "Live mirror").
 *
 *   mirror.c          the nbdkit callbacks: configuration, lifecycle,
 *                     open/close, and which path each request takes
 *                     (pass-through, mirrored, copy export, refused)
 *   mirror-state.c    what requests and commands share: the write gate,
 *                     the state machine, the dirty map, the running
 *                     mirror's parameters and its counters
 *   mirror-write.c    the guest write path while mirroring (mirrored_op)
 *                     and copying source ranges to the destination
 *   mirror-copy.c     the copy export: which copy connections are
 *                     accepted, and forwarding only clean granules
 *   mirror-cmd.c      the control commands start / status / copied /
 *                     switchover / resume / complete / flush / abort,
 *                     and the switchover's comparison
 *   mirror-control.c  the control socket (one-line JSON): accepts clients,
 *                     serialises the commands above
 *   mirror-dest.c     the destination: a pool of libnbd connections, each
 *                     with an I/O thread, every request bounded by a timeout
 *
 * Symbols shared between these files are prefixed mirror_ (dest_ for
 * mirror-dest.c's and control_ for mirror-control.c's); everything else
 * is static. */
#ifndef SXM_MIRROR_H
#define SXM_MIRROR_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <nbdkit-filter.h>

#include "jsonline.h"
#include "log.h"
#include "rangelock.h"

/* ---- mirror-dest.c ------------------------------------------------------ */

struct dest;

#define MIRROR_MAX_CONNS 16     /* destination connections, "start" checks */

struct dest_info {
  uint64_t size;
  bool readonly, can_flush, can_fua, can_zero, multi_conn, has_extents;
  bool all_zero;                /* "start": reads zeros over the source's size */
};

/* Requests come in two classes, each on connections of its own when
 * there are two or more: the guest's mirrored writes (and their read-back
 * and repair) never queue on a socket behind the bulk copy's large
 * writes.  With one connection (a destination without multi-conn) both
 * share it. */
enum dest_class { DEST_GUEST, DEST_COPY };

/* Connect NCONNS connections to URI (TLS from the URI): the first carries
 * DEST_GUEST (self-driven: see mirror-dest.c), the rest DEST_COPY.  NULL
 * with a message in err on failure. */
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
  bool done;                    /* atomic; set under m */
  int err;
  struct dest_conn *conn;
  /* A self-driven connection's waiter (mirror-dest.c): on its list, and
   * told (under m) that the connection has nobody driving it. */
  struct dest_req *next_waiter;
  bool drive_now;
};

int dest_start_pwrite (struct dest *d, enum dest_class cls,
                       struct dest_req *r, const void *buf, uint32_t len,
                       uint64_t off, bool fua);
int dest_start_pread (struct dest *d, enum dest_class cls,
                      struct dest_req *r, void *buf, uint32_t len,
                      uint64_t off);
int dest_wait (struct dest *d, struct dest_req *r);

/* Synchronous conveniences. */
int dest_pwrite (struct dest *d, enum dest_class cls, const void *buf,
                 uint32_t len, uint64_t off, bool fua);
int dest_zero (struct dest *d, enum dest_class cls, uint32_t len,
               uint64_t off, bool fua);
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

/* ---- mirror.c: configuration ------------------------------------------- */

#define MIRROR_COPY_PREFIX "sxm-mirror-copy-"   /* + token: the copy export */

extern bool mirror_strict;              /* mirror-on-error=fail */
extern uint32_t mirror_gran;            /* mirror-granularity */
/* mirror-uri: how clients reach this export, reported by "status" so
 * that sxm migrate needs nothing but the control socket. */
extern char *mirror_self_uri;
extern nbdkit_backend *mirror_backend;  /* from after_fork, for commands */

/* ---- mirror-state.c ----------------------------------------------------- */

enum mirror_state {
  M_IDLE,          /* pass-through; no destination */
  M_MIRRORING,     /* guest writes reissued; copy connections accepted */
  M_READY,         /* switchover done: guest writes held, dest identical */
  M_BROKEN,        /* the destination failed; the source carries on */
  M_COMPLETED,     /* migrated: guest writes refused */
};

const char *mirror_state_name (enum mirror_state s);
/* The state is read without a lock; it changes only with the gate closed,
 * so a request inside the gate sees one state for its whole life. */
enum mirror_state mirror_cur_state (void);
void mirror_set_state (enum mirror_state s);

/* The write gate: every write-type request on the mirrored export and
 * every copy-export request is inside it for its whole duration; start,
 * switchover and abort close it, which holds new requests and waits for
 * the ones in flight. */
void mirror_gate_enter (void);
void mirror_gate_leave (void);
void mirror_gate_close (void);
void mirror_gate_open (void);

/* mirroring -> broken, recording why (the first reason wins). */
void mirror_set_broken (const char *fmt, ...)
  __attribute__ ((format (printf, 1, 2)));
/* A destination request failed with errno E: the mirror breaks.  Returns
 * what the guest's request returns: 0 (it carries on with the source), or
 * -1 with *err = EIO under mirror-on-error=fail. */
int mirror_dest_failed (int e, const char *what, uint64_t off, uint64_t len,
                        int *err);

/* The dirty map: one bit per granule, set by guest writes since start. */
bool mirror_is_dirty (uint64_t g);
void mirror_mark_dirty (uint64_t start, uint64_t end);
uint8_t *mirror_dirty_alloc (uint64_t size);  /* a clean map; NULL: error */
void mirror_dirty_install (uint8_t *map);     /* gate closed; frees the old */

/* The running mirror: set by "start" (and the destination cleared by
 * "complete" and "abort") only with the gate closed, so fixed while
 * requests are inside it. */
extern struct dest *mirror_dest;
extern struct dest_info mirror_dinfo;
extern uint64_t mirror_size;            /* of the source */
extern struct rangelock mirror_rl;      /* granule ranges: guest vs copier */
extern bool mirror_guest_priority;      /* "start": the copy yields to guest */

/* Under mirror_info_lock.  The export, token and generation change only
 * in "start", with the gate closed too, so requests inside the gate read
 * them without the lock; the reason and the copy flags change any time. */
extern pthread_mutex_t mirror_info_lock;
extern char *mirror_export;             /* the export being mirrored */
extern char *mirror_dest_uri;           /* the destination "start" was given */
extern bool mirror_all;                 /* no "export" given: every export */
extern char mirror_token[33];           /* of the copy export */
extern uint64_t mirror_generation;      /* bumped by each start */
extern char mirror_reason[512];         /* why the mirror broke */
extern bool mirror_copy_seen, mirror_copy_done;

void mirror_state_free (void);          /* unload */

/* Counters for "status": relaxed atomics, written by any thread, reset by
 * "start". */
struct mirror_stats {
  uint64_t dirty_gran, writes, write_bytes, readback, copied, copy_skipped,
    dest_errors, source_errors, held, copy_yields, copy_yield_us;
};
extern struct mirror_stats mirror_stats;

static inline void
mirror_stat_add (uint64_t *v, uint64_t n)
{
  __atomic_fetch_add (v, n, __ATOMIC_RELAXED);
}

static inline uint64_t
mirror_stat_get (uint64_t *v)
{
  return __atomic_load_n (v, __ATOMIC_RELAXED);
}

/* ---- mirror-write.c ----------------------------------------------------- */

/* A guest pwrite / write_zeroes / trim on the mirrored export while
 * mirroring (called inside the gate); nbdkit's return convention. */
int mirror_write_data (nbdkit_next *next, const void *buf, uint32_t count,
                       uint64_t off, uint32_t flags, int *err);
int mirror_write_zero (nbdkit_next *next, uint32_t count, uint64_t off,
                       uint32_t flags, int *err);
int mirror_write_trim (nbdkit_next *next, uint32_t count, uint64_t off,
                       uint32_t flags, int *err);

/* The source's extent at POS, asked for once (NBDKIT_FLAG_REQ_ONE, COUNT
 * bytes, extents collected up to END): its length, 0 if the plugin cannot
 * tell; *ZERO: whether it reads as zeros. */
uint64_t mirror_source_extent (nbdkit_next *next, uint64_t pos,
                               uint32_t count, uint64_t end, bool *zero);

/* ---- mirror-copy.c ------------------------------------------------------ */

/* Every mirrored guest request is bracketed by these (mirror-write.c), so
 * that the copy can tell when the guest is busy and step aside. */
void mirror_guest_begin (void);
void mirror_guest_end (void);

/* Opening "sxm-mirror-copy-TOKEN": the export being mirrored (to free),
 * and the mirror's generation in *GEN; NULL (with nbdkit_error) if no
 * mirror is running with that token. */
char *mirror_copy_accept (const char *exportname, uint64_t *gen);
void mirror_copy_opened (void);         /* it is open: status says "running" */
/* Requests on a copy connection opened for generation GEN. */
int mirror_copy_write (uint64_t gen, bool zero, const void *buf,
                       uint32_t count, uint64_t off, uint32_t flags,
                       int *err);
int mirror_copy_flush (uint64_t gen, int *err);
/* NBD_CMD_CACHE on a copy connection: relay [off, off+count) from the
 * source (NEXT) to the destination here, the bytes never crossing the
 * copier's socket. */
#define MIRROR_RELAY_MAX (4u << 20)     /* the largest relay request */
int mirror_copy_relay (uint64_t gen, nbdkit_next *next, uint32_t count,
                       uint64_t off, int *err);

/* ---- mirror-cmd.c ------------------------------------------------------- */

/* Routes common/'s logging to nbdkit, and remembers the thread's last
 * error for the command replying. */
void mirror_log_sink (enum sxm_log_level level, const char *msg);

/* Control commands, called from the control thread(s), one at a time
 * except "status" (mirror-control.c serialises them).  Each appends the
 * reply's fields (after '"ok":true' or '"ok":false') to the buffer and
 * returns 0 for success, -1 for failure (with an "error" field
 * appended). */
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

#endif
