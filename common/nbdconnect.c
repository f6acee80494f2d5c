/* libnbd the same way everywhere: see nbdconnect.h. */

#include <errno.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "monotime.h"
#include "nbdconnect.h"
#include "nbdpolicy.h"          /* nbd_uri_query */

/* The user part of URI's authority ("nbds://alice@host/..."), malloc'd,
 * or NULL.  Percent-encoding is left alone: libnbd decodes it itself when
 * the user is in the URI, and then our choice is not used. */
static char *
uri_user (const char *uri)
{
  const char *a = strstr (uri, "://"), *end, *at;

  if (!a)
    return NULL;
  a += 3;
  end = a + strcspn (a, "/?#");
  at = memchr (a, '@', end - a);
  return at ? strndup (a, at - a) : NULL;
}

int
sxm_nbd_prepare (struct nbd_handle *h, const char *name, const char *uri)
{
  char *psk;

  if (nbd_set_handle_name (h, name) == -1 ||
      nbd_set_pread_initialize (h, false) == -1 ||
      nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_set_uri_allow_local_file (h, true) == -1)
    return -1;
  /* A PSK file but no user in the URI: the running user's name. */
  psk = nbd_uri_query (uri, "tls-psk-file");
  if (psk) {
    char *user = uri_user (uri);
    struct passwd *pw = user ? NULL : getpwuid (geteuid ());
    free (psk);
    free (user);
    if (pw && pw->pw_name && nbd_set_tls_username (h, pw->pw_name) == -1)
      return -1;
  }
  return 0;
}

const char *
sxm_nbd_error (void)
{
  const char *e = nbd_get_error ();
  return e ? e : "unknown libnbd error";
}

bool
sxm_nbd_is_dead (struct nbd_handle *h)
{
  return h == NULL || nbd_aio_is_dead (h) || nbd_aio_is_closed (h);
}

int
sxm_nbd_errno (struct nbd_handle *h, int default_err)
{
  int e;

  if (sxm_nbd_is_dead (h))
    return ENOTCONN;
  e = nbd_get_errno ();
  return e ? e : default_err;
}

int
sxm_nbd_poll (struct nbd_handle *h, double deadline)
{
  int ms = -1;

  if (deadline > 0) {
    double left = deadline - sxm_now ();
    if (left <= 0)
      return 0;
    /* (A "no limit" given as a huge timeout must not overflow an int.) */
    ms = left < 3600 ? (int) (left * 1000) + 1 : 3600 * 1000;
  }
  return nbd_poll (h, ms) == -1 ? -1 : 1;
}

short
sxm_nbd_poll_events (struct nbd_handle *h)
{
  unsigned dir = nbd_aio_get_direction (h);
  short events = 0;

  if (dir & LIBNBD_AIO_DIRECTION_READ)
    events |= POLLIN;
  if (dir & LIBNBD_AIO_DIRECTION_WRITE)
    events |= POLLOUT;
  return events;
}

int
sxm_nbd_notify (struct nbd_handle *h, short revents)
{
  if (revents & (POLLIN | POLLHUP | POLLERR))
    return nbd_aio_notify_read (h);
  if (revents & POLLOUT)
    return nbd_aio_notify_write (h);
  return 0;
}

void
sxm_nbd_abandon (struct nbd_handle *h)
{
  int fd = h ? nbd_aio_get_fd (h) : -1;

  if (fd >= 0)
    shutdown (fd, SHUT_RDWR);
}

struct nbd_handle *
sxm_nbd_connect (const char *name, const char *uri, double timeout,
                 char *err, size_t errlen)
{
  struct nbd_handle *h = nbd_create ();
  double deadline = timeout > 0 ? sxm_now () + timeout : 0;
  int e;

  if (h == NULL)
    goto fail;
  if (sxm_nbd_prepare (h, name, uri) == -1 ||
      nbd_aio_connect_uri (h, uri) == -1)
    goto fail;
  while (nbd_aio_is_connecting (h)) {
    int r = sxm_nbd_poll (h, deadline);
    if (r == 0) {
      nbd_close (h);
      snprintf (err, errlen, "no answer within %.0f s", timeout);
      errno = ETIMEDOUT;
      return NULL;
    }
    if (r == -1)
      goto fail;
  }
  if (nbd_aio_is_ready (h))
    return h;
 fail:
  snprintf (err, errlen, "%s", sxm_nbd_error ());
  e = nbd_get_errno () ? nbd_get_errno () : EIO;
  nbd_close (h);
  errno = e;
  return NULL;
}

void
sxm_nbd_close (struct nbd_handle *h)
{
  if (h == NULL)
    return;
  if (nbd_aio_is_ready (h) && nbd_aio_disconnect (h, 0) == 0) {
    double end = sxm_now () + 1;
    while (!sxm_nbd_is_dead (h) && sxm_nbd_poll (h, end) == 1)
      ;
  }
  nbd_close (h);
}

int
sxm_nbd_probe (struct nbd_handle *h, struct sxm_nbd_info *info)
{
  int64_t size = nbd_get_size (h);

  if (size < 0)
    return -1;
  info->size = size;
  info->readonly = nbd_is_read_only (h) == 1;
  info->can_flush = nbd_can_flush (h) == 1;
  info->can_fua = nbd_can_fua (h) == 1;
  info->can_zero = nbd_can_zero (h) == 1;
  info->can_fast_zero = nbd_can_fast_zero (h) == 1;
  info->multi_conn = nbd_can_multi_conn (h) == 1;
  info->has_extents =
    nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  return 0;
}

int
sxm_nbd_walk_cb (void *opaque, const char *metacontext, uint64_t offset,
                 uint32_t *entries, size_t nr, int *error)
{
  struct sxm_nbd_walk *w = opaque;

  if (strcmp (metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || *error)
    return 0;
  for (size_t i = 0; i + 1 < nr && w->pos < w->end && w->rc == 0; i += 2) {
    uint64_t len = entries[i];
    if (len == 0)
      break;
    if (len > w->end - w->pos)
      len = w->end - w->pos;
    w->rc = w->fn (w->opaque, w->pos, len,
                   (entries[i + 1] & LIBNBD_STATE_ZERO) != 0);
    w->pos += len;
  }
  return 0;
}

int
sxm_nbd_walk (struct sxm_nbd_walk *w,
              int (*request) (uint64_t len, uint64_t off, void *arg),
              void *arg)
{
  w->rc = 0;
  w->stalled = false;
  while (w->pos < w->end && w->rc == 0) {
    uint64_t before = w->pos, n = w->end - w->pos;
    int e;
    if (n > (1u << 30))
      n = 1u << 30;
    e = request (n, w->pos, arg);
    if (e)
      return e;
    if (w->pos == before) {     /* a server that answers nothing */
      w->stalled = true;
      return EPROTO;
    }
  }
  return 0;
}
