/* The xenmem transport: 8 MiB round trips over unix sockets and TCP, in
 * the clear, with a PSK and with x509 certificates; every way it must
 * refuse (plaintext off loopback, a key file others can read, a wrong key,
 * an untrusted or misnamed certificate, a regular file where the socket
 * goes); and every way a peer can let it down (silence during the
 * handshake, a reader that stops reading, EOF mid-buffer, a receiver that
 * is not up yet), each of which must end in an error within the timeout,
 * never a hang or a SIGPIPE. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fullio.h"
#include "log.h"
#include "monotime.h"
#include "tap.h"
#include "transport.h"

#define BIG (8u << 20)

static char dir[64];

/* Errors go into the reporting thread's own buffer, so that each side of
 * a connection can be checked for its own message. */
static __thread char errs[4096];

static void
sink (enum sxm_log_level level, const char *msg)
{
  size_t n = strlen (errs);

  if (level != SXM_LOG_ERROR)
    return;
  snprintf (errs + n, sizeof errs - n, "%s\n", msg);
  printf ("#   error: %s\n", msg);
  fflush (stdout);
}

static bool
has (const char *err, const char *want)
{
  if (strstr (err, want))
    return true;
  printf ("#   wanted an error containing: %s\n", want);
  return false;
}

static uint8_t
pattern (size_t i)
{
  return (uint8_t) (i ^ (i >> 8) * 7 ^ (i >> 16) * 13);
}

