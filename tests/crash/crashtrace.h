/* The crash trace: one file of records, appended by every traced process
 * (the file-level interposer crashtrace.so and the NBD-level filter
 * nbdkit-crashlog-filter.so) and read by tests/crash/crashexplore.py,
 * which builds from it the states a power loss may leave on disk.
 *
 * A record is a 40-byte header (little-endian) and PAYLOAD bytes:
 *
 *   u8  type       see enum crash_rec_type
 *   u8  flags      CRASH_F_*
 *   u16 zero
 *   u32 tid        the thread that did it (pairs a sync's start and end)
 *   u64 ino        the file (inode number); 0 for NBD-level records
 *   u64 offset     file or disk offset; new size for 'T'
 *   u64 length     bytes the operation covers
 *   u64 payload    bytes that follow: the data of a write, a path
 *
 * Each record is written with one writev() on a descriptor opened with
 * O_APPEND, so records of concurrent writers never interleave, and the
 * order of the file is the order in which they were appended.  A file
 * operation is recorded when it has *completed* (the write returned);
 * a sync twice: 'S' before the call and 'E' after it returned, because
 * what a sync makes durable is what had completed when it *started*. */
#ifndef SXM_CRASHTRACE_H
#define SXM_CRASHTRACE_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

enum crash_rec_type {
  /* File level (crashtrace.so). */
  CRASH_OPEN = 'O',             /* payload: absolute path; flags: DIR, NEW */
  CRASH_WRITE = 'W',            /* payload: the data, or flags ZERO */
  CRASH_TRUNC = 'T',            /* offset: the new size */
  CRASH_SYNC = 'S',             /* flags: DATA for fdatasync */
  CRASH_SYNC_END = 'E',
  CRASH_RENAME = 'R',           /* payload: old path, NUL, new path */
  CRASH_UNLINK = 'U',           /* payload: path */
  /* NBD level (nbdkit-crashlog-filter.so), offsets in the virtual disk. */
  CRASH_NBD_WRITE = 'w',        /* request received; payload: the data */
  CRASH_NBD_ZERO = 'z',         /* request received */
  CRASH_NBD_TRIM = 't',         /* request received */
  CRASH_NBD_DONE = 'x',         /* a w/z/t completed; flags: FUA, FAILED */
  CRASH_NBD_FLUSH = 'f',        /* flush received */
  CRASH_NBD_FLUSH_END = 'g',    /* flush completed; flags: FAILED */
  CRASH_MARK = 'M',             /* payload: a label from the test driver */
};

enum {
  CRASH_F_DIR = 1,              /* CRASH_OPEN of a directory */
  CRASH_F_NEW = 2,              /* CRASH_OPEN that created the file */
  CRASH_F_ZERO = 4,             /* CRASH_WRITE of zeros (a punched hole) */
  CRASH_F_DATA = 8,             /* CRASH_SYNC by fdatasync */
  CRASH_F_FUA = 16,             /* CRASH_NBD_DONE of a FUA request */
  CRASH_F_FAILED = 32,          /* CRASH_NBD_DONE/_FLUSH_END: it failed */
};

#define CRASH_HDR 40

static inline void
crash_store64 (uint8_t *p, uint64_t v)
{
  for (int i = 0; i < 8; i++)
    p[i] = v >> (8 * i);
}

/* Append one record to FD.  The caller's errno is preserved, so the
 * interposer can record after a call and still return that call's errno.
 * A trace that cannot be written is fatal: a test must not go on with a
 * silently incomplete trace. */
static inline void
crash_record (int fd, int type, int flags, uint64_t ino, uint64_t offset,
              uint64_t length, const void *p1, size_t n1,
              const void *p2, size_t n2)
{
  uint8_t h[CRASH_HDR] = { 0 };
  struct iovec iov[3] = {
    { h, sizeof h }, { (void *) p1, n1 }, { (void *) p2, n2 },
  };
  int saved = errno;
  size_t want = sizeof h + n1 + n2;
  long r;

  crash_store64 (h, (uint64_t) syscall (SYS_gettid) << 32 | flags << 8 | type);
  crash_store64 (h + 8, ino);
  crash_store64 (h + 16, offset);
  crash_store64 (h + 24, length);
  crash_store64 (h + 32, n1 + n2);
  /* One writev on an O_APPEND descriptor is one atomic append (regular
   * files); a short one would leave a torn record. */
  r = syscall (SYS_writev, fd, iov, 3);
  if (r != (long) want) {
    static const char msg[] = "crashtrace: cannot append to the trace\n";
    syscall (SYS_write, 2, msg, sizeof msg - 1);
    _exit (99);
  }
  errno = saved;
}

#endif
