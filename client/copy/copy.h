/* sxm-copy internals.
 *
 * The copy loop (copy-loop.c) never knows where bytes come from: each side of
 * the copy is a 'struct endpoint' with an ops table, one per kind: nbd-ops.c
 * (NBD through libnbd), file-ops.c (files and block devices; the null:
 * sink), vhd-ops.c (a VHD file or chain).  As in libnbd's nbdcopy, a kind's
 * own state lives in its own structs, which begin with the generic one
 * ('struct file_endpoint { struct endpoint ep; int fd; ... }'), reached
 * with container_of; nothing outside the kind's file sees it.
 *
 * Every worker thread owns one connection ('struct conn', likewise
 * extended by the kind) to each side and keeps several requests in flight
 * on it; NBD connections complete requests asynchronously through libnbd,
 * file, null and VHD connections complete them before the start call
 * returns.  Either way the completion is queued on the worker
 * (req_complete) and handled by the worker's loop, so no endpoint callback
 * ever re-enters the copy logic. */
#ifndef SXM_COPY_H
#define SXM_COPY_H

#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct conn;
struct req;
struct worker;
struct endpoint;

#define container_of(ptr, type, member) \
  ((type *) ((char *) (ptr) - offsetof (type, member)))

/* Called once per extent, in order, covering the asked range exactly.
 * 'zero' means the range is known to read as zeros.  A non-zero return
 * stops the walk and is returned by the extents op. */
typedef int (*extent_fn) (void *opaque, uint64_t off, uint64_t len, bool zero);

/* One table per endpoint kind, private to the kind's file.  Members marked
 * optional may be NULL where the kind has nothing to do (typically: it
 * completes every request before the start call returns); each says what
 * NULL means, and its callers (the conn_* helpers, the copy loop) do
 * that. */
struct endpoint_ops {
  const char *kind;
  /* sizeof the kind's connection struct, which begins with a struct conn
   * (conn_new allocates it zeroed). */
  size_t conn_size;
  /* Open connection C (C->ep set, unconnected or disconnected) for one
   * worker: 0, or -1 with the reason in C->error.  Optional: NULL means
   * there is nothing to open. */
  int (*connect) (struct conn *c);
  /* Close what connect opened; C may then be connected again.  Called on
   * dead connections too.  Optional. */
  void (*disconnect) (struct conn *c);
  /* Whether C can carry no more requests and needs a new connection.
   * Optional: NULL means never. */
  bool (*is_dead) (struct conn *c);
  /* Synchronous: the allocation map of [off, off+len), through FN.  0,
   * FN's non-zero return, or -1 with errno set (and, when the kind has a
   * better message than strerror (errno), that in C->error, else C->error
   * empty). */
  int (*extents) (struct conn *c, uint64_t off, uint64_t len,
                  extent_fn fn, void *opaque);
  /* Starting a request: 0 if started (req_complete will be called, from
   * inside the call for synchronous kinds, else from poll_done), -1 with
   * errno if the request could not be started (req_complete is then not
   * called).  R->off / R->len are inside the endpoint; pread fills
   * R->data, pwrite writes it; zero with R->fast_zero fails with ENOTSUP,
   * having written nothing, where zeroing would be slow; flush makes the
   * connection's completed writes durable. */
  int (*pread) (struct conn *c, struct req *r);
  int (*pwrite) (struct conn *c, struct req *r);
  int (*zero) (struct conn *c, struct req *r);
  int (*flush) (struct conn *c, struct req *r);
  /* Ask the server to copy [R->off, R->off+R->len) from its source to its
   * destination itself, no data crossing this connection: the mirror
   * filter's copy export, where NBD_CMD_CACHE means that (the copy loop
   * uses it only where the filter said so: struct copy's relay_max).
   * Started and completed like the others.  Optional: NULL means the kind
   * cannot, and the copy loop reads and writes. */
  int (*relay) (struct conn *c, struct req *r);
  /* Event loop: fill P with the fd and events to poll for C and return 1,
   * or return 0 (nothing in flight, nothing to wait for).  Optional: NULL
   * means 0. */
  int (*poll_setup) (struct conn *c, struct pollfd *p);
  /* What poll saw on P->fd (REVENTS): move the connection on; completions
   * are delivered from inside.  Optional, with poll_setup. */
  int (*poll_done) (struct conn *c, short revents);
  /* Give up on a connection whose server stopped answering: its requests
   * then complete with errors and is_dead says true.  Optional: NULL for
   * synchronous kinds, which cannot stall that way. */
  void (*abandon) (struct conn *c);
  /* After every connection is gone: release the kind's state (not the
   * struct itself), making what was written durable where the format
   * needs it (a VHD's metadata).  0, or -1 with a message printed.
   * Optional. */
  int (*close) (struct endpoint *ep);
};

