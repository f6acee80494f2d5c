/* xenmem's xen backend: Xen's own save/restore code, driven by xenmem.
 *
 * Moving a domain takes more than its memory: vCPU and platform state,
 * HVM params, the xenstore and console rings and their event channels,
 * the toolstack's view of the domain.  libxenguest's xc_domain_save and
 * libxl's restore already get all of that right for every guest type Xen
 * supports, so this backend does not reimplement them (doc/design.md,
 * "xenmem on Xen: why libxenguest").  What xenmem adds around them:
 *
 *  - its own pre-copy policy, the engine's (xm_policy_round) asked from
 *    xc_domain_save's precopy_policy callback: stop when the predicted
 *    downtime is under the target, the dirty set stops shrinking or the
 *    round limit is hit, where libxl's default stops after 5 rounds or
 *    under 50 dirty pages; and auto-converge, which Xen's own saver does
 *    not have: a guest dirtying memory too fast for the link is slowed
 *    through its scheduler cap (xen_throttle);
 *  - its transport (TLS, timeouts), stream framing (XENDATA records, each
 *    length-checked and CRC'd) and rate limit;
 *  - the hook (sxm migrate's disk switchover) around the suspend, and the
 *    commit handshake: the destination is unpaused only after the source
 *    said commit, and the source is destroyed only after the destination
 *    said running; before the commit any failure resumes the source.
 *
 * Source: the domain's configuration (libxl_retrieve_domain_configuration,
 * as JSON) goes first; then libxl's migration stream v2 (a libxl header,
 * a LIBXC_CONTEXT record whose body is xc_domain_save's own stream, an
 * END record), written into a pipe by this thread and carried to the
 * socket by a relay thread.  The guest is suspended cooperatively
 * (libxl_domain_suspend_only: the xenstore control/shutdown protocol).
 * Destination: libxl_domain_create_restore builds a new domain from the
 * configuration (named NAME--incoming until the commit) and restores the
 * stream a relay thread feeds it through a pipe; it stays paused until the
 * commit.  PV guests are refused (their log-dirty needs shadow paging,
 * which current Xen builds leave out). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libxl.h>
#include <libxl_utils.h>
#include <xenctrl.h>
#include <xenguest.h>
#include <xentoollog.h>

#include "backend.h"
#include "engine.h"
#include "fullio.h"
#include "log.h"
#include "monotime.h"
#include "stream.h"
#include "xen-checks.h"

/* libxl's migration stream v2 (Xen's docs/specs/libxl-migration-stream):
 * a header whose fields are big-endian, then records (type, length, body
 * padded to 8 bytes) in the stream's byte order, little-endian here. */
#define LIBXL_IDENT 0x4c6962786c466d74ull       /* "LibxlFmt" */
#define LIBXL_VERSION2 2
#define LIBXL_REC_END 0
#define LIBXL_REC_LIBXC_CONTEXT 1

struct xen_env {
  xentoollog_logger_stdiostream *log;
  xc_interface *xch;
  libxl_ctx *ctx;
};

static int
xen_env_open (struct xen_env *e)
{
  const char *v = getenv ("XENMEM_XEN_DEBUG");

  memset (e, 0, sizeof *e);
  e->log = xtl_createlogger_stdiostream (stderr, v && *v ? XTL_DEBUG
                                         : XTL_WARN, 0);
  if (!e->log) {
    sxm_error ("xen: out of memory");
    return -1;
  }
  e->xch = xc_interface_open ((xentoollog_logger *) e->log, NULL, 0);
  if (!e->xch) {
    sxm_error ("xen: no Xen hypervisor here (cannot open the privcmd "
               "interface: %m); the xen backend runs in a Xen dom0");
    return -1;
  }
  if (libxl_ctx_alloc (&e->ctx, LIBXL_VERSION, 0,
                       (xentoollog_logger *) e->log) != 0) {
    sxm_error ("xen: cannot start libxl (is xenstored running?)");
    return -1;
  }
  return 0;
}

static void
xen_env_close (struct xen_env *e)
{
  if (e->ctx)
    libxl_ctx_free (e->ctx);
  if (e->xch)
    xc_interface_close (e->xch);
  if (e->log)
    xtl_logger_destroy ((xentoollog_logger *) e->log);
}

/* The table's available: libxl usable here (checked before any
 * connection is made). */
static int
xen_available (void)
{
  struct xen_env e;
  int r = xen_env_open (&e);

  xen_env_close (&e);
  return r;
}

/* Block every signal in a relay thread: libxl's SIGCHLD handling and the
 * main thread's signals stay where they belong. */
static void
block_signals (void)
{
  sigset_t all;
  sigfillset (&all);
  pthread_sigmask (SIG_BLOCK, &all, NULL);
}

static void
libxl_record (uint8_t out[8], uint32_t type, uint32_t len)
{
  for (int i = 0; i < 4; i++) {
    out[i] = type >> (8 * i);
    out[4 + i] = len >> (8 * i);
  }
}

/* ---- source ------------------------------------------------------------ */

struct xsend {
  struct xen_env e;
  uint32_t domid;
  const struct xm_send_opts *o;
  struct xm_conn *c;
  uint32_t seq;                 /* our stream's record numbers */
  /* relay thread: pipe -> XENDATA records */
  int rfd;
  uint64_t relayed;             /* libxl stream bytes sent */
  uint64_t wire_bytes;
  bool relay_failed;
  struct xm_rate rate;          /* --rate */
  /* policy */
  double round_t, bw, round_s;
  long round_pages;
  uint64_t round_relayed;       /* relayed when the round started */
  unsigned rounds;
  struct xm_send_opts po;       /* *o, auto-converge off if it cannot be */
  struct xm_policy pol;         /* xm_policy_round's, between rounds */
  const char *why;
  struct jbuf rstats;
  /* Auto-converge: the domain's scheduler cap (xen_throttle) */
  unsigned nvcpus, throttle, throttle_max;
  bool have_cap;
  int orig_cap;
  libxl_scheduler sched;
  double t_throttle, throttled_s;
  /* suspend and hook */
  pid_t hook;
  bool hook_failed, suspended;
  double t_suspend, t_suspended, t_prepare;
  /* the domain (xsend_check_domain) */
  xc_dominfo_t info;
  libxl_domain_config cfg;
  char *json, *name, *away;     /* its configuration; NAME--migratedaway */
  struct xm_preflight *pf;
  uint64_t npages;
  /* the stream: one record's buffer, the pipe's write end (libxc's side;
   * the relay reads RFD), the relay thread, the reply channel */
  uint8_t *rec;
  int wfd;
  pthread_t relay;
  bool relay_started;
  struct xm_decoder ad;
  struct xm_record r;
  /* where it stands, and the times the report gives */
  bool end_sent, committed, renamed, checked;
  double t0, t_saved, t_loaded, t_run, t_hook;
};

