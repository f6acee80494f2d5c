/* The xenmem stream codec: every record type round-trips; every malformed,
 * misplaced or truncated record is refused with a message naming the
 * record, the field and the value; CRC-32C against known values and a
 * bit-at-a-time model; and random corruption of a valid stream, which the
 * checksums and the padding check must catch every time. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preflight.h"
#include "stream.h"
#include "tap.h"

#define NPAGES 64

static uint8_t page_a[4096], page_b[4096];

static void
put32 (uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = v >> (8 * i);
}

static void
put64 (uint8_t *p, uint64_t v)
{
  put32 (p, (uint32_t) v);
  put32 (p + 4, (uint32_t) (v >> 32));
}

/* A record with any fields at all, framed and checksummed as the format
 * says (written here from doc/xenmem-stream.md, not with the encoder), so
 * that the decoder's checks behind the checksum can be reached. */
static size_t
raw_record (uint8_t *out, uint32_t type, uint32_t seq, const void *body,
            uint32_t body_len)
{
  size_t total = 16 + ((body_len + 7) & ~7u);
  uint32_t crc;

  memset (out, 0, total);
  put32 (out, type);
  put32 (out + 4, body_len);
  put32 (out + 8, seq);
  memcpy (out + 16, body, body_len);
  crc = xm_crc32c (0, out, 12);
  put32 (out + 12, xm_crc32c (crc, out + 16, body_len));
  return total;
}

/* Recompute a record's checksum in place (after a test changed a field). */
static void
recrc (uint8_t *rec)
{
  uint32_t body_len = rec[4] | rec[5] << 8 | rec[6] << 16 |
                      (uint32_t) rec[7] << 24;
  put32 (rec + 12, xm_crc32c (xm_crc32c (0, rec, 12), rec + 16, body_len));
}

static void
header_for (uint8_t *out, uint32_t backend, uint64_t npages)
{
  struct xm_header h = { .version = XM_STREAM_VERSION, .backend = backend,
                         .npages = npages, .flags = 0 };
  xm_encode_header (out, &h);
}

/* Decoder that has read a valid header for NPAGES pages, backend 3 (uffd). */
static void
ready (struct xm_decoder *d)
{
  uint8_t hb[XM_HEADER_SIZE];
  struct xm_header h;

  xm_decoder_init (d);
  header_for (hb, 3, NPAGES);
  if (xm_decode_header (d, hb, sizeof hb, &h) == -1)
    abort ();
}

/* One record through xm_record_body_len then xm_decode_record, as the
 * receiver does.  The record is copied to a buffer of exactly its size so
 * that a sanitizer sees any read past it. */
static int
feed (struct xm_decoder *d, const uint8_t *rec, size_t len,
      struct xm_record *r)
{
  struct xm_record tmp;
  uint8_t *copy;
  int64_t blen;
  int ret;

  if (len < 16)
    return -2;
  blen = xm_record_body_len (d, rec);
  if (blen < 0)
    return -1;
  if ((uint64_t) blen + 16 != len)
    return -2;                  /* caller error */
  copy = malloc (len);
  memcpy (copy, rec, len);
  ret = xm_decode_record (d, copy, len, r ? r : &tmp);
  if (r && ret == 0) {
    /* Pointers into the copy must stay valid for the caller. */
    static uint8_t *keep[64];
    static unsigned nkeep;
    free (keep[nkeep % 64]);
    keep[nkeep++ % 64] = copy;
  }
  else
    free (copy);
  return ret;
}

/* A valid stream: header, ROUND 0, PAGES (3 entries, one zero), ROUND 1,
 * PAGES (1 entry), CONTEXT (13 bytes: padded), END.  OFFS[i] is where
 * record i starts; OFFS[nrec] is the end. */
#define MAXREC 16
static uint8_t *stream;
static size_t stream_len, offs[MAXREC + 1];
static unsigned nrec;

static void
build_stream (void)
{
  static const uint8_t blob[13] = "vcpu-context";
  uint8_t digest[32];
  uint64_t pfns[3] = { 5, 0, NPAGES - 1 };
  bool zero[3] = { false, true, false };
  uint8_t data[3 * 4096];
  size_t o;

  memset (data, 0, sizeof data);
  memcpy (data, page_a, 4096);
  memcpy (data + 2 * 4096, page_b, 4096);
  for (int i = 0; i < 32; i++)
    digest[i] = i * 7;
  stream = malloc (XM_HEADER_SIZE + 5 * 16 + 4 * 4096 + 256);
  header_for (stream, 3, NPAGES);
  o = XM_HEADER_SIZE;
  nrec = 0;
  offs[nrec++] = o;
  o += xm_encode_round (stream + o, 0, 0, 3);
  offs[nrec++] = o;
  o += xm_encode_pages (stream + o, 1, pfns, zero, 3, data);
  offs[nrec++] = o;
  o += xm_encode_round (stream + o, 2, 1, 1);
  offs[nrec++] = o;
  o += xm_encode_pages (stream + o, 3, pfns + 2, NULL, 1, data + 2 * 4096);
  offs[nrec++] = o;
  o += xm_encode_context (stream + o, 4, 3, blob, sizeof blob);
  offs[nrec++] = o;
  o += xm_encode_end (stream + o, 5, 4, digest);
  offs[nrec] = o;
  stream_len = o;
}

/* Decode BUF[0..len) as a whole stream, as the receiver reads it: the
 * number of records accepted, or -1 (D->err says why; a stream that ends
 * inside a record is the receiver's EOF error, written here).  Never looks
 * past LEN: each length comes from xm_record_body_len and is checked
 * against what is left before the body is touched. */