/* The generic part of an endpoint: what the copy loop may know. */
struct endpoint {
  const struct endpoint_ops *ops;
  const char *name;             /* as the user wrote it, for messages */
  bool is_dest;
  bool writable;                /* opened for writing (files are created) */
  bool insecure;                /* --insecure: plaintext NBD to any host */
  double timeout;               /* --timeout, for connecting too */
  uint64_t size;
  bool multi_conn;              /* safe to open several connections */
  bool readonly;
  bool has_extents;             /* block status / SEEK_DATA worth asking */
  bool can_zero;                /* efficient zeroing (write_zeroes, punch) */
  bool can_fast_zero;           /* NBD_CMD_FLAG_FAST_ZERO offered */
  bool fast_zero_failed;        /* the server said zeroing is slow: stop asking */
  bool zero_init;               /* the whole endpoint reads zeros right now */
};

/* The generic part of one worker's connection to an endpoint. */
struct conn {
  struct endpoint *ep;
  struct worker *w;
  char error[256];              /* why the last connect (or extents) failed */
  bool broken;                  /* an error said the server is going away */
};

/* endpoint.c: connections through the ops, NULL members included. */
struct conn *conn_new (struct endpoint *ep);    /* zeroed, unconnected; NULL: ENOMEM */
int conn_connect (struct conn *c);              /* 0, or -1 with c->error */
void conn_disconnect (struct conn *c);
void conn_free (struct conn *c);                /* disconnects; NULL ignored */
bool conn_is_dead (struct conn *c);

enum req_kind { RQ_READ, RQ_WRITE, RQ_ZERO, RQ_FLUSH, RQ_RELAY };

struct req {
  enum req_kind kind;
  struct conn *conn;
  uint64_t off;
  uint64_t len;
  char *data;                   /* RQ_READ / RQ_WRITE */
  bool fast_zero;               /* RQ_ZERO: ask for NBD_CMD_FLAG_FAST_ZERO */
  int err;                      /* 0 or an errno, set on completion */
  /* Owned by the copy loop. */
  struct op *op;
  struct req *next;
};

/* copy-loop.c */
void req_complete (struct req *r, int err);

/* How an endpoint is opened: --insecure, --timeout, and how a local file
 * is taken (--raw, --create). */
enum vhd_create_kind { CREATE_AUTO, CREATE_DYNAMIC, CREATE_FIXED };
struct endpoint_opts {
  bool insecure;                /* --insecure: plaintext NBD to any host */
  double timeout;               /* --timeout (0: none) */
  bool raw;                     /* --raw: files are bytes, never VHDs */
  bool create;                  /* --create: the destination must not exist */
  enum vhd_create_kind create_kind;
};

/* Opening an endpoint: parse NAME, probe it with a first connection
 * (returned in *FIRST, to be worker 0's).  The endpoint, or NULL with a
 * message printed: such failures happen before anything is written. */
struct endpoint *endpoint_open (const char *name, bool is_dest, bool writable,
                                uint64_t want_size,
                                const struct endpoint_opts *o,
                                struct conn **first);
/* After its connections are freed: the close op, if any, then the
 * endpoint is freed.  0, or -1 with a message printed. */
int endpoint_close (struct endpoint *ep);

/* The kinds' constructors, called by endpoint_open with PROTO's generic
 * fields (name, is_dest, writable, insecure, timeout) filled: each
 * allocates its endpoint, probes it, and opens the first connection.
 * NULL with a message printed. */
