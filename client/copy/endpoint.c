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

/* The value of KEY in URI's query string, percent-decoded, or NULL. */
static char *
uri_query (const char *uri, const char *key)
{
  const char *q = strchr (uri, '?');
  size_t klen = strlen (key);

  while (q) {
    const char *v, *end;
    q++;
    end = strchr (q, '&');
    if (strncmp (q, key, klen) == 0 && q[klen] == '=') {
      char *out, *o;
      v = q + klen + 1;
      if (!end)
        end = v + strlen (v);
      out = o = malloc (end - v + 1);
      if (!out)
        return NULL;
      for (; v < end; v++) {
        unsigned x;
        if (*v == '%' && v + 2 < end && sscanf (v + 1, "%2x", &x) == 1) {
          *o++ = (char) x;
          v += 2;
        }
        else
          *o++ = *v;
      }
      *o = 0;
      return out;
    }
    q = end;
  }
  return NULL;
}

/* Secret files must be private to their owner. */
static int
check_private (const char *uri, const char *what, const char *path)
{
  struct stat st;

  if (stat (path, &st) == -1)
    return 0;                   /* libnbd reports a missing file itself */
  if (st.st_mode & 077) {
    fprintf (stderr, "sxm-copy: %s: %s %s is accessible to group or others "
             "(mode %04o); refusing to use it (chmod 600)\n", uri, what,
             path, (unsigned) (st.st_mode & 07777));
    return -1;
  }
  return 0;
}

static bool
loopback_host (const char *h, size_t n)
{
  return (n == 9 && strncmp (h, "localhost", 9) == 0) ||
         (n >= 4 && strncmp (h, "127.", 4) == 0) ||
         (n == 5 && strncmp (h, "[::1]", 5) == 0);
}

/* Security defaults: plaintext NBD over TCP only to loopback unless
 * --insecure; TLS key material must not be readable by others. */
static int
nbd_policy (struct endpoint *ep)
{
  const char *u = ep->name;
  char *psk, *certs;
  int r = 0;

  if (strncmp (u, "nbd://", 6) == 0 && !ep->insecure) {
    const char *h = u + 6, *e = h + strcspn (h, "/?");
    const char *at = memchr (h, '@', e - h);
    size_t n;
    if (at)
      h = at + 1;
    n = e - h;
    if (n && h[0] != '[' && memchr (h, ':', n))    /* strip :port */
      n = (const char *) memchr (h, ':', n) - h;
    else if (n && h[0] == '[' && memchr (h, ']', n))
      n = (const char *) memchr (h, ']', n) - h + 1;
    if (!loopback_host (h, n)) {
      fprintf (stderr, "sxm-copy: %s: plaintext NBD to a host that is not "
               "loopback; use nbds:// (TLS), or --insecure to allow it\n", u);
      return -1;
    }
  }
  psk = uri_query (u, "tls-psk-file");
  if (psk && check_private (u, "PSK file", psk) == -1)
    r = -1;
  certs = uri_query (u, "tls-certificates");
  if (certs && r == 0) {
    char *key;
    if (asprintf (&key, "%s/client-key.pem", certs) >= 0) {
      r = check_private (u, "private key", key);
      free (key);
    }
  }
  free (psk);
  free (certs);
  return r;
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
