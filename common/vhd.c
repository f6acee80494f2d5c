/* VHD parser, chain opener, reader and allocation mapper.  See vhd.h. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bitmap.h"
#include "endian.h"
#include "log.h"
#include "pctdecode.h"
#include "vhd.h"
#include "vhd-internal.h"

/* All-ones bitmaps are the common case: qemu and Hyper-V set every bit of a
 * fully written block. */
const uint8_t vhd_bitmap_full_marker;

/* Bitmaps of up to this many allocated blocks are read at open time, so that
 * the first full-disk map is served from memory; larger images fill the
 * cache lazily. */
#define BITMAP_PRELOAD_MAX 65536

/* Footer field offsets (spec, "Hard Disk Footer Format"). */
enum {
  FT_COOKIE = 0, FT_FEATURES = 8, FT_VERSION = 12, FT_DATA_OFFSET = 16,
  FT_TIMESTAMP = 24, FT_CREATOR_APP = 28, FT_CREATOR_VER = 32,
  FT_CREATOR_OS = 36, FT_ORIG_SIZE = 40, FT_CUR_SIZE = 48, FT_GEOMETRY = 56,
  FT_TYPE = 60, FT_CHECKSUM = 64, FT_UUID = 68, FT_SAVED_STATE = 84,
};

/* Dynamic header field offsets (spec, "Dynamic Disk Header Format"). */
enum {
  HD_COOKIE = 0, HD_DATA_OFFSET = 8, HD_TABLE_OFFSET = 16, HD_VERSION = 24,
  HD_MAX_ENTRIES = 28, HD_BLOCK_SIZE = 32, HD_CHECKSUM = 36,
  HD_PARENT_UUID = 40, HD_PARENT_TS = 56, HD_PARENT_NAME = 64,
  HD_LOCATORS = 576, HD_LOCATOR_SIZE = 24,
};

static __thread bool open_invalid;
static __thread bool open_parent_failed;
static __thread bool open_without_parents;     /* vhd_open_alone */

bool
vhd_last_open_was_invalid (void)
{
  return open_invalid;
}

bool
vhd_last_open_parent_failed (void)
{
  return open_parent_failed;
}

/* Report a bad field: "FILE: WHAT (field NAME at offset N)". */
static void __attribute__ ((format (printf, 4, 5)))
bad (const char *path, const char *field, uint64_t offset,
     const char *fmt, ...)
{
  char what[512];
  va_list ap;

  if (!path)                    /* quiet: the caller only wants yes/no */
    return;
  open_invalid = true;
  va_start (ap, fmt);
  vsnprintf (what, sizeof what, fmt, ap);
  va_end (ap);
  sxm_error ("%s: %s (field '%s' at offset %" PRIu64 ")",
             path, what, field, offset);
}

uint32_t
vhd_checksum (const uint8_t *buf, size_t len, size_t skip_offset)
{
  uint32_t sum = 0;
  size_t i;

  for (i = 0; i < len; i++)
    if (i < skip_offset || i >= skip_offset + 4)
      sum += buf[i];
  return ~sum;
}

const char *
vhd_type_name (uint32_t type)
{
  switch (type) {
  case VHD_TYPE_FIXED: return "fixed";
  case VHD_TYPE_DYNAMIC: return "dynamic";
  case VHD_TYPE_DIFF: return "differencing";
  default: return "unknown";
  }
}

void
vhd_uuid_str (const uint8_t u[16], char out[37])
{
  snprintf (out, 37,
            "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
            u[10], u[11], u[12], u[13], u[14], u[15]);
}

ssize_t
vhd_utf16_to_utf8 (const uint8_t *in, size_t inlen, bool big_endian,
                   char *out, size_t outlen)
{
  size_t i, o = 0;

  if (outlen == 0)
    return -1;
  for (i = 0; i + 1 < inlen; i += 2) {
    uint32_t c = big_endian ? (uint32_t) (in[i] << 8 | in[i + 1])
                            : (uint32_t) (in[i + 1] << 8 | in[i]);
    char enc[4];
    size_t n;

    if (c == 0)
      break;
    if (c >= 0xd800 && c <= 0xdbff) {           /* high surrogate */
      uint32_t lo;
      if (i + 3 >= inlen)
        goto malformed;
      lo = big_endian ? (uint32_t) (in[i + 2] << 8 | in[i + 3])
                      : (uint32_t) (in[i + 3] << 8 | in[i + 2]);
      if (lo < 0xdc00 || lo > 0xdfff)
        goto malformed;
      c = 0x10000 + ((c - 0xd800) << 10) + (lo - 0xdc00);
      i += 2;
    }
    else if (c >= 0xdc00 && c <= 0xdfff)
      goto malformed;

    if (c < 0x80) {
      enc[0] = c; n = 1;
    }
    else if (c < 0x800) {
      enc[0] = 0xc0 | (c >> 6); enc[1] = 0x80 | (c & 0x3f); n = 2;
    }
    else if (c < 0x10000) {
      enc[0] = 0xe0 | (c >> 12); enc[1] = 0x80 | ((c >> 6) & 0x3f);
      enc[2] = 0x80 | (c & 0x3f); n = 3;
    }
    else {
      enc[0] = 0xf0 | (c >> 18); enc[1] = 0x80 | ((c >> 12) & 0x3f);
      enc[2] = 0x80 | ((c >> 6) & 0x3f); enc[3] = 0x80 | (c & 0x3f); n = 4;
    }
    if (o + n >= outlen)
      goto malformed;
    memcpy (out + o, enc, n);
    o += n;
  }
  out[o] = '\0';
  return o;

 malformed:
  out[o] = '\0';
  return -1;
}

