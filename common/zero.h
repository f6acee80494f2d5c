/* Does a buffer hold only zero bytes?  One test for every place that
 * decides whether data can travel as a hole or a zero marker (sxm-copy's
 * zero detection, the mirror filter's copy-back, xenmem's zero pages):
 * the first byte is zero and the buffer equals itself shifted by one,
 * which glibc's memcmp does at memory speed. */
#ifndef SXM_ZERO_H
#define SXM_ZERO_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

static inline bool
buf_is_zero (const void *buf, size_t n)
{
  const unsigned char *p = buf;
  return n == 0 || (p[0] == 0 && memcmp (p, p + 1, n - 1) == 0);
}

#endif
