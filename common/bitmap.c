#include "bitmap.h"

uint64_t
bitmap_run (const uint8_t *map, uint64_t start, uint64_t end)
{
  bool v = bitmap_get (map, start);
  uint8_t whole = v ? 0xff : 0x00;
  uint64_t i = start + 1;

  while (i < end && (i & 7) != 0 && bitmap_get (map, i) == v)
    i++;
  if (i < end && (i & 7) == 0) {
    while (i + 8 <= end && bitmap_byte (map, i >> 3) == whole)
      i += 8;
    while (i < end && bitmap_get (map, i) == v)
      i++;
  }
  return i - start;
}

bool
bitmap_all_set (const uint8_t *map, uint64_t nbits)
{
  uint64_t i;

  for (i = 0; i + 8 <= nbits; i += 8)
    if (bitmap_byte (map, i >> 3) != 0xff)
      return false;
  for (; i < nbits; i++)
    if (!bitmap_get (map, i))
      return false;
  return true;
}
