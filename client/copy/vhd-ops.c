/* VHD endpoints: a .vhd file (fixed, dynamic, or a differencing chain) as
 * the virtual disk it holds, through common/'s VHD layer, no nbdkit needed.
 *
 * As a source it is read like nbdkit's vhd plugin serves it: sectors
 * resolve through the chain, the allocation map is the union of the
 * chain's blocks and sector bitmaps.  As a destination its top image is
 * written through the crash-safe writer (common/vhd-write.c): data goes to
 * the file at once, the metadata that makes it visible (BAT entries,
 * sector bitmaps, footer) at each flush; the copy loop flushes at every
 * checkpoint, and vhd_close flushes once more whatever --no-flush says,
 * because a dynamic VHD's data is unreachable until its BAT is written.
 *
 * The chain is opened once per endpoint and shared by every worker: the
 * reader is safe to call from several threads, the writer takes its own
 * locks (the plugin serves the same code to parallel connections).  I/O is
 * synchronous, like file-ops.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "copy.h"
#include "vhd.h"

struct vhd_endpoint {
  struct endpoint ep;
  struct vhd_layer *vhd;        /* the opened chain, shared by all workers */
  struct vhd_wb {               /* page-cache hygiene of a destination */
    pthread_mutex_t lock;
    uint64_t started, dropped;  /* file offsets reached */
  } wb;
};

static inline struct vhd_endpoint *
to_vhd (struct endpoint *ep)
{
  return container_of (ep, struct vhd_endpoint, ep);
}

/* vhd_map's runs (allocated or not) as extent_fn's (data or zero). */
struct map_relay {
  extent_fn fn;
  void *opaque;
  int r;
};

static int
relay_run (void *opaque, uint64_t off, uint64_t len, bool allocated)
{
  struct map_relay *m = opaque;

  m->r = m->fn (m->opaque, off, len, !allocated);
  return m->r;
}

static int
vhd_extents (struct conn *c, uint64_t off, uint64_t len,
             extent_fn fn, void *opaque)
{
  struct map_relay m = { .fn = fn, .opaque = opaque };

  if (vhd_map (to_vhd (c->ep)->vhd, off, len, false, relay_run, &m) == -1)
    return -1;
  return m.r;
}

static int
vhd_pread (struct conn *c, struct req *r)
{
  req_complete (r, vhd_read (to_vhd (c->ep)->vhd, r->data, r->len, r->off) == -1
                   ? errno : 0);
  return 0;
}

/* Page-cache hygiene, as file-ops.c's writeback() does for raw files: a
 * copy must not fill the host's cache with a disk nobody reads back, and
 * recycling a few megabytes is much faster than dirtying gigabytes of
 * fresh pages (bench/copy-vhd.sh, 4 GiB in alternating 2 MiB blocks into
 * a new VHD: 5.4-6.9 s without this, 3.0-3.4 s with it).  A new image grows at its end:
 * writeback of what was appended starts every WB_STEP bytes, and what
 * lies more than WB_KEEP behind the end (blocks long since filled) is
 * waited for and dropped.  Never needed for correctness: vhd_flush syncs
 * the data before it writes any metadata.  Any worker may do it; one at a
 * time, the others skip. */
#define WB_STEP (8ull << 20)
#define WB_KEEP (64ull << 20)

static void
vhd_writeback (struct vhd_endpoint *v)
{
  struct vhd_wb *wb = &v->wb;
  uint64_t end = __atomic_load_n (&v->vhd->data_end, __ATOMIC_RELAXED);
  int fd = v->vhd->fd;

  if (end < wb->started + WB_STEP || pthread_mutex_trylock (&wb->lock) != 0)
    return;
  if (end >= wb->started + WB_STEP) {
    sync_file_range (fd, wb->started, end - wb->started,
                     SYNC_FILE_RANGE_WRITE);
    wb->started = end;
    if (end > wb->dropped + WB_KEEP + WB_STEP) {
      uint64_t to = end - WB_KEEP;
      sync_file_range (fd, wb->dropped, to - wb->dropped,
                       SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                       SYNC_FILE_RANGE_WAIT_AFTER);
      posix_fadvise (fd, wb->dropped, to - wb->dropped, POSIX_FADV_DONTNEED);
      wb->dropped = to;
    }
  }
  pthread_mutex_unlock (&wb->lock);
}

static int
vhd_pwrite (struct conn *c, struct req *r)
{
  struct vhd_endpoint *v = to_vhd (c->ep);
  int err = vhd_write (v->vhd, r->data, r->len, r->off) == -1 ? errno : 0;

  if (err == 0)
    vhd_writeback (v);
  req_complete (r, err);
  return 0;
}