int
vhd_footer_parse (const uint8_t *b, struct vhd_footer *f,
                  const char *path, uint64_t where)
{
  uint32_t sum;

  if (memcmp (b + FT_COOKIE, "conectix", 8) != 0) {
    char shown[9];
    int i;
    for (i = 0; i < 8; i++)
      shown[i] = b[i] >= 0x20 && b[i] < 0x7f ? b[i] : '.';
    shown[8] = '\0';
    bad (path, "cookie", where + FT_COOKIE,
         "no VHD footer: found \"%s\", expected \"conectix\" "
         "(not a VHD, or truncated)", shown);
    return -1;
  }
  memset (f, 0, sizeof *f);
  f->features = be32_load (b + FT_FEATURES);
  f->version = be32_load (b + FT_VERSION);
  f->data_offset = be64_load (b + FT_DATA_OFFSET);
  f->timestamp = be32_load (b + FT_TIMESTAMP);
  memcpy (f->creator_app, b + FT_CREATOR_APP, 4);
  f->creator_version = be32_load (b + FT_CREATOR_VER);
  memcpy (f->creator_os, b + FT_CREATOR_OS, 4);
  f->original_size = be64_load (b + FT_ORIG_SIZE);
  f->current_size = be64_load (b + FT_CUR_SIZE);
  f->cylinders = be16_load (b + FT_GEOMETRY);
  f->heads = b[FT_GEOMETRY + 2];
  f->sectors_per_track = b[FT_GEOMETRY + 3];
  f->type = be32_load (b + FT_TYPE);
  f->checksum = be32_load (b + FT_CHECKSUM);
  memcpy (f->uuid, b + FT_UUID, 16);
  f->saved_state = b[FT_SAVED_STATE];

  sum = vhd_checksum (b, VHD_FOOTER_SIZE, FT_CHECKSUM);
  if (sum != f->checksum) {
    bad (path, "checksum", where + FT_CHECKSUM,
         "footer checksum mismatch: stored 0x%08" PRIx32
         ", computed 0x%08" PRIx32, f->checksum, sum);
    return -1;
  }
  if ((f->version >> 16) != 1) {
    bad (path, "file_format_version", where + FT_VERSION,
         "unsupported footer version 0x%08" PRIx32 " (expected 1.x)",
         f->version);
    return -1;
  }
  if (f->type != VHD_TYPE_FIXED && f->type != VHD_TYPE_DYNAMIC &&
      f->type != VHD_TYPE_DIFF) {
    bad (path, "disk_type", where + FT_TYPE,
         "unsupported disk type %" PRIu32
         " (expected 2 fixed, 3 dynamic or 4 differencing)", f->type);
    return -1;
  }
  return 0;
}

/* The virtual size rules.  VHD stores the size twice, as CHS geometry and
 * as the footer's current size, and writers disagree on which one counts:
 * Virtual PC sizes disks by geometry (cylinders x heads x sectors x 512,
 * which cannot express every size), while Hyper-V, Disk2vhd, XenServer
 * (blktap), XenConverter and qemu with force_size use the current size,
 * and Xen's tapdisk presents the current size whatever the creator.
 *
 * CURRENT: the current size.  CHS: the geometry's size, except that the
 * maximum geometry (65535 x 16 x 255 sectors) means "too large for CHS",
 * the current size (as qemu reads it).  QEMU: qemu's vpc driver, so that "qemu-img
 * info" agrees: the current size when the creator is "win ", "d2v ",
 * "tap\0", "CTXS" or "qem2" or the geometry is the maximum, CHS otherwise
 * (exact 4-byte comparisons, as qemu's).  All rounded down to sectors. */
uint64_t
vhd_chs_size (const struct vhd_footer *f)
{
  return (uint64_t) f->cylinders * f->heads * f->sectors_per_track
         * VHD_SECTOR;
}

uint64_t
vhd_virtual_size (const struct vhd_footer *f, enum vhd_size_rule rule)
{
  static const char *const current_creators[] = {
    "win ", "d2v ", "tap", "CTXS", "qem2", NULL
  };
  bool use_current = rule == VHD_SIZE_CURRENT;
  int i;

  if (rule == VHD_SIZE_QEMU)
    for (i = 0; current_creators[i]; i++)
      /* memcmp over 4 bytes: "tap" matches only "tap\0", as in blktap. */
      if (memcmp (f->creator_app, current_creators[i], 4) == 0)
        use_current = true;
  if (vhd_chs_size (f) == 65535ULL * 16 * 255 * VHD_SECTOR)
    use_current = true;         /* the product, as qemu compares it */

  if (use_current)
    return f->current_size / VHD_SECTOR * VHD_SECTOR;
  return vhd_chs_size (f);
}

const char *
vhd_size_rule_name (enum vhd_size_rule r)
{
  return r == VHD_SIZE_CHS ? "chs" : r == VHD_SIZE_QEMU ? "qemu" : "current";
}

int
vhd_size_rule_parse (const char *s, enum vhd_size_rule *r)
{
  if (strcmp (s, "current") == 0)
    *r = VHD_SIZE_CURRENT;
  else if (strcmp (s, "chs") == 0)
    *r = VHD_SIZE_CHS;
  else if (strcmp (s, "qemu") == 0 || strcmp (s, "auto") == 0)
    *r = VHD_SIZE_QEMU;
  else
    return -1;
  return 0;
}

/* A region of the file that blocks must not overlap. */
struct region {
  uint64_t start, end;
  const char *what;
};

struct bat_ref {
  uint64_t start;
  uint32_t index;
};

