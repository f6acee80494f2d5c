/* libFuzzer harness: the control sockets' request parser (common/jsonline.c),
 * which every byte a local client sends to the mirror filter goes through,
 * plus every typed accessor the filter and sxm-mirror call on the result,
 * and the reply builder on whatever strings came out. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jsonline.h"

static const char *const keys[] = {
  "cmd", "dest", "export", "connections", "timeout", "insecure", "verify",
  "ok", "state", "error", "",
};

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct json_obj o;
  char err[256];
  struct jbuf b = { 0 };

  if (json_parse ((const char *) data, size, &o, err, sizeof err) == -1) {
    /* The message must be a terminated string. */
    if (strnlen (err, sizeof err) == sizeof err)
      abort ();
    return 0;
  }
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    double d;
    uint64_t u;
    bool v;
    const char *s = json_str (&o, keys[i]);
    json_num (&o, keys[i], &d);
    json_u64 (&o, keys[i], &u);
    json_bool (&o, keys[i], &v);
    json_has (&o, keys[i]);
    if (s) {
      jbuf_add (&b, ",\"%s\":", keys[i]);
      jbuf_str (&b, s);
    }
  }
  /* Every field's strings come back out escaped: no crash, no overrun. */
  for (unsigned i = 0; i < o.n; i++) {
    jbuf_str (&b, o.f[i].key);
    if (o.f[i].type == JSON_STRING)
      jbuf_str (&b, o.f[i].str);
  }
  jbuf_free (&b);
  json_free (&o);
  return 0;
}
