/* Whole-buffer reads and writes on blocking file descriptors: the one
 * place sxm retries a read(2)/write(2) that was interrupted (EINTR) or
 * did less than asked (a pipe, a socket, a signal mid-transfer).
 *
 * Not for non-blocking descriptors (EAGAIN is returned as an error), nor
 * for I/O that needs a deadline: those wait in poll() between calls and
 * keep their own loops (xenmem/transport.c, common/mirrorctl.c's reply
 * read). */
#ifndef SXM_FULLIO_H
#define SXM_FULLIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Read N bytes from FD into BUF.  Returns the bytes read, which is less
 * than N only if end of file came first (0: at EOF already), or -1 with
 * errno set (what was read before the error is in BUF, but not
 * counted). */
ssize_t full_read (int fd, void *buf, size_t n);

/* Write the N bytes of BUF to FD.  Returns 0, or -1 with errno set (how
 * much went out before the error is unknown).  A write that makes no
 * progress is an error (EIO), not retried for ever. */
int full_write (int fd, const void *buf, size_t n);

/* full_write on a socket with send (MSG_NOSIGNAL): a peer that went away
 * is EPIPE to report, not a SIGPIPE that kills the process (nbdkit, a
 * VM process, a tool holding a paused guest). */
int full_send (int fd, const void *buf, size_t n);

/* The same at file offset OFFSET (pread/pwrite: FD's own offset does not
 * move, so threads may share FD).  full_pread returns the bytes read,
 * short only at end of file; full_pwrite 0.  Both -1 with errno. */
ssize_t full_pread (int fd, void *buf, size_t n, uint64_t offset);
int full_pwrite (int fd, const void *buf, size_t n, uint64_t offset);

#endif
