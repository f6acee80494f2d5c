/* Creating new VHD images: fixed, dynamic, and differencing children.
 *
 * A new image is written in full to a temporary file in the target's
 * directory, synced, and renamed into place without replacing anything, so
 * a crash leaves either no image or a complete one. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "endian.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"


/* The specification's CHS algorithm (appendix "CHS Calculation"), which
 * Hyper-V and blktap use to write the geometry and blktap's checker uses as
 * the upper bound for it. */
void
vhd_spec_chs (uint64_t size, uint16_t *c, uint8_t *h, uint8_t *s)
{
  uint64_t total = size / VHD_SECTOR, cth;
  unsigned spt, heads;

  if (total > 65535ULL * 16 * 255)
    total = 65535ULL * 16 * 255;
  if (total >= 65535ULL * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = total / spt;
  }
  else {
    spt = 17;
    cth = total / spt;
    heads = (cth + 1023) / 1024;
    if (heads < 4)
      heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = total / spt;
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = total / spt;
    }
  }
  *c = cth / heads;
  *h = heads;
  *s = spt;
}

/* Set a footer's size (current size and geometry) and checksum.  The
 * geometry is always the specification's CHS for SIZE, rounded down as its
 * algorithm rounds: XenServer's tools (blktap's libvhd) refuse a geometry
 * larger than that, and Hyper-V and blktap write exactly that.  (Earlier
 * versions stored the maximum geometry when CHS could not express SIZE, so
 * that qemu's vpc driver would read the current size; blktap rejects such
 * images, and 'sxm-vhd repair' rewrites their geometry.)  Readers that take
 * the size from the geometry for our creator code (qemu, unless told
 * force_size_calc=current_size) see the CHS size; see sxm-vhd(1). */
void
vhd_footer_set_size (uint8_t *b, uint64_t size)
{
  uint16_t c;
  uint8_t h, s;

  vhd_spec_chs (size, &c, &h, &s);
  be64_store (b + 48, size);
  be16_store (b + 56, c);
  b[58] = h;
  b[59] = s;
  be32_store (b + 64, 0);
  be32_store (b + 64, vhd_checksum (b, VHD_FOOTER_SIZE, 64));
}

static void
make_footer (uint8_t *b, uint64_t size, uint32_t type, uint64_t data_offset,
             const uint8_t uuid[16])
{
  memset (b, 0, VHD_FOOTER_SIZE);
  memcpy (b, "conectix", 8);
  be32_store (b + 8, 2);                       /* features: reserved bit */
  be32_store (b + 12, 0x00010000);
  be64_store (b + 16, data_offset);
  be32_store (b + 24, (uint32_t) (time (NULL) - VHD_EPOCH));
  memcpy (b + 28, "sxm ", 4);
  be32_store (b + 32, 0x00000001);
  memcpy (b + 36, "Wi2k", 4);                  /* as Hyper-V and blktap */
  be64_store (b + 40, size);
  be32_store (b + 60, type);
  memcpy (b + 68, uuid, 16);
  vhd_footer_set_size (b, size);
}

ssize_t
vhd_utf8_to_utf16 (const char *in, bool big_endian, uint8_t *out,
                   size_t outlen)
{
  const unsigned char *p = (const unsigned char *) in;
  size_t o = 0;

  while (*p) {
    uint32_t c;
    int n, i;
    uint16_t units[2];
    int nunits;

    if (*p < 0x80) { c = *p; n = 1; }
    else if ((*p & 0xe0) == 0xc0) { c = *p & 0x1f; n = 2; }
    else if ((*p & 0xf0) == 0xe0) { c = *p & 0x0f; n = 3; }
    else if ((*p & 0xf8) == 0xf0) { c = *p & 0x07; n = 4; }
    else
      return -1;
    for (i = 1; i < n; i++) {
      if ((p[i] & 0xc0) != 0x80)
        return -1;
      c = (c << 6) | (p[i] & 0x3f);
    }
    p += n;
    if (c >= 0x10000) {
      c -= 0x10000;
      units[0] = 0xd800 + (c >> 10);
      units[1] = 0xdc00 + (c & 0x3ff);
      nunits = 2;
    }
    else {
      units[0] = c;
      nunits = 1;
    }
    for (i = 0; i < nunits; i++) {
      if (o + 2 > outlen)
        return -1;
      out[o + (big_endian ? 0 : 1)] = units[i] >> 8;
      out[o + (big_endian ? 1 : 0)] = units[i] & 0xff;
      o += 2;
    }
  }
  return o;
}

