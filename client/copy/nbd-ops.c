/* NBD endpoints through libnbd: nbd://, nbds://, nbd+unix://, nbds+unix://
 * (and anything else libnbd's nbd_connect_uri accepts).  TLS comes from the
 * URI: nbds:// requires it, tls-psk-file= or tls-certificates= name the
 * credentials.  Requests are libnbd async commands whose completion
 * callback only queues the request on its worker. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <libnbd.h>

#include "copy.h"
#include "nbdconnect.h"
#include "monotime.h"

const char *
nbd_last_error (void)
{
  const char *e = nbd_get_error ();
  return e ? e : "unknown libnbd error";
}

/* Connect asynchronously so that a server that accepts but never answers
 * (a stopped process) costs at most the --timeout. */
static int
nbd_connect_ep (struct conn *c)
{
  struct nbd_handle *h = nbd_create ();
  double deadline = sxm_now () + c->ep->timeout;

  /* Failures are reported by the caller, which knows the context. */
  if (h == NULL)
    return -1;
  /* (sxm_nbd_prepare: buffers are not zeroed before reads -- that memset
   * was 5% of a copy's CPU -- and a TLS identity without getlogin.) */
  if (sxm_nbd_prepare (h, c->ep->is_dest ? "dst" : "src", c->ep->name) == -1 ||
      nbd_aio_connect_uri (h, c->ep->name) == -1)
    goto fail;
  while (nbd_aio_is_connecting (h)) {
    int ms = -1, r;
    if (c->ep->timeout > 0) {
      double left = deadline - sxm_now ();
      if (left <= 0) {
        nbd_close (h);
        errno = ETIMEDOUT;
        snprintf (c->connect_error, sizeof c->connect_error,
                  "no answer within %.0f s", c->ep->timeout);
        return -1;
      }
      ms = (int) (left * 1000) + 1;
    }
    r = nbd_poll (h, ms);
    if (r == -1)
      goto fail;
  }
  if (!nbd_aio_is_ready (h)) {
    snprintf (c->connect_error, sizeof c->connect_error, "%s",
              nbd_last_error ());
    nbd_close (h);
    return -1;
  }
  c->nbd = h;
  c->inflight = 0;
  return 0;
 fail:
  snprintf (c->connect_error, sizeof c->connect_error, "%s",
            nbd_last_error ());
  nbd_close (h);
  return -1;
}

static void
nbd_disconnect (struct conn *c)
{
  if (c->nbd) {
    if (nbd_aio_is_ready (c->nbd))
      nbd_shutdown (c->nbd, 0);
    nbd_close (c->nbd);
    c->nbd = NULL;
  }
}

/* Anything but ready-or-busy (dead, closed, shut down, still connecting
 * after a failure) needs a new connection. */
static bool
nbd_is_dead (struct conn *c)
{
  return c->nbd == NULL ||
         !(nbd_aio_is_ready (c->nbd) || nbd_aio_is_processing (c->nbd));
}

struct extents_ctx {
  uint64_t pos, end;
  extent_fn fn;
  void *opaque;
  int rc;
};

static int
nbd_extent_cb (void *opaque, const char *metacontext, uint64_t offset,
               uint32_t *entries, size_t nr, int *error)
{
  struct extents_ctx *x = opaque;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || *error)
    return 0;
  for (size_t i = 0; i + 1 < nr && x->pos < x->end && x->rc == 0; i += 2) {
    uint64_t len = entries[i];
    if (len == 0)
      break;
    if (len > x->end - x->pos)
      len = x->end - x->pos;
    x->rc = x->fn (x->opaque, x->pos, len,
                   (entries[i + 1] & LIBNBD_STATE_ZERO) != 0);
    x->pos += len;
  }
  return 0;
}

static void nbd_abandon (struct conn *c);
static bool nbd_is_dead (struct conn *c);

/* Block status, waited for with the --timeout (a plain synchronous call
 * would hang for ever on a server that stopped answering).  Completions of
 * other requests in flight on the handle are delivered meanwhile. */
static int
block_status_timed (struct conn *c, uint64_t n, uint64_t off,
                    struct extents_ctx *x)
{
  double deadline = sxm_now () + c->ep->timeout;
  int64_t cookie;
  int r;

  cookie = nbd_aio_block_status (c->nbd, n, off,
                                 (nbd_extent_callback) {
                                   .callback = nbd_extent_cb, .user_data = x },
                                 NBD_NULL_COMPLETION, 0);
  if (cookie == -1) {
    errno = nbd_is_dead (c) ? ENOTCONN : nbd_get_errno () ? nbd_get_errno () : EIO;
    return -1;
  }
  while ((r = nbd_aio_command_completed (c->nbd, cookie)) == 0) {
    int ms = -1;
    if (c->ep->timeout > 0) {
      double left = deadline - sxm_now ();
      if (left <= 0) {
        nbd_abandon (c);
        errno = ETIMEDOUT;
        return -1;
      }
      ms = (int) (left * 1000) + 1;
    }
    if (nbd_poll (c->nbd, ms) == -1) {
      errno = nbd_is_dead (c) ? ENOTCONN : nbd_get_errno () ? nbd_get_errno () : EIO;
      return -1;
    }
  }
  if (r == -1) {
    errno = nbd_get_errno () ? nbd_get_errno () : EIO;
    return -1;
  }
  return 0;
}

