/* xenmem's xen backend: libxenctrl + libxenforeignmemory.
 *
 * Source: log-dirty through xc_logdirty_control (ENABLE_LOGDIRTY, then CLEAN
 * each round, which returns and clears the bitmap), guest frames mapped in
 * batches with xenforeignmemory_map, pause/unpause, HVM/PVH context from
 * xc_domain_hvm_getcontext.  Destination: a paused domain the toolstack
 * created (--domid): frames populated as they first arrive
 * (xc_domain_populate_physmap_exact), written through foreign mappings,
 * context loaded with xc_domain_hvm_setcontext, then unpaused.
 *
 * Scope, said plainly: memory and the HVM context record are moved; the
 * xenstore/console rings, event channels and HVM params a restored domain
 * also needs are not (doc/design.md "xenmem", issue 9's rig decides how).
 * PV guests would need page-table canonicalisation and are refused.  This
 * backend has not yet run against a hypervisor: on a machine without Xen
 * it says so and stops. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xenctrl.h>
#include <xenforeignmemory.h>

#include "backend.h"
#include "log.h"

#define XEN_CTX_MAGIC "XMXENCT1"

struct xen_common {
  xc_interface *xch;
  xenforeignmemory_handle *fmem;
  uint32_t domid;
  uint64_t npages;
};

struct xm_source {
  struct xen_common x;
  xc_hypercall_buffer_t hb;     /* the dirty bitmap Xen writes */
  void *bitmap;
  bool logging;
};

struct xm_dest {
  struct xen_common x;
  uint8_t *populated;           /* one bit per pfn */
};

static int
xen_attach (const char *id, struct xen_common *x, bool want_paused)
{
  char *end;
  unsigned long d;
  xc_dominfo_t info;
  xen_pfn_t maxpfn;

  errno = 0;
  d = strtoul (id ? id : "", &end, 10);
  if (!id || !*id || *end || errno || d >= 0x7ff0) {
    sxm_error ("xen: '%s' is not a domain id", id ? id : "");
    return -1;
  }
  x->domid = d;
  x->xch = xc_interface_open (NULL, NULL, 0);
  if (!x->xch) {
    sxm_error ("xen: no Xen hypervisor here (cannot open the privcmd "
               "interface: %m); the xen backend needs a Xen dom0");
    return -1;
  }
  if (xc_domain_getinfo (x->xch, x->domid, 1, &info) != 1 ||
      info.domid != x->domid) {
    sxm_error ("xen: domain %u does not exist", x->domid);
    goto fail;
  }
  if (!info.hvm) {
    sxm_error ("xen: domain %u is a PV guest; xenmem does not canonicalise "
               "PV page tables, so PV guests are not supported (use PVH or "
               "HVM)", x->domid);
    goto fail;
  }
  if (want_paused && !info.paused) {
    sxm_error ("xen: destination domain %u must be created paused",
               x->domid);
    goto fail;
  }
  if (xc_domain_maximum_gpfn (x->xch, x->domid, &maxpfn) < 0) {
    sxm_error ("xen: domain %u: cannot read its maximum gpfn: %m", x->domid);
    goto fail;
  }
  x->npages = (uint64_t) maxpfn + 1;
  x->fmem = xenforeignmemory_open (NULL, 0);
  if (!x->fmem) {
    sxm_error ("xen: cannot open foreign memory mapping: %m");
    goto fail;
  }
  return 0;
 fail:
  xc_interface_close (x->xch);
  x->xch = NULL;
  return -1;
}

static void
xen_detach (struct xen_common *x)
{
  if (x->fmem)
    xenforeignmemory_close (x->fmem);
  if (x->xch)
    xc_interface_close (x->xch);
}

/* Map N frames, copy between them and BUF (to BUF if !write). */
static int
xen_copy (struct xen_common *x, const uint64_t *pfns, unsigned n, void *buf,
          bool write)
{
  xen_pfn_t arr[1024];
  int errs[1024];
  uint8_t *map;

  if (n > 1024) {
    sxm_error ("xen: batch of %u pages over 1024", n);
    return -1;
  }
  for (unsigned i = 0; i < n; i++)
    arr[i] = pfns[i];
  map = xenforeignmemory_map (x->fmem, x->domid,
                              write ? PROT_READ | PROT_WRITE : PROT_READ, n,
                              arr, errs);
  if (!map) {
    sxm_error ("xen: domain %u: cannot map %u frames from pfn %" PRIu64
               ": %m", x->domid, n, pfns[0]);
    return -1;
  }
  for (unsigned i = 0; i < n; i++) {
    uint8_t *p = (uint8_t *) buf + (size_t) i * XM_PAGE_SIZE;
    if (errs[i]) {
      if (write) {
        sxm_error ("xen: domain %u: pfn %" PRIu64 " cannot be mapped for "
                   "writing: %s", x->domid, pfns[i], strerror (-errs[i]));
        xenforeignmemory_unmap (x->fmem, map, n);
        return -1;
      }
      /* A hole in the physmap (never populated): reads as zeros and goes
       * as a zero marker. */
      memset (p, 0, XM_PAGE_SIZE);
      continue;
    }
    if (write)
      memcpy (map + (size_t) i * XM_PAGE_SIZE, p, XM_PAGE_SIZE);
    else
      memcpy (p, map + (size_t) i * XM_PAGE_SIZE, XM_PAGE_SIZE);
  }
  xenforeignmemory_unmap (x->fmem, map, n);
  return 0;
}

