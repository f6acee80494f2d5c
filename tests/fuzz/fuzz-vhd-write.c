/* libFuzzer harness: the VHD write path (vhd-write.c) on arbitrary images,
 * with a data oracle.
 *
 * Input: a flag byte, an operation count N (one byte), N 8-byte
 * operations, then the image (checksums fixed up as in fuzz-vhd-open
 * unless flag bit 0 is set).  The image is opened read-write; the
 * operations (write a pattern, zero, zero fast-only, flush) run inside a
 * window of at most 1 MiB at an offset the flag byte picks (start or end
 * of the disk); then the image is flushed, closed, reopened read-only and
 * the window compared with a model: the window as read before the writes,
 * with every operation that returned success applied.  A difference is a
 * silent corruption and aborts; so does a reopen failure after the writer
 * said its writes were durable.  Failed operations are allowed (a hostile
 * image may refuse), wrong data is not. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzzvhd.h"

#define WINDOW (1u << 20)

static char path[64];

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t model[WINDOW], got[WINDOW], pat[WINDOW];
  struct vhd_layer *top;
  const uint8_t *ops;
  uint8_t *img, flags;
  size_t nops, isize;
  uint64_t base, win;
  bool flushed_ok = true;
  int fd;

  if (!path[0]) {
    char dir[] = "/dev/shm/sxm-fuzzw.XXXXXX";
    if (!mkdtemp (dir))
      abort ();
    snprintf (path, sizeof path, "%s/image.vhd", dir);
    sxm_log_set_sink (quiet);
  }
  if (size < 2)
    return 0;
  flags = data[0];
  nops = data[1];
  if (size < 2 + 8 * nops)
    return 0;
  ops = data + 2;
  isize = size - 2 - 8 * nops;
  img = malloc (isize + 1);
  memcpy (img, ops + 8 * nops, isize);
  if (!(flags & 1) && isize >= 1536)
    fix_checksums (img, isize);
  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || write (fd, img, isize) != (ssize_t) isize)
    abort ();
  close (fd);
  free (img);

  top = vhd_open_chain_rw (path, flags & 2 ? VHD_SIZE_CHS
                           : flags & 8 ? VHD_SIZE_QEMU : VHD_SIZE_CURRENT);
  if (!top)
    return 0;
  if (!top->writable || top->size == 0) {
    vhd_close_chain (top);
    return 0;
  }
  win = top->size < WINDOW ? top->size : WINDOW;
  base = flags & 4 ? top->size - win : 0;
  if (vhd_read (top, model, win, base) == -1) {
    vhd_close_chain (top);
    return 0;
  }

  for (size_t i = 0; i < nops; i++) {
    const uint8_t *o = ops + 8 * i;
    uint64_t off = (o[1] | o[2] << 8 | (uint64_t) o[3] << 16) % win;
    uint64_t len = 1 + (o[4] | o[5] << 8 | (uint64_t) (o[6] & 0x1f) << 16)
                   % (win - off);
    int r;

    switch (o[0] & 3) {
    case 0:                     /* write a pattern */
      for (uint64_t j = 0; j < len; j++)
        pat[j] = o[7] ^ (uint8_t) (j * 131 + i);
      r = vhd_write (top, pat, len, base + off);
      if (r == 0)
        memcpy (model + off, pat, len);
      break;
    case 1:                     /* zero */
    case 2:                     /* zero, fast only */
      r = vhd_zero (top, len, base + off, (o[0] & 3) == 2);
      if (r == 0)
        memset (model + off, 0, len);
      break;
    default:
      r = vhd_flush (top);
      if (r == -1)
        flushed_ok = false;
      break;
    }
    /* Reads in between see every successful write at once. */
    if (o[0] & 4) {
      if (vhd_read (top, got, win, base) == 0 && memcmp (got, model, win))
        abort ();               /* a write reads back wrong before close */
    }
  }
  if (vhd_flush (top) == -1)
    flushed_ok = false;
  vhd_close_chain (top);
  if (!flushed_ok)
    return 0;

  /* After a successful flush, the writes must survive a reopen. */
  top = vhd_open_chain (path, flags & 2 ? VHD_SIZE_CHS
                        : flags & 8 ? VHD_SIZE_QEMU : VHD_SIZE_CURRENT);
  if (!top)
    abort ();                   /* our own flushed image does not open */
  if (vhd_read (top, got, win, base) == -1 || memcmp (got, model, win) != 0)
    abort ();                   /* silent corruption */
  vhd_close_chain (top);
  return 0;
}