static int
decode_stream (struct xm_decoder *d, const uint8_t *buf, size_t len,
               bool *ended)
{
  struct xm_header h;
  struct xm_record r;
  size_t o = XM_HEADER_SIZE;
  int n = 0;

  *ended = false;
  xm_decoder_init (d);
  if (len < XM_HEADER_SIZE || xm_decode_header (d, buf, len, &h) == -1)
    return -1;
  while (o < len) {
    int64_t blen;
    if (len - o < 16)
      goto short_read;
    blen = xm_record_body_len (d, buf + o);
    if (blen < 0)
      return -1;
    if ((uint64_t) blen > len - o - 16)
      goto short_read;
    if (xm_decode_record (d, buf + o, 16 + blen, &r) == -1)
      return -1;
    /* What the receiver would then trust. */
    if (r.type == XM_REC_PAGES) {
      for (uint32_t i = 0; i < r.u.pages.count; i++) {
        uint64_t e = 0;
        memcpy (&e, r.u.pages.pfns + 8 * i, 8);
        if ((e & XM_PFN_MASK) >= d->npages)
          abort ();
      }
      if (r.u.pages.data + 4096 * (size_t) r.u.pages.ndata > buf + len)
        abort ();
    }
    if (r.type == XM_REC_END)
      *ended = true;
    o += 16 + blen;
    n++;
  }
  return n;

 short_read:
  snprintf (d->err, sizeof d->err, "the stream ends inside record %d", n);
  return -1;
}

static bool
has (const struct xm_decoder *d, const char *s)
{
  if (strstr (d->err, s))
    return true;
  printf ("#   error was: %s\n#   wanted:    %s\n", d->err, s);
  return false;
}

/* ---- tests ------------------------------------------------------------- */

static uint32_t
crc_model (const uint8_t *p, size_t n)
{
  uint32_t c = ~0u;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
  }
  return ~c;
}

static void
test_crc (void)
{
  uint8_t buf[1000];
  int bad = 0;

  ok (xm_crc32c (0, "123456789", 9) == 0xe3069283,
      "crc32c(\"123456789\") = 0xe3069283");
  ok (xm_crc32c (0, "", 0) == 0, "crc32c of nothing is 0");
  {
    uint8_t z[32] = { 0 };
    ok (xm_crc32c (0, z, 32) == 0x8a9136aa, "crc32c of 32 zero bytes "
        "(RFC 3720 B.4) = 0x8a9136aa");
  }
  {
    int diff = 0;
    srand (11);
    for (int t = 0; t < 2000; t++) {
      size_t s = rand () % 64, n = rand () % (sizeof buf - s);
      uint32_t seed = rand ();
      for (size_t i = 0; i < sizeof buf; i++)
        buf[i] = rand ();
      diff += xm_crc32c (seed, buf + s, n) != xm_crc32c_sw (seed, buf + s, n);
    }
    ok (diff == 0 && xm_crc32c_sw (0, "123456789", 9) == 0xe3069283,
        "the instruction and the table agree (2000 random spans)");
  }
  srand (7);
  for (int t = 0; t < 2000; t++) {
    size_t s = rand () % 64, n = rand () % (sizeof buf - s), cut;
    for (size_t i = 0; i < sizeof buf; i++)
      buf[i] = rand ();
    cut = n ? rand () % n : 0;
    if (xm_crc32c (0, buf + s, n) != crc_model (buf + s, n) ||
        xm_crc32c (xm_crc32c (0, buf + s, cut), buf + s + cut, n - cut) !=
        crc_model (buf + s, n))
      bad++;
  }
  ok (bad == 0, "crc32c equals a bit-at-a-time model at every alignment, "
      "and chains (2000 buffers)");
}

