/* Range locks: overlapping holders exclude each other, disjoint ones do
 * not.  Threads increment shared counters under locks of random ranges; a
 * lost update shows as a wrong total. */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "rangelock.h"
#include "tap.h"

#define SLOTS 64
#define THREADS 8
#define ROUNDS 20000

static struct rangelock rl = RANGELOCK_INIT;
static volatile long counter[SLOTS];

static void *
worker (void *arg)
{
  unsigned seed = (unsigned) (long) arg;
  int i;

  for (i = 0; i < ROUNDS; i++) {
    uint64_t s = rand_r (&seed) % SLOTS;
    uint64_t n = 1 + rand_r (&seed) % (SLOTS - s);
    struct range_held *t = rangelock_lock (&rl, s * 4096, n * 4096);
    uint64_t j;
    for (j = s; j < s + n; j++) {
      long v = counter[j];          /* read-modify-write, racy if unlocked */
      if ((i & 63) == 0)
        sched_yield ();
      counter[j] = v + 1;
    }
    rangelock_unlock (&rl, t);
  }
  return NULL;
}

static void *
holder (void *arg)
{
  struct range_held *t = rangelock_lock (&rl, 0, 4096);
  *(volatile int *) arg = 1;
  usleep (200000);
  rangelock_unlock (&rl, t);
  return NULL;
}

int
main (void)
{
  pthread_t th[THREADS];
  long expected[SLOTS] = { 0 }, total_bad = 0;
  long i;
  int j;

  /* Recompute the expected totals with the same random streams. */
  for (i = 0; i < THREADS; i++) {
    unsigned seed = (unsigned) i + 1;
    int r;
    for (r = 0; r < ROUNDS; r++) {
      uint64_t s = rand_r (&seed) % SLOTS;
      uint64_t n = 1 + rand_r (&seed) % (SLOTS - s);
      for (uint64_t k = s; k < s + n; k++)
        expected[k]++;
    }
  }
  for (i = 0; i < THREADS; i++)
    pthread_create (&th[i], NULL, worker, (void *) (i + 1));
  for (i = 0; i < THREADS; i++)
    pthread_join (th[i], NULL);
  for (j = 0; j < SLOTS; j++)
    if (counter[j] != expected[j])
      total_bad++;
  ok (total_bad == 0, "%d threads x %d locked updates: no lost update",
      THREADS, ROUNDS);
  ok (rl.held == NULL, "no range left held");

  {
    /* A disjoint range is granted while another is held. */
    volatile int started = 0;
    pthread_t h;
    struct range_held *t;
    pthread_create (&h, NULL, holder, (void *) &started);
    while (!started)
      usleep (1000);
    t = rangelock_lock (&rl, 4096, 4096);
    ok (rl.held && rl.held->next, "disjoint range granted while [0,4K) held");
    rangelock_unlock (&rl, t);
    t = rangelock_lock (&rl, 4095, 2);       /* overlaps: waits for holder */
    ok (rl.held == t && t->next == NULL,
        "overlapping range granted only after the holder released");
    rangelock_unlock (&rl, t);
    pthread_join (h, NULL);
  }
  {
    struct range_held *t = rangelock_lock (&rl, UINT64_MAX - 10, 100);
    ok (t->end == UINT64_MAX, "range reaching the top saturates");
    rangelock_unlock (&rl, t);
  }
  return tap_done ();
}
