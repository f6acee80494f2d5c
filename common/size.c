#include <errno.h>
#include <stdlib.h>

#include "size.h"

int
parse_size (const char *s, uint64_t *out)
{
  char *end;
  unsigned long long v;
  int shift = 0;

  errno = 0;
  if (*s < '0' || *s > '9')
    return -1;
  v = strtoull (s, &end, 10);
  if (errno)
    return -1;
  switch (*end) {
  case '\0': break;
  case 'K': case 'k': shift = 10; end++; break;
  case 'M': case 'm': shift = 20; end++; break;
  case 'G': case 'g': shift = 30; end++; break;
  case 'T': case 't': shift = 40; end++; break;
  default: return -1;
  }
  if (*end == 'i' && end[1] == 'B')
    end += 2;
  else if (*end == 'B')
    end++;
  if (*end != '\0' || (shift && v > (UINT64_MAX >> shift)))
    return -1;
  *out = (uint64_t) v << shift;
  return 0;
}
