/* xenmem's VM monitor (monitor.h; the protocol is in doc/xenmem.pod).
 *
 * One request at a time, in this thread: a migration is the VM's one
 * long job and nothing else may touch the guest meanwhile, so a second
 * client simply waits in the listen queue.  A signal (SIGTERM, SIGINT)
 * is noted by its handler and acted on between requests; every request
 * is bounded by its own timeouts.
 *
 * `send` runs with the client's stdout, stderr and current directory in
 * place of ours (dup2 onto fds 1 and 2, fchdir), so that its relative
 * paths (--json=FILE, unix:ADDR, --tls-psk) and its output are those of
 * a `xenmem send` run where the client runs; ours come back before the
 * reply. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "fullio.h"
#include "jsonline.h"
#include "log.h"
#include "monitor.h"
#include "unixsock.h"

/* A client has this long to send its whole request after connecting. */
#define REQUEST_TIMEOUT_S 10
/* A reply line longer than this is not one of ours. */
#define REPLY_MAX (1u << 20)

struct monitor {
  const char *path;
  const struct xm_backend_ops *b;
  struct xm_source *s;          /* NULL once the guest is gone */
  struct xm_vbd **disks;
  unsigned ndisks;
  bool quiet;
  bool in_doubt;                /* paused after a send that exited 3 */
  int lfd;
  dev_t dev;                    /* the socket file we made: */
  ino_t ino;                    /* only that one is removed at the end */
};

struct request {
  int argc;
  char **argv;                  /* argc pointers into buf, then NULL */
  char *buf;
  int fds[3];                   /* client's stdout, stderr, cwd; or -1 */
  int nfds;
};

/* Our own fds 1 and 2 and directory while a client's are in place. */
struct saved {
  int out, err, cwd;
};

enum outcome { GO_ON, GUEST_GONE };

static int sig_pipe[2] = { -1, -1 };
static volatile sig_atomic_t signalled;

static void
on_signal (int sig)
{
  int e = errno;
  ssize_t r;

  signalled = sig;
  r = write (sig_pipe[1], "", 1);      /* wake poll; full pipe: awake */
  (void) r;
  errno = e;
}

/* ---- the socket ---------------------------------------------------------- */

static bool
fill_addr (struct sockaddr_un *sa, const char *path)
{
  memset (sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen (path) >= sizeof sa->sun_path)
    return false;
  strcpy (sa->sun_path, path);
  return true;
}

/* Someone accepts at PATH. */
static bool
socket_alive (const char *path)
{
  struct sockaddr_un sa;
  int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  bool alive;

  if (fd == -1 || !fill_addr (&sa, path)) {
    if (fd >= 0)
      close (fd);
    return false;
  }
  alive = connect (fd, (struct sockaddr *) &sa, sizeof sa) == 0;
  close (fd);
  return alive;
}

/* The temporary name PATH is bound under, in TMP (sun_path sized). */
static int
tmp_name (const char *path, char *tmp, size_t len)
{
  if (snprintf (tmp, len, "%s.%ld.tmp", path, (long) getpid ()) >=
      (int) len) {
    sxm_error ("monitor %s: the path is too long for a unix socket (with "
               "its temporary name it must fit in %zu bytes)", path,
               len - 1);
    return -1;
  }
  return 0;
}

int
xm_monitor_usable (const char *path)
{
  struct sockaddr_un sa;
  char tmp[sizeof sa.sun_path];
  struct stat st;

  if (tmp_name (path, tmp, sizeof tmp) == -1)
    return -1;
  if (lstat (path, &st) == 0) {
    if (!S_ISSOCK (st.st_mode)) {
      sxm_error ("monitor %s: something that is not a socket is there",
                 path);
      return -1;
    }
    if (socket_alive (path)) {
      sxm_error ("monitor %s: another process serves that socket", path);
      return -1;
    }
    /* A stale socket: the rename replaces it. */
  }
  return 0;
}

/* Bind and listen under a temporary name in the same directory, then
 * rename() it to PATH: a client that sees PATH can connect at once (a
 * bound socket file exists a moment before listen, and a connect in that
 * moment is refused).  The rename is why this is not simply
 * unix_listen_private (PATH). */
