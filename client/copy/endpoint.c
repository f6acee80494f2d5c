/* Choosing and probing an endpoint from what the user wrote:
 *   null:        destination only: discards writes (benchmarks)
 *   SCHEME://... an NBD URI, handed to libnbd
 *   a VHD        a file named *.vhd, or any file or block device whose
 *                footer says VHD: the virtual disk it holds (vhd-ops.c);
 *                a new *.vhd destination (or --create=dynamic|fixed) is
 *                created as a VHD
 *   anything else a local file or block device, as bytes (--raw: always)
 * Every failure here happens before a byte is written. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libnbd.h>

#include "copy.h"
#include "nbdpolicy.h"
#include "vhd.h"

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

static bool
named_vhd (const char *name)
{
  size_t n = strlen (name);
  return n > 4 && strcasecmp (name + n - 4, ".vhd") == 0;
}

/* A new VHD destination: dynamic unless --create=fixed, 2 MiB blocks (what
 * XenServer and Hyper-V use), exactly the source's size rounded up to
 * whole sectors (a VHD holds nothing else; the extra bytes read zeros and
 * are said). */
static int
vhd_create_dest (struct endpoint *ep, enum vhd_create_kind kind,
                 uint64_t want_size)
{
  uint64_t size = (want_size + 511) / 512 * 512;
  uint8_t uuid[16];

  if (getrandom (uuid, sizeof uuid, 0) != sizeof uuid) {
    fprintf (stderr, "sxm-copy: %s: getrandom: %m\n", ep->name);
    return -1;
  }
  uuid[6] = (uuid[6] & 0x0f) | 0x40;    /* RFC 4122 version 4 */
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
  if (size != want_size)
    fprintf (stderr, "sxm-copy: %s: a VHD holds whole 512-byte sectors: "
             "created with %" PRIu64 " bytes for the source's %" PRIu64
             " (the last %" PRIu64 " read zeros)\n", ep->name, size,
             want_size, size - want_size);
  if (vhd_create (ep->name, kind == CREATE_FIXED ? VHD_TYPE_FIXED
                                                 : VHD_TYPE_DYNAMIC,
                  size, 2 << 20, uuid) == -1)
    return -1;
  ep->created = true;
  return 0;
}

static int
vhd_probe (struct endpoint *ep, const struct local_opts *lo,
           uint64_t want_size, bool exists, struct conn *c)
{
  struct stat st;

  ep->ops = &vhd_ops;
  if (exists && stat (ep->name, &st) == 0 && S_ISBLK (st.st_mode) &&
      ep->writable) {
    fprintf (stderr, "sxm-copy: %s: a block device holding a VHD cannot be "
             "written as one (the image would need to grow); --raw writes "
             "the disk's bytes over it\n", ep->name);
    return -1;
  }
  if (!exists && vhd_create_dest (ep, lo->create_kind, want_size) == -1)
    return -1;
  ep->vhd = ep->writable ? vhd_open_chain_rw (ep->name, VHD_SIZE_CURRENT)
                         : vhd_open_chain (ep->name, VHD_SIZE_CURRENT);
  if (!ep->vhd)
    return -1;                  /* vhd.c said why, naming field and offset */
  pthread_mutex_init (&ep->vwb.lock, NULL);
  /* Hygiene covers what this copy appends, not what was there. */
  ep->vwb.started = ep->vwb.dropped = ep->vhd->data_end;
  ep->size = ep->vhd->size;
  ep->readonly = ep->writable && !ep->vhd->writable;
  ep->multi_conn = true;
  ep->has_extents = true;
  ep->can_zero = ep->can_fast_zero = true;
  ep->zero_init = ep->created;
  return ep->ops->connect (c);
}

/* Whether the local file NAME is taken as a VHD: 1, 0, or -1 refused
 * (message printed). */
static int
local_is_vhd (struct endpoint *ep, const struct local_opts *lo, bool exists)
{
  bool named = named_vhd (ep->name);
  int footer;

  if (lo->raw)
    return 0;
  if (!exists)
    return ep->is_dest && (named || lo->create_kind != CREATE_AUTO);
  footer = vhd_has_footer (ep->name);
  if (footer == -1)
    return 0;                   /* file_probe reports the error */
  if (footer == 1 && !named)
    fprintf (stderr, "sxm-copy: %s: holds a VHD (its footer says so): "
             "%s the disk it holds; --raw %s the file's bytes\n", ep->name,
             ep->is_dest ? "writing" : "copying",
             ep->is_dest ? "overwrites" : "copies");
  if (footer == 0 && named) {
    fprintf (stderr, "sxm-copy: %s: named .vhd but no VHD footer at its end "
             "or at offset 0; --raw takes it as plain bytes\n", ep->name);
    return -1;
  }
  return footer;
}

/* A destination that does not exist yet and whose name reads like a
 * mistyped sink or URI ("null", "nbd:host", "nbd+unix:/s"): creating a
 * file of that name is almost never what was meant.  The "did you mean"
 * hint, or NULL when NAME is plainly a path. */
static const char *
mistyped (const char *name)
{
  static const char *const schemes[] = {
    "nbd:", "nbds:", "nbd+unix:", "nbds+unix:", "nbd+vsock:", "nbds+vsock:",
  };

  if (strcmp (name, "null") == 0)
    return "null: (the sink, with a colon)";
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncasecmp (name, schemes[i], strlen (schemes[i])) == 0)
      return "an NBD URI: SCHEME://HOST[:PORT]/EXPORT or "
             "nbd+unix:///EXPORT?socket=PATH";
  return NULL;
}

int
endpoint_open (struct endpoint *ep, const char *name, bool is_dest,
               bool writable, uint64_t want_size,
               const struct local_opts *lo, struct conn *first)
{
  struct stat st;
  bool exists;
  int v;

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
  exists = stat (name, &st) == 0;
  if (is_dest && !exists && !lo->create && mistyped (name)) {
    fprintf (stderr, "sxm-copy: %s: refusing to create a file of that name; "
             "did you mean %s?  (--create makes the file anyway)\n",
             name, mistyped (name));
    errno = EINVAL;
    return -1;
  }
  if (is_dest && exists && lo->create) {
    fprintf (stderr, "sxm-copy: %s: exists; --create makes a new image and "
             "never overwrites one\n", name);
    return -1;
  }
  v = local_is_vhd (ep, lo, exists);
  if (v == -1)
    return -1;
  if (v == 1)
    return vhd_probe (ep, lo, want_size, exists, first);
  return file_probe (ep, first, want_size);
}

int
endpoint_close (struct endpoint *ep)
{
  return ep->ops && ep->ops->close ? ep->ops->close (ep) : 0;
}
