/* Consistency check of an opened chain, beyond what opening validates.
 *
 * Opening already refuses every inconsistency that could make a read wrong
 * (see vhd.c); what remains are conditions a writer can leave behind that
 * are safe to serve but worth repairing, and a full read of every bitmap. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

enum vhd_check_result
vhd_check (struct vhd_layer *top, vhd_check_report report, void *opaque)
{
  enum vhd_check_result res = VHD_CHECK_CLEAN;
  struct vhd_layer *l;
  char msg[512];

  for (l = top; l; l = l->parent) {
    uint64_t used_end;
    uint32_t i;

    if (l->footer.type == VHD_TYPE_FIXED)
      continue;

    /* The two footers. */
    if (l->footer_at == UINT64_MAX) {
      snprintf (msg, sizeof msg, "%s: no footer at the end of the file; the "
                "copy at offset 0 is used (a writer stopped before "
                "rewriting it)", l->path);
      report (opaque, VHD_CHECK_REPAIRABLE, msg);
      res = VHD_CHECK_REPAIRABLE;
    }
    else {
      uint8_t head[VHD_FOOTER_SIZE];
      if (vhd_pread_full (l->fd, head, sizeof head, 0) == -1) {
        snprintf (msg, sizeof msg, "%s: reading the footer copy at 0: %s",
                  l->path, strerror (errno));
        report (opaque, VHD_CHECK_CORRUPT, msg);
        return VHD_CHECK_CORRUPT;
      }
      if (memcmp (head, l->footer_buf, VHD_FOOTER_SIZE) != 0) {
        snprintf (msg, sizeof msg, "%s: the footer copy at offset 0 differs "
                  "from the footer at offset %" PRIu64, l->path, l->footer_at);
        report (opaque, VHD_CHECK_REPAIRABLE, msg);
        res = VHD_CHECK_REPAIRABLE;
      }
    }

    /* Every sector bitmap must be readable. */
    used_end = l->header.table_offset + 4 * (uint64_t) l->header.max_table_entries;
    for (i = 0; i < l->nblocks; i++) {
      uint32_t sec = vhd_bat_get (l, i);
      uint64_t end;
      if (sec == VHD_BAT_UNUSED)
        continue;
      if (!vhd_get_bitmap (l, i)) {
        snprintf (msg, sizeof msg, "%s: block %" PRIu32 ": sector bitmap at "
                  "%" PRIu64 " cannot be read", l->path, i,
                  (uint64_t) sec * VHD_SECTOR);
        report (opaque, VHD_CHECK_CORRUPT, msg);
        return VHD_CHECK_CORRUPT;
      }
      end = (uint64_t) sec * VHD_SECTOR + l->bitmap_bytes + l->block_size;
      if (end > used_end)
        used_end = end;
    }
    for (i = 0; i < VHD_NR_LOCATORS; i++)
      if (l->footer.type == VHD_TYPE_DIFF && l->header.loc[i].code[0] &&
          l->header.loc[i].data_offset + l->header.loc[i].data_length > used_end)
        used_end = l->header.loc[i].data_offset + l->header.loc[i].data_length;

    /* Space after the last block: left by writes that never reached a
     * flush.  Unreferenced, so harmless: reported, not an error. */
    if (l->data_limit > used_end + VHD_SECTOR) {
      snprintf (msg, sizeof msg, "%s: %" PRIu64 " bytes after the last block "
                "are not referenced (writes interrupted before a flush); "
                "harmless", l->path, l->data_limit - used_end);
      report (opaque, VHD_CHECK_CLEAN, msg);
    }
  }
  return res;
}