static int
compare_bat_ref (const void *a, const void *b)
{
  const struct bat_ref *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

static int
header_parse (struct vhd_layer *l, const uint8_t *b, uint64_t where)
{
  struct vhd_header *h = &l->header;
  uint32_t sum;
  int i;

  if (memcmp (b + HD_COOKIE, "cxsparse", 8) != 0) {
    bad (l->path, "cookie", where + HD_COOKIE,
         "dynamic disk header not found: cookie is not \"cxsparse\"");
    return -1;
  }
  h->data_offset = be64_load (b + HD_DATA_OFFSET);
  h->table_offset = be64_load (b + HD_TABLE_OFFSET);
  h->version = be32_load (b + HD_VERSION);
  h->max_table_entries = be32_load (b + HD_MAX_ENTRIES);
  h->block_size = be32_load (b + HD_BLOCK_SIZE);
  h->checksum = be32_load (b + HD_CHECKSUM);
  memcpy (h->parent_uuid, b + HD_PARENT_UUID, 16);
  h->parent_timestamp = be32_load (b + HD_PARENT_TS);
  if (vhd_utf16_to_utf8 (b + HD_PARENT_NAME, 512, true, h->parent_name,
                         sizeof h->parent_name) == -1)
    sxm_debug ("%s: parent unicode name is not valid UTF-16BE; ignored",
               l->path);
  for (i = 0; i < VHD_NR_LOCATORS; i++) {
    const uint8_t *e = b + HD_LOCATORS + i * HD_LOCATOR_SIZE;
    memcpy (h->loc[i].code, e, 4);
    h->loc[i].code[4] = '\0';
    h->loc[i].data_space = be32_load (e + 4);
    h->loc[i].data_length = be32_load (e + 8);
    h->loc[i].data_offset = be64_load (e + 16);
  }

  sum = vhd_checksum (b, VHD_HEADER_SIZE, HD_CHECKSUM);
  if (sum != h->checksum) {
    bad (l->path, "checksum", where + HD_CHECKSUM,
         "dynamic header checksum mismatch: stored 0x%08" PRIx32
         ", computed 0x%08" PRIx32, h->checksum, sum);
    return -1;
  }
  if (h->data_offset != UINT64_MAX) {
    bad (l->path, "data_offset", where + HD_DATA_OFFSET,
         "dynamic header data offset is 0x%" PRIx64
         ", must be 0xffffffffffffffff", h->data_offset);
    return -1;
  }
  if ((h->version >> 16) != 1) {
    bad (l->path, "header_version", where + HD_VERSION,
         "unsupported dynamic header version 0x%08" PRIx32, h->version);
    return -1;
  }
  if (h->block_size < VHD_SECTOR || h->block_size > VHD_MAX_BLOCK ||
      (h->block_size & (h->block_size - 1)) != 0) {
    bad (l->path, "block_size", where + HD_BLOCK_SIZE,
         "block size %" PRIu32 " is not a power of two between 512 and %u",
         h->block_size, VHD_MAX_BLOCK);
    return -1;
  }
  return 0;
}

/* Validate the BAT against the file: every allocated block (bitmap + data)
 * lies inside the data area, outside every metadata region, and no two
 * blocks overlap. */
static int
bat_check (struct vhd_layer *l, const struct region *meta, size_t nmeta)
{
  uint64_t span = (uint64_t) l->bitmap_bytes + l->block_size;
  uint64_t data_end = l->data_limit;
  struct bat_ref *refs;
  size_t n = 0, i, j;
  int ret = -1;

  refs = malloc (sizeof *refs * (l->allocated ? l->allocated : 1));
  if (!refs) {
    sxm_error ("%s: out of memory checking the BAT", l->path);
    return -1;
  }
  for (i = 0; i < l->nblocks; i++) {
    uint64_t start, entry_off = l->header.table_offset + 4 * (uint64_t) i;

    if (l->bat[i] == VHD_BAT_UNUSED)
      continue;
    start = (uint64_t) l->bat[i] * VHD_SECTOR;
    if (start + span > data_end) {
      bad (l->path, "BAT entry", entry_off,
           "block %zu at offset %" PRIu64 " (%" PRIu64 " bytes with its "
           "bitmap) extends past the data area ending at %" PRIu64
           " (file truncated?)", i, start, span, data_end);
      goto out;
    }
    for (j = 0; j < nmeta; j++)
      if (start < meta[j].end && meta[j].start < start + span) {
        bad (l->path, "BAT entry", entry_off,
             "block %zu at offset %" PRIu64 " overlaps the %s at %" PRIu64
             "..%" PRIu64, i, start, meta[j].what, meta[j].start,
             meta[j].end);
        goto out;
      }
    refs[n].start = start;
    refs[n].index = i;
    n++;
  }
  qsort (refs, n, sizeof *refs, compare_bat_ref);
  for (i = 1; i < n; i++)
    if (refs[i - 1].start + span > refs[i].start) {
      bad (l->path, "BAT entry",
           l->header.table_offset + 4 * (uint64_t) refs[i].index,
           "block %" PRIu32 " at offset %" PRIu64 " overlaps block %" PRIu32
           " at offset %" PRIu64, refs[i].index, refs[i].start,
           refs[i - 1].index, refs[i - 1].start);
      goto out;
    }
  ret = 0;
 out:
  free (refs);
  return ret;
}

/* Return block BLK's sector bitmap (allocated blocks only), reading it on
 * first use.  Publication is lock-free: racing readers may both read it,
 * one wins the compare-and-swap and the other frees its copy. */
const uint8_t *
vhd_get_bitmap (struct vhd_layer *l, uint32_t blk)
{
  _Atomic (uint8_t *) *slot = (_Atomic (uint8_t *) *) &l->bitmaps[blk];
  uint8_t *p = atomic_load_explicit (slot, memory_order_acquire);
  uint8_t *expected = NULL;
  uint64_t where = (uint64_t) l->bat[blk] * VHD_SECTOR;

  if (p)
    return p;
  p = malloc (l->bitmap_bytes);
  if (!p)
    return NULL;
  if (vhd_pread_full (l->fd, p, l->bitmap_bytes, where) == -1) {
    int e = errno;
    sxm_error ("%s: reading the sector bitmap of block %" PRIu32
               " at offset %" PRIu64 ": %s", l->path, blk, where,
               strerror (e));
    free (p);
    errno = e ? e : EIO;
    return NULL;
  }
  if (bitmap_all_set (p, l->block_size / VHD_SECTOR)) {
    free (p);
    p = VHD_BITMAP_FULL;
  }
  if (!atomic_compare_exchange_strong_explicit (slot, &expected, p,
                                                memory_order_acq_rel,
                                                memory_order_acquire)) {
    if (p != VHD_BITMAP_FULL)
      free (p);
    p = expected;
  }
  return p;
}

static int
read_locator (struct vhd_layer *l, int i, char *out, size_t outlen)
{
  const struct vhd_locator *loc = &l->header.loc[i];
  uint64_t field = l->footer.data_offset + HD_LOCATORS + i * HD_LOCATOR_SIZE;
  uint8_t *raw;
  ssize_t r = -1;

  if (loc->data_length == 0 || loc->data_length > VHD_MAX_LOCATOR) {
    bad (l->path, "parent_locator.data_length", field + 8,
         "parent locator %d (%s) has data length %" PRIu32
         " (expected 1..%d)", i, loc->code, loc->data_length,
         VHD_MAX_LOCATOR);
    return -1;
  }
  if (loc->data_offset > l->data_limit ||
      loc->data_length > l->data_limit - loc->data_offset) {
    bad (l->path, "parent_locator.data_offset", field + 16,
         "parent locator %d (%s) data at %" PRIu64 "+%" PRIu32
         " lies outside the file", i, loc->code, loc->data_offset,
         loc->data_length);
    return -1;
  }
  raw = malloc (loc->data_length);
  if (!raw)
    return -1;
  if (vhd_pread_full (l->fd, raw, loc->data_length, loc->data_offset) == -1) {
    sxm_error ("%s: reading parent locator %d: %s", l->path, i, strerror (errno));
    goto out;
  }
  if (strcmp (loc->code, "W2ru") == 0 || strcmp (loc->code, "W2ku") == 0)
    r = vhd_utf16_to_utf8 (raw, loc->data_length, false, out, outlen);
  else if (loc->data_length < outlen) {          /* MacX, Wi2r, Wi2k */
    memcpy (out, raw, loc->data_length);
    out[loc->data_length] = '\0';
    r = strlen (out);
  }
  if (r == -1)
    bad (l->path, "parent_locator.data", loc->data_offset,
         "parent locator %d (%s) is not a valid path", i, loc->code);
 out:
  free (raw);
  return r == -1 ? -1 : 0;
}

/* Turn locator text into a host path.  Windows separators become '/';
 * drive-letter paths cannot exist here and are skipped; MacX holds a
 * file:// URL, percent-encoded.  Relative paths are relative to the
 * directory of the child. */
static char *
locator_path (const struct vhd_layer *l, const char *code, const char *text)
{
  char *p, *q, *res;
  const char *dir_end;
  size_t dirlen;

  if (strcmp (code, "MacX") == 0) {
    if (strncmp (text, "file://", 7) != 0)
      return NULL;
    text += 7;
    if (strncmp (text, "localhost/", 10) == 0)
      text += 9;
  }
  p = strdup (text);
  if (!p)
    return NULL;
  if (strcmp (code, "MacX") == 0) {              /* percent-decoding */
    for (q = p; *text; q++, text++) {
      int v = pct_decode (text);
      if (v > 0) {
        *q = v;
        text += 2;
      }
      else
        *q = *text;
    }
    *q = '\0';
  }
  else
    for (q = p; *q; q++)
      if (*q == '\\')
        *q = '/';
  if (p[0] && p[1] == ':') {                     /* "C:/..." */
    free (p);
    return NULL;
  }
  if (p[0] == '/' || p[0] == '\0')
    return p[0] ? p : (free (p), NULL);

  dir_end = strrchr (l->path, '/');
  dirlen = dir_end ? (size_t) (dir_end - l->path) : 1;
  if (asprintf (&res, "%.*s/%s", (int) dirlen, dir_end ? l->path : ".",
                p[0] == '.' && p[1] == '/' ? p + 2 : p) == -1)
    res = NULL;
  free (p);
  return res;
}

static struct vhd_layer *open_layer (const char *path, enum vhd_size_rule,
                                     unsigned depth, dev_t *devs, ino_t *inos,
                                     bool rw);

int
vhd_has_footer (const char *path)
{
  uint8_t f[VHD_FOOTER_SIZE];
  struct stat st;
  bool from_copy;
  int fd = open (path, O_RDONLY | O_CLOEXEC), r = -1;

  if (fd == -1)
    return -1;
  if (fstat (fd, &st) == 0) {
    uint64_t size = S_ISBLK (st.st_mode) ? (uint64_t) lseek (fd, 0, SEEK_END)
                    : (uint64_t) st.st_size;
    if (size < VHD_FOOTER_SIZE)
      r = 0;
    else if (vhd_locate_footer (fd, size, f, &from_copy) == 0)
      r = memcmp (f, "conectix", 8) == 0;
  }
  close (fd);
  return r;
}

/* Open PATH as the raw parent of L (see struct vhd_layer's raw): a
 * regular file or block device, read-only, its size its length. */
static struct vhd_layer *
open_raw_parent (const struct vhd_layer *l, const char *path,
                 dev_t *devs, ino_t *inos)
{
  struct vhd_layer *p;
  struct stat st;

  if (l->depth + 1 >= VHD_MAX_CHAIN) {
    open_invalid = true;
    sxm_error ("%s: differencing chain deeper than %d images", path,
               VHD_MAX_CHAIN);
    return NULL;
  }
  p = calloc (1, sizeof *p);
  if (!p || !(p->path = strdup (path))) {
    free (p);
    sxm_error ("%s: out of memory", path);
    return NULL;
  }
  p->depth = l->depth + 1;
  p->raw = true;
  p->fd = open (path, O_RDONLY | O_CLOEXEC);
  if (p->fd == -1 || fstat (p->fd, &st) == -1) {
    sxm_error ("%s: %s", path, strerror (errno));
    goto fail;
  }
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (p->fd, 0, SEEK_END);
    if (end == -1) {
      sxm_error ("%s: cannot find the size of the block device: %s", path,
                 strerror (errno));
      goto fail;
    }
    p->file_size = end;
  }
  else if (S_ISREG (st.st_mode))
    p->file_size = st.st_size;
  else {
    sxm_error ("%s: not a regular file or block device", path);
    goto fail;
  }
  devs[p->depth] = st.st_dev;
  inos[p->depth] = st.st_ino;
  p->footer.type = VHD_TYPE_FIXED;
  p->footer.current_size = p->file_size;
  p->size = p->file_size;
  p->data_limit = p->file_size;
  p->footer_at = UINT64_MAX;
  return p;

 fail:
  vhd_close_chain (p);
  return NULL;
}

