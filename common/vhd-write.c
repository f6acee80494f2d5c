/* Writing to the top image of a chain.
 *
 * Crash safety (see doc/design.md, "Writes"): data goes to the file at once,
 * but nothing on disk points at new data until it is durable.  New blocks
 * are appended at data_end (a footer written after them grows the file, so
 * their unwritten parts read as zeros and the file keeps a valid end footer
 * whenever the process dies; their bitmap is written at once too, claiming
 * the space).  Their BAT entries, and bitmap bits
 * set in existing blocks, live in memory, marked dirty, and are written by
 * vhd_flush() only after an fdatasync() of the data, followed by a second
 * fdatasync().  The footer is rewritten at the new end at flush
 * time; a crash between growing the file and that rewrite leaves no end
 * footer, and the reader then uses the footer copy at offset 0.
 *
 * After a crash at any instant the file therefore opens, every BAT entry and
 * bitmap bit on disk covers durable data (never garbage), and every write
 * completed before the last completed flush is there.  Space appended after
 * the last flush may be orphaned (unreferenced); it is never reused.
 *
 * Locking: blocks already allocated with a full bitmap take no lock (a plain
 * pwrite).  Allocating a block, or setting bits in a partial bitmap, holds
 * that block's range lock, so writers of different blocks run in parallel;
 * the short 'meta' mutex covers only in-memory updates (dirty list, bits,
 * data_end), never I/O.  Flushes are serialised by 'flush_lock'. */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bitmap.h"
#include "endian.h"
#include "log.h"
#include "vhd.h"
#include "vhd-internal.h"

enum { DIRTY_BITMAP = 1, DIRTY_BAT = 2 };

