/* xenmem transport (transport.h): unix socket or TCP, plaintext or TLS.
 *
 * Sockets are non-blocking underneath and every wait is a poll() with the
 * connection's timeout, both for our own reads and writes and for the ones
 * gnutls makes through the push/pull functions below.  So nothing here can
 * block for ever on a peer that went silent: not the handshake (a wrong
 * key, a peer speaking something else), not a read, not a write into a
 * full socket buffer.  The engine relies on that to resume the source
 * guest when the receiver stalls. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "log.h"
#include "monotime.h"
#include "transport.h"
#include "unixsock.h"

/* PSK: the identity is what the client sends in the clear; the key is
 * hex, as in nbdkit's --tls-psk files. */
#define PSK_PRIORITY "NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK"
#define X509_PRIORITY "NORMAL"

struct psk_entry {
  char *identity;
  char *hexkey;
};

struct xm_conn {
  int fd;
  char *addr;                   /* as the user wrote it, for messages */
  double timeout;               /* per wait, seconds; 0 = for ever */
  double deadline;              /* absolute; 0 = none (handshake, close) */
  bool timed_out;               /* the last failed wait was a timeout */
  uint64_t written;
  gnutls_session_t s;           /* NULL: plaintext */
  gnutls_psk_server_credentials_t psk_server;
  gnutls_psk_client_credentials_t psk_client;
  gnutls_certificate_credentials_t x509;
  struct psk_entry *keys;       /* listener: the PSK file */
  size_t nkeys;
  char unknown_identity[64];    /* listener: a client identity not found */
};

struct address {
  bool is_unix;
  struct sockaddr_un sun;
  char *host;                   /* tcp: brackets stripped; "" = any */
  char *port;
};

/* ---- addresses and policy --------------------------------------------- */

static void
free_address (struct address *a)
{
  free (a->host);
  free (a->port);
}

static int
parse_address (const char *addr, struct address *a)
{
  memset (a, 0, sizeof *a);
  if (strncmp (addr, "unix:", 5) == 0) {
    const char *path = addr + 5;
    if (!*path) {
      sxm_error ("%s: the unix socket path is empty", addr);
      return -1;
    }
    if (strlen (path) >= sizeof a->sun.sun_path) {
      sxm_error ("%s: the unix socket path is %zu bytes long, the limit is "
                 "%zu", addr, strlen (path), sizeof a->sun.sun_path - 1);
      return -1;
    }
    a->is_unix = true;
    a->sun.sun_family = AF_UNIX;
    strcpy (a->sun.sun_path, path);
    return 0;
  }
  if (strncmp (addr, "tcp:", 4) == 0) {
    const char *h = addr + 4, *hend, *p;
    char *end;
    long port;
    if (*h == '[') {
      hend = strchr (h, ']');
      if (!hend || hend[1] != ':') {
        sxm_error ("%s: expected tcp:[IPV6]:PORT", addr);
        return -1;
      }
      p = hend + 2;
      h++;
    }
    else {
      hend = strrchr (h, ':');
      if (!hend) {
        sxm_error ("%s: expected tcp:HOST:PORT", addr);
        return -1;
      }
      if (memchr (h, ':', hend - h)) {
        sxm_error ("%s: put an IPv6 address in brackets: tcp:[ADDR]:PORT",
                   addr);
        return -1;
      }
      p = hend + 1;
    }
    errno = 0;
    port = strtol (p, &end, 10);
    if (!*p || *end || errno || port < 1 || port > 65535) {
      sxm_error ("%s: port '%s' is not a number in 1..65535", addr, p);
      return -1;
    }
    a->host = strndup (h, hend - h);
    a->port = strdup (p);
    if (!a->host || !a->port) {
      sxm_error ("out of memory");
      free_address (a);
      return -1;
    }
    return 0;
  }
  sxm_error ("%s: expected unix:PATH or tcp:HOST:PORT", addr);
  return -1;
}

static bool
is_loopback (const struct sockaddr *sa)
{
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
    return (ntohl (in->sin_addr.s_addr) >> 24) == 127;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *) sa)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK (a) ||
           (IN6_IS_ADDR_V4MAPPED (a) && a->s6_addr[12] == 127);
  }
  return false;
}

static bool
want_tls (const struct xm_tls_opts *tls)
{
  return tls && (tls->psk_file || tls->x509_dir);
}

/* Memory pages in the clear on a network are the guest's secrets; allow
 * that only on loopback, or when the user said so. */
