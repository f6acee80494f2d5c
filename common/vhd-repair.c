/* Repairing what 'sxm-vhd check' calls repairable, offline (nothing may be
 * serving the image).
 *
 * Only the footers change: a geometry larger than the specification's CHS
 * for the current size (XenServer's tools refuse it; sxm itself wrote such
 * images before it wrote the specification's geometry) is replaced by that
 * CHS; an end footer that is missing is written back from the copy at
 * offset 0; a copy at offset 0 that differs from the end footer is
 * rewritten from it.  The end footer is written and synced first (readers
 * use it), then the copy: a crash in between leaves a valid image whose
 * two copies differ, which check reports and a second repair finishes.
 * The current size, the data and the UUID never change. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "endian.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

int
vhd_write_footers (int fd, const uint8_t *footer, uint64_t end_at,
                   bool copy_at_0)
{
  if (full_pwrite (fd, footer, VHD_FOOTER_SIZE, end_at) == -1 ||
      fdatasync (fd) == -1)
    return -1;
  if (copy_at_0 &&
      (full_pwrite (fd, footer, VHD_FOOTER_SIZE, 0) == -1 ||
       fdatasync (fd) == -1))
    return -1;
  return 0;
}

int
vhd_repair (const char *path, vhd_repair_report report, void *opaque)
{
  struct vhd_layer *l;
  uint8_t footer[VHD_FOOTER_SIZE], head[VHD_FOOTER_SIZE];
  uint64_t end_at;
  uint32_t geometry, want;
  bool dynamic, rewrite_end = false, rewrite_copy = false;
  char msg[512];
  int fd = -1, ret = -1;

  /* Our reader validates everything first: a repair never starts on an
   * image it could make worse. */
  l = vhd_open_chain (path, VHD_SIZE_CURRENT);
  if (!l)
    return -1;
  dynamic = l->footer.type != VHD_TYPE_FIXED;
  memcpy (footer, l->footer_buf, sizeof footer);
  fd = open (path, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    sxm_error ("%s: %s", path, strerror (errno));
    goto out;
  }

  /* 1. The geometry. */
  geometry = be32_load (footer + 56);
  want = vhd_xen_geometry (l->footer.current_size);
  if (geometry > want) {
    uint64_t before = vhd_chs_size (&l->footer);
    vhd_footer_set_size (footer, l->footer.current_size);
    snprintf (msg, sizeof msg, "geometry %u/%u/%u -> %u/%u/%u, the "
              "specification's CHS for the current size %" PRIu64 " (which "
              "stays the size; a reader sizing by geometry, such as qemu "
              "without force_size_calc=current_size, now sees %" PRIu64
              " bytes instead of %" PRIu64 ")", geometry >> 16,
              (geometry >> 8) & 0xff, geometry & 0xff, want >> 16,
              (want >> 8) & 0xff, want & 0xff, l->footer.current_size,
              (uint64_t) (want >> 16) * ((want >> 8) & 0xff) * (want & 0xff)
              * VHD_SECTOR,
              before == 65535ULL * 16 * 255 * VHD_SECTOR
              ? l->footer.current_size : before);
    report (opaque, msg);
    rewrite_end = rewrite_copy = true;
  }

  /* 2. The end footer, where the reader found only the copy at 0. */
  if (l->footer_at == UINT64_MAX) {
    end_at = (l->data_limit + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
    snprintf (msg, sizeof msg, "end footer written at offset %" PRIu64
              " from the copy at offset 0", end_at);
    report (opaque, msg);
    rewrite_end = true;
  }
  else
    end_at = l->footer_at;

  /* 3. The copy at offset 0 (dynamic and differencing images only). */
  if (dynamic && !rewrite_copy) {
    if (vhd_pread_full (fd, head, sizeof head, 0) == -1) {
      sxm_error ("%s: reading the footer copy at offset 0: %s", path,
                 strerror (errno));
      goto out;
    }
    if (memcmp (head, footer, sizeof head) != 0) {
      snprintf (msg, sizeof msg, "footer copy at offset 0 rewritten from "
                "the end footer");
      report (opaque, msg);
      rewrite_copy = true;
    }
  }

  if ((rewrite_end || rewrite_copy) &&
      vhd_write_footers (fd, footer, end_at, dynamic && rewrite_copy) == -1) {
    sxm_error ("%s: writing the footers: %s", path, strerror (errno));
    goto out;
  }
  ret = rewrite_end || rewrite_copy;

 out:
  if (fd >= 0 && close (fd) == -1 && ret >= 0) {
    sxm_error ("%s: close: %s", path, strerror (errno));
    ret = -1;
  }
  vhd_close_chain (l);
  return ret;
}
