/* Private listening unix sockets (unixsock.h). */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "unixsock.h"

int
unix_listen_private (const char *path, int backlog, struct stat *bound,
                     const char **step)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  struct stat st;
  const char *dummy;
  mode_t old;
  int fd, r, err;

  if (!step)
    step = &dummy;
  if (strlen (path) >= sizeof sa.sun_path) {
    *step = "path too long for a unix socket";
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy (sa.sun_path, path);

  /* A socket left by an earlier run is stale and goes; anything else at
   * that path is not ours to remove.  (If lstat fails, bind says why.) */
  if (lstat (path, &st) == 0) {
    if (!S_ISSOCK (st.st_mode)) {
      *step = "exists and is not a socket";
      errno = EEXIST;
      return -1;
    }
    if (unlink (path) == -1) {
      *step = "removing the stale socket";
      return -1;
    }
  }

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1) {
    *step = "socket";
    return -1;
  }
  /* Mode 0600 from the start: a chmod after bind would leave a window in
   * which anyone could connect.  umask is per process, which is fine
   * while nothing else in it creates files at this moment. */
  old = umask (0177);
  r = bind (fd, (struct sockaddr *) &sa, sizeof sa);
  err = errno;
  umask (old);
  if (r == -1) {
    *step = "bind";
    close (fd);
    errno = err;
    return -1;
  }
  if (bound && stat (path, bound) == -1) {
    *step = "stat";
    goto unbind;
  }
  if (listen (fd, backlog) == -1) {
    *step = "listen";
    goto unbind;
  }
  return fd;

 unbind:
  err = errno;
  close (fd);
  unlink (path);                /* bound a moment ago: ours */
  errno = err;
  return -1;
}

void
unix_unlink_own (const char *path, const struct stat *bound)
{
  struct stat st;

  if (stat (path, &st) == 0 && st.st_ino == bound->st_ino &&
      st.st_dev == bound->st_dev)
    unlink (path);
}
