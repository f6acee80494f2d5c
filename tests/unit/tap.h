/* Minimal TAP producer for the C unit tests (run by prove). */
#ifndef SXM_TAP_H
#define SXM_TAP_H

#include <stdio.h>

static int tap_n, tap_failed;

#define ok(cond, ...)                                               \
  do {                                                              \
    int c_ = (cond);                                                \
    tap_n++;                                                        \
    if (!c_) tap_failed++;                                          \
    printf ("%sok %d - ", c_ ? "" : "not ", tap_n);                 \
    printf (__VA_ARGS__);                                           \
    printf ("\n");                                                  \
    if (!c_) printf ("#   at %s:%d: %s\n", __FILE__, __LINE__, #cond); \
  } while (0)

static inline int
tap_done (void)
{
  printf ("1..%d\n", tap_n);
  return tap_failed != 0;
}

#endif
