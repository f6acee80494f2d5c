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

struct file_endpoint {
  struct endpoint ep;
  int fd;
  bool is_bdev;
};

static inline struct file_endpoint *
to_file (struct endpoint *ep)
{
  return container_of (ep, struct file_endpoint, ep);
}

/* A worker's connection: the written ranges whose writeback was started
 * and whose pages are dropped once it finishes (writeback ()). */
#define WRITEBACK_WINDOW 16
struct file_conn {
  struct conn c;
  struct { uint64_t off, len; } wb[WRITEBACK_WINDOW];
  unsigned wb_head, wb_count;
};

static inline struct file_conn *
to_file_conn (struct conn *c)
{
  return container_of (c, struct file_conn, c);
}

/* A new connection forgets the old one's writeback window (the pages are
 * merely left in the cache). */
static int
file_connect (struct conn *c)
{
  to_file_conn (c)->wb_head = to_file_conn (c)->wb_count = 0;
  return 0;
}

/* Regular files: data and holes from SEEK_DATA / SEEK_HOLE.  Holes read as
 * zeros; data may still be zeros, which zero detection finds later. */
static int
file_extents (struct conn *c, uint64_t off, uint64_t len,
              extent_fn fn, void *opaque)
{
  uint64_t end = off + len;
  int fd = to_file (c->ep)->fd;

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
  ssize_t n = full_pread (to_file (c->ep)->fd, r->data, r->len, r->off);

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
writeback (struct conn *conn, uint64_t off, uint64_t len)
{
  struct file_conn *c = to_file_conn (conn);
  int fd = to_file (conn->ep)->fd;

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
  int err = pwrite_errno (to_file (c->ep)->fd, r->data, r->len, r->off);

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
  struct file_endpoint *f = to_file (ep);
  uint64_t off = r->off, len = r->len;

  if (ep->can_zero) {
    int mode = f->is_bdev ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                          : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
    if (fallocate (f->fd, mode, off, len) == 0) {
      req_complete (r, 0);
      return 0;
    }
    if (f->is_bdev) {
      uint64_t range[2] = { off, len };
      if (ioctl (f->fd, BLKZEROOUT, range) == 0) {
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
    int err = pwrite_errno (f->fd, zeros, n, off);
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
  req_complete (r, fdatasync (to_file (c->ep)->fd) == 0 ? 0 : errno);
  return 0;
}

static int
file_close (struct endpoint *ep)
{
  close (to_file (ep)->fd);
  return 0;
}

static const struct endpoint_ops file_ops = {
  .kind = "file",
  .conn_size = sizeof (struct file_conn),
  .connect = file_connect,
  .extents = file_extents,
  .pread = file_pread,
  .pwrite = file_pwrite,
  .zero = file_zero,
  .flush = file_flush,
  .close = file_close,
};

/* A regular file that has no data at all reads as zeros. */
static bool
file_all_hole (int fd)
{
  return lseek (fd, 0, SEEK_DATA) == -1 && errno == ENXIO;
}

/* The file or block device, opened (a new destination file is created
 * sparse, exactly the source's size); -1 with a message printed. */
static int
file_probe (struct file_endpoint *f, uint64_t want_size)
{
  struct endpoint *ep = &f->ep;
  bool created = false;
  struct stat st;
  int fd;

  fd = open (ep->name, (ep->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd == -1 && ep->writable && errno == ENOENT) {
    fd = open (ep->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      created = true;
      if (ftruncate (fd, want_size) == -1) {
        fprintf (stderr, "sxm-copy: %s: cannot size new file to %llu bytes: %m\n",
                 ep->name, (unsigned long long) want_size);
        close (fd);
        unlink (ep->name);
        return -1;
      }
    }
  }
  if (fd == -1) {
    if (ep->writable && (errno == EROFS || errno == EACCES || errno == EPERM))
      fprintf (stderr, "sxm-copy: %s: destination is not writable: %m\n",
               ep->name);
    else
      fprintf (stderr, "sxm-copy: %s: %m\n", ep->name);
    return -1;
  }
  f->fd = fd;
  if (fstat (fd, &st) == -1) {
    fprintf (stderr, "sxm-copy: %s: fstat: %m\n", ep->name);
    return -1;
  }
  if (S_ISBLK (st.st_mode)) {
    uint64_t sz;
    if (ioctl (fd, BLKGETSIZE64, &sz) == -1) {
      fprintf (stderr, "sxm-copy: %s: BLKGETSIZE64: %m\n", ep->name);
      return -1;
    }
    ep->size = sz;
    f->is_bdev = true;
  }
  else if (S_ISREG (st.st_mode)) {
    ep->size = st.st_size;
    ep->has_extents = true;
  }
  else {
    fprintf (stderr, "sxm-copy: %s: not a regular file or block device\n",
             ep->name);
    return -1;
  }
  ep->multi_conn = true;
  ep->can_zero = true;
  ep->zero_init = created ||
                  (!f->is_bdev && ep->writable && file_all_hole (fd));
  return 0;
}

struct endpoint *
endpoint_open_file (const struct endpoint *proto, uint64_t want_size,
                    struct conn **first)
{
  struct endpoint *ep = endpoint_alloc (proto, sizeof (struct file_endpoint),
                                        &file_ops);
  struct file_endpoint *f;

  if (!ep)
    return NULL;
  f = to_file (ep);
  f->fd = -1;
  if (file_probe (f, want_size) == -1 ||
      !(*first = endpoint_first_conn (ep))) {
    if (f->fd >= 0)
      close (f->fd);
    free (ep);
    return NULL;
  }
  return ep;
}

/* ---- null: ------------------------------------------------------------- */

/* Writes, zeroes and flushes all succeed at once and keep nothing. */
static int
null_discard (struct conn *c, struct req *r)
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

/* null: is a destination only (endpoint_open refuses it as a source).
 * Reads complete without filling the buffer: a --verify against null:
 * compares nothing meaningful. */
static const struct endpoint_ops null_ops = {
  .kind = "null",
  .conn_size = sizeof (struct conn),
  .extents = null_extents,
  .pread = null_discard,
  .pwrite = null_discard,
  .zero = null_discard,
  .flush = null_discard,
};

struct endpoint *
endpoint_open_null (const struct endpoint *proto, uint64_t want_size,
                    struct conn **first)
{
  struct endpoint *ep = endpoint_alloc (proto, sizeof *ep, &null_ops);

  if (!ep)
    return NULL;
  ep->size = want_size;
  ep->multi_conn = ep->can_zero = ep->zero_init = true;
  if (!(*first = endpoint_first_conn (ep))) {
    free (ep);
    return NULL;
  }
  return ep;
}