static int
free_port (void)
{
  struct sockaddr_in sin = { .sin_family = AF_INET,
                             .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
  socklen_t len = sizeof sin;
  int fd = socket (AF_INET, SOCK_STREAM, 0);

  if (fd == -1 || bind (fd, (struct sockaddr *) &sin, sizeof sin) == -1 ||
      getsockname (fd, (struct sockaddr *) &sin, &len) == -1)
    abort ();
  close (fd);
  return ntohs (sin.sin_port);
}

static char *
path (const char *name)
{
  static __thread char p[4][128];
  static __thread int k;
  char *r = p[k++ % 4];
  snprintf (r, 128, "%s/%s", dir, name);
  return r;
}

static void
write_file (const char *p, mode_t mode, const char *fmt, ...)
{
  va_list ap;
  FILE *f;

  unlink (p);
  f = fopen (p, "w");
  if (!f)
    abort ();
  va_start (ap, fmt);
  vfprintf (f, fmt, ap);
  va_end (ap);
  fclose (f);
  chmod (p, mode);
}

static void
random_hex (char *out, size_t bytes)
{
  int fd = open ("/dev/urandom", O_RDONLY);
  uint8_t b[64];

  if (fd == -1 || bytes > sizeof b ||
      full_read (fd, b, bytes) != (ssize_t) bytes)
    abort ();
  close (fd);
  for (size_t i = 0; i < bytes; i++)
    sprintf (out + 2 * i, "%02x", b[i]);
}

/* ---- one side of a connection ------------------------------------------ */

enum job {
  TRANSFER,         /* connector writes BIG bytes, listener checks them */
  HANDSHAKE_ONLY,   /* just connect and close */
  IDLE,             /* connect, then do nothing until told to stop */
};

struct side {
  bool listen;
  const char *addr;
  struct xm_tls_opts tls;
  double timeout;
  enum job job;
  /* results */
  bool connected, ok, tls_on;
  uint64_t written;
  double elapsed;
  char err[4096];
};

static volatile int stop_idle;

/* Listener: read BIG bytes in odd-sized pieces and check them, answer
 * "done", then expect a clean EOF.  Connector: write BIG bytes in other
 * odd-sized pieces, read the answer, close. */
static bool
transfer (struct side *s, struct xm_conn *c)
{
  static const size_t wsz[] = { 1, 7, 4096, 65539, 1 << 20, 333 };
  static const size_t rsz[] = { 3, 65536, 17, 1 << 19, 4095 };
  uint8_t *buf = malloc (1 << 20);
  size_t off = 0;
  unsigned k = 0;
  bool good = true;
  char reply[4];

  if (!s->listen) {
    while (off < BIG) {
      size_t n = wsz[k++ % 6];
      if (n > BIG - off)
        n = BIG - off;
      for (size_t i = 0; i < n; i++)
        buf[i] = pattern (off + i);
      if (xm_write (c, buf, n) == -1) {
        good = false;
        break;
      }
      off += n;
    }
    good = good && xm_read (c, reply, 4, false) == 1 &&
           memcmp (reply, "done", 4) == 0;
  }
  else {
    while (off < BIG) {
      size_t n = rsz[k++ % 5];
      if (n > BIG - off)
        n = BIG - off;
      if (xm_read (c, buf, n, false) != 1) {
        good = false;
        break;
      }
      for (size_t i = 0; i < n; i++)
        if (buf[i] != pattern (off + i)) {
          printf ("#   byte %zu differs\n", off + i);
          good = false;
          break;
        }
      if (!good)
        break;
      off += n;
    }
    good = good && xm_write (c, "done", 4) == 0 &&
           xm_read (c, buf, 1, true) == 0;
  }
  free (buf);
  return good;
}

static void *
run_side (void *arg)
{
  struct side *s = arg;
  struct xm_conn *c;
  double t0 = sxm_now ();

  errs[0] = 0;
  c = s->listen ? xm_listen_accept (s->addr, &s->tls, s->timeout)
                : xm_connect (s->addr, &s->tls, s->timeout);
  if (c) {
    s->connected = true;
    s->tls_on = xm_conn_is_tls (c);
    switch (s->job) {
    case TRANSFER:
      s->ok = transfer (s, c);
      break;
    case HANDSHAKE_ONLY:
      s->ok = true;
      break;
    case IDLE:
      while (!stop_idle)
        usleep (10000);
      s->ok = true;
      break;
    }
    s->written = xm_bytes_written (c);
    xm_close (c);
  }
  s->elapsed = sxm_now () - t0;
  memcpy (s->err, errs, sizeof errs);
  return NULL;
}

/* Run a listener and a connector at once. */
static void
run_pair (struct side *l, struct side *c)
{
  pthread_t t;

  l->listen = true;
  c->listen = false;
  pthread_create (&t, NULL, run_side, l);
  run_side (c);
  pthread_join (t, NULL);
}

static bool
transferred (const struct side *l, const struct side *c)
{
  return l->ok && c->ok && c->written == BIG && l->written == 4;
}

/* ---- tests ------------------------------------------------------------- */

static void
test_addresses (void)
{
  struct xm_tls_opts none = { 0 };
  char longp[200];

  errs[0] = 0;
  ok (!xm_connect ("foo", &none, 1) &&
      has (errs, "foo: expected unix:PATH or tcp:HOST:PORT"),
      "an address without a scheme refused");
  errs[0] = 0;
  ok (!xm_connect ("tcp:::1:80", &none, 1) &&
      has (errs, "put an IPv6 address in brackets"),
      "an unbracketed IPv6 address refused");
  errs[0] = 0;
  ok (!xm_connect ("tcp:[::1:80", &none, 1) &&
      has (errs, "expected tcp:[IPV6]:PORT"), "an unclosed bracket refused");
  errs[0] = 0;
  ok (!xm_connect ("tcp:localhost:0", &none, 1) &&
      has (errs, "port '0' is not a number in 1..65535"), "port 0 refused");
  errs[0] = 0;
  ok (!xm_connect ("tcp:localhost:http", &none, 1) &&
      has (errs, "port 'http' is not a number"), "a port name refused");
  errs[0] = 0;
  ok (!xm_listen_accept ("unix:", &none, 1) &&
      has (errs, "path is empty"), "an empty socket path refused");
  memset (longp, 'a', sizeof longp);
  memcpy (longp, "unix:/", 6);
  longp[sizeof longp - 1] = 0;
  errs[0] = 0;
  ok (!xm_listen_accept (longp, &none, 1) &&
      has (errs, "the unix socket path is 194 bytes long, the limit is 107"),
      "an over-long socket path refused");
}

static void
test_policy (void)
{
  struct xm_tls_opts none = { 0 }, insecure = { .insecure = true };
  char addr[64];
  double t0;

  errs[0] = 0;
  t0 = sxm_now ();
  ok (!xm_connect ("tcp:192.0.2.1:7000", &none, 5) &&
      has (errs, "tcp:192.0.2.1:7000: plaintext TCP to 192.0.2.1, which is "
           "not loopback; use --tls-psk or --tls-x509, or --insecure to "
           "allow it") && sxm_now () - t0 < 1,
      "plaintext TCP to a remote host refused at once");
  errs[0] = 0;
  ok (!xm_connect ("tcp:[2001:db8::1]:7000", &none, 5) &&
      has (errs, "plaintext TCP to 2001:db8::1"),
      "plaintext TCP to a remote IPv6 host refused");
  snprintf (addr, sizeof addr, "tcp:0.0.0.0:%d", free_port ());
  errs[0] = 0;
  ok (!xm_listen_accept (addr, &none, 5) &&
      has (errs, "plaintext TCP on 0.0.0.0, which is not loopback"),
      "plaintext listener on every interface refused");
  errs[0] = 0;
  t0 = sxm_now ();
  ok (!xm_listen_accept (addr, &insecure, 0.3) &&
      has (errs, "no connection within 0.3 s") && sxm_now () - t0 < 2,
      "... allowed with insecure (then times out waiting)");
  errs[0] = 0;
  ok (!xm_connect ("tcp:192.0.2.1:7000", &(struct xm_tls_opts)
                   { .psk_file = "/nonexistent/psk" }, 1) &&
      has (errs, "PSK file /nonexistent/psk: No such file"),
      "a missing PSK file named");
  errs[0] = 0;
  ok (!xm_connect ("unix:/x", &(struct xm_tls_opts)
                   { .psk_file = "a", .x509_dir = "b" }, 1) &&
      has (errs, "choose one of --tls-psk and --tls-x509"),
      "PSK and x509 together refused");
}

static void
test_unix (void)
{
  struct xm_tls_opts none = { 0 };
  struct side l = { .job = TRANSFER, .timeout = 10 };
  struct side c = { .job = TRANSFER, .timeout = 10 };
  char addr[128];
  pthread_t t;
  struct stat st;
  int mode = -1;
  double t0;

  snprintf (addr, sizeof addr, "unix:%s", path ("sock"));
  l.addr = c.addr = addr;
  l.listen = true;
  pthread_create (&t, NULL, run_side, &l);
  t0 = sxm_now ();
  while (stat (path ("sock"), &st) == -1 && sxm_now () - t0 < 5)
    usleep (1000);
  mode = st.st_mode & 07777;
  run_side (&c);
  pthread_join (t, NULL);
  ok (mode == 0600 && S_ISSOCK (st.st_mode), "the listening socket is "
      "mode 0600 (%04o)", mode);
  ok (transferred (&l, &c) && !l.tls_on && !c.tls_on,
      "unix: 8 MiB round trip in the clear, odd-sized pieces, bytes "
      "counted (%llu)", (unsigned long long) c.written);
  ok (stat (path ("sock"), &st) == -1 && errno == ENOENT,
      "the socket is removed after accept");

  /* A socket left behind by a killed receiver is replaced. */
  {
    struct sockaddr_un sun = { .sun_family = AF_UNIX };
    int fd = socket (AF_UNIX, SOCK_STREAM, 0);
    strcpy (sun.sun_path, path ("sock"));
    bind (fd, (struct sockaddr *) &sun, sizeof sun);
    close (fd);
    memset (&l, 0, sizeof l);
    memset (&c, 0, sizeof c);
    l.job = c.job = HANDSHAKE_ONLY;
    l.timeout = c.timeout = 5;
    l.addr = c.addr = addr;
    run_pair (&l, &c);
    ok (l.ok && c.ok, "a stale socket at the path is replaced");
  }

  /* A regular file is not ours to remove. */
  write_file (path ("sock"), 0600, "precious\n");
  errs[0] = 0;
  ok (!xm_listen_accept (addr, &none, 1) &&
      has (errs, "exists and is not a socket; refusing to replace it") &&
      stat (path ("sock"), &st) == 0 && S_ISREG (st.st_mode),
      "a regular file at the socket path is refused and kept");
  unlink (path ("sock"));

  /* The receiver starts after the sender: the sender retries. */
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 5;
  l.addr = c.addr = addr;
  l.listen = true;
  {
    pthread_t tc;
    pthread_create (&tc, NULL, run_side, &c);
    usleep (400000);
    run_side (&l);
    pthread_join (tc, NULL);
  }
  ok (l.ok && c.ok && c.elapsed >= 0.35,
      "connect retries until the receiver is up (%.2f s)", c.elapsed);

  errs[0] = 0;
  t0 = sxm_now ();
  ok (!xm_connect (addr, &none, 0.5) &&
      has (errs, "cannot connect to ") && has (errs, "within 0.5 s") &&
      sxm_now () - t0 < 1.5, "connect gives up after the timeout (%.2f s)",
      sxm_now () - t0);
}

static void
test_tcp (void)
{
  struct side l = { .job = TRANSFER, .timeout = 10 };
  struct side c = { .job = TRANSFER, .timeout = 10 };
  char addr[64];

  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  l.addr = c.addr = addr;
  run_pair (&l, &c);
  ok (transferred (&l, &c), "tcp:127.0.0.1: 8 MiB round trip in the clear");

  snprintf (addr, sizeof addr, "tcp:[::1]:%d", free_port ());
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 5;
  l.addr = c.addr = addr;
  run_pair (&l, &c);
  if (!l.connected && strstr (l.err, "Cannot assign"))
    ok (1, "# SKIP no IPv6 loopback here");
  else
    ok (l.ok && c.ok, "tcp:[::1]: bracketed IPv6 loopback works");
}

static void
test_psk (void)
{
  char key[65], key2[65], addr[64];
  struct side l, c;
  double t0;

  random_hex (key, 32);
  random_hex (key2, 32);
  write_file (path ("server.psk"), 0600, "other:%s\nxenmem:%s\n", key2, key);
  write_file (path ("client.psk"), 0600, "xenmem:%s\n", key);
  write_file (path ("wrong.psk"), 0600, "xenmem:%s\n", key2);
  write_file (path ("stranger.psk"), 0600, "nobody:%s\n", key);

  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = TRANSFER;
  l.timeout = c.timeout = 10;
  l.addr = c.addr = addr;
  l.tls.psk_file = path ("server.psk");
  c.tls.psk_file = path ("client.psk");
  run_pair (&l, &c);
  ok (transferred (&l, &c) && l.tls_on && c.tls_on,
      "PSK over TCP: 8 MiB round trip (payload bytes counted: %llu)",
      (unsigned long long) c.written);

  /* The second identity of a file, chosen by name. */
  snprintf (addr, sizeof addr, "unix:%s", path ("psk.sock"));
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 10;
  l.addr = c.addr = addr;
  l.tls.psk_file = path ("server.psk");
  c.tls.psk_file = path ("server.psk");
  c.tls.psk_identity = "xenmem";
  run_pair (&l, &c);
  ok (l.ok && c.ok && l.tls_on, "PSK over a unix socket, identity chosen "
      "by name");
  errs[0] = 0;
  ok (!xm_connect (addr, &(struct xm_tls_opts)
                   { .psk_file = path ("server.psk"), .psk_identity = "x" },
                   1) && has (errs, "has no identity 'x'"),
      "an identity missing from the file refused");

  /* Wrong key: both sides fail, promptly, saying so; the listener drops
   * the stranger and goes on waiting for the real sender (here until its
   * 2-second accept deadline). */
  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = TRANSFER;
  l.timeout = 2;
  c.timeout = 10;
  l.addr = c.addr = addr;
  l.tls.psk_file = path ("server.psk");
  c.tls.psk_file = path ("wrong.psk");
  t0 = sxm_now ();
  run_pair (&l, &c);
  ok (!l.connected && !c.connected && sxm_now () - t0 < 5 &&
      has (l.err, "TLS handshake with ") && has (l.err, "failed") &&
      has (c.err, "TLS handshake with ") && has (c.err, "failed") &&
      has (l.err, "still waiting for the sender") &&
      has (l.err, "no connection within"),
      "wrong PSK: both sides fail cleanly in %.2f s, the listener only at "
      "its deadline", sxm_now () - t0);
  ok (has (l.err, "same PSK identity and key") &&
      has (c.err, "same PSK identity and key"), "both messages say the keys may "
      "differ");

  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = TRANSFER;
  l.timeout = 2;
  c.timeout = 10;
  l.addr = c.addr = addr;
  l.tls.psk_file = path ("server.psk");
  c.tls.psk_file = path ("stranger.psk");
  t0 = sxm_now ();
  run_pair (&l, &c);
  ok (!l.connected && !c.connected && sxm_now () - t0 < 5 &&
      has (l.err, "identity is not in the PSK file") &&
      has (c.err, "TLS handshake with"),
      "unknown PSK identity: both sides fail, the listener says why");

  /* TLS client, plaintext server. */
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 3;
  l.addr = c.addr = addr;
  c.tls.psk_file = path ("client.psk");
  t0 = sxm_now ();
  run_pair (&l, &c);
  ok (!c.connected && has (c.err, "TLS handshake with") &&
      sxm_now () - t0 < 5,
      "PSK client against a plaintext listener fails in %.2f s",
      sxm_now () - t0);
  /* Plaintext client, TLS server. */
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 3;
  l.addr = c.addr = addr;
  l.tls.psk_file = path ("server.psk");
  t0 = sxm_now ();
  run_pair (&l, &c);
  ok (!l.connected && has (l.err, "TLS handshake with") &&
      sxm_now () - t0 < 5,
      "plaintext client against a PSK listener: the listener fails in "
      "%.2f s", sxm_now () - t0);

  /* Key files others can read. */
  write_file (path ("open.psk"), 0644, "xenmem:%s\n", key);
  errs[0] = 0;
  ok (!xm_listen_accept (addr, &(struct xm_tls_opts)
                         { .psk_file = path ("open.psk") }, 1) &&
      has (errs, "open.psk is accessible to group or others (mode 0644); "
           "refusing to use it (chmod 600)"),
      "listener refuses a PSK file of mode 0644, naming it and the mode");
  errs[0] = 0;
  chmod (path ("open.psk"), 0640);
  ok (!xm_connect (addr, &(struct xm_tls_opts)
                   { .psk_file = path ("open.psk") }, 1) &&
      has (errs, "(mode 0640)"), "connector refuses a PSK file of mode 0640");
  write_file (path ("bad.psk"), 0600, "xenmem:%s\n\nno colon here\n", key);
  errs[0] = 0;
  ok (!xm_connect (addr, &(struct xm_tls_opts)
                   { .psk_file = path ("bad.psk") }, 1) &&
      has (errs, "bad.psk line 3: expected IDENTITY:HEXKEY"),
      "a malformed PSK line is named by number");
  write_file (path ("bad.psk"), 0600, "xenmem:abc\n");
  errs[0] = 0;
  ok (!xm_connect (addr, &(struct xm_tls_opts)
                   { .psk_file = path ("bad.psk") }, 1) &&
      has (errs, "line 1: the key is not an even number of hex digits") &&
      !strstr (errs, "abc"), "an odd-length key refused (and not printed)");
}

/* Peers that stop talking. */
static void
test_stalls (void)
{
  struct xm_tls_opts none = { 0 };
  char addr[128];
  struct side l, c;
  double t0;

  /* A TLS listener whose client connects and says nothing. */
  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  memset (&l, 0, sizeof l);
  l.listen = true;
  l.job = HANDSHAKE_ONLY;
  l.timeout = 0.5;
  l.addr = addr;
  l.tls.psk_file = path ("server.psk");
  {
    pthread_t t;
    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    sin.sin_port = htons (atoi (strrchr (addr, ':') + 1));
    pthread_create (&t, NULL, run_side, &l);
    t0 = sxm_now ();
    while (connect (fd, (struct sockaddr *) &sin, sizeof sin) == -1 &&
           sxm_now () - t0 < 5)
      usleep (10000);
    pthread_join (t, NULL);
    close (fd);
  }
  ok (!l.connected && has (l.err, "no answer from the peer within 0.5 s") &&
      l.elapsed < 2,
      "a silent client: the TLS listener gives up after its timeout "
      "(%.2f s)", l.elapsed);

  /* A TLS connector whose server accepts (the kernel does) and says
   * nothing. */
  {
    struct sockaddr_in sin = { .sin_family = AF_INET,
                               .sin_addr.s_addr = htonl (INADDR_LOOPBACK) };
    socklen_t len = sizeof sin;
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    bind (fd, (struct sockaddr *) &sin, sizeof sin);
    getsockname (fd, (struct sockaddr *) &sin, &len);
    listen (fd, 1);
    snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", ntohs (sin.sin_port));
    memset (&c, 0, sizeof c);
    c.job = HANDSHAKE_ONLY;
    c.timeout = 0.5;
    c.addr = addr;
    c.tls.psk_file = path ("client.psk");
    run_side (&c);
    close (fd);
  }
  ok (!c.connected && has (c.err, "no answer from the peer within 0.5 s") &&
      c.elapsed < 2,
      "a silent server: the TLS connector gives up after its timeout "
      "(%.2f s)", c.elapsed);

  /* A reader that never reads, and one that never writes. */
  snprintf (addr, sizeof addr, "unix:%s", path ("stall.sock"));
  memset (&l, 0, sizeof l);
  l.listen = true;
  l.job = IDLE;
  l.timeout = 5;
  l.addr = addr;
  stop_idle = 0;
  {
    pthread_t t;
    struct xm_conn *x;
    uint8_t *big = calloc (1, 64 << 20), b[8];
    int r;
    pthread_create (&t, NULL, run_side, &l);
    errs[0] = 0;
    x = xm_connect (addr, &none, 5);
    ok (x != NULL, "connected to an idle peer");
    if (x) {
      xm_set_timeout (x, 0.5);
      t0 = sxm_now ();
      r = xm_write (x, big, 64 << 20);
      ok (r == -1 && has (errs, "the peer took no data for 0.5 s (timed "
          "out)") && sxm_now () - t0 < 3, "a write into a peer that stopped "
          "reading fails after the timeout (%.2f s, %llu bytes went)",
          sxm_now () - t0, (unsigned long long) xm_bytes_written (x));
      errs[0] = 0;
      t0 = sxm_now ();
      r = xm_read (x, b, 8, true);
      ok (r == -1 && has (errs, "no data for 0.5 s (timed out)") &&
          sxm_now () - t0 < 2, "a read from a silent peer fails after the "
          "timeout (%.2f s)", sxm_now () - t0);
      /* Now the peer goes away: no SIGPIPE, an error. */
      stop_idle = 1;
      pthread_join (t, NULL);
      errs[0] = 0;
      r = xm_write (x, big, 1 << 20);
      if (r == 0)               /* the first write may still fit */
        r = xm_write (x, big, 64 << 20);
      ok (r == -1 && (has (errs, "Broken pipe") ||
                      has (errs, "Connection reset")),
          "writing to a closed peer is an error, not SIGPIPE");
      xm_close (x);
    }
    else {
      stop_idle = 1;
      pthread_join (t, NULL);
    }
    free (big);
  }
}

/* EOF, clean and mid-buffer, in the clear and over TLS. */
struct eof_peer {
  const char *addr;
  struct xm_tls_opts tls;
};

static void *
eof_writer (void *arg)
{
  struct eof_peer *p = arg;
  struct xm_conn *c = xm_connect (p->addr, &p->tls, 5);

  if (c) {
    xm_write (c, "abc", 3);
    xm_close (c);
  }
  return NULL;
}

static void
test_eof (void)
{
  for (int tls = 0; tls < 2; tls++) {
    char addr[128];
    struct eof_peer p;
    struct xm_tls_opts lt = { 0 };
    struct xm_conn *c;
    pthread_t t;
    char b[8];

    snprintf (addr, sizeof addr, "unix:%s", path ("eof.sock"));
    memset (&p, 0, sizeof p);
    p.addr = addr;
    if (tls) {
      p.tls.psk_file = path ("client.psk");
      lt.psk_file = path ("server.psk");
    }
    pthread_create (&t, NULL, eof_writer, &p);
    c = xm_listen_accept (addr, &lt, 5);
    errs[0] = 0;
    ok (c && xm_read (c, b, 8, true) == -1 &&
        has (errs, "the peer closed the connection 5 bytes short (got 3 of "
             "8)"), "%s: EOF mid-buffer is an error naming the shortfall",
        tls ? "TLS" : "clear");
    pthread_join (t, NULL);
    pthread_create (&t, NULL, eof_writer, &p);
    xm_close (c);
    c = xm_listen_accept (addr, &lt, 5);
    ok (c && xm_read (c, b, 3, false) == 1 && memcmp (b, "abc", 3) == 0 &&
        xm_read (c, b, 8, true) == 0, "%s: EOF at a boundary is a clean 0 "
        "with eof_ok", tls ? "TLS" : "clear");
    errs[0] = 0;
    ok (c && xm_read (c, b, 8, false) == -1 &&
        has (errs, "8 bytes short (got 0 of 8)"), "%s: ... and an error "
        "without", tls ? "TLS" : "clear");
    pthread_join (t, NULL);
    xm_close (c);
  }
}

/* The same PSK round trip with the listener in a forked process. */
static void
test_fork (void)
{
  char addr[64];
  struct side c = { .job = TRANSFER, .timeout = 10 };
  pid_t pid;
  int status = -1;

  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  fflush (stdout);
  pid = fork ();
  if (pid == 0) {
    struct side l = { .listen = true, .job = TRANSFER, .timeout = 10 };
    l.addr = addr;
    l.tls.psk_file = path ("server.psk");
    run_side (&l);
    _exit (l.ok && l.tls_on ? 0 : 1);
  }
  c.addr = addr;
  c.tls.psk_file = path ("client.psk");
  run_side (&c);
  waitpid (pid, &status, 0);
  ok (c.ok && c.tls_on && WIFEXITED (status) && WEXITSTATUS (status) == 0,
      "PSK round trip with the listener in a forked process");
}

/* ---- x509 -------------------------------------------------------------- */

static int
sh (const char *fmt, ...)
{
  char cmd[2048];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (cmd, sizeof cmd, fmt, ap);
  va_end (ap);
  return system (cmd);
}

/* A CA, and under it a certificate for NAME (dns NAME, ip 127.0.0.1 if
 * WITH_IP) as DIR/PREFIX-cert.pem and -key.pem. */
static int
make_ca (const char *d)
{
  return sh ("(set -e; mkdir -p %s; cd %s; "
             "certtool --generate-privkey --key-type=ecdsa --outfile "
             "ca-key.pem; "
             "printf 'cn = \"xenmem test CA\"\\nca\\ncert_signing_key\\n"
             "expiration_days = 3\\n' > ca.tmpl; "
             "certtool --generate-self-signed --load-privkey ca-key.pem "
             "--template ca.tmpl --outfile ca-cert.pem) >/dev/null 2>&1",
             d, d);
}

static int
make_cert (const char *d, const char *prefix, const char *name, bool with_ip,
           const char *ca_dir)
{
  return sh ("(set -e; cd %s; umask 077; "
             "certtool --generate-privkey --key-type=ecdsa --outfile "
             "%s-key.pem; "
             "printf 'cn = \"%s\"\\ndns_name = \"%s\"\\n%s"
             "tls_www_server\\ntls_www_client\\nsigning_key\\n"
             "expiration_days = 2\\n' > %s.tmpl; "
             "certtool --generate-certificate --load-privkey %s-key.pem "
             "--load-ca-certificate %s/ca-cert.pem --load-ca-privkey "
             "%s/ca-key.pem --template %s.tmpl --outfile %s-cert.pem) "
             ">/dev/null 2>&1",
             d, prefix, name, name,
             with_ip ? "ip_address = \"127.0.0.1\"\\n" : "",
             prefix, prefix, ca_dir, ca_dir, prefix, prefix);
}

static void
x509_pair (const char *addr, const char *sdir, const char *cdir,
           struct side *l, struct side *c)
{
  memset (l, 0, sizeof *l);
  memset (c, 0, sizeof *c);
  l->job = c->job = TRANSFER;
  l->timeout = c->timeout = 10;
  l->addr = c->addr = addr;
  l->tls.x509_dir = sdir;
  c->tls.x509_dir = cdir;
  run_pair (l, c);
}

static void
test_x509 (void)
{
  char srv[128], cli[128], other[128], misnamed[128], addr[64];
  struct side l, c;

  if (system ("command -v certtool >/dev/null 2>&1") != 0) {
    ok (1, "# SKIP certtool missing (Debian package gnutls-bin)");
    return;
  }
  snprintf (srv, sizeof srv, "%s", path ("pki-server"));
  snprintf (cli, sizeof cli, "%s", path ("pki-client"));
  snprintf (other, sizeof other, "%s", path ("pki-other"));
  snprintf (misnamed, sizeof misnamed, "%s", path ("pki-misnamed"));
  if (make_ca (srv) || make_cert (srv, "server", "localhost", true, srv) ||
      sh ("mkdir -p %s && cp %s/ca-cert.pem %s/", cli, srv, cli) ||
      make_ca (other) ||
      sh ("mkdir -p %s && cp %s/ca-cert.pem %s/ && umask 077 && "
          "cp %s/ca-key.pem %s/", misnamed, srv, misnamed, srv, misnamed) ||
      make_cert (misnamed, "server", "other.example", false, misnamed)) {
    ok (0, "generating test certificates with certtool");
    return;
  }

  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  x509_pair (addr, srv, cli, &l, &c);
  ok (transferred (&l, &c) && l.tls_on && c.tls_on,
      "x509 to 127.0.0.1 (certificate with that IP): 8 MiB round trip");

  snprintf (addr, sizeof addr, "tcp:localhost:%d", free_port ());
  memset (&l, 0, sizeof l);
  memset (&c, 0, sizeof c);
  l.job = c.job = HANDSHAKE_ONLY;
  l.timeout = c.timeout = 10;
  /* The listener binds the first address of "localhost"; the client tries
   * them all. */
  l.addr = c.addr = addr;
  l.tls.x509_dir = srv;
  c.tls.x509_dir = cli;
  run_pair (&l, &c);
  ok (l.ok && c.ok, "x509 to localhost (certificate with that name)");

  snprintf (addr, sizeof addr, "tcp:127.0.0.1:%d", free_port ());
  x509_pair (addr, srv, other, &l, &c);
  ok (!c.connected && has (c.err, "TLS handshake with") &&
      has (c.err, "the server's certificate is not trusted"),
      "x509: a server certificate from another CA is refused");

  x509_pair (addr, misnamed, cli, &l, &c);
  ok (!c.connected && has (c.err, "not trusted") &&
      has (c.err, "does not match"),
      "x509: a certificate for another name is refused");

  /* A client certificate from the CA is accepted, one from elsewhere is
   * refused by the listener. */
  if (make_cert (cli, "client", "xenmem-client", false, srv) == 0) {
    x509_pair (addr, srv, cli, &l, &c);
    ok (transferred (&l, &c), "x509 with a client certificate");
  }
  if (sh ("mkdir -p %s-c && cp %s/ca-cert.pem %s-c/", other, srv, other)
      == 0 &&
      make_cert (path ("pki-other-c"), "client", "intruder", false, other)
      == 0) {
    char od[160];
    snprintf (od, sizeof od, "%s-c", other);
    x509_pair (addr, srv, od, &l, &c);
    ok (!l.connected && has (l.err, "the client's certificate is not "
        "trusted"), "x509: a client certificate from another CA is refused");
  }

  chmod (path ("pki-server/server-key.pem"), 0644);
  errs[0] = 0;
  ok (!xm_listen_accept (addr, &(struct xm_tls_opts) { .x509_dir = srv }, 1)
      && has (errs, "server-key.pem is accessible to group or others "
              "(mode 0644)"), "x509: a server key others can read refused");
  chmod (path ("pki-server/server-key.pem"), 0600);
  errs[0] = 0;
  ok (!xm_connect (addr, &(struct xm_tls_opts) { .x509_dir = "/nonexistent" },
                   1) && has (errs, "/nonexistent/ca-cert.pem"),
      "x509: a missing CA certificate named");
}

int
main (void)
{
  snprintf (dir, sizeof dir, "/tmp/xmtransport.XXXXXX");
  if (!mkdtemp (dir)) {
    perror ("mkdtemp");
    return 1;
  }
  sxm_log_set_sink (sink);
  test_addresses ();
  test_policy ();
  test_unix ();
  test_tcp ();
  test_psk ();
  test_stalls ();
  test_eof ();
  test_fork ();
  test_x509 ();
  if (!getenv ("XM_KEEP_TMP"))
    sh ("rm -rf %s", dir);
  return tap_done ();
}
