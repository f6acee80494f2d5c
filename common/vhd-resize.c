/* Growing a dynamic or differencing image (offline: nothing may be serving
 * it).
 *
 * If the BAT has room for the new size, only the footers change.  If not,
 * a larger copy of the BAT is written at the end of the file first, then
 * the header is pointed at it, then the footers get the new size, with an
 * fdatasync between steps.  A crash at any point leaves a valid image of
 * either the old or the new size (at worst with the footer copy at offset 0
 * still giving the old size: 'sxm-vhd check' reports it as repairable and
 * the end footer, which is used, has the new size). */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endian.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

int
vhd_resize (const char *path, uint64_t new_size)
{
  struct vhd_layer *l;
  uint8_t footer[VHD_FOOTER_SIZE], header[VHD_HEADER_SIZE];
  uint8_t *bat = NULL;
  uint64_t need, end, hoff;
  int fd = -1, ret = -1;
  uint32_t i;

  l = vhd_open_chain (path, VHD_SIZE_CURRENT);
  if (!l)
    return -1;
  if (l->footer.type == VHD_TYPE_FIXED) {
    sxm_error ("%s: growing fixed images is not implemented", path);
    goto out;
  }
  if (new_size % VHD_SECTOR || new_size > VHD_MAX_SIZE) {
    sxm_error ("%s: new size %" PRIu64 " must be a multiple of 512 of at "
               "most 2040 GiB", path, new_size);
    goto out;
  }
  if (new_size < l->size) {
    sxm_error ("%s: shrinking (%" PRIu64 " -> %" PRIu64 ") is not supported",
               path, l->size, new_size);
    goto out;
  }
  if (new_size == l->size) {
    ret = 0;
    goto out;
  }
  need = (new_size + l->block_size - 1) / l->block_size;
  if (need > VHD_MAX_BAT) {
    sxm_error ("%s: %" PRIu64 " bytes need more than %u BAT entries of "
               "%" PRIu32 " bytes", path, new_size, VHD_MAX_BAT,
               l->block_size);
    goto out;
  }
  fd = open (path, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    sxm_error ("%s: %s", path, strerror (errno));
    goto out;
  }
  hoff = l->footer.data_offset;
  memcpy (footer, l->footer_buf, sizeof footer);
  if (vhd_pread_full (fd, header, sizeof header, hoff) == -1)
    goto io_error;
  end = (l->data_limit + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;

  if (need > l->header.max_table_entries) {
    /* 1. A larger BAT at the end (followed by a footer, still of the old
     * size, so the file stays valid). */
    uint64_t bytes = (need * 4 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
    bat = malloc (bytes);
    if (!bat)
      goto io_error;
    memset (bat, 0xff, bytes);
    for (i = 0; i < l->nblocks; i++)
      be32_store (bat + 4 * i, l->bat[i]);
    if (full_pwrite (fd, footer, VHD_FOOTER_SIZE, end + bytes) == -1 ||
        full_pwrite (fd, bat, bytes, end) == -1 || fdatasync (fd) == -1)
      goto io_error;
    /* 2. The header points at it. */
    be64_store (header + 16, end);
    be32_store (header + 28, (uint32_t) need);
    be32_store (header + 36, 0);
    be32_store (header + 36, vhd_checksum (header, sizeof header, 36));
    if (full_pwrite (fd, header, sizeof header, hoff) == -1 ||
        fdatasync (fd) == -1)
      goto io_error;
    end += bytes;
  }
  else {
    /* Entries past the old size must be unused before they come into
     * use; a writer never sets them, but check. */
    uint8_t e[4];
    for (i = l->nblocks; i < need; i++) {
      if (vhd_pread_full (fd, e, 4, l->header.table_offset + 4 * (uint64_t) i)
          == -1)
        goto io_error;
      if (be32_load (e) != VHD_BAT_UNUSED) {
        sxm_error ("%s: BAT entry %" PRIu32 " beyond the current size is in "
                   "use (field 'BAT entry' at offset %" PRIu64 ")", path, i,
                   l->header.table_offset + 4 * (uint64_t) i);
        goto out;
      }
    }
  }

  /* 3. The footers: the end one first (it is the one readers use), then
   * the copy at offset 0. */
  vhd_footer_set_size (footer, new_size);
  if (full_pwrite (fd, footer, VHD_FOOTER_SIZE, end) == -1 ||
      fdatasync (fd) == -1 ||
      full_pwrite (fd, footer, VHD_FOOTER_SIZE, 0) == -1 ||
      fdatasync (fd) == -1)
    goto io_error;
  ret = 0;
  goto out;

 io_error:
  sxm_error ("%s: resize: %s", path, strerror (errno ? errno : EIO));
 out:
  free (bat);
  if (fd >= 0)
    close (fd);
  vhd_close_chain (l);
  return ret;
}
