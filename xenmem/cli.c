/* xenmem's command line: option parsing and the send path (cli.h). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "preflight.h"
#include "log.h"
#include "size.h"

void
xm_cli_usage (FILE *f)
{
  fprintf (f,
"usage: xenmem send    [OPTIONS] --backend=B [--domid=ID] ADDR [-- COMMAND...]\n"
"       xenmem send    [OPTIONS] --backend=uffd --guest=SOCKET ADDR [-- COMMAND...]\n"
"       xenmem receive [OPTIONS] --backend=B [--monitor=SOCKET] ADDR\n"
"       xenmem guest   --monitor=SOCKET [GUEST OPTIONS]\n"
"       xenmem monitor SOCKET status|check S|cont|quit\n"
"       xenmem --version | --help\n"
"B: xen, uffd (a test guest), none (no memory: commit handshake only)\n"
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
"  --progress=json[:FD]    one JSON line per pre-copy round on FD (default 2)\n"
"  --downtime-ms=MS        stop-and-copy once predicted downtime <= MS (30)\n"
"  --max-rounds=N          at most N pre-copy rounds (30)\n"
"  --no-auto-converge      never slow the guest down (default: throttle its\n"
"                          vCPUs while it dirties memory faster than half\n"
"                          the bandwidth; xen: its scheduler cap)\n"
"  --throttle-initial=PCT  first throttle, percent of CPU time taken (20)\n"
"  --throttle-step=PCT     added each time it is not enough (10)\n"
"  --max-throttle=PCT      at most this much (99)\n"
"  --rate=BYTES            bandwidth limit, bytes/s (k/M/G suffixes)\n"
"  --verify-memory         send sha256 of memory at pause; receiver checks\n"
"  --disk-map=TARGET=UUID  (xen, repeatable) the domain's disk whose target\n"
"                          is TARGET goes to the destination disk UUID; every\n"
"                          disk of the domain must be mapped\n"
"  --check-only            (xen) ask the receiver whether it would take the\n"
"                          domain (Xen version, disk map, memory, CPU), then\n"
"                          hang up: exit 0 yes, 4 no; the receiver waits on\n"
"  --guest=SOCKET          (uffd) migrate the running VM whose monitor is\n"
"                          SOCKET (xenmem guest, receive --monitor) instead\n"
"                          of a new guest\n"
" receive:\n"
"  --disk-map=UUID=DEVICE  (xen, repeatable) the sender's disk UUID becomes\n"
"                          phy:DEVICE (a block device) in the new domain\n"
"  --disk-script=PATH      (xen) the hotplug script those disks get (an\n"
"                          executable, absolute path; sxm's block-sxm);\n"
"                          default: Xen's own block script\n"
" test guest (uffd):\n"
"  --guest-mem=SIZE        guest RAM (default 64M)\n"
"  --dirty-rate=BYTES      bytes/s of pages the guest dirties (default 0)\n"
"  --dirty-size=SIZE       size of the region it dirties (default: all)\n"
"  --disk=URI              (uffd, up to 8) an NBD disk the guest writes\n"
"                          records to; receive: the destination's disks\n"
"  --disk-rate=N           records of 4 KiB the guest writes a second (50)\n"
"  --disk-slots=N          record slots per disk, multiple of 4 (1024)\n"
"  --warmup=S              let the guest run S seconds before migrating\n"
"  --check=S               after the move, let the guest run S seconds and\n"
"                          check it (receive: on the destination; send: on\n"
"                          the source when the migration failed)\n"
"  --monitor=SOCKET        (uffd) guest, receive: keep the guest running and\n"
"                          serve its monitor at SOCKET (doc/xenmem.pod)\n"
"Exit: 0 migrated/running, 1 failed (source resumed), 2 usage,\n"
"      3 in doubt (committed, destination did not confirm), 4 cannot start.\n");
}

enum {
  O_BACKEND = 256, O_DOMID, O_PSK, O_IDENT, O_X509, O_INSECURE, O_TIMEOUT,
  O_JSON, O_DOWNTIME, O_ROUNDS, O_RATE, O_VERIFY, O_GMEM, O_DRATE, O_DSIZE,
  O_WARMUP, O_CHECK, O_ACCEPT, O_ABORT, O_DISK, O_DISK_RATE, O_DISK_SLOTS,
  O_MONITOR, O_GUEST, O_DISK_MAP, O_CHECK_ONLY, O_DISK_SCRIPT, O_PROGRESS,
  O_CONVERGE, O_NO_CONVERGE, O_THR_INITIAL, O_THR_STEP, O_THR_MAX,
};

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
  { "progress", required_argument, NULL, O_PROGRESS },
  { "downtime-ms", required_argument, NULL, O_DOWNTIME },
  { "max-rounds", required_argument, NULL, O_ROUNDS },
  { "auto-converge", no_argument, NULL, O_CONVERGE },
  { "no-auto-converge", no_argument, NULL, O_NO_CONVERGE },
  { "throttle-initial", required_argument, NULL, O_THR_INITIAL },
  { "throttle-step", required_argument, NULL, O_THR_STEP },
  { "max-throttle", required_argument, NULL, O_THR_MAX },
  { "rate", required_argument, NULL, O_RATE },
  { "verify-memory", no_argument, NULL, O_VERIFY },
  { "guest-mem", required_argument, NULL, O_GMEM },
  { "dirty-rate", required_argument, NULL, O_DRATE },
  { "dirty-size", required_argument, NULL, O_DSIZE },
  { "disk", required_argument, NULL, O_DISK },
  { "disk-map", required_argument, NULL, O_DISK_MAP },
  { "check-only", no_argument, NULL, O_CHECK_ONLY },
  { "disk-script", required_argument, NULL, O_DISK_SCRIPT },
  { "disk-rate", required_argument, NULL, O_DISK_RATE },
  { "disk-slots", required_argument, NULL, O_DISK_SLOTS },
  { "warmup", required_argument, NULL, O_WARMUP },
  { "check", required_argument, NULL, O_CHECK },
  { "monitor", required_argument, NULL, O_MONITOR },
  { "guest", required_argument, NULL, O_GUEST },
  { "help", no_argument, NULL, 'h' },
  { NULL, 0, NULL, 0 },
};

static bool
parse_double (const char *s, double *out)
{
  char *end;
  errno = 0;
  *out = strtod (s, &end);
  return errno == 0 && end != s && *end == 0 && *out >= 0;
}

static const char *
long_name (int val)
{
  for (const struct option *o = longopts; o->name; o++)
    if (o->val == val)
      return o->name;
  return "?";
}

/* Options that make a new guest (or describe one being built): neither a
 * monitor's send nor send --guest can take them, the guest exists. */