static void
test_roundtrip (void)
{
  struct xm_decoder d, a;
  struct xm_header h;
  struct xm_record r;
  uint8_t *buf = malloc (XM_REC_MAX), hb[XM_HEADER_SIZE];
  uint64_t *pfns = malloc (8 * XM_BATCH_MAX);
  uint8_t *data = malloc ((size_t) XM_BATCH_MAX * 4096);
  bool *zero = calloc (XM_BATCH_MAX, 1);
  uint8_t digest[32], blob[1000];
  size_t n;
  bool good;

  xm_decoder_init (&d);
  {
    struct xm_header in = { XM_STREAM_VERSION, 3, 1ull << 40, 0 };
    n = xm_encode_header (hb, &in);
  }
  ok (n == 32 && memcmp (hb, "SXMXMEM\n", 8) == 0 && hb[8] == 2 &&
      hb[12] == 3 && hb[16 + 5] == 1, "header: 32 bytes, magic, version, "
      "backend, npages little-endian at their offsets");
  ok (xm_decode_header (&d, hb, n, &h) == 0 && h.version == 2 &&
      h.backend == 3 && h.npages == 1ull << 40 && h.flags == 0,
      "header round-trips (npages 2^40, uffd)");

  /* Make the full-size PAGES record fit this decoder. */
  xm_decoder_init (&d);
  header_for (hb, 3, 1ull << 20);
  xm_decode_header (&d, hb, sizeof hb, &h);

  n = xm_encode_round (buf, 0, 0, 12345);
  ok (n == 32 && feed (&d, buf, n, &r) == 0 && r.type == XM_REC_ROUND &&
      r.seq == 0 && r.body_len == 16 && r.u.round.round == 0 &&
      r.u.round.pages == 12345, "ROUND round-trips (32 bytes)");

  for (unsigned i = 0; i < XM_BATCH_MAX; i++) {
    pfns[i] = (1ull << 20) - 1 - i * 7;
    memset (data + (size_t) i * 4096, i & 0xff, 4096);
  }
  n = xm_encode_pages (buf, 1, pfns, NULL, XM_BATCH_MAX, data);
  ok (n == XM_REC_MAX, "a full batch of data pages is XM_REC_MAX bytes");
  good = feed (&d, buf, n, &r) == 0 && r.type == XM_REC_PAGES &&
         r.u.pages.count == XM_BATCH_MAX && r.u.pages.ndata == XM_BATCH_MAX;
  for (unsigned i = 0; good && i < XM_BATCH_MAX; i++) {
    uint64_t e = 0;
    for (int k = 0; k < 8; k++)
      e |= (uint64_t) r.u.pages.pfns[8 * i + k] << (8 * k);
    good = e == pfns[i] &&
           memcmp (r.u.pages.data + (size_t) i * 4096,
                   data + (size_t) i * 4096, 4096) == 0;
  }
  ok (good, "PAGES: 1024 data pages round-trip, pfns and data in order");

  for (unsigned i = 0; i < 10; i++)
    zero[i] = i % 3 != 1;       /* 1, 4, 7 carry data */
  n = xm_encode_pages (buf, 2, pfns, zero, 10, data);
  good = n == 16 + 8 + 80 + 3 * 4096 && feed (&d, buf, n, &r) == 0 &&
         r.u.pages.count == 10 && r.u.pages.ndata == 3;
  for (unsigned i = 0, k = 0; good && i < 10; i++) {
    uint64_t e = 0;
    for (int b = 0; b < 8; b++)
      e |= (uint64_t) r.u.pages.pfns[8 * i + b] << (8 * b);
    good = (e & XM_PFN_MASK) == pfns[i] && !!(e & XM_PFN_ZERO) == zero[i];
    if (good && !zero[i])
      good = memcmp (r.u.pages.data + 4096 * (size_t) k++,
                     data + (size_t) i * 4096, 4096) == 0;
  }
  ok (good, "PAGES: zero pages travel as flagged entries without data");

  memset (zero, 1, XM_BATCH_MAX);
  n = xm_encode_pages (buf, 3, pfns, zero, 5, NULL);
  ok (n == 16 + 48 && feed (&d, buf, n, &r) == 0 && r.u.pages.ndata == 0,
      "PAGES: all zero, no data buffer needed");

  for (unsigned i = 0; i < sizeof blob; i++)
    blob[i] = i * 13;
  n = xm_encode_context (buf, 4, 3, blob, 999);
  ok (n == 16 + 1008 && feed (&d, buf, n, &r) == 0 &&
      r.type == XM_REC_CONTEXT && r.u.context.backend == 3 &&
      r.u.context.len == 999 && memcmp (r.u.context.blob, blob, 999) == 0,
      "CONTEXT round-trips (999 bytes, padded to 1008)");

  for (int i = 0; i < 32; i++)
    digest[i] = 0xa0 + i;
  n = xm_encode_end (buf, 5, 1ull << 33, digest);
  ok (n == 56 && feed (&d, buf, n, &r) == 0 && r.type == XM_REC_END &&
      r.u.end.pages_sent == 1ull << 33 &&
      memcmp (r.u.end.digest, digest, 32) == 0, "END round-trips");

  xm_decoder_init_acks (&a);
  n = xm_encode_ack (buf, 0, 0, "loaded");
  ok (n == 32 && feed (&a, buf, n, &r) == 0 && r.type == XM_REC_ACK &&
      r.u.ack.status == 0 && strcmp (r.u.ack.msg, "loaded") == 0,
      "ACK round-trips on the reply channel");
  {
    char longmsg[301];
    memset (longmsg, 'x', 300);
    longmsg[300] = 0;
    n = xm_encode_ack (buf, 1, -71, longmsg);
    ok (feed (&a, buf, n, &r) == 0 && r.u.ack.status == -71 &&
        strlen (r.u.ack.msg) == XM_ACK_MSG_MAX && r.seq == 1,
        "ACK: negative status kept, a long message cut to 199 bytes");
  }
  n = xm_encode_ack (buf, 2, 5, "");
  ok (feed (&a, buf, n, &r) == 0 && r.u.ack.status == 5 &&
      r.u.ack.msg[0] == 0, "ACK with an empty message");

  free (buf);
  free (pfns);
  free (data);
  free (zero);
}

static void
test_header (void)
{
  struct xm_decoder d;
  struct xm_header h;
  uint8_t hb[XM_HEADER_SIZE];

#define HDR_REJECT(setup, want, what) do {                              \
    header_for (hb, 3, NPAGES);                                         \
    setup;                                                              \
    xm_decoder_init (&d);                                               \
    ok (xm_decode_header (&d, hb, sizeof hb, &h) == -1 && has (&d, want), \
        "header: %s", what);                                            \
  } while (0)
#define FIXCRC put32 (hb + 28, xm_crc32c (0, hb, 28))

  HDR_REJECT (hb[0] = 'X', "bad magic", "bad magic refused");
  HDR_REJECT (hb[7] = 0, "bad magic", "magic without its newline refused");
  HDR_REJECT ((put32 (hb + 8, 1), FIXCRC), "version 1 is not supported",
              "version 1 (no xen preflight) refused");
  HDR_REJECT ((put32 (hb + 8, 3), FIXCRC), "version 3 is not supported",
              "version 3 refused");
  HDR_REJECT (put32 (hb + 8, 3), "version 3 is not supported",
              "version is checked before the checksum");
  HDR_REJECT ((put32 (hb + 24, 2), FIXCRC), "flags 0x2 are not defined",
              "undefined flags refused");
  HDR_REJECT ((put32 (hb + 24, 1), FIXCRC), "check-only (flag 0x1) is for "
              "backend xen", "check-only refused outside backend xen");
  HDR_REJECT (hb[20] ^= 1, "checksum mismatch", "header checksum checked");
  HDR_REJECT (hb[29] ^= 1, "checksum mismatch", "stored checksum checked");
  HDR_REJECT ((put32 (hb + 12, 0), FIXCRC), "backend 0 is unknown",
              "backend 0 refused");
  HDR_REJECT ((put32 (hb + 12, 1), FIXCRC), "backend 1 is unknown (it was a "
              "kvm backend", "backend 1 (the removed kvm) refused");
  HDR_REJECT ((put32 (hb + 12, 5), FIXCRC), "backend 5 is unknown",
              "backend 5 refused");
  HDR_REJECT ((put64 (hb + 16, 0), FIXCRC), "npages 0 is out of range",
              "zero pages refused");
  HDR_REJECT ((put64 (hb + 16, (1ull << 40) + 1), FIXCRC),
              "npages 1099511627777 is out of range", "npages > 2^40 refused");

  header_for (hb, 3, NPAGES);
  xm_decoder_init (&d);
  ok (xm_decode_header (&d, hb, 31, &h) == -1 && has (&d, "truncated: 31"),
      "header: 31 bytes refused");
  ok (xm_decode_header (&d, hb, 32, &h) == 0 &&
      xm_decode_header (&d, hb, 32, &h) == -1 && has (&d, "already read"),
      "header: a second header refused");
  xm_decoder_init_acks (&d);
  ok (xm_decode_header (&d, hb, 32, &h) == -1 &&
      has (&d, "reply channel has no header"),
      "header: refused on the reply channel");
}

