/* crash-read: what a crash state holds, for tests/crash/crashexplore.py.
 *
 *   crash-read LEAF.vhd OUT
 *
 * Opens LEAF and its chain read-only exactly as the plugin does, runs the
 * full consistency check (sxm-vhd check's), and writes the whole virtual
 * disk as read through the chain to OUT.  Prints on stdout:
 *
 *   layer PATH          each file of the chain, top first (the explorer
 *                       checks that the parents it resolved are the crash
 *                       state's, not the originals)
 *   check clean|repairable|corrupt
 *   size BYTES
 *
 * Exit 0 when read; 5 when the image is refused at open (the reason on
 * stderr, as sxm_error gives it); 1 on an I/O error. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "fullio.h"
#include "log.h"
#include "vhd.h"

static void
finding (void *opaque, enum vhd_check_result sev, const char *msg)
{
  fprintf (stderr, "check: %s\n", msg);
}

int
main (int argc, char **argv)
{
  static const char *const word[] = { "clean", "repairable", "corrupt" };
  enum { CHUNK = 1 << 20 };
  struct vhd_layer *top, *l;
  enum vhd_check_result res;
  char *buf;
  int out;

  if (argc != 3) {
    fprintf (stderr, "usage: crash-read LEAF.vhd OUT\n");
    return 2;
  }
  sxm_log_set_program ("crash-read");
  top = vhd_open_chain (argv[1], VHD_SIZE_CURRENT);
  if (!top)
    return vhd_last_open_was_invalid () || vhd_last_open_parent_failed ()
           ? 5 : 1;
  for (l = top; l; l = l->parent)
    printf ("layer %s\n", l->path);
  res = vhd_check (top, finding, NULL);
  printf ("check %s\nsize %" PRIu64 "\n", word[res], top->size);
  fflush (stdout);

  buf = malloc (CHUNK);
  out = open (argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!buf || out == -1) {
    perror (argv[2]);
    return 1;
  }
  for (uint64_t off = 0; off < top->size; off += CHUNK) {
    uint64_t n = top->size - off < CHUNK ? top->size - off : CHUNK;
    if (vhd_read (top, buf, n, off) == -1 || full_write (out, buf, n) == -1) {
      fprintf (stderr, "crash-read: %s: read at %" PRIu64 ": %m\n", argv[1],
               off);
      return 1;
    }
  }
  close (out);
  free (buf);
  vhd_close_chain (top);
  return 0;
}
