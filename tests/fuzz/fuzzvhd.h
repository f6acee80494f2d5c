/* Shared by the VHD fuzz harnesses (fuzz-vhd-open.c, fuzz-vhd-write.c). */
#ifndef SXM_FUZZVHD_H
#define SXM_FUZZVHD_H

#include <stdint.h>
#include <string.h>

#include "endian.h"
#include "log.h"
#include "vhd.h"

/* Log sink that drops everything: refusals are the expected outcome. */
static void
quiet (enum sxm_log_level level, const char *msg)
{
}

/* Checksums stop random mutations at the first field, so the harnesses
 * recompute the footer (end and copy) and header checksums of an image B
 * of N bytes (N >= 1536) before opening it. */
static void
fix_checksums (uint8_t *b, size_t n)
{
  size_t foot = n - 512;
  uint64_t hoff;

  if (memcmp (b + foot, "conectix", 8) == 0)
    be32_store (b + foot + 64, vhd_checksum (b + foot, 512, 64));
  if (memcmp (b, "conectix", 8) == 0)
    be32_store (b + 64, vhd_checksum (b, 512, 64));
  hoff = be64_load (b + foot + 16);
  if (hoff <= n - 1024)
    be32_store (b + hoff + 36, vhd_checksum (b + hoff, 1024, 36));
}

#endif
