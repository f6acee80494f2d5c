/* The mirror's destination: a few libnbd connections, each driven by its
 * own I/O thread, so that guest threads can issue a request and wait for
 * just that request while many are in flight on one connection.
 *
 * Guest threads start commands with libnbd's asynchronous calls (libnbd
 * handles are thread-safe; the caller's thread usually sends the whole
 * request itself) and sleep on the request's condition variable; the I/O
 * thread polls the socket, lets libnbd read replies, and libnbd runs the
 * completion callback there, which wakes the waiter.  An eventfd wakes the
 * I/O thread when a new request needs the socket to become writable, which
 * it was not polling for.
 *
 * Every wait is bounded by the timeout: a destination that stops answering
 * has its connection shut down, which makes libnbd fail every request in
 * flight on it (their callbacks run), so nothing waits for ever and no
 * buffer is used after its owner returned. */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnbd.h>
#include <nbdkit-filter.h>

#include "mirror.h"
#include "nbdconnect.h"
#include "monotime.h"

struct dest_conn {
  struct dest *d;
  struct nbd_handle *h;
  int efd;                      /* wakes the I/O thread */
  unsigned polled;              /* atomic: the events the thread polls for */
  pthread_t thread;
  bool thread_started;
};

struct dest {
  unsigned n;
  struct dest_conn *c;
  unsigned rr;                  /* atomic: round-robin pick */
  double timeout;
  bool stopping;                /* atomic */
  struct dest_info info;
};

static pthread_condattr_t mono_attr;
static pthread_once_t mono_once = PTHREAD_ONCE_INIT;

static void
mono_init (void)
{
  pthread_condattr_init (&mono_attr);
  pthread_condattr_setclock (&mono_attr, CLOCK_MONOTONIC);
}

static const char *
last_error (void)
{
  const char *e = nbd_get_error ();
  return e ? e : "unknown libnbd error";
}

/* One call each, and each state final: asking "ready or processing?" in
 * two calls could answer "neither" while a reply moved the handle from
 * processing to ready in between, and the I/O thread would then stop
 * polling a live connection. */
static bool
conn_dead (struct dest_conn *c)
{
  return nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h);
}

static void *
io_thread (void *arg)
{
  struct dest_conn *c = arg;

  while (!__atomic_load_n (&c->d->stopping, __ATOMIC_ACQUIRE)) {
    struct pollfd p[2] = { { .fd = -1 }, { .fd = c->efd, .events = POLLIN } };
    unsigned events = 0;

    if (!conn_dead (c)) {
      unsigned dir = nbd_aio_get_direction (c->h);
      p[0].fd = nbd_aio_get_fd (c->h);
      if (dir & LIBNBD_AIO_DIRECTION_READ)
        events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE)
        events |= POLLOUT;
      p[0].events = events;
    }
    __atomic_store_n (&c->polled, events, __ATOMIC_SEQ_CST);
    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      break;
    }
    if (p[1].revents & POLLIN) {
      uint64_t v;
      if (read (c->efd, &v, sizeof v) == -1 && errno != EAGAIN)
        break;
    }
    /* A dead connection fails every command in flight (their callbacks
     * run inside these calls). */
    if (p[0].fd >= 0) {
      if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
        nbd_aio_notify_read (c->h);
      else if (p[0].revents & POLLOUT)
        nbd_aio_notify_write (c->h);
    }
  }
  return NULL;
}

static void
kick (struct dest_conn *c)
{
  uint64_t one = 1;
  if (write (c->efd, &one, sizeof one) == -1) {
    /* The counter cannot overflow in practice; nothing to do. */
  }
}

/* After starting a command: wake the I/O thread if libnbd now waits for an
 * event the thread is not polling for (usually it is already polling for
 * the reply, and no wakeup is needed). */
static void
after_start (struct dest_conn *c)
{
  unsigned dir = nbd_aio_get_direction (c->h), want = 0;

  if (dir & LIBNBD_AIO_DIRECTION_READ)
    want |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    want |= POLLOUT;
  if (want & ~__atomic_load_n (&c->polled, __ATOMIC_SEQ_CST))
    kick (c);
}

