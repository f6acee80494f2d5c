/* XenServer's rules: would blktap (the VHD library and `vhd-util check`
 * of XenServer and XCP-ng, which the storage manager runs on every VHD of
 * an SR) accept this image?
 *
 * The rules are facts read from blktap's libvhd.c and vhd-util-check.c
 * (xapi-project/blktap); doc/design.md lists each with its source.  They
 * are checked on the file's bytes, independently of our own reader, so an
 * image we would serve but blktap would refuse is named here, rule by rule,
 * in blktap's own words plus the field and its offset.  Where blktap is
 * more lenient than the specification (a locator's data space in bytes or
 * sectors, an early tapdisk's unchecksummed 'hidden' byte, a 511-byte end
 * footer) we are as lenient; where it is stricter (block size at most 2 MiB,
 * geometry no larger than the specification's CHS, ASCII-only parent
 * names) we are as strict. */

#include <errno.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#include "endian.h"
#include "vhd.h"
#include "vhd-internal.h"
#include "zero.h"

#define TS_SLACK 1800           /* blktap allows 30 min of clock skew */
#define XEN_MAX_BLOCK (2u << 20)
#define XEN_BLOCK_SHIFT 21      /* blktap counts blocks of 2 MiB here */

struct xen_ctx {
  const char *path;
  int fd;
  uint64_t file_size;
  uint64_t eof;                 /* file size, 511-byte footers rounded up */
  vhd_xen_report report;
  void *opaque;
  int failures;
};

static void __attribute__ ((format (printf, 4, 5)))
fail (struct xen_ctx *x, bool repairable, uint64_t offset,
      const char *fmt, ...)
{
  char msg[600], full[700];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (offset == UINT64_MAX)
    snprintf (full, sizeof full, "%s", msg);
  else
    snprintf (full, sizeof full, "%s (offset %" PRIu64 ")", msg, offset);
  x->failures++;
  x->report (x->opaque, repairable, full);
}

/* The specification's geometry as blktap packs it (cylinders << 16 |
 * heads << 8 | sectors), computed from the size rounded UP to sectors
 * (libvhd's vhd_chs); blktap compares the packed values. */
uint32_t
vhd_xen_geometry (uint64_t size)
{
  uint16_t c;
  uint8_t h, s;
  uint64_t secs = (size + VHD_SECTOR - 1) / VHD_SECTOR;

  vhd_spec_chs ((secs ? secs : 1) * VHD_SECTOR, &c, &h, &s);
  return (uint32_t) c << 16 | (uint32_t) h << 8 | s;
}

/* One footer copy (WHERE: "primary footer" or "backup footer", AT: its
 * offset).  blktap's vhd_util_check_validate_footer. */
