/* A JSON-line control socket server (see ctlsock.h). */
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

#include "ctlsock.h"
#include "fullio.h"
#include "log.h"
#include "unixsock.h"

/* Client threads are joinable, and every one is joined (a finished one
 * by the accept loop when it needs the slot, the rest by ctl_stop): a
 * plugin or filter is unloaded right after its cleanup, and a detached
 * thread still returning through our code then would run in unmapped
 * memory (seen: nbdkit dumping core at exit, under load). */
struct ctl_client {
  struct ctl_server *server;
  bool used;                    /* a thread was started for it */
  bool finished;                /* its thread closed fd and is returning */
  int fd;
  pthread_t thread;
};

struct ctl_server {
  char *what;
  char *path;
  struct stat bound;
  int listen_fd;
  int stop_pipe[2];
  pthread_t accept_thread;
  bool accept_started;
  const struct ctl_command *commands;
  size_t ncommands;
  pthread_mutex_t cmd_lock;     /* serialised commands, one at a time */
  pthread_mutex_t clients_lock;
  struct ctl_client clients[CTL_MAX_CLIENTS];
};

static void
reply_error (struct jbuf *out, const char *error, const char *cmd)
{
  jbuf_add (out, "{\"ok\":false,\"error\":");
  jbuf_str (out, error);
  if (cmd) {
    jbuf_add (out, ",\"cmd\":");
    jbuf_str (out, cmd);
  }
  jbuf_add (out, "}");
}

/* One request line in, one reply line out (without the newline). */
static void
handle_line (struct ctl_server *s, const char *line, size_t len,
             struct jbuf *out)
{
  const struct ctl_command *c = NULL;
  struct json_obj req;
  struct jbuf body = { 0 };
  char err[256];
  const char *cmd;
  int r;

  if (json_parse (line, len, &req, err, sizeof err) == -1) {
    reply_error (out, err, NULL);
    return;
  }
  cmd = json_str (&req, "cmd");
  for (size_t i = 0; cmd && i < s->ncommands && !c; i++)
    if (strcmp (cmd, s->commands[i].name) == 0)
      c = &s->commands[i];
  if (!c) {
    reply_error (out, cmd ? "unknown command" : "no \"cmd\" string", cmd);
    json_free (&req);
    return;
  }
  if (c->serialised)
    pthread_mutex_lock (&s->cmd_lock);
  r = c->fn (&req, &body);
  if (c->serialised)
    pthread_mutex_unlock (&s->cmd_lock);
  jbuf_add (out, "{\"ok\":%s,\"cmd\":", r == 0 ? "true" : "false");
  jbuf_str (out, cmd);
  if (body.s)
    jbuf_add (out, "%s", body.s);
  jbuf_add (out, "}");
  if (body.oom)
    out->oom = true;
  jbuf_free (&body);
  json_free (&req);
}

/* The client's thread is done with its connection; it only returns
 * after this.  The fd is closed under the lock so that ctl_stop never
 * shuts down a number the kernel has given to someone else. */
static void
client_done (struct ctl_client *c)
{
  pthread_mutex_lock (&c->server->clients_lock);
  close (c->fd);
  c->finished = true;
  pthread_mutex_unlock (&c->server->clients_lock);
}

