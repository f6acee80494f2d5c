/* The mirror's destination: a few libnbd connections, on which guest
 * threads issue a request and wait for just that request while many are
 * in flight on one connection.
 *
 * Threads start commands with libnbd's asynchronous calls (libnbd handles
 * are thread-safe; the caller's thread usually sends the whole request
 * itself).  Who then reads the replies depends on the connection:
 *
 *   - I/O-thread connections (the copy's): a thread per connection polls
 *     the socket and lets libnbd read replies; libnbd runs the completion
 *     callback there, which wakes the waiter.  Many copy requests wait at
 *     once; one thread reads for all of them.
 *
 *   - Self-driven connections (the guest's, when there are two or more
 *     connections): a waiter polls the socket itself, so a guest write
 *     that is alone on its connection (the usual case: iodepth 1, or few
 *     requests at once) costs no thread hand-off at all: the thread that
 *     sent it reads its reply.  With several waiters one drives (the
 *     leader) and the others sleep until their reply is read or the
 *     leader's own request is done, when it hands driving over to one of
 *     them.  Measured against the I/O thread: doc/design.md, "Guest I/O
 *     during the live copy".
 *
 * An eventfd wakes the thread polling a connection when a new request
 * needs the socket to become writable, which it was not polling for.
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
  int efd;                      /* wakes the thread polling the socket */
  unsigned polled;              /* atomic: the events it polls for */
  pthread_t thread;             /* the I/O thread, unless self-driven */
  bool thread_started;
  bool self_driven;
  pthread_mutex_t m;            /* self-driven: the two below */
  bool driving;                 /* a waiter is polling the socket */
  struct dest_req *waiters;     /* the others waiting, newest first */
};

/* Not polling: nobody to wake, whatever a request needs. */
#define POLLED_NOBODY 0xffffu

struct dest {
  unsigned n;
  struct dest_conn *c;
  /* Connections [0, guest_n) carry DEST_GUEST, [copy_first, n) DEST_COPY
   * (the same one when n is 1).  One is enough for the guest: its
   * requests are small and pipeline on it; the copy's bulk needs the
   * rest (over TLS a connection encrypts on one thread at a time). */
  unsigned guest_n, copy_first;
  unsigned rr[2];               /* atomic: round-robin pick per class */
  double timeout;
  bool stopping;                /* atomic */
  struct dest_info info;
};

