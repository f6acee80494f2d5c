/* xenmem: live memory transfer (iterative pre-copy under dirty logging).
 *
 *   xenmem send    [OPTIONS] --backend=B [--domid=ID] ADDR
 *   xenmem send    [OPTIONS] --backend=uffd --guest=SOCKET ADDR
 *   xenmem receive [OPTIONS] --backend=B [--monitor=SOCKET] ADDR
 *   xenmem guest   --monitor=SOCKET [GUEST OPTIONS]
 *   xenmem monitor SOCKET REQUEST...
 *
 * See doc/xenmem.pod for the options, doc/xenmem-stream.md for the wire
 * format, xenmem/engine.c for the policy, cli.c for option parsing and
 * the send path and monitor.c for the running VM's monitor. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "cli.h"
#include "engine.h"
#include "jsonline.h"
#include "monotime.h"
#include "log.h"
#include "monitor.h"
#include "transport.h"

static void
sleep_s (double s)
{
  struct timespec ts = { (time_t) s, (long) ((s - (time_t) s) * 1e9) };

  while (nanosleep (&ts, &ts) == -1 && errno == EINTR)
    ;
}

/* send --guest=SOCKET: the VM runs in another process; hand it our argv
 * (without --guest and --backend, which only said where it is) as a
 * monitor request, with our stdout, stderr and directory. */
static int
send_to_monitor (const struct xm_cli *cli, int argc, char **argv)
{
  char **fwd = calloc (argc + 2, sizeof *fwd), *reply = NULL;
  int n = 0, ret;
  bool hook = false;

  if (!fwd) {
    fprintf (stderr, "xenmem: out of memory\n");
    return XM_CANNOT;
  }
  fwd[n++] = (char *) "send";
  for (int i = 0; i < argc; i++) {
    if (!hook && strcmp (argv[i], "--") == 0)
      hook = true;
    else if (!hook && (strncmp (argv[i], "--guest=", 8) == 0 ||
                       strncmp (argv[i], "--backend=", 10) == 0))
      continue;
    else if (!hook && (strcmp (argv[i], "--guest") == 0 ||
                       strcmp (argv[i], "--backend") == 0)) {
      i++;
      continue;
    }
    fwd[n++] = argv[i];
  }
  ret = xm_monitor_call (cli->guest, n, fwd, &reply);
  free (reply);
  free (fwd);
  return ret;
}

/* xenmem monitor SOCKET REQUEST...: print the reply line. */
static int
monitor_cmd (int argc, char **argv)
{
  char *reply = NULL;
  int ret;

  if (argc < 2) {
    fprintf (stderr, "xenmem: monitor SOCKET status|check S|cont|quit\n");
    return XM_USAGE;
  }
  ret = xm_monitor_call (argv[0], argc - 1, argv + 1, &reply);
  if (reply)
    printf ("%s\n", reply);
  free (reply);
  return ret;
}

/* A new test guest that migrates away (xenmem send, page-level). */
static int
send_new_guest (struct xm_cli *cli)
{
  struct xm_vbd *disks[XM_DISKS_MAX] = { NULL };
  struct xm_source *s;
  bool migrated;
  int ret;

  if (xm_cli_open_disks (cli, disks) == -1)
    return XM_CANNOT;
  cli->g.disks = disks;
  cli->g.ndisks = cli->ndisks;
  if (cli->b->open_source (cli->domid, &cli->g, &s) == -1) {
    xm_cli_close_disks (disks, cli->ndisks);
    return XM_CANNOT;
  }
  if (cli->warmup > 0) {
    /* The guest's own pace before anything slows it: the report's
     * baseline for the throttle's effect. */
    uint64_t p0 = cli->b->guest_progress ? cli->b->guest_progress (s) : 0;
    double t0 = sxm_now ();
    sleep_s (cli->warmup);
    if (cli->b->guest_progress)
      cli->progress_rate_before = (cli->b->guest_progress (s) - p0)
        / (sxm_now () - t0);
  }
  ret = xm_cli_send (cli, cli->b, s, &migrated);
  /* In doubt, the paused source is kept only as long as we run: for the
   * test guests that is now; a xen domain stays paused. */
  cli->b->close_source (s, migrated);
  xm_cli_close_disks (disks, cli->ndisks);
  return ret;
}

/* xenmem send.  A whole-migration backend moves the guest --domid names
 * itself (migrate_send, through xm_cli_send); for a page-level one the
 * guest is built here and the engine moves it. */
static int
send_cmd (struct xm_cli *cli)
{
  bool migrated;

  if (cli->b->migrate_send)
    return xm_cli_send (cli, cli->b, NULL, &migrated);
  return send_new_guest (cli);
}

/* xenmem guest: a new test guest that stays, under a monitor. */
static int
guest_cmd (struct xm_cli *cli)
{
  struct xm_vbd *disks[XM_DISKS_MAX] = { NULL };
  struct xm_source *s;

  if (xm_cli_open_disks (cli, disks) == -1)
    return XM_CANNOT;
  cli->g.disks = disks;
  cli->g.ndisks = cli->ndisks;
  if (cli->b->open_source (NULL, &cli->g, &s) == -1) {
    xm_cli_close_disks (disks, cli->ndisks);
    return XM_CANNOT;
  }
  return xm_monitor_serve (cli->monitor, cli->b, s, disks, cli->ndisks,
                           cli->quiet);
}

