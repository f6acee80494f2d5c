/* Monotonic time: the one clock sxm measures durations and deadlines
 * with (timeouts, rates, downtime, reports).  CLOCK_MONOTONIC, so that a
 * wall-clock step (NTP, an admin's date) cannot fire or postpone a
 * deadline.  The zero point is arbitrary: only differences mean anything.
 *
 * Header-only, so that programs that do not link libsxm.a (the Xen rig's
 * downtime probe) use it too. */
#ifndef SXM_MONOTIME_H
#define SXM_MONOTIME_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Seconds, with nanosecond resolution. */
static inline double
sxm_now (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Nanoseconds, exact: for callers that keep time as an integer (the uffd
 * guest's budgets, stored in its own memory, must not lose fractions to
 * rounding). */
static inline uint64_t
sxm_now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* A time in seconds (a sxm_now () deadline, or a duration) as a
 * timespec. */
static inline struct timespec
sxm_timespec (double t)
{
  struct timespec ts;

  ts.tv_sec = (time_t) t;
  ts.tv_nsec = (long) ((t - ts.tv_sec) * 1e9);
  return ts;
}

/* A condition variable whose timed waits take sxm_now () deadlines
 * (sxm_timespec), so that a wall-clock step cannot fire or stretch them. */
static inline int
sxm_cond_init_monotonic (pthread_cond_t *cv)
{
  pthread_condattr_t a;
  int r;

  pthread_condattr_init (&a);
  pthread_condattr_setclock (&a, CLOCK_MONOTONIC);
  r = pthread_cond_init (cv, &a);
  pthread_condattr_destroy (&a);
  return r;
}

#endif