static bool
creates_guest (int c)
{
  switch (c) {
  case O_DOMID: case O_GMEM: case O_DRATE: case O_DSIZE: case O_DISK:
  case O_DISK_RATE: case O_DISK_SLOTS: case O_WARMUP: case O_MONITOR:
    return true;
  default:
    return false;
  }
}

static int
usage_error (const char *fmt, ...) __attribute__ ((format (printf, 1, 2)));

static int
usage_error (const char *fmt, ...)
{
  va_list ap;

  fprintf (stderr, "xenmem: ");
  va_start (ap, fmt);
  vfprintf (stderr, fmt, ap);
  va_end (ap);
  fprintf (stderr, "\n");
  return XM_USAGE;
}

/* One option; 0 or XM_USAGE. */
static int
take_option (struct xm_cli *cli, int c, const char *arg, unsigned flags,
             bool *disk_rate_set, bool *disk_slots_set)
{
  uint64_t v;
  double d;

  if (creates_guest (c) && !cli->guest_opt)
    cli->guest_opt = long_name (c);
  if ((flags & XM_CLI_MONITOR) && (creates_guest (c) || c == O_GUEST))
    return usage_error ("--%s: the VM's guest exists already; a monitor's "
                        "send takes the send options only", long_name (c));

  switch (c) {
  case O_BACKEND:
    if (!(cli->b = xm_backend_find (arg)))
      return usage_error ("unknown backend '%s' (xen, uffd or none)", arg);
    break;
  case O_DOMID: cli->domid = arg; break;
  case O_PSK: cli->tls.psk_file = arg; break;
  case O_IDENT: cli->tls.psk_identity = arg; break;
  case O_X509: cli->tls.x509_dir = arg; break;
  case O_INSECURE: cli->tls.insecure = true; break;
  case O_JSON: cli->json = true; cli->json_file = arg; break;
  case O_PROGRESS: {
    /* A monitor's request names no descriptor of the monitor's own. */
    unsigned long fd = 2;
    char *end = NULL;
    if (flags & XM_CLI_MONITOR)
      return usage_error ("--progress: not through a monitor");
    if (strncmp (arg, "json", 4) != 0 || (arg[4] && arg[4] != ':'))
      return usage_error ("--progress=%s: expected json or json:FD", arg);
    if (arg[4] == ':') {
      errno = 0;
      fd = strtoul (arg + 5, &end, 10);
      if (errno || end == arg + 5 || *end || fd < 1 || fd > 1 << 20)
        return usage_error ("--progress=%s: FD: a descriptor number", arg);
    }
    if (cli->so.progress && cli->so.progress != stderr &&
        cli->so.progress != stdout)
      fclose (cli->so.progress);
    cli->so.progress = fd == 2 ? stderr : fd == 1 ? stdout
                                        : fdopen ((int) fd, "w");
    if (!cli->so.progress)
      return usage_error ("--progress=%s: descriptor %lu: %s", arg, fd,
                          strerror (errno));
    break;
  }
  case 'q': cli->quiet = true; break;
  case O_VERIFY: cli->so.verify_memory = true; break;
  case O_ABORT: cli->abort_ = true; break;
  case O_CHECK_ONLY: cli->so.check_only = true; break;
  case O_DISK_SCRIPT: cli->ro.disk_script = arg; break;
  case O_MONITOR: cli->monitor = arg; break;
  case O_GUEST: cli->guest = arg; break;
  case O_DISK_MAP:
    if (cli->ndisk_map == XM_DISK_MAP_MAX)
      return usage_error ("--disk-map: at most %d disks", XM_DISK_MAP_MAX);
    if (!(cli->disk_map_args[cli->ndisk_map] = strdup (arg)))
      return usage_error ("out of memory");
    cli->ndisk_map++;
    break;
  case O_DISK:
    if (cli->ndisks == XM_DISKS_MAX)
      return usage_error ("--disk: at most %d disks", XM_DISKS_MAX);
    cli->disk_uris[cli->ndisks++] = arg;
    break;
  case O_TIMEOUT: case O_DOWNTIME: case O_WARMUP: case O_CHECK:
  case O_ACCEPT:
    if (!parse_double (arg, &d))
      return usage_error ("--%s: '%s' is not a non-negative number",
                          long_name (c), arg);
    if (c == O_TIMEOUT) cli->timeout = d;
    else if (c == O_DOWNTIME) cli->so.downtime_ms = d;
    else if (c == O_WARMUP) cli->warmup = d;
    else if (c == O_ACCEPT) cli->accept_timeout = d;
    else cli->check = d;
    break;
  case O_CONVERGE: case O_NO_CONVERGE:
    cli->so.converge.on = c == O_CONVERGE;
    cli->converge_opt = long_name (c);
    break;
  case O_THR_INITIAL: case O_THR_STEP: case O_THR_MAX: {
    char *end;
    unsigned long pct;
    errno = 0;
    pct = strtoul (arg, &end, 10);
    if (errno || end == arg || *end || pct < 1 || pct > 99)
      return usage_error ("--%s: '%s' is not a percentage from 1 to 99",
                          long_name (c), arg);
    if (c == O_THR_INITIAL) cli->so.converge.initial_pct = pct;
    else if (c == O_THR_STEP) cli->so.converge.step_pct = pct;
    else cli->so.converge.max_pct = pct;
    cli->converge_opt = long_name (c);
    break;
  }
  case O_ROUNDS: case O_RATE: case O_GMEM: case O_DRATE: case O_DSIZE:
  case O_DISK_RATE: case O_DISK_SLOTS:
    if (parse_size (arg, &v) == -1)
      return usage_error ("--%s: '%s' is not a size", long_name (c), arg);
    if (c == O_ROUNDS) {
      if (v < 1 || v > 1000)
        return usage_error ("--max-rounds must be 1 to 1000");
      cli->so.max_rounds = v;
    }
    else if (c == O_RATE) cli->so.rate = v;
    else if (c == O_GMEM) cli->g.mem_bytes = v;
    else if (c == O_DRATE) cli->g.dirty_rate = v;
    else if (c == O_DSIZE) cli->g.dirty_bytes = v;
    else if (c == O_DISK_RATE) {
      if (v > 1000000)
        return usage_error ("--disk-rate: at most 1000000 records/s");
      cli->g.disk_rate = v;
      *disk_rate_set = true;
    }
    else {
      if (v < 4 || v % 4 || v > (UINT32_C (1) << 20))
        return usage_error ("--disk-slots: a multiple of 4 from 4 to %"
                            PRIu32, UINT32_C (1) << 20);
      cli->g.disk_slots = v;
      *disk_slots_set = true;
    }
    break;
  default:
    abort ();
  }
  return 0;
}