/* ---- source ---------------------------------------------------------- */

static int
xen_open_source (const char *id, const struct xm_guest_opts *g,
                 struct xm_source **out)
{
  struct xm_source *s = calloc (1, sizeof *s);

  if (!s) {
    sxm_error ("out of memory");
    return -1;
  }
  if (xen_attach (id, &s->x, false) == -1) {
    free (s);
    return -1;
  }
  s->hb = (xc_hypercall_buffer_t) { .hbuf = NULL, .param_shadow = NULL,
                                    HYPERCALL_BUFFER_INIT_NO_BOUNCE };
  s->bitmap = xc__hypercall_buffer_alloc (s->x.xch, &s->hb,
                                          (s->x.npages + 63) / 64 * 8);
  if (!s->bitmap) {
    sxm_error ("xen: cannot allocate the dirty bitmap");
    xen_detach (&s->x);
    free (s);
    return -1;
  }
  *out = s;
  return 0;
}

static uint64_t
xen_npages (struct xm_source *s)
{
  return s->x.npages;
}

static int
xen_log_enable (struct xm_source *s)
{
  if (xc_shadow_control (s->x.xch, s->x.domid,
                         XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY, NULL, 0) < 0) {
    sxm_error ("xen: domain %u: cannot enable log-dirty mode: %m",
               s->x.domid);
    return -1;
  }
  s->logging = true;
  return 0;
}

static int
xen_log_fetch (struct xm_source *s, uint8_t *bitmap, uint64_t *count)
{
  xc_shadow_op_stats_t st;
  uint64_t n = 0;

  if (xc_logdirty_control (s->x.xch, s->x.domid, XEN_DOMCTL_SHADOW_OP_CLEAN,
                           &s->hb, s->x.npages, 0, &st) < 0) {
    sxm_error ("xen: domain %u: cannot read the dirty log: %m", s->x.domid);
    return -1;
  }
  /* Xen's bitmap is unsigned longs, LSB first: on x86 (little-endian) that
   * is byte i / 8, bit i % 8, our layout. */
  memcpy (bitmap, s->bitmap, (s->x.npages + 7) / 8);
  for (uint64_t i = 0; i < (s->x.npages + 7) / 8; i++)
    n += __builtin_popcount (bitmap[i]);
  *count = n;
  return 0;
}

static int
xen_log_disable (struct xm_source *s)
{
  if (s->logging &&
      xc_shadow_control (s->x.xch, s->x.domid, XEN_DOMCTL_SHADOW_OP_OFF,
                         NULL, 0) < 0) {
    sxm_error ("xen: domain %u: cannot leave log-dirty mode: %m", s->x.domid);
    return -1;
  }
  s->logging = false;
  return 0;
}

static int
xen_read_pages (struct xm_source *s, const uint64_t *pfns, unsigned n,
                void *buf)
{
  return xen_copy (&s->x, pfns, n, buf, false);
}

static int
xen_pause (struct xm_source *s)
{
  if (xc_domain_pause (s->x.xch, s->x.domid) < 0) {
    sxm_error ("xen: cannot pause domain %u: %m", s->x.domid);
    return -1;
  }
  return 0;
}

static int
xen_unpause (struct xm_source *s)
{
  if (xc_domain_unpause (s->x.xch, s->x.domid) < 0) {
    sxm_error ("xen: cannot unpause domain %u: %m", s->x.domid);
    return -1;
  }
  return 0;
}

/* Blob: magic[8], u32 version = 1, u32 length of the HVM context, then the
 * context as Xen saves it (its own typed, length-prefixed records). */
static int
xen_get_context (struct xm_source *s, void **blob, size_t *len)
{
  int sz = xc_domain_hvm_getcontext (s->x.xch, s->x.domid, NULL, 0);
  uint8_t *b;
  uint32_t v = 1, l;

  if (sz <= 0) {
    sxm_error ("xen: domain %u: cannot size its HVM context: %m", s->x.domid);
    return -1;
  }
  b = malloc (16 + (size_t) sz);
  if (!b) {
    sxm_error ("out of memory");
    return -1;
  }
  sz = xc_domain_hvm_getcontext (s->x.xch, s->x.domid, b + 16, sz);
  if (sz <= 0) {
    sxm_error ("xen: domain %u: cannot read its HVM context: %m", s->x.domid);
    free (b);
    return -1;
  }
  l = sz;
  memcpy (b, XEN_CTX_MAGIC, 8);
  memcpy (b + 8, &v, 4);
  memcpy (b + 12, &l, 4);
  *blob = b;
  *len = 16 + (size_t) sz;
  return 0;
}

