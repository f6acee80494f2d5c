/* xenmem backends: where guest memory comes from and goes to.
 *
 * Like nbdcopy's endpoint ops: the pre-copy engine (engine.c) never knows
 * which hypervisor it talks to.  A backend provides a *source* (a running
 * guest: dirty logging, page access, pause/unpause, context capture) and a
 * *destination* (a paused guest being built: page loading, context
 * loading, start).  Backends: xen (backend-xen.c, libxenctrl), and two
 * test guests that xenmem builds and runs itself: kvm (backend-kvm.c, a
 * long-mode vCPU under /dev/kvm, dirty log from KVM_GET_DIRTY_LOG) and
 * uffd (backend-uffd.c, a workload thread on its own RAM region, dirty log
 * from the kernel's userfaultfd write-protect tracking read with
 * PAGEMAP_SCAN, the mechanism CRIU uses: works where there is neither
 * KVM nor Xen); and none (backend-none.c: no memory at all, for a
 * disk-only migration that needs only the commit handshake).
 *
 * Pages are 4096 bytes; a guest's memory is pfns 0 .. npages-1.  Every
 * function returns 0 on success or -1 after reporting the error through
 * sxm_error() (common/log.h), naming what failed. */
#ifndef XENMEM_BACKEND_H
#define XENMEM_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "jsonline.h"
#include "vbd.h"

#define XM_PAGE_SIZE 4096u
#define XM_PAGE_SHIFT 12

enum xm_backend_id {
  XM_BACKEND_KVM = 1, XM_BACKEND_XEN = 2, XM_BACKEND_UFFD = 3,
  XM_BACKEND_NONE = 4,          /* no memory: the commit handshake only */
};

struct xm_source;
struct xm_dest;

/* Options for the test guests kvm and uffd (ignored by xen). */
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
  const char *name;             /* "kvm", "xen", "uffd" */
  enum xm_backend_id id;

  /* ---- source -------------------------------------------------------
   * open_source: attach to (xen: domid ID) or create and start (test
   * guests: ID ignored, guest built from *G) the running guest. */
  int (*open_source) (const char *id, const struct xm_guest_opts *g,
                      struct xm_source **out);
  uint64_t (*npages) (struct xm_source *s);
  /* Start dirty logging.  From then on log_fetch returns the pages written
   * since the previous fetch (the first fetch: since log_enable). */
  int (*log_enable) (struct xm_source *s);
  /* Fetch and clear the dirty log into BITMAP (npages bits, bit i of byte
   * i/8 is pfn i, LSB first, i.e. bit (i % 8)), overwriting all of it:
   * clean pages' bits are cleared.  *COUNT = bits set. */
  int (*log_fetch) (struct xm_source *s, uint8_t *bitmap, uint64_t *count);
  int (*log_disable) (struct xm_source *s);
  /* Copy N pages PFNS[0..n) into BUF (n * 4096 bytes).  The guest may be
   * running: a page changed meanwhile is dirty in the next fetch. */
  int (*read_pages) (struct xm_source *s, const uint64_t *pfns, unsigned n,
                     void *buf);
  int (*pause) (struct xm_source *s);
  int (*unpause) (struct xm_source *s);
  /* The paused guest's vCPU and platform state as an opaque,
   * backend-versioned blob (malloc'd; caller frees). */
  int (*get_context) (struct xm_source *s, void **blob, size_t *len);
  /* Human summary of the guest for --json (e.g. kvm: counter, checksum
   * state); may be NULL.  Appends to BUF (a jbuf from common/jsonline.h)
   * as ",\"key\":value" pairs. */
  void (*describe_source) (struct xm_source *s, struct jbuf *buf);
  /* After a successful migration: destroy the source guest (xen: leave the
   * paused domain for the toolstack to destroy). */
  void (*close_source) (struct xm_source *s, bool migrated);

  /* ---- destination ---------------------------------------------------
   * create_dest: a new guest with NPAGES pages of RAM, paused, all zero
   * (xen: ID names a domain the toolstack created paused). */
  int (*create_dest) (const char *id, uint64_t npages,
                      struct xm_dest **out);
  /* Write N pages (BUF may be NULL: all N pages are zero). */
  int (*write_pages) (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                      const void *buf);
  /* Check the blob (every length and field; a bad blob is refused with a
   * message, not loaded) and load it. */
  int (*set_context) (struct xm_dest *d, const void *blob, size_t len);
  /* Read back N loaded pages (for the end-to-end memory digest). */
  int (*read_dest) (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                    void *buf);
  int (*start) (struct xm_dest *d);
  void (*describe_dest) (struct xm_dest *d, struct jbuf *buf);
  /* Optional (NULL if the backend cannot): let the guest run for SECONDS,
   * then check it is alive and consistent (kvm: its counter went on from
   * where it was and its memory checksum verifies).  Adds its findings to
   * BUF as ",\"key\":value" pairs; -1 if the check failed. */
  int (*check_source) (struct xm_source *s, double seconds, struct jbuf *buf);
  int (*check_dest) (struct xm_dest *d, double seconds, struct jbuf *buf);
  /* Release the destination.  KEEP (the guest was started, i.e. the
   * sender committed): a xen domain runs on; test guests live in this
   * process and end with it.  !KEEP: destroy the half-built guest. */
  void (*close_dest) (struct xm_dest *d, bool keep);

  /* ---- optional: the test guest's disks and a second life -------------
   * set_disks (NULL: the backend's guests have no disks, and receive
   * refuses --disk): give the destination D, right after create_dest, the
   * N disks it runs on (the receiver "reattaches the VBDs"; borrowed, as
   * in xm_guest_opts).  set_context then refuses a guest whose disks do
   * not match them in number or size. */
  int (*set_disks) (struct xm_dest *d, struct xm_vbd *const *disks,
                    unsigned n);
  /* adopt_dest (NULL: cannot): turn the started destination D into a
   * source that can be migrated out again (xenmem receive --monitor).
   * The guest runs on throughout, from the guest's point of view; on
   * success D is consumed and *OUT is a running source, on failure D is
   * left as it was (still running, if it could be kept so). */
  int (*adopt_dest) (struct xm_dest *d, struct xm_source **out);
};

const struct xm_backend_ops *xm_backend_find (const char *name);
extern const struct xm_backend_ops xm_backend_kvm;
extern const struct xm_backend_ops xm_backend_xen;
extern const struct xm_backend_ops xm_backend_uffd;
extern const struct xm_backend_ops xm_backend_none;

#endif
