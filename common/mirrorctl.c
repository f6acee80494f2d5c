#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "fullio.h"
#include "log.h"
#include "mirrorctl.h"
#include "monotime.h"

int
mirrorctl_connect (const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd;

  if (strlen (path) >= sizeof sa.sun_path) {
    sxm_error ("%s: path too long for a unix socket", path);
    return -1;
  }
  strcpy (sa.sun_path, path);
  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    sxm_error ("socket: %s", strerror (errno));
    return -1;
  }
  if (connect (fd, (struct sockaddr *) &sa, sizeof sa) == -1) {
    sxm_error ("%s: cannot connect to the control socket: %s", path,
               strerror (errno));
    close (fd);
    return -1;
  }
  return fd;
}

int
mirrorctl_call (int fd, const char *request, double timeout,
                struct json_obj *reply, char **raw)
{
  size_t n = strlen (request), have = 0;
  char *line = malloc (n + 2), *buf;
  double deadline = sxm_now () + timeout;
  char err[256];

  if (!line) {
    sxm_error ("out of memory");
    return -1;
  }
  memcpy (line, request, n);
  line[n] = '\n';
  if (full_send (fd, line, n + 1) == -1) {
    sxm_error ("control socket: send: %s", strerror (errno));
    free (line);
    return -1;
  }
  free (line);
  buf = malloc (JSON_MAX_LINE + 1);
  if (!buf) {
    sxm_error ("out of memory");
    return -1;
  }
  /* Read byte-wise up to the newline: replies are short and this keeps
   * nothing of a next reply in a buffer we would lose.  (Not full_read:
   * the length is not known, and the wait is bounded by TIMEOUT.) */
  for (;;) {
    struct pollfd p = { .fd = fd, .events = POLLIN };
    int ms = -1;
    ssize_t r;
    if (timeout > 0) {
      double left = deadline - sxm_now ();
      if (left <= 0) {
        sxm_error ("control socket: no reply within %.0f s", timeout);
        free (buf);
        return -1;
      }
      ms = (int) (left * 1000) + 1;
    }
    if (poll (&p, 1, ms) == -1) {
      if (errno == EINTR)
        continue;
      sxm_error ("control socket: poll: %s", strerror (errno));
      free (buf);
      return -1;
    }
    if (p.revents == 0)
      continue;
    r = recv (fd, buf + have, 1, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      sxm_error ("control socket: connection closed before a reply");
      free (buf);
      return -1;
    }
    if (buf[have] == '\n')
      break;
    if (++have == JSON_MAX_LINE) {
      sxm_error ("control socket: reply too long");
      free (buf);
      return -1;
    }
  }
  buf[have] = 0;
  if (json_parse (buf, have, reply, err, sizeof err) == -1) {
    sxm_error ("control socket: bad reply: %s", err);
    free (buf);
    return -1;
  }
  if (raw)
    *raw = buf;
  else
    free (buf);
  return 0;
}