static int
monitor_listen (struct monitor *m)
{
  struct sockaddr_un sa;
  char tmp[sizeof sa.sun_path];
  struct stat st;
  const char *step;
  int fd;

  if (xm_monitor_usable (m->path) == -1 ||
      tmp_name (m->path, tmp, sizeof tmp) == -1)
    return -1;
  fd = unix_listen_private (tmp, 16, &st, &step);
  if (fd == -1) {
    sxm_error ("monitor %s: setting up %s: %s: %m", m->path, tmp, step);
    return -1;
  }
  if (rename (tmp, m->path) == -1) {
    sxm_error ("monitor %s: setting up %s: %m", m->path, tmp);
    unlink (tmp);
    close (fd);
    return -1;
  }
  m->dev = st.st_dev;
  m->ino = st.st_ino;
  m->lfd = fd;
  return 0;
}

static void
monitor_unlink (struct monitor *m)
{
  struct stat st;

  if (m->lfd >= 0 && lstat (m->path, &st) == 0 && st.st_dev == m->dev &&
      st.st_ino == m->ino)
    unlink (m->path);
}

/* ---- requests ------------------------------------------------------------ */

/* Read LEN bytes from FD, keeping up to 3 fds passed along with them in
 * RQ (any more are closed).  1 done, 0 EOF before the first byte, -1
 * with *WHY set. */
static int
recv_all (int fd, void *buf, size_t len, struct request *rq, bool eof_ok,
          const char **why)
{
  size_t got = 0;

  while (got < len) {
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE (4 * sizeof (int))];
    } u;
    struct iovec iov = { (char *) buf + got, len - got };
    struct msghdr mh = {
      .msg_iov = &iov, .msg_iovlen = 1,
      .msg_control = u.b, .msg_controllen = sizeof u.b,
    };
    ssize_t r = recvmsg (fd, &mh, MSG_CMSG_CLOEXEC);

    if (r == -1) {
      if (errno == EINTR)
        continue;
      *why = errno == EAGAIN || errno == EWOULDBLOCK
        ? "the request did not arrive in time" : "reading the request failed";
      return -1;
    }
    for (struct cmsghdr *c = CMSG_FIRSTHDR (&mh); c; c = CMSG_NXTHDR (&mh, c))
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        size_t n = (c->cmsg_len - CMSG_LEN (0)) / sizeof (int);
        for (size_t i = 0; i < n; i++) {
          int f;
          memcpy (&f, CMSG_DATA (c) + i * sizeof f, sizeof f);
          if (rq->nfds < 3)
            rq->fds[rq->nfds++] = f;
          else
            close (f);
        }
      }
    if (mh.msg_flags & MSG_CTRUNC) {
      *why = "more file descriptors than the three expected";
      return -1;
    }
    if (r == 0) {
      if (got == 0 && eof_ok)
        return 0;
      *why = "the request ends early";
      return -1;
    }
    got += r;
  }
  return 1;
}

static uint32_t
get_le32 (const uint8_t *p)
{
  return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t) p[3] << 24;
}

static void
request_free (struct request *rq)
{
  for (int i = 0; i < rq->nfds; i++)
    close (rq->fds[i]);
  rq->nfds = 0;
  free (rq->argv);
  free (rq->buf);
}

