/* sxm-mirror: drive the mirror filter's control socket from the shell.
 * Prints the filter's one-line JSON reply on stdout; see
 * doc/sxm-mirror.pod. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jsonline.h"
#include "log.h"
#include "mirrorctl.h"

enum { EXIT_OK = 0, EXIT_CMD_FAILED = 1, EXIT_USAGE = 2, EXIT_NOCONN = 4 };

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: sxm-mirror [--timeout=S] SOCKET COMMAND [ARGS]\n"
"Send one command to nbdkit-mirror-filter's control socket and print its\n"
"JSON reply.  Commands:\n"
"  start DEST-URI [--export=NAME] [--connections=N] [--dest-timeout=S]\n"
"                 [--insecure]   mirror guest writes to DEST-URI\n"
"  status                        state and counters\n"
"  copied                        tell the filter the bulk copy finished\n"
"  switchover [--no-verify]      hold guest writes, flush, compare: ready\n"
"  resume                        ready -> mirroring (writes flow again)\n"
"  complete                      ready -> completed (writes refused)\n"
"  flush                         flush both sides now (mirroring; no hold)\n"
"  abort                         stop mirroring; the source is untouched\n"
"  raw JSON                      send JSON as it is\n"
"Exit status: 0 ok, 1 the filter refused (its error on stderr), 2 usage,\n"
"4 cannot reach the socket.\n");
}

struct cli {
  const char *export, *conns, *dtimeout;
  bool insecure, no_verify;
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
    { "no-verify", no_argument, NULL, 'n' },
    { "help", no_argument, NULL, 'h' },
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
    case 'n': o->no_verify = true; break;
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

int
main (int argc, char **argv)
{
  struct cli o = { 0 };
  struct jbuf req = { 0 };
  struct json_obj reply;
  char *raw = NULL, *end;
  const char *sock, *cmd;
  bool ok = false;
  int fd;

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
              o.no_verify && strcmp (cmd, "switchover") == 0
              ? ",\"verify\":false" : "");
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

  fd = mirrorctl_connect (sock);
  if (fd == -1)
    exit (EXIT_NOCONN);
  if (mirrorctl_call (fd, req.s, o.timeout, &reply, &raw) == -1)
    exit (EXIT_NOCONN);
  close (fd);
  printf ("%s\n", raw);
  json_bool (&reply, "ok", &ok);
  if (!ok) {
    const char *e = json_str (&reply, "error");
    fprintf (stderr, "sxm-mirror: %s: %s\n", cmd, e ? e : "failed");
  }
  json_free (&reply);
  free (raw);
  jbuf_free (&req);
  return ok ? EXIT_OK : EXIT_CMD_FAILED;
}
