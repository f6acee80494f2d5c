/* The mirror filter's control socket: a unix socket (mode 0600) speaking
 * one JSON object per line each way (doc/nbdkit-mirror-filter.pod).
 *
 * One thread accepts; each client gets a thread that reads its request
 * lines and writes one reply line per request.  Commands that change the
 * mirror run one at a time (cmd_lock); "status" does not wait for them, so
 * a client can watch a long switchover from a second connection. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "fullio.h"
#include "jsonline.h"
#include "mirror.h"
#include "unixsock.h"

#define MAX_CLIENTS 16

static char *sock_path;
static int listen_fd = -1;
static int stop_pipe[2] = { -1, -1 };
static pthread_t accept_thread;
static bool accept_started;
static pthread_mutex_t cmd_lock = PTHREAD_MUTEX_INITIALIZER;

/* Client threads are joinable, and every one is joined (a finished one
 * by the accept loop when it needs the slot, the rest by control_stop):
 * nbdkit unloads the filter right after cleanup, and a detached thread
 * still returning through our code then would run in unmapped memory
 * (seen: nbdkit dumping core at exit, under load). */
static pthread_mutex_t clients_lock = PTHREAD_MUTEX_INITIALIZER;
static struct client {
  bool used;                    /* a thread was started for it */
  bool finished;                /* its thread closed fd and is returning */
  int fd;
  pthread_t thread;
} clients[MAX_CLIENTS];

static const struct {
  const char *name;
  int (*fn) (const struct json_obj *, struct jbuf *);
  bool serialised;
} commands[] = {
  { "start", mirror_cmd_start, true },
  { "status", mirror_cmd_status, false },
  { "copied", mirror_cmd_copied, true },
  { "switchover", mirror_cmd_switchover, true },
  { "resume", mirror_cmd_resume, true },
  { "complete", mirror_cmd_complete, true },
  { "flush", mirror_cmd_flush, true },
  { "abort", mirror_cmd_abort, true },
};

/* One request line in, one reply line out (without the newline). */
static void
handle_line (const char *line, size_t len, struct jbuf *out)
{
  struct json_obj req;
  char err[256];
  const char *cmd;
  size_t i;

  if (json_parse (line, len, &req, err, sizeof err) == -1) {
    jbuf_add (out, "{\"ok\":false,\"error\":");
    jbuf_str (out, err);
    jbuf_add (out, "}");
    return;
  }
  cmd = json_str (&req, "cmd");
  for (i = 0; cmd && i < sizeof commands / sizeof commands[0]; i++)
    if (strcmp (cmd, commands[i].name) == 0)
      break;
  if (!cmd || i == sizeof commands / sizeof commands[0]) {
    jbuf_add (out, "{\"ok\":false,\"error\":");
    jbuf_str (out, cmd ? "unknown command" : "no \"cmd\" string");
    if (cmd) {
      jbuf_add (out, ",\"cmd\":");
      jbuf_str (out, cmd);
    }
    jbuf_add (out, "}");
    json_free (&req);
    return;
  }
  {
    struct jbuf body = { 0 };
    int r;
    if (commands[i].serialised)
      pthread_mutex_lock (&cmd_lock);
    r = commands[i].fn (&req, &body);
    if (commands[i].serialised)
      pthread_mutex_unlock (&cmd_lock);
    jbuf_add (out, "{\"ok\":%s,\"cmd\":", r == 0 ? "true" : "false");
    jbuf_str (out, cmd);
    if (body.s)
      jbuf_add (out, "%s", body.s);
    jbuf_add (out, "}");
    if (body.oom)
      out->oom = true;
    jbuf_free (&body);
  }
  json_free (&req);
}

/* The client's thread is done with its connection; it only returns
 * after this.  The fd is closed under the lock so that control_stop never
 * shuts down a number the kernel has given to someone else. */
static void
client_done (struct client *c)
{
  pthread_mutex_lock (&clients_lock);
  close (c->fd);
  c->finished = true;
  pthread_mutex_unlock (&clients_lock);
}

static void *
client_thread (void *arg)
{
  struct client *c = arg;
  int fd = c->fd;
  char *buf = malloc (JSON_MAX_LINE + 1);
  size_t have = 0;

  if (!buf) {
    nbdkit_error ("mirror: control client: malloc: %m");
    goto out;
  }
  for (;;) {
    char *nl;
    ssize_t r;

    while ((nl = memchr (buf, '\n', have)) != NULL) {
      struct jbuf out = { 0 };
      size_t len = nl - buf;
      handle_line (buf, len, &out);
      jbuf_add (&out, "\n");
      if (out.oom)
        nbdkit_error ("mirror: control reply: out of memory");
      if (out.oom || full_send (fd, out.s, out.len) == -1) {
        jbuf_free (&out);
        goto out;
      }
      jbuf_free (&out);
      memmove (buf, nl + 1, have - len - 1);
      have -= len + 1;
    }
    if (have == JSON_MAX_LINE) {
      static const char msg[] =
        "{\"ok\":false,\"error\":\"request line too long\"}\n";
      full_send (fd, msg, sizeof msg - 1);
      goto out;
    }
    r = recv (fd, buf + have, JSON_MAX_LINE - have, 0);
    if (r == -1 && errno == EINTR)
      continue;
    if (r <= 0)
      goto out;
    have += r;
  }
 out:
  free (buf);
  client_done (c);
  return NULL;
}

