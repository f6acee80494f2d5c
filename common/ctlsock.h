/* A JSON-line control socket server: a private unix socket (mode 0600,
 * common/unixsock.c) on which each client sends one JSON object per line
 * and gets one reply line per request, {"ok":BOOL,"cmd":NAME,...}.
 *
 * Used by the mirror filter (mirror-control=, doc/nbdkit-mirror-filter.pod)
 * and the vhd plugin (control=, doc/nbdkit-vhd-plugin.pod).  One thread
 * accepts; each client gets a joinable thread of its own (at most
 * CTL_MAX_CLIENTS at once).  Commands marked serialised run one at a time
 * across all clients; the others (status) do not wait for them, so a
 * client can watch a long command from a second connection.
 *
 * Errors are reported through sxm_error() (common/log.h), prefixed with
 * the server's WHAT (e.g. "mirror-control=/run/x.ctl"). */
#ifndef SXM_CTLSOCK_H
#define SXM_CTLSOCK_H

#include <stdbool.h>

#include "jsonline.h"

#define CTL_MAX_CLIENTS 16

struct ctl_command {
  const char *name;
  /* Append the reply's members after "cmd" (",\"key\":value" ...) to
   * OUT; return 0 for "ok":true, -1 for "ok":false (with an "error"). */
  int (*fn) (const struct json_obj *req, struct jbuf *out);
  bool serialised;
};

struct ctl_server;

/* At configuration time, so that a bad path stops the server before it
 * serves anything: 0, or -1 with a message naming PARAM=PATH ("path too
 * long for a unix socket", "exists and is not a socket"). */
int ctl_check (const char *param, const char *path);

/* Listen on PATH (a stale socket there is replaced, nothing else) and
 * start the accept thread; PARAM names the socket in messages
 * (PARAM=PATH).  COMMANDS (N of them) must outlive the server.  NULL
 * with a message on failure, nothing left at PATH. */
struct ctl_server *ctl_start (const char *param, const char *path,
                              const struct ctl_command *commands, size_t n);

/* Stop accepting, shut down every client, join every thread, unlink the
 * socket (if it is still ours) and free S.  NULL is a no-op. */
void ctl_stop (struct ctl_server *s);

#endif