static int
plaintext_policy (const char *addr, const struct xm_tls_opts *tls,
                  const struct sockaddr *sa, const char *verb)
{
  char ip[INET6_ADDRSTRLEN] = "?";

  if (want_tls (tls) || (tls && tls->insecure) || is_loopback (sa))
    return 0;
  if (sa->sa_family == AF_INET)
    inet_ntop (AF_INET, &((const struct sockaddr_in *) sa)->sin_addr, ip,
               sizeof ip);
  else if (sa->sa_family == AF_INET6)
    inet_ntop (AF_INET6, &((const struct sockaddr_in6 *) sa)->sin6_addr, ip,
               sizeof ip);
  sxm_error ("%s: plaintext TCP %s %s, which is not loopback; use "
             "--tls-psk or --tls-x509, or --insecure to allow it",
             addr, verb, ip);
  return -1;
}

/* ---- secret files ------------------------------------------------------ */

/* Like common/nbdpolicy.c: a key others can read is not a secret. */
static int
check_private (int fd, const char *what, const char *path)
{
  struct stat st;

  if (fstat (fd, &st) == -1) {
    sxm_error ("%s %s: %m", what, path);
    return -1;
  }
  if (st.st_mode & 077) {
    sxm_error ("%s %s is accessible to group or others (mode %04o); "
               "refusing to use it (chmod 600)", what, path,
               (unsigned) (st.st_mode & 07777));
    return -1;
  }
  return 0;
}

static void
free_keys (struct psk_entry *k, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    free (k[i].identity);
    if (k[i].hexkey) {
      explicit_bzero (k[i].hexkey, strlen (k[i].hexkey));
      free (k[i].hexkey);
    }
  }
  free (k);
}

/* nbdkit's PSK file: "identity:hexkey" lines. */
static int
load_psk_file (const char *path, struct psk_entry **out, size_t *nout)
{
  FILE *f;
  char *line = NULL;
  size_t cap = 0, n = 0, lineno = 0;
  ssize_t len;
  struct psk_entry *k = NULL;
  int ret = -1;

  f = fopen (path, "re");
  if (!f) {
    sxm_error ("PSK file %s: %m", path);
    return -1;
  }
  if (check_private (fileno (f), "PSK file", path) == -1)
    goto out;
  while ((len = getline (&line, &cap, f)) != -1) {
    char *colon, *hex;
    struct psk_entry *nk;
    size_t hl;

    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
      line[--len] = 0;
    if (len == 0)
      continue;
    colon = strchr (line, ':');
    if (!colon || colon == line) {
      sxm_error ("PSK file %s line %zu: expected IDENTITY:HEXKEY", path,
                 lineno);
      goto out;
    }
    hex = colon + 1;
    hl = strlen (hex);
    if (hl == 0 || hl % 2 || strspn (hex, "0123456789abcdefABCDEF") != hl) {
      sxm_error ("PSK file %s line %zu: the key is not an even number of "
                 "hex digits", path, lineno);
      goto out;
    }
    nk = realloc (k, (n + 1) * sizeof *k);
    if (!nk) {
      sxm_error ("out of memory");
      goto out;
    }
    k = nk;
    k[n].identity = strndup (line, colon - line);
    k[n].hexkey = strdup (hex);
    n++;
    if (!k[n - 1].identity || !k[n - 1].hexkey) {
      sxm_error ("out of memory");
      goto out;
    }
  }
  if (n == 0) {
    sxm_error ("PSK file %s has no keys", path);
    goto out;
  }
  ret = 0;

 out:
  if (line) {
    explicit_bzero (line, cap);
    free (line);
  }
  fclose (f);
  if (ret == 0) {
    *out = k;
    *nout = n;
  }
  else
    free_keys (k, n);
  return ret;
}

/* A file in the x509 directory; NULL if it does not exist. */
static char *
x509_file (const char *dir, const char *name, bool must_exist)
{
  char *p;

  if (asprintf (&p, "%s/%s", dir, name) == -1) {
    sxm_error ("out of memory");
    return NULL;
  }
  if (access (p, R_OK) == -1) {
    if (must_exist)
      sxm_error ("x509: %s: %m", p);
    free (p);
    return NULL;
  }
  return p;
}

static int
check_private_path (const char *what, const char *path)
{
  int fd = open (path, O_RDONLY | O_CLOEXEC), r;

  if (fd == -1) {
    sxm_error ("%s %s: %m", what, path);
    return -1;
  }
  r = check_private (fd, what, path);
  close (fd);
  return r;
}

/* ---- raw socket I/O with timeouts -------------------------------------- */

/* Wait for EVENTS on the socket for at most the connection's timeout (and
 * never past its deadline).  0 ready, -1 with errno (ETIMEDOUT). */
