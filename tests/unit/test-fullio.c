/* The shared I/O helpers in common/: whole-buffer reads and writes
 * (fullio.h) under signals that interrupt them, at EOF and into a closed
 * socket; private listening unix sockets (unixsock.h); the monotonic
 * clock (monotime.h). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "fullio.h"
#include "monotime.h"
#include "tap.h"
#include "unixsock.h"

#define BIG (8u << 20)                  /* many pipe buffers */

static volatile sig_atomic_t ticks;

static void
on_alarm (int sig)
{
  ticks++;
}

struct writer {
  int fd;
  const uint8_t *buf;
  int r, err;
};

static void *
writer (void *arg)
{
  struct writer *w = arg;

  w->r = full_write (w->fd, w->buf, BIG);
  w->err = errno;
  close (w->fd);
  return NULL;
}

/* A timer signal without SA_RESTART every 200 us: reads and writes on the
 * pipe keep being interrupted (EINTR, or a short count). */
static void
test_interrupted_pipe (void)
{
  struct sigaction sa = { .sa_handler = on_alarm };     /* no SA_RESTART */
  struct itimerval it = { { 0, 200 }, { 0, 200 } };
  uint8_t *in = malloc (BIG), *out = malloc (BIG);
  struct writer w;
  pthread_t t;
  int p[2];
  ssize_t n, n2;

  if (!in || !out || pipe (p) == -1)
    abort ();
  for (size_t i = 0; i < BIG; i++)
    in[i] = (uint8_t) (i * 2654435761u >> 13);
  sigaction (SIGALRM, &sa, NULL);
  setitimer (ITIMER_REAL, &it, NULL);
  w = (struct writer) { .fd = p[1], .buf = in };
  pthread_create (&t, NULL, writer, &w);
  /* Ask for one byte more than comes: short only at EOF. */
  n = full_read (p[0], out, BIG);
  n2 = full_read (p[0], out, 1);
  pthread_join (t, NULL);
  memset (&it, 0, sizeof it);
  setitimer (ITIMER_REAL, &it, NULL);
  close (p[0]);
  ok (w.r == 0, "full_write of %u bytes into a pipe under signals (%s)",
      BIG, w.r == 0 ? "ok" : strerror (w.err));
  ok (n == (ssize_t) BIG && memcmp (in, out, BIG) == 0,
      "full_read gets every byte in order (%zd, %d signals)", n,
      (int) ticks);
  ok (ticks > 0, "the signals did arrive during the transfer");
  ok (n2 == 0, "full_read at EOF returns 0 (%zd)", n2);
  free (in);
  free (out);
}

static void
test_short_at_eof (void)
{
  char buf[100];
  int p[2];
  ssize_t n;

  if (pipe (p) == -1)
    abort ();
  full_write (p[1], "0123456789", 10);
  close (p[1]);
  n = full_read (p[0], buf, sizeof buf);
  ok (n == 10 && memcmp (buf, "0123456789", 10) == 0,
      "full_read returns what came before EOF (%zd of %zu)", n, sizeof buf);
  close (p[0]);
  errno = 0;
  ok (full_read (p[0], buf, 1) == -1 && errno == EBADF,
      "full_read of a bad fd: -1, errno %s", strerror (errno));
}

static void
test_send_closed (void)
{
  int sv[2], r, e;
  char buf[65536] = { 0 };

  /* SIGPIPE left at its default: a write() here would kill the test. */
  signal (SIGPIPE, SIG_DFL);
  if (socketpair (AF_UNIX, SOCK_STREAM, 0, sv) == -1)
    abort ();
  close (sv[1]);
  r = full_send (sv[0], buf, sizeof buf);
  e = errno;
  close (sv[0]);
  ok (r == -1 && e == EPIPE,
      "full_send to a closed peer: -1 EPIPE, no SIGPIPE (%s)", strerror (e));
}