/* 1 a request, 0 the client left without one, -1 a bad one (*WHY). */
static int
request_read (int fd, struct request *rq, const char **why)
{
  uint8_t n4[4];
  uint32_t argc;
  size_t used = 0, cap = 0;
  uint32_t *lens = NULL;
  int r;

  memset (rq, 0, sizeof *rq);
  r = recv_all (fd, n4, 4, rq, true, why);
  if (r <= 0)
    return r;
  argc = get_le32 (n4);
  if (argc < 1 || argc > XM_MONITOR_MAX_ARGS) {
    *why = "argc must be 1 to 256";
    return -1;
  }
  lens = calloc (argc, sizeof *lens);
  rq->argv = calloc (argc + 1, sizeof *rq->argv);
  if (!lens || !rq->argv) {
    free (lens);
    *why = "out of memory";
    return -1;
  }
  /* Lengths and bytes interleave; collect each argument NUL-terminated in
   * one buffer, then point argv into it. */
  for (uint32_t i = 0; i < argc; i++) {
    if (recv_all (fd, n4, 4, rq, false, why) == -1)
      goto bad;
    lens[i] = get_le32 (n4);
    if (lens[i] > XM_MONITOR_MAX_ARG) {
      *why = "an argument is longer than 4096 bytes";
      goto bad;
    }
    if (used + lens[i] + 1 > cap) {
      size_t ncap = (used + lens[i] + 1) * 2;
      char *nb = realloc (rq->buf, ncap);
      if (!nb) {
        *why = "out of memory";
        goto bad;
      }
      rq->buf = nb;
      cap = ncap;
    }
    if (lens[i] && recv_all (fd, rq->buf + used, lens[i], rq, false,
                             why) == -1)
      goto bad;
    if (memchr (rq->buf + used, 0, lens[i])) {
      *why = "an argument holds a NUL byte";
      goto bad;
    }
    rq->buf[used + lens[i]] = 0;
    used += lens[i] + 1;
  }
  used = 0;
  for (uint32_t i = 0; i < argc; i++) {
    rq->argv[i] = rq->buf + used;
    used += lens[i] + 1;
  }
  rq->argc = argc;
  free (lens);
  if (rq->nfds != 0 && rq->nfds != 3) {
    *why = "a request passes no fds or three (stdout, stderr, cwd)";
    return -1;
  }
  if (rq->nfds == 3) {
    struct stat st;
    if (fstat (rq->fds[2], &st) == -1 || !S_ISDIR (st.st_mode)) {
      *why = "the third fd passed is not a directory";
      return -1;
    }
  }
  return 1;

 bad:
  free (lens);
  return -1;
}

static void
restore (struct saved *sv)
{
  fflush (stdout);
  fflush (stderr);
  /* Our fds 1 and 2 may have been closed to begin with: then they are
   * again, rather than left pointing at the client's. */
  if (sv->out >= 0)
    dup2 (sv->out, 1);
  else
    close (1);
  if (sv->err >= 0)
    dup2 (sv->err, 2);
  else
    close (2);
  if (fchdir (sv->cwd) == -1)
    sxm_error ("monitor: cannot return to this process's directory: %m");
  if (sv->out >= 0)
    close (sv->out);
  if (sv->err >= 0)
    close (sv->err);
  close (sv->cwd);
}

/* The client's fds 1, 2 and directory in place of ours. */
static int
redirect (const struct request *rq, struct saved *sv)
{
  fflush (stdout);
  fflush (stderr);
  sv->out = fcntl (1, F_DUPFD_CLOEXEC, 3);
  sv->err = fcntl (2, F_DUPFD_CLOEXEC, 3);
  sv->cwd = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (sv->cwd == -1) {
    sxm_error ("monitor: cannot hold on to this process's directory: %m");
    goto fail;
  }
  if (fchdir (rq->fds[2]) == -1) {
    sxm_error ("monitor: cannot change to the client's directory: %m");
    goto fail;
  }
  if (dup2 (rq->fds[0], 1) == -1 || dup2 (rq->fds[1], 2) == -1) {
    int e = errno;
    restore (sv);
    errno = e;
    sxm_error ("monitor: cannot take the client's stdout/stderr: %m");
    return -1;
  }
  return 0;

 fail:
  if (sv->out >= 0)
    close (sv->out);
  if (sv->err >= 0)
    close (sv->err);
  if (sv->cwd >= 0)
    close (sv->cwd);
  return -1;
}

static void
reply (int fd, struct jbuf *rep, int ret)
{
  jbuf_add (rep, ",\"exit\":%d}\n", ret);
  if (rep->oom || !rep->s)
    return;
  /* The client may be gone; that is its business (no SIGPIPE). */
  full_send (fd, rep->s, rep->len);
}

/* send OPTIONS... ADDR [-- HOOK...]: the argv of `xenmem send`. */
static int
do_send (struct monitor *m, const struct request *rq, bool *migrated)
{
  struct xm_cli cli;
  int ret;

  *migrated = false;
  ret = xm_cli_parse (&cli, "send", rq->argc - 1, rq->argv + 1,
                      XM_CLI_MONITOR);
  if (ret || cli.help)
    goto out;
  if (rq->nfds != 3) {
    fprintf (stderr, "xenmem: a monitor's send needs the client's stdout, "
             "stderr and directory\n");
    ret = XM_USAGE;
  }
  else if (cli.abort_)
    ret = xm_cli_abort (&cli);
  else if (m->in_doubt) {
    /* Resuming or migrating it again could run the guest twice. */
    fprintf (stderr, "xenmem: the guest is paused after a migration left "
             "in doubt: check the destination, then 'cont' (it does not "
             "run there) or 'quit' (it does)\n");
    ret = XM_CANNOT;
  }
  else {
    ret = xm_cli_send (&cli, m->b, m->s, migrated);
    if (ret == XM_IN_DOUBT)
      m->in_doubt = true;
  }
 out:
  xm_cli_free (&cli);
  return ret;
}

