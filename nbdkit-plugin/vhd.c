/* nbdkit-vhd-plugin: serve a VHD image (fixed, dynamic or a differencing
 * chain) over NBD, with its sparseness reported through block status, or a
 * whole SR: every <uuid>.vhd of a directory as the export named <uuid>.
 *
 * All format knowledge lives in common/vhd*.c; this file only maps nbdkit's
 * callbacks onto it.  With file=, the chain is opened once, at
 * config_complete time, so a bad image stops nbdkit from starting at all.
 * With sr=, an image is opened by the first connection that names it and
 * shared by all connections to it (one writer state per file), closed (and
 * flushed) when the last one goes.  With control=, vhd-live.c can replace
 * the file= chain while it is served (snapshot, relink); every callback
 * reaches the chain through hold()/release(), which lock only then. */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "log.h"
#include "vhd-plugin.h"

#ifndef SXM_VERSION
#define SXM_VERSION "unknown"
#endif

char *filename;
static char *sr_dir;
static char *control_path;              /* control= */
enum vhd_size_rule size_rule = VHD_SIZE_CURRENT;
struct vhd_layer *chain;                /* file= mode (vhd-plugin.h) */
pthread_rwlock_t chain_lock;
/* layer=: serve only this layer's own data (read-only); -1: the disk. */
static long layer_index = -1;
static struct vhd_layer *own;           /* that layer of 'chain' */

/* sr= mode: images open now, shared by their connections. */
struct sr_image {
  char uuid[37];
  struct vhd_layer *chain;
  unsigned refs;
  struct sr_image *next;
};
static struct sr_image *sr_open_images;
static pthread_mutex_t sr_lock = PTHREAD_MUTEX_INITIALIZER;

__thread char last_error[1024];

static void
log_to_nbdkit (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR) {
    snprintf (last_error, sizeof last_error, "%s", msg);
    nbdkit_error ("%s", msg);
  }
  else
    nbdkit_debug ("%s", msg);
}

static void
vhd_load (void)
{
  pthread_rwlockattr_t a;

  sxm_log_set_sink (log_to_nbdkit);
  pthread_rwlockattr_init (&a);
  pthread_rwlockattr_setkind_np (&a,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&chain_lock, &a);
  pthread_rwlockattr_destroy (&a);
}

static void
vhd_unload (void)
{
  vhd_close_chain (chain);
  free (filename);
  free (sr_dir);
  free (control_path);
}

/* The chain a request works on, and the end of its use.  Only with
 * control= can the file= chain be replaced (vhd-live.c): then it is held
 * against replacement for the request's duration, and NULL (errno EIO)
 * if a replacement broke it.  Otherwise it never changes after open and
 * requests take no lock. */
static struct vhd_layer *
hold (void *handle)
{
  struct vhd_layer *c;

  if (sr_dir)
    return handle;
  if (!control_path)
    return own ? own : chain;
  pthread_rwlock_rdlock (&chain_lock);
  c = own ? own : chain;
  if (!c) {
    pthread_rwlock_unlock (&chain_lock);
    nbdkit_error ("%s: the disk is unusable since a change through the "
                  "control socket failed (see the log): restart the disk "
                  "service", filename);
    errno = EIO;
  }
  return c;
}

static void
release (void)
{
  if (!sr_dir && control_path)
    pthread_rwlock_unlock (&chain_lock);
}

/* A canonical UUID, 8-4-4-4-12 hex digits: the only export names sr mode
 * accepts, so no name can reach outside the directory. */