static void
test_positional (const char *dir)
{
  char path[4096], buf[16];
  int fd;
  ssize_t n;

  snprintf (path, sizeof path, "%s/file", dir);
  fd = open (path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd == -1)
    abort ();
  ok (full_pwrite (fd, "abcdef", 6, 4096) == 0 &&
      lseek (fd, 0, SEEK_CUR) == 0,
      "full_pwrite writes at the offset, the fd's offset stays");
  n = full_pread (fd, buf, sizeof buf, 4096 + 2);
  ok (n == 4 && memcmp (buf, "cdef", 4) == 0,
      "full_pread is short only at end of file (%zd)", n);
  ok (full_pread (fd, buf, sizeof buf, 8192) == 0, "full_pread past EOF: 0");
  close (fd);
}

static bool
is_mode (const char *path, mode_t type, mode_t mode)
{
  struct stat st;

  return lstat (path, &st) == 0 && (st.st_mode & S_IFMT) == type &&
         (st.st_mode & 07777) == mode;
}

static bool
can_connect (const char *path)
{
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool r;

  strcpy (sa.sun_path, path);
  r = connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0;
  close (fd);
  return r;
}

static void
test_unixsock (const char *dir)
{
  char path[200], file[200], keep[200], lng[300];
  const char *step = NULL;
  struct stat bound, later;
  int fd, fd2, e;

  snprintf (path, sizeof path, "%s/s", dir);
  fd = unix_listen_private (path, 4, &bound, &step);
  ok (fd >= 0 && is_mode (path, S_IFSOCK, 0600) && can_connect (path),
      "unix_listen_private: a listening socket, mode 0600");
  /* Left behind as by a killed process.  (The hard link keeps its inode
   * alive, so that the new socket cannot get the same number.) */
  close (fd);
  snprintf (keep, sizeof keep, "%s/keep", dir);
  if (link (path, keep) == -1)
    abort ();
  fd = unix_listen_private (path, 4, &later, &step);
  ok (fd >= 0 && can_connect (path) && later.st_ino != bound.st_ino,
      "a stale socket at the path is replaced");
  unlink (keep);
  unix_unlink_own (path, &bound);
  ok (access (path, F_OK) == 0,
      "unix_unlink_own leaves a socket that is not its own");
  unix_unlink_own (path, &later);
  ok (access (path, F_OK) == -1, "and removes its own");
  close (fd);

  snprintf (file, sizeof file, "%s/f", dir);
  close (open (file, O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  step = NULL;
  fd = unix_listen_private (file, 4, NULL, &step);
  e = errno;
  ok (fd == -1 && e == EEXIST && step &&
      strcmp (step, "exists and is not a socket") == 0 &&
      is_mode (file, S_IFREG, 0644),
      "a file that is not a socket is refused and left alone (%s: %s)",
      step ? step : "?", strerror (e));

  memset (lng, 'x', sizeof lng - 1);
  lng[sizeof lng - 1] = 0;
  step = NULL;
  fd2 = unix_listen_private (lng, 4, NULL, &step);
  e = errno;
  ok (fd2 == -1 && e == ENAMETOOLONG && step &&
      strstr (step, "too long"), "a path too long: refused (%s)",
      step ? step : "?");
}

static void
test_monotime (void)
{
  double a = sxm_now ();
  uint64_t ns = sxm_now_ns ();
  double b = sxm_now ();

  ok (a <= b && ns / 1e9 >= a - 1e-6 && ns / 1e9 <= b + 1e-6,
      "sxm_now and sxm_now_ns read the same clock (%.9f <= %.9f <= %.9f)",
      a, ns / 1e9, b);
}

int
main (void)
{
  char dir[] = "/tmp/sxm-test-fullio.XXXXXX";
  char cmd[100];

  if (!mkdtemp (dir))
    abort ();
  test_interrupted_pipe ();
  test_short_at_eof ();
  test_send_closed ();
  test_positional (dir);
  test_unixsock (dir);
  test_monotime ();
  snprintf (cmd, sizeof cmd, "rm -rf %s", dir);
  if (system (cmd) != 0)
    printf ("# could not remove %s\n", dir);
  return tap_done ();
}
