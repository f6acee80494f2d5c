/* sxm-mirror: drive the mirror filter's control socket from the shell.
 * Prints the filter's one-line JSON reply on stdout; see
 * doc/sxm-mirror.pod. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "fullio.h"
#include "jsonline.h"
#include "log.h"
#include "mirrorctl.h"

enum { EXIT_OK = 0, EXIT_CMD_FAILED = 1, EXIT_USAGE = 2, EXIT_NOCONN = 4 };

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: sxm-mirror [--timeout=S] SOCKET COMMAND [ARGS]\n"
"       sxm-mirror --version | --help\n"
"Send one command to nbdkit-mirror-filter's control socket and print its\n"
"JSON reply.  Commands:\n"
"  start DEST-URI [--export=NAME] [--connections=N] [--dest-timeout=S]\n"
"                 [--insecure] [--no-guest-priority]\n"
"                                mirror guest writes to DEST-URI (the bulk\n"
"                                copy yields to guest writes unless\n"
"                                --no-guest-priority)\n"
"  status                        state and counters\n"
"  copied                        tell the filter the bulk copy finished\n"
"  switchover [--verify|--no-verify]\n"
"                                hold guest writes, flush: ready; compare\n"
"                                the disks too (in the hold) with --verify,\n"
"                                or by default if no copy reported copied\n"
"  resume                        ready -> mirroring (writes flow again)\n"
"  complete                      ready -> completed (writes refused)\n"
"  flush                         flush both sides now (mirroring; no hold)\n"
"  abort                         stop mirroring; the source is untouched\n"
"  hook [--no-verify] [--output=FILE] [SOCKET...]\n"
"                                xenmem's hook, for every SOCKET at once:\n"
"                                XENMEM_HOOK_PHASE=prepare: flush;\n"
"                                paused (default): switchover (all or none)\n"
"  raw JSON                      send JSON as it is\n"
"Exit status: 0 ok, 1 the filter refused (its error on stderr), 2 usage,\n"
"4 cannot reach the socket.\n");
}

struct cli {
  const char *export, *conns, *dtimeout, *output;
  bool insecure, no_verify, verify;
  int guest_priority;           /* -1: the filter's default */
  double timeout;
};

/* Options may come before SOCKET and again after COMMAND: both passes use
 * this.  OPTSTRING "+h" stops at the first operand. */
static void
parse_options (int argc, char **argv, const char *optstring, struct cli *o)
{
  static const struct option opts[] = {
    { "export", required_argument, NULL, 'e' },
    { "connections", required_argument, NULL, 'c' },
    { "dest-timeout", required_argument, NULL, 'd' },
    { "timeout", required_argument, NULL, 't' },
    { "insecure", no_argument, NULL, 'i' },
    { "guest-priority", no_argument, NULL, 'g' },
    { "no-guest-priority", no_argument, NULL, 'G' },
    { "no-verify", no_argument, NULL, 'n' },
    { "verify", no_argument, NULL, 'v' },
    { "output", required_argument, NULL, 'o' },
    { "help", no_argument, NULL, 'h' },
    { "version", no_argument, NULL, 'V' },
    { NULL, 0, NULL, 0 },
  };
  char *end;
  int c;

  while ((c = getopt_long (argc, argv, optstring, opts, NULL)) != -1) {
    switch (c) {
    case 'e': o->export = optarg; break;
    case 'c': o->conns = optarg; break;
    case 'd': o->dtimeout = optarg; break;
    case 'i': o->insecure = true; break;
    case 'g': o->guest_priority = 1; break;
    case 'G': o->guest_priority = 0; break;
    case 'n': o->no_verify = true; break;
    case 'v': o->verify = true; break;
    case 'o': o->output = optarg; break;
    case 'V':
      printf ("sxm-mirror %s\n", SXM_VERSION);
      exit (0);
    case 't':
      o->timeout = strtod (optarg, &end);
      if (*end || !(o->timeout >= 0)) {
        fprintf (stderr, "sxm-mirror: bad --timeout '%s'\n", optarg);
        exit (EXIT_USAGE);
      }
      break;
    case 'h': usage (stdout); exit (EXIT_OK);
    default: usage (stderr); exit (EXIT_USAGE);
    }
  }
}

/* One request to one socket; the raw reply in *RAW (malloc'd, or NULL),
 * also printed on ECHO if not NULL.  A refusal is reported on stderr as
 * "sxm-mirror: LABEL: error".  0 if the filter said ok, 1 if it refused,
 * 4 if no reply. */