static void
test_records (void)
{
  struct xm_decoder d;
  struct xm_record r;
  uint8_t *buf = malloc (XM_REC_MAX + 64), body[4096 + 64];
  uint64_t pfn;
  size_t n;

  /* Framing. */
  ready (&d);
  memset (body, 0, sizeof body);
  n = raw_record (buf, 9, 0, body, 16);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "record 0: unknown type 9"), "unknown type refused by "
      "xm_record_body_len");
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "unknown type 9"),
      "unknown type refused by xm_decode_record");
  n = raw_record (buf, 0, 0, body, 16);
  ok (xm_record_body_len (&d, buf) == -1 && has (&d, "unknown type 0"),
      "type 0 refused");

  put32 (buf, XM_REC_PAGES);
  put32 (buf + 4, XM_REC_MAX - 16 + 1);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "record 0 (PAGES): body length 4202505 is over the limit of "
           "4202504"), "PAGES body one byte over XM_REC_MAX refused before "
      "it is read");
  put32 (buf + 4, 0xffffffffu);
  ok (xm_record_body_len (&d, buf) == -1 && has (&d, "over the limit"),
      "body length 2^32-1 refused");
  put32 (buf + 4, XM_REC_MAX - 16);
  ok (xm_record_body_len (&d, buf) == XM_REC_MAX - 16,
      "body length XM_REC_MAX - 16 allowed");
  put32 (buf, XM_REC_CONTEXT);
  put32 (buf + 4, 8 + XM_CONTEXT_MAX + 1);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "record 0 (CONTEXT): body length 1048585 is over the limit "
           "of 1048584"), "oversize CONTEXT refused before it is read");
  put32 (buf, XM_REC_ROUND);
  put32 (buf + 4, 24);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "record 0 (ROUND): body length 24 is over the limit of 16"),
      "ROUND of the wrong size refused");
  put32 (buf, XM_REC_END);
  put32 (buf + 4, 39);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "(END): body length 39 is under the minimum of 40"),
      "END of the wrong size refused");
  put32 (buf, XM_REC_ACK);
  put32 (buf + 4, 8);
  ok (xm_record_body_len (&d, buf) == -1 &&
      has (&d, "record 0 (ACK): ACK before END"),
      "ACK before END refused on the sender's stream");

  n = xm_encode_round (buf, 1, 0, 0);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 has sequence 1, expected 0"), "sequence must start "
      "at 0");
  n = xm_encode_round (buf, 0, 0, 0);
  buf[20] ^= 4;
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "record 0 (ROUND): checksum "
      "mismatch"), "body checksum checked");
  buf[20] ^= 4;
  buf[9] ^= 1;                  /* seq, under the checksum */
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "checksum mismatch"),
      "header fields are under the checksum");
  buf[9] ^= 1;
  ok (xm_decode_record (&d, buf, n + 8, &r) == -1 &&
      has (&d, "40 bytes given, the record is 32"), "a longer buffer than "
      "the record refused");
  ok (feed (&d, buf, n, &r) == 0 && d.next_seq == 1, "then the record "
      "itself is accepted");

  /* The brief's example messages, exactly. */
  {
    uint8_t hb[XM_HEADER_SIZE];
    struct xm_header h;
    xm_decoder_init (&d);
    header_for (hb, 3, 65536);
    xm_decode_header (&d, hb, sizeof hb, &h);
    for (uint32_t i = 0; i < 7; i++) {
      n = xm_encode_round (buf, i, i, 0);
      feed (&d, buf, n, &r);
    }
    n = xm_encode_round (buf, 9, 7, 0);
    ok (feed (&d, buf, n, &r) == -1 &&
        strcmp (d.err, "record 7 has sequence 9, expected 7") == 0,
        "\"%s\"", d.err);
    for (uint32_t i = 7; i < 12; i++) {
      n = xm_encode_round (buf, i, i, 0);
      feed (&d, buf, n, &r);
    }
    {
      uint64_t p[5] = { 1, 2, 3, 70000, 4 };
      bool z[5] = { true, true, true, true, true };
      n = xm_encode_pages (buf, 12, p, z, 5, NULL);
    }
    ok (feed (&d, buf, n, &r) == -1 &&
        strcmp (d.err, "record 12 (PAGES): entry 3: pfn 70000 is beyond the "
                "guest's 65536 pages") == 0, "\"%s\"", d.err);
  }

  /* Padding and reserved fields. */
  ready (&d);
  n = xm_encode_round (buf, 0, 0, 1);
  feed (&d, buf, n, &r);
  n = xm_encode_context (buf, 1, 3, "abcde", 5);
  buf[16 + 13 + 1] = 0x40;      /* padding after 13 body bytes */
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 1 (CONTEXT): padding byte 1 is 0x40, must be 0"),
      "nonzero padding refused");
  buf[16 + 13 + 1] = 0;
  ok (feed (&d, buf, n, &r) == 0, "then the clean record is accepted");

  ready (&d);
  n = xm_encode_round (buf, 0, 0, 1);
  buf[16 + 5] = 1;
  recrc (buf);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (ROUND): reserved field is 0x100, must be 0"),
      "ROUND reserved field checked");
  n = xm_encode_round (buf, 0, 0, NPAGES + 1);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "round 0 announces 65 pages, the guest has 64"),
      "ROUND announcing more pages than the guest has refused");
  n = xm_encode_round (buf, 0, 0, NPAGES);
  feed (&d, buf, n, &r);

  pfn = 3;
  n = xm_encode_pages (buf, 1, &pfn, NULL, 1, page_a);
  buf[16 + 4] = 2;
  recrc (buf);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 1 (PAGES): reserved field is 0x2, must be 0"),
      "PAGES reserved field checked");

  /* PAGES entries, counts and lengths. */
  memset (body, 0, sizeof body);
  put32 (body, 0);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 1 (PAGES): count 0 is out of range (1 .. 1024)"),
      "count 0 refused");
  put32 (body, XM_BATCH_MAX + 1);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "count 1025 is out of range"),
      "count over XM_BATCH_MAX refused");
  put32 (body, 3);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 16 cannot hold 3 entries"),
      "entry list longer than the body refused before it is walked");

  put32 (body, 1);
  put64 (body + 8, NPAGES);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "entry 0: pfn 64 is beyond the guest's 64 pages"),
      "pfn == npages refused");
  put64 (body + 8, XM_PFN_ZERO | NPAGES);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "pfn 64 is beyond"),
      "zero entry with pfn == npages refused");
  put64 (body + 8, XM_PFN_ZERO | 1ull << 52 | 1);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "entry 0: undefined flag bits in 0x8010000000000001"),
      "flag bit 52 refused");
  put64 (body + 8, XM_PFN_ZERO | 1ull << 62 | 1);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "undefined flag bits"),
      "flag bit 62 refused");
  put64 (body + 8, 1);          /* a data entry, but no data */
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 16, expected 4112 for 1 entries (1 with data)"),
      "data entry without its page refused");
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16 + 4096 + 8);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 4120, expected 4112"),
      "PAGES with extra bytes refused");
  put64 (body + 8, XM_PFN_ZERO | 1);
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16 + 4096);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 4112, expected 16"),
      "zero entry followed by a page refused");
  n = raw_record (buf, XM_REC_PAGES, 1, body, 16);
  ok (feed (&d, buf, n, &r) == 0 && r.u.pages.count == 1 &&
      r.u.pages.ndata == 0, "then a well-formed zero entry is accepted");

  /* CONTEXT. */
  n = xm_encode_context (buf, 2, 2, "x", 1);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 2 (CONTEXT): backend 2, the stream header says 3"),
      "CONTEXT for another backend refused");
  put32 (body, 3);
  put32 (body + 4, XM_CONTEXT_MAX + 1);
  n = raw_record (buf, XM_REC_CONTEXT, 2, body, 8);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "length 1048577 is over the limit of 1048576"),
      "CONTEXT length field over XM_CONTEXT_MAX refused");
  put32 (body + 4, 5);
  n = raw_record (buf, XM_REC_CONTEXT, 2, body, 8 + 4);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 12, expected 13 for a 5-byte context"),
      "CONTEXT length disagreeing with the body refused");
  n = xm_encode_context (buf, 2, 3, NULL, 0);
  ok (feed (&d, buf, n, &r) == 0 && r.u.context.len == 0,
      "an empty CONTEXT is accepted");

  /* ACK on the reply channel. */
  xm_decoder_init_acks (&d);
  put32 (body, 0);
  put32 (body + 4, 200);
  n = raw_record (buf, XM_REC_ACK, 0, body, 8);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (ACK): message length 200 is over the limit of "
           "199"), "ACK msglen 200 refused");
  memset (body + 8, 'm', 200);
  n = raw_record (buf, XM_REC_ACK, 0, body, 208);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 208 is over the limit of 207"),
      "ACK body of 208 bytes refused before it is read");
  put32 (body + 4, 199);
  n = raw_record (buf, XM_REC_ACK, 0, body, 8 + 198);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "body length 206, expected 207 for a 199-byte message"),
      "ACK msglen disagreeing with the body refused");
  put32 (body + 4, 3);
  memcpy (body + 8, "a\0b", 3);
  n = raw_record (buf, XM_REC_ACK, 0, body, 11);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "contains a NUL byte"),
      "ACK message with a NUL refused");
  n = xm_encode_round (buf, 0, 0, 0);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (ROUND): only ACK records travel on the reply "
           "channel"), "ROUND refused on the reply channel");
  n = xm_encode_ack (buf, 1, 0, "ok");
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 has sequence 1, expected 0"),
      "the reply channel has its own sequence from 0");

  free (buf);
}

