/* crashtrace.so: an LD_PRELOAD interposer that records every write, sync
 * and namespace change a process makes to the files under one directory,
 * with the data written, so that tests/crash/crashexplore.py can rebuild
 * the states a power loss may leave (crashtrace.h has the format).
 *
 *   SXM_CRASHTRACE=FILE      the trace (appended; created if missing)
 *   SXM_CRASHTRACE_DIR=DIR   only files whose absolute path is under DIR
 *
 * Both must be set, or the library does nothing.  It wraps the calls sxm's
 * writers use (open*, pwrite*, write, ftruncate, fallocate, fsync,
 * fdatasync, rename*, unlink, close); anything else that modifies a traced
 * file (mmap, pwritev, copy_file_range...) is refused with EPERM and a
 * message, so a writer that starts using one cannot go untraced. */
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "crashtrace.h"

#define MAX_FD 65536

static int trace_fd = -1;
static char dir[PATH_MAX];
static size_t dirlen;
/* Per descriptor: the traced file's inode number, 0 if not traced. */
static uint64_t traced[MAX_FD];

#define REAL(ret, name, args) \
  static ret (*real_##name) args; \
  if (!real_##name) real_##name = dlsym (RTLD_NEXT, #name)

__attribute__((constructor)) static void
crashtrace_init (void)
{
  const char *t = getenv ("SXM_CRASHTRACE"), *d = getenv ("SXM_CRASHTRACE_DIR");

  if (!t || !d || !realpath (d, dir))
    return;
  dirlen = strlen (dir);
  trace_fd = syscall (SYS_open, t, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                      0644);
}

/* Whether absolute PATH lies under the traced directory. */
static int
under (const char *path)
{
  return trace_fd >= 0 && strncmp (path, dir, dirlen) == 0 &&
         (path[dirlen] == '/' || path[dirlen] == 0);
}

/* The absolute path of DIRFD/PATH without resolving its last component
 * (it may not exist yet, or be a name being replaced). */
static int
absolute (int dirfd, const char *path, char out[PATH_MAX])
{
  char base[PATH_MAX], link[64];
  ssize_t n;

  if (path[0] == '/')
    return snprintf (out, PATH_MAX, "%s", path) < PATH_MAX ? 0 : -1;
  if (dirfd == AT_FDCWD) {
    if (!getcwd (base, sizeof base))
      return -1;
  }
  else {
    snprintf (link, sizeof link, "/proc/self/fd/%d", dirfd);
    n = readlink (link, base, sizeof base - 1);
    if (n <= 0)
      return -1;
    base[n] = 0;
  }
  return snprintf (out, PATH_MAX, "%s/%s", base, path) < PATH_MAX ? 0 : -1;
}

/* After an open: start tracing FD if its file is under the directory. */
static void
opened (int fd, int dirfd, const char *path, int flags, int existed)
{
  char abs[PATH_MAX];
  struct stat st;

  if (fd < 0 || fd >= MAX_FD || trace_fd < 0)
    return;
  traced[fd] = 0;
  if (absolute (dirfd, path, abs) == -1 || !under (abs) ||
      fstat (fd, &st) == -1)
    return;
  traced[fd] = st.st_ino;
  crash_record (trace_fd, CRASH_OPEN,
                (S_ISDIR (st.st_mode) ? CRASH_F_DIR : 0) |
                (!existed ? CRASH_F_NEW : 0),
                st.st_ino, 0, 0, abs, strlen (abs), NULL, 0);
  if (flags & O_TRUNC)
    crash_record (trace_fd, CRASH_TRUNC, 0, st.st_ino, 0, 0, NULL, 0, NULL, 0);
}

static int
exists_at (int dirfd, const char *path)
{
  struct stat st;
  return fstatat (dirfd, path, &st, 0) == 0;
}

static inline uint64_t
ino_of (int fd)
{
  return fd >= 0 && fd < MAX_FD ? traced[fd] : 0;
}

static int
do_openat (int dirfd, const char *path, int flags, mode_t mode)
{
  REAL (int, openat, (int, const char *, int, ...));
  int existed = (flags & O_CREAT) ? exists_at (dirfd, path) : 1;
  int fd = real_openat (dirfd, path, flags, mode);

  opened (fd, dirfd, path, flags, existed);
  return fd;
}

#define MODE_ARG(flags, mode) \
  mode_t mode = 0; \
  if ((flags) & (O_CREAT | __O_TMPFILE)) { \
    va_list ap; va_start (ap, flags); mode = va_arg (ap, int); va_end (ap); \
  }

int open (const char *p, int flags, ...)
{ MODE_ARG (flags, mode); return do_openat (AT_FDCWD, p, flags, mode); }
int open64 (const char *p, int flags, ...)
{ MODE_ARG (flags, mode); return do_openat (AT_FDCWD, p, flags, mode); }
int openat (int d, const char *p, int flags, ...)
{ MODE_ARG (flags, mode); return do_openat (d, p, flags, mode); }
int openat64 (int d, const char *p, int flags, ...)
{ MODE_ARG (flags, mode); return do_openat (d, p, flags, mode); }
int creat (const char *p, mode_t mode)
{ return do_openat (AT_FDCWD, p, O_CREAT | O_WRONLY | O_TRUNC, mode); }
int creat64 (const char *p, mode_t mode)
{ return do_openat (AT_FDCWD, p, O_CREAT | O_WRONLY | O_TRUNC, mode); }

int
close (int fd)
{
  REAL (int, close, (int));
  if (fd >= 0 && fd < MAX_FD)
    traced[fd] = 0;
  return real_close (fd);
}

static ssize_t
do_pwrite (int fd, const void *buf, size_t n, off_t off)
{
  REAL (ssize_t, pwrite64, (int, const void *, size_t, off_t));
  ssize_t r = real_pwrite64 (fd, buf, n, off);

  if (r > 0 && ino_of (fd))
    crash_record (trace_fd, CRASH_WRITE, 0, ino_of (fd), off, r, buf, r,
                  NULL, 0);
  return r;
}

ssize_t pwrite (int fd, const void *b, size_t n, off_t o)
{ return do_pwrite (fd, b, n, o); }
ssize_t pwrite64 (int fd, const void *b, size_t n, off_t o)
{ return do_pwrite (fd, b, n, o); }

ssize_t
write (int fd, const void *buf, size_t n)
{
  REAL (ssize_t, write, (int, const void *, size_t));
  off_t at = ino_of (fd) ? lseek (fd, 0, SEEK_CUR) : 0;
  ssize_t r;

  if (ino_of (fd) && (fcntl (fd, F_GETFL) & O_APPEND)) {
    struct stat st;
    at = fstat (fd, &st) == 0 ? st.st_size : -1;
  }
  r = real_write (fd, buf, n);
  if (r > 0 && ino_of (fd))
    crash_record (trace_fd, CRASH_WRITE, 0, ino_of (fd), at, r, buf, r,
                  NULL, 0);
  return r;
}

static int
do_ftruncate (int fd, off_t len)
{
  REAL (int, ftruncate64, (int, off_t));
  int r = real_ftruncate64 (fd, len);

  if (r == 0 && ino_of (fd))
    crash_record (trace_fd, CRASH_TRUNC, 0, ino_of (fd), len, 0, NULL, 0,
                  NULL, 0);
  return r;
}

int ftruncate (int fd, off_t len) { return do_ftruncate (fd, len); }
int ftruncate64 (int fd, off_t len) { return do_ftruncate (fd, len); }

static int
do_fallocate (int fd, int mode, off_t off, off_t len)
{
  REAL (int, fallocate64, (int, int, off_t, off_t));
  int r = real_fallocate64 (fd, mode, off, len);

  if (r == 0 && ino_of (fd)) {
    if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
      crash_record (trace_fd, CRASH_WRITE, CRASH_F_ZERO, ino_of (fd), off,
                    len, NULL, 0, NULL, 0);
    else if (!(mode & FALLOC_FL_KEEP_SIZE)) {
      /* Plain preallocation: the size may grow, the contents read as
       * zeros; a zero write of the range says exactly that. */
      crash_record (trace_fd, CRASH_WRITE, CRASH_F_ZERO, ino_of (fd), off,
                    len, NULL, 0, NULL, 0);
    }
  }
  return r;
}

int fallocate (int fd, int mode, off_t off, off_t len)
{ return do_fallocate (fd, mode, off, len); }
int fallocate64 (int fd, int mode, off_t off, off_t len)
{ return do_fallocate (fd, mode, off, len); }

static int
do_sync (int fd, int data)
{
  REAL (int, fsync, (int));
  REAL (int, fdatasync, (int));
  uint64_t ino = ino_of (fd);
  int r;

  if (ino)
    crash_record (trace_fd, CRASH_SYNC, data ? CRASH_F_DATA : 0, ino, 0, 0,
                  NULL, 0, NULL, 0);
  r = data ? real_fdatasync (fd) : real_fsync (fd);
  if (ino && r == 0)
    crash_record (trace_fd, CRASH_SYNC_END, data ? CRASH_F_DATA : 0, ino, 0,
                  0, NULL, 0, NULL, 0);
  return r;
}

int fsync (int fd) { return do_sync (fd, 0); }
int fdatasync (int fd) { return do_sync (fd, 1); }

static int
do_rename (int od, const char *o, int nd, const char *n, unsigned flags)
{
  REAL (int, renameat2, (int, const char *, int, const char *, unsigned));
  char ao[PATH_MAX], an[PATH_MAX];
  int traced_names = trace_fd >= 0 && absolute (od, o, ao) == 0 &&
                     absolute (nd, n, an) == 0 && (under (ao) || under (an));
  int r = real_renameat2 (od, o, nd, n, flags);

  if (r == 0 && traced_names)
    crash_record (trace_fd, CRASH_RENAME, 0, 0, 0, 0, ao, strlen (ao) + 1,
                  an, strlen (an));
  return r;
}

int rename (const char *o, const char *n)
{ return do_rename (AT_FDCWD, o, AT_FDCWD, n, 0); }
int renameat (int od, const char *o, int nd, const char *n)
{ return do_rename (od, o, nd, n, 0); }
int renameat2 (int od, const char *o, int nd, const char *n, unsigned f)
{ return do_rename (od, o, nd, n, f); }

static int
do_unlink (int dirfd, const char *p, int flags)
{
  REAL (int, unlinkat, (int, const char *, int));
  char a[PATH_MAX];
  int t = trace_fd >= 0 && absolute (dirfd, p, a) == 0 && under (a);
  int r = real_unlinkat (dirfd, p, flags);

  if (r == 0 && t)
    crash_record (trace_fd, CRASH_UNLINK, 0, 0, 0, 0, a, strlen (a), NULL, 0);
  return r;
}

int unlink (const char *p) { return do_unlink (AT_FDCWD, p, 0); }
int unlinkat (int d, const char *p, int f) { return do_unlink (d, p, f); }

/* Writers sxm does not use: refused on traced files, loudly. */
static ssize_t
untraced (int fd, const char *what)
{
  fprintf (stderr, "crashtrace: %s on a traced file is not recorded: "
           "refused\n", what);
  errno = EPERM;
  return -1;
}

#define REFUSE(ret, name, params, args) \
  ret name params { \
    REAL (ret, name, params); \
    if (ino_of (fd)) return (ret) untraced (fd, #name); \
    return real_##name args; \
  }

REFUSE (ssize_t, pwritev, (int fd, const struct iovec *v, int n, off_t o),
        (fd, v, n, o))
REFUSE (ssize_t, pwritev64, (int fd, const struct iovec *v, int n, off_t o),
        (fd, v, n, o))
REFUSE (ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n))