/* --disk-map=FROM=TO, split and checked once the mode is known: send
 * maps a target (which may hold '=': split at the last one) to a UUID,
 * receive a UUID to a block device that exists now (a missing one is
 * found before a sender connects).  Each FROM and TO once. */
static int
check_disk_map (struct xm_cli *cli, bool send)
{
  struct xm_disk_map *m = send ? cli->so.disk_map : cli->ro.disk_map;
  uint8_t u[16];

  if (!cli->b || !cli->b->has_domains)
    return usage_error ("--disk-map is for the xen backend (a domain's "
                        "disks)");
  if (!send && strcmp (cli->mode, "receive") != 0)
    return usage_error ("--disk-map is for send and receive");
  for (unsigned i = 0; i < cli->ndisk_map; i++) {
    char *a = cli->disk_map_args[i];
    char *eq = send ? strrchr (a, '=') : strchr (a, '=');
    if (!eq || eq == a || !eq[1])
      return usage_error ("--disk-map=%s: expected %s", a, send
                          ? "TARGET=UUID" : "UUID=DEVICE");
    *eq = 0;
    m[i].from = a;
    m[i].to = eq + 1;
    if (xm_uuid_parse (send ? m[i].to : m[i].from, u) == -1)
      return usage_error ("--disk-map: '%s' is not a UUID", send ? m[i].to
                          : m[i].from);
    if (!send) {
      struct stat st;
      if (stat (m[i].to, &st) == -1 || !S_ISBLK (st.st_mode))
        return usage_error ("--disk-map: %s is not a block device%s%s",
                            m[i].to, errno == ENOENT ? "" : ": ",
                            errno == ENOENT ? "" : strerror (errno));
    }
    for (unsigned j = 0; j < i; j++)
      if (strcmp (m[j].from, m[i].from) == 0 || strcmp (m[j].to, m[i].to) == 0)
        return usage_error ("--disk-map: %s or %s is mapped twice",
                            m[i].from, m[i].to);
  }
  if (send)
    cli->so.ndisk_map = cli->ndisk_map;
  else
    cli->ro.ndisk_map = cli->ndisk_map;
  return 0;
}