static int
xsend_put (struct xsend *X, const void *buf, size_t len)
{
  xm_rate_spend (&X->rate, X->o->rate, len);
  if (xm_write (X->c, buf, len) == -1)
    return -1;
  X->wire_bytes += len;
  return 0;
}

/* Relay: whatever xc_domain_save (and we) write into the pipe goes out as
 * XENDATA records, until EOF.  On a send error the pipe's read end is
 * closed, so that xc_domain_save's next write fails (EPIPE) and it gives
 * up instead of blocking. */
static void *
relay_out (void *arg)
{
  struct xsend *X = arg;
  size_t cap = 1 << 20;
  uint8_t *data = malloc (cap), *rec = malloc (XM_REC_HDR_SIZE + 8 + cap + 8);

  block_signals ();
  if (!data || !rec) {
    sxm_error ("out of memory");
    X->relay_failed = true;
  }
  while (!X->relay_failed) {
    ssize_t n = read (X->rfd, data, cap);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0) {
      sxm_error ("xen: reading xc_domain_save's stream: %m");
      X->relay_failed = true;
      break;
    }
    if (n == 0)
      break;
    size_t len = xm_encode_xendata (rec, X->seq++, XM_XEN_STREAM, data, n);
    if (xsend_put (X, rec, len) == -1) {
      X->relay_failed = true;
      break;
    }
    __atomic_store_n (&X->relayed, X->relayed + n, __ATOMIC_RELAXED);
  }
  if (X->relay_failed) {
    close (X->rfd);
    X->rfd = -1;
  }
  free (data);
  free (rec);
  return NULL;
}

/* Auto-converge on Xen: the throttle is the domain's scheduler cap.
 * credit and credit2 both have one, in percent of one physical CPU for
 * the whole domain (0: none); a throttle of PCT caps the domain at
 * (100 - PCT) % of what it may use now (its own cap, or all of its vCPUs).
 * PCT 0 puts the original cap back.  The destination's domain is built
 * from the configuration read before the first round (it goes first in
 * the stream), so it gets the cap the domain was created with, never
 * ours.  If xenmem dies while the cap is lowered, the domain stays
 * throttled: the first change says on stderr how to undo it with xl. */
static int
xen_throttle (struct xsend *X, unsigned pct)
{
  libxl_domain_sched_params sp;
  int base, cap, rc;

  if (pct == X->throttle)
    return 0;
  if (!X->have_cap) {
    libxl_domain_sched_params_init (&sp);
    rc = libxl_domain_sched_params_get (X->e.ctx, X->domid, &sp);
    X->sched = sp.sched;
    X->orig_cap = sp.cap;
    libxl_domain_sched_params_dispose (&sp);
    if (rc != 0) {
      sxm_error ("xen: cannot read domain %u's scheduler parameters: no "
                 "auto-converge", X->domid);
      return -1;
    }
    if (X->sched != LIBXL_SCHEDULER_CREDIT &&
        X->sched != LIBXL_SCHEDULER_CREDIT2) {
      sxm_error ("xen: domain %u runs under the %s scheduler, which has no "
                 "cap: no auto-converge", X->domid,
                 libxl_scheduler_to_string (X->sched));
      return -1;
    }
    if (X->orig_cap < 0)
      X->orig_cap = 0;
    X->have_cap = true;
    fprintf (stderr, "xenmem: auto-converge: throttling domain %u through "
             "its %s cap (now %d); if xenmem is killed before the end, "
             "restore it with: xl sched-%s -d %u -c %d\n", X->domid,
             libxl_scheduler_to_string (X->sched), X->orig_cap,
             libxl_scheduler_to_string (X->sched), X->domid, X->orig_cap);
  }
  base = X->orig_cap > 0 ? X->orig_cap : 100 * (int) X->nvcpus;
  cap = pct ? base * (100 - (int) pct) / 100 : X->orig_cap;
  if (pct && cap < 1)
    cap = 1;
  libxl_domain_sched_params_init (&sp);
  sp.sched = X->sched;
  sp.cap = cap;
  rc = libxl_domain_sched_params_set (X->e.ctx, X->domid, &sp);
  libxl_domain_sched_params_dispose (&sp);
  if (rc != 0) {
    sxm_error ("xen: cannot set domain %u's %s cap to %d%s", X->domid,
               libxl_scheduler_to_string (X->sched), cap,
               pct ? "" : ": restore it with xl");
    return -1;
  }
  if (!X->o->quiet)
    fprintf (stderr, "xenmem: throttle %u%%: domain %u's cap %d\n", pct,
             X->domid, cap);
  X->throttle = pct;
  if (pct > X->throttle_max)
    X->throttle_max = pct;
  return 0;
}

/* xc_domain_save's precopy policy.  libxc calls it twice per round
 * (xg_sr_save.c, send_memory_live): before the round with dirty_count =
 * the pages it is about to send (the whole p2m the first time), and after
 * it with dirty_count = -1.  "After" times the round, giving the
 * bandwidth; "before" decides, by the engine's own policy
 * (xm_policy_round, engine.h): predicted downtime under the target, round
 * limit, dirty set not shrinking by 10% twice in a row, and the throttle
 * (applied here, xen_throttle).  On STOP_AND_COPY
 * libxc still sends this round's pages live (so the rule hears of one
 * live round more than have ended), then suspends and sends what that
 * round let the guest dirty, so the real final set is smaller than
 * predicted. */
