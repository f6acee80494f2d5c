/* xenmem's none backend: no guest memory, only the commit handshake.
 *
 * A disk-only live migration (sxm migrate without --memory) still needs
 * the one thing the memory stream gives a whole migration: a single,
 * authenticated point of no return that both hosts agree on.  With this
 * backend the stream carries one zero page and an empty context, the
 * hook (xenmem send -- COMMAND) switches the disks over "while the guest
 * is paused", and END / loaded / commit / running decide, exactly
 * as for a guest with memory, whether the source or the destination owns
 * the VM.  Pausing and resuming are no-ops: the caller owns the guest. */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"

struct xm_source { int unused; };
struct xm_dest { int unused; };

static struct xm_source the_source;
static struct xm_dest the_dest;

static int
none_open_source (const char *id, const struct xm_guest_opts *g,
                  struct xm_source **out)
{
  *out = &the_source;
  return 0;
}

static uint64_t none_npages (struct xm_source *s) { return 1; }
static int none_ok (struct xm_source *s) { return 0; }

static int
none_log_fetch (struct xm_source *s, uint8_t *bitmap, uint64_t *count)
{
  bitmap[0] = 0;
  *count = 0;
  return 0;
}

static int
none_read_pages (struct xm_source *s, const uint64_t *pfns, unsigned n,
                 void *buf)
{
  memset (buf, 0, (size_t) n * XM_PAGE_SIZE);
  return 0;
}

static int
none_get_context (struct xm_source *s, void **blob, size_t *len)
{
  *blob = NULL;
  *len = 0;
  return 0;
}

static void none_close_source (struct xm_source *s, bool migrated) { }

static int
none_create_dest (const char *id, uint64_t npages, struct xm_dest **out)
{
  if (npages != 1) {
    sxm_error ("backend none: the stream announces %" PRIu64 " pages; a "
               "stream without memory has exactly one", npages);
    return -1;
  }
  *out = &the_dest;
  return 0;
}

static int
none_write_pages (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                  const void *buf)
{
  /* The one page is zero; data would mean a confused sender. */
  if (buf) {
    for (size_t i = 0; i < (size_t) n * XM_PAGE_SIZE; i++)
      if (((const uint8_t *) buf)[i]) {
        sxm_error ("backend none: a page with data in a stream without "
                   "memory");
        return -1;
      }
  }
  return 0;
}

static int
none_set_context (struct xm_dest *d, const void *blob, size_t len)
{
  if (len != 0) {
    sxm_error ("backend none: a %zu-byte context, expected none", len);
    return -1;
  }
  return 0;
}

static int
none_read_dest (struct xm_dest *d, const uint64_t *pfns, unsigned n,
                void *buf)
{
  memset (buf, 0, (size_t) n * XM_PAGE_SIZE);
  return 0;
}

static int none_start (struct xm_dest *d) { return 0; }
static void none_close_dest (struct xm_dest *d, bool keep) { }

const struct xm_backend_ops xm_backend_none = {
  .name = "none",
  .id = XM_BACKEND_NONE,
  .open_source = none_open_source,
  .npages = none_npages,
  .log_enable = none_ok,
  .log_fetch = none_log_fetch,
  .log_disable = none_ok,
  .read_pages = none_read_pages,
  .pause = none_ok,
  .unpause = none_ok,
  .get_context = none_get_context,
  .close_source = none_close_source,
  .create_dest = none_create_dest,
  .write_pages = none_write_pages,
  .set_context = none_set_context,
  .read_dest = none_read_dest,
  .start = none_start,
  .close_dest = none_close_dest,
};