static bool
is_uuid (const char *s)
{
  int i;

  for (i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-')
        return false;
    }
    else if (!isxdigit ((unsigned char) s[i]))
      return false;
  }
  return s[36] == '\0';
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
  if (strcmp (key, "sr") == 0) {
    struct stat st;
    free (sr_dir);
    sr_dir = realpath (value, NULL);
    if (!sr_dir || stat (sr_dir, &st) == -1 || !S_ISDIR (st.st_mode)) {
      nbdkit_error ("sr=%s: not a directory%s%s", value,
                    sr_dir ? "" : ": ", sr_dir ? "" : strerror (errno));
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "layer") == 0) {
    char *end;
    if (strcmp (value, "top") == 0)
      layer_index = 0;
    else {
      errno = 0;
      layer_index = strtol (value, &end, 10);
      if (errno || end == value || *end || layer_index < 0 ||
          layer_index >= VHD_MAX_CHAIN) {
        nbdkit_error ("layer=%s: expected top or a layer number, 0 (the "
                      "file itself) to %d", value, VHD_MAX_CHAIN - 1);
        return -1;
      }
    }
    return 0;
  }
  if (strcmp (key, "control") == 0) {
    free (control_path);
    control_path = strdup (value);
    if (!control_path) {
      nbdkit_error ("strdup: %s", strerror (errno));
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "size_from") == 0) {
    if (vhd_size_rule_parse (value, &size_rule) == -1) {
      nbdkit_error ("size_from=%s: expected current, chs or qemu", value);
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

  if (filename && sr_dir) {
    nbdkit_error ("give either a file or sr=DIR, not both");
    return -1;
  }
  if (sr_dir && layer_index >= 0) {
    nbdkit_error ("layer= serves a layer of one file: not with sr=DIR");
    return -1;
  }
  if (control_path && (sr_dir || layer_index >= 0)) {
    nbdkit_error ("control= changes the chain of a served file: not with "
                  "%s", sr_dir ? "sr=DIR" : "layer=");
    return -1;
  }
  if (control_path && live_check (control_path) == -1)
    return -1;
  if (sr_dir)
    return 0;
  if (!filename) {
    nbdkit_error ("you must give the VHD to serve: nbdkit vhd FILE.vhd "
                  "(or a directory of <uuid>.vhd: nbdkit vhd sr=DIR)");
    return -1;
  }
  /* A layer's own data is an export of what is already there: read-only,
   * and the file is not opened for writing at all. */
  chain = layer_index >= 0 ? vhd_open_chain (filename, size_rule)
                           : vhd_open_chain_rw (filename, size_rule);
  if (!chain)
    return -1;
  if (layer_index >= 0) {
    for (own = chain; own && own->depth != layer_index; own = own->parent)
      ;
    if (!own) {
      const struct vhd_layer *last = chain;
      while (last->parent)
        last = last->parent;
      nbdkit_error ("layer=%ld: the chain of %s has %u layer%s (0 = the file "
                    "itself ... %u = %s)", layer_index, filename,
                    last->depth + 1, last->depth ? "s" : "", last->depth,
                    last->path);
      return -1;
    }
    nbdkit_debug ("serving only the own data of layer %ld: %s", layer_index,
                  own->path);
  }
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
  "[file=]<FILENAME>     The VHD image to serve, or:\n" \
  "sr=<DIRECTORY>        Serve every <uuid>.vhd in it as export <uuid>.\n" \
  "size_from=current|chs|qemu  Virtual size rule (default current).\n" \
  "layer=top|N           Serve only that layer's own data (an increment),\n" \
  "                      read-only; the rest reads as zeros, reported holes.\n" \
  "control=<SOCKET>      Control socket: snapshot or relink the file while\n" \
  "                      it is served (unix, mode 0600; JSON lines)."

static void
vhd_dump_plugin (void)
{
  printf ("vhd_version=%s\n", SXM_VERSION);
  printf ("vhd_types=fixed,dynamic,differencing\n");
  printf ("vhd_locators=W2ru,W2ku,MacX\n");
  printf ("vhd_max_chain=%d\n", VHD_MAX_CHAIN);
  printf ("vhd_max_size=%llu\n", VHD_MAX_SIZE);
  printf ("vhd_size_from=current,chs,qemu\n");
  printf ("vhd_block_status=yes\n");
  printf ("vhd_write=yes\n");
  printf ("vhd_sr=yes\n");
  printf ("vhd_layer=yes\n");
  printf ("vhd_control=status,snapshot,relink\n");
}

static int
vhd_after_fork (void)
{
  return control_path ? live_start (control_path) : 0;
}

static void
vhd_cleanup (void)
{
  live_stop ();
}

static int
vhd_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  DIR *dir;
  struct dirent *d;
  int r = 0;

  if (!sr_dir)
    return nbdkit_use_default_export (exports);
  dir = opendir (sr_dir);
  if (!dir) {
    nbdkit_error ("%s: %s", sr_dir, strerror (errno));
    return -1;
  }
  while (r == 0 && (d = readdir (dir)) != NULL) {
    size_t n = strlen (d->d_name);
    char name[37];
    if (n != 40 || strcmp (d->d_name + 36, ".vhd") != 0)
      continue;
    memcpy (name, d->d_name, 36);
    name[36] = '\0';
    if (is_uuid (name))
      r = nbdkit_add_export (exports, name, "VHD image");
  }
  closedir (dir);
  return r;
}

static struct vhd_layer *
sr_acquire (const char *name)
{
  struct sr_image *im;
  struct vhd_layer *c = NULL;
  char *path = NULL;

  if (!is_uuid (name)) {
    nbdkit_error ("export name \"%s\" is not a VHD UUID in %s; list the "
                  "exports with: nbdinfo --list URI", name, sr_dir);
    errno = ENOENT;
    return NULL;
  }
  pthread_mutex_lock (&sr_lock);
  for (im = sr_open_images; im; im = im->next)
    if (strcmp (im->uuid, name) == 0) {
      im->refs++;
      c = im->chain;
      goto out;
    }
  if (asprintf (&path, "%s/%s.vhd", sr_dir, name) == -1) {
    nbdkit_error ("export \"%s\": asprintf: %m", name);
    path = NULL;
    goto out;
  }
  if (access (path, F_OK) == -1) {
    nbdkit_error ("export \"%s\": no %s in %s; list the exports with: "
                  "nbdinfo --list URI", name, path + strlen (sr_dir) + 1,
                  sr_dir);
    goto out;
  }
  im = calloc (1, sizeof *im);
  if (!im) {
    nbdkit_error ("export \"%s\": calloc: %m", name);
    goto out;
  }
  im->chain = vhd_open_chain_rw (path, size_rule);
  if (!im->chain) {
    free (im);
    goto out;
  }
  memcpy (im->uuid, name, 37);
  im->refs = 1;
  im->next = sr_open_images;
  sr_open_images = im;
  c = im->chain;
 out:
  pthread_mutex_unlock (&sr_lock);
  free (path);
  return c;
}

static void
sr_release (struct vhd_layer *c)
{
  struct sr_image **pp, *im;

  pthread_mutex_lock (&sr_lock);
  for (pp = &sr_open_images; (im = *pp) != NULL; pp = &im->next)
    if (im->chain == c) {
      if (--im->refs == 0) {
        *pp = im->next;
        vhd_close_chain (im->chain);      /* flushes */
        free (im);
      }
      break;
    }
  pthread_mutex_unlock (&sr_lock);
}

static void *
vhd_open (int readonly)
{
  struct vhd_layer *c;

  if (!sr_dir) {
    /* file= mode: the handle only marks the connection open; requests
     * find the (replaceable) chain through hold(). */
    if (!readonly && !own && chain && !chain->writable)
      nbdkit_debug ("%s is not writable here: the export is read-only",
                    filename);
    return &chain;
  }
  {
    const char *name = nbdkit_export_name ();
    if (!name || !*name) {
      nbdkit_error ("this server serves an SR (%s): choose an export by its "
                    "VHD UUID, e.g. nbd+unix:///UUID?socket=...; list them "
                    "with: nbdinfo --list URI", sr_dir);
      return NULL;
    }
    c = sr_acquire (name);
    if (!c)
      return NULL;
  }
  if (!readonly && !c->writable)
    nbdkit_debug ("%s is not writable here: the export is read-only",
                  c->path);
  return c;
}

static void
vhd_close (void *handle)
{
  if (sr_dir)
    sr_release (handle);
}

static int64_t
vhd_get_size (void *handle)
{
  struct vhd_layer *c = hold (handle);
  int64_t size;

  if (!c)
    return -1;
  size = c->size;
  release ();
  return size;
}

/* A file we could only open read-only makes a read-only export: nbdkit
 * then refuses writes with EPERM before they reach us. */
static int
vhd_can_write (void *handle)
{
  struct vhd_layer *c = hold (handle);
  int w;

  if (!c)
    return -1;
  w = c->writable;
  release ();
  return w;
}

static int
vhd_can_fast_zero (void *handle)
{
  return 1;
}

/* Each request: hold the chain, call into common/, report errno. */
#define ON_CHAIN(handle, call)                  \
  do {                                          \
    struct vhd_layer *c = hold (handle);        \
    int r_;                                     \
    if (!c) {                                   \
      nbdkit_set_error (EIO);                   \
      return -1;                                \
    }                                           \
    r_ = (call);                                \
    if (r_ == -1)                               \
      nbdkit_set_error (errno);                 \
    release ();                                 \
    return r_ == -1 ? -1 : 0;                   \
  } while (0)

static int
vhd_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
            uint32_t flags)
{
  ON_CHAIN (handle, vhd_write (c, buf, count, offset));
}