static void
footer_rules (struct xen_ctx *x, const uint8_t *f, const char *where,
              uint64_t at)
{
  uint32_t features = be32_load (f + 8), type = be32_load (f + 60);
  uint32_t geometry = be32_load (f + 56), ts = be32_load (f + 24);
  uint32_t want = vhd_xen_geometry (be64_load (f + 48));
  uint32_t now = (uint32_t) (time (NULL) - VHD_EPOCH);
  bool tap = memcmp (f + 28, "tap", 3) == 0;
  uint32_t crtr_ver = be32_load (f + 32);

  if (memcmp (f, "conectix", 8) != 0) {
    fail (x, false, at, "%s invalid: invalid cookie", where);
    return;
  }
  if (vhd_checksum (f, 512, 64) != be32_load (f + 64)) {
    /* Early tapdisks set 'hidden' without updating the checksum. */
    uint8_t t[512];
    memcpy (t, f, 512);
    t[85] = 0;
    if (!(f[85] && tap && (crtr_ver == 0x00000001 || crtr_ver == 0x00010001)
          && vhd_checksum (t, 512, 64) == be32_load (f + 64)))
      fail (x, false, at + 64, "%s invalid: invalid checksum", where);
  }
  if (!(features & 2))
    fail (x, false, at + 8, "%s invalid: invalid 'reserved' feature "
          "(bit 2 of features must be set)", where);
  if (features & ~3u)
    fail (x, false, at + 8, "%s invalid: invalid extra features (0x%08x)",
          where, features);
  if (be32_load (f + 12) != 0x00010000)
    fail (x, false, at + 12, "%s invalid: invalid file format version",
          where);
  if (type != VHD_TYPE_DYNAMIC && type != VHD_TYPE_DIFF &&
      be64_load (f + 16) != UINT64_MAX)
    fail (x, false, at + 16, "%s invalid: invalid data offset (a fixed "
          "image's must be all ones)", where);
  if (ts > now + TS_SLACK)
    fail (x, false, at + 24, "%s invalid: creation time in future (more "
          "than 30 minutes ahead of this host's clock)", where);
  if (tap && crtr_ver > 0x00010003)
    fail (x, false, at + 32, "%s invalid: unsupported tap creator version",
          where);
  if (geometry > want)
    fail (x, true, at + 56, "%s invalid: geometry too large (%u/%u/%u; the "
          "specification's CHS for the current size %" PRIu64 " is "
          "%u/%u/%u; 'sxm-vhd repair' rewrites it)", where,
          geometry >> 16, (geometry >> 8) & 0xff, geometry & 0xff,
          be64_load (f + 48), want >> 16, (want >> 8) & 0xff, want & 0xff);
  if (type != VHD_TYPE_FIXED && type != VHD_TYPE_DYNAMIC &&
      type != VHD_TYPE_DIFF)
    fail (x, false, at + 60, "%s invalid: invalid type %u", where, type);
  if (f[84] > 1)
    fail (x, false, at + 84, "%s invalid: invalid 'saved' state", where);
  if (f[85] > 1)
    fail (x, false, at + 85, "%s invalid: invalid 'hidden' state", where);
  if (!buf_is_zero (f + 86, 512 - 86))
    fail (x, false, at + 86, "%s invalid: invalid 'reserved' bits", where);
  if (buf_is_zero (f + 68, 16))
    fail (x, false, at + 68, "%s invalid: invalid (NULL) uuid", where);
}

/* UTF-16 (BE or LE) of N bytes to ASCII, as blktap's iconv to "ASCII"
 * does: any unit above 0x7f fails.  Stops at the first NUL. */
static int
utf16_ascii (const uint8_t *in, size_t n, bool be, char *out, size_t outlen)
{
  size_t o = 0;

  for (size_t i = 0; i + 1 < n; i += 2) {
    unsigned u = be ? (unsigned) in[i] << 8 | in[i + 1]
                    : (unsigned) in[i + 1] << 8 | in[i];
    if (u > 0x7f)
      return -1;
    if (u == 0)
      break;
    if (o + 1 >= outlen)
      return -1;
    out[o++] = (char) u;
  }
  out[o] = '\0';
  return 0;
}

/* A locator's bytes in the file, as blktap sizes them: data space is in
 * sectors if below 512, else in bytes if a multiple of 512, else 0. */
static uint64_t
locator_size (uint32_t space)
{
  if (space < 512)
    return (uint64_t) space * VHD_SECTOR;
  return space % 512 == 0 ? space : 0;
}

/* The parent a decoded locator names, resolved as libvhd does: an
 * absolute path that is readable, else relative to the child's
 * directory.  Returns a malloc'd path or NULL. */
static char *
resolve_parent (const char *child, const char *p)
{
  char *c, *dir, *loc = NULL;

  if (p[0] == '/' && access (p, R_OK) == 0)
    return strdup (p);
  c = realpath (child, NULL);
  if (!c)
    return NULL;
  dir = dirname (c);
  if (asprintf (&loc, "%s/%s", dir, p) == -1)
    loc = NULL;
  free (c);
  if (loc && access (loc, R_OK) != 0) {
    free (loc);
    loc = NULL;
  }
  return loc;
}