/* Write the whole image through a temporary file and rename it into place
 * without replacing an existing file. */
struct image_part {
  uint64_t offset;
  const void *buf;
  size_t len;
};

static int
commit_image (const char *path, uint64_t file_size,
              const struct image_part *parts, size_t nparts)
{
  char *tmp = NULL, *dircopy = NULL;
  int fd = -1, dfd = -1, ret = -1;
  size_t i;

  if (access (path, F_OK) == 0) {
    sxm_error ("%s: already exists; not overwriting", path);
    return -1;
  }
  if (asprintf (&tmp, "%s.tmp.XXXXXX", path) == -1) {
    tmp = NULL;
    goto out;
  }
  fd = mkstemp (tmp);
  if (fd == -1) {
    sxm_error ("%s: cannot create a temporary file beside it: %s", path,
               strerror (errno));
    free (tmp);
    tmp = NULL;
    goto out;
  }
  if (fchmod (fd, 0644) == -1 || ftruncate (fd, file_size) == -1) {
    sxm_error ("%s: sizing to %" PRIu64 " bytes: %s", path, file_size,
               strerror (errno));
    goto out;
  }
  for (i = 0; i < nparts; i++)
    if (full_pwrite (fd, parts[i].buf, parts[i].len, parts[i].offset) == -1) {
      sxm_error ("%s: writing at %" PRIu64 ": %s", path, parts[i].offset,
                 strerror (errno));
      goto out;
    }
  if (fsync (fd) == -1) {
    sxm_error ("%s: fsync: %s", path, strerror (errno));
    goto out;
  }
  if (renameat2 (AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == -1) {
    sxm_error ("%s: %s", path, errno == EEXIST
               ? "already exists; not overwriting" : strerror (errno));
    goto out;
  }
  free (tmp);
  tmp = NULL;
  dircopy = strdup (path);
  if (dircopy && (dfd = open (dirname (dircopy), O_RDONLY | O_DIRECTORY)) >= 0)
    fsync (dfd);
  ret = 0;
 out:
  if (fd >= 0)
    close (fd);
  if (dfd >= 0)
    close (dfd);
  if (tmp) {
    unlink (tmp);
    free (tmp);
  }
  free (dircopy);
  return ret;
}

static int
check_create_args (const char *path, uint64_t size, uint32_t block_size)
{
  if (size == 0 || size % VHD_SECTOR != 0 || size > VHD_MAX_SIZE) {
    sxm_error ("%s: size %" PRIu64 " must be a non-zero multiple of 512 "
               "of at most 2040 GiB", path, size);
    return -1;
  }
  if (block_size < VHD_SECTOR || block_size > VHD_MAX_BLOCK ||
      (block_size & (block_size - 1)) != 0) {
    sxm_error ("%s: block size %" PRIu32 " must be a power of two from 512 "
               "to %u", path, block_size, VHD_MAX_BLOCK);
    return -1;
  }
  if ((size + block_size - 1) / block_size > VHD_MAX_BAT) {
    sxm_error ("%s: %" PRIu64 " bytes in blocks of %" PRIu32 " need more "
               "than %u BAT entries; use a larger block size", path, size,
               block_size, VHD_MAX_BAT);
    return -1;
  }
  return 0;
}

/* Layout of a new dynamic/differencing image: footer copy, header, BAT,
 * locator data, footer.  No blocks yet. */
static int
create_sparse (const char *path, uint64_t size, uint32_t block_size,
               const uint8_t uuid[16], const uint8_t *header_extra,
               const struct image_part *locators, size_t nloc,
               uint32_t type)
{
  uint32_t entries = (size + block_size - 1) / block_size;
  uint64_t bat_bytes = ((uint64_t) entries * 4 + VHD_SECTOR - 1) /
                       VHD_SECTOR * VHD_SECTOR;
  uint64_t end = 1536 + bat_bytes;
  uint8_t footer[VHD_FOOTER_SIZE], header[VHD_HEADER_SIZE];
  struct image_part parts[4 + VHD_NR_LOCATORS];
  uint8_t *bat;
  size_t n = 0, i;
  int r;

  for (i = 0; i < nloc; i++)
    end += (locators[i].len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  bat = malloc (bat_bytes);
  if (!bat) {
    sxm_error ("%s: out of memory", path);
    return -1;
  }
  memset (bat, 0xff, bat_bytes);
  make_footer (footer, size, type, 512, uuid);

  if (header_extra)
    memcpy (header, header_extra, VHD_HEADER_SIZE);
  else
    memset (header, 0, VHD_HEADER_SIZE);
  memcpy (header, "cxsparse", 8);
  be64_store (header + 8, UINT64_MAX);
  be64_store (header + 16, 1536);
  be32_store (header + 24, 0x00010000);
  be32_store (header + 28, entries);
  be32_store (header + 32, block_size);
  be32_store (header + 36, 0);
  be32_store (header + 36, vhd_checksum (header, VHD_HEADER_SIZE, 36));

  parts[n++] = (struct image_part) { 0, footer, VHD_FOOTER_SIZE };
  parts[n++] = (struct image_part) { 512, header, VHD_HEADER_SIZE };
  parts[n++] = (struct image_part) { 1536, bat, bat_bytes };
  for (i = 0; i < nloc; i++)
    parts[n++] = locators[i];
  parts[n++] = (struct image_part) { end, footer, VHD_FOOTER_SIZE };
  r = commit_image (path, end + VHD_FOOTER_SIZE, parts, n);
  free (bat);
  return r;
}

int
vhd_create (const char *path, enum vhd_type type, uint64_t size,
            uint32_t block_size, const uint8_t uuid[16])
{
  if (check_create_args (path, size, block_size) == -1)
    return -1;
  if (type == VHD_TYPE_FIXED) {
    uint8_t footer[VHD_FOOTER_SIZE];
    struct image_part part = { size, footer, VHD_FOOTER_SIZE };
    make_footer (footer, size, VHD_TYPE_FIXED, UINT64_MAX, uuid);
    return commit_image (path, size + VHD_FOOTER_SIZE, &part, 1);
  }
  if (type != VHD_TYPE_DYNAMIC) {
    sxm_error ("%s: vhd_create makes fixed or dynamic images", path);
    return -1;
  }
  return create_sparse (path, size, block_size, uuid, NULL, NULL, 0,
                        VHD_TYPE_DYNAMIC);
}

/* The relative path from directory FROM_DIR to file TO (both absolute). */
static char *
relative_path (const char *from_dir, const char *to)
{
  size_t common = 0, i;
  char *res;
  size_t len = 0, ups = 0;
  const char *p;

  for (i = 0; from_dir[i] && from_dir[i] == to[i]; i++)
    if (from_dir[i] == '/')
      common = i;
  if (from_dir[i] == '\0' && to[i] == '/')
    common = i;
  for (p = from_dir + common; *p; p++)
    if (*p == '/')
      ups++;
  res = malloc (3 * ups + strlen (to) + 3);
  if (!res)
    return NULL;
  if (ups == 0)
    len += sprintf (res, ".");
  for (i = 0; i < ups; i++)
    len += sprintf (res + len, "%s..", i ? "/" : "");
  sprintf (res + len, "%s", to + common);
  return res;
}

int
vhd_parent_refs (const char *child_path, const char *parent_path,
                 struct vhd_parent_refs *r)
{
  char *cdir = NULL, *ccopy = NULL, *rel = NULL, *q;
  ssize_t lr, lk, ln;
  struct stat st;
  int ret = -1;

  memset (r, 0, sizeof *r);
  r->pabs = realpath (parent_path, NULL);
  ccopy = strdup (child_path);
  if (!r->pabs || !ccopy) {
    sxm_error ("%s: %s", parent_path, strerror (errno));
    goto out;
  }
  cdir = realpath (dirname (ccopy), NULL);
  if (!cdir) {
    sxm_error ("%s: directory: %s", child_path, strerror (errno));
    goto out;
  }
  if (stat (r->pabs, &st) == -1) {
    sxm_error ("%s: %s", r->pabs, strerror (errno));
    goto out;
  }
  r->mtime = (uint32_t) (st.st_mtime - VHD_EPOCH);

  /* Locators: W2ru relative ".\dir\name", W2ku absolute, MacX file:// URL
   * (absolute; blktap reads MacX).  Windows separators in the W2 forms. */
  rel = relative_path (cdir, r->pabs);
  if (!rel || asprintf (&r->url, "file://%s", r->pabs) == -1) {
    r->url = NULL;
    sxm_error ("%s: out of memory", child_path);
    goto out;
  }
  for (q = rel; *q; q++)
    if (*q == '/')
      *q = '\\';
  lr = vhd_utf8_to_utf16 (rel, false, r->w2ru, sizeof r->w2ru);
  lk = vhd_utf8_to_utf16 (r->pabs, false, r->w2ku, sizeof r->w2ku);
  /* The parent name is the parent's file name, as blktap writes it: its
   * checker requires it to equal the last component of every W2ru, W2ku
   * and MacX locator.  (The field holds 256 UTF-16 units.) */
  ln = vhd_utf8_to_utf16 (strrchr (r->pabs, '/') + 1, true, r->name,
                          sizeof r->name);
  if (lr <= 0 || lk <= 0 || ln < 0) {
    sxm_error ("%s: parent path is not valid UTF-8, longer than 4096 "
               "characters, or its file name longer than 256", r->pabs);
    goto out;
  }
  r->name_len = ln;
  r->loc[0].code = "W2ru";
  r->loc[0].data = r->w2ru;
  r->loc[0].len = lr;
  r->loc[1].code = "W2ku";
  r->loc[1].data = r->w2ku;
  r->loc[1].len = lk;
  r->loc[2].code = "MacX";
  r->loc[2].data = (const uint8_t *) r->url;
  r->loc[2].len = strlen (r->url);
  ret = 0;
 out:
  free (cdir);
  free (ccopy);
  free (rel);
  if (ret == -1)
    vhd_parent_refs_free (r);
  return ret;
}

void
vhd_parent_refs_free (struct vhd_parent_refs *r)
{
  free (r->url);
  free (r->pabs);
  r->url = r->pabs = NULL;
}

int
vhd_snapshot (const char *parent_path, const char *child_path,
              const uint8_t uuid[16])
{
  struct vhd_layer *parent;
  struct vhd_parent_refs refs;
  uint8_t header[VHD_HEADER_SIZE];
  struct image_part locs[3];
  uint32_t block_size;
  int ret = -1;

  parent = vhd_open_chain (parent_path, VHD_SIZE_CURRENT);
  if (!parent)
    return -1;
  if (vhd_parent_refs (child_path, parent_path, &refs) == -1) {
    vhd_close_chain (parent);
    return -1;
  }
  block_size = parent->footer.type == VHD_TYPE_FIXED ? 2 << 20
                                                     : parent->block_size;
  if (check_create_args (child_path, parent->size, block_size) == -1)
    goto out;

  {
    uint64_t off = 1536 + (((uint64_t) (parent->size + block_size - 1) /
                            block_size) * 4 + VHD_SECTOR - 1) / VHD_SECTOR *
                   VHD_SECTOR;
    int i;

    memset (header, 0, sizeof header);
    memcpy (header + 40, parent->footer.uuid, 16);
    be32_store (header + 56, refs.mtime);
    memcpy (header + 64, refs.name, refs.name_len);
    for (i = 0; i < 3; i++) {
      uint8_t *e = header + 576 + 24 * i;
      uint32_t space = (refs.loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR
                       * VHD_SECTOR;
      memcpy (e, refs.loc[i].code, 4);
      be32_store (e + 4, space);        /* bytes, as Hyper-V writes it */
      be32_store (e + 8, refs.loc[i].len);
      be64_store (e + 16, off);
      locs[i] = (struct image_part) { off, refs.loc[i].data,
                                      refs.loc[i].len };
      off += space;
    }
  }
  ret = create_sparse (child_path, parent->size, block_size, uuid, header,
                       locs, 3, VHD_TYPE_DIFF);
 out:
  vhd_close_chain (parent);
  vhd_parent_refs_free (&refs);
  return ret;
}

void
vhd_uuid_random (uint8_t uuid[16])
{
  size_t got = 0;

  while (got < 16) {
    ssize_t r = getrandom (uuid + got, 16 - got, 0);
    if (r > 0)
      got += r;
    else if (errno != EINTR)
      abort ();                 /* no entropy source at all: cannot name */
  }
  uuid[6] = (uuid[6] & 0x0f) | 0x40;
  uuid[8] = (uuid[8] & 0x3f) | 0x80;
}

static int
sync_dir_of (const char *path)
{
  char *copy = strdup (path);
  int dfd, r = -1;

  if (!copy)
    return -1;
  dfd = open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    r = fsync (dfd);
    close (dfd);
  }
  free (copy);
  return r;
}

int
vhd_snapshot_in_place (const char *leaf, const char *base_in,
                       const uint8_t uuid[16], char **base_out)
{
  char *child = NULL, *base = NULL;
  int ret = -1;

  if (vhd_has_footer (leaf) != 1) {
    sxm_error ("%s: not a VHD (or cannot be read)", leaf);
    return -1;
  }
  if (base_in)
    base = strdup (base_in);
  else {
    char *dir = strdup (leaf), u[37];
    uint8_t bu[16];
    vhd_uuid_random (bu);
    vhd_uuid_str (bu, u);
    if (!dir || asprintf (&base, "%s/%s.vhd", dirname (dir), u) == -1)
      base = NULL;
    free (dir);
  }
  if (!base) {
    sxm_error ("%s: out of memory", leaf);
    return -1;
  }
  /* 1. A second name for today's file: from now on it is the base. */
  if (link (leaf, base) == -1) {
    sxm_error ("%s: cannot link it as %s: %s%s", leaf, base,
               strerror (errno), errno == EXDEV
               ? " (the base must be on the same file system)" : "");
    free (base);
    return -1;
  }
  if (sync_dir_of (base) == -1) {
    sxm_error ("%s: syncing its directory: %s", base, strerror (errno));
    goto undo;
  }
  /* 2. The new leaf, complete and synced, beside LEAF.  A file of this
   * name can only be a child made by an interrupted run: nothing names
   * it, so it goes. */
  if (asprintf (&child, "%s.snapshot-in-place", leaf) == -1) {
    child = NULL;
    sxm_error ("%s: out of memory", leaf);
    goto undo;
  }
  if (unlink (child) == -1 && errno != ENOENT) {
    sxm_error ("%s: removing a leftover: %s", child, strerror (errno));
    goto undo;
  }
  if (vhd_snapshot (base, child, uuid) == -1)
    goto undo;
  /* 3. One rename makes it the leaf. */
  if (rename (child, leaf) == -1) {
    sxm_error ("%s: renaming %s over it: %s", leaf, child, strerror (errno));
    unlink (child);
    goto undo;
  }
  if (sync_dir_of (leaf) == -1) {
    /* LEAF is the child now either way: report, do not undo. */
    sxm_error ("%s: syncing its directory: %s", leaf, strerror (errno));
    free (child);
    free (base);
    return -1;
  }
  free (child);
  *base_out = base;
  return 0;
 undo:
  /* LEAF still names the old file: the second name goes. */
  unlink (base);
  sync_dir_of (base);
  free (child);
  free (base);
  return ret;
}
