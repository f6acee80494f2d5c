#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonline.h"

struct parser {
  const char *s;
  size_t len, pos;
  char *out;                    /* where the next decoded string goes */
  char *err;
  size_t errlen;
};

static int
fail (struct parser *p, const char *what)
{
  snprintf (p->err, p->errlen, "%s at byte %zu", what, p->pos);
  return -1;
}

static void
skip_ws (struct parser *p)
{
  while (p->pos < p->len && (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' ||
                             p->s[p->pos] == '\r' || p->s[p->pos] == '\n'))
    p->pos++;
}

static int
hex4 (struct parser *p, unsigned *v)
{
  *v = 0;
  if (p->len - p->pos < 4)
    return fail (p, "truncated \\u escape");
  for (int i = 0; i < 4; i++) {
    char c = p->s[p->pos++];
    *v <<= 4;
    if (c >= '0' && c <= '9') *v |= c - '0';
    else if (c >= 'a' && c <= 'f') *v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') *v |= c - 'A' + 10;
    else { p->pos--; return fail (p, "bad hex digit in \\u escape"); }
  }
  return 0;
}

static void
put_utf8 (struct parser *p, unsigned cp)
{
  if (cp < 0x80)
    *p->out++ = cp;
  else if (cp < 0x800) {
    *p->out++ = 0xc0 | (cp >> 6);
    *p->out++ = 0x80 | (cp & 0x3f);
  }
  else if (cp < 0x10000) {
    *p->out++ = 0xe0 | (cp >> 12);
    *p->out++ = 0x80 | ((cp >> 6) & 0x3f);
    *p->out++ = 0x80 | (cp & 0x3f);
  }
  else {
    *p->out++ = 0xf0 | (cp >> 18);
    *p->out++ = 0x80 | ((cp >> 12) & 0x3f);
    *p->out++ = 0x80 | ((cp >> 6) & 0x3f);
    *p->out++ = 0x80 | (cp & 0x3f);
  }
}

/* A string at p->pos (which is at the opening quote).  Decoded output never
 * exceeds the input length, so the caller's buffer of len+1 bytes per
 * string position suffices. */
static int
parse_string (struct parser *p, char **result)
{
  *result = p->out;
  p->pos++;
  for (;;) {
    unsigned char c;
    if (p->pos >= p->len)
      return fail (p, "unterminated string");
    c = p->s[p->pos++];
    if (c == '"')
      break;
    if (c < 0x20) {
      p->pos--;
      return fail (p, "control character in string");
    }
    if (c != '\\') {
      *p->out++ = c;
      continue;
    }
    if (p->pos >= p->len)
      return fail (p, "unterminated escape");
    c = p->s[p->pos++];
    switch (c) {
    case '"': case '\\': case '/': *p->out++ = c; break;
    case 'b': *p->out++ = '\b'; break;
    case 'f': *p->out++ = '\f'; break;
    case 'n': *p->out++ = '\n'; break;
    case 'r': *p->out++ = '\r'; break;
    case 't': *p->out++ = '\t'; break;
    case 'u': {
      unsigned cp, lo;
      if (hex4 (p, &cp) == -1)
        return -1;
      if (cp >= 0xdc00 && cp <= 0xdfff)
        return fail (p, "lone low surrogate");
      if (cp >= 0xd800 && cp <= 0xdbff) {
        if (p->len - p->pos < 6 || p->s[p->pos] != '\\' ||
            p->s[p->pos + 1] != 'u')
          return fail (p, "high surrogate without its low half");
        p->pos += 2;
        if (hex4 (p, &lo) == -1)
          return -1;
        if (lo < 0xdc00 || lo > 0xdfff)
          return fail (p, "bad low surrogate");
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
      }
      if (cp == 0)
        return fail (p, "NUL character in string");
      put_utf8 (p, cp);
      break;
    }
    default:
      p->pos--;
      return fail (p, "unknown escape");
    }
  }
  *p->out++ = 0;
  return 0;
}

static int
parse_number (struct parser *p, double *v)
{
  size_t start = p->pos;
  char tmp[64], *end;

  if (p->pos < p->len && p->s[p->pos] == '-')
    p->pos++;
  if (p->pos >= p->len || !(p->s[p->pos] >= '0' && p->s[p->pos] <= '9'))
    return fail (p, "bad number");
  if (p->s[p->pos] == '0' && p->pos + 1 < p->len &&
      p->s[p->pos + 1] >= '0' && p->s[p->pos + 1] <= '9')
    return fail (p, "leading zero in number");
  while (p->pos < p->len && strchr ("0123456789.eE+-", p->s[p->pos]))
    p->pos++;
  if (p->pos - start >= sizeof tmp)
    return fail (p, "number too long");
  memcpy (tmp, p->s + start, p->pos - start);
  tmp[p->pos - start] = 0;
  errno = 0;
  *v = strtod (tmp, &end);
  if (*end || errno == ERANGE || !isfinite (*v)) {
    p->pos = start;
    return fail (p, "bad number");
  }
  return 0;
}

static bool
word (struct parser *p, const char *w)
{
  size_t n = strlen (w);
  if (p->len - p->pos >= n && memcmp (p->s + p->pos, w, n) == 0) {
    p->pos += n;
    return true;
  }
  return false;
}