/* Each order rule: the stream up to a point, then a misplaced record. */
static void
test_order (void)
{
  struct xm_decoder d;
  struct xm_record r;
  uint8_t *buf = malloc (XM_REC_MAX), digest[32] = { 0 };
  uint64_t pfn = 1;
  bool z = true;
  size_t n;

  xm_decoder_init (&d);
  n = xm_encode_round (buf, 0, 0, 0);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (ROUND): the stream header has not been read"),
      "a record before the header refused");

  ready (&d);
  n = xm_encode_pages (buf, 0, &pfn, &z, 1, NULL);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (PAGES): the first record must be ROUND"),
      "PAGES first refused");
  n = xm_encode_context (buf, 0, 3, "c", 1);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (CONTEXT): the first record must be ROUND"),
      "CONTEXT before any ROUND refused");
  n = xm_encode_end (buf, 0, 0, digest);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "first record must be ROUND"),
      "END first refused");
  n = xm_encode_round (buf, 0, 1, 0);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 0 (ROUND): round 1, expected 0"),
      "rounds start at 0");

  n = xm_encode_round (buf, 0, 0, 0);
  feed (&d, buf, n, &r);
  n = xm_encode_round (buf, 1, 0, 0);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "round 0, expected 1"),
      "a repeated round number refused");
  n = xm_encode_round (buf, 1, 2, 0);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "round 2, expected 1"),
      "a skipped round number refused");
  n = xm_encode_end (buf, 1, 0, digest);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 1 (END): END before CONTEXT"), "END before CONTEXT "
      "refused");
  n = xm_encode_round (buf, 1, 1, 0);
  ok (feed (&d, buf, n, &r) == 0, "round 1 follows round 0");
  n = xm_encode_context (buf, 2, 3, "c", 1);
  ok (feed (&d, buf, n, &r) == 0, "CONTEXT after a ROUND accepted");
  n = xm_encode_round (buf, 3, 2, 0);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 3 (ROUND): ROUND after CONTEXT"),
      "ROUND after CONTEXT refused");
  n = xm_encode_pages (buf, 3, &pfn, &z, 1, NULL);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 3 (PAGES): PAGES after CONTEXT"),
      "PAGES after CONTEXT refused");
  n = xm_encode_context (buf, 3, 3, "c", 1);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 3 (CONTEXT): a second CONTEXT"),
      "a second CONTEXT refused");
  n = xm_encode_end (buf, 3, 0, digest);
  ok (feed (&d, buf, n, &r) == 0 && d.end_seen, "END after CONTEXT accepted");
  n = xm_encode_end (buf, 4, 0, digest);
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 4 (END): only the commit (ACK) may follow END"),
      "a second END refused");
  n = xm_encode_round (buf, 4, 2, 0);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "only the commit"),
      "ROUND after END refused");
  n = xm_encode_ack (buf, 4, 0, "commit");
  ok (feed (&d, buf, n, &r) == 0 && r.type == XM_REC_ACK &&
      d.commit_seen, "the commit (ACK) after END accepted");
  n = xm_encode_ack (buf, 5, 0, "commit");
  ok (feed (&d, buf, n, &r) == -1 &&
      has (&d, "record 5 (ACK): nothing may follow the commit"),
      "a second commit refused");
  free (buf);
}