static void
locator_rules (struct xen_ctx *x, const uint8_t *h, uint64_t hoff,
               const char *pname)
{
  static const char *const codes[] = {
    "", "Wi2r", "Wi2k", "W2ru", "W2ku", "Mac ", "MacX",
  };
  int seen[7] = { 0 }, found = 0;

  for (int i = 0; i < VHD_NR_LOCATORS; i++) {
    const uint8_t *e = h + 576 + 24 * i;
    uint64_t eoff = hoff + 576 + 24 * i;
    uint32_t space = be32_load (e + 4), len = be32_load (e + 8);
    uint64_t doff = be64_load (e + 16), size = locator_size (space);
    int c;
    char *text = NULL, *ppath, *base, *loc;
    bool macx;

    for (c = 0; c < 7; c++)
      if (c == 0 ? buf_is_zero (e, 4) : memcmp (e, codes[c], 4) == 0)
        break;
    if (c == 7) {
      fail (x, false, eoff, "invalid parent locator %d: invalid platform "
            "code", i);
      continue;
    }
    if (c == 0) {
      if (!buf_is_zero (e, 24))
        fail (x, false, eoff, "invalid parent locator %d: non-zero locator "
              "(its platform code is none)", i);
      continue;
    }
    if (!doff || !space || !len) {
      fail (x, false, eoff, "invalid parent locator %d: invalid data %s", i,
            !doff ? "offset" : !space ? "space" : "length");
      continue;
    }
    if (doff + size > x->eof - VHD_FOOTER_SIZE) {
      fail (x, false, eoff + 4, "invalid parent locator %d: invalid size "
            "(its data ends past the end footer)", i);
      continue;
    }
    if (be32_load (e + 12))
      fail (x, false, eoff + 12, "invalid parent locator %d: invalid "
            "reserved bits", i);
    if (seen[c]++) {
      fail (x, false, eoff, "duplicate platform code in locator %d: %s", i,
            codes[c]);
      continue;
    }
    if (c != 3 && c != 4 && c != 6)
      continue;                 /* blktap reads only W2ru, W2ku and MacX */

    /* Decode as blktap does: ASCII only; MacX is a file:// URL; W2ru and
     * W2ku are UTF-16LE with '\' separators and an optional "C:". */
    macx = c == 6;
    if (size == 0 || len > size || len > 65536) {
      fail (x, false, eoff, "invalid parent locator %d: error reading "
            "parent locator (length %u, space %u)", i, len, space);
      continue;
    }
    {
      uint8_t *raw = malloc (len);
      text = malloc (len + 1);
      if (!raw || !text ||
          vhd_pread_full (x->fd, raw, len, doff) == -1) {
        free (raw);
        free (text);
        fail (x, false, doff, "invalid parent locator %d: error reading "
              "parent locator", i);
        continue;
      }
      if (macx) {
        bool ok = true;
        for (uint32_t k = 0; k < len; k++)
          if (raw[k] > 0x7f)
            ok = false;
        memcpy (text, raw, len);
        text[len] = '\0';
        if (!ok || strncmp (text, "file://", 7) != 0) {
          free (raw);
          free (text);
          fail (x, false, doff, "invalid parent locator %d: error reading "
                "parent locator (MacX must be an ASCII file:// URL)", i);
          continue;
        }
        memmove (text, text + 7, strlen (text + 7) + 1);
      }
      else {
        if (utf16_ascii (raw, len, false, text, len + 1) == -1) {
          free (raw);
          free (text);
          fail (x, false, doff, "invalid parent locator %d: error reading "
                "parent locator (blktap decodes it to ASCII only)", i);
          continue;
        }
        for (char *q = text; *q; q++)
          if (*q == '\\')
            *q = '/';
        if (strncasecmp (text, "c:", 2) == 0)
          memmove (text, text + 2, strlen (text + 2) + 1);
      }
      free (raw);
    }
    ppath = strdup (text);
    base = ppath ? basename (ppath) : NULL;
    if (pname && base && strcmp (base, pname) != 0)
      fail (x, false, doff, "parent locator %d name (%s) does not match "
            "header name (%s)", i, base, pname);
    free (ppath);
    loc = resolve_parent (x->path, text);
    if (!loc) {
      if (macx)
        fail (x, false, doff, "parent locator %d points to missing file %s",
              i, text);
      free (text);
      continue;
    }
    /* The parent's UUID, unless the child names a raw parent. */
    if (!buf_is_zero (h + 40, 16)) {
      uint8_t pf[VHD_FOOTER_SIZE];
      bool from_copy;
      int pfd = open (loc, O_RDONLY | O_CLOEXEC);
      struct stat st;
      if (pfd == -1 || fstat (pfd, &st) == -1 ||
          st.st_size < VHD_FOOTER_SIZE ||
          vhd_locate_footer (pfd, st.st_size, pf, &from_copy) == -1 ||
          memcmp (pf, "conectix", 8) != 0) {
        fail (x, false, doff, "invalid parent %s: error opening parent", loc);
        if (pfd >= 0)
          close (pfd);
        free (loc);
        free (text);
        continue;
      }
      close (pfd);
      if (memcmp (pf + 68, h + 40, 16) != 0) {
        fail (x, false, hoff + 40, "invalid parent %s: invalid parent uuid",
              loc);
        free (loc);
        free (text);
        continue;
      }
    }
    found++;
    free (loc);
    free (text);
  }
  if (!found)
    fail (x, false, hoff + 576, "could not find parent %s (no W2ru, W2ku "
          "or MacX locator leads to it)", pname ? pname : "");
}