static void *
io_thread (void *arg)
{
  struct dest_conn *c = arg;

  while (!__atomic_load_n (&c->d->stopping, __ATOMIC_ACQUIRE)) {
    struct pollfd p[2] = { { .fd = -1 }, { .fd = c->efd, .events = POLLIN } };
    short events = 0;

    /* (sxm_nbd_is_dead asks about final states only: a live connection
     * is never taken for a dead one, which would stop being polled.) */
    if (!sxm_nbd_is_dead (c->h)) {
      p[0].fd = nbd_aio_get_fd (c->h);
      p[0].events = events = sxm_nbd_poll_events (c->h);
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
    if (p[0].fd >= 0)
      sxm_nbd_notify (c->h, p[0].revents);
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
  unsigned want = sxm_nbd_poll_events (c->h);

  if (want & ~__atomic_load_n (&c->polled, __ATOMIC_SEQ_CST))
    kick (c);
}

static int
connect_one (struct dest_conn *c, const char *uri, unsigned i, char *err,
             size_t errlen)
{
  char name[32];

  c->efd = -1;
  snprintf (name, sizeof name, "mirror-dest-%u", i);
  c->h = sxm_nbd_connect (name, uri, c->d->timeout, err, errlen);
  if (!c->h)
    return -1;
  c->efd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (c->efd == -1) {
    snprintf (err, errlen, "eventfd: %s", strerror (errno));
    return -1;
  }
  return 0;
}

struct dest *
dest_open (const char *uri, unsigned nconns, double timeout,
           struct dest_info *info, char *err, size_t errlen)
{
  struct dest *d;
  struct sxm_nbd_info ni;
  unsigned i;

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
  if (sxm_nbd_probe (d->c[0].h, &ni) == -1) {
    snprintf (err, errlen, "%s", sxm_nbd_error ());
    goto fail;
  }
  d->info = (struct dest_info) {
    .size = ni.size, .readonly = ni.readonly, .can_flush = ni.can_flush,
    .can_fua = ni.can_fua, .can_zero = ni.can_zero,
    .multi_conn = ni.multi_conn, .has_extents = ni.has_extents,
  };
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
  d->guest_n = 1;
  d->copy_first = d->n >= 2 ? d->guest_n : 0;
  for (i = 0; i < d->n; i++) {
    d->c[i].self_driven = i < d->copy_first;
    pthread_mutex_init (&d->c[i].m, NULL);
    d->c[i].polled = d->c[i].self_driven ? POLLED_NOBODY : 0;
    if (d->c[i].self_driven)
      continue;
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
    sxm_nbd_close (c->h);
    if (c->efd >= 0)
      close (c->efd);
    pthread_mutex_destroy (&c->m);
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
  __atomic_store_n (&r->done, true, __ATOMIC_RELEASE);
  pthread_cond_signal (&r->cv);
  pthread_mutex_unlock (&r->m);
  return 1;
}

static struct dest_conn *
pick (struct dest *d, enum dest_class cls)
{
  unsigned first = cls == DEST_GUEST ? 0 : d->copy_first;
  unsigned n = cls == DEST_GUEST ? d->guest_n : d->n - d->copy_first;
  unsigned i = __atomic_fetch_add (&d->rr[cls], 1, __ATOMIC_RELAXED);

  return &d->c[first + i % n];
}

static void
req_init (struct dest_req *r, struct dest_conn *c)
{
  pthread_mutex_init (&r->m, NULL);
  sxm_cond_init_monotonic (&r->cv);
  r->done = false;
  r->err = 0;
  r->conn = c;
  r->next_waiter = NULL;
  r->drive_now = false;
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
                sxm_nbd_error ());
  /* Every refusal is taken for a lost connection. */
  e = sxm_nbd_errno (r->conn->h, ENOTCONN);
  if (e == EINVAL)
    e = ENOTCONN;
  req_destroy (r);
  return e;
}

#define COMPLETION(r) \
  ((nbd_completion_callback) { .callback = done_cb, .user_data = (r) })

int
dest_start_pwrite (struct dest *d, enum dest_class cls, struct dest_req *r,
                   const void *buf, uint32_t len, uint64_t off, bool fua)
{
  struct dest_conn *c = pick (d, cls);
  uint32_t flags = fua && d->info.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;

  req_init (r, c);
  return started (r, nbd_aio_pwrite (c->h, buf, len, off, COMPLETION (r),
                                     flags));
}

static int
dest_start_zero (struct dest *d, enum dest_class cls, struct dest_req *r,
                 uint32_t len, uint64_t off, bool fua)
{
  struct dest_conn *c = pick (d, cls);
  uint32_t flags = fua && d->info.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;

  req_init (r, c);
  if (!d->info.can_zero) {
    /* Rare: a destination without write_zeroes gets zeros as data. */
    static const char zeros[65536];
    int e = 0;
    req_destroy (r);
    while (len && e == 0) {
      uint32_t n = len < sizeof zeros ? len : sizeof zeros;
      e = dest_pwrite (d, cls, zeros, n, off, fua);
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
dest_start_pread (struct dest *d, enum dest_class cls, struct dest_req *r,
                  void *buf, uint32_t len, uint64_t off)
{
  struct dest_conn *c = pick (d, cls);

  req_init (r, c);
  return started (r, nbd_aio_pread (c->h, buf, len, off, COMPLETION (r), 0));
}

/* Wait until *TS (or for ever with TS NULL) for R's completion, a
 * hand-over, or a wakeup; false if *TS passed. */
static bool
sleep_on (struct dest_req *r, const struct timespec *ts)
{
  bool in_time = true;

  pthread_mutex_lock (&r->m);
  if (!r->done && !r->drive_now) {
    if (ts)
      in_time = pthread_cond_timedwait (&r->cv, &r->m, ts) != ETIMEDOUT;
    else
      pthread_cond_wait (&r->cv, &r->m);
  }
  r->drive_now = false;
  pthread_mutex_unlock (&r->m);
  return in_time;
}

/* An I/O-thread connection: sleep until the thread has read the reply. */
static void
wait_for_io_thread (struct dest_req *r, const struct timespec *ts,
                    bool *timed_out)
{
  while (!__atomic_load_n (&r->done, __ATOMIC_ACQUIRE)) {
    if (!*timed_out && !sleep_on (r, ts) &&
        !__atomic_load_n (&r->done, __ATOMIC_ACQUIRE)) {
      /* Shut the connection down: libnbd then fails every command in
       * flight on it, this one included, and we wait for that. */
      *timed_out = true;
      sxm_nbd_abandon (r->conn->h);
      kick (r->conn);
    }
    else if (*timed_out)
      sleep_on (r, NULL);
  }
}

/* Poll a self-driven connection's socket (and its eventfd) once, for at
 * most until DEADLINE (0: no limit), and let libnbd act on what it saw;
 * completion callbacks run here. */
static void
drive_once (struct dest_conn *c, double deadline)
{
  struct pollfd p[2] = { { .fd = -1 }, { .fd = c->efd, .events = POLLIN } };
  int ms = -1;

  if (!sxm_nbd_is_dead (c->h)) {
    p[0].fd = nbd_aio_get_fd (c->h);
    p[0].events = sxm_nbd_poll_events (c->h);
  }
  __atomic_store_n (&c->polled, p[0].events, __ATOMIC_SEQ_CST);
  if (deadline > 0) {
    double left = deadline - sxm_now ();
    ms = left <= 0 ? 0 : left < 3600 ? (int) (left * 1000) + 1 : 3600000;
  }
  if (p[0].fd < 0 && ms < 0)
    ms = 1;     /* dead: the callbacks have run; do not sleep on nothing */
  if (poll (p, 2, ms) <= 0)
    return;
  if (p[1].revents & POLLIN) {
    uint64_t v;
    if (read (c->efd, &v, sizeof v) == -1) {
      /* EAGAIN: another poller drained it; nothing else can fail. */
    }
  }
  if (p[0].fd >= 0)
    sxm_nbd_notify (c->h, p[0].revents);
}

/* Under c->m, nobody driving: the first waiter whose request is still in
 * flight is told to drive. */
static void
hand_over (struct dest_conn *c)
{
  for (struct dest_req *w = c->waiters; w; w = w->next_waiter)
    if (!__atomic_load_n (&w->done, __ATOMIC_ACQUIRE)) {
      pthread_mutex_lock (&w->m);
      w->drive_now = true;
      pthread_cond_signal (&w->cv);
      pthread_mutex_unlock (&w->m);
      return;
    }
}

static void
stop_driving (struct dest_conn *c)
{
  pthread_mutex_lock (&c->m);
  c->driving = false;
  __atomic_store_n (&c->polled, POLLED_NOBODY, __ATOMIC_SEQ_CST);
  hand_over (c);
  pthread_mutex_unlock (&c->m);
}

/* R stops waiting.  If it was told to drive but its request completed
 * meanwhile, it passes that on, or the others would sleep to their
 * timeout with nobody reading their replies. */
static void
unlist (struct dest_conn *c, struct dest_req *r)
{
  struct dest_req **pp;

  pthread_mutex_lock (&c->m);
  for (pp = &c->waiters; *pp; pp = &(*pp)->next_waiter)
    if (*pp == r) {
      *pp = r->next_waiter;
      break;
    }
  if (!c->driving && __atomic_load_n (&r->done, __ATOMIC_ACQUIRE))
    hand_over (c);
  pthread_mutex_unlock (&c->m);
}

/* A self-driven connection: drive it until R is done, or, while another
 * thread drives, sleep until R is done or driving is handed over. */
static void
wait_driving (struct dest_req *r, double deadline, const struct timespec *ts,
              bool *timed_out)
{
  struct dest_conn *c = r->conn;

  while (!__atomic_load_n (&r->done, __ATOMIC_ACQUIRE)) {
    bool lead, in_time = true;

    pthread_mutex_lock (&c->m);
    lead = !c->driving;
    if (lead)
      c->driving = true;
    else {
      r->next_waiter = c->waiters;
      c->waiters = r;
    }
    pthread_mutex_unlock (&c->m);

    if (lead) {
      while (!__atomic_load_n (&r->done, __ATOMIC_ACQUIRE) &&
             (*timed_out || sxm_now () < deadline))
        drive_once (c, *timed_out ? 0 : deadline);
      stop_driving (c);
      in_time = *timed_out || sxm_now () < deadline;
    }
    else {
      in_time = sleep_on (r, *timed_out ? NULL : ts);
      unlist (c, r);
    }
    if (!in_time && !*timed_out &&
        !__atomic_load_n (&r->done, __ATOMIC_ACQUIRE)) {
      /* As on an I/O-thread connection: shut it down; whoever drives it
       * next sees every command in flight fail. */
      *timed_out = true;
      sxm_nbd_abandon (c->h);
      kick (c);
    }
  }
}

int
dest_wait (struct dest *d, struct dest_req *r)
{
  double deadline = sxm_now () + d->timeout;
  struct timespec ts = sxm_timespec (deadline);
  bool timed_out = false;
  int err;

  if (r->conn->self_driven)
    wait_driving (r, deadline, &ts, &timed_out);
  else
    wait_for_io_thread (r, &ts, &timed_out);
  pthread_mutex_lock (&r->m);   /* the callback has finished with R */
  err = r->err;
  pthread_mutex_unlock (&r->m);
  req_destroy (r);
  if (timed_out)
    return ETIMEDOUT;
  return err;
}

int
dest_pwrite (struct dest *d, enum dest_class cls, const void *buf,
             uint32_t len, uint64_t off, bool fua)
{
  struct dest_req r;
  int e = dest_start_pwrite (d, cls, &r, buf, len, off, fua);
  return e ? e : dest_wait (d, &r);
}

int
dest_zero (struct dest *d, enum dest_class cls, uint32_t len, uint64_t off,
           bool fua)
{
  struct dest_req r;
  int e = dest_start_zero (d, cls, &r, len, off, fua);
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

/* A zero-prefix scan: the walk's extents up to the first that is not
 * zero, so that the caller learns how long the zero run from its offset
 * is, not merely whether the whole range is zero. */
struct zero_scan {
  struct dest *d;
  struct sxm_nbd_walk w;
  uint64_t zero_end;
};

static int
zero_run (void *opaque, uint64_t off, uint64_t len, bool zero)
{
  struct zero_scan *z = opaque;

  if (!zero)
    return 1;
  z->zero_end = off + len;
  return 0;
}

/* One block status request of the scan, on any connection. */
static int
zero_scan_req (uint64_t len, uint64_t off, void *arg)
{
  struct zero_scan *z = arg;
  struct dest_req r;
  struct dest_conn *c = pick (z->d, DEST_COPY);
  int e;

  req_init (&r, c);
  e = started (&r, nbd_aio_block_status (c->h, len, off,
                                         sxm_nbd_walk_callback (&z->w),
                                         COMPLETION (&r), 0));
  return e ? e : dest_wait (z->d, &r);
}

int
dest_zero_prefix (struct dest *d, uint64_t off, uint64_t len, uint64_t *zlen)
{
  struct zero_scan z = {
    .d = d, .zero_end = off,
    .w = { .pos = off, .end = off + len, .fn = zero_run },
  };
  int e;

  *zlen = 0;
  if (!d->info.has_extents)
    return 0;
  z.w.opaque = &z;
  /* A server that reports nothing ends the zero run there. */
  e = sxm_nbd_walk (&z.w, zero_scan_req, &z);
  if (e && !z.w.stalled)
    return -e;
  *zlen = z.zero_end - off;
  return 0;
}