/* FUA is emulated by nbdkit with a flush after the write. */
static int
vhd_zero_cb (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  ON_CHAIN (handle, vhd_zero (c, count, offset,
                              flags & NBDKIT_FLAG_FAST_ZERO));
}

/* Trim is advisory in NBD: accepted and ignored.  Space is not reclaimed
 * (that needs block deallocation, a later feature), and nothing a client
 * reads changes, which the protocol allows. */
static int
vhd_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return 0;
}

static int
vhd_flush_cb (void *handle, uint32_t flags)
{
  ON_CHAIN (handle, vhd_flush (c));
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
  ON_CHAIN (handle, (own ? vhd_read_own : vhd_read) (c, buf, count, offset));
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
  ON_CHAIN (handle, (own ? vhd_map_own : vhd_map) (c, offset, count,
                                                   flags & NBDKIT_FLAG_REQ_ONE,
                                                   add_extent, extents));
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
  .after_fork        = vhd_after_fork,
  .cleanup           = vhd_cleanup,
  .magic_config_key  = "file",
  .dump_plugin       = vhd_dump_plugin,
  .open              = vhd_open,
  .close             = vhd_close,
  .list_exports      = vhd_list_exports,
  .get_size          = vhd_get_size,
  .can_write         = vhd_can_write,
  .can_multi_conn    = vhd_can_multi_conn,
  .can_extents       = vhd_can_extents,
  .pread             = vhd_pread,
  .pwrite            = vhd_pwrite,
  .zero              = vhd_zero_cb,
  .flush             = vhd_flush_cb,
  .trim              = vhd_trim,
  .can_fast_zero     = vhd_can_fast_zero,
  .extents           = vhd_extents,
};

NBDKIT_REGISTER_PLUGIN (plugin)
