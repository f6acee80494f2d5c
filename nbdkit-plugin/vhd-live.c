/* nbdkit-vhd-plugin's control socket (control=SOCKET): change the served
 * file's chain under running guests, which is how sxm backup snapshots a
 * disk in use (doc/nbdkit-vhd-plugin.pod, doc/design.md "Backup").
 *
 *   status                  the chain being served
 *   snapshot [base=PATH]    the file keeps its name and becomes a new
 *                           empty child; what it held is now BASE
 *   relink parent=PATH      the file's parent becomes PATH, an image
 *                           further down its chain into which the layers
 *                           between were coalesced
 *
 * Both changes follow one pattern: with chain_lock held for writing (no
 * request in flight, new ones wait), flush and close the chain, change
 * the files with the offline, crash-safe operation (common/vhd-create.c,
 * vhd-setparent.c), open the chain again and check it is the same disk:
 * same size, and the file is the old leaf or a new child of it.  Guests
 * see a pause of a few milliseconds and nothing else.  If the file cannot
 * be opened again, the chain stays NULL and every request fails (EIO)
 * rather than reach a chain nobody checked. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-plugin.h>

#include "ctlsock.h"
#include "vhd-plugin.h"

static struct ctl_server *server;
static unsigned changes;                /* snapshots and relinks done */

static int
fail (struct jbuf *out, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static int
fail (struct jbuf *out, const char *fmt, ...)
{
  char msg[4400];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  nbdkit_error ("control: %s", msg);
  jbuf_add (out, ",\"error\":");
  jbuf_str (out, msg);
  return -1;
}

/* The reply's view of a chain: flat members, as the JSON-line protocol
 * has no arrays: the file's UUID, its parent's path and UUID (if any),
 * and the number of layers. */
static void
add_chain (struct jbuf *out, const struct vhd_layer *top)
{
  const struct vhd_layer *l;
  unsigned n = 0;
  char u[37];

  for (l = top; l; l = l->parent)
    n++;
  vhd_uuid_str (top->footer.uuid, u);
  jbuf_add (out, ",\"uuid\":\"%s\",\"layers\":%u,\"allocated_blocks\":%"
            PRIu32, u, n, top->allocated);
  if (top->parent) {
    vhd_uuid_str (top->parent->footer.uuid, u);
    jbuf_add (out, ",\"parent\":");
    jbuf_str (out, top->parent->path);
    jbuf_add (out, ",\"parent_uuid\":\"%s\"", u);
  }
}

static int
cmd_status (const struct json_obj *req, struct jbuf *out)
{
  pthread_rwlock_rdlock (&chain_lock);
  jbuf_add (out, ",\"file\":");
  jbuf_str (out, filename);
  jbuf_add (out, ",\"usable\":%s,\"changes\":%u", chain ? "true" : "false",
            changes);
  if (chain) {
    jbuf_add (out, ",\"size\":%" PRIu64, chain->size);
    add_chain (out, chain);
  }
  pthread_rwlock_unlock (&chain_lock);
  return 0;
}

/* The steps every change shares, with chain_lock held for writing:
 * flush and close, CHANGE the files, reopen and check.  KIND names the
 * change in messages.  On 0 the new chain is served. */
static int
change_chain (const char *kind, int (*change) (void *), void *arg,
              struct jbuf *out)
{
  uint8_t old_uuid[16];
  uint64_t old_size;
  struct vhd_layer *c;
  char why[1024] = "";
  int changed;

  if (!chain)
    return fail (out, "%s: the disk is unusable since an earlier change "
                 "failed (see the log): restart the disk service", filename);
  if (vhd_flush (chain) == -1)
    return fail (out, "%s: %s: flushing the disk first failed: %s (nothing "
                 "changed)", filename, kind, strerror (errno));
  memcpy (old_uuid, chain->footer.uuid, 16);
  old_size = chain->size;
  vhd_close_chain (chain);
  chain = NULL;

  last_error[0] = '\0';
  changed = change (arg);
  if (changed == -1)
    snprintf (why, sizeof why, "%s", last_error);
  c = vhd_open_chain_rw (filename, size_rule);
  if (!c)
    return fail (out, "%s: reopening after %s%s failed: %s: the disk is "
                 "unusable until the service is restarted (requests fail "
                 "with EIO)", filename, kind, changed ? " (refused)" : "",
                 last_error);
  if (c->size != old_size ||
      (memcmp (c->footer.uuid, old_uuid, 16) != 0 &&
       !(c->parent && memcmp (c->parent->footer.uuid, old_uuid, 16) == 0))) {
    vhd_close_chain (c);
    return fail (out, "%s: after %s it is not the same disk (another size, "
                 "or neither the old file nor a child of it): not serving "
                 "it; restart the disk service", filename, kind);
  }
  chain = c;
  if (changed == -1)
    return fail (out, "%s: %s refused: %s (the disk is served as it was)",
                 filename, kind, why);
  changes++;
  return 0;
}

struct snapshot_args {
  const char *base;             /* NULL: the default name */
  uint8_t uuid[16];
  char *made;                   /* the base's name, once made */
};

static int
do_snapshot (void *p)
{
  struct snapshot_args *a = p;
  return vhd_snapshot_in_place (filename, a->base, a->uuid, &a->made);
}

static int
cmd_snapshot (const struct json_obj *req, struct jbuf *out)
{
  struct snapshot_args a = { .base = json_str (req, "base") };
  char u[37];
  int r;

  vhd_uuid_random (a.uuid);
  pthread_rwlock_wrlock (&chain_lock);
  r = change_chain ("snapshot", do_snapshot, &a, out);
  if (r == 0) {
    vhd_uuid_str (a.uuid, u);
    jbuf_add (out, ",\"base\":");
    jbuf_str (out, a.made);
    jbuf_add (out, ",\"leaf_uuid\":\"%s\"", u);
    add_chain (out, chain);
    nbdkit_debug ("control: snapshot: %s now over %s", filename, a.made);
  }
  pthread_rwlock_unlock (&chain_lock);
  free (a.made);
  return r;
}

static int
do_relink (void *p)
{
  return vhd_relink (filename, p) == 0 ? 0 : -1;
}

static int
cmd_relink (const struct json_obj *req, struct jbuf *out)
{
  const char *parent = json_str (req, "parent");
  int r;

  if (!parent)
    return fail (out, "relink: expected \"parent\": the image to point "
                 "the file at");
  pthread_rwlock_wrlock (&chain_lock);
  r = change_chain ("relink", do_relink, (void *) parent, out);
  if (r == 0) {
    add_chain (out, chain);
    nbdkit_debug ("control: relink: %s now over %s", filename, parent);
  }
  pthread_rwlock_unlock (&chain_lock);
  return r;
}

static const struct ctl_command commands[] = {
  { "status", cmd_status, false },
  { "snapshot", cmd_snapshot, true },
  { "relink", cmd_relink, true },
};

int
live_check (const char *path)
{
  return ctl_check ("control", path);
}

int
live_start (const char *path)
{
  server = ctl_start ("control", path, commands,
                      sizeof commands / sizeof commands[0]);
  return server ? 0 : -1;
}

void
live_stop (void)
{
  ctl_stop (server);
  server = NULL;
}