int
vhd_writer_init (struct vhd_layer *l)
{
  pthread_mutex_init (&l->meta, NULL);
  pthread_mutex_init (&l->flush_lock, NULL);
  l->block_locks = (struct rangelock) RANGELOCK_INIT;
  l->data_end = (l->data_limit + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  l->footer_dirty = false;      /* nothing is written until a write is */
  if (l->footer.type != VHD_TYPE_FIXED) {
    l->dirty = calloc (l->nblocks ? l->nblocks : 1, 1);
    if (!l->dirty) {
      sxm_error ("%s: out of memory", l->path);
      return -1;
    }
  }
  return 0;
}

void
vhd_writer_fini (struct vhd_layer *l)
{
  if (vhd_flush (l) == -1)
    sxm_error ("%s: final flush failed: %s; writes since the last "
               "successful flush may be lost", l->path, strerror (errno));
  free (l->dirty);
  free (l->dirty_list);
  pthread_mutex_destroy (&l->meta);
  pthread_mutex_destroy (&l->flush_lock);
}

/* Called with 'meta' held. */
static int
mark_dirty (struct vhd_layer *l, uint32_t blk, int what)
{
  if (!l->dirty[blk]) {
    if (l->ndirty == l->dirty_cap) {
      size_t cap = l->dirty_cap ? 2 * l->dirty_cap : 64;
      uint32_t *n = realloc (l->dirty_list, cap * sizeof *n);
      if (!n)
        return -1;
      l->dirty_list = n;
      l->dirty_cap = cap;
    }
    l->dirty_list[l->ndirty++] = blk;
  }
  l->dirty[blk] |= what;
  return 0;
}

/* Widen [off, off+len) of block-local data to whole sectors, filling the
 * head and tail with what the chain reads there now.  The caller holds the
 * block's lock, so that content cannot change under us. */
static uint8_t *
widen (struct vhd_layer *l, const void *buf, uint64_t voff, uint64_t len,
       uint64_t *wvoff, uint64_t *wlen)
{
  uint64_t s0 = voff / VHD_SECTOR * VHD_SECTOR;
  uint64_t s1 = (voff + len + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
  uint8_t *w;

  if (s1 > l->size)             /* the last sector may be partial */
    s1 = l->size;
  *wvoff = s0;
  *wlen = s1 - s0;
  w = malloc (*wlen);
  if (!w)
    return NULL;
  if (s0 < voff && vhd_read (l, w, VHD_SECTOR, s0) == -1)
    goto fail;
  if (voff + len < s1 && s1 - VHD_SECTOR >= s0 &&
      vhd_read (l, w + (s1 - VHD_SECTOR - s0), VHD_SECTOR,
                s1 - VHD_SECTOR) == -1)
    goto fail;
  memcpy (w + (voff - s0), buf, len);
  return w;
 fail:
  free (w);
  return NULL;
}

/* Write LEN bytes at virtual VOFF, all inside block BLK. */
static int
write_in_block (struct vhd_layer *l, uint32_t blk, const uint8_t *buf,
                uint64_t voff, uint64_t len)
{
  uint64_t bstart = (uint64_t) blk << l->block_shift;
  uint32_t sec = vhd_bat_get (l, blk);
  struct range_held *lock;
  uint8_t *wide = NULL, *bm = NULL;
  uint64_t wvoff, wlen, start;
  int ret = -1, e;
  uint64_t s;

  /* Fast path: allocated, every sector ours. */
  if (sec != VHD_BAT_UNUSED && vhd_get_bitmap (l, blk) == VHD_BITMAP_FULL)
    return full_pwrite (l->fd, buf, len, (uint64_t) sec * VHD_SECTOR +
                        l->bitmap_bytes + (voff - bstart));

  lock = rangelock_lock (&l->block_locks, blk, 1);
  if (!lock) {
    errno = ENOMEM;
    return -1;
  }
  sec = vhd_bat_get (l, blk);
  if (sec != VHD_BAT_UNUSED) {
    const uint8_t *cur = vhd_get_bitmap (l, blk);
    if (!cur)
      goto out;
    if (cur == VHD_BITMAP_FULL) {           /* filled while we waited */
      ret = full_pwrite (l->fd, buf, len, (uint64_t) sec * VHD_SECTOR +
                         l->bitmap_bytes + (voff - bstart));
      goto out;
    }
    /* Partial bitmap: write whole sectors, then set their bits. */
    wide = widen (l, buf, voff, len, &wvoff, &wlen);
    if (!wide)
      goto out;
    if (full_pwrite (l->fd, wide, wlen, (uint64_t) sec * VHD_SECTOR +
                     l->bitmap_bytes + (wvoff - bstart)) == -1)
      goto out;
    pthread_mutex_lock (&l->meta);
    for (s = (wvoff - bstart) / VHD_SECTOR;
         s < (wvoff - bstart + wlen + VHD_SECTOR - 1) / VHD_SECTOR; s++)
      bitmap_set ((uint8_t *) cur, s);
    ret = mark_dirty (l, blk, DIRTY_BITMAP);
    pthread_mutex_unlock (&l->meta);
    if (ret == -1)
      errno = ENOMEM;
    goto out;
  }

  /* Allocate.  Without a parent the whole block is ours (bits all set, as
   * qemu and Hyper-V do; unwritten parts are file holes, i.e. zeros).  In a
   * differencing image only the written sectors become ours. */
  if (l->parent) {
    bm = calloc (1, l->bitmap_bytes);
    wide = widen (l, buf, voff, len, &wvoff, &wlen);
    if (!bm || !wide)
      goto out;
  }
  else {
    wvoff = voff;
    wlen = len;
  }
  pthread_mutex_lock (&l->meta);
  start = l->data_end;
  if (start / VHD_SECTOR >= VHD_BAT_UNUSED) {
    pthread_mutex_unlock (&l->meta);
    sxm_error ("%s: file would exceed the VHD limit of 2 TiB of blocks",
               l->path);
    errno = ENOSPC;
    goto out;
  }
  l->data_end += l->bitmap_bytes + l->block_size;
  pthread_mutex_unlock (&l->meta);

  /* First a footer after the new block: writing it grows the file (so the
   * block's unwritten parts are holes, reading zeros) and keeps a valid
   * footer at the end whenever the process dies.  Then the block's bitmap,
   * although no BAT entry on disk points here yet: both claim their space
   * now, so a full file system fails this write (cleanly: the space stays
   * orphaned) rather than a later flush, which could then never complete. */
  if (!l->parent) {
    bm = malloc (l->bitmap_bytes);
    if (!bm)
      goto out;
    memset (bm, 0xff, l->bitmap_bytes);
  }
  else
    for (s = (wvoff - bstart) / VHD_SECTOR;
         s < (wvoff - bstart + wlen + VHD_SECTOR - 1) / VHD_SECTOR; s++)
      bitmap_set (bm, s);
  if (full_pwrite (l->fd, l->footer_buf, VHD_FOOTER_SIZE,
                   start + l->bitmap_bytes + l->block_size) == -1 ||
      full_pwrite (l->fd, bm, l->bitmap_bytes, start) == -1 ||
      full_pwrite (l->fd, l->parent ? wide : buf, wlen,
                   start + l->bitmap_bytes + (wvoff - bstart)) == -1)
    goto out;                   /* the appended space stays orphaned */

  pthread_mutex_lock (&l->meta);
  if (l->parent) {
    __atomic_store_n (&l->bitmaps[blk], bm, __ATOMIC_RELEASE);
    bm = NULL;
  }
  else
    __atomic_store_n (&l->bitmaps[blk], VHD_BITMAP_FULL, __ATOMIC_RELEASE);
  __atomic_store_n (&l->bat[blk], (uint32_t) (start / VHD_SECTOR),
                    __ATOMIC_RELEASE);
  l->allocated++;
  l->footer_dirty = true;
  ret = mark_dirty (l, blk, DIRTY_BITMAP | DIRTY_BAT);
  pthread_mutex_unlock (&l->meta);
  if (ret == -1)
    errno = ENOMEM;

 out:
  e = errno;
  rangelock_unlock (&l->block_locks, lock);
  free (wide);
  free (bm);
  errno = e;
  return ret;
}

int
vhd_write (struct vhd_layer *l, const void *buf, uint64_t count,
           uint64_t offset)
{
  const uint8_t *p = buf;

  if (vhd_check_write (l, offset, count) == -1)
    return -1;
  if (l->footer.type == VHD_TYPE_FIXED)
    return full_pwrite (l->fd, buf, count, offset);
  if (l->footer_at == UINT64_MAX) {
    /* Opened through the footer copy: the next flush restores the end
     * footer (only once something is written, so -r never modifies). */
    pthread_mutex_lock (&l->meta);
    l->footer_dirty = true;
    pthread_mutex_unlock (&l->meta);
  }

  while (count > 0) {
    uint32_t blk = offset >> l->block_shift;
    uint64_t n = l->block_size - (offset & (l->block_size - 1));
    if (n > count)
      n = count;
    if (write_in_block (l, blk, p, offset, n) == -1) {
      int e = errno;
      sxm_error ("%s: write of %" PRIu64 " bytes at virtual offset %"
                 PRIu64 " failed: %s", l->path, n, offset, strerror (e));
      errno = e;
      return -1;
    }
    p += n;
    offset += n;
    count -= n;
  }
  return 0;
}

static int
zero_piece (void *opaque, const struct vhd_layer *src, uint64_t file_offset,
            uint64_t voffset, uint64_t length)
{
  return src != NULL;           /* stop at the first range holding data */
}

int
vhd_zero (struct vhd_layer *l, uint64_t count, uint64_t offset,
          bool fast_only)
{
  static const uint8_t zeros[65536];
  int r;

  if (vhd_check_write (l, offset, count) == -1)
    return -1;
  /* A fixed image: punching a hole is cheap where the file system can;
   * otherwise the zeros are written below like any data. */
  if (l->footer.type == VHD_TYPE_FIXED &&
      fallocate (l->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                 offset, count) == 0)
    return 0;
  /* Already zero through the whole chain (unallocated everywhere): no work
   * and no allocation. */
  r = vhd_resolve (l, offset, count, zero_piece, NULL);
  if (r == -1)
    return -1;
  if (r == 0)
    return 0;
  if (fast_only) {
    errno = ENOTSUP;
    return -1;
  }
  while (count > 0) {
    uint64_t n = count < sizeof zeros ? count : sizeof zeros;
    /* Skip chunks that already read as zeros through the chain. */
    r = vhd_resolve (l, offset, n, zero_piece, NULL);
    if (r == -1 || (r == 1 && vhd_write (l, zeros, n, offset) == -1))
      return -1;
    offset += n;
    count -= n;
  }
  return 0;
}

struct flush_item {
  uint32_t blk;
  int what;
  uint32_t sec;
  uint8_t *bitmap;              /* snapshot, or NULL for an all-ones one */
};

int
vhd_flush (struct vhd_layer *l)
{
  struct flush_item *items = NULL;
  size_t n = 0, i;
  uint64_t footer_at = 0;
  bool footer = false;
  uint8_t *ones = NULL;
  int ret = -1, e = 0;

  if (!l->writable)
    return 0;
  pthread_mutex_lock (&l->flush_lock);
  if (l->footer.type == VHD_TYPE_FIXED) {
    ret = fdatasync (l->fd);
    e = errno;
    goto out;
  }

  /* 1. Snapshot what is dirty now.  Bits set and entries published from
   * here on belong to the next flush: their data may not be durable yet. */
  pthread_mutex_lock (&l->meta);
  items = calloc (l->ndirty ? l->ndirty : 1, sizeof *items);
  if (!items) {
    pthread_mutex_unlock (&l->meta);
    e = ENOMEM;
    goto out;
  }
  for (i = 0; i < l->ndirty; i++) {
    uint32_t blk = l->dirty_list[i];
    const uint8_t *bm = l->bitmaps[blk];
    items[n].blk = blk;
    items[n].what = l->dirty[blk];
    items[n].sec = vhd_bat_get (l, blk);
    if ((items[n].what & DIRTY_BITMAP) && bm != VHD_BITMAP_FULL) {
      items[n].bitmap = malloc (l->bitmap_bytes);
      if (!items[n].bitmap) {
        pthread_mutex_unlock (&l->meta);
        e = ENOMEM;
        goto out;
      }
      for (size_t b = 0; b < l->bitmap_bytes; b++)
        items[n].bitmap[b] = bitmap_byte (bm, b);
    }
    l->dirty[blk] = 0;
    n++;
  }
  l->ndirty = 0;
  footer = l->footer_dirty;
  footer_at = l->data_end;
  l->footer_dirty = false;
  pthread_mutex_unlock (&l->meta);

  /* 2. The data those entries point at becomes durable. */
  if (fdatasync (l->fd) == -1) {
    e = errno;
    goto requeue;
  }
  if (n == 0 && !footer) {
    ret = 0;
    goto out;
  }

  /* 3. Then the metadata: bitmaps, BAT entries, footer at the new end. */
  ones = malloc (l->bitmap_bytes);
  if (!ones) {
    e = ENOMEM;
    goto requeue;
  }
  memset (ones, 0xff, l->bitmap_bytes);
  for (i = 0; i < n; i++) {
    uint64_t base = (uint64_t) items[i].sec * VHD_SECTOR;
    if ((items[i].what & DIRTY_BITMAP) &&
        full_pwrite (l->fd, items[i].bitmap ? items[i].bitmap : ones,
                     l->bitmap_bytes, base) == -1) {
      e = errno;
      goto requeue;
    }
    if (items[i].what & DIRTY_BAT) {
      uint8_t be[4];
      be32_store (be, items[i].sec);
      if (full_pwrite (l->fd, be, 4, l->header.table_offset +
                       4 * (uint64_t) items[i].blk) == -1) {
        e = errno;
        goto requeue;
      }
    }
  }
  if (footer && full_pwrite (l->fd, l->footer_buf, VHD_FOOTER_SIZE,
                             footer_at) == -1) {
    e = errno;
    goto requeue;
  }

  /* 4. And that is durable too. */
  if (fdatasync (l->fd) == -1) {
    e = errno;
    goto requeue;
  }
  if (footer)
    l->footer_at = footer_at;
  ret = 0;
  goto out;

 requeue:
  /* The flush failed: what it took must be written by the next one. */
  pthread_mutex_lock (&l->meta);
  for (i = 0; i < n; i++)
    if (mark_dirty (l, items[i].blk, items[i].what) == -1)
      break;
  if (footer)
    l->footer_dirty = true;
  pthread_mutex_unlock (&l->meta);
  sxm_error ("%s: flush failed: %s", l->path, strerror (e));

 out:
  if (items)
    for (i = 0; i < n; i++)
      free (items[i].bitmap);
  free (items);
  free (ones);
  pthread_mutex_unlock (&l->flush_lock);
  errno = e;
  return ret;
}
