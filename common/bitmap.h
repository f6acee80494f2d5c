/* Bitmaps with the VHD bit order: bit i lives in byte i/8 under mask
 * 0x80 >> (i%8) (most significant bit first).  The VHD sector bitmap uses this
 * order, one bit per 512-byte sector.  Other users in sxm (dirty maps) use the
 * same helpers so that there is one definition of the order. */
#ifndef SXM_BITMAP_H
#define SXM_BITMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

static inline bool
bitmap_get (const uint8_t *map, uint64_t i)
{
  return (map[i >> 3] >> (7 - (i & 7))) & 1;
}

static inline void
bitmap_set (uint8_t *map, uint64_t i)
{
  map[i >> 3] |= (uint8_t) (0x80 >> (i & 7));
}

static inline void
bitmap_clear (uint8_t *map, uint64_t i)
{
  map[i >> 3] &= (uint8_t) ~(0x80 >> (i & 7));
}

/* Length of the run of bits equal to bit 'start', from 'start' up to (not
 * including) 'end'.  Whole bytes are skipped at once. */
uint64_t bitmap_run (const uint8_t *map, uint64_t start, uint64_t end);

/* True if bits [0, nbits) are all set. */
bool bitmap_all_set (const uint8_t *map, uint64_t nbits);

#endif
