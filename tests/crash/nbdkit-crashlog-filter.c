/* nbdkit-crashlog-filter: records the NBD-level writes and flushes a
 * server receives, with their data, into the crash trace
 * (crashtrace.h), beside the file-level records of crashtrace.so loaded
 * into the same nbdkit.  From both, tests/crash/crashexplore.py knows
 * what every sector of the disk may read after a power loss at any point:
 * its value at the last completed flush or a value written after it.
 *
 *   nbdkit --filter=tests/crash/nbdkit-crashlog-filter.so PLUGIN \
 *          crashlog=TRACE [crashlog-tag=N] [crashlog-export=NAME] ...
 *
 * crashlog-tag=N goes in the records' ino field (0 by default), so that
 * one trace can hold two servers (a mirror's source and destination);
 * with crashlog-export=NAME only the connections to export NAME are
 * recorded (the guest's, not the mirror's copy export).
 *
 * A request is recorded when received ('w', 'z', 't', 'f') and when it
 * completed ('x', 'g'); a flush covers what had completed before it was
 * received.  Test instrumentation only: never installed. */
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "crashtrace.h"

static int trace_fd = -1;
static uint64_t tag;
static const char *only_export;
/* The per-connection handle: whether its requests are recorded. */
static bool yes = true, no = false;
#define LOGGED(handle) (*(bool *) (handle))

static int
crashlog_config (nbdkit_next_config *next, nbdkit_backend *nxdata,
                 const char *key, const char *value)
{
  if (strcmp (key, "crashlog") == 0) {
    trace_fd = open (value, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (trace_fd == -1) {
      nbdkit_error ("crashlog: %s: %m", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "crashlog-tag") == 0)
    return nbdkit_parse_uint64_t ("crashlog-tag", value, &tag);
  if (strcmp (key, "crashlog-export") == 0) {
    only_export = value;
    return 0;
  }
  return next (nxdata, key, value);
}

static int
crashlog_config_complete (nbdkit_next_config_complete *next,
                          nbdkit_backend *nxdata)
{
  if (trace_fd == -1) {
    nbdkit_error ("crashlog: the crashlog=TRACE parameter is required");
    return -1;
  }
  return next (nxdata);
}

static void *
crashlog_open (nbdkit_next_open *next, nbdkit_context *context,
               int readonly, const char *exportname, int is_tls)
{
  if (next (context, readonly, exportname) == -1)
    return NULL;
  return only_export && strcmp (exportname, only_export) != 0 ? &no : &yes;
}

static void
done (uint64_t offset, uint32_t count, uint32_t flags, int r)
{
  crash_record (trace_fd, CRASH_NBD_DONE,
                (flags & NBDKIT_FLAG_FUA ? CRASH_F_FUA : 0) |
                (r == -1 ? CRASH_F_FAILED : 0),
                tag, offset, count, NULL, 0, NULL, 0);
}

static int
crashlog_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  int r;

  if (!LOGGED (handle))
    return next->pwrite (next, buf, count, offset, flags, err);

  crash_record (trace_fd, CRASH_NBD_WRITE, 0, tag, offset, count, buf, count,
                NULL, 0);
  r = next->pwrite (next, buf, count, offset, flags, err);
  done (offset, count, flags, r);
  return r;
}

/* Zero and trim: a range and no data, recorded as TYPE. */
static int
ranged (int type, int (*call) (nbdkit_next *, uint32_t, uint64_t, uint32_t,
                               int *),
        nbdkit_next *next, void *handle, uint32_t count, uint64_t offset,
        uint32_t flags, int *err)
{
  int r;

  if (!LOGGED (handle))
    return call (next, count, offset, flags, err);
  crash_record (trace_fd, type, 0, tag, offset, count, NULL, 0, NULL, 0);
  r = call (next, count, offset, flags, err);
  done (offset, count, flags, r);
  return r;
}

static int
crashlog_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  return ranged (CRASH_NBD_ZERO, next->zero, next, handle, count, offset,
                 flags, err);
}

static int
crashlog_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  return ranged (CRASH_NBD_TRIM, next->trim, next, handle, count, offset,
                 flags, err);
}

static int
crashlog_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  int r;

  if (!LOGGED (handle))
    return next->flush (next, flags, err);

  crash_record (trace_fd, CRASH_NBD_FLUSH, 0, tag, 0, 0, NULL, 0, NULL, 0);
  r = next->flush (next, flags, err);
  crash_record (trace_fd, CRASH_NBD_FLUSH_END, r == -1 ? CRASH_F_FAILED : 0,
                tag, 0, 0, NULL, 0, NULL, 0);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "crashlog",
  .longname = "sxm crash-trace logger (tests only)",
  .config = crashlog_config,
  .config_complete = crashlog_config_complete,
  .config_help = "crashlog=TRACE  the trace file to append to\n"
                 "crashlog-tag=N  a number for this server's records\n"
                 "crashlog-export=NAME  record only this export's requests",
  .open = crashlog_open,
  .pwrite = crashlog_pwrite,
  .zero = crashlog_zero,
  .trim = crashlog_trim,
  .flush = crashlog_flush,
};

NBDKIT_REGISTER_FILTER (filter)
