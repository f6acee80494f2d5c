/* Re-pointing a differencing image at its parent after the parent moved
 * (blktap's `vhd-util modify -p`), offline.
 *
 * The child is opened alone (its parent is usually what cannot be found);
 * the new parent must be the same image, by UUID (or, for a child of a raw
 * file, a raw file).  The new locators (W2ru relative, W2ku absolute, MacX)
 * and parent name are the ones 'snapshot' writes.  Their data goes after
 * the current metadata (blktap requires all of it before every block, so
 * the blocks in the way move to the end first, each synced before its BAT
 * entry switches), is synced, and only then does one header write switch
 * to it: until that write the old locators are untouched, so a crash
 * leaves the child as it was.  The header write itself (1 KiB, two
 * sectors) is the one window a torn write could leave a header whose
 * checksum fails; the format has no second header to fall back to.
 *
 * vhd_relink is the same write with the parent's UUID changed too: it
 * points the child past its parent at an image further down its own
 * chain, once the layers between have been coalesced into that image (the
 * source side of sxm backup, blktap's 'vhd-util modify -p' after a
 * coalesce). */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "endian.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

static int
set_parent (const char *child_path, const char *parent_path, bool ancestor)
{
  static const uint8_t zero_uuid[16];
  struct vhd_layer *c, *p = NULL;
  struct vhd_parent_refs refs;
  uint8_t header[VHD_HEADER_SIZE];
  uint64_t hoff, meta, at, end;
  bool raw;
  struct stat cst;
  int fd = -1, ret, i;

  c = vhd_open_alone (child_path);
  if (!c)
    return -1;
  ret = -2;                     /* from here on: not about opening CHILD */
  memset (&refs, 0, sizeof refs);
  if (c->footer.type != VHD_TYPE_DIFF) {
    sxm_error ("%s: not a differencing image: it has no parent", child_path);
    goto out;
  }
  if (c->footer_at == UINT64_MAX) {
    sxm_error ("%s: the end footer is missing; run 'sxm-vhd repair' first",
               child_path);
    goto out;
  }

  /* The new parent: the same image the child was made over. */
  raw = memcmp (c->header.parent_uuid, zero_uuid, 16) == 0;
  if (raw && ancestor) {
    sxm_error ("%s: its parent is a raw file: there is no chain below it "
               "to relink to", child_path);
    goto out;
  }
  if (raw) {
    if (vhd_has_footer (parent_path) != 0) {
      sxm_error ("%s: its parent is a raw file (parent UUID all zeros), "
                 "but %s is a VHD (or cannot be read)", child_path,
                 parent_path);
      goto out;
    }
  }
  else if (ancestor) {
    /* The new parent must already be in the child's chain, below its
     * parent: the layers between are dropped (their data must be in it:
     * the caller coalesced them). */
    struct vhd_layer *whole = vhd_open_chain (child_path, VHD_SIZE_CURRENT);
    const struct vhd_layer *a;
    char got[37];
    if (!whole)
      goto out;
    p = vhd_open_chain (parent_path, VHD_SIZE_CURRENT);
    for (a = whole; p && a && memcmp (a->footer.uuid, p->footer.uuid, 16);
         a = a->parent)
      ;
    if (p && (!a || a->depth < 2)) {
      vhd_uuid_str (p->footer.uuid, got);
      sxm_error ("%s (UUID %s) is %s of %s's chain: relink only skips "
                 "layers, to an image further down the chain", parent_path,
                 got, a ? "the parent, not an ancestor below the parent"
                 : "not part", child_path);
      vhd_close_chain (whole);
      goto out;
    }
    vhd_close_chain (whole);
    if (!p)
      goto out;
  }
  else {
    char want[37], got[37];
    p = vhd_open_chain (parent_path, VHD_SIZE_CURRENT);
    if (!p)
      goto out;
    if (memcmp (p->footer.uuid, c->header.parent_uuid, 16) != 0) {
      vhd_uuid_str (c->header.parent_uuid, want);
      vhd_uuid_str (p->footer.uuid, got);
      sxm_error ("%s: has UUID %s, but %s's parent is UUID %s (field "
                 "'parent_unique_id' at offset %" PRIu64 "): not its "
                 "parent", parent_path, got, child_path, want,
                 c->footer.data_offset + 40);
      goto out;
    }
  }
  if (stat (child_path, &cst) == -1) {
    sxm_error ("%s: %s", child_path, strerror (errno));
    goto out;
  }
  for (struct vhd_layer *l = p; l; l = l->parent) {
    struct stat st;
    if (stat (l->path, &st) == 0 && st.st_dev == cst.st_dev &&
        st.st_ino == cst.st_ino) {
      sxm_error ("%s: is in %s's own chain: that would be a loop",
                 child_path, parent_path);
      goto out;
    }
  }
  if (vhd_parent_refs (child_path, parent_path, &refs) == -1)
    goto out;

  fd = open (child_path, O_RDWR | O_CLOEXEC);
  hoff = c->footer.data_offset;
  if (fd == -1 || vhd_pread_full (fd, header, sizeof header, hoff) == -1) {
    sxm_error ("%s: %s", child_path, strerror (errno));
    goto out;
  }

  /* The end of today's metadata: the new locators' data goes after it. */
  meta = hoff + VHD_HEADER_SIZE;
  at = c->header.table_offset + ((uint64_t) c->header.max_table_entries * 4
                                 + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  if (at > meta)
    meta = at;
  for (i = 0; i < VHD_NR_LOCATORS; i++) {
    const struct vhd_locator *lc = &c->header.loc[i];
    uint64_t len = vhd_locator_bytes (lc->data_space);
    if (lc->code[0] && lc->data_offset + len > meta)
      meta = lc->data_offset + len;
  }
  meta = (meta + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  at = meta;
  for (i = 0; i < 3; i++)
    at += (refs.loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;

  /* 1. Room: blocks starting before the new end of the metadata move. */
  end = c->footer_at;
  if (vhd_move_blocks_below (c, fd, at, &end) == -1)
    goto out;
  /* An image with no block after its metadata (a fresh snapshot) has its
   * end footer right there, where the new locators go: the footer moves
   * past them first, synced, so the file never lacks an end footer. */
  if (at > end) {
    uint8_t foot[VHD_FOOTER_SIZE];
    if (vhd_pread_full (fd, foot, sizeof foot, c->footer_at) == -1 ||
        full_pwrite (fd, foot, sizeof foot, at) == -1 ||
        fdatasync (fd) == -1) {
      sxm_error ("%s: moving the end footer to %" PRIu64 ": %s", child_path,
                 at, strerror (errno));
      goto out;
    }
    end = at;
  }

  /* 2. The new locators' data, synced. */
  at = meta;
  memset (header + 576, 0, 24 * VHD_NR_LOCATORS);
  for (i = 0; i < 3; i++) {
    uint8_t *e = header + 576 + 24 * i;
    uint32_t space = (refs.loc[i].len + VHD_SECTOR - 1) / VHD_SECTOR
                     * VHD_SECTOR;
    uint8_t *pad = calloc (1, space);
    if (!pad) {
      sxm_error ("%s: out of memory", child_path);
      goto out;
    }
    memcpy (pad, refs.loc[i].data, refs.loc[i].len);
    if (full_pwrite (fd, pad, space, at) == -1) {
      free (pad);
      sxm_error ("%s: writing a parent locator at %" PRIu64 ": %s",
                 child_path, at, strerror (errno));
      goto out;
    }
    free (pad);
    memcpy (e, refs.loc[i].code, 4);
    be32_store (e + 4, space);          /* bytes, as Hyper-V writes it */
    be32_store (e + 8, refs.loc[i].len);
    be64_store (e + 16, at);
    at += space;
  }
  if (fdatasync (fd) == -1) {
    sxm_error ("%s: fdatasync: %s", child_path, strerror (errno));
    goto out;
  }

  /* 3. One header write switches to them (and, relinking, to the new
   * parent's UUID). */
  if (ancestor)
    memcpy (header + 40, p->footer.uuid, 16);
  be32_store (header + 56, refs.mtime);
  memset (header + 64, 0, 512);
  memcpy (header + 64, refs.name, refs.name_len);
  if (vhd_write_header (fd, header, hoff) == -1) {
    sxm_error ("%s: writing the header: %s", child_path, strerror (errno));
    goto out;
  }
  ret = 0;

 out:
  if (fd >= 0 && close (fd) == -1 && ret == 0) {
    sxm_error ("%s: close: %s", child_path, strerror (errno));
    ret = -2;
  }
  vhd_parent_refs_free (&refs);
  if (p)
    vhd_close_chain (p);
  vhd_close_chain (c);
  return ret;
}

int
vhd_set_parent (const char *child_path, const char *parent_path)
{
  return set_parent (child_path, parent_path, false);
}

int
vhd_relink (const char *child_path, const char *ancestor_path)
{
  return set_parent (child_path, ancestor_path, true);
}