struct used {
  uint64_t start, i;
};

static int
compare_used (const void *a, const void *b)
{
  const struct used *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

/* The BAT (vhd_util_check_bat) and, for tapdisk images, the batmap. */
static void
bat_rules (struct xen_ctx *x, const uint8_t *f, const uint8_t *h,
           uint64_t hoff)
{
  uint64_t curr = be64_load (f + 48), toff = be64_load (h + 16);
  uint32_t max = be32_load (h + 28), bsize = be32_load (h + 32);
  uint64_t spb = bsize / VHD_SECTOR;
  uint64_t bm_secs = (spb / 8 + VHD_SECTOR - 1) / VHD_SECTOR;
  uint64_t blk_secs;
  uint64_t vhd_blks = curr >> XEN_BLOCK_SHIFT;
  uint64_t eoh, eof_secs, bat_bytes;
  uint32_t *bat = NULL;
  uint32_t crtr_ver = be32_load (f + 32);
  bool has_batmap = memcmp (f + 28, "tap", 3) == 0 && crtr_ver > 0x00000001;
  uint8_t bmh[512];

  if (bm_secs == 0)
    bm_secs = 1;
  blk_secs = spb + bm_secs;
  bat_bytes = ((uint64_t) max * 4 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  eoh = hoff + VHD_HEADER_SIZE;
  if (toff + bat_bytes > eoh)
    eoh = toff + bat_bytes;
  /* Locators' data counts as metadata (vhd_end_of_headers). */
  for (int i = 0; i < VHD_NR_LOCATORS; i++) {
    const uint8_t *e = h + 576 + 24 * i;
    if (!buf_is_zero (e, 4)) {
      uint64_t end = be64_load (e + 16) + locator_size (be32_load (e + 4));
      if (end > eoh)
        eoh = end;
    }
  }
  /* A batmap: version 1.2 or later tapdisk images always have one; 1.1
   * ones if its header is there. */
  if (has_batmap) {
    uint64_t bmh_off = toff + bat_bytes;
    if (vhd_pread_full (x->fd, bmh, sizeof bmh, bmh_off) == -1 ||
        (crtr_ver < 0x00010002 && memcmp (bmh, "tdbatmap", 8) != 0))
      has_batmap = false;
    else {
      uint64_t map_off = be64_load (bmh + 8);
      uint32_t map_secs = be32_load (bmh + 16), ver = be32_load (bmh + 20);
      uint64_t map_bytes = ((curr >> (XEN_BLOCK_SHIFT + 3)) + VHD_SECTOR - 1)
                           / VHD_SECTOR * VHD_SECTOR;
      if (map_bytes == 0)
        map_bytes = VHD_SECTOR;
      if (bmh_off + VHD_SECTOR > eoh)
        eoh = bmh_off + VHD_SECTOR;
      if (map_off + (uint64_t) map_secs * VHD_SECTOR > eoh)
        eoh = map_off + (uint64_t) map_secs * VHD_SECTOR;
      if (memcmp (bmh, "tdbatmap", 8) != 0)
        fail (x, false, bmh_off, "batmap is invalid: invalid cookie");
      else if (ver > 0x00010002)
        fail (x, false, bmh_off + 20, "batmap is invalid: unsupported batmap "
              "version");
      else if (!map_secs)
        fail (x, false, bmh_off + 16, "batmap is invalid: invalid size zero");
      else if (((uint64_t) map_secs << 12) < max)
        fail (x, false, bmh_off + 16, "batmap is invalid: batmap-BAT size "
              "mismatch");
      else if (!map_off || map_off % VHD_SECTOR)
        fail (x, false, bmh_off + 8, "batmap is invalid: invalid batmap "
              "offset");
      else if (map_off + (uint64_t) map_secs * VHD_SECTOR >
               x->eof - VHD_FOOTER_SIZE)
        fail (x, false, bmh_off + 16, "batmap is invalid: invalid batmap "
              "size");
      else if (map_bytes <= (uint64_t) map_secs * VHD_SECTOR) {
        uint8_t *map = malloc (map_bytes);
        uint32_t sum = 0;
        if (!map || vhd_pread_full (x->fd, map, map_bytes, map_off) == -1)
          fail (x, false, map_off, "error reading batmap");
        else {
          /* Version 1.1 summed the bytes as signed chars. */
          for (uint64_t k = 0; k < map_bytes; k++)
            sum += ver == 0x00010001 ? (uint32_t) (int32_t) (int8_t) map[k]
                                     : map[k];
          if (~sum != be32_load (bmh + 24))
            fail (x, false, bmh_off + 24, "batmap is invalid: invalid "
                  "checksum");
          else
            has_batmap = true;
        }
        if (map && has_batmap) {
          bat = malloc (4 * (size_t) (max ? max : 1));
          if (bat && vhd_pread_full (x->fd, bat, 4 * (size_t) max,
                                     toff) == 0)
            for (uint64_t b = 0; b < vhd_blks && b < max; b++)
              if ((map[b >> 3] >> (7 - (b & 7))) & 1 &&
                  be32_load ((uint8_t *) &bat[b]) == VHD_BAT_UNUSED) {
                fail (x, false, map_off + (b >> 3), "batmap shows "
                      "unallocated block %" PRIu64 " full", b);
                break;
              }
          free (bat);
          bat = NULL;
        }
        free (map);
      }
    }
  }

  if (vhd_blks > max) {
    fail (x, false, hoff + 28, "VHD size (%" PRIu64 " blocks) exceeds BAT "
          "size (%u)", vhd_blks, max);
    return;
  }
  eof_secs = (x->eof - VHD_FOOTER_SIZE) / VHD_SECTOR;
  eoh /= VHD_SECTOR;
  bat = malloc (4 * (size_t) (vhd_blks ? vhd_blks : 1));
  if (!bat || vhd_pread_full (x->fd, bat, 4 * (size_t) vhd_blks, toff) == -1) {
    free (bat);
    fail (x, false, toff, "error reading bat");
    return;
  }
  {
    struct used *u = malloc (sizeof *u * (vhd_blks ? vhd_blks : 1));
    size_t n = 0;
    if (!u) {
      free (bat);
      fail (x, false, toff, "out of memory for %" PRIu64 " BAT entries",
            vhd_blks);
      return;
    }
    for (uint64_t i = 0; i < vhd_blks; i++) {
      uint32_t off = be32_load ((uint8_t *) &bat[i]);
      if (off == VHD_BAT_UNUSED)
        continue;
      if (off < eoh) {
        fail (x, false, toff + 4 * i, "block %" PRIu64 " (offset 0x%x) "
              "clobbers headers (metadata ends at sector %" PRIu64 ")",
              i, off, eoh);
        goto done;
      }
      if (off + blk_secs > eof_secs) {
        fail (x, false, toff + 4 * i, "block %" PRIu64 " (offset 0x%x) "
              "clobbers footer", i, off);
        goto done;
      }
      u[n].start = off;
      u[n].i = i;
      n++;
    }
    /* Overlaps: sorted by start, each against the one before (blktap
     * compares every pair, which is quadratic). */
    qsort (u, n, sizeof *u, compare_used);
    for (size_t a = 1; a < n; a++)
      if (u[a].start < u[a - 1].start + blk_secs) {
        fail (x, false, toff + 4 * u[a].i, "block %" PRIu64 " (offset "
              "0x%" PRIx64 ") clobbers block %" PRIu64 " (offset 0x%" PRIx64
              ")", u[a].i, u[a].start, u[a - 1].i, u[a - 1].start);
        break;
      }
  done:
    free (u);
  }
  free (bat);
}

int
vhd_xen_rules (const char *path, vhd_xen_report report, void *opaque)
{
  struct xen_ctx x = { .path = path, .report = report, .opaque = opaque };
  uint8_t f[VHD_FOOTER_SIZE], b[VHD_FOOTER_SIZE], h[VHD_HEADER_SIZE];
  uint64_t foot, hoff;
  uint32_t type;
  struct stat st;
  char pname[520];

  x.fd = open (path, O_RDONLY | O_CLOEXEC);
  if (x.fd == -1 || fstat (x.fd, &st) == -1)
    goto io_error;
  if (S_ISBLK (st.st_mode)) {
    off_t end = lseek (x.fd, 0, SEEK_END);
    if (end == -1)
      goto io_error;
    x.file_size = end;
  }
  else
    x.file_size = st.st_size;
  if (x.file_size < VHD_FOOTER_SIZE) {
    fail (&x, false, 0, "primary footer invalid: file too small");
    goto out;
  }
  /* blktap reads a 511-byte end footer (old Virtual PC) as a footer. */
  if (x.file_size % VHD_SECTOR != 0 && x.file_size % VHD_SECTOR != 511) {
    fail (&x, false, x.file_size, "invalid file size: not a whole number "
          "of sectors");
    goto out;
  }
  x.eof = (x.file_size + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  foot = x.file_size % VHD_SECTOR ? x.file_size - 511
                                   : x.file_size - VHD_FOOTER_SIZE;
  memset (f, 0, sizeof f);
  if (full_pread (x.fd, f, x.file_size - foot, foot) == -1)
    goto io_error;
  {
    int before = x.failures;
    footer_rules (&x, f, "primary footer", foot);
    if (x.failures > before && memcmp (f, "conectix", 8) != 0)
      goto out;                 /* no footer: nothing more to say */
  }
  type = be32_load (f + 60);
  if (type != VHD_TYPE_DYNAMIC && type != VHD_TYPE_DIFF)
    goto out;

  if (vhd_pread_full (x.fd, b, sizeof b, 0) == -1)
    goto io_error;
  {
    int before = x.failures;
    footer_rules (&x, b, "backup footer", 0);
    if (x.failures == before && memcmp (f, b, sizeof f) != 0)
      fail (&x, true, 0, "primary and backup footers do not match "
            "('sxm-vhd repair' copies the end footer to offset 0)");
  }

  hoff = be64_load (f + 16);
  if (hoff > x.file_size || x.file_size - hoff < VHD_HEADER_SIZE ||
      vhd_pread_full (x.fd, h, sizeof h, hoff) == -1) {
    fail (&x, false, foot + 16, "error reading header at %" PRIu64, hoff);
    goto out;
  }
  if (memcmp (h, "cxsparse", 8) != 0) {
    fail (&x, false, hoff, "header is invalid: invalid cookie");
    goto out;
  }
  if (vhd_checksum (h, sizeof h, 36) != be32_load (h + 36))
    fail (&x, false, hoff + 36, "header is invalid: invalid checksum");
  if (be32_load (h + 24) != 0x00010000)
    fail (&x, false, hoff + 24, "header is invalid: invalid header version");
  if (be64_load (h + 8) != UINT64_MAX)
    fail (&x, false, hoff + 8, "header is invalid: invalid data offset");
  {
    uint64_t toff = be64_load (h + 16);
    uint32_t max = be32_load (h + 28), bs = be32_load (h + 32);
    if (toff == 0 || toff % VHD_SECTOR ||
        toff + 4 * (uint64_t) max > x.eof - VHD_FOOTER_SIZE)
      fail (&x, false, hoff + 16, "header is invalid: invalid table offset");
    if (bs == 0 || (bs & (bs - 1)))
      fail (&x, false, hoff + 32, "header is invalid: invalid block size");
    else if (bs > XEN_MAX_BLOCK)
      fail (&x, false, hoff + 32, "invalid header blocksize %u: blktap opens "
            "only blocks of at most 2 MiB", bs);
  }
  if (!buf_is_zero (h + 60, 4) || !buf_is_zero (h + 768, 256))
    fail (&x, false, !buf_is_zero (h + 60, 4) ? hoff + 60 : hoff + 768,
          "header is invalid: invalid reserved bits");
  if (x.failures)
    goto out;                   /* blktap stops here: so do we */

  pname[0] = '\0';
  if (type == VHD_TYPE_DIFF) {
    uint32_t now = (uint32_t) (time (NULL) - VHD_EPOCH);
    if (be32_load (h + 56) > now + TS_SLACK)
      fail (&x, false, hoff + 56, "differencing header is invalid: parent "
            "creation time in future");
    if (utf16_ascii (h + 64, 512, true, pname, sizeof pname) == -1)
      fail (&x, false, hoff + 64, "differencing header is invalid: invalid "
            "parent name (blktap decodes it to ASCII only)");
  }
  else if (!buf_is_zero (h + 64, 512))
    fail (&x, false, hoff + 64, "differencing header is invalid: invalid "
          "non-null parent name");
  else if (!buf_is_zero (h + 576, 192))
    fail (&x, false, hoff + 576, "differencing header is invalid: invalid "
          "non-null parent locators");
  else if (!buf_is_zero (h + 40, 16))
    fail (&x, false, hoff + 40, "differencing header is invalid: invalid "
          "non-null parent uuid");
  else if (be32_load (h + 56))
    fail (&x, false, hoff + 56, "differencing header is invalid: invalid "
          "non-zero parent timestamp");
  if (x.failures)
    goto out;

  bat_rules (&x, f, h, hoff);
  if (x.failures)
    goto out;
  if (type == VHD_TYPE_DIFF)
    locator_rules (&x, h, hoff, pname);

 out:
  close (x.fd);
  return x.failures;

 io_error:
  {
    int e = errno;
    if (x.fd >= 0)
      close (x.fd);
    errno = e;
  }
  return -1;
}
