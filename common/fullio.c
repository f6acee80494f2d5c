/* Whole-buffer reads and writes (fullio.h).
 *
 * One loop for the reads and one for the writes; the system call is the
 * only thing that differs between the variants. */
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fullio.h"

enum how { PLAIN, POSITIONAL, SOCKET };

static ssize_t
full_in (enum how how, int fd, void *buf, size_t n, uint64_t offset)
{
  char *p = buf;
  size_t done = 0;

  while (done < n) {
    ssize_t r = how == POSITIONAL
      ? pread (fd, p + done, n - done, (off_t) (offset + done))
      : read (fd, p + done, n - done);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    if (r == 0)                 /* end of file */
      break;
    done += r;
  }
  return done;
}

static int
full_out (enum how how, int fd, const void *buf, size_t n, uint64_t offset)
{
  const char *p = buf;
  size_t done = 0;

  while (done < n) {
    ssize_t r;

    switch (how) {
    case POSITIONAL:
      r = pwrite (fd, p + done, n - done, (off_t) (offset + done));
      break;
    case SOCKET:
      r = send (fd, p + done, n - done, MSG_NOSIGNAL);
      break;
    default:
      r = write (fd, p + done, n - done);
      break;
    }
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    /* write(2) returns 0 for a non-zero count on nothing sxm writes to;
     * should it ever, retrying would spin. */
    if (r == 0) {
      errno = EIO;
      return -1;
    }
    done += r;
  }
  return 0;
}

ssize_t
full_read (int fd, void *buf, size_t n)
{
  return full_in (PLAIN, fd, buf, n, 0);
}

ssize_t
full_pread (int fd, void *buf, size_t n, uint64_t offset)
{
  return full_in (POSITIONAL, fd, buf, n, offset);
}

int
full_write (int fd, const void *buf, size_t n)
{
  return full_out (PLAIN, fd, buf, n, 0);
}

int
full_pwrite (int fd, const void *buf, size_t n, uint64_t offset)
{
  return full_out (POSITIONAL, fd, buf, n, offset);
}

int
full_send (int fd, const void *buf, size_t n)
{
  return full_out (SOCKET, fd, buf, n, 0);
}
