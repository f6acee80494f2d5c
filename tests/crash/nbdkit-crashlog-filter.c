/* nbdkit-crashlog-filter: records the NBD-level writes and flushes a
 * server receives, with their data, into the crash trace
 * (crashtrace.h), beside the file-level records of crashtrace.so loaded
 * into the same nbdkit.  From both, tests/crash/crashexplore.py knows
 * what every sector of the disk may read after a power loss at any point:
 * its value at the last completed flush or a value written after it.
 *
 *   nbdkit --filter=tests/crash/nbdkit-crashlog-filter.so PLUGIN \
 *          crashlog=TRACE ...
 *
 * A request is recorded when received ('w', 'z', 't', 'f') and when it
 * completed ('x', 'g'); a flush covers what had completed before it was
 * received.  Test instrumentation only: never installed. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "crashtrace.h"

static int trace_fd = -1;

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

static void
done (uint64_t offset, uint32_t count, uint32_t flags, int r)
{
  crash_record (trace_fd, CRASH_NBD_DONE,
                (flags & NBDKIT_FLAG_FUA ? CRASH_F_FUA : 0) |
                (r == -1 ? CRASH_F_FAILED : 0),
                0, offset, count, NULL, 0, NULL, 0);
}

static int
crashlog_pwrite (nbdkit_next *next, void *handle, const void *buf,
                 uint32_t count, uint64_t offset, uint32_t flags, int *err)
{
  int r;

  crash_record (trace_fd, CRASH_NBD_WRITE, 0, 0, offset, count, buf, count,
                NULL, 0);
  r = next->pwrite (next, buf, count, offset, flags, err);
  done (offset, count, flags, r);
  return r;
}

static int
crashlog_zero (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  int r;

  crash_record (trace_fd, CRASH_NBD_ZERO, 0, 0, offset, count, NULL, 0,
                NULL, 0);
  r = next->zero (next, count, offset, flags, err);
  done (offset, count, flags, r);
  return r;
}

static int
crashlog_trim (nbdkit_next *next, void *handle, uint32_t count,
               uint64_t offset, uint32_t flags, int *err)
{
  int r;

  crash_record (trace_fd, CRASH_NBD_TRIM, 0, 0, offset, count, NULL, 0,
                NULL, 0);
  r = next->trim (next, count, offset, flags, err);
  done (offset, count, flags, r);
  return r;
}

static int
crashlog_flush (nbdkit_next *next, void *handle, uint32_t flags, int *err)
{
  int r;

  crash_record (trace_fd, CRASH_NBD_FLUSH, 0, 0, 0, 0, NULL, 0, NULL, 0);
  r = next->flush (next, flags, err);
  crash_record (trace_fd, CRASH_NBD_FLUSH_END, r == -1 ? CRASH_F_FAILED : 0,
                0, 0, 0, NULL, 0, NULL, 0);
  return r;
}

static struct nbdkit_filter filter = {
  .name = "crashlog",
  .longname = "sxm crash-trace logger (tests only)",
  .config = crashlog_config,
  .config_complete = crashlog_config_complete,
  .config_help = "crashlog=TRACE  the trace file to append to",
  .pwrite = crashlog_pwrite,
  .zero = crashlog_zero,
  .trim = crashlog_trim,
  .flush = crashlog_flush,
};

NBDKIT_REGISTER_FILTER (filter)
