/* Bitmaps with the VHD bit order: bit i lives in byte i/8 under mask
 * 0x80 >> (i%8) (most significant bit first).  The VHD sector bitmap uses this
 * order, one bit per 512-byte sector.  Other users in sxm (the mirror's dirty
 * map, sxm-copy's segment maps and checkpoint file) use the same helpers so
 * that there is one definition of the order.
 *
 * xenmem's page bitmaps are the other order, least significant bit first
 * (bit i%8 of byte i/8), and deliberately so: that is the layout of Xen's
 * dirty log (an array of unsigned longs, bit i%64 of word i/64, which on
 * little-endian x86 is the same bytes) and of the bitmaps in xenmem's
 * stream format, so they are read and written as they come, not through
 * these helpers.  The two orders never meet: no bitmap passes from one
 * side to the other. */
#ifndef SXM_BITMAP_H
#define SXM_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Loads and stores are relaxed atomics: the VHD writer sets bits of a
 * bitmap that readers are scanning (a sector being written may read old or
 * new, as NBD allows, but never torn).  On x86 they are plain moves. */
static inline uint8_t
bitmap_byte (const uint8_t *map, uint64_t byte)
{
  return __atomic_load_n (&map[byte], __ATOMIC_RELAXED);
}

static inline bool
bitmap_get (const uint8_t *map, uint64_t i)
{
  return (bitmap_byte (map, i >> 3) >> (7 - (i & 7))) & 1;
}

static inline void
bitmap_set (uint8_t *map, uint64_t i)
{
  __atomic_fetch_or (&map[i >> 3], (uint8_t) (0x80 >> (i & 7)),
                     __ATOMIC_RELAXED);
}

static inline void
bitmap_clear (uint8_t *map, uint64_t i)
{
  __atomic_fetch_and (&map[i >> 3], (uint8_t) ~(0x80 >> (i & 7)),
                      __ATOMIC_RELAXED);
}

/* Sets bit i; true if it was clear before (the caller counts new bits). */
static inline bool
bitmap_test_and_set (uint8_t *map, uint64_t i)
{
  uint8_t mask = 0x80 >> (i & 7);

  return !(__atomic_fetch_or (&map[i >> 3], mask, __ATOMIC_RELAXED) & mask);
}

/* Bytes that hold NBITS bits. */
static inline uint64_t
bitmap_bytes (uint64_t nbits)
{
  return (nbits + 7) / 8;
}

/* Length of the run of bits equal to bit 'start', from 'start' up to (not
 * including) 'end'.  Whole bytes are skipped at once. */
uint64_t bitmap_run (const uint8_t *map, uint64_t start, uint64_t end);

/* True if bits [0, nbits) are all set. */
bool bitmap_all_set (const uint8_t *map, uint64_t nbits);

#endif
