/* Local endpoints: regular files and block devices, and the null:
 * destination (discards everything; for benchmarks).  I/O is synchronous:
 * each start call does the system call and completes the request at once.
 * All workers share one file descriptor (pread/pwrite are positional). */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "copy.h"
#include "fullio.h"

static int
file_connect (struct conn *c)
{
  c->inflight = 0;
  c->wb_head = c->wb_count = 0;
  return 0;
}

static void
file_disconnect (struct conn *c)
{
}

static bool
file_is_dead (struct conn *c)
{
  return false;
}

/* Regular files: data and holes from SEEK_DATA / SEEK_HOLE.  Holes read as
 * zeros; data may still be zeros, which zero detection finds later. */
static int
file_extents (struct conn *c, uint64_t off, uint64_t len,
              extent_fn fn, void *opaque)
{
  uint64_t end = off + len;
  int fd = c->ep->fd;

  if (!c->ep->has_extents)
    return fn (opaque, off, len, false);
  while (off < end) {
    off_t data = lseek (fd, off, SEEK_DATA);
    off_t hole;
    int r;

    if (data == -1 && errno != ENXIO)
      return -1;
    if (data == -1 || (uint64_t) data >= end)
      return fn (opaque, off, end - off, true);
    if ((uint64_t) data > off && (r = fn (opaque, off, data - off, true)))
      return r;
    hole = lseek (fd, data, SEEK_HOLE);
    if (hole == -1)
      return -1;
    if ((uint64_t) hole > end)
      hole = end;
    if ((r = fn (opaque, data, hole - data, false)))
      return r;
    off = hole;
  }
  return 0;
}

static int
file_pread (struct conn *c, struct req *r)
{
  ssize_t n = full_pread (c->ep->fd, r->data, r->len, r->off);

  /* Short: EOF inside the size. */
  req_complete (r, n == -1 ? errno : (uint64_t) n < r->len ? EIO : 0);
  return 0;
}

/* 0 or the errno, as req_complete takes it. */
static int
pwrite_errno (int fd, const char *buf, uint64_t len, uint64_t off)
{
  return full_pwrite (fd, buf, len, off) == -1 ? errno : 0;
}

/* Page-cache hygiene: a copy must not fill the host's page cache with a
 * disk nobody will read back.  Writeback of each written range starts at
 * once; WRITEBACK_WINDOW ranges later we wait for it and drop the pages.
 * Besides sparing the cache, this keeps recycling the same few megabytes
 * of memory, which measured ~3x faster than touching a gigabyte of fresh
 * pages on the benchmark machine (doc/sxm-copy.pod). */
static void
writeback (struct conn *c, uint64_t off, uint64_t len)
{
  int fd = c->ep->fd;

  sync_file_range (fd, off, len, SYNC_FILE_RANGE_WRITE);
  if (c->wb_count == WRITEBACK_WINDOW) {
    unsigned i = c->wb_head;
    sync_file_range (fd, c->wb[i].off, c->wb[i].len,
                     SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                     SYNC_FILE_RANGE_WAIT_AFTER);
    posix_fadvise (fd, c->wb[i].off, c->wb[i].len, POSIX_FADV_DONTNEED);
    c->wb_head = (i + 1) % WRITEBACK_WINDOW;
    c->wb_count--;
  }
  c->wb[(c->wb_head + c->wb_count) % WRITEBACK_WINDOW].off = off;
  c->wb[(c->wb_head + c->wb_count) % WRITEBACK_WINDOW].len = len;
  c->wb_count++;
}

static int
file_pwrite (struct conn *c, struct req *r)
{
  int err = pwrite_errno (c->ep->fd, r->data, r->len, r->off);

  if (err == 0)
    writeback (c, r->off, r->len);
  req_complete (r, err);
  return 0;
}

/* Zero a range: punch a hole (the range then reads zeros and takes no
 * space), else ask the file system / device to zero it, else write zeros. */
static int
file_zero (struct conn *c, struct req *r)
{
  static const char zeros[1 << 16];
  struct endpoint *ep = c->ep;
  uint64_t off = r->off, len = r->len;

  if (ep->can_zero) {
    int mode = ep->is_bdev ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                           : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (fallocate (ep->fd, mode, off, len) == 0) {
      req_complete (r, 0);
      return 0;
    }
    if (ep->is_bdev) {
      uint64_t range[2] = { off, len };
      if (ioctl (ep->fd, BLKZEROOUT, range) == 0) {
        req_complete (r, 0);
        return 0;
      }
    }
    if (errno != EOPNOTSUPP && errno != ENOTTY && errno != EINVAL) {
      req_complete (r, errno);
      return 0;
    }
    ep->can_zero = false;       /* unsupported here: stop trying */
  }
  while (len > 0) {
    uint64_t n = len < sizeof zeros ? len : sizeof zeros;
    int err = pwrite_errno (ep->fd, zeros, n, off);
    if (err) {
      req_complete (r, err);
      return 0;
    }
    off += n;
    len -= n;
  }
  req_complete (r, 0);
  return 0;
}

static int
file_flush (struct conn *c, struct req *r)
{
  req_complete (r, fdatasync (c->ep->fd) == 0 ? 0 : errno);
  return 0;
}

static int
file_poll_setup (struct conn *c, struct pollfd *p)
{
  return 0;
}

static int
file_poll_done (struct conn *c, short revents)
{
  return 0;
}

const struct endpoint_ops file_ops = {
  .kind = "file",
  .connect = file_connect,
  .disconnect = file_disconnect,
  .is_dead = file_is_dead,
  .extents = file_extents,
  .pread = file_pread,
  .pwrite = file_pwrite,
  .zero = file_zero,
  .flush = file_flush,
  .poll_setup = file_poll_setup,
  .poll_done = file_poll_done,
};

static int
null_pwrite (struct conn *c, struct req *r)
{
  req_complete (r, 0);
  return 0;
}

static int
null_extents (struct conn *c, uint64_t off, uint64_t len,
              extent_fn fn, void *opaque)
{
  return fn (opaque, off, len, true);
}

const struct endpoint_ops null_ops = {
  .kind = "null",
  .connect = file_connect,
  .disconnect = file_disconnect,
  .is_dead = file_is_dead,
  .extents = null_extents,
  .pread = null_pwrite,         /* never used: null: is write-only */
  .pwrite = null_pwrite,
  .zero = null_pwrite,
  .flush = null_pwrite,
  .poll_setup = file_poll_setup,
  .poll_done = file_poll_done,
};