static int
policy (struct precopy_stats st, void *data)
{
  struct xsend *X = data;
  double now = sxm_now ();

  if (st.dirty_count < 0) {     /* a round just ended */
    double secs = now - X->round_t;
    /* Round 0's "pages" are the whole p2m, holes included (a PVH guest's
     * reaches past the MMIO hole at 4 GiB: 20 times its RAM for the rig's
     * 192 MiB guest), which libxc skips: its bandwidth is what went to
     * the relay meanwhile (at most the pipe and one read behind, nothing
     * beside a round of RAM).  A later round sends every page it counts. */
    double bytes = X->rounds == 0 ?
      (double) (__atomic_load_n (&X->relayed, __ATOMIC_RELAXED) -
                X->round_relayed) :
      X->round_pages * (double) XM_PAGE_SIZE;
    X->bw = secs > 0 ? bytes / secs : 0;
    if (!X->o->quiet)
      fprintf (stderr, "xenmem: round %u: %ld pages in %.3f s (%.1f MiB/s)\n",
               X->rounds, X->round_pages, secs, X->bw / 1048576);
    jbuf_add (&X->rstats, "%s{\"round\":%u,\"pages\":%ld,\"seconds\":%.4f"
              ",\"throttle\":%u}", X->rounds ? "," : "", X->rounds,
              X->round_pages, secs, X->throttle);
    /* The dirty count comes with the next decision, not here. */
    xm_progress_round (X->o, X->rounds, false, X->round_pages,
                       X->round_pages * (uint64_t) XM_PAGE_SIZE, secs, -1, 0,
                       X->throttle);
    X->round_s = secs;
    X->rounds++;
    return XGS_POLICY_CONTINUE_PRECOPY;
  }
  if (X->rounds > 0) {          /* before round 1, 2, ...: decide */
    /* The pages about to go are the ones the last round let the guest
     * dirty: their rate over that round is the dirty rate. */
    struct xm_round_stats rs = {
      X->rounds + 1, st.dirty_count, X->bw,
      X->round_s > 0 ? st.dirty_count * (double) XM_PAGE_SIZE / X->round_s
      : -1,
    };
    if (!X->o->quiet)
      fprintf (stderr, "xenmem: %ld pages dirty, predicted downtime %.1f ms\n",
               st.dirty_count, xm_predicted_ms (&rs));
    X->why = xm_policy_round (&X->pol, &rs, &X->po);
    if (!X->why && X->pol.throttle != X->throttle) {
      unsigned was = X->throttle;
      if (xen_throttle (X, X->pol.throttle) == -1) {
        /* Go on as without auto-converge (a throttle set so far stays
         * until the end of the save, which takes it off). */
        X->po.converge.on = false;
        X->pol.throttle = X->throttle;
      }
      else {
        if (was)
          X->throttled_s += now - X->t_throttle;
        X->t_throttle = now;
      }
    }
  }
  X->round_t = now;
  X->round_relayed = __atomic_load_n (&X->relayed, __ATOMIC_RELAXED);
  X->round_pages = st.dirty_count;
  return X->why ? XGS_POLICY_STOP_AND_COPY : XGS_POLICY_CONTINUE_PRECOPY;
}

/* xc_domain_save's suspend callback (1 = suspended).  The prepare hook
 * runs first, with the guest still running; the paused hook is started
 * once the guest is suspended and waited for after the last pages. */
static int
suspend_cb (void *data)
{
  struct xsend *X = data;

  if (X->o->paused_hook) {
    double tp = sxm_now ();
    X->hook = xm_hook_start (X->o->paused_hook, "prepare");
    if (X->hook == -1 || xm_hook_wait (&X->hook, X->o->paused_hook[0]) == -1) {
      X->hook_failed = true;
      return 0;
    }
    X->t_prepare = sxm_now () - tp;
  }
  X->t_suspend = sxm_now ();
  /* The guest suspends itself (its PV control driver): a guest capped at
   * 1% of a CPU would take that long to do it, inside the downtime.  The
   * throttle's work is done once pre-copy is: its own cap back first. */
  if (X->throttle) {
    X->throttled_s += X->t_suspend - X->t_throttle;
    xen_throttle (X, 0);
  }
  if (libxl_domain_suspend_only (X->e.ctx, X->domid, NULL) != 0) {
    sxm_error ("xen: domain %u did not suspend (libxl_domain_suspend_only "
               "failed; does the guest run Xen's PV control driver?)",
               X->domid);
    return 0;
  }
  X->suspended = true;
  X->t_suspended = sxm_now ();
  if (X->o->paused_hook &&
      (X->hook = xm_hook_start (X->o->paused_hook, "paused")) == -1) {
    X->hook_failed = true;
    return 0;
  }
  return 1;
}

/* Only HVM guests with a device model (qemu) need qemu's own dirty log
 * switched; PVH guests, the ones this backend takes, have none. */
static int
qemu_logdirty_cb (uint32_t domid, unsigned enable, void *data)
{
  (void) domid; (void) enable; (void) data;
  return 0;
}

static int
postcopy_cb (void *data)
{
  (void) data;
  return 1;
}

/* ---- xen_send's steps --------------------------------------------------
 * Each returns 0, or an enum xm_exit after reporting why: XM_CANNOT while
 * nothing has moved, XM_FAILED once it has (xen_send gives the domain
 * back), and xsend_commit its outcome. */

/* ID names a running PVH domain libxl knows; its configuration (as JSON:
 * the destination builds the new domain from it) and the preflight. */