static void
xen_close_source (struct xm_source *s, bool migrated)
{
  /* Migrated: the domain stays paused for the toolstack to destroy. */
  xen_log_disable (s);
  if (s->bitmap)
    xc__hypercall_buffer_free (s->x.xch, &s->hb);
  xen_detach (&s->x);
  free (s);
}

/* ---- destination ----------------------------------------------------- */

static int
xen_create_dest (const char *id, uint64_t npages, struct xm_dest **out)
{
  struct xm_dest *d = calloc (1, sizeof *d);

  if (!d) {
    sxm_error ("out of memory");
    return -1;
  }
  if (xen_attach (id, &d->x, true) == -1) {
    free (d);
    return -1;
  }
  /* The toolstack sized the domain; the stream's pfn bounds are checked
   * against the sender's npages, which must fit in it. */
  d->x.npages = npages;
  d->populated = calloc ((npages + 7) / 8, 1);
  if (!d->populated) {
    sxm_error ("out of memory");
    xen_detach (&d->x);
    free (d);
    return -1;
  }
  *out = d;
  return 0;
}

static int
xen_write_pages (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                 const void *buf)
{
  xen_pfn_t need[1024];
  unsigned nn = 0;
  static uint8_t zeros[1024 * XM_PAGE_SIZE];

  if (n > 1024) {
    sxm_error ("xen: batch of %u pages over 1024", n);
    return -1;
  }
  for (unsigned i = 0; i < n; i++)
    if (!(d->populated[pfns[i] / 8] >> (pfns[i] % 8) & 1))
      need[nn++] = pfns[i];
  if (nn && xc_domain_populate_physmap_exact (d->x.xch, d->x.domid, nn, 0, 0,
                                              need) < 0) {
    sxm_error ("xen: domain %u: cannot populate %u frames: %m", d->x.domid,
               nn);
    return -1;
  }
  for (unsigned i = 0; i < nn; i++)
    d->populated[need[i] / 8] |= 1 << (need[i] % 8);
  return xen_copy (&d->x, pfns, n, buf ? (void *) buf : zeros, true);
}

static int
xen_read_dest (struct xm_dest *d, const uint64_t *pfns, unsigned n, void *buf)
{
  return xen_copy (&d->x, pfns, n, buf, false);
}

static int
xen_set_context (struct xm_dest *d, const void *blob, size_t len)
{
  const uint8_t *b = blob;
  uint32_t v, l;

  if (len < 16 || memcmp (b, XEN_CTX_MAGIC, 8) != 0) {
    sxm_error ("xen: context: not a xen context blob (magic)");
    return -1;
  }
  memcpy (&v, b + 8, 4);
  memcpy (&l, b + 12, 4);
  if (v != 1) {
    sxm_error ("xen: context: version %" PRIu32 ", expected 1", v);
    return -1;
  }
  if (l != len - 16) {
    sxm_error ("xen: context: length field %" PRIu32 " but %zu bytes follow",
               l, len - 16);
    return -1;
  }
  if (xc_domain_hvm_setcontext (d->x.xch, d->x.domid, (uint8_t *) b + 16,
                                l) < 0) {
    sxm_error ("xen: domain %u: Xen refused the HVM context: %m",
               d->x.domid);
    return -1;
  }
  return 0;
}

static int
xen_start (struct xm_dest *d)
{
  if (xc_domain_unpause (d->x.xch, d->x.domid) < 0) {
    sxm_error ("xen: cannot unpause domain %u: %m", d->x.domid);
    return -1;
  }
  return 0;
}

static void
xen_close_dest (struct xm_dest *d, bool keep)
{
  if (!keep && xc_domain_destroy (d->x.xch, d->x.domid) < 0)
    sxm_error ("xen: cannot destroy the half-built domain %u: %m",
               d->x.domid);
  xen_detach (&d->x);
  free (d->populated);
  free (d);
}

const struct xm_backend_ops xm_backend_xen = {
  .name = "xen",
  .id = XM_BACKEND_XEN,
  .open_source = xen_open_source,
  .npages = xen_npages,
  .log_enable = xen_log_enable,
  .log_fetch = xen_log_fetch,
  .log_disable = xen_log_disable,
  .read_pages = xen_read_pages,
  .pause = xen_pause,
  .unpause = xen_unpause,
  .get_context = xen_get_context,
  .close_source = xen_close_source,
  .create_dest = xen_create_dest,
  .write_pages = xen_write_pages,
  .read_dest = xen_read_dest,
  .set_context = xen_set_context,
  .start = xen_start,
  .close_dest = xen_close_dest,
};