/* vhd_zero writes nothing where the chain already reads zeros
 * (unallocated in every layer), zeros as data elsewhere; so a fast zero
 * fails with ENOTSUP, before writing anything, exactly where NBD's would
 * be slow. */
static int
vhd_zero_req (struct conn *c, struct req *r)
{
  req_complete (r, vhd_zero (to_vhd (c->ep)->vhd, r->len, r->off,
                             r->fast_zero) == -1
                   ? errno : 0);
  return 0;
}

static int
vhd_flush_req (struct conn *c, struct req *r)
{
  req_complete (r, vhd_flush (to_vhd (c->ep)->vhd) == -1 ? errno : 0);
  return 0;
}

static int
vhd_close (struct endpoint *ep)
{
  struct vhd_endpoint *v = to_vhd (ep);
  int r = 0;

  if (!v->vhd)
    return 0;
  if (v->vhd->writable && vhd_flush (v->vhd) == -1) {
    fprintf (stderr, "sxm-copy: %s: writing the VHD's metadata: %m\n",
             ep->name);
    r = -1;
  }
  vhd_close_chain (v->vhd);
  v->vhd = NULL;
  pthread_mutex_destroy (&v->wb.lock);
  return r;
}

static const struct endpoint_ops vhd_ops = {
  .kind = "vhd",
  .conn_size = sizeof (struct conn),
  .extents = vhd_extents,
  .pread = vhd_pread,
  .pwrite = vhd_pwrite,
  .zero = vhd_zero_req,
  .flush = vhd_flush_req,
  .close = vhd_close,
};

/* A new VHD destination: dynamic unless --create=fixed, 2 MiB blocks (what
 * XenServer and Hyper-V use), exactly the source's size rounded up to
 * whole sectors (a VHD holds nothing else; the extra bytes read zeros and
 * are said). */
static int
vhd_create_dest (const char *name, enum vhd_create_kind kind,
                 uint64_t want_size)
{
  uint64_t size = (want_size + 511) / 512 * 512;
  uint8_t uuid[16];

  if (getrandom (uuid, sizeof uuid, 0) != sizeof uuid) {
    fprintf (stderr, "sxm-copy: %s: getrandom: %m\n", name);
    return -1;
  }
  uuid[6] = (uuid[6] & 0x0f) | 0x40;    /* RFC 4122 version 4 */
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
  if (size != want_size)
    fprintf (stderr, "sxm-copy: %s: a VHD holds whole 512-byte sectors: "
             "created with %" PRIu64 " bytes for the source's %" PRIu64
             " (the last %" PRIu64 " read zeros)\n", name, size,
             want_size, size - want_size);
  return vhd_create (name, kind == CREATE_FIXED ? VHD_TYPE_FIXED
                                                : VHD_TYPE_DYNAMIC,
                     size, 2 << 20, uuid);
}

struct endpoint *
endpoint_open_vhd (const struct endpoint *proto, enum vhd_create_kind create,
                   uint64_t want_size, bool exists, struct conn **first)
{
  struct endpoint *ep;
  struct vhd_endpoint *v;
  struct stat st;

  if (exists && stat (proto->name, &st) == 0 && S_ISBLK (st.st_mode) &&
      proto->writable) {
    fprintf (stderr, "sxm-copy: %s: a block device holding a VHD cannot be "
             "written as one (the image would need to grow); --raw writes "
             "the disk's bytes over it\n", proto->name);
    return NULL;
  }
  if (!exists && vhd_create_dest (proto->name, create, want_size) == -1)
    return NULL;
  ep = endpoint_alloc (proto, sizeof *v, &vhd_ops);
  if (!ep)
    return NULL;
  v = to_vhd (ep);
  v->vhd = ep->writable ? vhd_open_chain_rw (ep->name, VHD_SIZE_CURRENT)
                        : vhd_open_chain (ep->name, VHD_SIZE_CURRENT);
  if (!v->vhd) {
    free (ep);
    return NULL;                /* vhd.c said why, naming field and offset */
  }
  pthread_mutex_init (&v->wb.lock, NULL);
  /* Hygiene covers what this copy appends, not what was there. */
  v->wb.started = v->wb.dropped = v->vhd->data_end;
  ep->size = v->vhd->size;
  ep->readonly = ep->writable && !v->vhd->writable;
  ep->multi_conn = true;
  ep->has_extents = true;
  ep->can_zero = ep->can_fast_zero = true;
  ep->zero_init = !exists;
  if (!(*first = endpoint_first_conn (ep))) {
    endpoint_close (ep);
    return NULL;
  }
  return ep;
}