/* Find and open the parent of differencing disk L.  Locators are tried
 * relative ones first (they survive moving a whole SR directory), then
 * absolute, then the rest; the first whose file exists and carries the
 * expected UUID is used.  A parent UUID of all zeros names a raw parent
 * (a file with no VHD footer): it has no UUID to check, so that is the
 * only case in which one is accepted. */
static int
open_parent (struct vhd_layer *l, enum vhd_size_rule rule,
             dev_t *devs, ino_t *inos)
{
  static const char *const order[] = { "W2ru", "MacX", "W2ku", "Wi2r",
                                       "Wi2k", NULL };
  static const uint8_t zero_uuid[16];
  char want[37], tried[2048] = "", mismatch[1024] = "";
  size_t tlen = 0;
  int o, i;
  bool raw_wanted = memcmp (l->header.parent_uuid, zero_uuid, 16) == 0;

  vhd_uuid_str (l->header.parent_uuid, want);
  for (o = 0; order[o]; o++)
    for (i = 0; i < VHD_NR_LOCATORS; i++) {
      char text[4096];
      char *path;
      struct stat st;
      struct vhd_layer *p;

      if (strcmp (l->header.loc[i].code, order[o]) != 0)
        continue;
      if (read_locator (l, i, text, sizeof text) == -1)
        return -1;
      path = locator_path (l, order[o], text);
      tlen += snprintf (tried + tlen, tlen < sizeof tried ? sizeof tried - tlen : 0,
                        "%s%s \"%s\"", tlen ? ", " : "", order[o], text);
      if (tlen >= sizeof tried)
        tlen = sizeof tried - 1;
      if (!path || stat (path, &st) == -1) {
        free (path);
        continue;
      }
      for (unsigned d = 0; d <= l->depth; d++)
        if (devs[d] == st.st_dev && inos[d] == st.st_ino) {
          open_invalid = true;
          sxm_error ("%s: differencing chain loop: parent %s (via %s) is "
                     "already in the chain", l->path, path, order[o]);
          free (path);
          return -1;
        }
      if (raw_wanted && vhd_has_footer (path) == 0) {
        p = open_raw_parent (l, path, devs, inos);
        if (!p) {
          free (path);
          return -1;
        }
        sxm_debug ("%s: parent %s (via %s) is a raw file; its all-zero "
                   "parent UUID accepted, nothing to check it against",
                   l->path, path, order[o]);
        if (asprintf (&l->parent_via, "%s %s", order[o], text) == -1)
          l->parent_via = NULL;
        l->parent = p;
        free (path);
        return 0;
      }
      p = open_layer (path, rule, l->depth + 1, devs, inos, false);
      if (!p) {
        sxm_error ("%s: cannot open parent %s (found via locator %s)",
                   l->path, path, order[o]);
        open_parent_failed = true;
        free (path);
        return -1;
      }
      if (memcmp (p->footer.uuid, l->header.parent_uuid, 16) != 0) {
        /* Maybe a stale locator: remember why, and try the next one. */
        char got[37];
        vhd_uuid_str (p->footer.uuid, got);
        snprintf (mismatch, sizeof mismatch,
                  "%s: parent %s (via locator %s) has UUID %s, but the "
                  "child expects parent UUID %s (field 'parent_unique_id' "
                  "at offset %" PRIu64 ")", l->path, path, order[o], got,
                  want, l->footer.data_offset + HD_PARENT_UUID);
        vhd_close_chain (p);
        free (path);
        continue;
      }
      if (p->footer.timestamp != l->header.parent_timestamp)
        sxm_debug ("%s: parent %s time stamp %" PRIu32 " differs from "
                   "the recorded %" PRIu32 " (UUID matches; accepted)",
                   l->path, path, p->footer.timestamp,
                   l->header.parent_timestamp);
      if (asprintf (&l->parent_via, "%s %s", order[o], text) == -1)
        l->parent_via = NULL;
      l->parent = p;
      free (path);
      return 0;
    }

  open_parent_failed = true;
  if (mismatch[0]) {
    open_invalid = true;
    sxm_error ("%s", mismatch);
    return -1;
  }
  /* No locator named an existing file (each one that existed has
   * returned or left a mismatch above): the parent is missing, which is
   * a system error like a missing image, not corruption.  Only an image
   * with no usable locator at all is invalid. */
  open_invalid = tlen == 0;
  sxm_error ("%s: parent \"%s\" (UUID %s) not found; locators tried: %s",
             l->path, l->header.parent_name, want,
             tlen ? tried : "none usable");
  return -1;
}