/* What no single option can see: combinations, by mode. */
static int
check_combination (struct xm_cli *cli, int nargs, unsigned flags,
                   bool disk_rate_set, bool disk_slots_set)
{
  bool send = strcmp (cli->mode, "send") == 0;
  bool receive = strcmp (cli->mode, "receive") == 0;
  bool guest = strcmp (cli->mode, "guest") == 0;
  const char *m = cli->mode;

  /* A running VM is the uffd guest's: --backend is optional there. */
  if ((guest || cli->guest) && !cli->b)
    cli->b = &xm_backend_uffd;
  if (!cli->b && !(flags & XM_CLI_MONITOR))
    return usage_error ("--backend=xen|uffd|none is required");
  if (cli->b && !cli->b->test_guest &&
      (cli->guest || cli->monitor || guest || (flags & XM_CLI_MONITOR)))
    return usage_error ("%s: a running VM with a monitor (--guest, "
                        "--monitor, xenmem guest) is the uffd test guest's; "
                        "--backend=%s cannot", m, cli->b->name);
  if (guest ? nargs != 0 : nargs != 1)
    return usage_error (guest ? "guest takes no ADDR" : "%s needs exactly "
                        "one ADDR (unix:PATH or tcp:HOST:PORT)", m);
  if (send && cli->b && cli->b->has_domains && !cli->domid)
    return usage_error ("send with the xen backend needs --domid");
  if (receive && cli->b->has_domains && cli->domid)
    return usage_error ("receive with the xen backend creates the domain "
                        "from the sender's configuration: no --domid");
  if (cli->so.paused_hook && !send)
    return usage_error ("a hook (-- COMMAND) is for send only");
  if (cli->so.check_only &&
      (!send || !cli->b || !cli->b->can_check_only))
    return usage_error ("--check-only is for send with the xen backend");
  if (cli->abort_ && !send)
    return usage_error ("--abort is for send only");
  if (cli->so.progress && !send)
    return usage_error ("--progress is for send only");
  if (cli->converge_opt && !send)
    return usage_error ("--%s is for send only", cli->converge_opt);
  if (cli->so.converge.initial_pct > cli->so.converge.max_pct)
    return usage_error ("--throttle-initial (%u%%) is over --max-throttle "
                        "(%u%%)", cli->so.converge.initial_pct,
                        cli->so.converge.max_pct);
  if (cli->so.progress && cli->guest)
    return usage_error ("--progress with --guest: the rounds run in the "
                        "monitor's process, which has no descriptor of ours");
  if (cli->guest && !send)
    return usage_error ("--guest is for send only");
  if (cli->guest && cli->guest_opt)
    return usage_error ("--%s with --guest: the VM's guest exists already",
                        cli->guest_opt);
  if (cli->monitor && !receive && !guest)
    return usage_error ("--monitor is for receive and guest only");
  if (guest && !cli->monitor)
    return usage_error ("guest needs --monitor=SOCKET");
  if (cli->monitor && cli->b->adopt_dest == NULL)
    return usage_error ("--monitor: the %s backend cannot keep a guest "
                        "running under a monitor", cli->b->name);
  if (cli->ndisks) {
    if (receive ? cli->b->set_disks == NULL : !cli->b->test_guest)
      return usage_error ("--disk: the %s backend's guests have no disks "
                          "(the uffd test guest has)", cli->b->name);
    if (!disk_rate_set)
      cli->g.disk_rate = 50;
    if (!disk_slots_set)
      cli->g.disk_slots = 1024;
  }
  else if (disk_rate_set || disk_slots_set)
    return usage_error ("--disk-rate and --disk-slots need --disk");
  if (cli->ro.disk_script) {
    /* libxl would only find a bad script once the guest is paused. */
    const char *p = cli->ro.disk_script;
    if (strcmp (cli->mode, "receive") != 0 || !cli->b
        || !cli->b->has_domains || cli->ndisk_map == 0)
      return usage_error ("--disk-script is for receive --backend=xen with "
                          "--disk-map");
    if (p[0] != '/' || access (p, X_OK) == -1)
      return usage_error ("--disk-script: %s is not an executable file "
                          "(an absolute path)%s%s", p,
                          p[0] == '/' ? ": " : "",
                          p[0] == '/' ? strerror (errno) : "");
  }
  if (cli->ndisk_map)
    return check_disk_map (cli, send);
  return 0;
}