static int
connect_one (struct dest_conn *c, const char *uri, unsigned i, char *err,
             size_t errlen)
{
  char name[32];
  double deadline = sxm_now () + c->d->timeout;

  c->efd = -1;
  c->h = nbd_create ();
  if (!c->h) {
    snprintf (err, errlen, "%s", last_error ());
    return -1;
  }
  snprintf (name, sizeof name, "mirror-dest-%u", i);
  if (sxm_nbd_prepare (c->h, name, uri) == -1 ||
      nbd_aio_connect_uri (c->h, uri) == -1) {
    snprintf (err, errlen, "%s", last_error ());
    return -1;
  }
  while (nbd_aio_is_connecting (c->h)) {
    double left = deadline - sxm_now ();
    if (left <= 0) {
      snprintf (err, errlen, "no answer within %.0f s", c->d->timeout);
      return -1;
    }
    if (nbd_poll (c->h, (int) (left * 1000) + 1) == -1) {
      snprintf (err, errlen, "%s", last_error ());
      return -1;
    }
  }
  if (!nbd_aio_is_ready (c->h)) {
    snprintf (err, errlen, "%s", last_error ());
    return -1;
  }
  c->efd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->efd == -1) {
    snprintf (err, errlen, "eventfd: %s", strerror (errno));
    return -1;
  }
  return 0;
}

struct zero_scan {
  uint64_t pos, end;
  bool all_zero;
};