static int
do_check (struct monitor *m, const struct request *rq, struct jbuf *rep)
{
  char *end;
  double secs;
  int r;

  if (rq->argc == 2) {
    errno = 0;
    secs = strtod (rq->argv[1], &end);
    if (errno || end == rq->argv[1] || *end || !(secs >= 0) || secs > 3600)
      secs = -1;
  }
  else
    secs = -1;
  if (secs < 0) {
    jbuf_add (rep, ",\"error\":\"usage: check SECONDS (0 to 3600)\"");
    return XM_USAGE;
  }
  if (!m->b->check_source) {
    jbuf_add (rep, ",\"error\":\"the %s backend has no check\"", m->b->name);
    return XM_CANNOT;
  }
  jbuf_add (rep, ",\"seconds\":%.3f", secs);
  r = m->b->check_source (m->s, secs, rep);
  jbuf_add (rep, ",\"ok\":%s", r == 0 ? "true" : "false");
  return r == 0 ? XM_OK : XM_FAILED;
}

static enum outcome
serve_one (struct monitor *m, int cfd)
{
  struct timeval tv = { REQUEST_TIMEOUT_S, 0 };
  struct request rq;
  struct jbuf rep = { 0 };
  struct saved sv;
  const char *why = NULL, *cmd;
  bool redirected = false, migrated = false, quit = false;
  int r, ret;

  setsockopt (cfd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  r = request_read (cfd, &rq, &why);
  if (r == 0) {
    request_free (&rq);
    return GO_ON;               /* a probe (socket_alive) or a quitter */
  }
  if (r == -1) {
    jbuf_add (&rep, "{\"error\":");
    jbuf_str (&rep, why);
    reply (cfd, &rep, XM_USAGE);
    goto out;
  }
  cmd = rq.argv[0];
  jbuf_add (&rep, "{\"cmd\":");
  jbuf_str (&rep, cmd);
  if (rq.nfds == 3) {
    if (redirect (&rq, &sv) == -1) {
      jbuf_add (&rep, ",\"error\":\"cannot take the client's fds\"");
      reply (cfd, &rep, XM_CANNOT);
      goto out;
    }
    redirected = true;
  }

  if (strcmp (cmd, "status") == 0 && rq.argc == 1) {
    jbuf_add (&rep, ",\"backend\":\"%s\",\"pid\":%ld,\"in_doubt\":%s",
              m->b->name, (long) getpid (), m->in_doubt ? "true" : "false");
    if (m->b->describe_source)
      m->b->describe_source (m->s, &rep);
    ret = XM_OK;
  }
  else if (strcmp (cmd, "check") == 0)
    ret = do_check (m, &rq, &rep);
  else if (strcmp (cmd, "cont") == 0 && rq.argc == 1) {
    ret = m->b->unpause (m->s) == 0 ? XM_OK : XM_FAILED;
    if (ret == XM_OK)
      m->in_doubt = false;
  }
  else if (strcmp (cmd, "quit") == 0 && rq.argc == 1) {
    m->b->close_source (m->s, false);
    m->s = NULL;
    quit = true;
    ret = XM_OK;
  }
  else if (strcmp (cmd, "send") == 0) {
    ret = do_send (m, &rq, &migrated);
    jbuf_add (&rep, ",\"migrated\":%s", migrated ? "true" : "false");
  }
  else {
    jbuf_add (&rep, ",\"error\":\"unknown request or wrong arguments "
              "(status, check SECONDS, cont, quit, send OPTIONS... ADDR)\"");
    ret = XM_USAGE;
  }

  if (redirected)
    restore (&sv);
  reply (cfd, &rep, ret);
  if (migrated) {
    /* It runs on the destination now; what is here is a paused copy. */
    m->b->close_source (m->s, true);
    m->s = NULL;
  }
 out:
  jbuf_free (&rep);
  request_free (&rq);
  return migrated || quit ? GUEST_GONE : GO_ON;
}

int
xm_monitor_serve (const char *path, const struct xm_backend_ops *b,
                  struct xm_source *s, struct xm_vbd **disks,
                  unsigned ndisks, bool quiet)
{
  struct monitor m = {
    .path = path, .b = b, .s = s, .disks = disks, .ndisks = ndisks,
    .quiet = quiet, .lfd = -1,
  };
  struct sigaction sa = { .sa_handler = on_signal }, old_term, old_int;
  int ret = XM_CANNOT;

  if (pipe2 (sig_pipe, O_CLOEXEC | O_NONBLOCK) == -1) {
    sxm_error ("monitor %s: pipe: %m", path);
    goto out;
  }
  /* No SA_RESTART: poll returns, and the flag is looked at. */
  sigemptyset (&sa.sa_mask);
  sigaction (SIGTERM, &sa, &old_term);
  sigaction (SIGINT, &sa, &old_int);
  if (monitor_listen (&m) == -1)
    goto restore_signals;
  if (!quiet)
    fprintf (stderr, "xenmem: the guest runs; monitor at %s (pid %ld)\n",
             path, (long) getpid ());

  for (;;) {
    struct pollfd p[2] = { { m.lfd, POLLIN, 0 }, { sig_pipe[0], POLLIN, 0 } };
    int cfd;

    if (signalled)
      break;
    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      sxm_error ("monitor %s: poll: %m", path);
      ret = XM_FAILED;
      break;
    }
    if (signalled)
      break;
    if (!(p[0].revents & POLLIN))
      continue;
    cfd = accept4 (m.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd == -1)
      continue;
    if (serve_one (&m, cfd) == GUEST_GONE) {
      close (cfd);
      ret = XM_OK;
      break;
    }
    close (cfd);
  }
  if (signalled) {
    sxm_error ("monitor %s: %s: destroying the guest", path,
               strsignal (signalled));
    ret = XM_FAILED;
  }
  monitor_unlink (&m);
  close (m.lfd);

 restore_signals:
  sigaction (SIGTERM, &old_term, NULL);
  sigaction (SIGINT, &old_int, NULL);
 out:
  if (m.s)
    b->close_source (m.s, false);
  xm_cli_close_disks (disks, ndisks);
  for (int i = 0; i < 2; i++)
    if (sig_pipe[i] >= 0) {
      close (sig_pipe[i]);
      sig_pipe[i] = -1;
    }
  if (ret == XM_OK && !quiet)
    fprintf (stderr, "xenmem: the guest is gone from here; monitor %s "
             "closed\n", path);
  return ret;
}