static int
open_dynamic (struct vhd_layer *l, enum vhd_size_rule rule,
              dev_t *devs, ino_t *inos)
{
  uint8_t hbuf[VHD_HEADER_SIZE];
  struct vhd_header *h = &l->header;
  uint64_t hoff = l->footer.data_offset;
  uint64_t data_end = l->data_limit;
  uint64_t bat_bytes, needed;
  struct region meta[3 + VHD_NR_LOCATORS];
  size_t nmeta = 0;
  uint32_t i;
  int n;

  if (hoff < VHD_FOOTER_SIZE || hoff > data_end ||
      data_end - hoff < VHD_HEADER_SIZE) {
    bad (l->path, "data_offset", data_end + FT_DATA_OFFSET,
         "dynamic header offset %" PRIu64 " is outside %u..%" PRIu64,
         hoff, VHD_FOOTER_SIZE, data_end - VHD_HEADER_SIZE);
    return -1;
  }
  if (vhd_pread_full (l->fd, hbuf, sizeof hbuf, hoff) == -1) {
    sxm_error ("%s: reading dynamic header at %" PRIu64 ": %s", l->path,
               hoff, strerror (errno));
    return -1;
  }
  if (header_parse (l, hbuf, hoff) == -1)
    return -1;

  l->block_size = h->block_size;
  l->block_shift = __builtin_ctz (h->block_size);
  l->bitmap_bytes = ((h->block_size / VHD_SECTOR + 7) / 8 + VHD_SECTOR - 1)
                    / VHD_SECTOR * VHD_SECTOR;
  needed = (l->size + h->block_size - 1) >> l->block_shift;
  if (h->max_table_entries < needed) {
    bad (l->path, "max_table_entries", hoff + HD_MAX_ENTRIES,
         "%" PRIu32 " BAT entries of %" PRIu32 " bytes cannot cover the "
         "virtual size %" PRIu64 " (%" PRIu64 " needed)",
         h->max_table_entries, h->block_size, l->size, needed);
    return -1;
  }
  if (needed > VHD_MAX_BAT) {
    bad (l->path, "block_size", hoff + HD_BLOCK_SIZE,
         "block size %" PRIu32 " needs %" PRIu64 " BAT entries for %" PRIu64
         " bytes; more than %u is not supported", h->block_size, needed,
         l->size, VHD_MAX_BAT);
    return -1;
  }
  l->nblocks = needed;
  bat_bytes = 4 * (uint64_t) h->max_table_entries;
  if (h->table_offset > data_end || bat_bytes > data_end - h->table_offset) {
    bad (l->path, "table_offset", hoff + HD_TABLE_OFFSET,
         "BAT at %" PRIu64 " (%" PRIu64 " bytes) extends past the data "
         "area ending at %" PRIu64, h->table_offset, bat_bytes, data_end);
    return -1;
  }
  if (h->table_offset < hoff + VHD_HEADER_SIZE &&
      hoff < h->table_offset + bat_bytes) {
    bad (l->path, "table_offset", hoff + HD_TABLE_OFFSET,
         "BAT at %" PRIu64 " overlaps the dynamic header at %" PRIu64,
         h->table_offset, hoff);
    return -1;
  }
  if (h->table_offset < VHD_FOOTER_SIZE) {
    bad (l->path, "table_offset", hoff + HD_TABLE_OFFSET,
         "BAT at %" PRIu64 " overlaps the footer copy at 0", h->table_offset);
    return -1;
  }

  /* Read the BAT entries in use.  calloc() of the bitmap cache is not
   * touched until used, so it costs address space, not memory. */
  l->bat = malloc (4 * (size_t) (l->nblocks ? l->nblocks : 1));
  l->bitmaps = calloc (l->nblocks ? l->nblocks : 1, sizeof *l->bitmaps);
  if (!l->bat || !l->bitmaps) {
    sxm_error ("%s: out of memory for a %" PRIu32 "-entry BAT", l->path,
               l->nblocks);
    return -1;
  }
  if (vhd_pread_full (l->fd, l->bat, 4 * (size_t) l->nblocks,
                  h->table_offset) == -1) {
    sxm_error ("%s: reading the BAT at %" PRIu64 ": %s", l->path,
               h->table_offset, strerror (errno));
    return -1;
  }
  for (i = 0; i < l->nblocks; i++) {
    l->bat[i] = be32_load ((const uint8_t *) &l->bat[i]);
    if (l->bat[i] != VHD_BAT_UNUSED)
      l->allocated++;
  }

  meta[nmeta++] = (struct region) { 0, VHD_FOOTER_SIZE, "footer copy" };
  meta[nmeta++] = (struct region) { hoff, hoff + VHD_HEADER_SIZE,
                                    "dynamic header" };
  meta[nmeta++] = (struct region) { h->table_offset,
                                    h->table_offset + bat_bytes, "BAT" };
  if (l->footer.type == VHD_TYPE_DIFF)
    for (n = 0; n < VHD_NR_LOCATORS; n++) {
      const struct vhd_locator *loc = &h->loc[n];
      uint64_t len = loc->data_length;
      if (loc->code[0] == '\0' || len == 0)
        continue;
      meta[nmeta++] = (struct region) { loc->data_offset,
                                        loc->data_offset + len,
                                        "parent locator data" };
    }
  if (bat_check (l, meta, nmeta) == -1)
    return -1;

  if (l->allocated <= BITMAP_PRELOAD_MAX)
    for (i = 0; i < l->nblocks; i++)
      if (l->bat[i] != VHD_BAT_UNUSED && !vhd_get_bitmap (l, i))
        return -1;

  if (l->footer.type == VHD_TYPE_DIFF && !open_without_parents)
    return open_parent (l, rule, devs, inos);
  return 0;
}