static int
wait_fd (struct xm_conn *c, short events)
{
  double limit = 0;

  c->timed_out = false;
  if (c->timeout > 0)
    limit = sxm_now () + c->timeout;
  if (c->deadline > 0 && (limit == 0 || c->deadline < limit))
    limit = c->deadline;
  for (;;) {
    struct pollfd p = { .fd = c->fd, .events = events };
    int ms = -1, r;
    if (limit > 0) {
      double left = limit - sxm_now ();
      ms = left <= 0 ? 0 : left * 1000 > INT_MAX ? INT_MAX
                                                  : (int) (left * 1000) + 1;
    }
    r = poll (&p, 1, ms);
    if (r > 0)
      return 0;                 /* ready, or an error the I/O call reports */
    if (r == 0) {
      c->timed_out = true;
      errno = ETIMEDOUT;
      return -1;
    }
    if (errno != EINTR)
      return -1;
  }
}

/* One recv (OUT false) or send (OUT true) of what the socket takes now,
 * waiting (bounded: wait_fd) while it takes nothing.  MSG_NOSIGNAL: a
 * peer that went away is an error to report, not a SIGPIPE that kills
 * the sender with the guest paused. */
static ssize_t
raw_io (struct xm_conn *c, void *buf, size_t len, bool out)
{
  c->timed_out = false;         /* a stale flag would misname an error */
  for (;;) {
    ssize_t r = out ? send (c->fd, buf, len, MSG_NOSIGNAL)
      : recv (c->fd, buf, len, 0);
    if (r >= 0)
      return r;
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return -1;
    if (wait_fd (c, out ? POLLOUT : POLLIN) == -1)
      return -1;
  }
}

static ssize_t
raw_recv (struct xm_conn *c, void *buf, size_t len)
{
  return raw_io (c, buf, len, false);
}

static ssize_t
raw_send (struct xm_conn *c, const void *buf, size_t len)
{
  return raw_io (c, (void *) buf, len, true);
}

/* gnutls transport functions over the above: errors go back through
 * gnutls_transport_set_errno, and the timeout flag tells our caller why. */
static ssize_t
tls_pull (gnutls_transport_ptr_t ptr, void *buf, size_t len)
{
  struct xm_conn *c = ptr;
  ssize_t r = raw_recv (c, buf, len);

  if (r == -1)
    gnutls_transport_set_errno (c->s, errno);
  return r;
}

static ssize_t
tls_push (gnutls_transport_ptr_t ptr, const void *buf, size_t len)
{
  struct xm_conn *c = ptr;
  ssize_t r = raw_send (c, buf, len);

  if (r == -1)
    gnutls_transport_set_errno (c->s, errno);
  return r;
}

static int
tls_pull_timeout (gnutls_transport_ptr_t ptr, unsigned int ms)
{
  struct xm_conn *c = ptr;
  struct pollfd p = { .fd = c->fd, .events = POLLIN };
  int r;

  if (ms == GNUTLS_INDEFINITE_TIMEOUT) {
    /* Our own timeout and deadline still apply. */
    if (wait_fd (c, POLLIN) == -1) {
      gnutls_transport_set_errno (c->s, errno);
      return c->timed_out ? 0 : -1;
    }
    return 1;
  }
  do
    r = poll (&p, 1, ms > INT_MAX ? INT_MAX : (int) ms);
  while (r == -1 && errno == EINTR);
  if (r == -1)
    gnutls_transport_set_errno (c->s, errno);
  return r;
}

/* ---- TLS --------------------------------------------------------------- */

/* gnutls' message for R, with the alert's name if the peer sent one. */
static const char *
tls_strerror (struct xm_conn *c, int r, char *buf, size_t len)
{
  if (r == GNUTLS_E_FATAL_ALERT_RECEIVED || r == GNUTLS_E_WARNING_ALERT_RECEIVED)
    snprintf (buf, len, "%s (%s)", gnutls_strerror (r),
              gnutls_alert_get_name (gnutls_alert_get (c->s)));
  else
    snprintf (buf, len, "%s", gnutls_strerror (r));
  return buf;
}

static int
psk_server_key (gnutls_session_t s, const char *identity,
                gnutls_datum_t *key)
{
  struct xm_conn *c = gnutls_session_get_ptr (s);

  for (size_t i = 0; i < c->nkeys; i++) {
    if (strcmp (c->keys[i].identity, identity) == 0) {
      gnutls_datum_t hex = { (unsigned char *) c->keys[i].hexkey,
                             strlen (c->keys[i].hexkey) };
      /* gnutls_hex_decode2 allocates with gnutls_malloc, as gnutls frees
       * the key with gnutls_free. */
      return gnutls_hex_decode2 (&hex, key) < 0 ? -1 : 0;
    }
  }
  snprintf (c->unknown_identity, sizeof c->unknown_identity, "%s", identity);
  return -1;
}