static void *
client_thread (void *arg)
{
  struct ctl_client *c = arg;
  struct ctl_server *s = c->server;
  char *buf = malloc (JSON_MAX_LINE + 1);
  size_t have = 0;

  if (!buf) {
    sxm_error ("%s: control client: out of memory", s->what);
    goto out;
  }
  for (;;) {
    char *nl;
    ssize_t r;

    while ((nl = memchr (buf, '\n', have)) != NULL) {
      struct jbuf out = { 0 };
      size_t len = nl - buf;
      handle_line (s, buf, len, &out);
      jbuf_add (&out, "\n");
      if (out.oom)
        sxm_error ("%s: control reply: out of memory", s->what);
      if (out.oom || full_send (c->fd, out.s, out.len) == -1) {
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
      full_send (c->fd, msg, sizeof msg - 1);
      goto out;
    }
    r = recv (c->fd, buf + have, JSON_MAX_LINE - have, 0);
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
 * CTL_MAX_CLIENTS are connected).  Accept thread only: it alone sets
 * "used", so a slot it sees finished stays so while it joins outside the
 * lock. */
static struct ctl_client *
client_slot (struct ctl_server *s)
{
  bool gone[CTL_MAX_CLIENTS];
  struct ctl_client *c = NULL;

  pthread_mutex_lock (&s->clients_lock);
  for (unsigned i = 0; i < CTL_MAX_CLIENTS; i++)
    gone[i] = s->clients[i].used && s->clients[i].finished;
  pthread_mutex_unlock (&s->clients_lock);
  for (unsigned i = 0; i < CTL_MAX_CLIENTS; i++)
    if (gone[i]) {
      pthread_join (s->clients[i].thread, NULL);
      pthread_mutex_lock (&s->clients_lock);
      s->clients[i].used = false;
      pthread_mutex_unlock (&s->clients_lock);
    }
  pthread_mutex_lock (&s->clients_lock);
  for (unsigned i = 0; i < CTL_MAX_CLIENTS && !c; i++)
    if (!s->clients[i].used)
      c = &s->clients[i];
  pthread_mutex_unlock (&s->clients_lock);
  return c;
}

static void *
accept_loop (void *arg)
{
  struct ctl_server *s = arg;

  for (;;) {
    struct pollfd p[2] = { { .fd = s->listen_fd, .events = POLLIN },
                           { .fd = s->stop_pipe[0], .events = POLLIN } };
    struct ctl_client *c;
    int fd;

    if (poll (p, 2, -1) == -1) {
      if (errno == EINTR)
        continue;
      sxm_error ("%s: poll: %s", s->what, strerror (errno));
      return NULL;
    }
    if (p[1].revents)
      return NULL;
    fd = accept4 (s->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd == -1)
      continue;
    c = client_slot (s);
    if (!c) {
      static const char msg[] =
        "{\"ok\":false,\"error\":\"too many control clients\"}\n";
      full_send (fd, msg, sizeof msg - 1);
      close (fd);
      continue;
    }
    /* Marked before the thread exists: it may finish at once. */
    pthread_mutex_lock (&s->clients_lock);
    c->server = s;
    c->fd = fd;
    c->used = true;
    c->finished = false;
    pthread_mutex_unlock (&s->clients_lock);
    if (pthread_create (&c->thread, NULL, client_thread, c) != 0) {
      sxm_error ("%s: cannot start a client thread", s->what);
      pthread_mutex_lock (&s->clients_lock);
      c->used = false;
      close (fd);
      pthread_mutex_unlock (&s->clients_lock);
    }
  }
}

int
ctl_check (const char *param, const char *path)
{
  struct sockaddr_un sa;
  struct stat st;

  if (strlen (path) >= sizeof sa.sun_path) {
    sxm_error ("%s=%s: path too long for a unix socket", param, path);
    return -1;
  }
  /* A stale socket from an earlier run is replaced; anything else at
   * that path is not ours to remove. */
  if (lstat (path, &st) == 0 && !S_ISSOCK (st.st_mode)) {
    sxm_error ("%s=%s: exists and is not a socket", param, path);
    return -1;
  }
  return 0;
}

struct ctl_server *
ctl_start (const char *param, const char *path,
           const struct ctl_command *commands, size_t n)
{
  struct ctl_server *s = calloc (1, sizeof *s);
  const char *step;
  char *what = NULL;

  if (!s || asprintf (&what, "%s=%s", param, path) == -1) {
    sxm_error ("%s=%s: out of memory", param, path);
    free (s);
    return NULL;
  }
  s->listen_fd = s->stop_pipe[0] = s->stop_pipe[1] = -1;
  s->commands = commands;
  s->ncommands = n;
  pthread_mutex_init (&s->cmd_lock, NULL);
  pthread_mutex_init (&s->clients_lock, NULL);
  s->what = what;
  if (!(s->path = strdup (path))) {
    sxm_error ("%s: out of memory", what);
    goto fail;
  }
  /* This checks the path again (it may have changed since
   * ctl_check_path): a stale socket is replaced, nothing else. */
  s->listen_fd = unix_listen_private (path, 8, &s->bound, &step);
  if (s->listen_fd == -1) {
    sxm_error ("%s: %s: %s", what, step, strerror (errno));
    goto fail;
  }
  if (pipe2 (s->stop_pipe, O_CLOEXEC) == -1) {
    sxm_error ("%s: pipe: %s", what, strerror (errno));
    goto fail;
  }
  if (pthread_create (&s->accept_thread, NULL, accept_loop, s) != 0) {
    sxm_error ("%s: cannot start its thread", what);
    goto fail;
  }
  s->accept_started = true;
  sxm_debug ("%s: listening", what);
  return s;
 fail:
  ctl_stop (s);
  return NULL;
}

void
ctl_stop (struct ctl_server *s)
{
  if (!s)
    return;
  if (s->accept_started) {
    if (write (s->stop_pipe[1], "x", 1) == -1) {
      /* the thread also exits with the process */
    }
    pthread_join (s->accept_thread, NULL);
  }
  /* No new clients now (the accept thread is gone): wake the ones
   * reading, then wait for every thread to be out of our code. */
  pthread_mutex_lock (&s->clients_lock);
  for (unsigned i = 0; i < CTL_MAX_CLIENTS; i++)
    if (s->clients[i].used && !s->clients[i].finished)
      shutdown (s->clients[i].fd, SHUT_RDWR);
  pthread_mutex_unlock (&s->clients_lock);
  for (unsigned i = 0; i < CTL_MAX_CLIENTS; i++)
    if (s->clients[i].used)
      pthread_join (s->clients[i].thread, NULL);
  if (s->listen_fd >= 0) {
    close (s->listen_fd);
    unix_unlink_own (s->path, &s->bound);
  }
  for (int i = 0; i < 2; i++)
    if (s->stop_pipe[i] >= 0)
      close (s->stop_pipe[i]);
  free (s->what);
  free (s->path);
  free (s);
}
