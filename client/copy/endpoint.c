/* Choosing and probing an endpoint from what the user wrote:
 *   null:        destination only: discards writes (benchmarks)
 *   SCHEME://... an NBD URI, handed to libnbd
 *   anything else a local file or block device
 * Every failure here happens before a byte is written. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "copy.h"
#include "nbdpolicy.h"

/* Security defaults (common/nbdpolicy.c): plaintext NBD over TCP only to
 * loopback unless --insecure; TLS key material must not be readable by
 * others. */
static int
nbd_policy (struct endpoint *ep)
{
  return nbd_uri_policy (ep->name, ep->insecure);
}

static int
nbd_probe (struct endpoint *ep, struct conn *c)
{
  struct nbd_handle *h;
  int64_t size;

  ep->ops = &nbd_ops;
  if (nbd_policy (ep) == -1)
    return -1;
  if (nbd_ops.connect (c) == -1) {
    fprintf (stderr, "sxm-copy: %s: cannot connect: %s\n", ep->name,
             c->connect_error);
    return -1;
  }
  h = c->nbd;
  size = nbd_get_size (h);
  if (size < 0) {
    fprintf (stderr, "sxm-copy: %s: %s\n", ep->name, nbd_last_error ());
    return -1;
  }
  ep->size = size;
  ep->multi_conn = nbd_can_multi_conn (h) == 1;
  ep->readonly = nbd_is_read_only (h) == 1;
  ep->has_extents = nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  ep->can_zero = nbd_can_zero (h) == 1;
  ep->can_fast_zero = nbd_can_fast_zero (h) == 1;
  return 0;
}

/* A regular file that has no data at all reads as zeros. */
static bool
file_all_hole (int fd)
{
  return lseek (fd, 0, SEEK_DATA) == -1 && errno == ENXIO;
}

static int
file_probe (struct endpoint *ep, struct conn *c, uint64_t want_size)
{
  struct stat st;
  int fd;

  ep->ops = &file_ops;
  fd = open (ep->name, (ep->writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
  if (fd == -1 && ep->writable && errno == ENOENT) {
    /* A new destination file: created sparse, exactly the source's size. */
    fd = open (ep->name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      ep->created = true;
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
  ep->fd = fd;
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
    ep->is_bdev = true;
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
  ep->zero_init = ep->created ||
                  (!ep->is_bdev && ep->writable && file_all_hole (fd));
  return ep->ops->connect (c);
}

int
endpoint_open (struct endpoint *ep, const char *name, bool is_dest,
               bool writable, uint64_t want_size, struct conn *first)
{
  ep->name = name;
  ep->is_dest = is_dest;
  ep->writable = writable;
  ep->fd = -1;
  first->ep = ep;
  if (strcmp (name, "null:") == 0) {
    if (!is_dest) {
      fprintf (stderr, "sxm-copy: null: can only be a destination\n");
      return -1;
    }
    ep->ops = &null_ops;
    ep->size = want_size;
    ep->multi_conn = ep->can_zero = ep->zero_init = true;
    return 0;
  }
  if (strstr (name, "://"))
    return nbd_probe (ep, first);
  return file_probe (ep, first, want_size);
}
