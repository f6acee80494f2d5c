/* xenmem backends: where guest memory comes from and goes to.
 *
 * Like nbdcopy's endpoint ops: neither the command line nor the pre-copy
 * engine (engine.c) knows which hypervisor it talks to; everything they
 * ask of one goes through its struct xm_backend_ops below, whose every
 * member says what it must do, when it is called and who owns what.  A
 * backend is one of two kinds:
 *
 *  - page-level: it provides a *source* (a running guest: dirty logging,
 *    page access, pause/unpause, context capture) and a *destination* (a
 *    paused guest being built: page loading, context loading, start), and
 *    the engine's xm_send / xm_receive (engine.h) run the migration over
 *    them.  uffd (backend-uffd.c), a test guest that xenmem builds and
 *    runs itself: a workload thread on its own RAM region, dirty log from
 *    the kernel's userfaultfd write-protect tracking read with
 *    PAGEMAP_SCAN, the mechanism CRIU uses (works where there is neither
 *    KVM nor Xen); and none (backend-none.c: no memory at all, for a
 *    disk-only migration that needs only the commit handshake).
 *  - whole-migration: the hypervisor's own save and restore move the guest
 *    (memory, vCPU and platform state, rings, the toolstack's view), and
 *    the backend runs them under xenmem's pre-copy policy (xm_policy_round),
 *    transport, hook and commit handshake: its migrate_send and
 *    migrate_receive stand in for xm_send and xm_receive.  xen
 *    (backend-xen.c: libxenguest's xc_domain_save, libxl's restore).
 *
 * Pages are 4096 bytes; a guest's memory is pfns 0 .. npages-1.  Unless a
 * member says otherwise it returns 0 on success or -1 after reporting the
 * error through sxm_error() (common/log.h), naming what failed.  The
 * callers use one guest from one thread at a time (the backend's own
 * threads, such as uffd's vCPU, are its business). */
#ifndef XENMEM_BACKEND_H
#define XENMEM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonline.h"
#include "vbd.h"

#define XM_PAGE_SIZE 4096u
#define XM_PAGE_SHIFT 12

/* The stream header's backend number (doc/xenmem-stream.md).  1 was a kvm
 * backend that never got past refusing; it was removed, and its number is
 * not given to another. */
enum xm_backend_id {
  XM_BACKEND_XEN = 2, XM_BACKEND_UFFD = 3,
  XM_BACKEND_NONE = 4,          /* no memory: the commit handshake only */
};

struct xm_source;
struct xm_dest;
/* engine.h and transport.h, for the whole-migration members. */
struct xm_conn;
struct xm_send_opts;
struct xm_recv_opts;

/* Options for the test guest uffd (ignored by xen and none). */
struct xm_guest_opts {
  uint64_t mem_bytes;           /* guest RAM; multiple of 2 MiB, >= 4 MiB */
  uint64_t dirty_rate;          /* bytes/s of pages the guest dirties; 0 = none */
  uint64_t dirty_bytes;         /* size of the region it dirties (0 = all free RAM) */
  /* uffd only: the guest's disks (borrowed: the caller opened them and
   * closes them after close_source), and how it uses them: RATE records
   * of 4096 bytes a second spread over SLOTS slots per disk
   * (doc/xenmem.pod, "DISK RECORDS"). */
  struct xm_vbd *const *disks;
  unsigned ndisks;              /* 0 .. XM_DISKS_MAX */
  uint64_t disk_rate;           /* records/s */
  uint32_t disk_slots;          /* multiple of 4, >= 4 */
};

struct xm_backend_ops {
  /* What --backend takes and the reports show: "xen", "uffd", "none". */
  const char *name;
  /* The stream header's backend number: a sender writes its own, a
   * receiver refuses a stream that carries another (xm_receive, and every
   * migrate_receive). */
  enum xm_backend_id id;