static int
xsend_check_domain (struct xsend *X, const char *id)
{
  char *end;
  unsigned long d;

  errno = 0;
  d = strtoul (id ? id : "", &end, 10);
  if (!id || !*id || *end || errno || d == 0 || d >= DOMID_FIRST_RESERVED) {
    sxm_error ("xen: '%s' is not a guest domain id", id ? id : "");
    return XM_CANNOT;
  }
  X->domid = d;
  if (xen_env_open (&X->e) == -1)
    return XM_CANNOT;
  if (xc_domain_getinfo (X->e.xch, X->domid, 1, &X->info) != 1 ||
      X->info.domid != X->domid) {
    sxm_error ("xen: domain %u does not exist", X->domid);
    return XM_CANNOT;
  }
  if (!X->info.hvm) {
    sxm_error ("xen: domain %u is a PV guest: its log-dirty mode needs "
               "shadow paging, which this Xen build may lack, and xenmem "
               "moves PVH guests only", X->domid);
    return XM_CANNOT;
  }
  if (X->info.shutdown || X->info.dying || X->info.paused) {
    sxm_error ("xen: domain %u is not running (paused, shut down or dying)",
               X->domid);
    return XM_CANNOT;
  }
  if (libxl_retrieve_domain_configuration (X->e.ctx, X->domid, &X->cfg,
                                           NULL) != 0 ||
      !(X->json = libxl_domain_config_to_json (X->e.ctx, &X->cfg))) {
    sxm_error ("xen: cannot read domain %u's configuration from libxl (was "
               "it created by xl/libxl?)", X->domid);
    return XM_CANNOT;
  }
  if (X->cfg.c_info.type != LIBXL_DOMAIN_TYPE_PVH) {
    sxm_error ("xen: domain %u is not a PVH guest; xenmem's xen backend "
               "moves PVH guests only (HVM guests have a device model whose "
               "state it does not carry, PV guests need shadow paging)",
               X->domid);
    return XM_CANNOT;
  }
  /* What the destination checks before anything moves (and what this
   * side refuses itself: unmapped disks, unmovable devices). */
  if (xm_xen_preflight_build (X->e.xch, X->e.ctx, X->domid, &X->cfg, X->o,
                              X->pf) == -1)
    return XM_CANNOT;
  if (strlen (X->json) > XM_XENDATA_MAX || !X->cfg.c_info.name ||
      !(X->name = strdup (X->cfg.c_info.name)) ||
      asprintf (&X->away, "%s--migratedaway", X->cfg.c_info.name) < 0) {
    X->away = NULL;
    sxm_error ("xen: domain %u's configuration is unusable (no name, or "
               "over %u bytes)", X->domid, XM_XENDATA_MAX);
    return XM_CANNOT;
  }
  X->npages = X->info.max_memkb / 4 ? X->info.max_memkb / 4 : 1;
  X->nvcpus = X->info.nr_online_vcpus ? X->info.nr_online_vcpus : 1;
  return 0;
}

/* Header, configuration and preflight, then the destination's word on
 * them: nothing has moved yet, so a refusal leaves the guest as it was
 * (XM_CANNOT).  A broken connection: XM_FAILED (the guest still runs). */
static int
xsend_offer (struct xsend *X)
{
  struct xm_header hdr = { XM_STREAM_VERSION, XM_BACKEND_XEN, X->npages,
                           X->o->check_only ? XM_HDR_CHECK_ONLY : 0 };
  uint8_t *pb = malloc (xm_preflight_size (X->pf));
  size_t plen;
  int r;

  if (!pb) {
    sxm_error ("out of memory");
    return XM_FAILED;
  }
  plen = xm_preflight_encode (X->pf, pb);
  X->rate.t = sxm_now ();
  r = xsend_put (X, X->rec, xm_encode_header (X->rec, &hdr)) == -1 ||
    xsend_put (X, X->rec, xm_encode_xendata (X->rec, X->seq++, XM_XEN_CONFIG,
                                             X->json, strlen (X->json))) == -1
    || xsend_put (X, X->rec, xm_encode_xendata (X->rec, X->seq++,
                                                XM_XEN_PREFLIGHT, pb,
                                                plen)) == -1;
  free (pb);
  if (r)
    return XM_FAILED;
  xm_decoder_init_acks (&X->ad);
  if (xm_read_ack (X->c, &X->ad, &X->r, X->rec) == -1)
    return XM_FAILED;
  if (X->r.u.ack.status != 0) {
    sxm_error ("the destination refused the guest before anything moved: %s",
               X->r.u.ack.msg);
    return XM_CANNOT;
  }
  return 0;
}

/* Close the pipe's write end (the relay sees EOF) and wait for the
 * relay. */
static void
xsend_end_relay (struct xsend *X)
{
  if (X->wfd != -1)
    close (X->wfd);
  X->wfd = -1;
  if (X->relay_started)
    pthread_join (X->relay, NULL);
  X->relay_started = false;
}

/* libxl's migration stream v2 into a pipe the relay thread carries to the
 * socket: libxl's header and the LIBXC_CONTEXT record (its body is libxc's
 * own stream, self-delimiting: length 0), xc_domain_save's stream under
 * our policy and suspend callback, libxl's END; then, once the hook's
 * paused phase succeeded, our END. */
static int
xsend_save (struct xsend *X)
{
  struct save_callbacks cb = { .suspend = suspend_cb,
                               .precopy_policy = policy,
                               .postcopy = postcopy_cb,
                               .switch_qemu_logdirty = qemu_logdirty_cb,
                               .data = X };
  uint8_t head[24], digest[32] = { 0 };
  int p[2], xrc;

  if (pipe2 (p, O_CLOEXEC) == -1) {
    sxm_error ("pipe: %m");
    return XM_FAILED;
  }
  fcntl (p[0], F_SETPIPE_SZ, 1 << 20);
  X->rfd = p[0];
  X->wfd = p[1];
  if ((errno = pthread_create (&X->relay, NULL, relay_out, X)) != 0) {
    sxm_error ("pthread_create: %m");
    return XM_FAILED;
  }
  X->relay_started = true;

  for (int i = 0; i < 8; i++)
    head[i] = LIBXL_IDENT >> (56 - 8 * i);
  memset (head + 8, 0, 8);
  head[11] = LIBXL_VERSION2;
  libxl_record (head + 16, LIBXL_REC_LIBXC_CONTEXT, 0);
  if (full_write (X->wfd, head, 24) == -1)
    return XM_FAILED;
  xrc = xc_domain_save (X->e.xch, X->wfd, X->domid, XCFLAGS_LIVE, &cb,
                        XC_STREAM_PLAIN, -1);
  /* Whatever happened (the suspend callback gives the cap back before it
   * suspends; a save that failed before it did not), the domain gets its
   * own cap back before anything else. */
  if (X->throttle) {
    X->throttled_s += sxm_now () - X->t_throttle;
    xen_throttle (X, 0);
  }
  if (xrc != 0 || X->hook_failed) {
    if (!X->hook_failed)
      sxm_error ("xen: xc_domain_save of domain %u failed%s", X->domid,
                 X->relay_failed ? " (the stream to the receiver broke)" : "");
    return XM_FAILED;
  }
  libxl_record (head, LIBXL_REC_END, 0);
  if (full_write (X->wfd, head, 8) == -1)
    return XM_FAILED;
  xsend_end_relay (X);
  X->t_saved = sxm_now ();
  if (X->relay_failed)
    return XM_FAILED;
  if (X->hook != -1) {
    if (xm_hook_wait (&X->hook, X->o->paused_hook[0]) == -1)
      return XM_FAILED;
    X->t_hook = sxm_now () - X->t_suspend;
  }
  if (xsend_put (X, X->rec, xm_encode_end (X->rec, X->seq++, X->relayed,
                                           digest)) == -1)
    return XM_FAILED;
  X->end_sent = true;
  return 0;
}