int
json_parse (const char *text, size_t len, struct json_obj *o,
            char *err, size_t errlen)
{
  struct parser p = { .s = text, .len = len, .err = err, .errlen = errlen };

  memset (o, 0, sizeof *o);
  if (len > JSON_MAX_LINE) {
    snprintf (err, errlen, "message longer than %d bytes", JSON_MAX_LINE);
    return -1;
  }
  if (memchr (text, 0, len)) {
    p.pos = (const char *) memchr (text, 0, len) - text;
    return fail (&p, "NUL byte");
  }
  o->strings = p.out = malloc (len + 1);
  if (!o->strings) {
    snprintf (err, errlen, "out of memory");
    return -1;
  }
  skip_ws (&p);
  if (p.pos >= len || text[p.pos] != '{') {
    fail (&p, "expected '{'");
    goto bad;
  }
  p.pos++;
  skip_ws (&p);
  if (p.pos < len && text[p.pos] == '}')
    p.pos++;
  else
    for (;;) {
      struct json_field *f;
      skip_ws (&p);
      if (p.pos >= len || text[p.pos] != '"') {
        fail (&p, "expected a key string");
        goto bad;
      }
      if (o->n == JSON_MAX_FIELDS) {
        fail (&p, "too many fields");
        goto bad;
      }
      f = &o->f[o->n];
      if (parse_string (&p, &f->key) == -1)
        goto bad;
      if (json_has (o, f->key)) {
        fail (&p, "duplicate key");
        goto bad;
      }
      skip_ws (&p);
      if (p.pos >= len || text[p.pos] != ':') {
        fail (&p, "expected ':'");
        goto bad;
      }
      p.pos++;
      skip_ws (&p);
      if (p.pos >= len) {
        fail (&p, "expected a value");
        goto bad;
      }
      if (text[p.pos] == '"') {
        f->type = JSON_STRING;
        if (parse_string (&p, &f->str) == -1)
          goto bad;
      }
      else if (text[p.pos] == '{' || text[p.pos] == '[') {
        fail (&p, "nested objects and arrays are not part of the protocol");
        goto bad;
      }
      else if (word (&p, "true")) { f->type = JSON_BOOL; f->b = true; }
      else if (word (&p, "false")) { f->type = JSON_BOOL; f->b = false; }
      else if (word (&p, "null")) f->type = JSON_NULL;
      else {
        f->type = JSON_NUMBER;
        if (parse_number (&p, &f->num) == -1)
          goto bad;
      }
      o->n++;
      skip_ws (&p);
      if (p.pos < len && text[p.pos] == ',') {
        p.pos++;
        continue;
      }
      if (p.pos < len && text[p.pos] == '}') {
        p.pos++;
        break;
      }
      fail (&p, "expected ',' or '}'");
      goto bad;
    }
  skip_ws (&p);
  if (p.pos != len) {
    fail (&p, "trailing characters after the object");
    goto bad;
  }
  return 0;
 bad:
  free (o->strings);
  memset (o, 0, sizeof *o);
  return -1;
}

void
json_free (struct json_obj *o)
{
  free (o->strings);
  o->strings = NULL;
  o->n = 0;
}

static const struct json_field *
find (const struct json_obj *o, const char *key)
{
  for (unsigned i = 0; i < o->n; i++)
    if (strcmp (o->f[i].key, key) == 0)
      return &o->f[i];
  return NULL;
}

bool
json_has (const struct json_obj *o, const char *key)
{
  return find (o, key) != NULL;
}

const char *
json_str (const struct json_obj *o, const char *key)
{
  const struct json_field *f = find (o, key);
  return f && f->type == JSON_STRING ? f->str : NULL;
}

int
json_num (const struct json_obj *o, const char *key, double *out)
{
  const struct json_field *f = find (o, key);
  if (!f)
    return 0;
  if (f->type != JSON_NUMBER)
    return -1;
  *out = f->num;
  return 1;
}

int
json_u64 (const struct json_obj *o, const char *key, uint64_t *out)
{
  double d;
  int r = json_num (o, key, &d);
  if (r != 1)
    return r;
  if (!(d >= 0 && d <= 9007199254740992.0) || d != (double) (uint64_t) d)
    return -1;
  *out = (uint64_t) d;
  return 1;
}

int
json_bool (const struct json_obj *o, const char *key, bool *out)
{
  const struct json_field *f = find (o, key);
  if (!f)
    return 0;
  if (f->type != JSON_BOOL)
    return -1;
  *out = f->b;
  return 1;
}

static void
jbuf_reserve (struct jbuf *b, size_t more)
{
  char *n;
  size_t cap;

  if (b->oom || b->len + more + 1 <= b->cap)
    return;
  cap = b->cap ? b->cap : 256;
  while (cap < b->len + more + 1)
    cap *= 2;
  n = realloc (b->s, cap);
  if (!n) {
    b->oom = true;
    return;
  }
  b->s = n;
  b->cap = cap;
}

void
jbuf_add (struct jbuf *b, const char *fmt, ...)
{
  va_list ap;
  int n;

  va_start (ap, fmt);
  n = vsnprintf (NULL, 0, fmt, ap);
  va_end (ap);
  if (n < 0) {
    b->oom = true;
    return;
  }
  jbuf_reserve (b, n);
  if (b->oom)
    return;
  va_start (ap, fmt);
  vsnprintf (b->s + b->len, n + 1, fmt, ap);
  va_end (ap);
  b->len += n;
}

void
jbuf_str (struct jbuf *b, const char *s)
{
  jbuf_reserve (b, strlen (s) * 6 + 2);
  if (b->oom)
    return;
  b->s[b->len++] = '"';
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\') {
      b->s[b->len++] = '\\';
      b->s[b->len++] = c;
    }
    else if (c < 0x20 || c == 0x7f)
      b->len += sprintf (b->s + b->len, "\\u%04x", c);
    else
      b->s[b->len++] = c;
  }
  b->s[b->len++] = '"';
  b->s[b->len] = 0;
}

void
jbuf_free (struct jbuf *b)
{
  free (b->s);
  memset (b, 0, sizeof *b);
}