static int
call_one (const char *sock, const char *label, const char *req,
          double timeout, FILE *echo, char **raw)
{
  struct json_obj reply;
  bool ok = false;
  int fd = mirrorctl_connect (sock);

  *raw = NULL;
  if (fd == -1)
    return EXIT_NOCONN;
  if (mirrorctl_call (fd, req, timeout, &reply, raw) == -1) {
    close (fd);
    return EXIT_NOCONN;
  }
  close (fd);
  if (echo)
    fprintf (echo, "%s\n", *raw);
  json_bool (&reply, "ok", &ok);
  if (!ok) {
    const char *e = json_str (&reply, "error");
    fprintf (stderr, "sxm-mirror: %s: %s\n", label, e ? e : "failed");
  }
  json_free (&reply);
  return ok ? EXIT_OK : EXIT_CMD_FAILED;
}

/* Whether a switchover compares the disks: --verify or --no-verify; by
 * default, as sxm migrate does, not when a bulk copy has reported
 * "copied" (the filter's invariant then makes the destination equal
 * once the writes in flight drain: doc/design.md, "Live mirror"), so
 * that guest writes are held only for a drain and two flushes; a
 * comparison reads every allocated byte on both sides inside the hold
 * (6.4 s was reported for a 1 GiB disk).  Without a finished copy the
 * filter accepts only a verified switchover, so that is the default
 * then. */
static bool
switchover_verifies (const char *sock, const struct cli *o)
{
  struct json_obj st;
  const char *copy;
  bool done;
  int fd;

  if (o->verify || o->no_verify)
    return o->verify;
  fd = mirrorctl_connect (sock);
  if (fd == -1)
    return true;                /* the switchover itself will say why */
  if (mirrorctl_call (fd, "{\"cmd\":\"status\"}", o->timeout, &st,
                      NULL) == -1) {
    close (fd);
    return true;
  }
  close (fd);
  copy = json_str (&st, "copy");
  done = copy && strcmp (copy, "done") == 0;
  json_free (&st);
  if (!done)
    fprintf (stderr, "sxm-mirror: switchover: no bulk copy has reported "
             "'copied': comparing the disks while guest writes are held "
             "(this takes as long as reading every allocated byte)\n");
  return !done;
}

/* "hook": run as xenmem's hook (xenmem send ADDR -- sxm-mirror hook ...),
 * for several disks at once, in the downtime, without a shell in between.
 * Phase prepare: flush every disk.  Phase paused: switch every disk over;
 * if one fails, every disk goes back to mirroring (resume) and the hook
 * fails, so that xenmem resumes the guest.  One child per socket; replies
 * come back through pipes and are written in socket order, one line
 * each, to --output (FILE for paused, FILE.prepare for prepare). */
static int
run_hook (char **socks, int n, const struct cli *o)
{
  const char *phase = getenv ("XENMEM_HOOK_PHASE");
  bool prepare = phase && strcmp (phase, "prepare") == 0;
  const char *req = prepare ? "{\"cmd\":\"flush\"}"
    : o->no_verify ? "{\"cmd\":\"switchover\",\"verify\":false}"
    : "{\"cmd\":\"switchover\"}";
  pid_t pids[n];
  int fds[n], failed = 0;
  FILE *out = NULL;

  if (phase && !prepare && strcmp (phase, "paused") != 0) {
    fprintf (stderr, "sxm-mirror: hook: XENMEM_HOOK_PHASE=%s is neither "
             "prepare nor paused\n", phase);
    return EXIT_USAGE;
  }
  for (int i = 0; i < n; i++) {
    int p[2];
    if (pipe (p) == -1) {
      perror ("sxm-mirror: pipe");
      return EXIT_CMD_FAILED;
    }
    pids[i] = fork ();
    if (pids[i] == -1) {
      perror ("sxm-mirror: fork");
      return EXIT_CMD_FAILED;
    }
    if (pids[i] == 0) {
      char *raw;
      int r;
      close (p[0]);
      r = call_one (socks[i], socks[i], req, o->timeout, NULL, &raw);
      if (raw) {
        size_t len = strlen (raw);
        if (full_write (p[1], raw, len) == -1)
          r = r ? r : EXIT_CMD_FAILED;
      }
      _exit (r);
    }
    close (p[1]);
    fds[i] = p[0];
  }
  if (o->output) {
    char path[4096];
    snprintf (path, sizeof path, "%s%s", o->output, prepare ? ".prepare" : "");
    out = fopen (path, "w");
    if (!out)
      fprintf (stderr, "sxm-mirror: %s: %s\n", path, strerror (errno));
  }
  for (int i = 0; i < n; i++) {
    char buf[4096];
    ssize_t r = full_read (fds[i], buf, sizeof buf - 1);
    size_t len = r > 0 ? r : 0;
    int st;
    buf[len] = 0;
    close (fds[i]);
    while (waitpid (pids[i], &st, 0) == -1 && errno == EINTR)
      ;
    if (!WIFEXITED (st) || WEXITSTATUS (st) != 0)
      failed++;
    if (out)
      fprintf (out, "%s\n", len ? buf : "null");
  }
  if (out)
    fclose (out);
  if (failed && !prepare) {
    for (int i = 0; i < n; i++) {
      char *raw;
      call_one (socks[i], socks[i], "{\"cmd\":\"resume\"}", o->timeout,
                NULL, &raw);
      free (raw);
    }
    fprintf (stderr, "sxm-mirror: hook: switchover failed on %d of %d "
             "disks; every disk is mirroring again\n", failed, n);
  }
  else if (failed)
    fprintf (stderr, "sxm-mirror: hook: flush failed on %d of %d disks\n",
             failed, n);
  return failed ? EXIT_CMD_FAILED : EXIT_OK;
}