/* The commit handshake.  The name moves to the destination with the guest
 * (xl does the same): the source becomes NAME--migratedaway first. */
static int
xsend_commit (struct xsend *X)
{
  if (xm_read_verdict (X->c, &X->ad, &X->r, X->rec) == -1)
    return XM_FAILED;
  X->t_loaded = sxm_now ();
  X->committed = true;
  if (xsend_put (X, X->rec, xm_encode_ack (X->rec, X->seq++, 0,
                                           "commit")) == 0) {
    /* The destination starts the guest meanwhile (it does not wait for
     * the name: renames are xenstore transactions, slow enough to be
     * worth keeping out of the blackout). */
    if (libxl_domain_rename (X->e.ctx, X->domid, X->name, X->away) == 0)
      X->renamed = true;
    else
      sxm_error ("xen: cannot rename domain %u to %s; the destination keeps "
                 "the name %s--incoming", X->domid, X->away, X->name);
    if (xm_read_ack (X->c, &X->ad, &X->r, X->rec) == 0 &&
        X->r.u.ack.status == 0) {
      X->t_run = sxm_now ();
      if (libxl_domain_destroy (X->e.ctx, X->domid, NULL) != 0)
        sxm_error ("xen: the guest runs on the destination, but destroying "
                   "the source domain %u (%s) failed: destroy it with xl",
                   X->domid, X->away);
      return XM_OK;
    }
  }
  sxm_error ("committed, but the receiver did not confirm that the guest "
             "runs there; the source domain %u stays suspended as %s: check "
             "the destination before resuming (xl) or destroying it",
             X->domid, X->renamed ? X->away : X->name);
  return XM_IN_DOUBT;
}

/* A send that failed before the commit: the relay ended, the hook waited
 * for, the source domain resumed, and (after END) the receiver told to
 * drop its domain -- before END, the stream breaking off says the same. */
static void
xsend_give_back (struct xsend *X)
{
  xsend_end_relay (X);
  if (X->hook != -1)
    xm_hook_wait (&X->hook, X->o->paused_hook[0]);
  if (X->suspended && !X->committed &&
      libxl_domain_resume (X->e.ctx, X->domid, 1, NULL) != 0)
    sxm_error ("xen: could not resume domain %u: resume it with xl",
               X->domid);
  if (X->end_sent)
    xsend_put (X, X->rec, xm_encode_ack (X->rec, X->seq++, -ECANCELED,
                                         "the sender gave up"));
}

/* A failed migration leaves the source domain running -- unless the guest
 * itself did not survive (it crashed, or was destroyed or shut down while
 * it migrated): then say that, not "resumed". */
static void
xsend_say_fate (struct xsend *X, struct jbuf *report)
{
  xc_dominfo_t info;
  const char *fate = NULL;

  if (xc_domain_getinfo (X->e.xch, X->domid, 1, &info) != 1 ||
      info.domid != X->domid)
    fate = "no longer exists";
  else if (info.crashed)
    fate = "crashed";
  else if (info.dying)
    fate = "is dying";
  else if (info.shutdown)
    fate = "is shut down";
  if (fate) {
    sxm_error ("xen: migration failed, and source domain %u %s (see xl "
               "dmesg): it does not run on", X->domid, fate);
    jbuf_add (report, ",\"source\":\"%s\"", fate);
  }
  else
    sxm_error ("xen: migration failed; source domain %u runs on", X->domid);
}

static void
xsend_report (struct xsend *X, int ret, struct jbuf *report)
{
  uint64_t ram = X->npages * (uint64_t) XM_PAGE_SIZE;

  jbuf_add (&X->rstats, "]");
  jbuf_add (report, ",\"result\":\"%s\",\"domid\":%u,\"rounds\":%u,"
            "\"stop_reason\":", X->checked ? "ready" : ret == XM_OK
            ? "migrated" : ret == XM_IN_DOUBT ? "in-doubt" : ret == XM_CANNOT
            ? "not started" : "failed", X->domid,
            X->checked ? 0 : X->rounds + 1);
  jbuf_str (report, X->why ? X->why : "none");
  jbuf_add (report, ",\"stream_bytes\":%" PRIu64 ",\"wire_bytes\":%" PRIu64
            ",\"guest_bytes\":%" PRIu64 ",\"wire_over_ram\":%.4f,"
            "\"total_s\":%.3f", X->relayed, X->wire_bytes, ram,
            ram ? X->wire_bytes / (double) ram : 0, sxm_now () - X->t0);
  /* downtime_ms: from the suspend request to "running" (the guest still
   * runs while it processes the request: suspend_ms); then the last pages
   * and state (final_ms), the destination finishing its restore
   * (restore_ms), the commit round trip and unpause (commit_ms). */
  if (ret == XM_OK && !X->checked)
    jbuf_add (report, ",\"downtime_ms\":%.3f,\"suspend_ms\":%.3f,"
              "\"final_ms\":%.3f,\"restore_ms\":%.3f,\"commit_ms\":%.3f",
              (X->t_run - X->t_suspend) * 1e3,
              (X->t_suspended - X->t_suspend) * 1e3,
              (X->t_saved - X->t_suspended) * 1e3,
              (X->t_loaded - X->t_saved) * 1e3,
              (X->t_run - X->t_loaded) * 1e3);
  if (X->o->paused_hook && X->t_hook > 0)
    jbuf_add (report, ",\"hook_ms\":%.3f,\"prepare_ms\":%.3f",
              X->t_hook * 1e3, X->t_prepare * 1e3);
  jbuf_add (report, ",\"auto_converge\":%s,\"throttle_max\":%u,"
            "\"throttled_s\":%.3f", X->po.converge.on ? "true" : "false",
            X->throttle_max, X->throttled_s);
  if (X->have_cap)
    jbuf_add (report, ",\"cap\":%d,\"cap_restored\":%s", X->orig_cap,
              X->throttle ? "false" : "true");
  jbuf_add (report, ",\"tls\":%s,\"round_stats\":%s",
            xm_conn_is_tls (X->c) ? "true" : "false",
            X->rstats.s ? X->rstats.s : "[]");
}

