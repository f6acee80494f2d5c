/* The pre-copy engine: backend-independent send and receive loops over a
 * page-level backend's source and destination (backend.h).
 *
 * send: round 0 sends every page, each later round the pages dirtied
 * during the previous one, until the pre-copy policy (xm_policy_round
 * below: the predicted downtime, dirty bytes left / measured bandwidth,
 * is under the target, the dirty set stops shrinking, or the round limit
 * is hit) says so, throttling a guest that dirties memory too fast for
 * the link (auto-converge); then pause, last pages, context, END, and the
 * commit handshake (doc/xenmem-stream.md "Ending").  receive: the mirror
 * image, checking everything before acting on it.
 *
 * Also here, because a whole-migration backend (xen) keeps the same
 * promises with its own loop: the policy, the hook, the commit
 * handshake's halves and the rate limit. */
#ifndef XENMEM_ENGINE_H
#define XENMEM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "backend.h"
#include "jsonline.h"
#include "stream.h"
#include "transport.h"

/* Exit codes shared by the engine and the command line. */
enum xm_exit {
  XM_OK = 0,            /* migrated (send) / guest running here (receive) */
  XM_FAILED = 1,        /* failed; the source guest runs on, unchanged */
  XM_USAGE = 2,
  XM_IN_DOUBT = 3,      /* send: committed but no word the destination runs */
  XM_CANNOT = 4,        /* nothing started: backend, address, TLS, peer */
  XM_CHECKED = 100,     /* internal, receive: a check-only session was
                         * answered "ready"; accept the real one next */
};

/* --disk-map=FROM=TO (backend xen): on the source FROM is a disk's target
 * in the domain's configuration (/dev/nbd0) and TO the destination disk's
 * UUID; on the destination FROM is that UUID and TO the device the new
 * domain gets (phy:).  Strings borrowed from argv. */
#define XM_DISK_MAP_MAX 16
struct xm_disk_map {
  const char *from, *to;
};

struct xm_send_opts {
  double downtime_ms;           /* target; default 30 */
  unsigned max_rounds;          /* pre-copy rounds before stop-and-copy */
  uint64_t rate;                /* bytes/s on the wire, 0 = unlimited */
  bool verify_memory;           /* sha256 of all memory at pause, in END */
  bool quiet;                   /* no per-round lines on stderr */
  /* --progress=json:FD: one JSON object per line for each pre-copy round
   * (xm_progress_round), for an orchestrator to read while it runs. */
  FILE *progress;
  /* NULL, or a command (argv, NULL-terminated) started when the guest is
   * paused and waited for before END; its failure resumes the source. */
  char *const *paused_hook;
  struct xm_disk_map disk_map[XM_DISK_MAP_MAX];
  unsigned ndisk_map;
  /* Backend xen: only ask the destination whether it would take the
   * guest (configuration and preflight, its answer), then hang up; the
   * receiver waits for the real stream (sxm migrate's check phase). */
  bool check_only;
  /* Auto-converge (xm_policy_round): --auto-converge (default on),
   * --throttle-initial, --throttle-step, --max-throttle, in percent of the
   * guest's CPU time (defaults 20, 10, 99; 1 <= each <= 99). */
  struct {
    bool on;
    unsigned initial_pct, step_pct, max_pct;
  } converge;
};

struct xm_recv_opts {
  double check_seconds;         /* after start: backend check, 0 = none */
  bool test_no_running;         /* testing: never send "running" (the
                                 * sender is left in doubt) */
  bool quiet;
  /* The destination guest's disks, opened by the caller before the stream
   * (an unreachable disk is found before a sender waits on us) and given
   * to the guest with set_disks right after create_dest; borrowed. */
  struct xm_vbd *const *disks;
  unsigned ndisks;
  /* Not NULL: a guest that was started (and passed the check) is handed
   * out here, still running, instead of being closed with xm_receive's
   * end (xenmem receive --monitor keeps it and migrates it on).  NULL
   * unless the result is XM_OK. */
  struct xm_dest **keep;
  struct xm_disk_map disk_map[XM_DISK_MAP_MAX];     /* backend xen */
  unsigned ndisk_map;
  /* Backend xen: the hotplug script the new domain's (mapped) disks get
   * (an absolute path), or NULL for Xen's default (`block`). */
  const char *disk_script;
};

/* The migration of a page-level backend B (B->migrate_send and
 * migrate_receive NULL; a whole-migration backend's own functions stand in
 * for these, backend.h): xm_send moves the running source S, xm_receive
 * builds the guest (create_dest (ID, ...)) from the stream.  C is the
 * caller's (connected, timeout set) and closed by it.  Both fill REPORT
 * with ",\"key\":value" JSON members (rounds, bytes, downtime...) and
 * return an enum xm_exit. */
int xm_send (const struct xm_backend_ops *b, struct xm_source *s,
             struct xm_conn *c, const struct xm_send_opts *o,
             struct jbuf *report);
int xm_receive (const struct xm_backend_ops *b, const char *id,
                struct xm_conn *c, const struct xm_recv_opts *o,
                struct jbuf *report);

/* The send hook (xm_send_opts.paused_hook): start ARGV with
 * XENMEM_HOOK_PHASE=PHASE in its environment (pid, or -1 reported), and
 * wait for it (0 if it exited 0; *PID is then -1).  Shared by the engine
 * and the xen backend's libxenguest path (backend-xen.c). */
