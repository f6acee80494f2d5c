/* xenmem: live memory transfer (iterative pre-copy under dirty logging).
 *
 *   xenmem send    [OPTIONS] --backend=B [--domid=ID] ADDR
 *   xenmem receive [OPTIONS] --backend=B ADDR
 *
 * See doc/xenmem.pod for the options, doc/xenmem-stream.md for the wire
 * format and xenmem/engine.c for the policy. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "engine.h"
#include "jsonline.h"
#include "log.h"
#include "size.h"
#include "transport.h"

static void
usage (FILE *f)
{
  fprintf (f,
"usage: xenmem send    [OPTIONS] --backend=B [--domid=ID] ADDR [-- COMMAND...]\n"
"       xenmem receive [OPTIONS] --backend=B ADDR\n"
"B: xen, uffd (a test guest), none (no memory: commit handshake only), kvm\n"
"ADDR: unix:PATH or tcp:HOST:PORT (receive listens on it, send connects).\n"
"COMMAND (send): the hook, run twice with XENMEM_HOOK_PHASE=prepare (just\n"
"  before the pause) and =paused (before the commit); if it fails, the\n"
"  guest stays on the source (sxm migrate: disk flush and switchover).\n"
"  --tls-psk=FILE          TLS with a pre-shared key (nbdkit's psk format)\n"
"  --tls-identity=NAME     PSK identity to use (send; default: the first)\n"
"  --tls-x509=DIR          TLS with x509 certificates (ca-cert.pem, ...)\n"
"  --insecure              allow plaintext TCP to a non-loopback address\n"
"  --timeout=S             connect/accept and per-read timeout (default 60)\n"
"  --accept-timeout=S      receive: wait this long for the sender instead\n"
"  --abort                 send: connect, authenticate and hang up: the\n"
"                          receiver discards and exits 1 (sxm's rollback)\n"
"  --json[=FILE]           final report as one JSON object (stdout or FILE)\n"
"  -q, --quiet             no per-round lines\n"
" send:\n"
"  --downtime-ms=MS        stop-and-copy once predicted downtime <= MS (30)\n"
"  --max-rounds=N          at most N pre-copy rounds (30)\n"
"  --rate=BYTES            bandwidth limit, bytes/s (k/M/G suffixes)\n"
"  --verify-memory         send sha256 of memory at pause; receiver checks\n"
" test guests (kvm, uffd):\n"
"  --guest-mem=SIZE        guest RAM (default 64M)\n"
"  --dirty-rate=BYTES      bytes/s of pages the guest dirties (default 0)\n"
"  --dirty-size=SIZE       size of the region it dirties (default: all)\n"
"  --warmup=S              let the guest run S seconds before migrating\n"
"  --check=S               after the move, let the guest run S seconds and\n"
"                          check it (receive: on the destination; send: on\n"
"                          the source when the migration failed)\n"
"Exit: 0 migrated/running, 1 failed (source resumed), 2 usage,\n"
"      3 in doubt (committed, destination did not confirm), 4 cannot start.\n");
}

enum {
  O_BACKEND = 256, O_DOMID, O_PSK, O_IDENT, O_X509, O_INSECURE, O_TIMEOUT,
  O_JSON, O_DOWNTIME, O_ROUNDS, O_RATE, O_VERIFY, O_GMEM, O_DRATE, O_DSIZE,
  O_WARMUP, O_CHECK, O_ACCEPT, O_ABORT,
};

static bool
parse_double (const char *s, double *out)
{
  char *end;
  errno = 0;
  *out = strtod (s, &end);
  return errno == 0 && end != s && *end == 0 && *out >= 0;
}

int
main (int argc, char **argv)
{
  static const struct option longopts[] = {
    { "backend", required_argument, NULL, O_BACKEND },
    { "domid", required_argument, NULL, O_DOMID },
    { "tls-psk", required_argument, NULL, O_PSK },
    { "tls-identity", required_argument, NULL, O_IDENT },
    { "tls-x509", required_argument, NULL, O_X509 },
    { "insecure", no_argument, NULL, O_INSECURE },
    { "timeout", required_argument, NULL, O_TIMEOUT },
    { "accept-timeout", required_argument, NULL, O_ACCEPT },
    { "abort", no_argument, NULL, O_ABORT },
    { "json", optional_argument, NULL, O_JSON },
    { "quiet", no_argument, NULL, 'q' },
    { "downtime-ms", required_argument, NULL, O_DOWNTIME },
    { "max-rounds", required_argument, NULL, O_ROUNDS },
    { "rate", required_argument, NULL, O_RATE },
    { "verify-memory", no_argument, NULL, O_VERIFY },
    { "guest-mem", required_argument, NULL, O_GMEM },
    { "dirty-rate", required_argument, NULL, O_DRATE },
    { "dirty-size", required_argument, NULL, O_DSIZE },
    { "warmup", required_argument, NULL, O_WARMUP },
    { "check", required_argument, NULL, O_CHECK },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
  };
  const struct xm_backend_ops *b = NULL;
  const char *mode, *addr, *domid = NULL, *json_file = NULL;
  struct xm_tls_opts tls = { 0 };
  struct xm_send_opts so = { .downtime_ms = 30, .max_rounds = 30 };
  struct xm_recv_opts ro = { 0 };
  struct xm_guest_opts g = { .mem_bytes = 64 << 20 };
  struct jbuf rep = { 0 };
  double timeout = 60, warmup = 0, check = 0, accept_timeout = -1;
  bool json = false, quiet = false, abort_ = false;
  struct xm_conn *c;
  int c_, ret;
  uint64_t v;

  sxm_log_set_program ("xenmem");
  signal (SIGPIPE, SIG_IGN);
  if (argc < 2 || strcmp (argv[1], "-h") == 0 ||
      strcmp (argv[1], "--help") == 0) {
    usage (argc < 2 ? stderr : stdout);
    exit (argc < 2 ? XM_USAGE : 0);
  }
  /* "-- COMMAND [ARG...]" ends the options: the hook, kept as an
   * argv and never given to a shell. */
  for (int i = 2; i < argc; i++)
    if (strcmp (argv[i], "--") == 0) {
      if (i + 1 >= argc) {
        fprintf (stderr, "xenmem: '--' must be followed by a COMMAND\n");
        exit (XM_USAGE);
      }
      so.paused_hook = &argv[i + 1];
      argc = i;
      break;
    }
  mode = argv[1];
  if (strcmp (mode, "send") != 0 && strcmp (mode, "receive") != 0) {
    fprintf (stderr, "xenmem: unknown command '%s' (send or receive)\n", mode);
    exit (XM_USAGE);
  }
  optind = 2;
  while ((c_ = getopt_long (argc, argv, "qh", longopts, NULL)) != -1) {
    switch (c_) {
    case O_BACKEND:
      if (!(b = xm_backend_find (optarg))) {
        fprintf (stderr, "xenmem: unknown backend '%s' (xen, uffd, none "
                 "or kvm)\n",
                 optarg);
        exit (XM_USAGE);
      }
      break;
    case O_DOMID: domid = optarg; break;
    case O_PSK: tls.psk_file = optarg; break;
    case O_IDENT: tls.psk_identity = optarg; break;
    case O_X509: tls.x509_dir = optarg; break;
    case O_INSECURE: tls.insecure = true; break;
    case O_JSON: json = true; json_file = optarg; break;
    case 'q': quiet = true; break;
    case O_VERIFY: so.verify_memory = true; break;
    case O_ABORT: abort_ = true; break;
    case O_TIMEOUT: case O_DOWNTIME: case O_WARMUP: case O_CHECK:
    case O_ACCEPT: {
      double d;
      if (!parse_double (optarg, &d)) {
        fprintf (stderr, "xenmem: --%s: '%s' is not a non-negative number\n",
                 c_ == O_TIMEOUT ? "timeout" : c_ == O_DOWNTIME ?
                 "downtime-ms" : c_ == O_WARMUP ? "warmup" : c_ == O_ACCEPT ?
                 "accept-timeout" : "check", optarg);
        exit (XM_USAGE);
      }
      if (c_ == O_TIMEOUT) timeout = d;
      else if (c_ == O_DOWNTIME) so.downtime_ms = d;
      else if (c_ == O_WARMUP) warmup = d;
      else if (c_ == O_ACCEPT) accept_timeout = d;
      else check = d;
      break;
    }
    case O_ROUNDS: case O_RATE: case O_GMEM: case O_DRATE: case O_DSIZE:
      if (parse_size (optarg, &v) == -1) {
        fprintf (stderr, "xenmem: '%s' is not a size\n", optarg);
        exit (XM_USAGE);
      }
      if (c_ == O_ROUNDS) {
        if (v < 1 || v > 1000) {
          fprintf (stderr, "xenmem: --max-rounds must be 1 to 1000\n");
          exit (XM_USAGE);
        }
        so.max_rounds = v;
      }
      else if (c_ == O_RATE) so.rate = v;
      else if (c_ == O_GMEM) g.mem_bytes = v;
      else if (c_ == O_DRATE) g.dirty_rate = v;
      else g.dirty_bytes = v;
      break;
    case 'h': usage (stdout); exit (0);
    default: usage (stderr); exit (XM_USAGE);
    }
  }
  if (!b) {
    fprintf (stderr, "xenmem: --backend=xen|uffd|none|kvm is required\n");
    exit (XM_USAGE);
  }
  if (argc - optind != 1) {
    fprintf (stderr, "xenmem: %s needs exactly one ADDR (unix:PATH or "
             "tcp:HOST:PORT)\n", mode);
    exit (XM_USAGE);
  }
  if (b->id == XM_BACKEND_XEN && !domid && strcmp (mode, "send") == 0) {
    fprintf (stderr, "xenmem: send with the xen backend needs --domid\n");
    exit (XM_USAGE);
  }
  if (b->id == XM_BACKEND_XEN && domid && strcmp (mode, "receive") == 0) {
    fprintf (stderr, "xenmem: receive with the xen backend creates the domain "
             "from the sender's configuration: no --domid\n");
    exit (XM_USAGE);
  }
  if (so.paused_hook && strcmp (mode, "send") != 0) {
    fprintf (stderr, "xenmem: a hook (-- COMMAND) is for send only\n");
    exit (XM_USAGE);
  }
  addr = argv[optind];
  so.quiet = ro.quiet = quiet;
  ro.check_seconds = check;
  /* Test hook for the "in doubt" path: a receiver that starts the guest
   * but never says so. */
  ro.test_no_running = getenv ("XENMEM_TEST_NO_RUNNING") != NULL;

  if (abort_) {
    /* Only a holder of the key can make the receiver give up early. */
    if (strcmp (mode, "send") != 0) {
      fprintf (stderr, "xenmem: --abort is for send only\n");
      exit (XM_USAGE);
    }
    c = xm_connect (addr, &tls, timeout);
    if (!c)
      exit (XM_CANNOT);
    xm_close (c);
    if (!quiet)
      fprintf (stderr, "xenmem: told the receiver to give up\n");
    exit (0);
  }

  jbuf_add (&rep, "{\"cmd\":\"%s\",\"backend\":\"%s\"", mode, b->name);
  if (b->id == XM_BACKEND_XEN && xm_xen_present () == -1)
    exit (XM_CANNOT);
  if (b->id == XM_BACKEND_XEN && strcmp (mode, "send") == 0) {
    c = xm_connect (addr, &tls, timeout);
    if (!c)
      exit (XM_CANNOT);
    xm_set_timeout (c, timeout);
    ret = xm_xen_send (domid, c, &so, &rep);
    xm_close (c);
    if (ret == XM_FAILED)
      fprintf (stderr, "xenmem: migration failed; the source domain runs "
               "on\n");
  }
  else if (b->id == XM_BACKEND_XEN) {
    c = xm_listen_accept (addr, &tls,
                          accept_timeout >= 0 ? accept_timeout : timeout);
    if (!c)
      exit (XM_CANNOT);
    xm_set_timeout (c, timeout);
    ret = xm_xen_receive (c, &ro, &rep);
    xm_close (c);
  }
  else if (strcmp (mode, "send") == 0) {
    struct xm_source *s;
    if (b->open_source (domid, &g, &s) == -1)
      exit (XM_CANNOT);
    if (warmup > 0) {
      struct timespec ts = { (time_t) warmup,
                             (long) ((warmup - (time_t) warmup) * 1e9) };
      nanosleep (&ts, NULL);
    }
    c = xm_connect (addr, &tls, timeout);
    if (!c) {
      b->close_source (s, false);
      exit (XM_CANNOT);
    }
    xm_set_timeout (c, timeout);
    ret = xm_send (b, s, c, &so, &rep);
    xm_close (c);
    if (ret == XM_FAILED) {
      fprintf (stderr, "xenmem: migration failed; the source guest was "
               "resumed\n");
      if (check > 0 && b->check_source) {
        jbuf_add (&rep, ",\"check\":{\"seconds\":%.3f", check);
        int r = b->check_source (s, check, &rep);
        jbuf_add (&rep, ",\"ok\":%s}", r == 0 ? "true" : "false");
        if (r == -1)
          fprintf (stderr, "xenmem: the resumed source guest failed its "
                   "check\n");
      }
    }
    if (b->describe_source)
      b->describe_source (s, &rep);
    /* In doubt, the paused source is kept only as long as we run: for the
     * test guests that is now; a xen domain stays paused. */
    b->close_source (s, ret == XM_OK);
  }
  else {
    c = xm_listen_accept (addr, &tls,
                          accept_timeout >= 0 ? accept_timeout : timeout);
    if (!c)
      exit (XM_CANNOT);
    xm_set_timeout (c, timeout);
    ret = xm_receive (b, domid, c, &ro, &rep);
    xm_close (c);
  }
  jbuf_add (&rep, ",\"exit\":%d}", ret);
  if (json) {
    FILE *f = json_file ? fopen (json_file, "w") : stdout;
    if (!f) {
      fprintf (stderr, "xenmem: %s: %m\n", json_file);
      ret = ret ? ret : XM_FAILED;
    }
    else {
      fprintf (f, "%s\n", rep.s ? rep.s : "{}");
      if (f != stdout)
        fclose (f);
    }
  }
  else if (!quiet)
    fprintf (stderr, "xenmem: %s\n", ret == XM_OK ? (strcmp (mode, "send") == 0
             ? "migrated" : "the guest runs here") : "failed");
  jbuf_free (&rep);
  return ret;
}

const struct xm_backend_ops *
xm_backend_find (const char *name)
{
  if (strcmp (name, "uffd") == 0)
    return &xm_backend_uffd;
  if (strcmp (name, "xen") == 0)
    return &xm_backend_xen;
  if (strcmp (name, "kvm") == 0)
    return &xm_backend_kvm;
  if (strcmp (name, "none") == 0)
    return &xm_backend_none;
  return NULL;
}