static void
test_stream (void)
{
  struct xm_decoder d, saved;
  struct xm_header h;
  struct xm_record r;
  bool ended;
  int bad = 0, n;

  n = decode_stream (&d, stream, stream_len, &ended);
  ok (n == (int) nrec && ended, "the sample stream decodes: %d records", n);

  /* Truncation at every length of every record, with the decoder in the
   * state that record meets. */
  xm_decoder_init (&d);
  xm_decode_header (&d, stream, stream_len, &h);
  for (unsigned i = 0; i < nrec; i++) {
    size_t total = offs[i + 1] - offs[i];
    for (size_t len = 0; len < total; len++) {
      uint8_t *copy = malloc (len ? len : 1);
      memcpy (copy, stream + offs[i], len);
      saved = d;
      if (xm_decode_record (&d, copy, len, &r) != -1 || !d.err[0] ||
          d.next_seq != saved.next_seq) {
        printf ("# record %u cut to %zu bytes: accepted or state moved\n",
                i, len);
        bad++;
      }
      d = saved;
      free (copy);
    }
    if (xm_decode_record (&d, stream + offs[i], total, &r) == -1)
      bad++;
  }
  ok (bad == 0, "every record cut short at every length is refused "
      "cleanly (%zu cuts)", stream_len - XM_HEADER_SIZE);

  bad = 0;
  for (size_t len = 0; len < stream_len; len++) {
    uint8_t *copy = malloc (len ? len : 1);
    memcpy (copy, stream, len);
    n = decode_stream (&d, copy, len, &ended);
    if (ended)
      bad++;
    free (copy);
  }
  ok (bad == 0, "no prefix of the stream reaches END");
}

/* Every byte of a stream is under a checksum or is padding that must be
 * zero, so every single-byte change must be refused. */
static void
test_mutations (void)
{
  uint8_t *copy = malloc (stream_len);
  struct xm_decoder d;
  unsigned refused = 0, trials = 20000, fixed_ok = 0, fixed_bad = 0;
  bool ended;

  srand (12345);
  for (unsigned t = 0; t < trials; t++) {
    size_t pos = (size_t) rand () % stream_len;
    memcpy (copy, stream, stream_len);
    copy[pos] ^= 1 + rand () % 255;
    if (decode_stream (&d, copy, stream_len, &ended) == -1 && d.err[0])
      refused++;
  }
  ok (refused == trials, "%u of %u single-byte changes refused (or, for a "
      "length made longer, left waiting for bytes that never come)",
      refused, trials);

  /* Behind the checksums: change 1..4 bytes of one record's fields, then
   * re-checksum it, so that the semantic checks are what decide. */
  for (unsigned t = 0; t < trials; t++) {
    unsigned rec = rand () % nrec, k = 1 + rand () % 4;
    size_t start = offs[rec], len = offs[rec + 1] - start;
    int n;
    memcpy (copy, stream, stream_len);
    for (unsigned j = 0; j < k; j++) {
      /* Mostly the first 48 bytes: the header and the fields. */
      size_t pos = rand () % 4 ? rand () % (len < 48 ? len : 48)
                               : rand () % len;
      if (pos >= 12 && pos < 16)
        continue;
      copy[start + pos] = rand () % 3 ? copy[start + pos] ^ (1 << rand () % 8)
                                      : (uint8_t) rand ();
    }
    if ((copy[start + 4] | copy[start + 5] << 8 | copy[start + 6] << 16 |
         (uint32_t) copy[start + 7] << 24) <= len - 16)
      recrc (copy + start);
    n = decode_stream (&d, copy, stream_len, &ended);
    if (n >= 0)
      fixed_ok++;
    else if (d.err[0])
      fixed_bad++;
  }
  ok (fixed_ok + fixed_bad == trials, "%u re-checksummed field changes: %u "
      "refused with a message, %u still valid", trials, fixed_bad, fixed_ok);
  free (copy);
}

