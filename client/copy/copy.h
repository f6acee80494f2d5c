/* sxm-copy internals.
 *
 * The copy loop (copy-loop.c) never knows where bytes come from: each side of
 * the copy is a 'struct endpoint' with an ops table (nbd-ops.c, file-ops.c,
 * null-ops.c).  Every worker thread owns one connection ('struct conn') to
 * each side and keeps several requests in flight on it; NBD connections
 * complete requests asynchronously through libnbd, file and null connections
 * complete them before the start call returns.  Either way the completion is
 * queued on the worker (req_complete) and handled by the worker's loop, so no
 * endpoint callback ever re-enters the copy logic. */
#ifndef SXM_COPY_H
#define SXM_COPY_H

#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct conn;
struct req;
struct worker;
struct vhd_layer;
struct endpoint;

/* Called once per extent, in order, covering the asked range exactly.
 * 'zero' means the range is known to read as zeros. */
typedef int (*extent_fn) (void *opaque, uint64_t off, uint64_t len, bool zero);

struct endpoint_ops {
  const char *kind;
  /* Open a connection for one worker; fills c.  -1 with a message printed. */
  int (*connect) (struct conn *c);
  void (*disconnect) (struct conn *c);
  bool (*is_dead) (struct conn *c);
  /* Synchronous: the allocation map of [off, off+len). */
  int (*extents) (struct conn *c, uint64_t off, uint64_t len,
                  extent_fn fn, void *opaque);
  /* Asynchronous starts: 0 if started (req_complete will be called), -1
   * with errno if the request could not be started. */
  int (*pread) (struct conn *c, struct req *r);
  int (*pwrite) (struct conn *c, struct req *r);
  int (*zero) (struct conn *c, struct req *r);
  int (*flush) (struct conn *c, struct req *r);
  /* Event loop hooks; connections that complete synchronously return 0. */
  int (*poll_setup) (struct conn *c, struct pollfd *p);
  int (*poll_done) (struct conn *c, short revents);
  /* Give up on a connection whose server stopped answering: its requests
   * then complete with errors (NULL for synchronous endpoints). */
  void (*abandon) (struct conn *c);
  /* After every connection is gone: release the endpoint, making what was
   * written durable where the format needs it (a VHD's metadata).  -1 with
   * a message printed.  NULL: nothing to do. */
  int (*close) (struct endpoint *ep);
};

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
  /* file endpoints */
  int fd;
  bool is_bdev, created;
  /* VHD endpoints (vhd-ops.c): the opened chain, shared by all workers */
  struct vhd_layer *vhd;
  struct vhd_writeback {        /* page-cache hygiene of a VHD destination */
    pthread_mutex_t lock;
    uint64_t started, dropped;  /* file offsets reached */
  } vwb;
};

#define WRITEBACK_WINDOW 16

struct conn {
  struct endpoint *ep;
  struct worker *w;
  struct nbd_handle *nbd;
  unsigned inflight;
  char connect_error[256];      /* why the last connect failed */
  bool broken;                  /* an error said the server is going away */
  /* file destinations: written ranges whose writeback was started and
   * whose pages are dropped once it finishes (file-ops.c) */
  struct { uint64_t off, len; } wb[WRITEBACK_WINDOW];
  unsigned wb_head, wb_count;
};

enum req_kind { RQ_READ, RQ_WRITE, RQ_ZERO, RQ_FLUSH };

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

/* How a local file is taken (--raw, --create). */
enum vhd_create_kind { CREATE_AUTO, CREATE_DYNAMIC, CREATE_FIXED };
struct local_opts {
  bool raw;                     /* --raw: files are bytes, never VHDs */
  bool create;                  /* --create: the destination must not exist */
  enum vhd_create_kind create_kind;
};

/* Endpoint constructors: parse NAME, probe it with a first connection
 * (which is kept as worker 0's connection in *first).  -1 with a message
 * printed: such failures happen before anything is written. */
extern const struct endpoint_ops nbd_ops, file_ops, null_ops, vhd_ops;
int endpoint_open (struct endpoint *ep, const char *name, bool is_dest,
                   bool writable, uint64_t want_size,
                   const struct local_opts *lo, struct conn *first);
/* The endpoint's close op, if any: 0, or -1 with a message printed. */
int endpoint_close (struct endpoint *ep);

/* nbd-ops.c: the libnbd error of the last failed call, for messages. */
const char *nbd_last_error (void);

/* What the user asked for (sxm-copy.c fills it from the command line). */
struct copy_opts {
  unsigned connections;         /* workers; 1 unless both ends allow multi-conn */
  unsigned requests;            /* requests in flight per worker */
  uint64_t request_size;
  uint64_t segment_size;        /* unit of work hand-out and of checkpoints */
  bool zero_detect;
  bool target_is_zero;
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
  pthread_mutex_t lock;         /* done_map, ckpt_dirty, rate_next, running */
  bool ckpt_dirty;
  double rate_next;
  /* Statistics, atomics. */
  uint64_t alloc_done, bytes_read, bytes_written, bytes_zeroed, bytes_skipped;
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
