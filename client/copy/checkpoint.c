/* The --checkpoint file: which segments of the copy are durable on the
 * destination, so that an interrupted copy resumes without redoing them.
 * Format (all integers big-endian), documented in doc/design.md:
 *
 *   0   8  magic "SXMCKPT\n"
 *   8   4  version (1)
 *  12   4  flags: bit 0 = the destination read zeros when the copy began
 *  16   8  source size
 *  24   8  destination size
 *  32   8  segment size
 *  40   8  number of segments N
 *  48   4  source name length S
 *  52   4  destination name length D
 *  56   S  source name, then D bytes of destination name
 *   .  ceil(N/8)  bitmap, bit i (MSB first) = segment i is durable
 *   .   8  FNV-1a 64 of every byte before it
 *
 * It is replaced atomically (write a temporary, fsync, rename, fsync the
 * directory), so a crash leaves the old or the new one, never a mix. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bitmap.h"
#include "copy.h"
#include "endian.h"
#include "fullio.h"

#define CKPT_MAGIC "SXMCKPT\n"
#define CKPT_VERSION 1
#define CKPT_HDR 56
#define CKPT_FLAG_DST_ZERO 1u

static uint64_t
fnv1a (const uint8_t *p, size_t n)
{
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

static size_t
ckpt_len (size_t names, uint64_t nseg)
{
  return CKPT_HDR + names + bitmap_bytes (nseg) + 8;
}

int
checkpoint_save (const char *path, struct copy *cp)
{
  size_t sl = strlen (cp->src->name), dl = strlen (cp->dst->name);
  size_t maplen = bitmap_bytes (cp->nseg);
  size_t len = ckpt_len (sl + dl, cp->nseg);
  uint8_t *b = calloc (1, len);
  char *tmp = NULL, *dircopy = NULL;
  int fd = -1, rc = -1;

  if (b == NULL || asprintf (&tmp, "%s.tmp", path) == -1) {
    tmp = NULL;
    fprintf (stderr, "sxm-copy: %s: out of memory\n", path);
    goto out;
  }
  memcpy (b, CKPT_MAGIC, 8);
  be32_store (b + 8, CKPT_VERSION);
  be32_store (b + 12, cp->dst_zero ? CKPT_FLAG_DST_ZERO : 0);
  be64_store (b + 16, cp->size);
  be64_store (b + 24, cp->dst->size);
  be64_store (b + 32, cp->o->segment_size);
  be64_store (b + 40, cp->nseg);
  be32_store (b + 48, sl);
  be32_store (b + 52, dl);
  memcpy (b + CKPT_HDR, cp->src->name, sl);
  memcpy (b + CKPT_HDR + sl, cp->dst->name, dl);
  pthread_mutex_lock (&cp->lock);
  memcpy (b + CKPT_HDR + sl + dl, cp->done_map, maplen);
  cp->ckpt_dirty = false;
  pthread_mutex_unlock (&cp->lock);
  be64_store (b + len - 8, fnv1a (b, len - 8));

  fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd == -1 || full_write (fd, b, len) == -1 || fsync (fd) == -1) {
    fprintf (stderr, "sxm-copy: checkpoint %s: %m\n", tmp);
    goto out;
  }
  close (fd);
  fd = -1;
  if (rename (tmp, path) == -1) {
    fprintf (stderr, "sxm-copy: checkpoint %s: rename: %m\n", path);
    goto out;
  }
  dircopy = strdup (path);
  if (dircopy && (fd = open (dirname (dircopy), O_RDONLY | O_DIRECTORY)) >= 0)
    fsync (fd);
  rc = 0;
 out:
  if (fd >= 0)
    close (fd);
  if (rc == -1 && tmp)
    unlink (tmp);
  free (dircopy);
  free (tmp);
  free (b);
  return rc;
}

static int
mismatch (const char *path, const char *field, size_t off, uint64_t got,
          uint64_t want)
{
  fprintf (stderr, "sxm-copy: checkpoint %s: %s (offset %zu) is %" PRIu64
           ", this copy has %" PRIu64 "; not resuming (remove the file to "
           "start again)\n", path, field, off, got, want);
  return -1;
}

int
checkpoint_load (const char *path, struct copy *cp)
{
  struct stat st;
  uint8_t *b = NULL;
  uint32_t sl, dl;
  int fd, rc = -1;
  size_t len;

  fd = open (path, O_RDONLY | O_CLOEXEC);
  if (fd == -1 && errno == ENOENT)
    return 0;
  if (fd == -1 || fstat (fd, &st) == -1) {
    fprintf (stderr, "sxm-copy: checkpoint %s: %m\n", path);
    goto out;
  }
  len = st.st_size;
  if (len < CKPT_HDR + 8 || len > (64u << 20)) {
    fprintf (stderr, "sxm-copy: checkpoint %s: size %zu is not that of a "
             "checkpoint\n", path, len);
    goto out;
  }
  b = malloc (len);
  if (b == NULL || full_pread (fd, b, len, 0) != (ssize_t) len) {
    fprintf (stderr, "sxm-copy: checkpoint %s: cannot read: %m\n", path);
    goto out;
  }
  if (memcmp (b, CKPT_MAGIC, 8) != 0) {
    fprintf (stderr, "sxm-copy: checkpoint %s: bad magic at offset 0: not "
             "an sxm-copy checkpoint\n", path);
    goto out;
  }
  if (be32_load (b + 8) != CKPT_VERSION) {
    fprintf (stderr, "sxm-copy: checkpoint %s: version (offset 8) is %u, "
             "this sxm-copy reads version %u\n", path, be32_load (b + 8),
             CKPT_VERSION);
    goto out;
  }
  sl = be32_load (b + 48);
  dl = be32_load (b + 52);
  if ((uint64_t) sl + dl > len ||
      len != ckpt_len ((size_t) sl + dl, be64_load (b + 40))) {
    fprintf (stderr, "sxm-copy: checkpoint %s: length %zu does not match "
             "its header (names at offset 48, segments at offset 40): "
             "truncated or corrupt\n", path, len);
    goto out;
  }
  if (be64_load (b + len - 8) != fnv1a (b, len - 8)) {
    fprintf (stderr, "sxm-copy: checkpoint %s: checksum at offset %zu does "
             "not match: corrupt\n", path, len - 8);
    goto out;
  }
  if (be64_load (b + 16) != cp->size) {
    rc = mismatch (path, "source size", 16, be64_load (b + 16), cp->size);
    goto out;
  }
  if (be64_load (b + 24) != cp->dst->size) {
    rc = mismatch (path, "destination size", 24, be64_load (b + 24),
                   cp->dst->size);
    goto out;
  }
  if (be64_load (b + 32) != cp->o->segment_size) {
    rc = mismatch (path, "segment size", 32, be64_load (b + 32),
                   cp->o->segment_size);
    goto out;
  }
  if (be64_load (b + 40) != cp->nseg) {
    rc = mismatch (path, "number of segments", 40, be64_load (b + 40),
                   cp->nseg);
    goto out;
  }
  if (sl != strlen (cp->src->name) ||
      memcmp (b + CKPT_HDR, cp->src->name, sl) != 0 ||
      dl != strlen (cp->dst->name) ||
      memcmp (b + CKPT_HDR + sl, cp->dst->name, dl) != 0) {
    fprintf (stderr, "sxm-copy: checkpoint %s: was made for %.*s -> %.*s "
             "(offset %d); not resuming a different copy\n", path,
             (int) sl, (char *) b + CKPT_HDR, (int) dl,
             (char *) b + CKPT_HDR + sl, CKPT_HDR);
    goto out;
  }
  memcpy (cp->done_map, b + CKPT_HDR + sl + dl, bitmap_bytes (cp->nseg));
  cp->dst_zero = (be32_load (b + 12) & CKPT_FLAG_DST_ZERO) != 0;
  rc = 1;
 out:
  if (fd >= 0)
    close (fd);
  free (b);
  return rc;
}