/* The table's migrate_send (backend.h): ID is the domid. */
static int
xen_send (const char *id, struct xm_conn *c, const struct xm_send_opts *o,
          struct jbuf *report)
{
  struct xsend *X = calloc (1, sizeof *X);
  int ret;

  if (!X || !(X->pf = calloc (1, sizeof *X->pf)) ||     /* ~20 KiB */
      !(X->rec = malloc (XM_REC_HDR_SIZE + 8 + XM_XENDATA_MAX + 8))) {
    sxm_error ("out of memory");
    if (X)
      free (X->pf);
    free (X);
    return XM_CANNOT;
  }
  X->o = o;
  X->po = *o;
  X->c = c;
  X->rfd = X->wfd = -1;
  X->hook = -1;
  X->t0 = sxm_now ();
  jbuf_add (&X->rstats, "[");
  libxl_domain_config_init (&X->cfg);

  if ((ret = xsend_check_domain (X, id)) == 0 &&
      (ret = xsend_offer (X)) == 0) {
    if (o->check_only) {
      X->why = "check only: the destination would take the guest";
      X->checked = true;
      ret = XM_OK;
    }
    else if ((ret = xsend_save (X)) == 0)
      ret = xsend_commit (X);
  }
  if (ret == XM_FAILED)
    xsend_give_back (X);
  xsend_end_relay (X);
  if (X->rfd != -1)
    close (X->rfd);
  if (ret == XM_FAILED && X->e.xch)
    xsend_say_fate (X, report);
  xsend_report (X, ret, report);

  jbuf_free (&X->rstats);
  libxl_domain_config_dispose (&X->cfg);
  free (X->json);
  free (X->name);
  free (X->away);
  free (X->rec);
  free (X->pf);
  xen_env_close (&X->e);
  free (X);
  return ret;
}

/* ---- destination ------------------------------------------------------- */

struct xrecv {
  struct xm_conn *c;
  struct xm_decoder *d;
  int wfd;                      /* the pipe libxl's restore reads */
  uint64_t bytes;
  bool end_ok;
  double t_end;                 /* monotonic time END arrived */
  char why[300];
};

/* Relay: XENDATA stream records from the socket into libxl's pipe, up to
 * END, whose byte count must match.  Any error closes the pipe, so that
 * the restore sees the stream end early and fails. */
static void *
relay_in (void *arg)
{
  struct xrecv *R = arg;
  uint8_t *buf = malloc (XM_REC_HDR_SIZE + 8 + XM_XENDATA_MAX + 8);
  struct xm_record r;

  block_signals ();
  if (!buf)
    snprintf (R->why, sizeof R->why, "out of memory");
  while (buf) {
    int64_t blen;
    if (xm_read (R->c, buf, XM_REC_HDR_SIZE, false) != 1) {
      snprintf (R->why, sizeof R->why, "the stream from the sender broke");
      break;
    }
    if ((blen = xm_record_body_len (R->d, buf)) < 0 ||
        xm_read (R->c, buf + XM_REC_HDR_SIZE, blen, false) != 1 ||
        xm_decode_record (R->d, buf, XM_REC_HDR_SIZE + blen, &r) == -1) {
      snprintf (R->why, sizeof R->why, "%s", R->d->err[0] ? R->d->err
                : "the stream from the sender broke");
      break;
    }
    if (r.type == XM_REC_END) {
      if (r.u.end.pages_sent != R->bytes)
        snprintf (R->why, sizeof R->why, "END says %" PRIu64 " stream bytes "
                  "were sent, %" PRIu64 " arrived", r.u.end.pages_sent,
                  R->bytes);
      else
        R->end_ok = true;
      R->t_end = sxm_now ();
      break;
    }
    if (r.type != XM_REC_XENDATA || r.u.xendata.kind != XM_XEN_STREAM) {
      snprintf (R->why, sizeof R->why, "record %" PRIu32 ": unexpected in "
                "the domain's stream", r.seq);
      break;
    }
    if (full_write (R->wfd, r.u.xendata.data, r.u.xendata.len) == -1) {
      snprintf (R->why, sizeof R->why, "the restore stopped reading its "
                "stream (%s)", strerror (errno));
      break;
    }
    R->bytes += r.u.xendata.len;
  }
  close (R->wfd);
  R->wfd = -1;
  free (buf);
  return NULL;
}

/* One record of the sender's stream into BUF (big enough for any the
 * decoder D allows): 1 and *R decoded; 0 the stream broke (the transport
 * said so); -1 the record is refused, WHY says why. */
static int
read_record (struct xm_conn *c, struct xm_decoder *d, uint8_t *buf,
             struct xm_record *r, char *why, size_t whylen)
{
  int64_t blen;

  if (xm_read (c, buf, XM_REC_HDR_SIZE, false) != 1)
    return 0;
  if ((blen = xm_record_body_len (d, buf)) < 0) {
    snprintf (why, whylen, "%s", d->err);
    return -1;
  }
  if (xm_read (c, buf + XM_REC_HDR_SIZE, blen, false) != 1)
    return 0;
  if (xm_decode_record (d, buf, XM_REC_HDR_SIZE + blen, r) == -1) {
    snprintf (why, whylen, "%s", d->err);
    return -1;
  }
  return 1;
}

/* ---- xen_receive's steps -----------------------------------------------
 * Each returns XM_RX_ON, XM_RX_REFUSE (X->why says why: the sender is told;
 * X->ret may already say XM_CANNOT), XM_RX_GONE (the stream broke or the
 * sender gave up: nothing to tell) or XM_RX_DONE (X->ret is the outcome). */

struct xreceiver {
  struct xen_env e;
  struct xm_conn *c;
  const struct xm_recv_opts *o;
  struct xm_decoder d;
  struct xm_header h;
  struct xm_record r;
  struct xrecv R;               /* the relay thread's */
  struct xm_preflight *pf;
  libxl_domain_config cfg;
  libxl_domain_restore_params params;
  uint8_t *buf;                 /* one record */
  uint32_t domid, aseq;
  char *name, *incoming;        /* NAME, and NAME--incoming until the commit */
  int ret;
  bool started;
  char why[300];
  double t0, t_restore, t_restored;
};