/* Join the threads of clients that have gone, then a free slot (NULL if
 * MAX_CLIENTS are connected).  Accept thread only: it alone sets "used",
 * so a slot it sees finished stays so while it joins outside the lock. */
static struct client *
client_slot (void)
{
  bool gone[MAX_CLIENTS];
  struct client *c = NULL;

  pthread_mutex_lock (&clients_lock);
  for (unsigned i = 0; i < MAX_CLIENTS; i++)
    gone[i] = clients[i].used && clients[i].finished;
  pthread_mutex_unlock (&clients_lock);
  for (unsigned i = 0; i < MAX_CLIENTS; i++)
    if (gone[i]) {
      pthread_join (clients[i].thread, NULL);
      pthread_mutex_lock (&clients_lock);
      clients[i].used = false;
      pthread_mutex_unlock (&clients_lock);
    }
  pthread_mutex_lock (&clients_lock);
  for (unsigned i = 0; i < MAX_CLIENTS && !c; i++)
    if (!clients[i].used)
      c = &clients[i];
  pthread_mutex_unlock (&clients_lock);
  return c;
}

static void *
accept_loop (void *arg)
{
  for (;;) {
    struct pollfd p[2] = { { .fd = listen_fd, .events = POLLIN },
                           { .fd = stop_pipe[0], .events = POLLIN } };
    int fd;
    struct client *c;

    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      nbdkit_error ("mirror: control socket poll: %m");
      return NULL;
    }
    if (p[1].revents)
      return NULL;
    fd = accept4 (listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    c = client_slot ();
    if (!c) {
      static const char msg[] =
        "{\"ok\":false,\"error\":\"too many control clients\"}\n";
      full_send (fd, msg, sizeof msg - 1);
      close (fd);
      continue;
    }
    /* Marked before the thread exists: it may finish at once. */
    pthread_mutex_lock (&clients_lock);
    c->fd = fd;
    c->used = true;
    c->finished = false;
    pthread_mutex_unlock (&clients_lock);
    if (pthread_create (&c->thread, NULL, client_thread, c) != 0) {
      nbdkit_error ("mirror: control client: cannot start a thread");
      pthread_mutex_lock (&clients_lock);
      c->used = false;
      close (fd);
      pthread_mutex_unlock (&clients_lock);
    }
  }
}

/* At configuration time, so that a bad path stops nbdkit before it
 * serves anything. */
int
control_check (const char *path)
{
  struct sockaddr_un sa;
  struct stat st;

  if (strlen (path) >= sizeof sa.sun_path) {
    nbdkit_error ("mirror-control=%s: path too long for a unix socket", path);
    return -1;
  }
  /* A stale socket from an earlier run is replaced; anything else at
   * that path is not ours to remove. */
  if (lstat (path, &st) == 0 && !S_ISSOCK (st.st_mode)) {
    nbdkit_error ("mirror-control=%s: exists and is not a socket", path);
    return -1;
  }
  return 0;
}

int
control_start (const char *path)
{
  const char *step;
  /* Copied first, so that running out of memory leaves nothing behind;
   * kept in sock_path (which control_stop unlinks) only once the socket
   * at PATH is ours. */
  char *p = strdup (path);

  if (!p) {
    nbdkit_error ("mirror-control=%s: strdup: %m", path);
    return -1;
  }
  /* This checks the path again (it may have changed since
   * control_check): a stale socket is replaced, nothing else. */
  listen_fd = unix_listen_private (path, 8, NULL, &step);
  if (listen_fd == -1) {
    nbdkit_error ("mirror-control=%s: %s: %m", path, step);
    free (p);
    return -1;
  }
  if (pipe2 (stop_pipe, O_CLOEXEC) == -1) {
    nbdkit_error ("mirror-control=%s: %m", path);
    close (listen_fd);
    listen_fd = -1;
    unlink (path);
    free (p);
    return -1;
  }
  sock_path = p;
  if (pthread_create (&accept_thread, NULL, accept_loop, NULL) != 0) {
    nbdkit_error ("mirror-control: cannot start its thread");
    return -1;
  }
  accept_started = true;
  nbdkit_debug ("mirror: control socket %s", path);
  return 0;
}

void
control_stop (void)
{
  if (accept_started) {
    if (write (stop_pipe[1], "x", 1) == -1) {
      /* the thread also exits when nbdkit does */
    }
    pthread_join (accept_thread, NULL);
    accept_started = false;
  }
  /* No new clients now (the accept thread is gone): wake the ones
   * reading, then wait for every thread to be out of our code. */
  pthread_mutex_lock (&clients_lock);
  for (unsigned i = 0; i < MAX_CLIENTS; i++)
    if (clients[i].used && !clients[i].finished)
      shutdown (clients[i].fd, SHUT_RDWR);
  pthread_mutex_unlock (&clients_lock);
  for (unsigned i = 0; i < MAX_CLIENTS; i++)
    if (clients[i].used) {
      pthread_join (clients[i].thread, NULL);
      clients[i].used = clients[i].finished = false;
    }
  if (listen_fd >= 0)
    close (listen_fd);
  listen_fd = -1;
  for (int i = 0; i < 2; i++)
    if (stop_pipe[i] >= 0) {
      close (stop_pipe[i]);
      stop_pipe[i] = -1;
    }
  if (sock_path) {
    unlink (sock_path);
    free (sock_path);
    sock_path = NULL;
  }
}