static void
close_layer (struct vhd_layer *l)
{
  uint32_t i;

  if (l->writable)
    vhd_writer_fini (l);

  if (l->bitmaps)
    for (i = 0; i < l->nblocks; i++)
      if (l->bitmaps[i] != VHD_BITMAP_FULL)
        free (l->bitmaps[i]);
  free (l->bitmaps);
  free (l->bat);
  if (l->fd >= 0)
    close (l->fd);
  free (l->parent_via);
  free (l->path);
  free (l);
}

void
vhd_close_chain (struct vhd_layer *top)
{
  while (top) {
    struct vhd_layer *p = top->parent;
    close_layer (top);
    top = p;
  }
}

/* Read the footer of an open image into FBUF: the one at the end, or, when
 * the end holds no footer cookie but offset 0 does, the copy at 0 (a writer
 * stopped between growing the file and rewriting the footer; sxm's writer
 * and qemu's both can).  *FROM_COPY says which.  -1 on I/O error. */
int
vhd_locate_footer (int fd, uint64_t file_size, uint8_t *fbuf, bool *from_copy)
{
  uint8_t head[VHD_FOOTER_SIZE];

  if (vhd_pread_full (fd, fbuf, VHD_FOOTER_SIZE,
                      file_size - VHD_FOOTER_SIZE) == -1)
    return -1;
  *from_copy = false;
  if (memcmp (fbuf, "conectix", 8) != 0 &&
      vhd_pread_full (fd, head, sizeof head, 0) == 0 &&
      memcmp (head, "conectix", 8) == 0) {
    memcpy (fbuf, head, VHD_FOOTER_SIZE);
    *from_copy = true;
  }
  return 0;
}

bool
vhd_is_child_of (const char *path, const uint8_t uuid[16])
{
  uint8_t f[VHD_FOOTER_SIZE], h[VHD_HEADER_SIZE];
  struct vhd_footer footer;
  struct stat st;
  bool from_copy, res = false;
  int fd = open (path, O_RDONLY | O_CLOEXEC);

  if (fd == -1)
    return false;
  if (fstat (fd, &st) == 0 && S_ISREG (st.st_mode) &&
      st.st_size >= VHD_FOOTER_SIZE + VHD_HEADER_SIZE &&
      vhd_locate_footer (fd, st.st_size, f, &from_copy) == 0 &&
      vhd_footer_parse (f, &footer, NULL, 0) == 0 &&
      footer.type == VHD_TYPE_DIFF &&
      footer.data_offset <= (uint64_t) st.st_size - VHD_HEADER_SIZE &&
      vhd_pread_full (fd, h, sizeof h, footer.data_offset) == 0 &&
      memcmp (h + HD_COOKIE, "cxsparse", 8) == 0)
    res = memcmp (h + HD_PARENT_UUID, uuid, 16) == 0;
  close (fd);
  return res;
}

/* The first offset in [from, to) of block BLK (allocated at file sector
 * SECT, or VHD_BAT_UNUSED) whose sector bitmap bit is set, or UINT64_MAX;
 * -1 on I/O error (reported).  Blocks past the BAT entries the layer uses
 * (l->nblocks) have no cached bitmap: read here. */
static int
first_allocated (struct vhd_layer *l, uint64_t blk, uint32_t sect,
                 uint64_t from, uint64_t to, uint64_t *hit)
{
  uint64_t base = blk << l->block_shift, s, s_end;
  const uint8_t *bm;
  uint8_t *own = NULL;

  *hit = UINT64_MAX;
  if (sect == VHD_BAT_UNUSED)
    return 0;
  if (blk < l->nblocks)
    bm = vhd_get_bitmap (l, blk);
  else if ((own = malloc (l->bitmap_bytes)) != NULL &&
           vhd_pread_full (l->fd, own, l->bitmap_bytes,
                           (uint64_t) sect * VHD_SECTOR) == 0)
    bm = own;
  else {
    sxm_error ("%s: reading the sector bitmap of block %" PRIu64 " at "
               "offset %" PRIu64 ": %s", l->path, blk,
               (uint64_t) sect * VHD_SECTOR, own ? strerror (errno)
               : "out of memory");
    free (own);
    return -1;
  }
  if (!bm)
    return -1;
  s = (from > base ? from - base : 0) / VHD_SECTOR;
  s_end = (to - base + VHD_SECTOR - 1) / VHD_SECTOR;
  if (s_end > l->block_size / VHD_SECTOR)
    s_end = l->block_size / VHD_SECTOR;
  for (; s < s_end; s++)
    if (bm == VHD_BITMAP_FULL || bitmap_get (bm, s)) {
      *hit = base + s * VHD_SECTOR;
      break;
    }
  free (own);
  return 0;
}

/* A size rule that exports less than the footer's current size must not
 * hide data: refuse the image if this layer holds any in [size, current
 * size).  Dynamic and differencing: a sector whose bitmap bit is set.
 * Fixed (every sector allocated): a byte that is not zero, so that a
 * Virtual PC image whose CHS size stops short of its current size can
 * still be served by its geometry.  The range is what CHS rounding cuts
 * off, at most one cylinder of a dynamic image's blocks; the BAT entries
 * past the used ones are read here only.  0, or -1 after bad(). */
static int
hidden_data_check (struct vhd_layer *l, enum vhd_size_rule rule,
                   uint64_t foot)
{
  uint64_t cur = l->footer.current_size / VHD_SECTOR * VHD_SECTOR;
  uint64_t hit = UINT64_MAX;

  if (l->size >= cur)
    return 0;
  if (l->footer.type == VHD_TYPE_FIXED) {
    uint64_t end = cur < l->data_limit ? cur : l->data_limit, off;
    uint8_t buf[64 * 1024];
    for (off = l->size; off < end && hit == UINT64_MAX; off += sizeof buf) {
      size_t n = end - off < sizeof buf ? end - off : sizeof buf, i;
      if (vhd_pread_full (l->fd, buf, n, off) == -1) {
        sxm_error ("%s: reading offset %" PRIu64 ": %s", l->path, off,
                   strerror (errno));
        return -1;
      }
      for (i = 0; i < n; i++)
        if (buf[i]) {
          hit = (off + i) / VHD_SECTOR * VHD_SECTOR;
          break;
        }
    }
  }
  else {
    uint64_t blk = l->size >> l->block_shift;
    uint64_t last = (cur - 1) >> l->block_shift;
    for (; blk <= last && hit == UINT64_MAX; blk++) {
      uint32_t sect;
      if (blk >= l->header.max_table_entries)
        break;          /* no BAT entry: nothing can be stored there */
      if (blk < l->nblocks)
        sect = l->bat[blk];
      else {
        uint8_t e[4];
        if (vhd_pread_full (l->fd, e, 4, l->header.table_offset + 4 * blk)
            == -1) {
          sxm_error ("%s: reading BAT entry %" PRIu64 ": %s", l->path, blk,
                     strerror (errno));
          return -1;
        }
        sect = be32_load (e);
      }
      if (first_allocated (l, blk, sect, l->size, cur, &hit) == -1)
        return -1;
    }
  }
  if (hit == UINT64_MAX)
    return 0;
  bad (l->path, "current_size", foot + FT_CUR_SIZE,
       "size_from=%s exports %" PRIu64 " bytes (CHS %u/%u/%u) but the "
       "footer's current size is %" PRIu64 " and data is stored at offset %"
       PRIu64 ": refusing to hide it (size_from=current exports it all)",
       vhd_size_rule_name (rule), l->size, l->footer.cylinders,
       l->footer.heads, l->footer.sectors_per_track, cur, hit);
  return -1;
}

