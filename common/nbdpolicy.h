/* Security defaults for NBD URIs, shared by every sxm program that
 * connects to an NBD server (sxm-copy, the mirror filter's destination):
 * plaintext nbd:// only to a loopback host unless the caller allows it, and
 * TLS secrets (tls-psk-file=, tls-certificates=DIR/client-key.pem) must not
 * be readable by group or others. */
#ifndef SXM_NBDPOLICY_H
#define SXM_NBDPOLICY_H

#include <stdbool.h>

/* 0 if URI may be used; -1 with a message through sxm_error() naming the
 * URI and what is wrong. */
int nbd_uri_policy (const char *uri, bool insecure);

/* The value of KEY in URI's query string, percent-decoded (malloc'd), or
 * NULL. */
char *nbd_uri_query (const char *uri, const char *key);

#endif
