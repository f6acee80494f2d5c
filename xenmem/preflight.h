/* The xen backend's preflight: what the destination must know about the
 * source before anything moves (doc/xenmem-stream.md, XENDATA kind 3).
 *
 * The source sends its Xen version, the domain's disk map (each virtual
 * disk's device name and the destination disk it goes to, by UUID) and
 * the domain's CPU policy (CPUID leaves and MSRs, as Xen serialises
 * them); the destination checks them against itself (the disks it was
 * given, its Xen, its CPU, its free memory) and answers "ready" or a
 * one-line refusal before the source starts xc_domain_save.
 *
 * This file is the record body's codec: pure code, no Xen calls, so the
 * unit tests and the fuzzer drive it directly.  Body layout, all
 * little-endian:
 *
 *   0  u32 xen_major      4  u32 xen_minor
 *   8  u32 ndisks        12  u32 nleaves       16  u32 nmsrs   20 u32 0
 *   24 ndisks  x 64: vdev (32 bytes, NUL-padded, 1..31 of [a-z0-9]),
 *                    uuid (16 bytes), 16 bytes 0
 *      nleaves x 24: leaf, subleaf, eax, ebx, ecx, edx (u32 each)
 *      nmsrs   x 16: index (u32), flags (u32, 0), value (u64)
 *
 * The body is exactly that long; every count is bounded. */
#ifndef XENMEM_PREFLIGHT_H
#define XENMEM_PREFLIGHT_H

#include <stddef.h>
#include <stdint.h>

#define XM_PF_DISKS_MAX 16
#define XM_PF_LEAVES_MAX 512
#define XM_PF_MSRS_MAX 256
#define XM_PF_VDEV_MAX 31

struct xm_pf_leaf {
  uint32_t leaf, subleaf, a, b, c, d;
};
struct xm_pf_msr {
  uint32_t idx, flags;
  uint64_t val;
};

struct xm_preflight {
  uint32_t xen_major, xen_minor;
  uint32_t ndisks, nleaves, nmsrs;
  struct {
    char vdev[XM_PF_VDEV_MAX + 1];
    uint8_t uuid[16];
  } disks[XM_PF_DISKS_MAX];
  struct xm_pf_leaf leaves[XM_PF_LEAVES_MAX];
  struct xm_pf_msr msrs[XM_PF_MSRS_MAX];
};

/* The encoded size of P (its counts must be within the limits). */
size_t xm_preflight_size (const struct xm_preflight *p);
/* Encode P into OUT (xm_preflight_size bytes); returns that size. */
size_t xm_preflight_encode (const struct xm_preflight *p, uint8_t *out);
/* Decode LEN bytes of BUF into *P: 0, or -1 with ERR (ERRLEN bytes) saying
 * which field at which offset is wrong. */
int xm_preflight_decode (const uint8_t *buf, size_t len,
                         struct xm_preflight *p, char *err, size_t errlen);

/* A UUID's text form (36 characters, lower or upper case hex) to 16 bytes
 * and back (OUT: 37 bytes, lower case).  Parse: 0 or -1. */
int xm_uuid_parse (const char *s, uint8_t out[16]);
void xm_uuid_format (const uint8_t u[16], char out[37]);

/* May a guest saved by Xen SRC_MAJOR.SRC_MINOR be restored by Xen
 * DST_MAJOR.DST_MINOR?  The same major and a minor at least the
 * source's (Xen supports migrating to the same or a newer release, not
 * back to an older one).  0, or -1 with WHY (WHYLEN bytes) saying so. */
int xm_xen_version_ok (uint32_t src_major, uint32_t src_minor,
                       uint32_t dst_major, uint32_t dst_minor,
                       char *why, size_t whylen);

#endif
