/* The mirror filter's control socket: common/ctlsock.c's JSON-line server
 * (doc/nbdkit-mirror-filter.pod) with the commands of mirror-cmd.c.
 * Commands that change the mirror run one at a time; "status" does not
 * wait for them, so a client can watch a long switchover from a second
 * connection. */
#include <nbdkit-filter.h>

#include "ctlsock.h"
#include "mirror.h"

static const struct ctl_command commands[] = {
  { "start", mirror_cmd_start, true },
  { "status", mirror_cmd_status, false },
  { "copied", mirror_cmd_copied, true },
  { "switchover", mirror_cmd_switchover, true },
  { "resume", mirror_cmd_resume, true },
  { "complete", mirror_cmd_complete, true },
  { "flush", mirror_cmd_flush, true },
  { "abort", mirror_cmd_abort, true },
};

static struct ctl_server *server;

/* At configuration time, so that a bad path stops nbdkit before it
 * serves anything. */
int
control_check (const char *path)
{
  return ctl_check ("mirror-control", path);
}

int
control_start (const char *path)
{
  server = ctl_start ("mirror-control", path, commands,
                      sizeof commands / sizeof commands[0]);
  return server ? 0 : -1;
}

void
control_stop (void)
{
  ctl_stop (server);
  server = NULL;
}
