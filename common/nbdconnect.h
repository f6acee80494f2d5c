/* libnbd, the same way in every sxm program that talks to an NBD server
 * (sxm-copy's NBD endpoints, the mirror filter's destination connections,
 * xenmem's guest disks): preparing and connecting a handle, probing what
 * the server offers, driving a handle's state machine against a deadline,
 * telling a dead handle, and walking block status. */
#ifndef SXM_NBDCONNECT_H
#define SXM_NBDCONNECT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libnbd.h>

/* Settings every sxm connection wants, before nbd_[aio_]connect_uri: the
 * handle named NAME (libnbd's debug lines), pread buffers not zeroed first
 * (they are only used after a successful read), base:allocation requested,
 * local files allowed in the URI (tls-psk-file=, socket=), and a TLS
 * identity when the URI names a PSK file but no user: the name of the user
 * running the program.  (Without one libnbd asks getlogin_r(), which fails
 * wherever there is no login session -- services, containers, cron -- with
 * "getlogin_r: No such device or address".)  0, or -1 with libnbd's error
 * set (nbd_get_error). */
int sxm_nbd_prepare (struct nbd_handle *h, const char *name, const char *uri);

/* A new handle named NAME, prepared (sxm_nbd_prepare) and connected to URI
 * asynchronously, so that a server that accepts but never answers (a
 * stopped process) costs at most TIMEOUT seconds (<= 0: no limit).  The
 * ready handle, or NULL with errno set and the reason in ERR (ERRLEN
 * bytes): libnbd's message, or "no answer within N s" (errno ETIMEDOUT). */
struct nbd_handle *sxm_nbd_connect (const char *name, const char *uri,
                                    double timeout, char *err, size_t errlen);

/* Disconnect politely (NBD_CMD_DISC) if H is ready, waiting at most a
 * second for the server to close (a stalled server gets no longer), then
 * nbd_close.  NULL is ignored. */
void sxm_nbd_close (struct nbd_handle *h);

/* What the server said in the handshake. */
struct sxm_nbd_info {
  uint64_t size;
  bool readonly, can_flush, can_fua, can_zero, can_fast_zero, multi_conn;
  bool has_extents;             /* base:allocation negotiated */
};

/* Fills INFO from connected H: 0, or -1 (the size unknown) with libnbd's
 * error set. */
int sxm_nbd_probe (struct nbd_handle *h, struct sxm_nbd_info *info);

/* libnbd's message for the last call that failed in this thread; never
 * NULL. */
const char *sxm_nbd_error (void);

/* H cannot carry a request any more (NULL, dead or closed).  One call per
 * state, and each state final: asking "ready or processing?" instead, in
 * two calls, could answer "neither" while a reply moved the handle from
 * processing to ready in between. */
bool sxm_nbd_is_dead (struct nbd_handle *h);

/* The errno of a libnbd call on H that just failed: ENOTCONN on a dead
 * handle (where libnbd says "invalid state", EINVAL, which would look
 * permanent), else libnbd's errno, else DEFAULT_ERR. */
int sxm_nbd_errno (struct nbd_handle *h, int default_err);

/* One nbd_poll of H, bounded by DEADLINE (an sxm_now () time; 0: none):
 * 1 when the caller should look at the handle again (something happened,
 * or a slice of the wait passed), 0 once DEADLINE has passed, -1 with
 * libnbd's error set. */
int sxm_nbd_poll (struct nbd_handle *h, double deadline);

/* The poll(2) events H's state machine waits for (POLLIN, POLLOUT). */
short sxm_nbd_poll_events (struct nbd_handle *h);

/* Tell H what poll(2) saw on its socket (REVENTS).  A dead connection
 * fails every command in flight: their completion callbacks run inside
 * this call.  nbd_aio_notify_*'s result (0 when nothing was to do). */
int sxm_nbd_notify (struct nbd_handle *h, short revents);

/* Give up on a server that stopped answering: the socket is shut down, so
 * that libnbd sees the connection die and fails every command in flight
 * (their callbacks run), and nothing waits for ever. */
void sxm_nbd_abandon (struct nbd_handle *h);

/* ---- walking block status ---------------------------------------------- */

/* A walk over [pos, end) in base:allocation extents.  FN is called once
 * per extent, in order, clipped to the range ('zero': the extent reads as
 * zeros); a non-zero return stops the walk and is kept in rc. */
struct sxm_nbd_walk {
  uint64_t pos, end;            /* the next offset to report; the end */
  int (*fn) (void *opaque, uint64_t off, uint64_t len, bool zero);
  void *opaque;
  int rc;                       /* FN's non-zero return, or 0 */
  bool stalled;                 /* the server reported nothing at pos */
};

/* The walk's block status callback (libnbd's nbd_extent_callback), and
 * the callback struct to pass to nbd_aio_block_status with W as its
 * user_data. */
int sxm_nbd_walk_cb (void *w, const char *metacontext, uint64_t offset,
                     uint32_t *entries, size_t nr, int *error);

static inline nbd_extent_callback
sxm_nbd_walk_callback (struct sxm_nbd_walk *w)
{
  return (nbd_extent_callback) { .callback = sxm_nbd_walk_cb, .user_data = w };
}

/* Walk W to its end (or until FN stops it) in block status requests of at
 * most 1 GiB: REQUEST (LEN, OFF, ARG) must issue one for [OFF, OFF+LEN)
 * with sxm_nbd_walk_callback (W) and wait for it, and return 0 or an
 * errno.  0 (W->rc says whether FN stopped it), REQUEST's errno, or EPROTO
 * with W->stalled set when a reply reported nothing at W->pos. */
int sxm_nbd_walk (struct sxm_nbd_walk *w,
                  int (*request) (uint64_t len, uint64_t off, void *arg),
                  void *arg);

#endif
