/* Preparing a libnbd handle for an NBD URI: see nbdconnect.h. */

#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nbdconnect.h"
#include "nbdpolicy.h"

/* The user part of URI's authority ("nbds://alice@host/..."), malloc'd,
 * or NULL.  Percent-encoding is left alone: libnbd decodes it itself when
 * the user is in the URI, and then our choice is not used. */
static char *
uri_user (const char *uri)
{
  const char *a = strstr (uri, "://"), *end, *at;

  if (!a)
    return NULL;
  a += 3;
  end = a + strcspn (a, "/?#");
  at = memchr (a, '@', end - a);
  return at ? strndup (a, at - a) : NULL;
}

int
sxm_nbd_prepare (struct nbd_handle *h, const char *name, const char *uri)
{
  char *psk;

  if (nbd_set_handle_name (h, name) == -1 ||
      nbd_set_pread_initialize (h, false) == -1 ||
      nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_set_uri_allow_local_file (h, true) == -1)
    return -1;
  /* A PSK file but no user in the URI: the running user's name. */
  psk = nbd_uri_query (uri, "tls-psk-file");
  if (psk) {
    char *user = uri_user (uri);
    struct passwd *pw = user ? NULL : getpwuid (geteuid ());
    free (psk);
    free (user);
    if (pw && pw->pw_name && nbd_set_tls_username (h, pw->pw_name) == -1)
      return -1;
  }
  return 0;
}
