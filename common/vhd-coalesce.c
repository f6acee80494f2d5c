/* Coalesce: merge a differencing image into its parent.
 *
 * Every sector the child holds (bit set in its bitmap) is written into the
 * parent through the crash-safe writer (vhd-write.c), with a flush every
 * VHD_COALESCE_FLUSH_BYTES; the child is only read.  Afterwards the parent
 * reads exactly as the child did, and the child is redundant.
 *
 * Crash safety and resumption follow: the child never changes, and writing
 * a sector into the parent again writes the same bytes, so an interrupted
 * coalesce is resumed by running it again; until it completes the child
 * still reads correctly (its sectors win over the parent's).  What is not
 * safe is another child of the same parent, which would see its parent
 * change: callers must refuse that (sxm-vhd checks the parent's directory). */

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

#define VHD_COALESCE_FLUSH_BYTES (256ULL << 20)

int
vhd_coalesce (const char *child_path, uint64_t *copied)
{
  struct vhd_layer *child, *parent = NULL;
  uint64_t since_flush = 0;
  uint8_t *buf = NULL;
  int ret = -1;
  uint32_t blk;

  *copied = 0;
  child = vhd_open_chain (child_path, VHD_SIZE_CURRENT);
  if (!child)
    return -1;
  if (child->footer.type != VHD_TYPE_DIFF) {
    sxm_error ("%s: not a differencing image: nothing to coalesce",
               child_path);
    goto out;
  }
  if (child->parent->raw) {
    sxm_error ("%s: the parent %s is a raw file, which sxm never writes "
               "(convert it to a VHD first, or copy the chain out whole "
               "with sxm-copy)", child_path, child->parent->path);
    goto out;
  }
  /* The parent as the child found it, opened again for writing. */
  parent = vhd_open_chain_rw (child->parent->path, VHD_SIZE_CURRENT);
  if (!parent)
    goto out;
  if (!parent->writable) {
    sxm_error ("%s: parent %s cannot be opened for writing", child_path,
               parent->path);
    goto out;
  }
  if (memcmp (parent->footer.uuid, child->header.parent_uuid, 16) != 0) {
    sxm_error ("%s: parent %s changed identity while opening", child_path,
               parent->path);
    goto out;
  }
  if (parent->size < child->size) {
    sxm_error ("%s: virtual size %" PRIu64 " is larger than its parent's "
               "%" PRIu64 "; grow the parent first", child_path, child->size,
               parent->size);
    goto out;
  }
  buf = malloc (child->block_size);
  if (!buf)
    goto out;

  for (blk = 0; blk < child->nblocks; blk++) {
    uint32_t sec = vhd_bat_get (child, blk);
    uint64_t bstart = (uint64_t) blk << child->block_shift;
    uint64_t nsec = child->block_size / VHD_SECTOR, s = 0;
    const uint8_t *bm;

    if (sec == VHD_BAT_UNUSED)
      continue;
    bm = vhd_get_bitmap (child, blk);
    if (!bm)
      goto out;
    if (bstart + child->block_size > child->size)
      nsec = (child->size - bstart) / VHD_SECTOR;
    while (s < nsec) {
      uint64_t run = bm == VHD_BITMAP_FULL ? nsec - s
                                           : bitmap_run (bm, s, nsec);
      bool set = bm == VHD_BITMAP_FULL || bitmap_get (bm, s);
      if (set) {
        uint64_t len = run * VHD_SECTOR;
        uint64_t foff = (uint64_t) sec * VHD_SECTOR + child->bitmap_bytes +
                        s * VHD_SECTOR;
        if (vhd_pread_full (child->fd, buf, len, foff) == -1) {
          sxm_error ("%s: reading block %" PRIu32 ": %s", child_path, blk,
                     strerror (errno));
          goto out;
        }
        if (vhd_write (parent, buf, len, bstart + s * VHD_SECTOR) == -1)
          goto out;
        *copied += len;
        since_flush += len;
        if (since_flush >= VHD_COALESCE_FLUSH_BYTES) {
          if (vhd_flush (parent) == -1)
            goto out;
          since_flush = 0;
        }
      }
      s += run;
    }
  }
  if (vhd_flush (parent) == -1)
    goto out;
  ret = 0;
 out:
  free (buf);
  vhd_close_chain (parent);
  vhd_close_chain (child);
  return ret;
}