static int
receive (struct xm_cli *cli)
{
  struct xm_vbd *disks[XM_DISKS_MAX] = { NULL };
  struct xm_dest *kept = NULL;
  struct xm_source *s;
  struct jbuf rep = { 0 };
  struct xm_conn *c;
  int ret;

  /* The monitor's place and the disks first: what would make us refuse
   * or lose a guest refuses before anyone sends us one. */
  if (cli->monitor && xm_monitor_usable (cli->monitor) == -1)
    return XM_CANNOT;
  if (xm_cli_open_disks (cli, disks) == -1)
    return XM_CANNOT;
  cli->ro.disks = disks;
  cli->ro.ndisks = cli->ndisks;
  cli->ro.keep = cli->monitor ? &kept : NULL;
  /* A sender may ask first (send --check-only, a whole-migration
   * backend's: a session that ends after our "ready", XM_CHECKED); then
   * the real stream comes on a new connection. */
  do {
    jbuf_free (&rep);
    c = xm_listen_accept (cli->addr, &cli->tls, cli->accept_timeout >= 0
                          ? cli->accept_timeout : cli->timeout);
    if (!c) {
      xm_cli_close_disks (disks, cli->ndisks);
      return XM_CANNOT;
    }
    xm_set_timeout (c, cli->timeout);
    jbuf_add (&rep, "{\"cmd\":\"receive\",\"backend\":\"%s\"",
              cli->b->name);
    if (cli->b->migrate_receive)
      ret = cli->b->migrate_receive (c, &cli->ro, &rep);
    else
      ret = xm_receive (cli->b, cli->domid, c, &cli->ro, &rep);
    xm_close (c);
    if (ret == XM_CHECKED && !cli->quiet)
      fprintf (stderr, "xenmem: a sender checked: this host would take "
               "the guest; waiting for its stream\n");
  } while (ret == XM_CHECKED);
  /* The report is written before the monitor's socket appears: whoever
   * waits for either (sxm receive) finds it there. */
  ret = xm_cli_report (cli, &rep, ret);
  if (kept && ret != XM_OK) {
    cli->b->close_dest (kept, true);
    kept = NULL;
  }
  if (!kept) {
    xm_cli_close_disks (disks, cli->ndisks);
    return ret;
  }
  if (cli->b->adopt_dest (kept, &s) == -1) {
    sxm_error ("the received guest cannot be kept under a monitor; it ends "
               "with this process");
    cli->b->close_dest (kept, true);
    xm_cli_close_disks (disks, cli->ndisks);
    return XM_FAILED;
  }
  return xm_monitor_serve (cli->monitor, cli->b, s, disks, cli->ndisks,
                           cli->quiet);
}

int
main (int argc, char **argv)
{
  struct xm_cli cli;
  const char *mode;
  int ret;

  sxm_log_set_program ("xenmem");
  signal (SIGPIPE, SIG_IGN);
  if (argc < 2 || strcmp (argv[1], "-h") == 0 ||
      strcmp (argv[1], "--help") == 0) {
    xm_cli_usage (argc < 2 ? stderr : stdout);
    return argc < 2 ? XM_USAGE : 0;
  }
  if (strcmp (argv[1], "--version") == 0) {
    printf ("xenmem %s\n", SXM_VERSION);
    return 0;
  }
  mode = argv[1];
  if (strcmp (mode, "monitor") == 0)
    return monitor_cmd (argc - 2, argv + 2);
  if (strcmp (mode, "send") != 0 && strcmp (mode, "receive") != 0 &&
      strcmp (mode, "guest") != 0) {
    fprintf (stderr, "xenmem: unknown command '%s' (send, receive, guest or "
             "monitor)\n", mode);
    return XM_USAGE;
  }
  ret = xm_cli_parse (&cli, mode, argc - 2, argv + 2, 0);
  if (ret || cli.help)
    goto out;

  if (cli.guest)
    ret = send_to_monitor (&cli, argc - 2, argv + 2);
  else if (strcmp (mode, "guest") == 0)
    ret = guest_cmd (&cli);
  else if (cli.abort_)
    ret = xm_cli_abort (&cli);
  /* Nothing is started on a host that cannot run the backend. */
  else if (cli.b->available && cli.b->available () == -1)
    ret = XM_CANNOT;
  else if (strcmp (mode, "send") == 0)
    ret = send_cmd (&cli);
  else
    ret = receive (&cli);

 out:
  xm_cli_free (&cli);
  return ret;
}

const struct xm_backend_ops *
xm_backend_find (const char *name)
{
  if (strcmp (name, "uffd") == 0)
    return &xm_backend_uffd;
  if (strcmp (name, "xen") == 0)
    return &xm_backend_xen;
  if (strcmp (name, "none") == 0)
    return &xm_backend_none;
  return NULL;
}