static struct vhd_layer *
open_layer (const char *path, enum vhd_size_rule rule, unsigned depth,
            dev_t *devs, ino_t *inos, bool rw)
{
  uint8_t fbuf[VHD_FOOTER_SIZE];
  struct vhd_layer *l;
  struct stat st;
  uint64_t foot;
  bool from_copy;

  if (depth >= VHD_MAX_CHAIN) {
    open_invalid = true;
    sxm_error ("%s: differencing chain deeper than %d images", path,
               VHD_MAX_CHAIN);
    return NULL;
  }
  l = calloc (1, sizeof *l);
  if (!l || !(l->path = strdup (path))) {
    free (l);
    sxm_error ("%s: out of memory", path);
    return NULL;
  }
  l->depth = depth;
  l->fd = -1;
  if (rw) {
    l->fd = open (path, O_RDWR | O_CLOEXEC);
    if (l->fd >= 0)
      l->writable = true;
    else if (errno != EACCES && errno != EROFS && errno != EPERM)
      l->fd = -1;
  }
  if (l->fd == -1)
    l->fd = open (path, O_RDONLY | O_CLOEXEC);
  if (l->fd == -1) {
    sxm_error ("%s: %s", path, strerror (errno));
    goto fail;
  }
  if (fstat (l->fd, &st) == -1) {
    sxm_error ("%s: fstat: %s", path, strerror (errno));
    goto fail;
  }
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (l->fd, 0, SEEK_END);
    if (end == -1) {
      sxm_error ("%s: cannot find the size of the block device: %s", path, strerror (errno));
      goto fail;
    }
    l->file_size = end;
  }
  else if (S_ISREG (st.st_mode))
    l->file_size = st.st_size;
  else {
    sxm_error ("%s: not a regular file or block device", path);
    goto fail;
  }
  devs[depth] = st.st_dev;
  inos[depth] = st.st_ino;

  if (l->file_size < VHD_FOOTER_SIZE) {
    open_invalid = true;
    sxm_error ("%s: file is %" PRIu64 " bytes, too small for a VHD "
               "footer (512 bytes)", path, l->file_size);
    goto fail;
  }
  foot = l->file_size - VHD_FOOTER_SIZE;
  if (vhd_locate_footer (l->fd, l->file_size, fbuf, &from_copy) == -1) {
    sxm_error ("%s: reading the footer at %" PRIu64 ": %s", path, foot,
               strerror (errno));
    goto fail;
  }
  if (vhd_footer_parse (fbuf, &l->footer, path, from_copy ? 0 : foot) == -1)
    goto fail;
  memcpy (l->footer_buf, fbuf, VHD_FOOTER_SIZE);
  l->data_limit = foot;
  l->footer_at = foot;
  if (from_copy) {
    /* The copy is authoritative, the whole file is data area, and every
     * block is still checked against it. */
    if (l->footer.type == VHD_TYPE_FIXED) {
      bad (path, "disk_type", FT_TYPE, "footer copy at offset 0 claims a "
           "fixed disk, which has no copy; the end footer is missing");
      goto fail;
    }
    sxm_debug ("%s: no footer at the end (offset %" PRIu64 "); using the "
               "copy at offset 0", path, foot);
    l->data_limit = l->file_size;
    l->footer_at = UINT64_MAX;
  }
  if (l->footer.current_size > VHD_MAX_SIZE) {
    bad (path, "current_size", foot + FT_CUR_SIZE,
         "current size %" PRIu64 " exceeds the VHD maximum of %llu "
         "(2040 GiB)", l->footer.current_size, VHD_MAX_SIZE);
    goto fail;
  }
  l->size = vhd_virtual_size (&l->footer, rule);
  if (l->size > VHD_MAX_SIZE) {
    bad (path, "disk_geometry", foot + FT_GEOMETRY,
         "CHS geometry %u/%u/%u gives %" PRIu64 " bytes, more than the "
         "VHD maximum of 2040 GiB", l->footer.cylinders, l->footer.heads,
         l->footer.sectors_per_track, l->size);
    goto fail;
  }

  if (l->footer.type == VHD_TYPE_FIXED) {
    if (l->size > l->data_limit) {
      bad (path, "current_size", foot + FT_CUR_SIZE,
           "virtual size %" PRIu64 " is larger than the %" PRIu64
           " data bytes in the file (truncated?)", l->size, foot);
      goto fail;
    }
  }
  else if (open_dynamic (l, rule, devs, inos) == -1)
    goto fail;
  if (hidden_data_check (l, rule, foot) == -1)
    goto fail;
  if (l->writable && vhd_writer_init (l) == -1)
    goto fail;
  return l;

 fail:
  vhd_close_chain (l);
  return NULL;
}

static struct vhd_layer *
open_chain (const char *path, enum vhd_size_rule rule, bool rw)
{
  dev_t devs[VHD_MAX_CHAIN];
  ino_t inos[VHD_MAX_CHAIN];

  open_invalid = open_parent_failed = false;
  return open_layer (path, rule, 0, devs, inos, rw);
}

struct vhd_layer *
vhd_open_chain (const char *path, enum vhd_size_rule rule)
{
  return open_chain (path, rule, false);
}

struct vhd_layer *
vhd_open_chain_rw (const char *path, enum vhd_size_rule rule)
{
  return open_chain (path, rule, true);
}

struct vhd_layer *
vhd_open_alone (const char *path)
{
  struct vhd_layer *l;

  open_without_parents = true;
  l = open_chain (path, VHD_SIZE_CURRENT, false);
  open_without_parents = false;
  return l;
}

/* The resolver: splits a virtual range of layer L into pieces, each either
 * stored in one layer's file at a given offset, or zero (allocated nowhere in
 * the chain).  Read and map are both written on top of it, so they cannot
 * disagree about which layer owns a sector. */