pid_t xm_hook_start (char *const *argv, const char *phase);
int xm_hook_wait (pid_t *pid, const char *name);

/* A receiver's steps (xm_receive's, the xen backend's) each return one of
 * these: go on to the next step; refuse (the reason formatted into the
 * receiver's WHY: the sender is told, the guest discarded); the stream
 * broke or the sender gave up (nothing to tell); done (the outcome is
 * decided).  xm_rx_refuse formats WHY (WHYLEN bytes) and returns
 * XM_RX_REFUSE. */
enum xm_rx { XM_RX_ON, XM_RX_REFUSE, XM_RX_GONE, XM_RX_DONE };
int xm_rx_refuse (char *why, size_t whylen, const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));

/* The commit handshake's two halves, shared by the engine and the xen
 * backend: read one record from the receiver's reply channel (decoder D,
 * BUF big enough for an ACK; errors reported), and send an ACK numbered
 * *SEQ (then incremented).  Both 0, or -1. */
int xm_read_ack (struct xm_conn *c, struct xm_decoder *d, struct xm_record *r,
                 uint8_t *buf);
int xm_send_ack (struct xm_conn *c, uint32_t *seq, int32_t status,
                 const char *msg);
/* xm_read_ack, and a non-zero status is the receiver refusing the guest
 * (said, with its message): 0 if it took what was sent, or -1. */
int xm_read_verdict (struct xm_conn *c, struct xm_decoder *d,
                     struct xm_record *r, uint8_t *buf);

/* The pre-copy policy, the one for every backend (doc/design.md,
 * "Auto-converge"): the engine's send loop and the xen backend's
 * precopy_policy (libxenguest's rounds) ask it after each live round
 * whether to stop pre-copying (xm_policy_round), and the engine also
 * between its rounds' batches (xm_policy_sample); both may change the
 * throttle, P->throttle, which the caller applies to the guest.
 *
 * Stop (the reason is the report's stop_reason) when
 *   - the predicted downtime, DIRTY pages at the last round's BANDWIDTH,
 *     is at most o->downtime_ms: "predicted downtime under the target";
 *   - else when ROUNDS reaches o->max_rounds: "round limit";
 *   - else when the dirty set failed to shrink below 90% of the previous
 *     decision's twice in a row: "dirty set stopped shrinking".  A guest
 *     dirtying faster than the link saturates its working set and the
 *     counts jitter around it; strict ">=" let that run 10 rounds.  With
 *     auto-converge this raises the throttle instead, and stops only once
 *     the throttle is at o->converge.max_pct.
 *
 * Auto-converge (o->converge.on): an observation is "hot" when the guest
 * dirtied pages faster than XM_THROTTLE_TRIGGER x the bandwidth (or, at a
 * round's end, when the dirty set did not shrink).  Two hot observations
 * in a row start the throttle at o->converge.initial_pct; from then on
 * each hot one raises it by o->converge.step_pct, up to max_pct.  It
 * never goes down during a send: the caller sets it back to 0 when the
 * send ends, whatever the outcome.  P: zero it before a send's first
 * call. */
#define XM_THROTTLE_TRIGGER 0.5
struct xm_round_stats {
  /* Live rounds sent by the time the guest is paused if pre-copy stops
   * now (the engine: the rounds done; libxc sends one more live round
   * after its policy says stop). */
  unsigned rounds;
  uint64_t dirty;               /* pages dirty now: left for the pause */
  double bandwidth;             /* bytes/s of the last round, 0: unknown */
  /* bytes/s of pages the guest dirtied since the previous observation
   * (distinct pages: a page written twice counts once), < 0: unknown */
  double dirty_rate;
};
struct xm_policy {
  uint64_t prev_dirty;          /* the previous decision's dirty count */
  bool have_prev;
  unsigned stuck;               /* decisions in a row without shrinking */
  unsigned hot;                 /* hot observations in a row */
  unsigned throttle;            /* percent of the guest's CPU taken away */
};
const char *xm_policy_round (struct xm_policy *p,
                             const struct xm_round_stats *r,
                             const struct xm_send_opts *o);
void xm_policy_sample (struct xm_policy *p, double dirty_rate,
                       double bandwidth, const struct xm_send_opts *o);
/* R's predicted downtime in ms, as the rule sees it: DIRTY full pages at
 * BANDWIDTH, 1e9 when the bandwidth is not known. */
double xm_predicted_ms (const struct xm_round_stats *r);

/* A round ended: its line on O->progress, if set (doc/xenmem.pod,
 * "PROGRESS"): {"version":1,"event":"round","round":N,"paused":B,
 * "pages":P,"bytes":B,"seconds":S,"dirty_pages":D,"predicted_ms":M}, the
 * last two -1 when not known (libxenguest tells the policy the dirty
 * count only when it asks for the next decision), and "throttle":T, the
 * auto-converge throttle (percent) at the round's end.  Flushed at
 * once. */
void xm_progress_round (const struct xm_send_opts *o, unsigned round,
                        bool paused, uint64_t pages, uint64_t bytes,
                        double secs, int64_t dirty, double predicted_ms,
                        unsigned throttle);

/* --rate: a token bucket on wire bytes.  Spend LEN bytes at RATE bytes/s
 * (0: unlimited), sleeping off any debt; T starts as sxm_now ()
 * (common/monotime.h). */
struct xm_rate {
  double bucket, t;
};
void xm_rate_spend (struct xm_rate *r, uint64_t rate, size_t len);

#endif
