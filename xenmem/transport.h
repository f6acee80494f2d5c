/* xenmem transport: a byte stream over a unix socket or TCP, optionally
 * TLS (gnutls) with a pre-shared key or x509 certificates.
 *
 * Addresses: "unix:PATH" or "tcp:HOST:PORT" (HOST may be [v6]).  TLS is
 * required on any TCP address that is not loopback unless insecure is set;
 * a PSK file uses nbdkit's format ("username:hexkey" lines, the same file
 * can serve nbdkit and xenmem) and must not be readable by group/others.
 * x509: a directory with ca-cert.pem and server-cert.pem/server-key.pem
 * (listener) or client-cert.pem/client-key.pem (optional, connector), as
 * nbdkit and libnbd lay it out; the connector verifies the server's
 * certificate against ca-cert.pem and the host name it dialled, the
 * listener verifies a client certificate if one is presented.  PSK and
 * x509 together are refused.
 *
 * Every wait (accept, connect, handshake, each read and write) is bounded
 * by the timeout, so a silent or stalled peer is an error, never a hang;
 * SIGPIPE is never raised. */
#ifndef XENMEM_TRANSPORT_H
#define XENMEM_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct xm_tls_opts {
  const char *psk_file;         /* NULL: no PSK */
  const char *psk_identity;     /* connector: user in the file (NULL: first) */
  const char *x509_dir;         /* NULL: no x509 */
  bool insecure;                /* allow plaintext TCP to a non-loopback host */
};

struct xm_conn;

/* Listen on ADDR, accept one connection (waiting at most TIMEOUT seconds,
 * 0 = for ever), handshake (within TIMEOUT again).  Unix sockets are
 * created mode 0600 and removed after accept; a stale socket at the path
 * is replaced, anything else there is refused.  NULL after sxm_error() on
 * failure; a client with the wrong key is refused with a message saying
 * so.  The connection's I/O timeout starts as TIMEOUT. */
struct xm_conn *xm_listen_accept (const char *addr,
                                  const struct xm_tls_opts *tls,
                                  double timeout);
/* Connect to ADDR (retrying every 100 ms until TIMEOUT seconds, 0 = for
 * ever: the receiver may still be starting) and handshake (within TIMEOUT
 * again).  The connection's I/O timeout starts as TIMEOUT. */
struct xm_conn *xm_connect (const char *addr, const struct xm_tls_opts *tls,
                            double timeout);
/* All LEN bytes or -1 (error reported; EOF mid-buffer is an error naming
 * how many bytes were missing).  xm_write returns 0 when all is written;
 * xm_read returns 1 when all is read, and 0 for EOF before the first byte
 * if EOF_OK (otherwise that is an error too). */
int xm_write (struct xm_conn *c, const void *buf, size_t len);
int xm_read (struct xm_conn *c, void *buf, size_t len, bool eof_ok);
/* Seconds to wait for the peer in each step of xm_read and xm_write (the
 * next bytes to read, or room in the socket to write), 0 = for ever. */
void xm_set_timeout (struct xm_conn *c, double seconds);
bool xm_conn_is_tls (struct xm_conn *c);
/* Payload bytes written so far (without TLS framing). */
uint64_t xm_bytes_written (struct xm_conn *c);
/* Sends TLS close_notify (waiting at most 2 s), closes; NULL is a no-op. */
void xm_close (struct xm_conn *c);

#endif
