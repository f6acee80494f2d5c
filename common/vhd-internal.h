/* Shared between the VHD reader (vhd.c), creator (vhd-create.c) and writer
 * (vhd-write.c); not part of the API used by the plugin and tools. */
#ifndef SXM_VHD_INTERNAL_H
#define SXM_VHD_INTERNAL_H

#include <errno.h>

#include "fullio.h"
#include "vhd.h"

/* A cached sector bitmap whose bits are all set: costs no memory, and the
 * block reads with one pread. */
extern const uint8_t vhd_bitmap_full_marker;
#define VHD_BITMAP_FULL ((uint8_t *) &vhd_bitmap_full_marker)

/* BAT entries are published by the writer with a release store after the
 * block's bitmap pointer, so a reader that sees the entry finds the bitmap. */
static inline uint32_t
vhd_bat_get (const struct vhd_layer *l, uint32_t blk)
{
  return __atomic_load_n (&l->bat[blk], __ATOMIC_ACQUIRE);
}

const uint8_t *vhd_get_bitmap (struct vhd_layer *l, uint32_t blk);

/* 0 if [offset, offset+count) lies within the virtual disk, else -1 with
 * errno EINVAL. */
static inline int
vhd_check_range (const struct vhd_layer *l, uint64_t offset, uint64_t count)
{
  if (offset > l->size || count > l->size - offset) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* For writes: also EROFS unless the layer was opened for writing. */
static inline int
vhd_check_write (const struct vhd_layer *l, uint64_t offset, uint64_t count)
{
  if (!l->writable) {
    errno = EROFS;
    return -1;
  }
  return vhd_check_range (l, offset, count);
}

/* The resolver: splits a virtual range of layer L into pieces, each stored
 * in one layer's file at FILE_OFFSET (SRC != NULL) or zero (SRC == NULL).
 * FN returns 0 to go on, 1 to stop, -1 on error. */
typedef int (*piece_fn) (void *opaque, const struct vhd_layer *src,
                         uint64_t file_offset, uint64_t voffset,
                         uint64_t length);
int vhd_resolve (const struct vhd_layer *l, uint64_t off, uint64_t len,
                 piece_fn fn, void *opaque);

/* pread the whole range or fail (common/fullio.h does the looping): 0, or
 * -1 with errno; EIO if the file ends inside the range, which the
 * validated layout says it cannot (a file cut or changed under us).
 * Writes need no such rule: full_pwrite. */
static inline int
vhd_pread_full (int fd, void *buf, size_t count, uint64_t offset)
{
  ssize_t r = full_pread (fd, buf, count, offset);

  if (r == -1)
    return -1;
  if ((size_t) r < count) {
    errno = EIO;
    return -1;
  }
  return 0;
}

/* The footer of an open image (the end one, else the copy at offset 0
 * when only it has the cookie; *FROM_COPY says which): 0, or -1 on I/O
 * error.  FILE_SIZE must be at least 512. */
int vhd_locate_footer (int fd, uint64_t file_size, uint8_t *fbuf,
                       bool *from_copy);
/* Open PATH alone, read-only: everything validated as vhd_open_chain
 * does, but a differencing image's parent is not looked for (l->parent
 * stays NULL: reads are not possible, metadata is).  For repairing the
 * link to a parent. */
struct vhd_layer *vhd_open_alone (const char *path);

/* A parent locator's data size in the file, whole sectors: its data
 * space field is in sectors by the specification, in bytes as Hyper-V
 * writes it (a value below 512 can only be sectors).  vhd-resize.c. */
uint64_t vhd_locator_bytes (uint32_t space);

/* Set HEADER's checksum, write it at HOFF and sync: 0 or -1 with errno.
 * vhd-resize.c. */
int vhd_write_header (int fd, uint8_t *header, uint64_t hoff);

/* Move every block of L that starts before META_END to the end of the file
 * (*END, moved on): each copied with a footer after it and synced, then
 * its BAT entry switched and synced, so a crash leaves the image as it was
 * but for unreferenced copies.  Room for metadata, which blktap requires
 * before every block (vhd-resize.c).  0 or -1 with a message. */
int vhd_move_blocks_below (struct vhd_layer *l, int fd, uint64_t meta_end,
                           uint64_t *end);

/* A differencing child's references to PARENT_PATH (vhd-create.c): the
 * parent name (UTF-16BE file name, as blktap writes it) and the W2ru
 * (relative to the child's directory), W2ku (absolute) and MacX
 * (file:// URL) locators' data. */
struct vhd_parent_refs {
  uint8_t name[512];
  size_t name_len;
  struct { const char *code; const uint8_t *data; size_t len; } loc[3];
  uint8_t w2ru[8192], w2ku[8192];
  char *url, *pabs;
  uint32_t mtime;               /* the parent's, VHD epoch */
};
int vhd_parent_refs (const char *child_path, const char *parent_path,
                     struct vhd_parent_refs *r);
void vhd_parent_refs_free (struct vhd_parent_refs *r);

/* The specification's CHS geometry for SIZE bytes (rounded down). */
void vhd_spec_chs (uint64_t size, uint16_t *c, uint8_t *h, uint8_t *s);
/* Write FOOTER at END_AT and sync, then (COPY_AT_0) at offset 0 and sync:
 * the order every footer change uses (readers take the end one).  0 or -1
 * with errno. */
int vhd_write_footers (int fd, const uint8_t *footer, uint64_t end_at,
                       bool copy_at_0);
/* Set a footer buffer's current size, geometry and checksum. */
void vhd_footer_set_size (uint8_t *footer, uint64_t size);

int vhd_writer_init (struct vhd_layer *l);
void vhd_writer_fini (struct vhd_layer *l);

#endif
