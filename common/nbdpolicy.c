#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "nbdpolicy.h"
#include "pctdecode.h"

/* The value of KEY in URI's query string, percent-decoded, or NULL. */
char *
nbd_uri_query (const char *uri, const char *key)
{
  const char *q = strchr (uri, '?');
  size_t klen = strlen (key);

  while (q) {
    const char *v, *end;
    q++;
    end = strchr (q, '&');
    if (strncmp (q, key, klen) == 0 && q[klen] == '=') {
      char *out, *o;
      v = q + klen + 1;
      if (!end)
        end = v + strlen (v);
      out = o = malloc (end - v + 1);
      if (!out)
        return NULL;
      for (; v < end; v++) {
        int x = v + 2 < end ? pct_decode (v) : -1;
        if (x >= 0) {
          *o++ = (char) x;
          v += 2;
        }
        else
          *o++ = *v;
      }
      *o = 0;
      return out;
    }
    q = end;
  }
  return NULL;
}

/* Secret files must be private to their owner. */
static int
check_private (const char *uri, const char *what, const char *path)
{
  struct stat st;

  if (stat (path, &st) == -1)
    return 0;                   /* libnbd reports a missing file itself */
  if (st.st_mode & 077) {
    sxm_error ("%s: %s %s is accessible to group or others "
               "(mode %04o); refusing to use it (chmod 600)", uri, what,
               path, (unsigned) (st.st_mode & 07777));
    return -1;
  }
  return 0;
}

static bool
loopback_host (const char *h, size_t n)
{
  return (n == 9 && strncmp (h, "localhost", 9) == 0) ||
         (n >= 4 && strncmp (h, "127.", 4) == 0) ||
         (n == 5 && strncmp (h, "[::1]", 5) == 0);
}

int
nbd_uri_policy (const char *u, bool insecure)
{
  char *psk, *certs;
  int r = 0;

  if (strncmp (u, "nbd://", 6) == 0 && !insecure) {
    const char *h = u + 6, *e = h + strcspn (h, "/?");
    const char *at = memchr (h, '@', e - h);
    size_t n;
    if (at)
      h = at + 1;
    n = e - h;
    if (n && h[0] != '[' && memchr (h, ':', n))    /* strip :port */
      n = (const char *) memchr (h, ':', n) - h;
    else if (n && h[0] == '[' && memchr (h, ']', n))
      n = (const char *) memchr (h, ']', n) - h + 1;
    if (!loopback_host (h, n)) {
      sxm_error ("%s: plaintext NBD to a host that is not "
                 "loopback; use nbds:// (TLS), or --insecure to allow it", u);
      return -1;
    }
  }
  psk = nbd_uri_query (u, "tls-psk-file");
  if (psk && check_private (u, "PSK file", psk) == -1)
    r = -1;
  certs = nbd_uri_query (u, "tls-certificates");
  if (certs && r == 0) {
    char *key;
    if (asprintf (&key, "%s/client-key.pem", certs) >= 0) {
      r = check_private (u, "private key", key);
      free (key);
    }
  }
  free (psk);
  free (certs);
  return r;
}

