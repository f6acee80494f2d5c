/* libFuzzer harness: the VHD open/validate path and everything a served
 * image then does (map, reads, check) on arbitrary bytes.
 *
 * Checksums stop random mutations at the first field, so unless the first
 * input byte is odd the harness recomputes the footer and header checksums
 * of the rest before opening: the fuzzer then reaches the BAT, bitmap and
 * locator code.  XenServer's rules (vhd-xen.c) run on every input.  The image is a file in a private directory, so relative
 * parent locators resolve to nothing but the image itself. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fuzzvhd.h"

static char path[64];

static void
note (void *opaque, enum vhd_check_result sev, const char *msg)
{
}

static void
xen_note (void *opaque, bool repairable, const char *msg)
{
}

static int
ignore (void *opaque, uint64_t off, uint64_t len, bool alloc)
{
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  static uint8_t buf[65536];
  struct vhd_layer *top;
  uint8_t *img;
  int fd;

  if (!path[0]) {
    char dir[] = "/tmp/sxm-fuzz.XXXXXX";
    if (!mkdtemp (dir))
      abort ();
    snprintf (path, sizeof path, "%s/image.vhd", dir);
    sxm_log_set_sink (quiet);
  }
  if (size < 1)
    return 0;
  img = malloc (size - 1 + 1);
  memcpy (img, data + 1, size - 1);
  if (!(data[0] & 1) && size - 1 >= 1536)
    fix_checksums (img, size - 1);
  fd = open (path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd == -1 || write (fd, img, size - 1) != (ssize_t) (size - 1))
    abort ();
  close (fd);
  free (img);

  /* XenServer's rules read the raw bytes whether or not we open them. */
  vhd_xen_rules (path, xen_note, NULL);
  top = vhd_open_chain (path, data[0] & 2 ? VHD_SIZE_CHS
                        : data[0] & 4 ? VHD_SIZE_QEMU : VHD_SIZE_CURRENT);
  if (top) {
    uint64_t n = top->size < sizeof buf ? top->size : sizeof buf;
    vhd_map (top, 0, top->size, false, ignore, NULL);
    vhd_map (top, top->size / 3, top->size - top->size / 3, true, ignore,
             NULL);
    vhd_read (top, buf, n, 0);
    vhd_read (top, buf, n, top->size - n);
    if (top->size > 1000)
      vhd_read (top, buf, 777, top->size / 2 - 3);
    vhd_check (top, note, NULL);
    vhd_close_chain (top);
  }
  return 0;
}