static void
free_tls (struct xm_conn *c)
{
  if (c->s)
    gnutls_deinit (c->s);
  c->s = NULL;
  if (c->psk_server)
    gnutls_psk_free_server_credentials (c->psk_server);
  if (c->psk_client)
    gnutls_psk_free_client_credentials (c->psk_client);
  if (c->x509)
    gnutls_certificate_free_credentials (c->x509);
  c->psk_server = NULL;
  c->psk_client = NULL;
  c->x509 = NULL;
  free_keys (c->keys, c->nkeys);
  c->keys = NULL;
  c->nkeys = 0;
}

/* Load credentials before any socket exists, so that a bad key file is
 * reported at once rather than after the peer connected. */
static int
load_credentials (struct xm_conn *c, const struct xm_tls_opts *tls,
                  bool server)
{
  int r;

  if (tls->psk_file && tls->x509_dir) {
    sxm_error ("%s: choose one of --tls-psk and --tls-x509", c->addr);
    return -1;
  }
  if (tls->psk_file) {
    if (load_psk_file (tls->psk_file, &c->keys, &c->nkeys) == -1)
      return -1;
    if (server) {
      if (gnutls_psk_allocate_server_credentials (&c->psk_server) < 0) {
        sxm_error ("out of memory");
        return -1;
      }
      gnutls_psk_set_server_credentials_function (c->psk_server,
                                                  psk_server_key);
    }
    else {
      const struct psk_entry *e = &c->keys[0];
      gnutls_datum_t key;
      if (tls->psk_identity) {
        e = NULL;
        for (size_t i = 0; i < c->nkeys; i++)
          if (strcmp (c->keys[i].identity, tls->psk_identity) == 0)
            e = &c->keys[i];
        if (!e) {
          sxm_error ("PSK file %s has no identity '%s'", tls->psk_file,
                     tls->psk_identity);
          return -1;
        }
      }
      key.data = (unsigned char *) e->hexkey;
      key.size = strlen (e->hexkey);
      if (gnutls_psk_allocate_client_credentials (&c->psk_client) < 0 ||
          (r = gnutls_psk_set_client_credentials (c->psk_client, e->identity,
                                                  &key,
                                                  GNUTLS_PSK_KEY_HEX)) < 0) {
        sxm_error ("PSK file %s: identity '%s': cannot use the key",
                   tls->psk_file, e->identity);
        return -1;
      }
    }
    return 0;
  }

  /* x509 */
  {
    const char *dir = tls->x509_dir;
    char *ca = NULL, *cert = NULL, *key = NULL;
    int ret = -1;

    if (gnutls_certificate_allocate_credentials (&c->x509) < 0) {
      sxm_error ("out of memory");
      return -1;
    }
    if (server) {
      if (!(cert = x509_file (dir, "server-cert.pem", true)) ||
          !(key = x509_file (dir, "server-key.pem", true)))
        goto x509_out;
      ca = x509_file (dir, "ca-cert.pem", false);   /* for client certs */
    }
    else {
      if (!(ca = x509_file (dir, "ca-cert.pem", true)))
        goto x509_out;
      cert = x509_file (dir, "client-cert.pem", false);
      key = cert ? x509_file (dir, "client-key.pem", false) : NULL;
    }
    if (ca && (r = gnutls_certificate_set_x509_trust_file
                     (c->x509, ca, GNUTLS_X509_FMT_PEM)) < 0) {
      sxm_error ("x509: %s: %s", ca, gnutls_strerror (r));
      goto x509_out;
    }
    if (cert && key) {
      if (check_private_path ("private key", key) == -1)
        goto x509_out;
      if ((r = gnutls_certificate_set_x509_key_file
                 (c->x509, cert, key, GNUTLS_X509_FMT_PEM)) < 0) {
        sxm_error ("x509: %s, %s: %s", cert, key, gnutls_strerror (r));
        goto x509_out;
      }
    }
    ret = 0;
  x509_out:
    free (ca);
    free (cert);
    free (key);
    return ret;
  }
}

/* HOST is an IP literal: no SNI, which is for names only. */
static bool
is_ip_literal (const char *host)
{
  unsigned char buf[sizeof (struct in6_addr)];

  return inet_pton (AF_INET, host, buf) == 1 ||
         inet_pton (AF_INET6, host, buf) == 1;
}

