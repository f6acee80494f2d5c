/* sxm-copy: copy a disk between NBD exports, files and block devices,
 * reading only what the source's allocation map says holds data.
 * See doc/sxm-copy.pod for the user's view and doc/design.md for the
 * checkpoint format and the retry rules. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bitmap.h"
#include "copy/copy.h"
#include "log.h"
#include "mirrorctl.h"
#include "monotime.h"
#include "size.h"

/* Exit codes (documented in doc/sxm-copy.pod). */
enum {
  EXIT_OK = 0,
  EXIT_FAILED = 1,              /* failed or interrupted mid-copy */
  EXIT_USAGE = 2,               /* bad arguments or checkpoint */
  EXIT_DIFFERS = 3,             /* --verify found a difference */
  EXIT_REFUSED = 4,             /* refused before writing anything */
};

static struct copy_opts opts = {
  .connections = 0,             /* default: one per core, 2 to 4 */
  .requests = 8,
  .request_size = 1 << 20,
  .segment_size = 32 << 20,
  .zero_detect = true,
  .flush = true,
  .retries = 5,
  .checkpoint_interval = 5,
  .timeout = 60,
};

enum progress_mode { PROGRESS_NONE, PROGRESS_BAR, PROGRESS_JSON };
static enum progress_mode progress;
static FILE *progress_fp;
static bool quiet, json_summary;
static double t_start, last_print;
static volatile sig_atomic_t interrupted;

static void
on_signal (int sig)
{
  interrupted = sig;
}

static void
usage (FILE *fp)
{
  fprintf (fp,
"Usage: sxm-copy [OPTIONS] SOURCE DESTINATION\n"
"       sxm-copy [OPTIONS] --live=CONTROL-SOCKET SOURCE\n"
"Copy a disk, reading only the extents the source reports as allocated.\n"
"SOURCE and DESTINATION: an NBD URI (nbd://, nbds://, nbd+unix://,\n"
"nbds+unix://; TLS credentials via tls-psk-file= or tls-certificates=),\n"
"a VHD (*.vhd, or any file whose footer says VHD: the disk it holds,\n"
"parents included; a new *.vhd destination is created dynamic), a file\n"
"or a block device; DESTINATION may also be null:.\n"
"\n"
"  -C, --connections=N     connections per side (default: one per core,\n"
"                          2 to 4; 1 unless both NBD ends allow multi-conn)\n"
"  -R, --requests=N        requests in flight per connection (default 8)\n"
"      --request-size=SIZE largest read/write (default 1M, at most 32M)\n"
"      --segment-size=SIZE unit of work and of checkpoints (default 32M)\n"
"  -p, --progress[=json[:FD]]  progress bar on stderr, or JSON lines on FD\n"
"      --json              print the final summary as JSON on stdout\n"
"      --verify            after copying, compare source and destination\n"
"      --verify-only       only compare, copy nothing\n"
"      --checkpoint=FILE   record progress in FILE; resume from it\n"
"      --checkpoint-interval=SECONDS  destination flush + save (default 5)\n"
"      --rate=BYTES        limit source reads to BYTES per second (K/M/G)\n"
"      --retries=N         reconnect attempts per failure (default 5)\n"
"      --timeout=SECONDS   a server silent this long with requests pending\n"
"                          is treated as lost (default 60, 0 = wait forever)\n"
"      --target-is-zero    the destination is known to read zeros\n"
"      --allocated-only    leave the destination alone wherever the source's\n"
"                          block status says zero (an increment written onto\n"
"                          an image that holds the rest; the source must\n"
"                          report changed zeros as data: nbdkit vhd layer=)\n"
"      --no-zero-detect    write all-zero source blocks as data\n"
"      --no-flush          do not flush the destination at the end\n"
"                          (a VHD destination's metadata is written anyway)\n"
"      --raw               local files are bytes, never read or written as VHD\n"
"      --create[=dynamic|fixed]  DESTINATION must not exist; created (as a\n"
"                          VHD if named *.vhd or a type is given)\n"
"      --insecure          allow plaintext nbd:// to a non-loopback host\n"
"      --live=SOCKET       live copy under nbdkit-mirror-filter: SOURCE is the\n"
"                          nbdkit serving the running guest's disk, SOCKET\n"
"                          its mirror-control socket; the destination is the\n"
"                          mirror's (writes pass through the filter, which\n"
"                          never lets them overwrite newer guest data); the\n"
"                          filter copies each data run itself (NBD cache\n"
"                          requests on its copy export: no data crosses\n"
"                          sxm-copy)\n"
"      --no-relay          --live: read and write back through the copy\n"
"                          export instead (what any NBD client can do)\n"
"  -q, --quiet             no summary\n"
"  -v, --verbose           debug messages from libnbd\n"
"      --help, --version\n"
"Exit: 0 done, 1 failed mid-copy, 2 usage, 3 verify found a difference,\n"
"4 refused before writing (unreachable, TLS or its policy, read-only,\n"
"too small).\n");
}