/* Backend xen: XENDATA(config) XENDATA(preflight) XENDATA(stream)... END,
 * then the commit;
 * nothing of the page format, and XENDATA nowhere else. */
static void
test_xen (void)
{
  struct xm_decoder d;
  struct xm_record r;
  uint8_t hb[XM_HEADER_SIZE], *buf = malloc (XM_REC_MAX), body[16] = { 0 };
  static const uint8_t digest[32];
  const char *cfg = "{\"c_info\":{\"name\":\"g\"}}";
  size_t n;

  xm_decoder_init (&d);
  header_for (hb, 2, 1000);
  ok (xm_decode_header (&d, hb, sizeof hb, &(struct xm_header) { 0 }) == 0,
      "xen: header");
  n = xm_encode_xendata (buf, 0, XM_XEN_STREAM, "abc", 3);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "before the configuration"),
      "xen: stream data before the configuration refused (%s)", d.err);
  n = xm_encode_end (buf, 0, 0, digest);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "END before the domain's "
      "configuration"), "xen: END before the configuration refused");
  n = xm_encode_round (buf, 0, 0, 10);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "not part of a xen stream"),
      "xen: ROUND refused in a xen stream");
  n = xm_encode_xendata (buf, 0, XM_XEN_CONFIG, cfg, strlen (cfg));
  ok (feed (&d, buf, n, &r) == 0 && r.type == XM_REC_XENDATA &&
      r.u.xendata.kind == XM_XEN_CONFIG && r.u.xendata.len == strlen (cfg) &&
      memcmp (r.u.xendata.data, cfg, strlen (cfg)) == 0,
      "xen: the configuration round-trips");
  ok (feed (&d, buf, xm_encode_xendata (buf, 1, XM_XEN_CONFIG, cfg, 5), &r)
      == -1 && has (&d, "a second configuration"),
      "xen: a second configuration refused");
  n = xm_encode_xendata (buf, 1, XM_XEN_STREAM, "abc", 3);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "stream data before the "
      "preflight"), "xen: stream data before the preflight refused (%s)",
      d.err);
  n = xm_encode_end (buf, 1, 0, digest);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "END before the domain's "
      "preflight"), "xen: END before the preflight refused");
  n = xm_encode_xendata (buf, 1, XM_XEN_PREFLIGHT, "pf", 2);
  ok (feed (&d, buf, n, &r) == 0 && r.u.xendata.kind == XM_XEN_PREFLIGHT &&
      r.u.xendata.len == 2, "xen: the preflight after the configuration");
  n = xm_encode_xendata (buf, 2, XM_XEN_PREFLIGHT, "pf", 2);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "a second preflight"),
      "xen: a second preflight refused");
  n = xm_encode_xendata (buf, 2, XM_XEN_STREAM, page_a, XM_XENDATA_MAX > 4096
                         ? 4096 : XM_XENDATA_MAX);
  ok (feed (&d, buf, n, &r) == 0 && r.u.xendata.kind == XM_XEN_STREAM &&
      r.u.xendata.len == 4096 && memcmp (r.u.xendata.data, page_a, 4096) == 0,
      "xen: stream data round-trips");
  put32 (body, 4);
  n = raw_record (buf, XM_REC_XENDATA, 3, body, 9);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "kind 4 is unknown"),
      "xen: unknown kind refused");
  put32 (body, XM_XEN_STREAM);
  n = raw_record (buf, XM_REC_XENDATA, 3, body, 8);
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "under the minimum"),
      "xen: empty XENDATA refused");
  put32 (buf, XM_REC_XENDATA);
  put32 (buf + 4, 8 + XM_XENDATA_MAX + 1);
  ok (xm_record_body_len (&d, buf) == -1 && has (&d, "over the limit"),
      "xen: XENDATA over 1 MiB refused before its body is read");
  n = xm_encode_end (buf, 3, 4096, digest);
  ok (feed (&d, buf, n, &r) == 0 && r.type == XM_REC_END &&
      r.u.end.pages_sent == 4096, "xen: END after the data");
  n = xm_encode_ack (buf, 4, 0, "commit");
  ok (feed (&d, buf, n, &r) == 0 && r.type == XM_REC_ACK,
      "xen: the commit after END");

  xm_decoder_init (&d);
  header_for (hb, 3, 1000);
  xm_decode_header (&d, hb, sizeof hb, &(struct xm_header) { 0 });
  n = xm_encode_xendata (buf, 0, XM_XEN_CONFIG, cfg, strlen (cfg));
  ok (feed (&d, buf, n, &r) == -1 && has (&d, "for backend xen only"),
      "XENDATA refused in a uffd stream");
  free (buf);
}

/* The preflight body (preflight.c): round trip, every refusal names its
 * field and offset, UUIDs, and the Xen version rule. */