#define xrefuse(X, ...) xm_rx_refuse ((X)->why, sizeof (X)->why, __VA_ARGS__)

/* The next record of the sender's stream into X->r. */
static int
xrecv_record (struct xreceiver *X)
{
  int rr = read_record (X->c, &X->d, X->buf, &X->r, X->why, sizeof X->why);
  return rr == 1 ? XM_RX_ON : rr == 0 ? XM_RX_GONE : XM_RX_REFUSE;
}

/* The header, then the domain's configuration (libxl JSON). */
static int
xrecv_config (struct xreceiver *X)
{
  int st, jr;
  char *json;

  if (xen_env_open (&X->e) == -1)
    return xrefuse (X, "no Xen here");
  if (xm_read (X->c, X->buf, XM_HEADER_SIZE, false) != 1)
    return XM_RX_GONE;
  if (xm_decode_header (&X->d, X->buf, XM_HEADER_SIZE, &X->h) == -1)
    return xrefuse (X, "stream header: %s", X->d.err);
  if (X->h.backend != XM_BACKEND_XEN)
    return xrefuse (X, "the stream is from backend %" PRIu32 ", this "
                    "receiver runs xen", X->h.backend);
  if ((st = xrecv_record (X)) != XM_RX_ON)
    return st;
  if (X->r.type != XM_REC_XENDATA || X->r.u.xendata.kind != XM_XEN_CONFIG)
    return xrefuse (X, "the stream does not begin with the domain's "
                    "configuration");
  json = strndup ((const char *) X->r.u.xendata.data, X->r.u.xendata.len);
  jr = json ? libxl_domain_config_from_json (X->e.ctx, &X->cfg, json) : -1;
  free (json);
  if (jr != 0 || !X->cfg.c_info.name)
    return xrefuse (X, "the domain's configuration is not valid libxl "
                    "JSON");
  return XM_RX_ON;
}

/* The preflight (Xen version, disk map, memory, CPU): a refusal here is
 * the sender's exit 4, nothing has moved.  Then the new domain's
 * temporary name (on the same host the source still holds the name). */
static int
xrecv_preflight (struct xreceiver *X)
{
  uint32_t other;
  int st;

  if ((st = xrecv_record (X)) != XM_RX_ON)
    return st;
  if (X->r.type != XM_REC_XENDATA || X->r.u.xendata.kind != XM_XEN_PREFLIGHT)
    return xrefuse (X, "the configuration is not followed by the "
                    "preflight");
  if (!(X->pf = malloc (sizeof *X->pf)))
    return xrefuse (X, "out of memory");
  if (xm_preflight_decode (X->r.u.xendata.data, X->r.u.xendata.len, X->pf,
                           X->why, sizeof X->why) == -1)
    return XM_RX_REFUSE;
  if (xm_xen_preflight_check (X->e.xch, X->e.ctx, &X->cfg, X->pf, X->o,
                              X->why, sizeof X->why) == -1) {
    X->ret = XM_CANNOT;
    return XM_RX_REFUSE;
  }
  if (!(X->name = strdup (X->cfg.c_info.name)) ||
      asprintf (&X->incoming, "%s--incoming", X->name) < 0) {
    X->incoming = NULL;
    return xrefuse (X, "out of memory");
  }
  /* A receiver killed -9 leaves its half-built domain behind; say so
   * rather than let libxl fail on the name. */
  if (libxl_name_to_domid (X->e.ctx, X->incoming, &other) == 0) {
    X->ret = XM_CANNOT;
    return xrefuse (X, "a domain named %s already exists (domid %u, left by "
                    "an earlier receive that was killed?): destroy it (xl "
                    "destroy %s) and try again", X->incoming, other,
                    X->incoming);
  }
  free (X->cfg.c_info.name);
  X->cfg.c_info.name = strdup (X->incoming);
  X->cfg.c_info.domid = DOMID_INVALID;
  X->params.checkpointed_stream = LIBXL_CHECKPOINTED_STREAM_NONE;
  X->params.stream_version = 2;
  return XM_RX_ON;
}

/* libxl builds the domain, paused, from the stream the relay thread feeds
 * it through a pipe; "loaded" once it did and END's count agreed. */
static int
xrecv_restore (struct xreceiver *X)
{
  pthread_t relay;
  int p[2], lrc;

  for (int i = 0; i < X->cfg.num_disks; i++)
    if (!X->o->quiet)
      fprintf (stderr, "xenmem: disk %s -> phy:%s\n", X->cfg.disks[i].vdev,
               X->cfg.disks[i].pdev_path);
  if (pipe2 (p, O_CLOEXEC) == -1)
    return xrefuse (X, "pipe: %s", strerror (errno));
  fcntl (p[1], F_SETPIPE_SZ, 1 << 20);
  X->R.wfd = p[1];
  if ((errno = pthread_create (&relay, NULL, relay_in, &X->R)) != 0) {
    close (p[0]);
    close (X->R.wfd);
    return xrefuse (X, "pthread_create: %s", strerror (errno));
  }
  lrc = libxl_domain_create_restore (X->e.ctx, &X->cfg, &X->domid, p[0], -1,
                                     &X->params, NULL, NULL);
  /* Whatever happened, the relay must not block on a pipe nobody reads. */
  close (p[0]);
  X->t_restored = sxm_now ();
  pthread_join (relay, NULL);
  X->t_restore = sxm_now () - X->t0;
  if (lrc != 0) {
    X->domid = DOMID_INVALID;   /* libxl destroyed what it had built */
    return xrefuse (X, "libxl could not restore the domain%s%.200s",
                    X->R.why[0] ? ": " : "", X->R.why);
  }
  if (!X->R.end_ok)
    return xrefuse (X, "%s", X->R.why[0] ? X->R.why
                    : "the stream ended early");
  return xm_send_ack (X->c, &X->aseq, 0, "loaded") == -1 ? XM_RX_GONE
    : XM_RX_ON;
}

/* The sender's commit: unpause, say "running", take the name (which the
 * source gives up right after its commit). */