int
xm_cli_parse (struct xm_cli *cli, const char *mode, int argc,
              char *const *argv, unsigned flags)
{
  bool disk_rate_set = false, disk_slots_set = false;
  int n = 1, c, r;

  memset (cli, 0, sizeof *cli);
  cli->mode = mode;
  cli->so.downtime_ms = 30;
  cli->so.max_rounds = 30;
  cli->so.converge.on = true;
  cli->so.converge.initial_pct = 20;
  cli->so.converge.step_pct = 10;
  cli->so.converge.max_pct = 99;
  cli->g.mem_bytes = 64 << 20;
  cli->timeout = 60;
  cli->accept_timeout = -1;
  /* Our own argv: "xenmem" first, for getopt's messages; "-- COMMAND
   * [ARG...]" ends the options: the hook, kept as an argv and never given
   * to a shell. */
  cli->argv = calloc (argc + 2, sizeof *cli->argv);
  if (!cli->argv) {
    fprintf (stderr, "xenmem: out of memory\n");
    return XM_USAGE;
  }
  cli->argv[0] = (char *) "xenmem";
  for (int i = 0; i < argc; i++) {
    if (strcmp (argv[i], "--") == 0) {
      if (i + 1 >= argc)
        return usage_error ("'--' must be followed by a COMMAND");
      /* The hook's argv: after the options' NULL, in the same array. */
      for (int j = i + 1; j < argc; j++)
        cli->argv[j + 1] = argv[j];
      cli->so.paused_hook = &cli->argv[i + 2];
      break;
    }
    cli->argv[n++] = argv[i];
  }

  /* optind = 0: GNU getopt starts afresh (a monitor parses many argvs in
   * one process). */
  optind = 0;
  while ((c = getopt_long (n, cli->argv, "qh", longopts, NULL)) != -1) {
    if (c == 'h') {
      xm_cli_usage (stdout);
      cli->help = true;
      return 0;
    }
    if (c == '?' || c == ':')
      return XM_USAGE;          /* getopt said what */
    r = take_option (cli, c, optarg, flags, &disk_rate_set, &disk_slots_set);
    if (r)
      return r;
  }
  r = check_combination (cli, n - optind, flags, disk_rate_set,
                         disk_slots_set);
  if (r)
    return r;
  cli->addr = optind < n ? cli->argv[optind] : NULL;
  cli->so.quiet = cli->ro.quiet = cli->quiet;
  cli->ro.check_seconds = cli->check;
  /* Test hook for the "in doubt" path: a receiver that starts the guest
   * but never says so. */
  cli->ro.test_no_running = getenv ("XENMEM_TEST_NO_RUNNING") != NULL;
  return 0;
}