  /* ---- capabilities ----------------------------------------------------
   * What the command line may ask of the backend: cli.c checks options
   * against these (and against which optional members are set) before
   * anything starts.  The engine does not read them.
   *
   * test_guest: the backend builds and runs its guests itself, in this
   * process, from struct xm_guest_opts (their --disk disks included); a
   * running VM with a monitor (xenmem guest, send --guest, receive
   * --monitor) is one of these.  uffd. */
  bool test_guest;
  /* has_domains: its guests are the hypervisor's domains, which exist
   * without xenmem: send names one (--domid, required), receive creates
   * one from the sender's configuration (no --domid), and a domain's
   * disks are mapped to the destination's devices (--disk-map,
   * --disk-script).  xen. */
  bool has_domains;
  /* can_check_only: migrate_send honours xm_send_opts.check_only (ask the
   * receiver whether it would take the guest, then hang up), and
   * migrate_receive answers such a session with XM_CHECKED.  xen. */
  bool can_check_only;

  /* Optional (NULL: the backend runs wherever xenmem does): whether this
   * host can run the backend at all (xen: a dom0 with xenstored, libxl
   * usable).  0, or -1 with the reason reported.  The command line asks
   * before send connects or receive listens, so that a host that could
   * never finish does not start. */
  int (*available) (void);

  /* ---- whole migration --------------------------------------------------
   * A backend provides either these two members or the page-level ones
   * below (source and destination), never a mix.  Where the command line
   * would build or open a guest and run the engine's xm_send or
   * xm_receive, it calls migrate_send or migrate_receive instead (cli.c
   * xm_cli_send, xenmem.c receive); a whole-migration backend's guests are
   * never opened as xm_source nor created as xm_dest, and the engine never
   * sees its table.
   *
   * migrate_send: move the running guest that ID names (--domid; NULL if
   * none was given: refuse with XM_CANNOT) over C, a connection the caller
   * made (TLS done, timeout set) and closes afterwards.  It keeps xm_send's
   * promises (engine.h, doc/xenmem-stream.md): the stream begins with a
   * header carrying the backend's id; pre-copy stops when xm_policy_round
   * (engine.h) says so; O->paused_hook runs its prepare phase before the
   * pause and its paused phase after it, waited for before END; the commit
   * handshake decides who owns the guest: before the commit every failure
   * leaves (or makes) the source guest run, after it the source is never
   * resumed.  O->rate, O->quiet, O->disk_map and (can_check_only)
   * O->check_only apply; O->verify_memory may be ignored.  Appends its
   * report to REPORT as ",\"key\":value" pairs, with "result", "rounds"
   * and "stop_reason" meaning what xm_send's do (stop_reason: one of
   * xm_policy_round's reasons or "none"; a check-only send says so there),
   * and returns an enum xm_exit as xm_send does: XM_OK the guest runs on
   * the destination and the source is gone (xen: the domain destroyed, or
   * a message says it must be) -- with O->check_only, the receiver would
   * take it and nothing moved; XM_FAILED the source runs on; XM_IN_DOUBT
   * committed without word from the destination, the source stays
   * paused; XM_CANNOT nothing started. */
  int (*migrate_send) (const char *id, struct xm_conn *c,
                       const struct xm_send_opts *o, struct jbuf *report);
  /* migrate_receive: the destination's half over C, an accepted connection
   * the caller closes afterwards: check the stream's header (its backend
   * id must be ours) and everything that follows before acting on it,
   * build the guest paused, answer "loaded", start it only on the
   * sender's commit and then answer "running"; on any failure before the
   * commit, destroy what was built and tell the sender why in an ACK (best
   * effort: the connection may be gone).  O->quiet, O->check_seconds (a
   * check that the started guest still runs), O->test_no_running,
   * O->disk_map and O->disk_script apply; O->disks, O->ndisks and O->keep
   * do not (the command line refuses --disk and --monitor for a backend
   * without set_disks and adopt_dest, so they are empty).  Appends its
   * report as
   * xm_receive does ("result": "running", "started, check failed" or
   * "discarded") and returns an enum xm_exit, or XM_CHECKED
   * (can_check_only): the sender only asked and was told "ready"; the
   * caller then accepts the next connection and calls again with a fresh
   * REPORT. */
  int (*migrate_receive) (struct xm_conn *c, const struct xm_recv_opts *o,
                          struct jbuf *report);