int
vhd_resolve (const struct vhd_layer *l, uint64_t off, uint64_t len,
         piece_fn fn, void *opaque)
{
  int r;

  if (len == 0)
    return 0;
  if (!l || off >= l->size)
    return fn (opaque, NULL, 0, off, len);
  if (len > l->size - off) {
    uint64_t inside = l->size - off;
    if ((r = vhd_resolve (l, off, inside, fn, opaque)) != 0)
      return r;
    return fn (opaque, NULL, 0, off + inside, len - inside);
  }
  if (l->footer.type == VHD_TYPE_FIXED)
    return fn (opaque, l, off, off, len);

  while (len > 0) {
    uint32_t blk = off >> l->block_shift;
    uint64_t inblk = off & (l->block_size - 1);
    uint64_t n = l->block_size - inblk;

    if (n > len)
      n = len;
    if (vhd_bat_get (l, blk) == VHD_BAT_UNUSED) {
      /* Coalesce a run of unallocated blocks into one piece. */
      while (n < len && blk + 1 < l->nblocks &&
             vhd_bat_get (l, blk + 1) == VHD_BAT_UNUSED) {
        blk++;
        n += l->block_size;
        if (n > len)
          n = len;
      }
      r = vhd_resolve (l->parent, off, n, fn, opaque);
    }
    else {
      const uint8_t *bm = vhd_get_bitmap ((struct vhd_layer *) l, blk);
      uint64_t data = (uint64_t) vhd_bat_get (l, blk) * VHD_SECTOR +
                      l->bitmap_bytes;

      if (!bm)
        return -1;
      if (bm == VHD_BITMAP_FULL)
        r = fn (opaque, l, data + inblk, off, n);
      else {
        uint64_t pos = inblk, end = inblk + n;
        uint64_t send = (end + VHD_SECTOR - 1) / VHD_SECTOR;

        r = 0;
        while (r == 0 && pos < end) {
          uint64_t s = pos / VHD_SECTOR;
          uint64_t run_end = (s + bitmap_run (bm, s, send)) * VHD_SECTOR;
          uint64_t piece = (run_end < end ? run_end : end) - pos;
          uint64_t voff = off + (pos - inblk);

          if (bitmap_get (bm, s))
            r = fn (opaque, l, data + pos, voff, piece);
          else
            r = vhd_resolve (l->parent, voff, piece, fn, opaque);
          pos += piece;
        }
      }
    }
    if (r != 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

struct read_state {
  uint8_t *buf;
  uint64_t base;
  const struct vhd_layer *only;   /* vhd_read_own: the one layer read */
};

static int
read_piece (void *opaque, const struct vhd_layer *src, uint64_t file_offset,
            uint64_t voffset, uint64_t length)
{
  struct read_state *rs = opaque;
  uint8_t *dst = rs->buf + (voffset - rs->base);

  if (!src || (rs->only && src != rs->only)) {
    memset (dst, 0, length);
    return 0;
  }
  if (vhd_pread_full (src->fd, dst, length, file_offset) == -1) {
    int e = errno;
    sxm_error ("%s: read of %" PRIu64 " bytes at offset %" PRIu64
               " failed: %s", src->path, length, file_offset,
               e == EIO ? "short read or I/O error (file changed?)"
                        : strerror (e));
    errno = e;
    return -1;
  }
  return 0;
}

static int
read_layers (struct vhd_layer *top, void *buf, uint64_t count,
             uint64_t offset, const struct vhd_layer *only)
{
  struct read_state rs = { buf, offset, only };

  if (vhd_check_range (top, offset, count) == -1)
    return -1;
  return vhd_resolve (top, offset, count, read_piece, &rs) == -1 ? -1 : 0;
}

int
vhd_read (struct vhd_layer *top, void *buf, uint64_t count, uint64_t offset)
{
  return read_layers (top, buf, count, offset, NULL);
}

int
vhd_read_own (struct vhd_layer *l, void *buf, uint64_t count,
              uint64_t offset)
{
  return read_layers (l, buf, count, offset, l);
}

struct map_state {
  vhd_map_fn fn;
  void *opaque;
  const struct vhd_layer *only;   /* vhd_map_own: the one layer mapped */
  bool first_only;
  bool have;            /* a pending run is being accumulated */
  bool alloc;
  uint64_t start, len;
};

/* Emit the pending run; returns 1 when the caller asked to stop. */
static int
map_flush (struct map_state *ms)
{
  int r;

  if (!ms->have)
    return 0;
  ms->have = false;
  r = ms->fn (ms->opaque, ms->start, ms->len, ms->alloc);
  if (r != 0 || ms->first_only)
    return 1;
  return 0;
}

static int
map_add (struct map_state *ms, uint64_t off, uint64_t len, bool alloc)
{
  if (ms->have && ms->alloc == alloc && ms->start + ms->len == off) {
    ms->len += len;
    return 0;
  }
  if (map_flush (ms))
    return 1;
  ms->have = true;
  ms->alloc = alloc;
  ms->start = off;
  ms->len = len;
  return 0;
}

static int
map_piece (void *opaque, const struct vhd_layer *src, uint64_t file_offset,
           uint64_t voffset, uint64_t length)
{
  struct map_state *ms = opaque;

  if (ms->only && src != ms->only)
    src = NULL;
  /* A fixed image on a sparse file: its holes read as zeros, so report
   * them, found with SEEK_DATA/SEEK_HOLE. */
  if (src && src->footer.type == VHD_TYPE_FIXED) {
    uint64_t pos = file_offset, end = file_offset + length;

    while (pos < end) {
      off_t data = lseek (src->fd, pos, SEEK_DATA);
      off_t hole;
      uint64_t d, h;

      if (data == -1 && errno != ENXIO)       /* no SEEK_DATA: all data */
        return map_add (ms, voffset + (pos - file_offset), end - pos, true);
      d = data == -1 || (uint64_t) data > end ? end : (uint64_t) data;
      if (d > pos && map_add (ms, voffset + (pos - file_offset), d - pos,
                              false))
        return 1;
      if (d == end)
        break;
      hole = lseek (src->fd, d, SEEK_HOLE);
      h = hole == -1 || (uint64_t) hole > end ? end : (uint64_t) hole;
      if (map_add (ms, voffset + (d - file_offset), h - d, true))
        return 1;
      pos = h;
    }
    return 0;
  }
  return map_add (ms, voffset, length, src != NULL);
}

static int
map_layers (struct vhd_layer *top, uint64_t offset, uint64_t count,
            bool first_only, vhd_map_fn fn, void *opaque,
            const struct vhd_layer *only)
{
  struct map_state ms = { .fn = fn, .opaque = opaque, .only = only,
                          .first_only = first_only };
  int r;

  if (vhd_check_range (top, offset, count) == -1)
    return -1;
  r = vhd_resolve (top, offset, count, map_piece, &ms);
  if (r == -1)
    return -1;
  if (r == 0)
    map_flush (&ms);
  return 0;
}

int
vhd_map (struct vhd_layer *top, uint64_t offset, uint64_t count,
         bool first_only, vhd_map_fn fn, void *opaque)
{
  return map_layers (top, offset, count, first_only, fn, opaque, NULL);
}

int
vhd_map_own (struct vhd_layer *l, uint64_t offset, uint64_t count,
             bool first_only, vhd_map_fn fn, void *opaque)
{
  return map_layers (l, offset, count, first_only, fn, opaque, l);
}