static int
xrecv_commit (struct xreceiver *X)
{
  int st = xrecv_record (X);

  if (st != XM_RX_ON) {            /* (a refused record: its reason stays) */
    if (st == XM_RX_GONE)
      snprintf (X->why, sizeof X->why, "no commit");
    return XM_RX_GONE;
  }
  if (X->r.u.ack.status != 0) {
    snprintf (X->why, sizeof X->why, "the sender called it off: %s",
              X->r.u.ack.msg);
    return XM_RX_GONE;
  }
  if (libxl_domain_unpause (X->e.ctx, X->domid, NULL) != 0)
    return xrefuse (X, "cannot unpause the restored domain %u", X->domid);
  X->started = true;
  X->ret = XM_OK;
  if (X->o->test_no_running) {
    sxm_error ("XENMEM_TEST_NO_RUNNING: not confirming to the sender");
    return XM_RX_DONE;
  }
  if (xm_send_ack (X->c, &X->aseq, 0, "running") == -1)
    sxm_error ("could not confirm to the sender; the guest runs here");
  for (int i = 0; i < 100; i++) {
    if (libxl_domain_rename (X->e.ctx, X->domid, X->incoming, X->name) == 0)
      break;
    if (i == 99)
      sxm_error ("xen: could not rename domain %u to %s; it keeps the name "
                 "%s", X->domid, X->name, X->incoming);
    else
      usleep (100000);
  }
  return XM_RX_DONE;
}

/* --check: the started domain still runs a while later. */
static void
xrecv_check (struct xreceiver *X, struct jbuf *report)
{
  double s = X->o->check_seconds;
  struct timespec ts = { (time_t) s, (long) ((s - (time_t) s) * 1e9) };
  xc_dominfo_t info;
  bool ok;

  nanosleep (&ts, NULL);
  ok = xc_domain_getinfo (X->e.xch, X->domid, 1, &info) == 1 &&
    info.domid == X->domid && !info.shutdown && !info.dying &&
    !info.paused && !info.crashed;
  jbuf_add (report, ",\"check\":{\"seconds\":%.3f,\"ok\":%s}", s,
            ok ? "true" : "false");
  if (!ok) {
    sxm_error ("xen: domain %u is not running %.1f s after the move",
               X->domid, s);
    X->ret = XM_FAILED;
  }
}

/* The check, a half-built domain destroyed, the report. */
static void
xrecv_finish (struct xreceiver *X, struct jbuf *report)
{
  if (X->ret == XM_OK && X->o->check_seconds > 0)
    xrecv_check (X, report);
  if (!X->started && X->domid != DOMID_INVALID && X->e.ctx &&
      libxl_domain_destroy (X->e.ctx, X->domid, NULL) != 0)
    sxm_error ("xen: could not destroy the half-restored domain %u",
               X->domid);
  if (!X->started && !X->why[0])
    snprintf (X->why, sizeof X->why, "the stream ended early");
  jbuf_add (report, ",\"result\":\"%s\",\"domid\":%d,\"stream_bytes\":%"
            PRIu64 ",\"restore_s\":%.3f,\"total_s\":%.3f",
            X->ret == XM_OK ? "running" : X->started
            ? "started, check failed" : "discarded",
            X->domid == DOMID_INVALID ? -1 : (int) X->domid, X->R.bytes,
            X->t_restore, sxm_now () - X->t0);
  /* libxl's restore goes on after the stream's last byte (the devices,
   * their hotplug): how much of the blackout that is (negative: libxl was
   * done before the sender's END came). */
  if (X->R.t_end > 0 && X->t_restored > 0)
    jbuf_add (report, ",\"restored_after_end_ms\":%.3f",
              (X->t_restored - X->R.t_end) * 1e3);
  if (X->why[0] && X->ret != XM_OK) {
    jbuf_add (report, ",\"error\":");
    jbuf_str (report, X->why);
  }
}

/* The table's migrate_receive (backend.h). */
static int
xen_receive (struct xm_conn *c, const struct xm_recv_opts *o,
             struct jbuf *report)
{
  struct xreceiver *X = calloc (1, sizeof *X);
  int st, ret;

  if (!X || !(X->buf = malloc (XM_REC_HDR_SIZE + 8 + XM_XENDATA_MAX + 8))) {
    sxm_error ("out of memory");
    free (X);
    return XM_FAILED;
  }
  X->c = c;
  X->o = o;
  X->R = (struct xrecv) { .c = c, .d = &X->d, .wfd = -1 };
  X->domid = DOMID_INVALID;
  X->ret = XM_FAILED;
  X->t0 = sxm_now ();
  libxl_domain_config_init (&X->cfg);
  libxl_domain_restore_params_init (&X->params);
  xm_decoder_init (&X->d);

  if ((st = xrecv_config (X)) == XM_RX_ON &&
      (st = xrecv_preflight (X)) == XM_RX_ON) {
    /* Everything checked: the sender may start (or, asking only, goes
     * away: then the caller accepts the real stream). */
    if (xm_send_ack (c, &X->aseq, 0, "ready") == -1)
      st = XM_RX_GONE;
    else if (X->h.flags & XM_HDR_CHECK_ONLY) {
      jbuf_add (report, ",\"result\":\"checked\"");
      X->ret = XM_CHECKED;
      st = XM_RX_DONE;
    }
    else if ((st = xrecv_restore (X)) == XM_RX_ON)
      st = xrecv_commit (X);
  }
  if (st == XM_RX_REFUSE) {
    sxm_error ("%s", X->why);
    xm_send_ack (c, &X->aseq, -EPROTO, X->why);
  }
  if (X->ret != XM_CHECKED)
    xrecv_finish (X, report);

  ret = X->ret;
  libxl_domain_config_dispose (&X->cfg);
  libxl_domain_restore_params_dispose (&X->params);
  free (X->pf);
  free (X->name);
  free (X->incoming);
  free (X->buf);
  xen_env_close (&X->e);
  free (X);
  return ret;
}

/* A whole-migration backend (backend.h): xc_domain_save and libxl's
 * restore move the domain, so none of the page-level members is set; the
 * command line calls migrate_send and migrate_receive where it would run
 * the engine. */
const struct xm_backend_ops xm_backend_xen = {
  .name = "xen",
  .id = XM_BACKEND_XEN,
  .has_domains = true,
  .can_check_only = true,
  .available = xen_available,
  .migrate_send = xen_send,
  .migrate_receive = xen_receive,
};