  /* ---- source (page-level) ---------------------------------------------
   * The engine's xm_send uses a source it is given, in this order: npages,
   * log_enable, then rounds of read_pages and log_fetch, pause, log_fetch
   * and read_pages of the last pages, get_context (and read_pages for the
   * memory digest); on a failure before the commit, unpause (if it paused)
   * and log_disable.  Once xm_send returns the source is its opener's
   * again: described, checked, resumed, sent again (a VM monitor) or
   * closed.
   *
   * open_source: attach to the running guest ID names, or create and start
   * one (test guests: ID ignored, the guest built from *G, whose disks stay
   * borrowed).  *OUT belongs to the backend until close_source.  Called by
   * the command line (xenmem send, xenmem guest), never by the engine. */
  int (*open_source) (const char *id, const struct xm_guest_opts *g,
                      struct xm_source **out);
  /* The guest's RAM in pages (its pfns are 0 .. npages-1), fixed for the
   * source's life; at least 1.  Cannot fail. */
  uint64_t (*npages) (struct xm_source *s);
  /* Start dirty logging.  From then on log_fetch returns the pages written
   * since the previous fetch (the first fetch: since log_enable).  Called
   * at the start of every send of S; a source sent again, after a failed
   * or in-doubt send, gets log_enable again, with or without log_disable
   * in between: the log starts afresh. */
  int (*log_enable) (struct xm_source *s);
  /* Fetch and clear the dirty log into BITMAP (npages bits, bit i of byte
   * i/8 is pfn i, LSB first, i.e. bit (i % 8)), overwriting all of it:
   * clean pages' bits are cleared.  *COUNT = bits set.  Only while logging
   * is on; running or paused (the last fetch is taken paused). */
  int (*log_fetch) (struct xm_source *s, uint8_t *bitmap, uint64_t *count);
  /* Stop dirty logging (a send failed and the guest runs on as before);
   * a no-op if logging is off.  The engine ignores its result. */
  int (*log_disable) (struct xm_source *s);
  /* Copy N pages PFNS[0..n) (1 <= n <= XM_BATCH_MAX, each pfn < npages)
   * into BUF (n * 4096 bytes, the caller's).  The guest may be running: a
   * page changed meanwhile is dirty in the next fetch. */
  int (*read_pages) (struct xm_source *s, const uint64_t *pfns, unsigned n,
                     void *buf);
  /* Stop the guest at a consistent point (what its RAM and get_context
   * hold is the whole guest), waiting a bounded time; -1 leaves it
   * running.  Called once per send, after the round barrier. */
  int (*pause) (struct xm_source *s);
  /* Let a paused guest run again: after a failed send that paused it
   * (before the commit), or on request (the monitor's "cont" after an
   * in-doubt send).  A guest that runs already is not an error.  -1: it
   * could not be resumed (the engine ignores it; the monitor reports
   * it). */
  int (*unpause) (struct xm_source *s);
  /* The paused guest's vCPU and platform state as an opaque,
   * backend-versioned blob: *BLOB malloc'd, the caller frees it (*BLOB
   * NULL with *LEN 0: an empty context).  Only while paused.  The engine
   * refuses a blob over XM_CONTEXT_MAX (stream.h). */
  int (*get_context) (struct xm_source *s, void **blob, size_t *len);
  /* Optional (NULL: nothing to say): a summary of the guest for --json and
   * the monitor's status (uffd: counter, checksum state), appended to BUF
   * (a jbuf, common/jsonline.h) as ",\"key\":value" pairs.  Any time
   * between open_source and close_source; cannot fail. */
  void (*describe_source) (struct xm_source *s, struct jbuf *buf);
  /* Optional (NULL: the backend cannot slow its guests down, and xm_send
   * runs with auto-converge off): from now on let the guest's vCPUs run
   * only (100 - PCT) % of the time, PCT 0 .. 99 (0: full speed).  Called
   * by xm_send while the guest runs, as its policy raises the throttle,
   * and with 0 before xm_send returns, whatever the outcome.  The
   * throttle is the host's, not the guest's: get_context does not carry
   * it, and a destination guest always starts at full speed.  uffd: the
   * vCPU thread sleeps that share of every 10 ms. */
  int (*set_throttle) (struct xm_source *s, unsigned pct);
  /* Optional (NULL: not known): a count that grows as the guest gets
   * work done (uffd: its loop counter), for the report's progress rates
   * (how much a throttle slowed the guest).  Any time; cannot fail. */
  uint64_t (*guest_progress) (struct xm_source *s);
  /* Release S, once, last, by whoever opened it.  MIGRATED: xm_send
   * returned XM_OK; the guest runs on the destination and S is a paused
   * copy to be discarded.  !MIGRATED: the guest ends here (a failed or
   * in-doubt send, the monitor's quit).  A test guest lives in this
   * process and is destroyed either way. */
  void (*close_source) (struct xm_source *s, bool migrated);