void
xm_cli_free (struct xm_cli *cli)
{
  if (cli->so.progress && cli->so.progress != stderr &&
      cli->so.progress != stdout)
    fclose (cli->so.progress);
  cli->so.progress = NULL;
  free (cli->argv);
  for (unsigned i = 0; i < cli->ndisk_map; i++)
    free (cli->disk_map_args[i]);
  cli->ndisk_map = 0;
  cli->argv = NULL;
}

int
xm_cli_open_disks (const struct xm_cli *cli, struct xm_vbd **disks)
{
  for (unsigned i = 0; i < cli->ndisks; i++) {
    disks[i] = xm_vbd_open (cli->disk_uris[i]);
    if (!disks[i]) {
      xm_cli_close_disks (disks, i);
      return -1;
    }
  }
  return 0;
}

void
xm_cli_close_disks (struct xm_vbd **disks, unsigned n)
{
  for (unsigned i = 0; i < n; i++) {
    xm_vbd_close (disks[i]);
    disks[i] = NULL;
  }
}

int
xm_cli_send (const struct xm_cli *cli, const struct xm_backend_ops *b,
             struct xm_source *s, bool *migrated)
{
  struct jbuf rep = { 0 };
  struct xm_conn *c;
  int ret;

  *migrated = false;
  c = xm_connect (cli->addr, &cli->tls, cli->timeout);
  if (!c)
    return XM_CANNOT;
  xm_set_timeout (c, cli->timeout);
  jbuf_add (&rep, "{\"cmd\":\"send\",\"backend\":\"%s\"", b->name);
  if (b->migrate_send)
    ret = b->migrate_send (cli->domid, c, &cli->so, &rep);
  else
    ret = xm_send (b, s, c, &cli->so, &rep);
  xm_close (c);
  *migrated = ret == XM_OK;
  /* A whole-migration backend says itself what became of the source
   * domain (it may not have survived); the page-level path resumed it. */
  if (ret == XM_FAILED && !b->migrate_send) {
    fprintf (stderr, "xenmem: migration failed; the source guest was "
             "resumed\n");
    if (cli->check > 0 && b->check_source) {
      jbuf_add (&rep, ",\"check\":{\"seconds\":%.3f", cli->check);
      int r = b->check_source (s, cli->check, &rep);
      jbuf_add (&rep, ",\"ok\":%s}", r == 0 ? "true" : "false");
      if (r == -1)
        fprintf (stderr, "xenmem: the resumed source guest failed its "
                 "check\n");
    }
  }
  if (cli->progress_rate_before > 0)
    jbuf_add (&rep, ",\"guest_progress_rate_before\":%.0f",
              cli->progress_rate_before);
  if (b->describe_source)
    b->describe_source (s, &rep);
  return xm_cli_report (cli, &rep, ret);
}