static void
test_preflight (void)
{
  static struct xm_preflight p, q;
  static uint8_t b[24 + 64 * XM_PF_DISKS_MAX + 24 * XM_PF_LEAVES_MAX +
                   16 * XM_PF_MSRS_MAX];
  char err[256], txt[37], why[200];
  uint8_t u[16];
  size_t n;

  ok (xm_uuid_parse ("0F1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", u) == 0 &&
      u[0] == 0x0f && u[15] == 0xf0, "uuid: parses mixed case");
  xm_uuid_format (u, txt);
  ok (strcmp (txt, "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0") == 0,
      "uuid: formats lower case (%s)", txt);
  ok (xm_uuid_parse ("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f", u) == -1 &&
      xm_uuid_parse ("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f00", u) == -1 &&
      xm_uuid_parse ("0f1e2d3c+4b5a-6978-8796-a5b4c3d2e1f0", u) == -1 &&
      xm_uuid_parse ("0g1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", u) == -1,
      "uuid: short, long, bad separator, bad digit refused");

  memset (&p, 0, sizeof p);
  p.xen_major = 4; p.xen_minor = 17;
  p.ndisks = 2; p.nleaves = 3; p.nmsrs = 2;
  strcpy (p.disks[0].vdev, "xvda");
  strcpy (p.disks[1].vdev, "xvdb");
  for (int i = 0; i < 16; i++)
    p.disks[0].uuid[i] = i, p.disks[1].uuid[i] = 0xf0 | i;
  for (uint32_t i = 0; i < p.nleaves; i++)
    p.leaves[i] = (struct xm_pf_leaf) { i, 0, 0x11 * i, 0x22, 0x33, 0x44 };
  p.msrs[0] = (struct xm_pf_msr) { 0xce, 0, 1ull << 40 };
  p.msrs[1] = (struct xm_pf_msr) { 0x10a, 0, 7 };
  n = xm_preflight_encode (&p, b);
  ok (n == 24 + 2 * 64 + 3 * 24 + 2 * 16 && n == xm_preflight_size (&p),
      "preflight: %zu bytes", n);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == 0 &&
      q.xen_major == 4 && q.xen_minor == 17 && q.ndisks == 2 &&
      strcmp (q.disks[1].vdev, "xvdb") == 0 && q.disks[1].uuid[3] == 0xf3 &&
      q.nleaves == 3 && q.leaves[2].a == 0x22 && q.nmsrs == 2 &&
      q.msrs[0].val == 1ull << 40 && q.msrs[1].idx == 0x10a,
      "preflight: round-trips");

  ok (xm_preflight_decode (b, 23, &q, err, sizeof err) == -1 &&
      strstr (err, "shorter than its 24-byte header"), "preflight: short "
      "refused (%s)", err);
  ok (xm_preflight_decode (b, n - 1, &q, err, sizeof err) == -1 &&
      strstr (err, "make 256"), "preflight: length not what the counts make "
      "refused (%s)", err);
  b[20] = 1;
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "offset 20"), "preflight: reserved field refused (%s)", err);
  b[20] = 0;
  put32 (b + 8, XM_PF_DISKS_MAX + 1);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "ndisks (offset 8) is 17"), "preflight: too many disks "
      "refused (%s)", err);
  put32 (b + 8, 2);
  put32 (b + 12, 0xffffffff);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "nleaves (offset 12)"), "preflight: huge leaf count "
      "refused before any length arithmetic (%s)", err);
  put32 (b + 12, 3);
  put32 (b + 16, XM_PF_MSRS_MAX + 1);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "nmsrs (offset 16)"), "preflight: too many MSRs refused");
  put32 (b + 16, 2);
  b[24 + 64 + 2] = 'D';
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "disk 1 (offset 90): byte 0x44"), "preflight: a bad byte "
      "in a device name refused (%s)", err);
  strcpy ((char *) b + 24 + 64, "xvda");
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "device xvda a second time"), "preflight: the same device "
      "twice refused (%s)", err);
  b[24 + 64 + 3] = 'b';
  b[24 + 64 + 10] = 'x';
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "after the device name's NUL"), "preflight: bytes after "
      "the NUL refused (%s)", err);
  b[24 + 64 + 10] = 0;
  memset (b + 24, 'a', 32);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "not NUL-terminated"), "preflight: unterminated device "
      "name refused (%s)", err);
  memset (b + 24, 0, 32);
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "disk 0 (offset 24): the device name is empty"),
      "preflight: empty device name refused (%s)", err);
  strcpy ((char *) b + 24, "xvda");
  b[24 + 50] = 1;
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "reserved bytes"), "preflight: a disk's reserved bytes "
      "refused");
  b[24 + 50] = 0;
  b[n - 16 + 4] = 1;
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == -1 &&
      strstr (err, "MSR 1 (offset 244): flags 0x1"), "preflight: MSR flags "
      "refused (%s)", err);
  b[n - 16 + 4] = 0;
  ok (xm_preflight_decode (b, n, &q, err, sizeof err) == 0,
      "preflight: valid again once mended");

  ok (xm_xen_version_ok (4, 17, 4, 17, why, sizeof why) == 0 &&
      xm_xen_version_ok (4, 17, 4, 18, why, sizeof why) == 0,
      "xen version: same or newer minor allowed");
  ok (xm_xen_version_ok (4, 17, 4, 16, why, sizeof why) == -1 &&
      strstr (why, "older Xen 4.16"), "xen version: older refused (%s)", why);
  ok (xm_xen_version_ok (4, 17, 5, 0, why, sizeof why) == -1 &&
      strstr (why, "one major release"), "xen version: other major refused");
}

int
main (void)
{
  for (int i = 0; i < 4096; i++) {
    page_a[i] = i * 31 + 1;
    page_b[i] = 0xff - i;
  }
  build_stream ();
  test_crc ();
  test_roundtrip ();
  test_header ();
  test_records ();
  test_order ();
  test_stream ();
  test_mutations ();
  test_xen ();
  test_preflight ();
  free (stream);
  return tap_done ();
}