static int
zero_scan_cb (void *opaque, const char *ctx, uint64_t offset,
              uint32_t *entries, size_t nr, int *error)
{
  struct zero_scan *z = opaque;

  if (strcmp (ctx, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  /* Advance over the zero extents only: pos stops at the first extent
   * that is not zero, so that the caller learns how long the zero run
   * from its offset is, not merely whether the whole range is zero. */
  for (size_t i = 0; i + 1 < nr && z->pos < z->end && z->all_zero; i += 2) {
    if (entries[i] == 0)
      break;
    if (!(entries[i + 1] & LIBNBD_STATE_ZERO)) {
      z->all_zero = false;
      break;
    }
    z->pos += entries[i];
  }
  return 0;
}

struct dest *
dest_open (const char *uri, unsigned nconns, double timeout,
           struct dest_info *info, char *err, size_t errlen)
{
  struct dest *d;
  int64_t size;
  unsigned i;

  pthread_once (&mono_once, mono_init);
  if (nconns < 1)
    nconns = 1;
  d = calloc (1, sizeof *d);
  if (!d || !(d->c = calloc (nconns, sizeof *d->c))) {
    nbdkit_error ("mirror: calloc: %m");
    free (d);
    snprintf (err, errlen, "out of memory");
    return NULL;
  }
  d->timeout = timeout > 0 ? timeout : 1e9;
  d->n = 1;
  d->c[0].d = d;
  if (connect_one (&d->c[0], uri, 0, err, errlen) == -1)
    goto fail;
  size = nbd_get_size (d->c[0].h);
  if (size < 0) {
    snprintf (err, errlen, "%s", last_error ());
    goto fail;
  }
  d->info.size = size;
  d->info.readonly = nbd_is_read_only (d->c[0].h) == 1;
  d->info.can_flush = nbd_can_flush (d->c[0].h) == 1;
  d->info.can_fua = nbd_can_fua (d->c[0].h) == 1;
  d->info.can_zero = nbd_can_zero (d->c[0].h) == 1;
  d->info.multi_conn = nbd_can_multi_conn (d->c[0].h) == 1;
  d->info.has_extents =
    nbd_can_meta_context (d->c[0].h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  /* Without multi-conn, a flush on one connection need not cover writes
   * made on another: use one connection. */
  if (!d->info.multi_conn)
    nconns = 1;
  for (i = 1; i < nconns; i++) {
    d->c[i].d = d;
    d->n = i + 1;
    if (connect_one (&d->c[i], uri, i, err, errlen) == -1)
      goto fail;
  }
  for (i = 0; i < d->n; i++) {
    if (pthread_create (&d->c[i].thread, NULL, io_thread, &d->c[i]) != 0) {
      snprintf (err, errlen, "cannot start a thread");
      goto fail;
    }
    d->c[i].thread_started = true;
  }
  *info = d->info;
  return d;
 fail:
  dest_close (d);
  return NULL;
}

void
dest_close (struct dest *d)
{
  if (!d)
    return;
  __atomic_store_n (&d->stopping, true, __ATOMIC_RELEASE);
  for (unsigned i = 0; i < d->n; i++) {
    struct dest_conn *c = &d->c[i];
    if (c->thread_started) {
      kick (c);
      pthread_join (c->thread, NULL);
    }
    if (c->h) {
      if (nbd_aio_is_ready (c->h)) {
        /* Polite NBD_CMD_DISC, bounded: a stalled server gets no wait. */
        if (nbd_aio_disconnect (c->h, 0) == 0) {
          double end = sxm_now () + 1;
          while (!nbd_aio_is_closed (c->h) && !nbd_aio_is_dead (c->h) &&
                 sxm_now () < end)
            if (nbd_poll (c->h, 100) == -1)
              break;
        }
      }
      nbd_close (c->h);
    }
    if (c->efd >= 0)
      close (c->efd);
  }
  free (d->c);
  free (d);
}

static int
done_cb (void *opaque, int *error)
{
  struct dest_req *r = opaque;

  pthread_mutex_lock (&r->m);
  r->err = *error;
  r->done = true;
  pthread_cond_signal (&r->cv);
  pthread_mutex_unlock (&r->m);
  return 1;
}

static struct dest_conn *
pick (struct dest *d)
{
  unsigned i = __atomic_fetch_add (&d->rr, 1, __ATOMIC_RELAXED);
  return &d->c[i % d->n];
}

static void
req_init (struct dest_req *r, struct dest_conn *c)
{
  pthread_once (&mono_once, mono_init);
  pthread_mutex_init (&r->m, NULL);
  pthread_cond_init (&r->cv, &mono_attr);
  r->done = false;
  r->err = 0;
  r->conn = c;
}

static void
req_destroy (struct dest_req *r)
{
  pthread_mutex_destroy (&r->m);
  pthread_cond_destroy (&r->cv);
}

/* libnbd does not run the callback of a command it refused to start. */
static int
started (struct dest_req *r, int64_t cookie)
{
  int e;

  if (cookie != -1) {
    after_start (r->conn);
    return 0;
  }
  /* Said here, where libnbd's own message is still at hand: the caller
   * reports only the errno. */
  nbdkit_error ("mirror: destination: a request could not be started: %s",
                last_error ());
  e = nbd_get_errno ();
  if (conn_dead (r->conn) || e == 0 || e == EINVAL)
    e = ENOTCONN;
  req_destroy (r);
  return e;
}

#define COMPLETION(r) \
  ((nbd_completion_callback) { .callback = done_cb, .user_data = (r) })

int
dest_start_pwrite (struct dest *d, struct dest_req *r, const void *buf,
                   uint32_t len, uint64_t off, bool fua)
{
  struct dest_conn *c = pick (d);
  uint32_t flags = fua && d->info.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;

  req_init (r, c);
  return started (r, nbd_aio_pwrite (c->h, buf, len, off, COMPLETION (r),
                                     flags));
}

static int
dest_start_zero (struct dest *d, struct dest_req *r, uint32_t len,
                 uint64_t off, bool fua)
{
  struct dest_conn *c = pick (d);
  uint32_t flags = fua && d->info.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;

  req_init (r, c);
  if (!d->info.can_zero) {
    /* Rare: a destination without write_zeroes gets zeros as data. */
    static const char zeros[65536];
    int e = 0;
    req_destroy (r);
    while (len && e == 0) {
      uint32_t n = len < sizeof zeros ? len : sizeof zeros;
      e = dest_pwrite (d, zeros, n, off, fua);
      off += n;
      len -= n;
    }
    /* Report through a request that is already done. */
    req_init (r, c);
    r->done = true;
    r->err = e;
    return 0;
  }
  return started (r, nbd_aio_zero (c->h, len, off, COMPLETION (r), flags));
}

int
dest_start_pread (struct dest *d, struct dest_req *r, void *buf,
                  uint32_t len, uint64_t off)
{
  struct dest_conn *c = pick (d);

  req_init (r, c);
  return started (r, nbd_aio_pread (c->h, buf, len, off, COMPLETION (r), 0));
}

int
dest_wait (struct dest *d, struct dest_req *r)
{
  struct timespec ts;
  double deadline = sxm_now () + d->timeout;
  bool timed_out = false;
  int err;

  ts.tv_sec = (time_t) deadline;
  ts.tv_nsec = (long) ((deadline - ts.tv_sec) * 1e9);
  pthread_mutex_lock (&r->m);
  while (!r->done) {
    if (!timed_out) {
      if (pthread_cond_timedwait (&r->cv, &r->m, &ts) == ETIMEDOUT &&
          !r->done) {
        /* Shut the connection down: libnbd then fails every command in
         * flight on it, this one included, and we wait for that. */
        int fd = nbd_aio_get_fd (r->conn->h);
        timed_out = true;
        if (fd >= 0)
          shutdown (fd, SHUT_RDWR);
        kick (r->conn);
      }
    }
    else
      pthread_cond_wait (&r->cv, &r->m);
  }
  err = r->err;
  pthread_mutex_unlock (&r->m);
  req_destroy (r);
  if (timed_out)
    return ETIMEDOUT;
  return err;
}

int
dest_pwrite (struct dest *d, const void *buf, uint32_t len, uint64_t off,
             bool fua)
{
  struct dest_req r;
  int e = dest_start_pwrite (d, &r, buf, len, off, fua);
  return e ? e : dest_wait (d, &r);
}

int
dest_zero (struct dest *d, uint32_t len, uint64_t off, bool fua)
{
  struct dest_req r;
  int e = dest_start_zero (d, &r, len, off, fua);
  return e ? e : dest_wait (d, &r);
}

/* Flushing is split in two so that the switchover can flush the source
 * while the destination's flush is on the wire.  With multi-conn the
 * server's flush on one connection covers writes completed on all of
 * them (NBD spec, NBD_FLAG_CAN_MULTI_CONN), so one is enough; without,
 * every connection flushes. */
void
dest_flush_start (struct dest *d, struct dest_flush *f)
{
  f->n = !d->info.can_flush ? 0 : d->info.multi_conn ? 1 : d->n;
  f->err = 0;
  for (unsigned i = 0; i < f->n; i++) {
    int e;
    req_init (&f->r[i], &d->c[i]);
    e = started (&f->r[i], nbd_aio_flush (d->c[i].h, COMPLETION (&f->r[i]),
                                          0));
    f->started[i] = e == 0;
    if (e && !f->err)
      f->err = e;
  }
}

int
dest_flush_wait (struct dest *d, struct dest_flush *f)
{
  for (unsigned i = 0; i < f->n; i++)
    if (f->started[i]) {
      int e = dest_wait (d, &f->r[i]);
      if (e && !f->err)
        f->err = e;
    }
  return f->err;
}

int
dest_flush (struct dest *d)
{
  struct dest_flush f;

  dest_flush_start (d, &f);
  return dest_flush_wait (d, &f);
}

int
dest_is_zero (struct dest *d, uint64_t off, uint64_t len)
{
  uint64_t zlen;
  int e = dest_zero_prefix (d, off, len, &zlen);

  return e < 0 ? e : zlen >= len;
}

int
dest_zero_prefix (struct dest *d, uint64_t off, uint64_t len, uint64_t *zlen)
{
  struct zero_scan z = { .pos = off, .end = off + len, .all_zero = true };

  *zlen = 0;
  if (!d->info.has_extents)
    return 0;
  while (z.pos < z.end && z.all_zero) {
    struct dest_req r;
    struct dest_conn *c = pick (d);
    uint64_t before = z.pos, n = z.end - z.pos;
    int e;
    if (n > (1u << 30))
      n = 1u << 30;
    req_init (&r, c);
    e = started (&r, nbd_aio_block_status (c->h, n, z.pos,
                                           (nbd_extent_callback) {
                                             .callback = zero_scan_cb,
                                             .user_data = &z },
                                           COMPLETION (&r), 0));
    if (e == 0)
      e = dest_wait (d, &r);
    if (e)
      return -e;
    if (z.pos == before)
      break;
  }
  *zlen = (z.pos < z.end ? z.pos : z.end) - off;
  return 0;
}
