/* NBD endpoints through libnbd: nbd://, nbds://, nbd+unix://, nbds+unix://
 * (and anything else libnbd's nbd_connect_uri accepts).  TLS comes from the
 * URI: nbds:// requires it, tls-psk-file= or tls-certificates= name the
 * credentials.  Requests are libnbd async commands whose completion
 * callback only queues the request on its worker.  Connecting, probing,
 * polling and block status walks are common/nbdconnect.c's, shared with
 * the mirror filter. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libnbd.h>

#include "copy.h"
#include "monotime.h"
#include "nbdconnect.h"
#include "nbdpolicy.h"

/* One worker's connection: its libnbd handle. */
struct nbdep_conn {
  struct conn c;
  struct nbd_handle *h;
  unsigned inflight;            /* commands started, not completed */
};

static inline struct nbdep_conn *
to_nbdep (struct conn *c)
{
  return container_of (c, struct nbdep_conn, c);
}

/* Connect asynchronously so that a server that accepts but never answers
 * (a stopped process) costs at most the --timeout.  (sxm_nbd_prepare:
 * buffers are not zeroed before reads -- that memset was 5% of a copy's
 * CPU -- and a TLS identity without getlogin.) */
static int
nbdep_connect (struct conn *c)
{
  struct nbdep_conn *n = to_nbdep (c);

  n->h = sxm_nbd_connect (c->ep->is_dest ? "dst" : "src", c->ep->name,
                          c->ep->timeout, c->error, sizeof c->error);
  n->inflight = 0;
  return n->h ? 0 : -1;
}

static void
nbdep_disconnect (struct conn *c)
{
  struct nbdep_conn *n = to_nbdep (c);

  sxm_nbd_close (n->h);
  n->h = NULL;
}

static bool
nbdep_is_dead (struct conn *c)
{
  return sxm_nbd_is_dead (to_nbdep (c)->h);
}

/* Shutting the socket down makes libnbd see the connection die and fail
 * every command in flight, which the retry logic then handles. */
static void
nbdep_abandon (struct conn *c)
{
  sxm_nbd_abandon (to_nbdep (c)->h);
  c->broken = true;
}

/* One block status request of a walk, waited for with the --timeout (a
 * plain synchronous call would hang for ever on a server that stopped
 * answering).  Completions of other requests in flight on the handle are
 * delivered meanwhile.  0 or an errno. */
struct walk_req {
  struct conn *c;
  struct sxm_nbd_walk *w;
};

static int
block_status_timed (uint64_t len, uint64_t off, void *arg)
{
  struct walk_req *q = arg;
  struct nbd_handle *h = to_nbdep (q->c)->h;
  double deadline = q->c->ep->timeout > 0 ? sxm_now () + q->c->ep->timeout
                                          : 0;
  int64_t cookie;
  int r;

  cookie = nbd_aio_block_status (h, len, off, sxm_nbd_walk_callback (q->w),
                                 NBD_NULL_COMPLETION, 0);
  if (cookie == -1)
    return sxm_nbd_errno (h, EIO);
  while ((r = nbd_aio_command_completed (h, cookie)) == 0) {
    int p = sxm_nbd_poll (h, deadline);
    if (p == 0) {
      nbdep_abandon (q->c);
      return ETIMEDOUT;
    }
    if (p == -1)
      return sxm_nbd_errno (h, EIO);
  }
  if (r == -1)
    return nbd_get_errno () ? nbd_get_errno () : EIO;
  return 0;
}

static int
nbdep_extents (struct conn *c, uint64_t off, uint64_t len,
               extent_fn fn, void *opaque)
{
  struct sxm_nbd_walk w = { .pos = off, .end = off + len, .fn = fn,
                            .opaque = opaque };
  struct walk_req q = { .c = c, .w = &w };
  int e;

  if (!c->ep->has_extents)
    return fn (opaque, off, len, false);
  e = sxm_nbd_walk (&w, block_status_timed, &q);
  if (e) {
    snprintf (c->error, sizeof c->error, "%s", sxm_nbd_error ());
    errno = e;
    return -1;
  }
  return w.rc;
}

static int
nbdep_done_cb (void *opaque, int *error)
{
  struct req *r = opaque;

  to_nbdep (r->conn)->inflight--;
  req_complete (r, *error);
  return 1;
}

#define COMPLETION(r) \
  ((nbd_completion_callback) { .callback = nbdep_done_cb, .user_data = (r) })