static int
handshake (struct xm_conn *c, const struct xm_tls_opts *tls, bool server,
           const char *host, double timeout)
{
  const char *prio = tls->psk_file ? PSK_PRIORITY : X509_PRIORITY;
  const char *errpos = NULL;
  char ebuf[200];
  int r;

  if ((r = gnutls_init (&c->s, server ? GNUTLS_SERVER : GNUTLS_CLIENT)) < 0) {
    sxm_error ("%s: gnutls_init: %s", c->addr, gnutls_strerror (r));
    return -1;
  }
  if ((r = gnutls_priority_set_direct (c->s, prio, &errpos)) < 0) {
    sxm_error ("%s: TLS priority '%s' at '%s': %s", c->addr, prio,
               errpos ? errpos : "?", gnutls_strerror (r));
    return -1;
  }
  if (c->psk_server)
    r = gnutls_credentials_set (c->s, GNUTLS_CRD_PSK, c->psk_server);
  else if (c->psk_client)
    r = gnutls_credentials_set (c->s, GNUTLS_CRD_PSK, c->psk_client);
  else
    r = gnutls_credentials_set (c->s, GNUTLS_CRD_CERTIFICATE, c->x509);
  if (r < 0) {
    sxm_error ("%s: TLS credentials: %s", c->addr, gnutls_strerror (r));
    return -1;
  }
  if (server && c->x509)
    /* Verified below if the client presents one; not required. */
    gnutls_certificate_server_set_request (c->s, GNUTLS_CERT_REQUEST);
  if (!server && c->x509 && host && *host && !is_ip_literal (host))
    gnutls_server_name_set (c->s, GNUTLS_NAME_DNS, host, strlen (host));
  gnutls_session_set_ptr (c->s, c);
  gnutls_transport_set_ptr (c->s, c);
  gnutls_transport_set_push_function (c->s, tls_push);
  gnutls_transport_set_pull_function (c->s, tls_pull);
  gnutls_transport_set_pull_timeout_function (c->s, tls_pull_timeout);
  /* Our deadline bounds it; gnutls' own default (40 s) must not cut a
   * longer --timeout short. */
  gnutls_handshake_set_timeout (c->s, 0);

  c->deadline = timeout > 0 ? sxm_now () + timeout : 0;
  do
    r = gnutls_handshake (c->s);
  while (r < 0 && !gnutls_error_is_fatal (r));
  c->deadline = 0;
  if (r < 0) {
    const char *hint = "";
    if (c->timed_out) {
      sxm_error ("TLS handshake with %s failed: no answer from the peer "
                 "within %g s", c->addr, timeout);
      return -1;
    }
    /* Tell the peer why (gnutls does not on its own), so that its
     * message names the cause rather than a dropped connection; bounded,
     * as the peer may not be reading. */
    c->deadline = sxm_now () + 1;
    gnutls_alert_send_appropriate (c->s, r);
    c->deadline = 0;
    if (c->unknown_identity[0])
      hint = " (the client's PSK identity is not in the PSK file)";
    else if (tls->psk_file && (r == GNUTLS_E_DECRYPTION_FAILED ||
                               r == GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER ||
                               r == GNUTLS_E_FATAL_ALERT_RECEIVED ||
                               r == GNUTLS_E_INSUFFICIENT_CREDENTIALS))
      hint = " (do both sides have the same PSK identity and key?)";
    sxm_error ("TLS handshake with %s failed: %s%s", c->addr,
               tls_strerror (c, r, ebuf, sizeof ebuf), hint);
    return -1;
  }

  if (c->x509 && (!server || gnutls_certificate_get_peers (c->s, NULL))) {
    unsigned status = 0;
    /* The client checks the server's certificate against the CA and the
     * name it dialled; the server checks a client certificate, if one was
     * presented, against the CA. */
    r = gnutls_certificate_verify_peers3 (c->s, server || !host || !*host
                                          ? NULL : host, &status);
    if (r < 0 || status != 0) {
      gnutls_datum_t out = { NULL, 0 };
      if (r >= 0)
        gnutls_certificate_verification_status_print
          (status, gnutls_certificate_type_get (c->s), &out, 0);
      sxm_error ("TLS handshake with %s failed: the %s's certificate is "
                 "not trusted: %s", c->addr, server ? "client" : "server",
                 r < 0 ? gnutls_strerror (r)
                 : out.data ? (const char *) out.data : "?");
      gnutls_free (out.data);
      c->deadline = sxm_now () + 1;
      gnutls_alert_send (c->s, GNUTLS_AL_FATAL, GNUTLS_A_BAD_CERTIFICATE);
      c->deadline = 0;
      return -1;
    }
  }

  {
    char *desc = gnutls_session_get_desc (c->s);
    sxm_debug ("%s: TLS %s", c->addr, desc ? desc : "");
    gnutls_free (desc);
  }
  return 0;
}

