/* nbdkit-vhd-plugin: serve a VHD image (fixed, dynamic or a differencing
 * chain) over NBD, with its sparseness reported through block status.
 *
 * All format knowledge lives in common/vhd.c; this file only maps nbdkit's
 * callbacks onto it.  The chain is opened once, at config_complete time, so
 * a bad image stops nbdkit from starting at all.  Reads need no lock: the
 * BAT is immutable after open and bitmaps are published lock-free. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "log.h"
#include "vhd.h"

#ifndef SXM_VERSION
#define SXM_VERSION "unknown"
#endif

static char *filename;
static enum vhd_size_rule size_rule = VHD_SIZE_AUTO;
static struct vhd_layer *chain;

static void
log_to_nbdkit (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR)
    nbdkit_error ("%s", msg);
  else
    nbdkit_debug ("%s", msg);
}

static void
vhd_load (void)
{
  sxm_log_set_sink (log_to_nbdkit);
}

static void
vhd_unload (void)
{
  vhd_close_chain (chain);
  free (filename);
}

static int
vhd_config (const char *key, const char *value)
{
  if (strcmp (key, "file") == 0) {
    /* Made absolute now, because nbdkit may chdir before opening.  If the
     * path does not resolve, keep it as given: vhd_open_chain() then reports
     * the error with the file name, at config_complete time. */
    free (filename);
    filename = realpath (value, NULL);
    if (!filename)
      filename = strdup (value);
    if (!filename) {
      nbdkit_error ("strdup: %s", strerror (errno));
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "size_from") == 0) {
    if (strcmp (value, "auto") == 0)
      size_rule = VHD_SIZE_AUTO;
    else if (strcmp (value, "chs") == 0)
      size_rule = VHD_SIZE_CHS;
    else if (strcmp (value, "current") == 0)
      size_rule = VHD_SIZE_CURRENT;
    else {
      nbdkit_error ("size_from=%s: expected auto, chs or current", value);
      return -1;
    }
    return 0;
  }
  nbdkit_error ("unknown parameter '%s' (see nbdkit vhd --help)", key);
  return -1;
}

static int
vhd_config_complete (void)
{
  const struct vhd_layer *l;

  if (!filename) {
    nbdkit_error ("you must give the VHD to serve: nbdkit vhd FILE.vhd");
    return -1;
  }
  chain = vhd_open_chain_rw (filename, size_rule);
  if (!chain)
    return -1;
  for (l = chain; l; l = l->parent)
    nbdkit_debug ("chain[%u]: %s: %s, virtual size %" PRIu64
                  ", %" PRIu32 "/%" PRIu32 " blocks allocated%s%s",
                  l->depth, l->path, vhd_type_name (l->footer.type), l->size,
                  l->allocated, l->nblocks,
                  l->parent_via ? ", parent via " : "",
                  l->parent_via ? l->parent_via : "");
  return 0;
}

#define vhd_config_help \
  "[file=]<FILENAME>     (required) The VHD image to serve.\n" \
  "size_from=auto|chs|current  Virtual size rule (default auto, as qemu)."

static void
vhd_dump_plugin (void)
{
  printf ("vhd_version=%s\n", SXM_VERSION);
  printf ("vhd_types=fixed,dynamic,differencing\n");
  printf ("vhd_locators=W2ru,W2ku,MacX\n");
  printf ("vhd_max_chain=%d\n", VHD_MAX_CHAIN);
  printf ("vhd_max_size=%llu\n", VHD_MAX_SIZE);
  printf ("vhd_size_from=auto,chs,current\n");
  printf ("vhd_block_status=yes\n");
  printf ("vhd_write=yes\n");
}

static void *
vhd_open (int readonly)
{
  if (!readonly && !chain->writable)
    nbdkit_debug ("%s is not writable here: the export is read-only",
                  chain->path);
  return chain;
}

static int64_t
vhd_get_size (void *handle)
{
  return ((struct vhd_layer *) handle)->size;
}

/* A file we could only open read-only makes a read-only export: nbdkit
 * then refuses writes with EPERM before they reach us. */
static int
vhd_can_write (void *handle)
{
  return ((struct vhd_layer *) handle)->writable;
}

static int
vhd_can_fast_zero (void *handle)
{
  return 1;
}

static int
vhd_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  if (vhd_write (handle, buf, count, offset) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

/* FUA is emulated by nbdkit with a flush after the write. */
static int
vhd_zero_cb (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (vhd_zero (handle, count, offset, flags & NBDKIT_FLAG_FAST_ZERO) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

static int
vhd_flush_cb (void *handle, uint32_t flags)
{
  if (vhd_flush (handle) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

static int
vhd_can_multi_conn (void *handle)
{
  return 1;
}

static int
vhd_can_extents (void *handle)
{
  return 1;
}

static int
vhd_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
           uint32_t flags)
{
  if (vhd_read (handle, buf, count, offset) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

static int
add_extent (void *opaque, uint64_t offset, uint64_t length, bool allocated)
{
  struct nbdkit_extents *extents = opaque;

  return nbdkit_add_extent (extents, offset, length,
                            allocated ? 0
                            : NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO);
}

static int
vhd_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
             struct nbdkit_extents *extents)
{
  if (vhd_map (handle, offset, count, flags & NBDKIT_FLAG_REQ_ONE,
               add_extent, extents) == -1) {
    nbdkit_set_error (errno);
    return -1;
  }
  return 0;
}

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static struct nbdkit_plugin plugin = {
  .name              = "vhd",
  .longname          = "sxm VHD plugin",
  .version           = SXM_VERSION,
  .load              = vhd_load,
  .unload            = vhd_unload,
  .config            = vhd_config,
  .config_complete   = vhd_config_complete,
  .config_help       = vhd_config_help,
  .magic_config_key  = "file",
  .dump_plugin       = vhd_dump_plugin,
  .open              = vhd_open,
  .get_size          = vhd_get_size,
  .can_write         = vhd_can_write,
  .can_multi_conn    = vhd_can_multi_conn,
  .can_extents       = vhd_can_extents,
  .pread             = vhd_pread,
  .pwrite            = vhd_pwrite,
  .zero              = vhd_zero_cb,
  .flush             = vhd_flush_cb,
  .can_fast_zero     = vhd_can_fast_zero,
  .extents           = vhd_extents,
};

NBDKIT_REGISTER_PLUGIN (plugin)