static int
nbd_extents (struct conn *c, uint64_t off, uint64_t len,
             extent_fn fn, void *opaque)
{
  struct extents_ctx x = { .pos = off, .end = off + len, .fn = fn,
                           .opaque = opaque };

  if (!c->ep->has_extents)
    return fn (opaque, off, len, false);
  while (x.pos < x.end && x.rc == 0) {
    uint64_t before = x.pos;
    uint64_t n = x.end - x.pos;
    if (n > (1u << 30))
      n = 1u << 30;
    if (block_status_timed (c, n, x.pos, &x) == -1)
      return -1;
    if (x.pos == before) {      /* a server that answers nothing */
      errno = EPROTO;
      return -1;
    }
  }
  return x.rc;
}

static int
nbd_done_cb (void *opaque, int *error)
{
  struct req *r = opaque;

  r->conn->inflight--;
  req_complete (r, *error);
  return 1;
}

#define COMPLETION(r) \
  ((nbd_completion_callback) { .callback = nbd_done_cb, .user_data = (r) })

/* libnbd does not call the completion callback of a command it refused to
 * start; the caller completes it. */
static int
started (struct conn *c, int64_t cookie)
{
  if (cookie == -1) {
    /* On a dead handle libnbd says "invalid state" (EINVAL), which would
     * look permanent; it is a lost connection. */
    errno = nbd_is_dead (c) ? ENOTCONN
            : nbd_get_errno () ? nbd_get_errno () : EIO;
    return -1;
  }
  c->inflight++;
  return 0;
}

static int
nbd_start_pread (struct conn *c, struct req *r)
{
  return started (c, nbd_aio_pread (c->nbd, r->data, r->len, r->off,
                                    COMPLETION (r), 0));
}

static int
nbd_start_pwrite (struct conn *c, struct req *r)
{
  return started (c, nbd_aio_pwrite (c->nbd, r->data, r->len, r->off,
                                     COMPLETION (r), 0));
}

static int
nbd_start_zero (struct conn *c, struct req *r)
{
  uint32_t flags = r->fast_zero ? LIBNBD_CMD_FLAG_FAST_ZERO : 0;

  return started (c, nbd_aio_zero (c->nbd, r->len, r->off,
                                   COMPLETION (r), flags));
}

static int
nbd_start_flush (struct conn *c, struct req *r)
{
  if (!nbd_can_flush (c->nbd)) {
    req_complete (r, 0);
    return 0;
  }
  return started (c, nbd_aio_flush (c->nbd, COMPLETION (r), 0));
}

static int
nbd_poll_setup (struct conn *c, struct pollfd *p)
{
  unsigned dir;

  if (c->nbd == NULL || c->inflight == 0)
    return 0;
  dir = nbd_aio_get_direction (c->nbd);
  p->fd = nbd_aio_get_fd (c->nbd);
  p->events = 0;
  if (dir & LIBNBD_AIO_DIRECTION_READ)
    p->events |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    p->events |= POLLOUT;
  p->revents = 0;
  return p->fd >= 0;
}

static int
nbd_poll_done (struct conn *c, short revents)
{
  int r = 0;

  /* A dead connection completes every command in flight with an error,
   * which is how the loop learns of it. */
  if (revents & (POLLIN | POLLHUP | POLLERR))
    r = nbd_aio_notify_read (c->nbd);
  else if (revents & POLLOUT)
    r = nbd_aio_notify_write (c->nbd);
  return r;
}

/* Shutting the socket down makes libnbd see the connection die and fail
 * every command in flight, which the retry logic then handles. */
static void
nbd_abandon (struct conn *c)
{
  int fd = c->nbd ? nbd_aio_get_fd (c->nbd) : -1;

  if (fd >= 0)
    shutdown (fd, SHUT_RDWR);
  c->broken = true;
}

const struct endpoint_ops nbd_ops = {
  .kind = "nbd",
  .connect = nbd_connect_ep,
  .disconnect = nbd_disconnect,
  .is_dead = nbd_is_dead,
  .extents = nbd_extents,
  .pread = nbd_start_pread,
  .pwrite = nbd_start_pwrite,
  .zero = nbd_start_zero,
  .flush = nbd_start_flush,
  .poll_setup = nbd_poll_setup,
  .poll_done = nbd_poll_done,
  .abandon = nbd_abandon,
};
