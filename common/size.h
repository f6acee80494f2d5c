/* Human sizes on the command line: "10G" = 10 * 2^30, "512K", "4MiB", plain
 * numbers are bytes.  Shared by every sxm tool so that they all accept the
 * same spellings. */
#ifndef SXM_SIZE_H
#define SXM_SIZE_H

#include <stdint.h>

/* Returns 0 and sets *out, or -1 on anything that is not a size. */
int parse_size (const char *s, uint64_t *out);

#endif