/* ---- the client ------------------------------------------------------ */

static void
put_le32 (uint8_t *p, uint32_t v)
{
  p[0] = v;
  p[1] = v >> 8;
  p[2] = v >> 16;
  p[3] = v >> 24;
}

/* An fd to pass for our fd N: N itself if open, else /dev/null (a client
 * run with stdout closed still gets its request served). */
static int
passable (int n, int *opened)
{
  *opened = -1;
  if (fcntl (n, F_GETFD) != -1)
    return n;
  *opened = open ("/dev/null", O_RDWR | O_CLOEXEC);
  return *opened;
}

int
xm_monitor_call (const char *path, int argc, char *const *argv,
                 char **reply_out)
{
  struct sockaddr_un sa;
  size_t len = 4, off, rlen = 0, rcap = 0;
  uint8_t *frame = NULL;
  char *rbuf = NULL, *nl = NULL, err[256];
  int fd = -1, fds[3] = { -1, -1, -1 }, opened[2] = { -1, -1 };
  int ret = XM_FAILED;
  struct json_obj o;
  double ex;

  *reply_out = NULL;
  if (argc < 1 || argc > XM_MONITOR_MAX_ARGS) {
    sxm_error ("monitor %s: a request has 1 to %d words", path,
               XM_MONITOR_MAX_ARGS);
    return XM_USAGE;
  }
  for (int i = 0; i < argc; i++) {
    size_t l = strlen (argv[i]);
    if (l > XM_MONITOR_MAX_ARG) {
      sxm_error ("monitor %s: argument %d is %zu bytes, at most %d", path,
                 i, l, XM_MONITOR_MAX_ARG);
      return XM_USAGE;
    }
    len += 4 + l;
  }
  if (!fill_addr (&sa, path)) {
    sxm_error ("monitor %s: the path is too long for a unix socket", path);
    return XM_USAGE;
  }
  frame = malloc (len);
  if (!frame) {
    sxm_error ("monitor %s: out of memory", path);
    return XM_CANNOT;
  }
  put_le32 (frame, argc);
  off = 4;
  for (int i = 0; i < argc; i++) {
    size_t l = strlen (argv[i]);
    put_le32 (frame + off, l);
    memcpy (frame + off + 4, argv[i], l);
    off += 4 + l;
  }

  fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd == -1 || connect (fd, (struct sockaddr *) &sa, sizeof sa) == -1) {
    sxm_error ("monitor %s: cannot connect: %m (is the VM process "
               "running?)", path);
    ret = XM_CANNOT;
    goto out;
  }
  fds[0] = passable (1, &opened[0]);
  fds[1] = passable (2, &opened[1]);
  fds[2] = open (".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fds[0] == -1 || fds[1] == -1 || fds[2] == -1) {
    sxm_error ("monitor %s: cannot open what to pass (stdout, stderr, the "
               "current directory): %m", path);
    ret = XM_CANNOT;
    goto out;
  }
  /* The fds travel with the first bytes; the rest follows plainly. */
  {
    union {
      struct cmsghdr h;
      char b[CMSG_SPACE (sizeof fds)];
    } u;
    struct iovec iov = { frame, len };
    struct msghdr mh = {
      .msg_iov = &iov, .msg_iovlen = 1,
      .msg_control = u.b, .msg_controllen = sizeof u.b,
    };
    struct cmsghdr *c = CMSG_FIRSTHDR (&mh);
    ssize_t r;

    memset (u.b, 0, sizeof u.b);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN (sizeof fds);
    memcpy (CMSG_DATA (c), fds, sizeof fds);
    do
      r = sendmsg (fd, &mh, MSG_NOSIGNAL);
    while (r == -1 && errno == EINTR);
    if (r != -1 && full_send (fd, frame + r, len - r) == -1)
      r = -1;
    if (r == -1) {
      sxm_error ("monitor %s: sending the request: %m", path);
      goto out;
    }
  }
  /* Our copies go now: the VM process holds its own while it works. */
  close (fds[2]);
  fds[2] = -1;

  /* One line back, however long the request takes (a send is bounded by
   * its own --timeout). */
  while (!nl) {
    ssize_t r;
    if (rlen + 4096 + 1 > rcap) {
      char *nb;
      if (rcap >= REPLY_MAX) {
        sxm_error ("monitor %s: the reply is over %u bytes", path, REPLY_MAX);
        goto out;
      }
      rcap = rcap ? rcap * 2 : 8192;
      nb = realloc (rbuf, rcap);
      if (!nb) {
        sxm_error ("monitor %s: out of memory", path);
        goto out;
      }
      rbuf = nb;
    }
    r = read (fd, rbuf + rlen, rcap - rlen - 1);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0) {
      if (r == -1)
        sxm_error ("monitor %s: reading the reply: %m", path);
      sxm_error ("monitor %s: the VM process went away without a reply",
                 path);
      goto out;
    }
    rlen += r;
    rbuf[rlen] = 0;
    nl = memchr (rbuf, '\n', rlen);
  }
  *nl = 0;
  if (json_parse (rbuf, nl - rbuf, &o, err, sizeof err) == -1) {
    sxm_error ("monitor %s: the reply is not JSON: %s", path, err);
    goto out;
  }
  if (json_num (&o, "exit", &ex) != 1 || ex < 0 || ex > 255 ||
      ex != (int) ex)
    sxm_error ("monitor %s: the reply has no exit status: %s", path, rbuf);
  else
    ret = (int) ex;
  json_free (&o);
  *reply_out = rbuf;
  rbuf = NULL;

 out:
  for (int i = 0; i < 2; i++)
    if (opened[i] >= 0)
      close (opened[i]);
  if (fds[2] >= 0)
    close (fds[2]);
  if (fd >= 0)
    close (fd);
  free (frame);
  free (rbuf);
  return ret;
}
