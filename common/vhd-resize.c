/* Growing a dynamic or differencing image (offline: nothing may be serving
 * it).
 *
 * If the BAT has room for the new size, only the footers change.  If not,
 * the BAT grows where it is (blktap requires it before every block): what
 * lies in the way moves to the end first (grow_bat_in_place).  Then the
 * footers get the new size, the end one first, with an fdatasync between
 * steps.  A crash at any point leaves a valid image of either the old or
 * the new size (at worst with the footer copy at offset 0 still giving the
 * old size: 'sxm-vhd check' reports it as repairable and the end footer,
 * which is used, has the new size). */

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

uint64_t
vhd_locator_bytes (uint32_t space)
{
  uint64_t b = space < VHD_SECTOR ? (uint64_t) space * VHD_SECTOR : space;
  return (b + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
}

static uint64_t
locator_bytes (const uint8_t *le)
{
  return vhd_locator_bytes (be32_load (le + 4));
}

/* Copy LEN bytes at FROM to *END, a footer after them (so the file stays
 * valid whatever happens next), and sync.  *END moves on. */
static int
copy_to_end (struct vhd_layer *l, int fd, uint8_t *buf, uint64_t len,
             uint64_t from, uint64_t *end)
{
  if (vhd_pread_full (fd, buf, len, from) == -1 ||
      full_pwrite (fd, buf, len, *end) == -1 ||
      full_pwrite (fd, l->footer_buf, VHD_FOOTER_SIZE, *end + len) == -1 ||
      fdatasync (fd) == -1)
    return -1;
  *end += len;
  return 0;
}

int
vhd_write_header (int fd, uint8_t *header, uint64_t hoff)
{
  be32_store (header + 36, 0);
  be32_store (header + 36, vhd_checksum (header, VHD_HEADER_SIZE, 36));
  if (full_pwrite (fd, header, VHD_HEADER_SIZE, hoff) == -1 ||
      fdatasync (fd) == -1)
    return -1;
  return 0;
}

int
vhd_move_blocks_below (struct vhd_layer *l, int fd, uint64_t meta_end,
                       uint64_t *end)
{
  uint64_t blen = l->bitmap_bytes + (uint64_t) l->block_size, at;
  uint64_t toff = l->header.table_offset;
  uint8_t *buf = NULL, e[4];
  uint32_t b;

  for (b = 0; b < l->nblocks; b++) {
    if (l->bat[b] == VHD_BAT_UNUSED ||
        (uint64_t) l->bat[b] * VHD_SECTOR >= meta_end)
      continue;
    if (!buf && !(buf = malloc (blen)))
      goto io_error;
    at = *end;
    if (copy_to_end (l, fd, buf, blen, (uint64_t) l->bat[b] * VHD_SECTOR,
                     end) == -1)
      goto io_error;
    be32_store (e, (uint32_t) (at / VHD_SECTOR));
    if (full_pwrite (fd, e, 4, toff + 4 * (uint64_t) b) == -1 ||
        fdatasync (fd) == -1)
      goto io_error;
    l->bat[b] = (uint32_t) (at / VHD_SECTOR);
  }
  free (buf);
  return 0;

 io_error:
  sxm_error ("%s: moving block %" PRIu32 " to the end of the file: %s",
             l->path, b, strerror (errno ? errno : EIO));
  free (buf);
  return -1;
}

/* Make room for a BAT of NEED entries where the BAT is.  blktap
 * (XenServer) requires all metadata -- header, table, parent locators'
 * data -- to come before every block, so the table cannot simply move to
 * the end of the file: what is in the way moves instead.  The new layout
 * is the table, then the locators' data, then blocks (META_END).
 *
 *   1. locators' data in the way is copied to the end, the header pointed
 *      at the copies;
 *   2. blocks starting before META_END are copied to the end, each BAT
 *      entry switched after its copy is synced;
 *   3. the table's new entries are written unused, the locators' data
 *      copied to its place after the table, synced; then one header write
 *      points at it and gives the table its new size.
 *
 * Every copy is followed by a footer and synced before the one reference
 * to it is switched, so a crash leaves the old image (at worst with
 * unreferenced copies after its blocks).  *END: the end of the used area
 * (where the footer goes), moved on. */
static int
grow_bat_in_place (struct vhd_layer *l, int fd, uint8_t *header,
                   uint64_t hoff, uint64_t need, uint64_t *end)
{
  uint64_t toff = l->header.table_offset;
  uint64_t old_bytes = ((uint64_t) l->header.max_table_entries * 4
                        + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  uint64_t new_bytes = (need * 4 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  uint64_t new_end = toff + new_bytes, meta_end = new_end, at;
  uint64_t bufsize = 16 * VHD_SECTOR;
  uint64_t place[VHD_NR_LOCATORS] = { 0 };
  uint8_t *buf = NULL;
  int ret = -1, i;

  if (toff < hoff + VHD_HEADER_SIZE && toff + new_bytes > hoff) {
    sxm_error ("%s: the block table lies before the header; growing it in "
               "place is not supported", l->path);
    return -1;
  }
  if (memcmp (l->footer.creator_app, "tap", 3) == 0 &&
      l->footer.creator_version > 0x00000001) {
    uint8_t cookie[8];
    if (vhd_pread_full (fd, cookie, 8, toff + old_bytes) == 0 &&
        memcmp (cookie, "tdbatmap", 8) == 0) {
      sxm_error ("%s: a blktap batmap follows the block table; growing the "
                 "table past it is not supported (blktap's 'vhd-util "
                 "resize' can)", l->path);
      return -1;
    }
  }
  /* Where each locator's data goes: after the table, in order. */
  for (i = 0; i < VHD_NR_LOCATORS; i++) {
    uint8_t *le = header + 576 + 24 * i;
    if (!le[0] || !locator_bytes (le))
      continue;
    place[i] = meta_end;
    meta_end += locator_bytes (le);
    if (locator_bytes (le) > bufsize)
      bufsize = locator_bytes (le);
  }
  buf = malloc (bufsize);
  if (!buf)
    goto io_error;

  /* 1. Locators' data out of the way. */
  for (i = 0; i < VHD_NR_LOCATORS; i++) {
    uint8_t *le = header + 576 + 24 * i;
    if (!place[i] || be64_load (le + 16) >= meta_end)
      continue;
    at = *end;
    if (copy_to_end (l, fd, buf, locator_bytes (le), be64_load (le + 16),
                     end) == -1)
      goto io_error;
    be64_store (le + 16, at);
    if (vhd_write_header (fd, header, hoff) == -1)
      goto io_error;
  }

  /* 2. Blocks out of the way. */
  if (vhd_move_blocks_below (l, fd, meta_end, end) == -1)
    goto out;

  /* 3. The new entries, the locators in place, one header write. */
  memset (buf, 0xff, 16 * VHD_SECTOR);
  for (at = toff + (uint64_t) l->header.max_table_entries * 4;
       at < new_end; ) {
    uint64_t n = new_end - at < 16 * VHD_SECTOR ? new_end - at
                                                 : 16 * VHD_SECTOR;
    if (full_pwrite (fd, buf, n, at) == -1)
      goto io_error;
    at += n;
  }
  for (i = 0; i < VHD_NR_LOCATORS; i++) {
    uint8_t *le = header + 576 + 24 * i;
    uint64_t len = locator_bytes (le);
    if (!place[i] || be64_load (le + 16) == place[i])
      continue;
    if (vhd_pread_full (fd, buf, len, be64_load (le + 16)) == -1 ||
        full_pwrite (fd, buf, len, place[i]) == -1)
      goto io_error;
    be64_store (le + 16, place[i]);
  }
  if (fdatasync (fd) == -1)
    goto io_error;
  be32_store (header + 28, (uint32_t) need);
  if (vhd_write_header (fd, header, hoff) == -1)
    goto io_error;
  ret = 0;
  goto out;

 io_error:
  sxm_error ("%s: resize: moving data to make room for the block table: %s",
             l->path, strerror (errno ? errno : EIO));
 out:
  free (buf);
  return ret;
}

int
vhd_resize (const char *path, uint64_t new_size)
{
  struct vhd_layer *l;
  uint8_t footer[VHD_FOOTER_SIZE], header[VHD_HEADER_SIZE];
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
    if (grow_bat_in_place (l, fd, header, hoff, need, &end) == -1)
      goto out;
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
  /* The original size too: libvhdi (and so vhdimount) takes the disk's
   * size from it; blktap and Hyper-V read the current size only. */
  be64_store (footer + 40, new_size);
  vhd_footer_set_size (footer, new_size);
  if (vhd_write_footers (fd, footer, end, true) == -1)
    goto io_error;
  ret = 0;
  goto out;

 io_error:
  sxm_error ("%s: resize: %s", path, strerror (errno ? errno : EIO));
 out:
  if (fd >= 0)
    close (fd);
  vhd_close_chain (l);
  return ret;
}