  /* ---- destination (page-level) -----------------------------------------
   * The engine's xm_receive calls, as the stream brings them: create_dest,
   * set_disks (if the receiver was given disks), write_pages, set_context,
   * read_dest (for the END record's memory digest), start (on the sender's
   * commit), check_dest (--check), describe_dest, and last close_dest --
   * or, asked to keep a started guest (xm_recv_opts.keep), hands it to its
   * caller, who closes it or adopts it (adopt_dest).
   *
   * create_dest: a new guest with NPAGES pages of RAM (the stream header's
   * count: refuse one over the backend's limits, with a message), paused,
   * every page zero.  ID: the receiver's --domid, or NULL (the page-level
   * backends have no use for it).  *OUT belongs to the backend until
   * close_dest. */
  int (*create_dest) (const char *id, uint64_t npages,
                      struct xm_dest **out);
  /* Write N pages PFNS[0..n) (1 <= n <= XM_BATCH_MAX, each < npages: the
   * decoder checked) from BUF, n * 4096 bytes (NULL: all N pages are
   * zero).  A pfn may come many times; the last write wins.  Only before
   * start. */
  int (*write_pages) (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                      const void *buf);
  /* Check the blob get_context made on the source (every length and
   * field; a bad blob is refused with a message, not loaded) and load it.
   * Called once, after the final round's pages (so it may check the blob
   * against them), before start; BLOB is the caller's. */
  int (*set_context) (struct xm_dest *d, const void *blob, size_t len);
  /* Read back N loaded pages, as read_pages does on the source (the END
   * record's memory digest).  Before start. */
  int (*read_dest) (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                    void *buf);
  /* Let the loaded guest run: once, on the sender's commit, after
   * set_context.  -1: it did not start; the receiver says so and the
   * sender, committed, is left in doubt. */
  int (*start) (struct xm_dest *d);
  /* Optional (NULL: nothing to say): as describe_source, for the
   * receiver's report, whatever the outcome (started or not). */
  void (*describe_dest) (struct xm_dest *d, struct jbuf *buf);
  /* Optional (NULL if the backend cannot): let the guest run for SECONDS,
   * then check it is alive and consistent (uffd: its counter went on from
   * where it was and its memory checksum verifies).  Adds its findings to
   * BUF as ",\"key\":value" pairs; -1 if the check failed.  check_source:
   * a running source (send --check after a failed send, the monitor's
   * "check"); check_dest: a started destination (receive --check). */
  int (*check_source) (struct xm_source *s, double seconds, struct jbuf *buf);
  int (*check_dest) (struct xm_dest *d, double seconds, struct jbuf *buf);
  /* Release D, once, last.  KEEP (the guest was started, i.e. the sender
   * committed): the guest must not be lost by our hand; test guests live
   * in this process and end with it, a backend whose guests outlive it
   * would leave them running.  !KEEP: destroy the half-built guest. */
  void (*close_dest) (struct xm_dest *d, bool keep);

  /* ---- optional: the test guest's disks and a second life -------------
   * set_disks (NULL: the backend's guests have no disks, and receive
   * refuses --disk): give the destination D, right after create_dest, the
   * N disks it runs on (the receiver "reattaches the VBDs"; borrowed, as
   * in xm_guest_opts).  set_context then refuses a guest whose disks do
   * not match them in number or size. */
  int (*set_disks) (struct xm_dest *d, struct xm_vbd *const *disks,
                    unsigned n);
  /* adopt_dest (NULL: cannot, and receive refuses --monitor): turn the
   * started destination D into a source that can be migrated out again
   * (xenmem receive --monitor).  The guest runs on throughout, from the
   * guest's point of view; on success D is consumed and *OUT is a running
   * source, on failure D is left as it was (still running, if it could be
   * kept so). */
  int (*adopt_dest) (struct xm_dest *d, struct xm_source **out);
};

const struct xm_backend_ops *xm_backend_find (const char *name);
extern const struct xm_backend_ops xm_backend_xen;
extern const struct xm_backend_ops xm_backend_uffd;
extern const struct xm_backend_ops xm_backend_none;

#endif
