/* Time vhd_map() over a whole image in-process: the cost the plugin pays to
 * answer block status for the full disk, without NBD round trips (an NBD
 * block status request covers < 4 GiB, so a 2 TiB map is ~510 requests
 * whatever the server).  Usage: map-time FILE.vhd [RUNS] */
#include <stdio.h>
#include <stdlib.h>

#include "monotime.h"
#include "vhd.h"

static int
count_run (void *opaque, uint64_t off, uint64_t len, bool alloc)
{
  (*(uint64_t *) opaque)++;
  return 0;
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

int
main (int argc, char **argv)
{
  struct vhd_layer *top;
  int runs = argc > 2 ? atoi (argv[2]) : 9, i;
  double t[64], open_ms;
  uint64_t n = 0;
  double t0;

  if (argc < 2 || runs < 1 || runs > 64) {
    fprintf (stderr, "usage: map-time FILE.vhd [RUNS<=64]\n");
    return 2;
  }
  t0 = sxm_now ();
  top = vhd_open_chain (argv[1], VHD_SIZE_CURRENT);
  open_ms = (sxm_now () - t0) * 1e3;
  if (!top)
    return 1;
  for (i = 0; i < runs; i++) {
    n = 0;
    t0 = sxm_now ();
    if (vhd_map (top, 0, top->size, false, count_run, &n) == -1)
      return 1;
    t[i] = (sxm_now () - t0) * 1e3;
  }
  qsort (t, runs, sizeof t[0], cmp_double);
  printf ("%.3f %llu %.1f\n", t[runs / 2], (unsigned long long) n, open_ms);
  vhd_close_chain (top);
  return 0;
}
