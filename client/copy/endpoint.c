/* Choosing an endpoint's kind from what the user wrote:
 *   null:        destination only: discards writes (benchmarks)
 *   SCHEME://... an NBD URI, handed to libnbd
 *   a VHD        a file named *.vhd, or any file or block device whose
 *                footer says VHD: the virtual disk it holds (vhd-ops.c);
 *                a new *.vhd destination (or --create=dynamic|fixed) is
 *                created as a VHD
 *   anything else a local file or block device, as bytes (--raw: always)
 * Each kind's probe is next to its ops (nbd-ops.c, file-ops.c, vhd-ops.c);
 * this file chooses the kind and holds what every kind shares.  Every
 * failure here happens before a byte is written. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "copy.h"
#include "vhd.h"

static bool
named_vhd (const char *name)
{
  size_t n = strlen (name);
  return n > 4 && strcasecmp (name + n - 4, ".vhd") == 0;
}

/* Whether the local file NAME is taken as a VHD: 1, 0, or -1 refused
 * (message printed). */
static int
local_is_vhd (const struct endpoint *ep, const struct endpoint_opts *lo,
              bool exists)
{
  bool named = named_vhd (ep->name);
  int footer;

  if (lo->raw)
    return 0;
  if (!exists)
    return ep->is_dest && (named || lo->create_kind != CREATE_AUTO);
  footer = vhd_has_footer (ep->name);
  if (footer == -1)
    return 0;                   /* file_probe reports the error */
  if (footer == 1 && !named)
    fprintf (stderr, "sxm-copy: %s: holds a VHD (its footer says so): "
             "%s the disk it holds; --raw %s the file's bytes\n", ep->name,
             ep->is_dest ? "writing" : "copying",
             ep->is_dest ? "overwrites" : "copies");
  if (footer == 0 && named) {
    fprintf (stderr, "sxm-copy: %s: named .vhd but no VHD footer at its end "
             "or at offset 0; --raw takes it as plain bytes\n", ep->name);
    return -1;
  }
  return footer;
}

/* A destination that does not exist yet and whose name reads like a
 * mistyped sink or URI ("null", "nbd:host", "nbd+unix:/s"): creating a
 * file of that name is almost never what was meant.  The "did you mean"
 * hint, or NULL when NAME is plainly a path. */
static const char *
mistyped (const char *name)
{
  static const char *const schemes[] = {
    "nbd:", "nbds:", "nbd+unix:", "nbds+unix:", "nbd+vsock:", "nbds+vsock:",
  };

  if (strcmp (name, "null") == 0)
    return "null: (the sink, with a colon)";
  for (size_t i = 0; i < sizeof schemes / sizeof schemes[0]; i++)
    if (strncasecmp (name, schemes[i], strlen (schemes[i])) == 0)
      return "an NBD URI: SCHEME://HOST[:PORT]/EXPORT or "
             "nbd+unix:///EXPORT?socket=PATH";
  return NULL;
}

struct endpoint *
endpoint_open (const char *name, bool is_dest, bool writable,
               uint64_t want_size, const struct endpoint_opts *o,
               struct conn **first)
{
  const struct endpoint proto = {
    .name = name, .is_dest = is_dest, .writable = writable,
    .insecure = o->insecure, .timeout = o->timeout,
  };
  struct stat st;
  bool exists;
  int v;

  *first = NULL;
  if (strcmp (name, "null:") == 0) {
    if (!is_dest) {
      fprintf (stderr, "sxm-copy: null: can only be a destination\n");
      return NULL;
    }
    return endpoint_open_null (&proto, want_size, first);
  }
  if (strstr (name, "://"))
    return endpoint_open_nbd (&proto, first);
  exists = stat (name, &st) == 0;
  if (is_dest && !exists && !o->create && mistyped (name)) {
    fprintf (stderr, "sxm-copy: %s: refusing to create a file of that name; "
             "did you mean %s?  (--create makes the file anyway)\n",
             name, mistyped (name));
    errno = EINVAL;
    return NULL;
  }
  if (is_dest && exists && o->create) {
    fprintf (stderr, "sxm-copy: %s: exists; --create makes a new image and "
             "never overwrites one\n", name);
    return NULL;
  }
  v = local_is_vhd (&proto, o, exists);
  if (v == -1)
    return NULL;
  if (v == 1)
    return endpoint_open_vhd (&proto, o->create_kind, want_size, exists,
                              first);
  return endpoint_open_file (&proto, want_size, first);
}

int
endpoint_close (struct endpoint *ep)
{
  int r;

  if (!ep)
    return 0;
  r = ep->ops->close ? ep->ops->close (ep) : 0;
  free (ep);
  return r;
}

struct endpoint *
endpoint_alloc (const struct endpoint *proto, size_t size,
                const struct endpoint_ops *ops)
{
  struct endpoint *ep = calloc (1, size);

  if (!ep) {
    fprintf (stderr, "sxm-copy: %s: out of memory\n", proto->name);
    return NULL;
  }
  *ep = *proto;
  ep->ops = ops;
  return ep;
}

struct conn *
endpoint_first_conn (struct endpoint *ep)
{
  struct conn *c = conn_new (ep);

  if (!c) {
    fprintf (stderr, "sxm-copy: %s: out of memory\n", ep->name);
    return NULL;
  }
  if (conn_connect (c) == -1) {
    fprintf (stderr, "sxm-copy: %s: cannot connect: %s\n", ep->name,
             c->error);
    conn_free (c);
    return NULL;
  }
  return c;
}

/* ---- connections --------------------------------------------------------- */

struct conn *
conn_new (struct endpoint *ep)
{
  struct conn *c = calloc (1, ep->ops->conn_size);

  if (c)
    c->ep = ep;
  return c;
}

int
conn_connect (struct conn *c)
{
  c->error[0] = 0;
  return c->ep->ops->connect ? c->ep->ops->connect (c) : 0;
}

void
conn_disconnect (struct conn *c)
{
  if (c->ep->ops->disconnect)
    c->ep->ops->disconnect (c);
}

void
conn_free (struct conn *c)
{
  if (c) {
    conn_disconnect (c);
    free (c);
  }
}

bool
conn_is_dead (struct conn *c)
{
  return c->ep->ops->is_dead && c->ep->ops->is_dead (c);
}