/* libnbd does not call the completion callback of a command it refused to
 * start; the caller completes it. */
static int
started (struct nbdep_conn *n, int64_t cookie)
{
  if (cookie == -1) {
    errno = sxm_nbd_errno (n->h, EIO);
    return -1;
  }
  n->inflight++;
  return 0;
}

static int
nbdep_pread (struct conn *c, struct req *r)
{
  struct nbdep_conn *n = to_nbdep (c);

  return started (n, nbd_aio_pread (n->h, r->data, r->len, r->off,
                                    COMPLETION (r), 0));
}

static int
nbdep_pwrite (struct conn *c, struct req *r)
{
  struct nbdep_conn *n = to_nbdep (c);

  return started (n, nbd_aio_pwrite (n->h, r->data, r->len, r->off,
                                     COMPLETION (r), 0));
}

static int
nbdep_zero (struct conn *c, struct req *r)
{
  struct nbdep_conn *n = to_nbdep (c);
  uint32_t flags = r->fast_zero ? LIBNBD_CMD_FLAG_FAST_ZERO : 0;

  return started (n, nbd_aio_zero (n->h, r->len, r->off, COMPLETION (r),
                                   flags));
}

static int
nbdep_flush (struct conn *c, struct req *r)
{
  struct nbdep_conn *n = to_nbdep (c);

  if (!nbd_can_flush (n->h)) {
    req_complete (r, 0);
    return 0;
  }
  return started (n, nbd_aio_flush (n->h, COMPLETION (r), 0));
}

/* Only ever sent to the mirror filter's copy export (see the op's
 * contract in copy.h): anywhere else a cache request copies nothing. */
static int
nbdep_relay (struct conn *c, struct req *r)
{
  struct nbdep_conn *n = to_nbdep (c);

  return started (n, nbd_aio_cache (n->h, r->len, r->off, COMPLETION (r),
                                    0));
}

static int
nbdep_poll_setup (struct conn *c, struct pollfd *p)
{
  struct nbdep_conn *n = to_nbdep (c);

  if (n->h == NULL || n->inflight == 0)
    return 0;
  p->fd = nbd_aio_get_fd (n->h);
  p->events = sxm_nbd_poll_events (n->h);
  p->revents = 0;
  return p->fd >= 0;
}

/* A dead connection completes every command in flight with an error,
 * which is how the loop learns of it. */
static int
nbdep_poll_done (struct conn *c, short revents)
{
  return sxm_nbd_notify (to_nbdep (c)->h, revents);
}

static const struct endpoint_ops nbdep_ops = {
  .kind = "nbd",
  .conn_size = sizeof (struct nbdep_conn),
  .connect = nbdep_connect,
  .disconnect = nbdep_disconnect,
  .is_dead = nbdep_is_dead,
  .extents = nbdep_extents,
  .pread = nbdep_pread,
  .pwrite = nbdep_pwrite,
  .zero = nbdep_zero,
  .flush = nbdep_flush,
  .relay = nbdep_relay,
  .poll_setup = nbdep_poll_setup,
  .poll_done = nbdep_poll_done,
  .abandon = nbdep_abandon,
};

/* Security defaults (common/nbdpolicy.c): plaintext NBD over TCP only to
 * loopback unless --insecure; TLS key material must not be readable by
 * others.  Then what the server offers, from the first connection. */
struct endpoint *
endpoint_open_nbd (const struct endpoint *proto, struct conn **first)
{
  struct endpoint *ep;
  struct sxm_nbd_info ni;

  if (nbd_uri_policy (proto->name, proto->insecure) == -1)
    return NULL;
  ep = endpoint_alloc (proto, sizeof *ep, &nbdep_ops);
  if (!ep)
    return NULL;
  *first = endpoint_first_conn (ep);
  if (!*first) {
    free (ep);
    return NULL;
  }
  if (sxm_nbd_probe (to_nbdep (*first)->h, &ni) == -1) {
    fprintf (stderr, "sxm-copy: %s: %s\n", ep->name, sxm_nbd_error ());
    conn_free (*first);
    *first = NULL;
    free (ep);
    return NULL;
  }
  ep->size = ni.size;
  ep->multi_conn = ni.multi_conn;
  ep->readonly = ni.readonly;
  ep->has_extents = ni.has_extents;
  ep->can_zero = ni.can_zero;
  ep->can_fast_zero = ni.can_fast_zero;
  return ep;
}