int
main (int argc, char **argv)
{
  struct cli o = { .guest_priority = -1 };
  struct jbuf req = { 0 };
  char *raw = NULL, *end;
  const char *sock, *cmd;

  sxm_log_set_program ("sxm-mirror");
  parse_options (argc, argv, "+h", &o);
  if (argc - optind < 2) {
    usage (stderr);
    exit (EXIT_USAGE);
  }
  sock = argv[optind++];
  cmd = argv[optind++];
  /* Options may follow the command too. */
  {
    int rest_argc = argc - optind + 1;
    char **rest = argv + optind - 1;
    optind = 0;                 /* glibc: start afresh */
    parse_options (rest_argc, rest, "h", &o);
    argc = rest_argc;
    argv = rest;
  }
  if (o.verify && o.no_verify) {
    fprintf (stderr, "sxm-mirror: --verify and --no-verify contradict each "
             "other\n");
    exit (EXIT_USAGE);
  }

  if (strcmp (cmd, "hook") == 0) {
    /* SOCKET hook [SOCKET...]: argv[optind..] are the other sockets. */
    int n = 1 + argc - optind;
    char *socks[n];
    socks[0] = (char *) sock;
    for (int i = 1; i < n; i++)
      socks[i] = argv[optind + i - 1];
    return run_hook (socks, n, &o);
  }
  if (strcmp (cmd, "raw") == 0) {
    if (argc - optind != 1) {
      usage (stderr);
      exit (EXIT_USAGE);
    }
    jbuf_add (&req, "%s", argv[optind]);
  }
  else if (strcmp (cmd, "start") == 0) {
    if (argc - optind != 1) {
      fprintf (stderr, "sxm-mirror: start needs the destination NBD URI\n");
      exit (EXIT_USAGE);
    }
    jbuf_add (&req, "{\"cmd\":\"start\",\"dest\":");
    jbuf_str (&req, argv[optind]);
    if (o.export) {
      jbuf_add (&req, ",\"export\":");
      jbuf_str (&req, o.export);
    }
    if (o.conns) {
      unsigned long n = strtoul (o.conns, &end, 10);
      if (*end || n < 1 || n > 16) {
        fprintf (stderr, "sxm-mirror: bad --connections '%s' (1 to 16)\n",
                 o.conns);
        exit (EXIT_USAGE);
      }
      jbuf_add (&req, ",\"connections\":%lu", n);
    }
    if (o.dtimeout) {
      double t = strtod (o.dtimeout, &end);
      if (*end || !(t > 0)) {
        fprintf (stderr, "sxm-mirror: bad --dest-timeout '%s'\n", o.dtimeout);
        exit (EXIT_USAGE);
      }
      jbuf_add (&req, ",\"timeout\":%g", t);
    }
    if (o.insecure)
      jbuf_add (&req, ",\"insecure\":true");
    if (o.guest_priority >= 0)
      jbuf_add (&req, ",\"guest_priority\":%s",
                o.guest_priority ? "true" : "false");
    jbuf_add (&req, "}");
  }
  else if (strcmp (cmd, "status") == 0 || strcmp (cmd, "copied") == 0 ||
           strcmp (cmd, "switchover") == 0 || strcmp (cmd, "resume") == 0 ||
           strcmp (cmd, "complete") == 0 || strcmp (cmd, "abort") == 0 ||
           strcmp (cmd, "flush") == 0) {
    if (argc - optind != 0) {
      usage (stderr);
      exit (EXIT_USAGE);
    }
    jbuf_add (&req, "{\"cmd\":\"%s\"%s}", cmd,
              strcmp (cmd, "switchover") == 0 &&
              !switchover_verifies (sock, &o) ? ",\"verify\":false" : "");
  }
  else {
    fprintf (stderr, "sxm-mirror: unknown command '%s'\n", cmd);
    usage (stderr);
    exit (EXIT_USAGE);
  }
  if (req.oom) {
    fprintf (stderr, "sxm-mirror: out of memory\n");
    exit (EXIT_CMD_FAILED);
  }

  {
    int r = call_one (sock, cmd, req.s, o.timeout, stdout, &raw);
    free (raw);
    jbuf_free (&req);
    return r;
  }
}