struct endpoint *endpoint_open_nbd (const struct endpoint *proto,
                                    struct conn **first);     /* nbd-ops.c */
struct endpoint *endpoint_open_file (const struct endpoint *proto,
                                     uint64_t want_size,
                                     struct conn **first);    /* file-ops.c */
struct endpoint *endpoint_open_null (const struct endpoint *proto,
                                     uint64_t want_size,
                                     struct conn **first);    /* file-ops.c */
struct endpoint *endpoint_open_vhd (const struct endpoint *proto,
                                    enum vhd_create_kind create,
                                    uint64_t want_size, bool exists,
                                    struct conn **first);     /* vhd-ops.c */
/* endpoint.c: the kind's struct, allocated with PROTO's generic part
 * copied in and OPS set (NULL with a message printed); and its first
 * connection, opened (NULL with a message printed). */
struct endpoint *endpoint_alloc (const struct endpoint *proto, size_t size,
                                 const struct endpoint_ops *ops);
struct conn *endpoint_first_conn (struct endpoint *ep);

/* What the user asked for (sxm-copy.c fills it from the command line). */
struct copy_opts {
  unsigned connections;         /* workers; 1 unless both ends allow multi-conn */
  unsigned requests;            /* requests in flight per worker */
  uint64_t request_size;
  uint64_t segment_size;        /* unit of work hand-out and of checkpoints */
  bool zero_detect;
  bool target_is_zero;
  bool allocated_only;          /* source holes: leave the destination */
  bool flush;                   /* flush the destination at the end */
  unsigned retries;
  double checkpoint_interval;   /* seconds between destination flushes */
  double timeout;               /* no reply for this long = lost; 0: never */
  const char *checkpoint;       /* NULL: no checkpoint */
  uint64_t rate;                /* bytes/s read from the source; 0: no limit */
  bool verbose;
};

enum copy_mode { MODE_COPY, MODE_VERIFY };

/* The state one copy or verify pass shares between its workers. */
struct copy {
  const struct copy_opts *o;
  enum copy_mode mode;
  struct endpoint *src, *dst;
  uint64_t size;                /* source size: what is copied */
  uint64_t nseg;
  uint64_t next_seg;            /* atomic: next segment to hand out */
  uint8_t *done_map;            /* segments durable on the destination */
  uint8_t *counted_map;         /* segments already in the statistics */
  uint32_t *seg_alloc;          /* allocated bytes per segment (from the map) */
  uint64_t alloc_total;
  bool dst_zero;                /* the destination read zeros when we began */
  /* --live: the destination endpoint (the filter's copy export) relays
   * data runs of up to this many bytes itself; 0: read and write. */
  uint32_t relay_max;
  pthread_mutex_t lock;         /* done_map, ckpt_dirty, rate_next, running */
  bool ckpt_dirty;
  double rate_next;
  /* Statistics, atomics. */
  uint64_t alloc_done, bytes_read, bytes_written, bytes_zeroed, bytes_skipped;
  uint64_t bytes_relayed;       /* copied by the server (also read, written) */
  uint64_t bytes_compared;      /* verify: data read on both sides, compared */
  uint64_t bytes_zero_checked;  /* verify: source holes read on destination */
  uint64_t retries_done;
  /* Outcome. */
  int abort;                    /* atomic: stop everything */
  unsigned running;             /* workers still running (lock) */
  pthread_cond_t finished;      /* signalled when running drops to 0 */
  int failed;                   /* a worker gave up (message printed) */
  uint64_t first_diff;          /* verify: lowest differing offset, or ~0 */
  const char *diff_what;
};

#define SEG_NONE UINT64_MAX

/* copy-loop.c: run the pass with one worker per connection pair; conns[0]
 * are the probed first connections.  Returns when every worker is done;
 * the monitor callback runs about every 100 ms on the calling thread. */
struct worker;
int copy_run (struct copy *cp, unsigned nworkers, struct conn *src0,
              struct conn *dst0, void (*monitor) (struct copy *cp, bool last));

/* checkpoint.c */
int checkpoint_load (const char *path, struct copy *cp);   /* 1 loaded, 0 none, -1 bad */
int checkpoint_save (const char *path, struct copy *cp);

#endif
