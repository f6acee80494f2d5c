/* The mirror filter's control commands (doc/nbdkit-mirror-filter.pod):
 * start / status / copied / switchover / resume / complete / flush /
 * abort, and the switchover's comparison of the whole disk.
 *
 * mirror-control.c calls them from its client threads, one at a time
 * except "status", which only reads.  The commands that change the state
 * do so with the gate closed (mirror-state.c), so guest requests never see
 * a mirror half set up or half torn down. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <nbdkit-filter.h>

#include "fullio.h"
#include "mirror.h"
#include "monotime.h"
#include "nbdpolicy.h"

static double started_at;               /* of the running mirror */

/* The last error common/ code logged on this thread ("start" replies with
 * nbd_uri_policy's reason). */
static __thread char last_msg[512];

void
mirror_log_sink (enum sxm_log_level level, const char *msg)
{
  if (level == SXM_LOG_ERROR) {
    snprintf (last_msg, sizeof last_msg, "%s", msg);
    nbdkit_error ("mirror: %s", msg);
  }
  else
    nbdkit_debug ("mirror: %s", msg);
}

static int
fail_reply (struct jbuf *out, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
static int
fail_reply (struct jbuf *out, const char *fmt, ...)
{
  char msg[1024];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  jbuf_add (out, ",\"error\":");
  jbuf_str (out, msg);
  jbuf_add (out, ",\"state\":\"%s\"", mirror_state_name (mirror_cur_state ()));
  return -1;
}

/* A context into the plugin for the control thread (not tied to any
 * client connection). */
static nbdkit_next *
bg_open (const char *exp, int readonly)
{
  nbdkit_next *n;

  if (!mirror_backend)
    return NULL;
  n = nbdkit_next_context_open (mirror_backend, readonly, exp, 1);
  if (!n)
    return NULL;
  /* nbdkit checks requests against what these return, so they must be
   * asked before any request is made on a manual context. */
  if (n->prepare (n) == -1 || n->get_size (n) == -1 ||
      n->can_write (n) == -1 || n->can_flush (n) == -1 ||
      n->can_extents (n) == -1) {
    n->finalize (n);
    nbdkit_next_context_close (n);
    return NULL;
  }
  return n;
}

static void
bg_close (nbdkit_next *n)
{
  if (n) {
    n->finalize (n);
    nbdkit_next_context_close (n);
  }
}

/* ---- start ----------------------------------------------------------------- */

static void
random_token (char *out)
{
  unsigned char r[16];
  int fd = open ("/dev/urandom", O_RDONLY | O_CLOEXEC);
  ssize_t got = fd >= 0 ? full_read (fd, r, sizeof r) : -1;

  if (fd >= 0)
    close (fd);
  if (got != (ssize_t) sizeof r) {
    /* Not a secret, only a guard against stale copiers: time will do. */
    uint64_t t = (uint64_t) (sxm_now () * 1e9) ^ (uint64_t) getpid ();
    memcpy (r, &t, 8);
    memcpy (r + 8, &t, 8);
  }
  for (int i = 0; i < 16; i++)
    sprintf (out + 2 * i, "%02x", r[i]);
}

struct start_args {
  const char *uri;
  const char *exp;              /* NULL: every export */
  uint64_t nconns;
  double timeout;
  bool insecure;
  bool guest_priority;
};

static int
start_parse (const struct json_obj *req, struct start_args *a,
             struct jbuf *out)
{
  a->uri = json_str (req, "dest");
  a->exp = json_str (req, "export");
  a->nconns = 4;
  a->timeout = 30;
  a->insecure = false;
  a->guest_priority = true;
  if (!a->uri)
    return fail_reply (out, "start needs \"dest\": the destination NBD URI");
  if (json_has (req, "export") && !a->exp)
    return fail_reply (out, "\"export\" must be a string");
  if (json_u64 (req, "connections", &a->nconns) == -1 || a->nconns < 1 ||
      a->nconns > MIRROR_MAX_CONNS)
    return fail_reply (out, "\"connections\" must be 1 to %d",
                       MIRROR_MAX_CONNS);
  if (json_num (req, "timeout", &a->timeout) == -1 || !(a->timeout > 0))
    return fail_reply (out, "\"timeout\" must be a positive number of seconds");
  if (json_bool (req, "insecure", &a->insecure) == -1)
    return fail_reply (out, "\"insecure\" must be true or false");
  if (json_bool (req, "guest_priority", &a->guest_priority) == -1)
    return fail_reply (out, "\"guest_priority\" must be true or false");
  last_msg[0] = 0;
  if (nbd_uri_policy (a->uri, a->insecure) == -1)
    return fail_reply (out, "%s", last_msg);
  return 0;
}

static int64_t
source_size (const char *exp, struct jbuf *out)
{
  nbdkit_next *n = bg_open (exp, 1);
  int64_t ssize;

  if (!n)
    return fail_reply (out, "cannot open the source export '%s'", exp);
  ssize = n->get_size (n);
  bg_close (n);
  if (ssize < 0)
    return fail_reply (out, "cannot get the size of the source export '%s'",
                       exp);
  return ssize;
}

/* Connect to a destination able to take a copy of SSIZE bytes. */
static struct dest *
start_connect (const struct start_args *a, int64_t ssize,
               struct dest_info *di, struct jbuf *out)
{
  char err[512];
  struct dest *d = dest_open (a->uri, a->nconns, a->timeout, di, err,
                              sizeof err);

  if (!d) {
    fail_reply (out, "%s: cannot connect: %s", a->uri, err);
    return NULL;
  }
  if (di->readonly) {
    dest_close (d);
    fail_reply (out, "%s: destination is read-only", a->uri);
    return NULL;
  }
  if (di->size < (uint64_t) ssize) {
    dest_close (d);
    fail_reply (out, "%s: destination is smaller (%" PRIu64 " bytes) than "
                "the source (%" PRId64 " bytes)", a->uri, di->size, ssize);
    return NULL;
  }
  /* Does the destination read zeros where the source lies?  Then the
   * copier may skip the source's holes. */
  di->all_zero = dest_is_zero (d, 0, ssize) == 1;
  return d;
}

/* Writes in flight finish unmirrored before the mirror exists; from here
 * on every write is mirrored. */
static void
start_install (struct dest *d, const struct dest_info *di, uint8_t *map,
               char *exp, bool all, int64_t ssize, char *dest_uri,
               bool guest_priority)
{
  mirror_gate_close ();
  mirror_dirty_install (map);
  mirror_size = ssize;
  mirror_guest_priority = guest_priority;
  mirror_dest = d;
  mirror_dinfo = *di;
  pthread_mutex_lock (&mirror_info_lock);
  free (mirror_export);
  mirror_export = exp;
  free (mirror_dest_uri);
  mirror_dest_uri = dest_uri;
  mirror_all = all;
  random_token (mirror_token);
  mirror_generation++;
  mirror_reason[0] = 0;
  mirror_copy_seen = mirror_copy_done = false;
  memset (&mirror_stats, 0, sizeof mirror_stats);
  pthread_mutex_unlock (&mirror_info_lock);
  started_at = sxm_now ();
  mirror_set_state (M_MIRRORING);
  mirror_gate_open ();
}

int
mirror_cmd_start (const struct json_obj *req, struct jbuf *out)
{
  struct start_args a;
  struct dest *d;
  struct dest_info di;
  int64_t ssize;
  uint8_t *map;
  char *exp;

  if (mirror_cur_state () != M_IDLE)
    return fail_reply (out, "a mirror is already %s; abort it first",
                       mirror_state_name (mirror_cur_state ()));
  if (start_parse (req, &a, out) == -1)
    return -1;
  ssize = source_size (a.exp ? a.exp : "", out);
  if (ssize < 0)
    return -1;
  d = start_connect (&a, ssize, &di, out);
  if (!d)
    return -1;
  map = mirror_dirty_alloc (ssize);
  exp = strdup (a.exp ? a.exp : "");
  if (!exp)
    nbdkit_error ("mirror: strdup: %m");
  if (!map || !exp) {
    free (map);
    free (exp);
    dest_close (d);
    return fail_reply (out, "out of memory");
  }
  /* (The URI is reported by status, so that a live copy's summary can
   * name the real destination; NULL if out of memory: then it is not,
   * and the log says why.) */
  char *uri = strdup (a.uri);
  if (!uri)
    nbdkit_error ("mirror: strdup of the destination URI: %m (status will "
                  "not name it)");
  start_install (d, &di, map, exp, !json_has (req, "export"), ssize, uri,
                 a.guest_priority);
  nbdkit_debug ("mirror: started to %s (export '%s', %" PRIu64 " bytes)",
                a.uri, mirror_export, mirror_size);

  jbuf_add (out, ",\"state\":\"mirroring\",\"copy_export\":\""
            MIRROR_COPY_PREFIX "%s\",\"dest_zero\":%s,\"size\":%" PRIu64
            ",\"granularity\":%u,\"copy_relay\":%u", mirror_token,
            di.all_zero ? "true" : "false", mirror_size, mirror_gran,
            MIRROR_RELAY_MAX);
  return 0;
}

/* ---- status, copied ----------------------------------------------------- */

int
mirror_cmd_status (const struct json_obj *req, struct jbuf *out)
{
  struct mirror_stats *st = &mirror_stats;
  int s = mirror_cur_state ();

  jbuf_add (out, ",\"state\":\"%s\"", mirror_state_name (s));
  pthread_mutex_lock (&mirror_info_lock);
  if (s == M_BROKEN) {
    jbuf_add (out, ",\"reason\":");
    jbuf_str (out, mirror_reason);
  }
  jbuf_add (out, ",\"copy\":\"%s\"", mirror_copy_done ? "done"
            : mirror_copy_seen ? "running" : "none");
  pthread_mutex_unlock (&mirror_info_lock);
  jbuf_add (out, ",\"on_error\":\"%s\"", mirror_strict ? "fail" : "continue");
  if (mirror_self_uri) {
    jbuf_add (out, ",\"uri\":");
    jbuf_str (out, mirror_self_uri);
  }
  if (s != M_IDLE) {
    pthread_mutex_lock (&mirror_info_lock);
    if (mirror_all)
      jbuf_add (out, ",\"export\":null");
    else {
      jbuf_add (out, ",\"export\":");
      jbuf_str (out, mirror_export);
    }
    if (s == M_MIRRORING || s == M_READY)
      jbuf_add (out, ",\"copy_export\":\"" MIRROR_COPY_PREFIX "%s\","
                "\"dest_zero\":%s,\"copy_relay\":%u", mirror_token,
                mirror_dinfo.all_zero ? "true" : "false", MIRROR_RELAY_MAX);
    if (mirror_dest_uri) {
      jbuf_add (out, ",\"dest\":");
      jbuf_str (out, mirror_dest_uri);
    }
    pthread_mutex_unlock (&mirror_info_lock);
    jbuf_add (out, ",\"size\":%" PRIu64 ",\"granularity\":%u,"
              "\"dirty_bytes\":%" PRIu64 ",\"mirrored_writes\":%" PRIu64
              ",\"mirrored_bytes\":%" PRIu64 ",\"readback_bytes\":%" PRIu64
              ",\"copied_bytes\":%" PRIu64 ",\"copy_skipped_bytes\":%" PRIu64
              ",\"dest_errors\":%" PRIu64 ",\"source_errors\":%" PRIu64
              ",\"held_writes\":%" PRIu64 ",\"elapsed\":%.3f"
              ",\"guest_priority\":%s,\"copy_yields\":%" PRIu64
              ",\"copy_yield_ms\":%.3f",
              mirror_size, mirror_gran,
              mirror_stat_get (&st->dirty_gran) * mirror_gran,
              mirror_stat_get (&st->writes), mirror_stat_get (&st->write_bytes),
              mirror_stat_get (&st->readback), mirror_stat_get (&st->copied),
              mirror_stat_get (&st->copy_skipped),
              mirror_stat_get (&st->dest_errors),
              mirror_stat_get (&st->source_errors),
              mirror_stat_get (&st->held), sxm_now () - started_at,
              mirror_guest_priority ? "true" : "false",
              mirror_stat_get (&st->copy_yields),
              mirror_stat_get (&st->copy_yield_us) / 1e3);
  }
  return 0;
}

int
mirror_cmd_copied (const struct json_obj *req, struct jbuf *out)
{
  if (mirror_cur_state () != M_MIRRORING)
    return fail_reply (out, "no mirror is running");
  pthread_mutex_lock (&mirror_info_lock);
  mirror_copy_done = true;
  pthread_mutex_unlock (&mirror_info_lock);
  jbuf_add (out, ",\"state\":\"mirroring\",\"copy\":\"done\"");
  return 0;
}

/* ---- flushing and comparing both sides ------------------------------------ */

/* Flush the source (through N) and the destination at once: the
 * destination's flush travels while the source flushes (one after the
 * other, they held the demo's guest writes for 194 ms).  0, or -1 with
 * "flush failed on the source|destination: ..." in WHAT; a destination
 * failure breaks the mirror. */
static int
flush_both (nbdkit_next *n, char *what, size_t whatlen)
{
  struct dest_flush df;
  int err = 0, r, e;

  dest_flush_start (mirror_dest, &df);
  r = n->can_flush (n) == 1 ? n->flush (n, 0, &err) : 0;
  e = dest_flush_wait (mirror_dest, &df);
  if (e) {
    int ignored = 0;
    mirror_dest_failed (e, "flush", 0, 0, &ignored);
  }
  if (r == -1 || e) {
    snprintf (what, whatlen, "flush failed on the %s: %s",
              r == -1 ? "source" : "destination",
              strerror (r == -1 ? (err ? err : EIO) : e));
    return -1;
  }
  return 0;
}

/* A comparison's walk over the source. */
struct cmp {
  nbdkit_next *n;
  char *a, *b;                  /* one chunk of the source, of the dest */
  /* The source extent containing the position, asked for once (REQ_ONE)
   * and walked in chunks: asking per chunk for everything to the end of
   * the disk cost steps x extents (a fragmented 1 GiB disk held the guest
   * 26-56 s). */
  uint64_t ext_end;
  bool ext_hole;
};

/* How far the next step from POS may go, and whether the source reads
 * zeros over it (*HOLE). */
static uint64_t
cmp_run (struct cmp *c, uint64_t pos, bool *hole)
{
  uint64_t run = mirror_size - pos;

  *hole = false;
  if (run > 0xfffff000u)
    run = 0xfffff000u;
  if (pos >= c->ext_end)
    c->ext_end = pos + mirror_source_extent (c->n, pos, run, mirror_size,
                                             &c->ext_hole);
  if (pos < c->ext_end) {
    if (c->ext_end - pos < run)
      run = c->ext_end - pos;
    *hole = c->ext_hole;
  }
  return run;
}

/* Read [POS, POS+RUN) on both sides at once (a source hole as zeros,
 * unread) and compare: 0 if equal, 1 if not (the first difference in
 * *DIFF), -1 if a read failed; WHAT says how. */
static int
cmp_chunk (struct cmp *c, uint64_t pos, uint32_t run, bool hole,
           uint64_t *diff, char *what, size_t whatlen)
{
  nbdkit_next *n = c->n;
  struct dest_req dr;
  int err = 0;
  int se = dest_start_pread (mirror_dest, DEST_COPY, &dr, c->b, run, pos), de;
  int r = hole ? (memset (c->a, 0, run), 0)
               : n->pread (n, c->a, run, pos, 0, &err);

  de = se ? se : dest_wait (mirror_dest, &dr);
  if (r == -1 || de) {
    snprintf (what, whatlen, "reading %s at %" PRIu64 ": %s",
              r == -1 ? "the source" : "the destination", pos,
              strerror (r == -1 ? (err ? err : EIO) : de));
    return -1;
  }
  if (memcmp (c->a, c->b, run) != 0) {
    uint64_t i = 0;
    while (c->a[i] == c->b[i])
      i++;
    *diff = pos + i;
    snprintf (what, whatlen, "destination differs from the source at "
              "offset %" PRIu64 " (source byte 0x%02x, destination 0x%02x)",
              pos + i, (unsigned char) c->a[i], (unsigned char) c->b[i]);
    return 1;
  }
  return 0;
}

/* Compare source and destination over the whole disk, with the gate
 * closed.  Source holes need the destination to read zeros (its own block
 * status saying so is enough).  0 if equal; otherwise the first
 * difference in *diff and a description in what. */
static int
compare_all (nbdkit_next *n, uint64_t *compared, uint64_t *diff,
             char *what, size_t whatlen)
{
  const uint32_t chunk = 1 << 20;
  struct cmp c = { .n = n, .a = malloc (chunk), .b = malloc (chunk) };
  uint64_t pos = 0;
  int rc = 0;

  *diff = UINT64_MAX;
  *compared = 0;
  if (!c.a || !c.b) {
    nbdkit_error ("mirror: malloc: %m");
    snprintf (what, whatlen, "out of memory");
    rc = -1;
  }
  while (rc == 0 && pos < mirror_size) {
    bool hole;
    uint64_t run = cmp_run (&c, pos, &hole);

    if (hole) {
      /* Skip what the destination says is zero too; read only where it
       * claims data inside the source's hole.  (Asking "is all of the
       * hole zero?" and reading 1 MiB when not made one mirrored write
       * at the end of a 4 GiB hole cost a 4 GiB read, with the guest's
       * writes held: 38 s in the demo.) */
      uint64_t zlen;
      int z = dest_zero_prefix (mirror_dest, pos, run, &zlen);
      if (z < 0) {
        snprintf (what, whatlen, "destination block status at %" PRIu64
                  ": %s", pos, strerror (-z));
        rc = -1;
        break;
      }
      if (zlen > 0) {
        pos += zlen;
        continue;
      }
    }
    if (run > chunk)
      run = chunk;
    rc = cmp_chunk (&c, pos, run, hole, diff, what, whatlen);
    if (rc == 0) {
      *compared += run;
      pos += run;
    }
  }
  free (c.a);
  free (c.b);
  return rc;
}

/* ---- switchover, resume, flush, complete, abort ------------------------- */

int
mirror_cmd_switchover (const struct json_obj *req, struct jbuf *out)
{
  bool verify = true;
  double t0 = sxm_now (), t_drained, t_flushed;
  uint64_t compared = 0, diff;
  nbdkit_next *n;
  char what[512];
  int r;

  if (json_bool (req, "verify", &verify) == -1)
    return fail_reply (out, "\"verify\" must be true or false");
  if (mirror_cur_state () != M_MIRRORING)
    return fail_reply (out, "switchover needs a running mirror (state is %s)",
                       mirror_state_name (mirror_cur_state ()));
  if (!verify) {
    bool done;
    pthread_mutex_lock (&mirror_info_lock);
    done = mirror_copy_done;
    pthread_mutex_unlock (&mirror_info_lock);
    if (!done)
      return fail_reply (out, "switchover without verify needs a finished "
                         "bulk copy (sxm-copy --live reports it with "
                         "\"copied\"); nothing proves the destination "
                         "complete otherwise");
  }
  mirror_gate_close ();         /* hold new writes, drain the ones in flight */
  t_drained = sxm_now ();
  if (mirror_cur_state () != M_MIRRORING) {
    mirror_gate_open ();
    pthread_mutex_lock (&mirror_info_lock);
    snprintf (what, sizeof what, "%s", mirror_reason);
    pthread_mutex_unlock (&mirror_info_lock);
    return fail_reply (out, "the mirror broke: %s", what);
  }
  n = bg_open (mirror_export, 0);
  if (!n) {
    mirror_gate_open ();
    return fail_reply (out, "cannot open the source export for the "
                       "switchover");
  }
  r = flush_both (n, what, sizeof what);
  t_flushed = sxm_now ();
  if (r == -1) {
    bg_close (n);
    mirror_gate_open ();
    return fail_reply (out, "%s", what);
  }
  if (verify) {
    r = compare_all (n, &compared, &diff, what, sizeof what);
    if (r != 0) {
      bg_close (n);
      mirror_gate_open ();
      return fail_reply (out, "not ready: %s", what);
    }
  }
  bg_close (n);
  mirror_set_state (M_READY);
  nbdkit_debug ("mirror: ready (guest writes held)");
  jbuf_add (out, ",\"state\":\"ready\",\"verified\":%s,\"compared_bytes\":%"
            PRIu64 ",\"drain_ms\":%.1f,\"flush_ms\":%.1f,\"hold_ms\":%.1f",
            verify ? "true" : "false", compared, (t_drained - t0) * 1e3,
            (t_flushed - t_drained) * 1e3, (sxm_now () - t0) * 1e3);
  return 0;
}

int
mirror_cmd_resume (const struct json_obj *req, struct jbuf *out)
{
  if (mirror_cur_state () != M_READY)
    return fail_reply (out, "resume needs state ready (state is %s)",
                       mirror_state_name (mirror_cur_state ()));
  mirror_set_state (M_MIRRORING);
  mirror_gate_open ();
  jbuf_add (out, ",\"state\":\"mirroring\"");
  return 0;
}

/* "flush": make both sides durable now, without holding the guest's
 * writes.  Run just before the guest is paused (xenmem's prepare hook),
 * it leaves the switchover's own flush only the writes of the last
 * moments: on a sparse VHD every block allocated since the last flush
 * costs its metadata and the file system's extent update at flush time
 * (about 0.14 ms each here), which the paused guest would otherwise wait
 * for. */
int
mirror_cmd_flush (const struct json_obj *req, struct jbuf *out)
{
  double t0 = sxm_now ();
  char what[512];
  nbdkit_next *n;
  int r;

  if (mirror_cur_state () == M_IDLE) {
    /* No mirror: make the disk itself durable (sxm detach flushes a
     * disk service this way before stopping it). */
    int err = 0;

    n = bg_open ("", 0);
    if (!n)
      return fail_reply (out, "cannot open the disk to flush it");
    r = n->can_flush (n) == 1 ? n->flush (n, 0, &err) : 0;
    bg_close (n);
    if (r == -1)
      return fail_reply (out, "flush failed: %s", strerror (err ? err : EIO));
    jbuf_add (out, ",\"state\":\"idle\",\"flush_ms\":%.1f",
              (sxm_now () - t0) * 1e3);
    return 0;
  }
  if (mirror_cur_state () != M_MIRRORING)
    return fail_reply (out, "flush needs state idle or mirroring (state is %s)",
                       mirror_state_name (mirror_cur_state ()));
  n = bg_open (mirror_export, 0);
  if (!n)
    return fail_reply (out, "cannot open the source export to flush it");
  r = flush_both (n, what, sizeof what);
  bg_close (n);
  if (r == -1)
    return fail_reply (out, "%s", what);
  jbuf_add (out, ",\"state\":\"%s\",\"flush_ms\":%.1f",
            mirror_state_name (mirror_cur_state ()), (sxm_now () - t0) * 1e3);
  return 0;
}

int
mirror_cmd_complete (const struct json_obj *req, struct jbuf *out)
{
  if (mirror_cur_state () != M_READY)
    return fail_reply (out, "complete needs state ready (state is %s)",
                       mirror_state_name (mirror_cur_state ()));
  /* The gate is closed (ready): nothing is in flight. */
  dest_close (mirror_dest);
  mirror_dest = NULL;
  mirror_set_state (M_COMPLETED);
  mirror_gate_open ();
  nbdkit_debug ("mirror: completed; further guest writes are refused");
  jbuf_add (out, ",\"state\":\"completed\"");
  return 0;
}

int
mirror_cmd_abort (const struct json_obj *req, struct jbuf *out)
{
  int s = mirror_cur_state ();

  if (s == M_IDLE)
    return fail_reply (out, "no mirror to abort");
  if (s != M_READY)
    mirror_gate_close ();
  if (mirror_dest) {
    dest_close (mirror_dest);
    mirror_dest = NULL;
  }
  mirror_set_state (M_IDLE);
  pthread_mutex_lock (&mirror_info_lock);
  mirror_copy_seen = mirror_copy_done = false;
  pthread_mutex_unlock (&mirror_info_lock);
  mirror_gate_open ();
  nbdkit_debug ("mirror: aborted (was %s)", mirror_state_name (s));
  jbuf_add (out, ",\"state\":\"idle\",\"was\":\"%s\"", mirror_state_name (s));
  return 0;
}
