/* Bit order (MSB first, as the VHD sector bitmap) and run lengths, against
 * a plain bit-by-bit model on random maps. */
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "tap.h"

static uint64_t
model_run (const uint8_t *m, uint64_t s, uint64_t e)
{
  uint64_t i = s;
  int v = (m[s / 8] >> (7 - s % 8)) & 1;
  while (i < e && ((m[i / 8] >> (7 - i % 8)) & 1) == v)
    i++;
  return i - s;
}

int
main (void)
{
  uint8_t m[64] = { 0 };
  int bad = 0, trial;

  bitmap_set (m, 0);
  ok (m[0] == 0x80, "bit 0 is the most significant bit of byte 0");
  bitmap_set (m, 9);
  ok (m[1] == 0x40, "bit 9 is mask 0x40 of byte 1");
  ok (bitmap_get (m, 9) && !bitmap_get (m, 8), "get agrees with set");
  bitmap_clear (m, 9);
  ok (m[1] == 0, "clear");

  srand (1);
  for (trial = 0; trial < 20000; trial++) {
    uint64_t s, e;
    int i;
    for (i = 0; i < 64; i++)
      m[i] = rand () % 4 == 0 ? rand () : (rand () % 2 ? 0xff : 0);
    s = rand () % 512;
    e = s + 1 + rand () % (512 - s);
    if (bitmap_run (m, s, e) != model_run (m, s, e))
      bad++;
  }
  ok (bad == 0, "bitmap_run equals the bit-by-bit model on 20000 maps");

  memset (m, 0xff, sizeof m);
  ok (bitmap_all_set (m, 512), "all_set on a full map");
  ok (bitmap_all_set (m, 3), "all_set on 3 bits");
  bitmap_clear (m, 511);
  ok (!bitmap_all_set (m, 512) && bitmap_all_set (m, 511),
      "all_set sees the last bit");
  return tap_done ();
}