int
xm_cli_abort (const struct xm_cli *cli)
{
  struct xm_conn *c;

  /* Only a holder of the key can make the receiver give up early. */
  c = xm_connect (cli->addr, &cli->tls, cli->timeout);
  if (!c)
    return XM_CANNOT;
  xm_close (c);
  if (!cli->quiet)
    fprintf (stderr, "xenmem: told the receiver to give up\n");
  return XM_OK;
}

int
xm_cli_report (const struct xm_cli *cli, struct jbuf *rep, int ret)
{
  jbuf_add (rep, ",\"exit\":%d}", ret);
  if (cli->json) {
    FILE *f = cli->json_file ? fopen (cli->json_file, "w") : stdout;
    if (!f) {
      fprintf (stderr, "xenmem: %s: %m\n", cli->json_file);
      ret = ret ? ret : XM_FAILED;
    }
    else {
      fprintf (f, "%s\n", rep->s ? rep->s : "{}");
      /* Whoever waits on the report (sxm, a monitor's client) must find
       * it whole, or learn that it is not. */
      if ((f != stdout ? fclose (f) : fflush (f)) == EOF) {
        fprintf (stderr, "xenmem: %s: %m\n", cli->json_file ? cli->json_file
                 : "stdout");
        ret = ret ? ret : XM_FAILED;
      }
    }
  }
  else if (!cli->quiet)
    fprintf (stderr, "xenmem: %s\n", ret == XM_OK ?
             (strcmp (cli->mode, "send") == 0 ? "migrated"
              : "the guest runs here") : "failed");
  jbuf_free (rep);
  return ret;
}