/* ---- connections ------------------------------------------------------- */

static struct xm_conn *
new_conn (const char *addr)
{
  struct xm_conn *c = calloc (1, sizeof *c);

  if (!c || !(c->addr = strdup (addr))) {
    free (c);
    sxm_error ("out of memory");
    return NULL;
  }
  c->fd = -1;
  return c;
}

static void
free_conn (struct xm_conn *c)
{
  free_tls (c);
  if (c->fd >= 0)
    close (c->fd);
  free (c->addr);
  free (c);
}

static void
set_nodelay (int fd, const struct sockaddr *sa)
{
  int one = 1;

  /* Records are written whole; the ACKs of the commit handshake are tiny
   * and on the guest's downtime path: do not let Nagle hold them. */
  if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
    setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

struct xm_conn *
xm_listen_accept (const char *addr, const struct xm_tls_opts *tls,
                  double timeout)
{
  struct address a;
  struct xm_conn *c;
  struct addrinfo *res = NULL;
  struct sockaddr_storage peer;
  socklen_t peerlen = sizeof peer;
  struct stat sock_st = { 0 };
  bool bound_unix = false;
  double deadline = timeout > 0 ? sxm_now () + timeout : 0;
  int lfd = -1, one = 1;

  if (parse_address (addr, &a) == -1)
    return NULL;
  if (!(c = new_conn (addr))) {
    free_address (&a);
    return NULL;
  }
  if (want_tls (tls) && load_credentials (c, tls, true) == -1)
    goto fail;

  if (a.is_unix) {
    const char *step;
    /* Mode 0600 from the start: only our user may hand us a guest.  A
     * socket left by a killed receiver is stale and goes; anything else
     * at that path is not ours to remove. */
    lfd = unix_listen_private (a.sun.sun_path, 1, &sock_st, &step);
    if (lfd == -1) {
      if (errno == EEXIST)
        sxm_error ("%s: %s %s; refusing to replace it", addr,
                   a.sun.sun_path, step);
      else
        sxm_error ("%s: %s: %m", addr, step);
      goto fail;
    }
    bound_unix = true;
  }
  else {
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    int r = getaddrinfo (*a.host ? a.host : NULL, a.port, &hints, &res);
    if (r != 0) {
      sxm_error ("%s: %s", addr, gai_strerror (r));
      goto fail;
    }
    if (plaintext_policy (addr, tls, res->ai_addr, "on") == -1)
      goto fail;
    lfd = socket (res->ai_family, res->ai_socktype | SOCK_CLOEXEC,
                  res->ai_protocol);
    if (lfd == -1) {
      sxm_error ("%s: socket: %m", addr);
      goto fail;
    }
    /* A receiver restarted on the same port must not wait out TIME_WAIT. */
    setsockopt (lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind (lfd, res->ai_addr, res->ai_addrlen) == -1) {
      sxm_error ("%s: bind: %m", addr);
      goto fail;
    }
    if (listen (lfd, 1) == -1) {
      sxm_error ("%s: listen: %m", addr);
      goto fail;
    }
  }
  sxm_debug ("%s: listening", addr);

  /* Accept until a peer completes the handshake: a stranger who cannot
   * (no key, a port scanner) is dropped and does not end the wait for
   * the real sender. */
 again:
  for (;;) {
    struct pollfd p = { .fd = lfd, .events = POLLIN };
    int ms = -1, r;
    if (deadline > 0) {
      double left = deadline - sxm_now ();
      if (left <= 0) {
        sxm_error ("%s: no connection within %g s", addr, timeout);
        goto fail;
      }
      ms = left * 1000 > INT_MAX ? INT_MAX : (int) (left * 1000) + 1;
    }
    r = poll (&p, 1, ms);
    if (r == -1 && errno != EINTR) {
      sxm_error ("%s: poll: %m", addr);
      goto fail;
    }
    if (r <= 0)
      continue;
    c->fd = accept4 (lfd, (struct sockaddr *) &peer, &peerlen,
                     SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c->fd >= 0)
      break;
    if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
      sxm_error ("%s: accept: %m", addr);
      goto fail;
    }
  }
  if (!a.is_unix) {
    if (plaintext_policy (addr, tls, (struct sockaddr *) &peer, "from") == -1)
      goto fail;
    set_nodelay (c->fd, (struct sockaddr *) &peer);
  }
  /* The handshake gets a whole timeout of its own, however long the
   * wait for the connection took. */
  if (want_tls (tls) && handshake (c, tls, true, NULL, timeout) == -1) {
    sxm_error ("%s: dropped a peer that failed the TLS handshake; still "
               "waiting for the sender", addr);
    if (c->s)
      gnutls_deinit (c->s);
    c->s = NULL;
    close (c->fd);
    c->fd = -1;
    peerlen = sizeof peer;
    goto again;
  }
  close (lfd);
  lfd = -1;
  if (bound_unix) {
    unix_unlink_own (a.sun.sun_path, &sock_st);
    bound_unix = false;
  }
  c->timeout = timeout;
  if (res)
    freeaddrinfo (res);
  free_address (&a);
  return c;

 fail:
  if (lfd >= 0)
    close (lfd);
  if (bound_unix)
    unix_unlink_own (a.sun.sun_path, &sock_st);
  if (res)
    freeaddrinfo (res);
  free_address (&a);
  free_conn (c);
  return NULL;
}

