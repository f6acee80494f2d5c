/* Monotonic time: the one clock sxm measures durations and deadlines
 * with (timeouts, rates, downtime, reports).  CLOCK_MONOTONIC, so that a
 * wall-clock step (NTP, an admin's date) cannot fire or postpone a
 * deadline.  The zero point is arbitrary: only differences mean anything.
 *
 * Header-only, so that programs that do not link libsxm.a (the Xen rig's
 * downtime probe) use it too. */
#ifndef SXM_MONOTIME_H
#define SXM_MONOTIME_H

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

#endif
