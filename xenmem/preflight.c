/* The preflight record body's codec (preflight.h).  The decoder checks
 * every count against its limit and the body's exact length before it
 * reads an entry, and every error names the field and its offset. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "endian.h"
#include "preflight.h"

#define HDR 24
#define DISK 64
#define LEAF 24
#define MSR 16

size_t
xm_preflight_size (const struct xm_preflight *p)
{
  return HDR + (size_t) p->ndisks * DISK + (size_t) p->nleaves * LEAF +
         (size_t) p->nmsrs * MSR;
}

size_t
xm_preflight_encode (const struct xm_preflight *p, uint8_t *out)
{
  size_t len = xm_preflight_size (p), o = HDR;

  memset (out, 0, len);
  le32_store (out, p->xen_major);
  le32_store (out + 4, p->xen_minor);
  le32_store (out + 8, p->ndisks);
  le32_store (out + 12, p->nleaves);
  le32_store (out + 16, p->nmsrs);
  for (uint32_t i = 0; i < p->ndisks; i++, o += DISK) {
    memcpy (out + o, p->disks[i].vdev, strnlen (p->disks[i].vdev,
                                                XM_PF_VDEV_MAX));
    memcpy (out + o + 32, p->disks[i].uuid, 16);
  }
  for (uint32_t i = 0; i < p->nleaves; i++, o += LEAF) {
    const struct xm_pf_leaf *l = &p->leaves[i];
    le32_store (out + o, l->leaf);
    le32_store (out + o + 4, l->subleaf);
    le32_store (out + o + 8, l->a);
    le32_store (out + o + 12, l->b);
    le32_store (out + o + 16, l->c);
    le32_store (out + o + 20, l->d);
  }
  for (uint32_t i = 0; i < p->nmsrs; i++, o += MSR) {
    le32_store (out + o, p->msrs[i].idx);
    le32_store (out + o + 4, p->msrs[i].flags);
    le64_store (out + o + 8, p->msrs[i].val);
  }
  return len;
}

static int
bad (char *err, size_t errlen, const char *fmt, ...)
{
  va_list ap;
  int n = snprintf (err, errlen, "preflight: ");

  va_start (ap, fmt);
  if (n > 0 && (size_t) n < errlen)
    vsnprintf (err + n, errlen - n, fmt, ap);
  va_end (ap);
  return -1;
}

int
xm_preflight_decode (const uint8_t *buf, size_t len, struct xm_preflight *p,
                     char *err, size_t errlen)
{
  size_t o = HDR, want;

  memset (p, 0, sizeof *p);
  if (len < HDR)
    return bad (err, errlen, "%zu bytes, shorter than its %d-byte header",
                len, HDR);
  p->xen_major = le32_load (buf);
  p->xen_minor = le32_load (buf + 4);
  p->ndisks = le32_load (buf + 8);
  p->nleaves = le32_load (buf + 12);
  p->nmsrs = le32_load (buf + 16);
  if (le32_load (buf + 20) != 0)
    return bad (err, errlen, "reserved field (offset 20) is 0x%" PRIx32
                ", must be 0", le32_load (buf + 20));
  if (p->ndisks > XM_PF_DISKS_MAX)
    return bad (err, errlen, "ndisks (offset 8) is %" PRIu32 ", at most %d",
                p->ndisks, XM_PF_DISKS_MAX);
  if (p->nleaves > XM_PF_LEAVES_MAX)
    return bad (err, errlen, "nleaves (offset 12) is %" PRIu32 ", at most %d",
                p->nleaves, XM_PF_LEAVES_MAX);
  if (p->nmsrs > XM_PF_MSRS_MAX)
    return bad (err, errlen, "nmsrs (offset 16) is %" PRIu32 ", at most %d",
                p->nmsrs, XM_PF_MSRS_MAX);
  want = xm_preflight_size (p);
  if (len != want)
    return bad (err, errlen, "%zu bytes, its counts (%" PRIu32 " disks, %"
                PRIu32 " leaves, %" PRIu32 " MSRs) make %zu", len, p->ndisks,
                p->nleaves, p->nmsrs, want);
  for (uint32_t i = 0; i < p->ndisks; i++, o += DISK) {
    const uint8_t *e = buf + o;
    size_t n = strnlen ((const char *) e, 32);
    if (n == 0 || n > XM_PF_VDEV_MAX)
      return bad (err, errlen, "disk %" PRIu32 " (offset %zu): the device "
                  "name is %s", i, o, n ? "not NUL-terminated" : "empty");
    for (size_t k = 0; k < 32; k++) {
      if (k < n && !((e[k] >= 'a' && e[k] <= 'z') || (e[k] >= '0' && e[k] <= '9')))
        return bad (err, errlen, "disk %" PRIu32 " (offset %zu): byte 0x%02x "
                    "in the device name", i, o + k, e[k]);
      if (k >= n && e[k] != 0)
        return bad (err, errlen, "disk %" PRIu32 " (offset %zu): bytes after "
                    "the device name's NUL", i, o + k);
    }
    for (int k = 48; k < 64; k++)
      if (e[k])
        return bad (err, errlen, "disk %" PRIu32 " (offset %zu): reserved "
                    "bytes are not 0", i, o + k);
    for (uint32_t j = 0; j < i; j++)
      if (strcmp (p->disks[j].vdev, (const char *) e) == 0)
        return bad (err, errlen, "disk %" PRIu32 " (offset %zu): device %s "
                    "a second time", i, o, (const char *) e);
    memcpy (p->disks[i].vdev, e, n);
    memcpy (p->disks[i].uuid, e + 32, 16);
  }
  for (uint32_t i = 0; i < p->nleaves; i++, o += LEAF) {
    struct xm_pf_leaf *l = &p->leaves[i];
    l->leaf = le32_load (buf + o);
    l->subleaf = le32_load (buf + o + 4);
    l->a = le32_load (buf + o + 8);
    l->b = le32_load (buf + o + 12);
    l->c = le32_load (buf + o + 16);
    l->d = le32_load (buf + o + 20);
  }
  for (uint32_t i = 0; i < p->nmsrs; i++, o += MSR) {
    p->msrs[i].idx = le32_load (buf + o);
    p->msrs[i].flags = le32_load (buf + o + 4);
    p->msrs[i].val = le64_load (buf + o + 8);
    if (p->msrs[i].flags)
      return bad (err, errlen, "MSR %" PRIu32 " (offset %zu): flags 0x%"
                  PRIx32 ", must be 0", i, o + 4, p->msrs[i].flags);
  }
  return 0;
}

static int
hexval (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int
xm_uuid_parse (const char *s, uint8_t out[16])
{
  int n = 0;

  for (int i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-')
        return -1;
      continue;
    }
    int h = hexval (s[i]), l;
    if (h < 0 || (l = hexval (s[++i])) < 0)
      return -1;
    out[n++] = h << 4 | l;
  }
  return s[36] == 0 ? 0 : -1;
}

void
xm_uuid_format (const uint8_t u[16], char out[37])
{
  snprintf (out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x", u[0], u[1], u[2], u[3], u[4], u[5],
            u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

int
xm_xen_version_ok (uint32_t src_major, uint32_t src_minor,
                   uint32_t dst_major, uint32_t dst_minor,
                   char *why, size_t whylen)
{
  if (src_major != dst_major)
    snprintf (why, whylen, "the guest runs on Xen %" PRIu32 ".%" PRIu32
              ", this host runs Xen %" PRIu32 ".%" PRIu32 ": a guest moves "
              "only within one major release", src_major, src_minor,
              dst_major, dst_minor);
  else if (dst_minor < src_minor)
    snprintf (why, whylen, "the guest runs on Xen %" PRIu32 ".%" PRIu32
              ", this host runs the older Xen %" PRIu32 ".%" PRIu32 ": a "
              "guest moves to the same or a newer release only", src_major,
              src_minor, dst_major, dst_minor);
  else
    return 0;
  return -1;
}