/* One non-blocking connect attempt, waiting at most until DEADLINE (0:
 * the kernel's own limit).  The socket, or -1 with errno. */
static int
try_connect (const struct sockaddr *sa, socklen_t salen, double deadline)
{
  int fd = socket (sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
                   0);
  int err = 0;
  socklen_t errlen = sizeof err;

  if (fd == -1)
    return -1;
  if (connect (fd, sa, salen) == 0)
    return fd;
  if (errno != EINPROGRESS && errno != EINTR)
    goto fail;
  for (;;) {
    struct pollfd p = { .fd = fd, .events = POLLOUT };
    int ms = -1, r;
    if (deadline > 0) {
      double left = deadline - sxm_now ();
      if (left <= 0) {
        errno = ETIMEDOUT;
        goto fail;
      }
      ms = left * 1000 > INT_MAX ? INT_MAX : (int) (left * 1000) + 1;
    }
    r = poll (&p, 1, ms);
    if (r > 0)
      break;
    if (r == -1 && errno != EINTR)
      goto fail;
  }
  if (getsockopt (fd, SOL_SOCKET, SO_ERROR, &err, &errlen) == -1)
    goto fail;
  if (err) {
    errno = err;
    goto fail;
  }
  return fd;

 fail:
  err = errno;
  close (fd);
  errno = err;
  return -1;
}

struct xm_conn *
xm_connect (const char *addr, const struct xm_tls_opts *tls, double timeout)
{
  struct address a;
  struct xm_conn *c;
  struct addrinfo *res = NULL, *ai, unix_ai = { 0 }, *list = &unix_ai;
  double deadline = timeout > 0 ? sxm_now () + timeout : 0;
  const struct sockaddr *used = NULL;
  int err = 0;

  if (parse_address (addr, &a) == -1)
    return NULL;
  if (!(c = new_conn (addr))) {
    free_address (&a);
    return NULL;
  }
  if (want_tls (tls) && load_credentials (c, tls, false) == -1)
    goto fail;
  if (!a.is_unix) {
    struct addrinfo hints = { .ai_family = AF_UNSPEC,
                              .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_NUMERICSERV };
    int r;
    if (!*a.host) {
      sxm_error ("%s: no host to connect to", addr);
      goto fail;
    }
    r = getaddrinfo (a.host, a.port, &hints, &res);
    if (r != 0) {
      sxm_error ("%s: %s", addr, gai_strerror (r));
      goto fail;
    }
    /* Refuse before sending anything if any address it may reach is
     * outside this machine. */
    for (ai = res; ai; ai = ai->ai_next)
      if (plaintext_policy (addr, tls, ai->ai_addr, "to") == -1)
        goto fail;
    list = res;
  }
  else {
    unix_ai.ai_addr = (struct sockaddr *) &a.sun;
    unix_ai.ai_addrlen = sizeof a.sun;
  }

  /* The receiver may still be starting: refused (TCP) or missing (unix)
   * is retried every 100 ms until the timeout. */
  for (;;) {
    bool retry = false;
    err = 0;
    for (ai = list; ai; ai = ai->ai_next) {
      c->fd = try_connect (ai->ai_addr, ai->ai_addrlen, deadline);
      if (c->fd >= 0) {
        used = ai->ai_addr;
        break;
      }
      if (!err)
        err = errno;            /* the first address's error is reported */
      if (errno == ECONNREFUSED || errno == ENOENT || errno == EAGAIN ||
          errno == ECONNRESET)
        retry = true;
    }
    if (c->fd >= 0)
      break;
    if ((retry || err == ETIMEDOUT) && deadline > 0 &&
        sxm_now () + 0.1 > deadline) {
      sxm_error ("cannot connect to %s within %g s: %s", addr, timeout,
                 strerror (err));
      goto fail;
    }
    if (!retry) {
      sxm_error ("cannot connect to %s: %s", addr, strerror (err));
      goto fail;
    }
    nanosleep (&(struct timespec) { 0, 100 * 1000 * 1000 }, NULL);
  }
  set_nodelay (c->fd, used);
  if (want_tls (tls) &&
      handshake (c, tls, false, a.is_unix ? NULL : a.host, timeout) == -1)
    goto fail;
  c->timeout = timeout;
  if (res)
    freeaddrinfo (res);
  free_address (&a);
  return c;

 fail:
  if (res)
    freeaddrinfo (res);
  free_address (&a);
  free_conn (c);
  return NULL;
}

