/* The mirror filter's shared state: the write gate, the state machine,
 * the dirty map, the running mirror's parameters and its counters.
 *
 * Guest requests (mirror.c, mirror-write.c, mirror-copy.c) and control
 * commands (mirror-cmd.c) meet here.  The rule that makes the invariant in
 * doc/design.md hold: the state and the running mirror's parameters change
 * only with the gate closed, so a request that entered the gate sees one
 * state and one destination for its whole life. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nbdkit-filter.h>

#include "bitmap.h"
#include "mirror.h"

/* ---- the running mirror ------------------------------------------------ */

struct dest *mirror_dest;
struct dest_info mirror_dinfo;
uint64_t mirror_size;
struct rangelock mirror_rl = RANGELOCK_INIT;
bool mirror_guest_priority;

pthread_mutex_t mirror_info_lock = PTHREAD_MUTEX_INITIALIZER;
char *mirror_export;
char *mirror_dest_uri;
bool mirror_all;
char mirror_token[33];
uint64_t mirror_generation;
char mirror_reason[512];
bool mirror_copy_seen, mirror_copy_done;

struct mirror_stats mirror_stats;

static int state = M_IDLE;              /* atomic; changes with the gate closed */
static uint8_t *dirty;                  /* one bit per granule, MSB first */

void
mirror_state_free (void)
{
  free (mirror_export);
  mirror_export = NULL;
  free (mirror_dest_uri);
  mirror_dest_uri = NULL;
  free (dirty);
  dirty = NULL;
}

/* ---- the state machine --------------------------------------------------- */

const char *
mirror_state_name (enum mirror_state s)
{
  switch (s) {
  case M_IDLE: return "idle";
  case M_MIRRORING: return "mirroring";
  case M_READY: return "ready";
  case M_BROKEN: return "broken";
  case M_COMPLETED: return "completed";
  }
  return "?";
}

enum mirror_state
mirror_cur_state (void)
{
  return __atomic_load_n (&state, __ATOMIC_ACQUIRE);
}

void
mirror_set_state (enum mirror_state s)
{
  __atomic_store_n (&state, s, __ATOMIC_RELEASE);
}

/* The destination failed: the mirror is broken (the first reason wins).
 * The one change of state made with the gate open, by the request that
 * met the failure: the others in flight finish as mirrored requests (the
 * source has their data either way). */
void
mirror_set_broken (const char *fmt, ...)
{
  va_list ap;
  int expect = M_MIRRORING;

  pthread_mutex_lock (&mirror_info_lock);
  if (__atomic_compare_exchange_n (&state, &expect, M_BROKEN, false,
                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
    va_start (ap, fmt);
    vsnprintf (mirror_reason, sizeof mirror_reason, fmt, ap);
    va_end (ap);
    nbdkit_error ("mirror: broken: %s", mirror_reason);
  }
  pthread_mutex_unlock (&mirror_info_lock);
}

/* The guest carries on with the source unless mirror-on-error=fail. */
int
mirror_dest_failed (int e, const char *what, uint64_t off, uint64_t len,
                    int *err)
{
  mirror_stat_add (&mirror_stats.dest_errors, 1);
  mirror_set_broken ("destination %s at offset %" PRIu64 " length %" PRIu64
                     " failed: %s", what, off, len, strerror (e));
  if (mirror_strict) {
    *err = EIO;
    return -1;
  }
  return 0;
}

/* ---- the write gate ------------------------------------------------------ */

/* Not a pthread rwlock: the control thread that closes it for a
 * switchover need not be the one that reopens it ("resume", "complete",
 * "abort" come later, possibly from another client). */
static struct {
  pthread_mutex_t m;
  pthread_cond_t cv;
  unsigned active;
  bool closed;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, false };

void
mirror_gate_enter (void)
{
  pthread_mutex_lock (&gate.m);
  if (gate.closed) {
    mirror_stat_add (&mirror_stats.held, 1);
    while (gate.closed)
      pthread_cond_wait (&gate.cv, &gate.m);
  }
  gate.active++;
  pthread_mutex_unlock (&gate.m);
}

void
mirror_gate_leave (void)
{
  pthread_mutex_lock (&gate.m);
  if (--gate.active == 0 && gate.closed)
    pthread_cond_broadcast (&gate.cv);
  pthread_mutex_unlock (&gate.m);
}

/* Holds new requests and waits for the ones in flight. */
void
mirror_gate_close (void)
{
  pthread_mutex_lock (&gate.m);
  gate.closed = true;
  while (gate.active > 0)
    pthread_cond_wait (&gate.cv, &gate.m);
  pthread_mutex_unlock (&gate.m);
}

void
mirror_gate_open (void)
{
  pthread_mutex_lock (&gate.m);
  gate.closed = false;
  pthread_cond_broadcast (&gate.cv);
  pthread_mutex_unlock (&gate.m);
}

/* ---- the dirty map ------------------------------------------------------- */

/* Bits are read and set with relaxed atomics: the range lock, not the
 * map, orders a guest write against the copier over one granule. */
bool
mirror_is_dirty (uint64_t g)
{
  return bitmap_get (dirty, g);
}

void
mirror_mark_dirty (uint64_t start, uint64_t end)
{
  uint64_t n = 0;

  for (uint64_t g = start / mirror_gran; g * mirror_gran < end; g++)
    if (bitmap_test_and_set (dirty, g))
      n++;
  mirror_stat_add (&mirror_stats.dirty_gran, n);
}

/* "start" allocates the map before it closes the gate: a failure then
 * changes nothing, and guest writes are not held while it is zeroed. */
uint8_t *
mirror_dirty_alloc (uint64_t size)
{
  uint8_t *map = calloc ((size / mirror_gran + 1) / 8 + 1, 1);

  if (!map)
    nbdkit_error ("mirror: calloc: %m");
  return map;
}

void
mirror_dirty_install (uint8_t *map)
{
  free (dirty);
  dirty = map;
}