static int
parse_uint (const char *s, unsigned lo, unsigned hi, unsigned *out)
{
  char *end;
  unsigned long v;

  errno = 0;
  v = strtoul (s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi)
    return -1;
  *out = v;
  return 0;
}

static void
human (char *buf, size_t n, double v)
{
  const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  int i = 0;

  while (v >= 1024 && i < 5) {
    v /= 1024;
    i++;
  }
  snprintf (buf, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static uint64_t
load (uint64_t *p)
{
  return __atomic_load_n (p, __ATOMIC_RELAXED);
}

/* Progress is measured in allocated source bytes: the work there is. */
static void
print_progress (struct copy *cp, bool last)
{
  double now = sxm_now (), el = now - t_start;
  uint64_t done = load (&cp->alloc_done), total = cp->alloc_total;
  double rate = el > 0 ? done / el : 0;
  double eta = rate > 0 ? (total - done) / rate : -1;
  double pct = total ? 100.0 * done / total : 100;

  if (done > total)
    done = total;
  if (progress == PROGRESS_JSON) {
    fprintf (progress_fp,
             "{\"phase\": \"%s\", \"done\": %" PRIu64 ", \"total\": %" PRIu64
             ", \"percent\": %.1f, \"rate\": %.0f, \"eta\": %.1f, "
             "\"elapsed\": %.3f, \"read\": %" PRIu64 ", \"written\": %" PRIu64
             ", \"zeroed\": %" PRIu64 ", \"skipped\": %" PRIu64
             ", \"final\": %s}\n",
             cp->mode == MODE_COPY ? "copy" : "verify", done, total, pct,
             rate, last ? 0.0 : eta, el, load (&cp->bytes_read),
             load (&cp->bytes_written), load (&cp->bytes_zeroed),
             load (&cp->bytes_skipped), last ? "true" : "false");
    fflush (progress_fp);
  }
  else {
    char d[32], t[32], r[32];
    int width = 30, fill = (int) (pct / 100 * width);
    human (d, sizeof d, done);
    human (t, sizeof t, total);
    human (r, sizeof r, rate);
    fprintf (progress_fp, "\r%s [%.*s%*s] %5.1f%% %s / %s  %s/s  eta %s",
             cp->mode == MODE_COPY ? "copy  " : "verify",
             fill, "==============================", width - fill, "", pct,
             d, t, r, last ? "0s   " : "");
    if (!last && eta >= 0)
      fprintf (progress_fp, "%.0fs   ", eta);
    if (last || !isatty (fileno (progress_fp)))
      fputc ('\n', progress_fp);
    fflush (progress_fp);
  }
}

static void
monitor (struct copy *cp, bool last)
{
  double now = sxm_now ();

  if (interrupted && !cp->abort) {
    fprintf (stderr, "\nsxm-copy: interrupted (signal %d): stopping%s\n",
             (int) interrupted, opts.checkpoint ? ", saving the checkpoint" : "");
    __atomic_store_n (&cp->failed, 1, __ATOMIC_RELAXED);
    __atomic_store_n (&cp->abort, 1, __ATOMIC_RELAXED);
  }
  /* Saved whenever a destination flush made more segments durable; the
   * flushes themselves are --checkpoint-interval apart per worker. */
  if (opts.checkpoint && cp->mode == MODE_COPY && cp->ckpt_dirty)
    checkpoint_save (opts.checkpoint, cp);
  if (progress != PROGRESS_NONE) {
    bool tty = progress == PROGRESS_BAR && isatty (fileno (progress_fp));
    if (last || now - last_print >= (tty ? 0.2 : 1)) {
      print_progress (cp, last);
      last_print = now;
    }
  }
}

/* The allocation map of the whole source, summed per segment: the progress
 * total and, on resume, the work already done. */
static int
count_alloc (void *opaque, uint64_t off, uint64_t len, bool zero)
{
  struct copy *cp = opaque;

  while (!zero && len > 0) {
    uint64_t seg = off / cp->o->segment_size;
    uint64_t n = (seg + 1) * cp->o->segment_size - off;
    if (n > len)
      n = len;
    cp->seg_alloc[seg] += n;
    cp->alloc_total += n;
    off += n;
    len -= n;
  }
  return 0;
}

/* --live: what the summary calls the two ends (both endpoints are the
 * filter's copy export): the SOURCE given and the mirror's destination. */
static const char *shown_src, *shown_dst;

static void
summary (struct copy *cp, double wall, int status)
{
  char v[32], a[32], r[32], w[32], z[32], s[32], rl[32];
  const char *sn = shown_src ? shown_src : cp->src->name;
  const char *dn = shown_dst ? shown_dst : cp->dst->name;
  double mbs = wall > 0 ? cp->alloc_total / wall / (1 << 20) : 0;

  if (json_summary) {
    printf ("{\"source\": \"%s\", \"destination\": \"%s\", \"status\": \"%s\", "
            "\"virtual_size\": %" PRIu64 ", \"allocated\": %" PRIu64
            ", \"read\": %" PRIu64 ", \"written\": %" PRIu64
            ", \"zeroed\": %" PRIu64 ", \"skipped\": %" PRIu64
            ", \"relayed\": %" PRIu64
            ", \"retries\": %" PRIu64 ", \"wall_seconds\": %.3f"
            ", \"mib_per_second\": %.1f, \"connections\": %u}\n",
            sn, dn,
            status == EXIT_OK ? "ok" : status == EXIT_DIFFERS ? "differs"
                                                               : "failed",
            cp->size, cp->alloc_total, cp->bytes_read, cp->bytes_written,
            cp->bytes_zeroed, cp->bytes_skipped, cp->bytes_relayed,
            cp->retries_done, wall, mbs,
            opts.connections);
    fflush (stdout);
  }
  if (quiet)
    return;
  human (v, sizeof v, cp->size);
  human (a, sizeof a, cp->alloc_total);
  human (r, sizeof r, cp->bytes_read);
  human (w, sizeof w, cp->bytes_written);
  human (z, sizeof z, cp->bytes_zeroed);
  human (s, sizeof s, cp->bytes_skipped);
  human (rl, sizeof rl, cp->bytes_relayed);
  fprintf (stderr,
           "sxm-copy: %s -> %s: %s\n"
           "  virtual size %s, allocated %s\n"
           "  read %s, written %s%s%s%s, zeroed %s, skipped %s\n"
           "  %.3f s, %.1f MiB/s of allocated data, %u connection%s%s\n",
           sn, dn,
           status == EXIT_OK ? "done" : status == EXIT_DIFFERS
                                        ? "DIFFERENT" : "FAILED",
           v, a, r, w,
           cp->bytes_relayed ? " (relayed by the filter: " : "",
           cp->bytes_relayed ? rl : "", cp->bytes_relayed ? ")" : "", z, s,
           wall, mbs, opts.connections,
           opts.connections == 1 ? "" : "s",
           cp->retries_done ? ", after retries" : "");
}

/* --live: the filter's copy export on the same server as SOURCE.  The
 * export name replaces SOURCE's path; query and authority are kept. */
static char *
live_uri (const char *source, const char *export)
{
  const char *auth = strstr (source, "://"), *auth_end, *rest;
  char *out;

  if (!auth)
    return NULL;
  auth += 3;
  auth_end = auth + strcspn (auth, "/?#");
  rest = auth_end;
  if (*rest == '/')
    rest += strcspn (rest, "?#");
  if (asprintf (&out, "%.*s/%s%s", (int) (auth_end - source), source, export,
                rest) < 0)
    return NULL;
  return out;
}

/* One control call; NULL reply on failure (message printed). */
static int
live_call (const char *sock, const char *req, struct json_obj *reply)
{
  int fd = mirrorctl_connect (sock), r;

  if (fd == -1)
    return -1;
  r = mirrorctl_call (fd, req, 30, reply, NULL);
  close (fd);
  return r;
}

/* After a failed live copy, say what the mirror thinks happened. */
static void
live_explain (const char *sock)
{
  struct json_obj st;

  if (live_call (sock, "{\"cmd\":\"status\"}", &st) == -1)
    return;
  if (json_str (&st, "reason"))
    fprintf (stderr, "sxm-copy: the mirror is %s: %s\n",
             json_str (&st, "state"), json_str (&st, "reason"));
  else if (json_str (&st, "state") &&
           strcmp (json_str (&st, "state"), "mirroring") != 0)
    fprintf (stderr, "sxm-copy: the mirror is %s\n", json_str (&st, "state"));
  json_free (&st);
}

int
main (int argc, char **argv)
{
  enum { O_REQSIZE = 256, O_SEGSIZE, O_JSON, O_VERIFY, O_VERIFY_ONLY,
         O_CKPT, O_CKPT_INT, O_RATE, O_RETRIES, O_TZERO, O_ALLOC_ONLY, O_NOZD, O_NOFLUSH,
         O_INSECURE, O_TIMEOUT, O_LIVE, O_NO_RELAY, O_RAW, O_CREATE, O_HELP,
         O_VERSION };
  static const struct option long_opts[] = {
    { "connections", required_argument, NULL, 'C' },
    { "requests", required_argument, NULL, 'R' },
    { "request-size", required_argument, NULL, O_REQSIZE },
    { "segment-size", required_argument, NULL, O_SEGSIZE },
    { "progress", optional_argument, NULL, 'p' },
    { "live", required_argument, NULL, O_LIVE },
    { "no-relay", no_argument, NULL, O_NO_RELAY },
    { "json", no_argument, NULL, O_JSON },
    { "verify", no_argument, NULL, O_VERIFY },
    { "verify-only", no_argument, NULL, O_VERIFY_ONLY },
    { "checkpoint", required_argument, NULL, O_CKPT },
    { "checkpoint-interval", required_argument, NULL, O_CKPT_INT },
    { "rate", required_argument, NULL, O_RATE },
    { "retries", required_argument, NULL, O_RETRIES },
    { "target-is-zero", no_argument, NULL, O_TZERO },
    { "allocated-only", no_argument, NULL, O_ALLOC_ONLY },
    { "no-zero-detect", no_argument, NULL, O_NOZD },
    { "no-flush", no_argument, NULL, O_NOFLUSH },
    { "insecure", no_argument, NULL, O_INSECURE },
    { "timeout", required_argument, NULL, O_TIMEOUT },
    { "raw", no_argument, NULL, O_RAW },
    { "create", optional_argument, NULL, O_CREATE },
    { "quiet", no_argument, NULL, 'q' },
    { "verbose", no_argument, NULL, 'v' },
    { "help", no_argument, NULL, O_HELP },
    { "version", no_argument, NULL, O_VERSION },
    { 0 }
  };
  bool verify = false, verify_only = false, conn_given = false;
  const char *live = NULL, *src_name, *dst_name;
  char *live_copy_uri = NULL;
  bool live_dest_zero = false, no_relay = false;
  uint64_t live_relay = 0;
  struct endpoint *src, *dst;
  struct endpoint_opts lo = { 0 };
  struct conn *src0, *dst0;
  struct copy cp = { .o = &opts,
                     .lock = PTHREAD_MUTEX_INITIALIZER,
                     .finished = PTHREAD_COND_INITIALIZER };
  int c, status = EXIT_OK;
  double wall;
  char *end;
  const char *want = NULL;      /* what a bad option value should be */
#define BAD(what) do { want = (what); goto bad_arg; } while (0)

  sxm_log_set_program ("sxm-copy");
  while ((c = getopt_long (argc, argv, "C:R:p::qv", long_opts, NULL)) != -1) {
    switch (c) {
    case 'C':
      if (parse_uint (optarg, 1, 64, &opts.connections) == -1)
        BAD ("a number from 1 to 64");
      conn_given = true;
      break;
    case 'R':
      if (parse_uint (optarg, 1, 1024, &opts.requests) == -1)
        BAD ("a number from 1 to 1024");
      break;
    case O_REQSIZE:
      if (parse_size (optarg, &opts.request_size) == -1 ||
          opts.request_size < 4096 || opts.request_size > (32 << 20) ||
          opts.request_size % 512)
        BAD ("a multiple of 512 from 4K to 32M");
      break;
    case O_SEGSIZE:
      if (parse_size (optarg, &opts.segment_size) == -1 ||
          opts.segment_size < (1 << 20) || opts.segment_size > (1ull << 31))
        BAD ("a size from 1M to 2G");
      break;
    case 'p':
      if (optarg == NULL) {
        progress = PROGRESS_BAR;
        progress_fp = stderr;
      }
      else if (strncmp (optarg, "json", 4) == 0 &&
               (optarg[4] == 0 || optarg[4] == ':')) {
        unsigned fd = 2;
        if (optarg[4] == ':' && parse_uint (optarg + 5, 1, 1 << 20, &fd) == -1)
          BAD ("json:FD, FD a file descriptor number");
        progress = PROGRESS_JSON;
        progress_fp = fd == 2 ? stderr : fd == 1 ? stdout : fdopen (fd, "w");
        if (progress_fp == NULL) {
          fprintf (stderr, "sxm-copy: --progress=%s: fd %u: %m\n", optarg, fd);
          exit (EXIT_USAGE);
        }
      }
      else
        BAD ("nothing, json or json:FD");
      break;
    case O_JSON: json_summary = true; break;
    case O_VERIFY: verify = true; break;
    case O_VERIFY_ONLY: verify_only = true; break;
    case O_CKPT: opts.checkpoint = optarg; break;
    case O_CKPT_INT:
      opts.checkpoint_interval = strtod (optarg, &end);
      if (*end || !(opts.checkpoint_interval > 0))
        BAD ("seconds, more than 0");
      break;
    case O_RATE:
      if (parse_size (optarg, &opts.rate) == -1 || opts.rate == 0)
        BAD ("bytes per second, more than 0 (K, M, G suffixes)");
      break;
    case O_RETRIES:
      if (parse_uint (optarg, 0, 100, &opts.retries) == -1)
        BAD ("a number from 0 to 100");
      break;
    case O_TZERO: opts.target_is_zero = true; break;
    case O_ALLOC_ONLY: opts.allocated_only = true; break;
    case O_NOZD: opts.zero_detect = false; break;
    case O_NOFLUSH: opts.flush = false; break;
    case O_INSECURE: lo.insecure = true; break;
    case O_TIMEOUT:
      opts.timeout = strtod (optarg, &end);
      if (*end || !(opts.timeout >= 0))
        BAD ("seconds, 0 or more");
      break;
    case O_LIVE: live = optarg; break;
    case O_NO_RELAY: no_relay = true; break;
    case O_RAW: lo.raw = true; break;
    case O_CREATE:
      lo.create = true;
      if (optarg == NULL)
        lo.create_kind = CREATE_AUTO;
      else if (strcmp (optarg, "dynamic") == 0)
        lo.create_kind = CREATE_DYNAMIC;
      else if (strcmp (optarg, "fixed") == 0)
        lo.create_kind = CREATE_FIXED;
      else
        BAD ("dynamic or fixed");
      break;
    case 'q': quiet = true; break;
    case 'v': opts.verbose = true; break;
    case O_HELP: usage (stdout); exit (EXIT_OK);
    case O_VERSION: printf ("sxm-copy %s\n", SXM_VERSION); exit (EXIT_OK);
    default:
      usage (stderr);
      exit (EXIT_USAGE);
    bad_arg: {
      const struct option *o = long_opts;
      while (o->name && o->val != c)
        o++;
      if (o->name)
        fprintf (stderr, "sxm-copy: bad value for --%s: '%s' (expected %s)\n",
                 o->name, optarg, want);
      else
        fprintf (stderr, "sxm-copy: bad value for -%c: '%s' (expected %s)\n",
                 c, optarg, want);
      exit (EXIT_USAGE);
    }
    }
  }
  if (no_relay && !live) {
    fprintf (stderr, "sxm-copy: --no-relay is for --live copies\n");
    exit (EXIT_USAGE);
  }
  if (argc - optind != (live ? 1 : 2)) {
    usage (stderr);
    exit (EXIT_USAGE);
  }
  src_name = argv[optind];
  dst_name = live ? NULL : argv[optind + 1];
  if (live) {
    /* The mirror must be running: its status names the copy export and
     * whether the destination read zeros when the mirror started. */
    struct json_obj st;
    const char *state, *exp;
    if (verify_only || verify) {
      /* Both ends would be the copy export, i.e. the source: a compare
       * that cannot fail.  The mirror's switchover compares for real. */
      fprintf (stderr, "sxm-copy: --live cannot --verify (both ends are the "
               "source's copy export); the mirror's switchover verifies\n");
      exit (EXIT_USAGE);
    }
    if (!strstr (src_name, "://")) {
      fprintf (stderr, "sxm-copy: --live: SOURCE must be the NBD URI of the "
               "nbdkit running the mirror filter\n");
      exit (EXIT_USAGE);
    }
    if (live_call (live, "{\"cmd\":\"status\"}", &st) == -1)
      exit (EXIT_REFUSED);
    state = json_str (&st, "state");
    exp = json_str (&st, "copy_export");
    if (!state || strcmp (state, "mirroring") != 0 || !exp) {
      fprintf (stderr, "sxm-copy: %s: the mirror is %s, not mirroring: "
               "start it first (sxm-mirror %s start DEST-URI)\n", live,
               state ? state : "unknown", live);
      exit (EXIT_REFUSED);
    }
    json_bool (&st, "dest_zero", &live_dest_zero);
    /* A filter that relays says up to how much at a time (an older one
     * says nothing: read and write back). */
    if (!no_relay && json_u64 (&st, "copy_relay", &live_relay) == -1)
      live_relay = 0;
    live_copy_uri = live_uri (src_name, exp);
    shown_src = src_name;
    shown_dst = json_str (&st, "dest") ? strdup (json_str (&st, "dest"))
                                       : NULL;
    if (!shown_dst)
      shown_dst = "the mirror's destination";
    json_free (&st);
    if (!live_copy_uri) {
      fprintf (stderr, "sxm-copy: out of memory\n");
      exit (EXIT_FAILED);
    }
    src_name = dst_name = live_copy_uri;
  }
  if (lo.raw && lo.create_kind != CREATE_AUTO) {
    fprintf (stderr, "sxm-copy: --raw and --create=%s contradict each other\n",
             lo.create_kind == CREATE_FIXED ? "fixed" : "dynamic");
    exit (EXIT_USAGE);
  }
  if (lo.create && (verify_only || live)) {
    fprintf (stderr, "sxm-copy: --create needs a destination to write\n");
    exit (EXIT_USAGE);
  }
  if (opts.allocated_only && (verify || verify_only || opts.checkpoint ||
                              live)) {
    /* The destination differs from the source wherever the source has
     * holes: no compare can pass; and a checkpoint does not record it. */
    fprintf (stderr, "sxm-copy: --allocated-only writes part of a disk: not "
             "with --verify, --verify-only, --checkpoint or --live\n");
    exit (EXIT_USAGE);
  }
  if (verify_only && opts.checkpoint) {
    fprintf (stderr, "sxm-copy: --verify-only copies nothing: --checkpoint "
             "makes no sense with it\n");
    exit (EXIT_USAGE);
  }
  if (opts.verbose)
    setenv ("LIBNBD_DEBUG", "1", 1);
  signal (SIGPIPE, SIG_IGN);

  lo.timeout = opts.timeout;
  /* Probe both ends; nothing has been written if this fails. */
  src = endpoint_open (src_name, false, false, 0, &lo, &src0);
  if (!src)
    exit (EXIT_REFUSED);
  dst = endpoint_open (dst_name, true, !verify_only, src->size, &lo, &dst0);
  if (!dst)
    exit (EXIT_REFUSED);
  cp.src = src;
  cp.dst = dst;
  /* Live: the copy export's block status is the source's, not the
   * destination's: it must never decide that a destination range reads
   * zeros (the mirror's dest_zero did that, above). */
  if (live)
    dst->has_extents = false;
  if (!verify_only && dst->readonly) {
    fprintf (stderr, "sxm-copy: %s: destination is read-only\n", dst->name);
    exit (EXIT_REFUSED);
  }
  if (dst->size < src->size) {
    fprintf (stderr, "sxm-copy: %s: destination is smaller (%" PRIu64
             " bytes) than the source %s (%" PRIu64 " bytes)\n",
             dst->name, dst->size, src->name, src->size);
    exit (EXIT_REFUSED);
  }
  if (opts.connections == 0) {
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    opts.connections = n < 2 ? 2 : n > 4 ? 4 : n;
  }
  /* (Only NBD ends may say no: local files and VHDs always allow it.) */
  if (!src->multi_conn || !dst->multi_conn) {
    if (conn_given && opts.connections > 1)
      fprintf (stderr, "sxm-copy: %s does not allow multi-conn: using one "
               "connection\n", !src->multi_conn ? src->name : dst->name);
    opts.connections = 1;
  }

  cp.size = src->size;
  cp.nseg = (src->size + opts.segment_size - 1) / opts.segment_size;
  cp.done_map = calloc (bitmap_bytes (cp.nseg) + 1, 1);
  cp.counted_map = calloc (bitmap_bytes (cp.nseg) + 1, 1);
  cp.seg_alloc = calloc (cp.nseg + 1, sizeof *cp.seg_alloc);
  if (cp.done_map == NULL || cp.seg_alloc == NULL || cp.counted_map == NULL) {
    fprintf (stderr, "sxm-copy: out of memory\n");
    exit (EXIT_FAILED);
  }
  /* Live: the copy export reads the source, so its block status says
   * nothing about the destination; the mirror told us instead. */
  cp.dst_zero = opts.target_is_zero || (live ? live_dest_zero : dst->zero_init);
  if (live && dst->ops->relay)
    cp.relay_max = live_relay > UINT32_MAX ? UINT32_MAX
                                           : (uint32_t) live_relay;
  if (opts.checkpoint && !verify_only) {
    int r = checkpoint_load (opts.checkpoint, &cp);
    if (r == -1)
      exit (EXIT_USAGE);
    if (r == 1 && !quiet)
      fprintf (stderr, "sxm-copy: resuming from checkpoint %s\n",
               opts.checkpoint);
    /* Record the copy's identity before the first byte is written. */
    if (checkpoint_save (opts.checkpoint, &cp) == -1)
      exit (EXIT_USAGE);
  }

  signal (SIGINT, on_signal);
  signal (SIGTERM, on_signal);
  t_start = sxm_now ();
  if (src->ops->extents (src0, 0, src->size, count_alloc, &cp) == -1) {
    fprintf (stderr, "sxm-copy: %s: reading the allocation map: %s\n",
             src->name, src0->error[0] ? src0->error : strerror (errno));
    exit (EXIT_FAILED);
  }
  for (uint64_t i = 0; i < cp.nseg; i++)
    if (bitmap_get (cp.done_map, i)) {
      cp.alloc_done += cp.seg_alloc[i];
      bitmap_set (cp.counted_map, i);
    }

  if (!verify_only) {
    cp.mode = MODE_COPY;
    if (copy_run (&cp, opts.connections, src0, dst0, monitor) == -1) {
      status = EXIT_FAILED;
      if (live)
        live_explain (live);
    }
    else {
      if (opts.checkpoint)
        unlink (opts.checkpoint);       /* finished: nothing to resume */
      if (live) {
        struct json_obj r;
        bool ok = false;
        if (live_call (live, "{\"cmd\":\"copied\"}", &r) == 0) {
          json_bool (&r, "ok", &ok);
          if (!ok)
            fprintf (stderr, "sxm-copy: %s: copied: %s\n", live,
                     json_str (&r, "error") ? json_str (&r, "error") : "?");
          json_free (&r);
        }
        if (!ok) {
          live_explain (live);
          status = EXIT_FAILED;
        }
      }
    }
  }
  if (status == EXIT_OK && (verify || verify_only)) {
    struct copy vc = cp;
    vc.mode = MODE_VERIFY;
    vc.alloc_done = vc.bytes_read = vc.bytes_written = 0;
    vc.bytes_zeroed = vc.bytes_skipped = 0;
    vc.bytes_compared = vc.bytes_zero_checked = 0;
    memset (vc.done_map, 0, bitmap_bytes (vc.nseg));
    memset (vc.counted_map, 0, bitmap_bytes (vc.nseg));
    pthread_mutex_init (&vc.lock, NULL);
    pthread_cond_init (&vc.finished, NULL);
    last_print = 0;
    if (copy_run (&vc, opts.connections, src0, dst0, monitor) == -1)
      status = EXIT_FAILED;
    else if (vc.first_diff != SEG_NONE) {
      fprintf (stderr, "sxm-copy: verify: first difference at offset %" PRIu64
               " (0x%" PRIx64 "): %s\n", vc.first_diff, vc.first_diff,
               vc.diff_what);
      status = EXIT_DIFFERS;
    }
    else if (!quiet)
      /* Say what was counted: an admin compares these with the
       * allocated size, and "bytes compared" alone double-counted reads. */
      fprintf (stderr, "sxm-copy: verify: %s and %s are identical: "
               "%" PRIu64 " bytes of data read on both sides and compared, "
               "%" PRIu64 " bytes of the source's holes read as zeros on "
               "the destination, %" PRIu64 " bytes zero on both per their "
               "maps (not read)\n", src->name, dst->name,
               vc.bytes_compared, vc.bytes_zero_checked, vc.bytes_skipped);
    if (verify_only)
      cp = vc;
  }
  wall = sxm_now () - t_start;
  summary (&cp, wall, status);
  conn_free (src0);
  conn_free (dst0);
  /* A VHD destination's metadata is written here: a failure is the
   * copy's. */
  if (endpoint_close (dst) == -1 && status == EXIT_OK)
    status = EXIT_FAILED;
  endpoint_close (src);
  free (cp.done_map);
  free (cp.counted_map);
  free (cp.seg_alloc);
  free (live_copy_uri);
  return status;
}