/* ---- I/O --------------------------------------------------------------- */

/* These loop like common/fullio.h's full_write and full_read, but cannot
 * be them: the bytes go through gnutls when the connection is TLS, the
 * socket is non-blocking with every wait bounded by the timeout
 * (raw_send, raw_recv), and a timeout or a short stream has its own
 * message. */
int
xm_write (struct xm_conn *c, const void *buf, size_t len)
{
  char ebuf[200];
  const uint8_t *p = buf;
  size_t done = 0;

  while (done < len) {
    ssize_t r;
    if (c->s) {
      do
        r = gnutls_record_send (c->s, p + done, len - done);
      while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
      if (r < 0) {
        if (c->timed_out)
          sxm_error ("%s: the peer took no data for %g s (timed out)",
                     c->addr, c->timeout);
        else
          sxm_error ("%s: TLS write: %s", c->addr,
                     tls_strerror (c, r, ebuf, sizeof ebuf));
        return -1;
      }
    }
    else {
      r = raw_send (c, p + done, len - done);
      if (r == -1) {
        if (c->timed_out)
          sxm_error ("%s: the peer took no data for %g s (timed out)",
                     c->addr, c->timeout);
        else
          sxm_error ("%s: write: %m", c->addr);
        return -1;
      }
    }
    done += r;
    c->written += r;
  }
  return 0;
}

int
xm_read (struct xm_conn *c, void *buf, size_t len, bool eof_ok)
{
  char ebuf[200];
  uint8_t *p = buf;
  size_t done = 0;

  while (done < len) {
    ssize_t r;
    if (c->s) {
      do
        r = gnutls_record_recv (c->s, p + done, len - done);
      while (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED);
      /* A peer that closed without close_notify is an EOF like any other:
       * the stream is self-delimiting (END and the ACKs), so a cut is
       * noticed there, not here. */
      if (r == GNUTLS_E_PREMATURE_TERMINATION)
        r = 0;
      if (r < 0) {
        if (c->timed_out)
          sxm_error ("%s: no data for %g s (timed out)", c->addr,
                     c->timeout);
        else
          sxm_error ("%s: TLS read: %s", c->addr,
                     tls_strerror (c, r, ebuf, sizeof ebuf));
        return -1;
      }
    }
    else {
      r = raw_recv (c, p + done, len - done);
      if (r == -1) {
        if (c->timed_out)
          sxm_error ("%s: no data for %g s (timed out)", c->addr,
                     c->timeout);
        else
          sxm_error ("%s: read: %m", c->addr);
        return -1;
      }
    }
    if (r == 0) {
      if (done == 0 && eof_ok)
        return 0;
      sxm_error ("%s: the peer closed the connection %zu bytes short (got "
                 "%zu of %zu)", c->addr, len - done, done, len);
      return -1;
    }
    done += r;
  }
  return 1;
}

void
xm_set_timeout (struct xm_conn *c, double seconds)
{
  c->timeout = seconds > 0 ? seconds : 0;
}

bool
xm_conn_is_tls (struct xm_conn *c)
{
  return c->s != NULL;
}

uint64_t
xm_bytes_written (struct xm_conn *c)
{
  return c->written;
}

void
xm_close (struct xm_conn *c)
{
  if (!c)
    return;
  if (c->s) {
    /* Tell the peer we are done (so its read sees a clean EOF), but do
     * not wait on a peer that stopped reading. */
    c->deadline = sxm_now () + 2;
    gnutls_bye (c->s, GNUTLS_SHUT_WR);
  }
  free_conn (c);
}
