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
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "copy.h"
#include "vhd.h"

static int
vhd_connect (struct conn *c)
{
  c->inflight = 0;
  return 0;
}

static void
vhd_disconnect (struct conn *c)
{
}

static bool
vhd_is_dead (struct conn *c)
{
  return false;
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

  if (vhd_map (c->ep->vhd, off, len, false, relay_run, &m) == -1)
    return -1;
  return m.r;
}

static int
vhd_pread (struct conn *c, struct req *r)
{
  req_complete (r, vhd_read (c->ep->vhd, r->data, r->len, r->off) == -1
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
vhd_writeback (struct endpoint *ep)
{
  struct vhd_writeback *wb = &ep->vwb;
  uint64_t end = __atomic_load_n (&ep->vhd->data_end, __ATOMIC_RELAXED);
  int fd = ep->vhd->fd;

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
  int err = vhd_write (c->ep->vhd, r->data, r->len, r->off) == -1 ? errno : 0;

  if (err == 0)
    vhd_writeback (c->ep);
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
  req_complete (r, vhd_zero (c->ep->vhd, r->len, r->off, r->fast_zero) == -1
                   ? errno : 0);
  return 0;
}

static int
vhd_flush_req (struct conn *c, struct req *r)
{
  req_complete (r, vhd_flush (c->ep->vhd) == -1 ? errno : 0);
  return 0;
}

static int
vhd_poll_setup (struct conn *c, struct pollfd *p)
{
  return 0;
}

static int
vhd_poll_done (struct conn *c, short revents)
{
  return 0;
}

static int
vhd_close (struct endpoint *ep)
{
  int r = 0;

  if (!ep->vhd)
    return 0;
  if (ep->vhd->writable && vhd_flush (ep->vhd) == -1) {
    fprintf (stderr, "sxm-copy: %s: writing the VHD's metadata: %m\n",
             ep->name);
    r = -1;
  }
  vhd_close_chain (ep->vhd);
  ep->vhd = NULL;
  pthread_mutex_destroy (&ep->vwb.lock);
  return r;
}

const struct endpoint_ops vhd_ops = {
  .kind = "vhd",
  .connect = vhd_connect,
  .disconnect = vhd_disconnect,
  .is_dead = vhd_is_dead,
  .extents = vhd_extents,
  .pread = vhd_pread,
  .pwrite = vhd_pwrite,
  .zero = vhd_zero_req,
  .flush = vhd_flush_req,
  .poll_setup = vhd_poll_setup,
  .poll_done = vhd_poll_done,
  .close = vhd_close,
};
