/* One-line JSON messages, as spoken on the mirror filter's control socket
 * (doc/nbdkit-mirror-filter.pod) by the filter, sxm-mirror and sxm-copy.
 *
 * Only what the protocol needs: a request or reply is one flat object whose
 * values are strings, numbers, booleans or null.  Nested objects and arrays
 * are refused (the protocol has none), as are duplicate keys, embedded NULs
 * and anything after the closing brace but white space.  Every refusal
 * names the byte offset. */
#ifndef SXM_JSONLINE_H
#define SXM_JSONLINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_FIELDS 64
#define JSON_MAX_LINE   65536

enum json_type { JSON_STRING, JSON_NUMBER, JSON_BOOL, JSON_NULL };

struct json_field {
  char *key;
  enum json_type type;
  char *str;                    /* JSON_STRING: decoded, NUL-terminated */
  double num;                   /* JSON_NUMBER */
  bool b;                       /* JSON_BOOL */
};

struct json_obj {
  unsigned n;
  struct json_field f[JSON_MAX_FIELDS];
  char *strings;                /* one allocation holding every key and str */
};

/* Parse TEXT[0..len) as one object.  0 on success (free with json_free);
 * -1 with a message in err (which names the offset) and nothing to free. */
int json_parse (const char *text, size_t len, struct json_obj *o,
                char *err, size_t errlen);
void json_free (struct json_obj *o);

/* Lookups.  json_str: the string, or NULL if absent or not a string.
 * json_num / json_bool: 1 found (stored in *out), 0 absent, -1 other type.
 * json_u64: like json_num, and -1 unless a whole number in [0, 2^53]. */
const char *json_str (const struct json_obj *o, const char *key);
int json_num (const struct json_obj *o, const char *key, double *out);
int json_u64 (const struct json_obj *o, const char *key, uint64_t *out);
int json_bool (const struct json_obj *o, const char *key, bool *out);
bool json_has (const struct json_obj *o, const char *key);

/* Building a reply: a growing buffer.  On allocation failure the buffer
 * remembers it (oom) and later appends do nothing. */
struct jbuf {
  char *s;
  size_t len, cap;
  bool oom;
};

void jbuf_add (struct jbuf *b, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));
void jbuf_str (struct jbuf *b, const char *s);  /* a quoted, escaped string */
void jbuf_free (struct jbuf *b);

#endif
