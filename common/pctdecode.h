/* Percent-encoding ("%2F") in URIs: MacX parent locators (common/vhd.c)
 * and NBD URI query values (common/nbdpolicy.c).
 *
 * sscanf ("%2x") is not the tool: it skips white space, takes a sign and
 * stops after one digit, and a caller that then skips two characters
 * walks past the end of "%A" (found by fuzz-vhd-open after 8,963,763
 * executions: a heap read overflow in locator_path). */
#ifndef SXM_PCTDECODE_H
#define SXM_PCTDECODE_H

static inline int
pct_hexdigit (char c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The byte that "%XY" at S encodes (S[0] == '%'), or -1 unless S[1] and
 * S[2] are both hex digits.  S must be NUL-terminated or have at least
 * 3 readable bytes; S[2] is not read when S[1] is not a digit. */
static inline int
pct_decode (const char *s)
{
  int hi, lo;

  if (s[0] != '%' || (hi = pct_hexdigit (s[1])) < 0 ||
      (lo = pct_hexdigit (s[2])) < 0)
    return -1;
  return hi << 4 | lo;
}

#endif
