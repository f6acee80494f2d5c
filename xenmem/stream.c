/* The xenmem stream codec (stream.h; the byte layout is in
 * doc/xenmem-stream.md).
 *
 * The decoder is the receiver's only defence against a confused or hostile
 * sender: every length is checked against the buffer before a byte of it
 * is read, every field against the stream's state, and every error names
 * the record, the field and the value, so that a refused migration says
 * why.  The encoder trusts its caller (the engine). */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "endian.h"
#include "stream.h"

/* ---- CRC-32C ----------------------------------------------------------- */

/* Slicing-by-8: a data-page record is 4 MiB, and a byte-at-a-time CRC
 * (~0.5 GB/s) would cap the migration below what a 10 GbE link carries.
 * Tables are built once, on first use, from the reflected polynomial. */
#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void
crc_init (void)
{
  for (unsigned i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? (c >> 1) ^ CRC32C_POLY : c >> 1;
    crc_table[0][i] = c;
  }
  for (unsigned i = 0; i < 256; i++)
    for (int t = 1; t < 8; t++)
      crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^
                        crc_table[0][crc_table[t - 1][i] & 0xff];
}

#if defined(__x86_64__)
/* The same CRC with SSE4.2's crc32 instruction (Castagnoli, reflected):
 * ~10x the table's speed, and it was 10-13% of a transfer's CPU. */
__attribute__ ((target ("sse4.2")))
static uint32_t
crc32c_hw (uint32_t crc, const uint8_t *p, size_t len)
{
  uint64_t c = ~crc;

  while (len >= 8) {
    uint64_t v;
    memcpy (&v, p, 8);
    c = __builtin_ia32_crc32di (c, v);
    p += 8;
    len -= 8;
  }
  while (len--)
    c = __builtin_ia32_crc32qi ((uint32_t) c, *p++);
  return ~(uint32_t) c;
}
#endif

uint32_t
xm_crc32c (uint32_t crc, const void *buf, size_t len)
{
  const uint8_t *p = buf;

#if defined(__x86_64__)
  if (__builtin_cpu_supports ("sse4.2"))
    return crc32c_hw (crc, p, len);
#endif
  return xm_crc32c_sw (crc, p, len);
}

uint32_t
xm_crc32c_sw (uint32_t crc, const void *buf, size_t len)
{
  const uint8_t *p = buf;

  pthread_once (&crc_once, crc_init);
  crc = ~crc;
  while (len >= 8) {
    uint32_t lo = crc ^ le32_load (p), hi = le32_load (p + 4);
    crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
          crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^
          crc_table[3][hi & 0xff] ^ crc_table[2][(hi >> 8) & 0xff] ^
          crc_table[1][(hi >> 16) & 0xff] ^ crc_table[0][hi >> 24];
    p += 8;
    len -= 8;
  }
  while (len--)
    crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

uint64_t
xm_pages_entry (const struct xm_record *r, uint32_t i)
{
  return le64_load (r->u.pages.pfns + 8 * (size_t) i);
}

/* ---- encoding ---------------------------------------------------------- */

static size_t
padded (size_t n)
{
  return (n + 7) & ~(size_t) 7;
}

/* Fill in the record header around a body already at OUT + 16, and zero
 * the padding after it. */
static size_t
finish_record (uint8_t *out, uint32_t type, uint32_t seq, uint32_t body_len)
{
  size_t total = XM_REC_HDR_SIZE + padded (body_len);
  uint32_t crc;

  le32_store (out, type);
  le32_store (out + 4, body_len);
  le32_store (out + 8, seq);
  crc = xm_crc32c (0, out, 12);
  crc = xm_crc32c (crc, out + XM_REC_HDR_SIZE, body_len);
  le32_store (out + 12, crc);
  memset (out + XM_REC_HDR_SIZE + body_len, 0,
          total - XM_REC_HDR_SIZE - body_len);
  return total;
}

size_t
xm_encode_header (uint8_t *out, const struct xm_header *h)
{
  memcpy (out, XM_STREAM_MAGIC, 8);
  le32_store (out + 8, h->version);
  le32_store (out + 12, h->backend);
  le64_store (out + 16, h->npages);
  le32_store (out + 24, h->flags);
  le32_store (out + 28, xm_crc32c (0, out, 28));
  return XM_HEADER_SIZE;
}

size_t
xm_encode_round (uint8_t *out, uint32_t seq, uint32_t round, uint64_t pages)
{
  uint8_t *b = out + XM_REC_HDR_SIZE;

  le32_store (b, round);
  le32_store (b + 4, 0);
  le64_store (b + 8, pages);
  return finish_record (out, XM_REC_ROUND, seq, 16);
}

size_t
xm_encode_pages (uint8_t *out, uint32_t seq, const uint64_t *pfns,
                 const bool *zero, unsigned n, const uint8_t *data)
{
  uint8_t *b = out + XM_REC_HDR_SIZE, *d = b + 8 + 8 * (size_t) n;
  size_t body;

  le32_store (b, n);
  le32_store (b + 4, 0);
  for (unsigned i = 0; i < n; i++) {
    bool z = zero && zero[i];
    le64_store (b + 8 + 8 * (size_t) i, pfns[i] | (z ? XM_PFN_ZERO : 0));
    if (!z) {
      memcpy (d, data + (size_t) i * 4096, 4096);
      d += 4096;
    }
  }
  body = d - b;
  return finish_record (out, XM_REC_PAGES, seq, body);
}

size_t
xm_encode_context (uint8_t *out, uint32_t seq, uint32_t backend,
                   const void *blob, uint32_t len)
{
  uint8_t *b = out + XM_REC_HDR_SIZE;

  le32_store (b, backend);
  le32_store (b + 4, len);
  if (len)
    memcpy (b + 8, blob, len);
  return finish_record (out, XM_REC_CONTEXT, seq, 8 + len);
}

size_t
xm_encode_end (uint8_t *out, uint32_t seq, uint64_t pages_sent,
               const uint8_t digest[32])
{
  uint8_t *b = out + XM_REC_HDR_SIZE;

  le64_store (b, pages_sent);
  memcpy (b + 8, digest, 32);
  return finish_record (out, XM_REC_END, seq, 40);
}

size_t
xm_encode_xendata (uint8_t *out, uint32_t seq, uint32_t kind,
                   const void *data, uint32_t len)
{
  uint8_t *b = out + XM_REC_HDR_SIZE;

  le32_store (b, kind);
  le32_store (b + 4, 0);
  memcpy (b + 8, data, len);
  return finish_record (out, XM_REC_XENDATA, seq, 8 + len);
}

size_t
xm_encode_ack (uint8_t *out, uint32_t seq, int32_t status, const char *msg)
{
  uint8_t *b = out + XM_REC_HDR_SIZE;
  size_t n = msg ? strnlen (msg, XM_ACK_MSG_MAX) : 0;

  le32_store (b, (uint32_t) status);
  le32_store (b + 4, n);
  if (n)
    memcpy (b + 8, msg, n);
  return finish_record (out, XM_REC_ACK, seq, 8 + n);
}

/* ---- decoding ---------------------------------------------------------- */

static const char *
type_name (uint32_t type)
{
  switch (type) {
  case XM_REC_ROUND: return "ROUND";
  case XM_REC_PAGES: return "PAGES";
  case XM_REC_CONTEXT: return "CONTEXT";
  case XM_REC_END: return "END";
  case XM_REC_ACK: return "ACK";
  case XM_REC_XENDATA: return "XENDATA";
  default: return "unknown";
  }
}

static int fail (struct xm_decoder *d, const char *fmt, ...)
  __attribute__ ((format (printf, 2, 3)));

static int
fail (struct xm_decoder *d, const char *fmt, ...)
{
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (d->err, sizeof d->err, fmt, ap);
  va_end (ap);
  return -1;
}

/* Errors about a record begin "record INDEX (TYPE): ". */
#define REC_FMT "record %" PRIu32 " (%s): "
#define REC_ARGS(d, type) (d)->next_seq, type_name (type)

void
xm_decoder_init (struct xm_decoder *d)
{
  memset (d, 0, sizeof *d);
}

void
xm_decoder_init_acks (struct xm_decoder *d)
{
  memset (d, 0, sizeof *d);
  d->ack_stream = true;
}

int
xm_decode_header (struct xm_decoder *d, const uint8_t *buf, size_t len,
                  struct xm_header *h)
{
  struct xm_header t;
  uint32_t crc;

  if (d->ack_stream)
    return fail (d, "stream header: the reply channel has no header");
  if (d->header_seen)
    return fail (d, "stream header: the header was already read");
  if (len < XM_HEADER_SIZE)
    return fail (d, "stream header: truncated: %zu bytes, the header is %d",
                 len, XM_HEADER_SIZE);
  if (memcmp (buf, XM_STREAM_MAGIC, 8) != 0)
    return fail (d, "stream header: bad magic (not a xenmem stream)");
  /* Version before checksum: a later version may lay the header out
   * differently, and "unsupported version" is the useful message then. */
  t.version = le32_load (buf + 8);
  if (t.version != XM_STREAM_VERSION)
    return fail (d, "stream header: version %" PRIu32 " is not supported "
                 "(this receiver speaks version %d)", t.version,
                 XM_STREAM_VERSION);
  crc = xm_crc32c (0, buf, 28);
  if (crc != le32_load (buf + 28))
    return fail (d, "stream header: checksum mismatch (stored 0x%08" PRIx32
                 ", computed 0x%08" PRIx32 ")", le32_load (buf + 28), crc);
  t.backend = le32_load (buf + 12);
  t.npages = le64_load (buf + 16);
  t.flags = le32_load (buf + 24);
  if (t.backend == 1)
    return fail (d, "stream header: backend 1 is unknown (it was a kvm "
                 "backend that never moved a guest, removed; 2 xen, 3 uffd, "
                 "4 none)");
  if (t.backend < 2 || t.backend > 4)
    return fail (d, "stream header: backend %" PRIu32 " is unknown "
                 "(2 xen, 3 uffd, 4 none)", t.backend);
  if (t.npages < 1 || t.npages > (1ull << 40))
    return fail (d, "stream header: npages %" PRIu64 " is out of range "
                 "(1 .. 2^40)", t.npages);
  if (t.flags & ~XM_HDR_CHECK_ONLY)
    return fail (d, "stream header: flags 0x%" PRIx32 " are not defined "
                 "(only 0x1, check-only)", t.flags & ~XM_HDR_CHECK_ONLY);
  if ((t.flags & XM_HDR_CHECK_ONLY) && t.backend != 2)
    return fail (d, "stream header: check-only (flag 0x1) is for backend "
                 "xen, this stream is backend %" PRIu32, t.backend);
  d->header_seen = true;
  d->npages = t.npages;
  d->backend = t.backend;
  *h = t;
  return 0;
}

/* The unpadded body length's limits by type, checked before the body is
 * read.  Exact where the type has a fixed size. */
static int
check_body_len (struct xm_decoder *d, uint32_t type, uint32_t body_len)
{
  uint32_t min, max;

  switch (type) {
  case XM_REC_ROUND: min = max = 16; break;
  case XM_REC_PAGES: min = 8 + 8; max = XM_REC_MAX - XM_REC_HDR_SIZE; break;
  case XM_REC_CONTEXT: min = 8; max = 8 + XM_CONTEXT_MAX; break;
  case XM_REC_END: min = max = 40; break;
  case XM_REC_ACK: min = 8; max = 8 + XM_ACK_MSG_MAX; break;
  case XM_REC_XENDATA: min = 8 + 1; max = 8 + XM_XENDATA_MAX; break;
  default:
    return fail (d, "record %" PRIu32 ": unknown type %" PRIu32,
                 d->next_seq, type);
  }
  if (d->ack_stream && type != XM_REC_ACK)
    return fail (d, REC_FMT "only ACK records travel on the reply channel",
                 REC_ARGS (d, type));
  /* On the sender's stream one ACK may follow END: the commit (see
   * doc/xenmem-stream.md "Ending"); check_order enforces the place. */
  if (!d->ack_stream && type == XM_REC_ACK && !d->end_seen)
    return fail (d, REC_FMT "ACK before END: on the sender's stream only the "
                 "commit after END is an ACK", REC_ARGS (d, type));
  if (body_len > max)
    return fail (d, REC_FMT "body length %" PRIu32 " is over the limit of %"
                 PRIu32, REC_ARGS (d, type), body_len, max);
  if (body_len < min)
    return fail (d, REC_FMT "body length %" PRIu32 " is under the minimum "
                 "of %" PRIu32, REC_ARGS (d, type), body_len, min);
  return 0;
}

int64_t
xm_record_body_len (struct xm_decoder *d, const uint8_t hdr[16])
{
  uint32_t type = le32_load (hdr), body_len = le32_load (hdr + 4);

  if (check_body_len (d, type, body_len) == -1)
    return -1;
  return padded (body_len);
}

/* May a record of TYPE come now?  The sender's stream is
 * ROUND (PAGES*) [ROUND (PAGES*)]... CONTEXT END, or for backend xen
 * XENDATA(config) XENDATA(preflight) XENDATA(stream)... END. */
static int
check_order (struct xm_decoder *d, uint32_t type)
{
  if (d->ack_stream)
    return 0;                   /* check_body_len allowed only ACK */
  if (!d->header_seen)
    return fail (d, REC_FMT "the stream header has not been read",
                 REC_ARGS (d, type));
  if (d->commit_seen)
    return fail (d, REC_FMT "nothing may follow the commit",
                 REC_ARGS (d, type));
  if (d->end_seen && type != XM_REC_ACK)
    return fail (d, REC_FMT "only the commit (ACK) may follow END",
                 REC_ARGS (d, type));
  if (d->backend == 2) {       /* xen (backend.h) */
    if (type == XM_REC_XENDATA || type == XM_REC_ACK ||
        (type == XM_REC_END && d->xen_preflight_seen))
      return 0;                 /* ACK: the commit, after END only */
    if (type == XM_REC_END)
      return fail (d, REC_FMT "END before the domain's %s",
                   REC_ARGS (d, type), d->xen_config_seen ? "preflight"
                   : "configuration");
    return fail (d, REC_FMT "not part of a xen stream (XENDATA, END)",
                 REC_ARGS (d, type));
  }
  if (type == XM_REC_XENDATA)
    return fail (d, REC_FMT "XENDATA is for backend xen only, this stream "
                 "is backend %" PRIu32, REC_ARGS (d, type), d->backend);
  if (d->rounds == 0 && type != XM_REC_ROUND)
    return fail (d, REC_FMT "the first record must be ROUND",
                 REC_ARGS (d, type));
  switch (type) {
  case XM_REC_ROUND:
  case XM_REC_PAGES:
    if (d->context_seen)
      return fail (d, REC_FMT "%s after CONTEXT (the guest is paused and its "
                   "state sent)", REC_ARGS (d, type), type_name (type));
    break;
  case XM_REC_CONTEXT:
    if (d->context_seen)
      return fail (d, REC_FMT "a second CONTEXT", REC_ARGS (d, type));
    break;
  case XM_REC_END:
    if (!d->context_seen)
      return fail (d, REC_FMT "END before CONTEXT", REC_ARGS (d, type));
    break;
  }
  return 0;
}

static int
decode_round (struct xm_decoder *d, const uint8_t *b, struct xm_record *r)
{
  uint32_t round = le32_load (b), reserved = le32_load (b + 4);
  uint64_t pages = le64_load (b + 8);

  if (round != d->rounds)
    return fail (d, REC_FMT "round %" PRIu32 ", expected %" PRIu32,
                 REC_ARGS (d, r->type), round, d->rounds);
  if (reserved)
    return fail (d, REC_FMT "reserved field is 0x%" PRIx32 ", must be 0",
                 REC_ARGS (d, r->type), reserved);
  if (pages > d->npages)
    return fail (d, REC_FMT "round %" PRIu32 " announces %" PRIu64 " pages, "
                 "the guest has %" PRIu64, REC_ARGS (d, r->type), round,
                 pages, d->npages);
  r->u.round.round = round;
  r->u.round.pages = pages;
  return 0;
}

static int
decode_pages (struct xm_decoder *d, const uint8_t *b, struct xm_record *r)
{
  uint32_t count = le32_load (b), reserved = le32_load (b + 4);
  uint64_t want;
  uint32_t ndata = 0;

  if (count < 1 || count > XM_BATCH_MAX)
    return fail (d, REC_FMT "count %" PRIu32 " is out of range (1 .. %d)",
                 REC_ARGS (d, r->type), count, XM_BATCH_MAX);
  if (reserved)
    return fail (d, REC_FMT "reserved field is 0x%" PRIx32 ", must be 0",
                 REC_ARGS (d, r->type), reserved);
  /* The entry list must fit before it is walked. */
  if (8 + 8 * (uint64_t) count > r->body_len)
    return fail (d, REC_FMT "body length %" PRIu32 " cannot hold %" PRIu32
                 " entries", REC_ARGS (d, r->type), r->body_len, count);
  for (uint32_t i = 0; i < count; i++) {
    uint64_t e = le64_load (b + 8 + 8 * (size_t) i);
    uint64_t pfn = e & XM_PFN_MASK;
    if (e & ~(XM_PFN_MASK | XM_PFN_ZERO))
      return fail (d, REC_FMT "entry %" PRIu32 ": undefined flag bits in "
                   "0x%016" PRIx64, REC_ARGS (d, r->type), i, e);
    if (pfn >= d->npages)
      return fail (d, REC_FMT "entry %" PRIu32 ": pfn %" PRIu64 " is beyond "
                   "the guest's %" PRIu64 " pages", REC_ARGS (d, r->type), i,
                   pfn, d->npages);
    ndata += !(e & XM_PFN_ZERO);
  }
  want = 8 + 8 * (uint64_t) count + 4096 * (uint64_t) ndata;
  if (r->body_len != want)
    return fail (d, REC_FMT "body length %" PRIu32 ", expected %" PRIu64
                 " for %" PRIu32 " entries (%" PRIu32 " with data)",
                 REC_ARGS (d, r->type), r->body_len, want, count, ndata);
  r->u.pages.count = count;
  r->u.pages.ndata = ndata;
  r->u.pages.pfns = b + 8;
  r->u.pages.data = b + 8 + 8 * (size_t) count;
  return 0;
}

static int
decode_context (struct xm_decoder *d, const uint8_t *b, struct xm_record *r)
{
  uint32_t backend = le32_load (b), len = le32_load (b + 4);

  if (backend != d->backend)
    return fail (d, REC_FMT "backend %" PRIu32 ", the stream header says %"
                 PRIu32, REC_ARGS (d, r->type), backend, d->backend);
  if (len > XM_CONTEXT_MAX)
    return fail (d, REC_FMT "length %" PRIu32 " is over the limit of %u",
                 REC_ARGS (d, r->type), len, XM_CONTEXT_MAX);
  if (r->body_len != 8 + (uint64_t) len)
    return fail (d, REC_FMT "body length %" PRIu32 ", expected %" PRIu64
                 " for a %" PRIu32 "-byte context", REC_ARGS (d, r->type),
                 r->body_len, 8 + (uint64_t) len, len);
  r->u.context.backend = backend;
  r->u.context.len = len;
  r->u.context.blob = b + 8;
  return 0;
}

static int
decode_xendata (struct xm_decoder *d, const uint8_t *b, struct xm_record *r)
{
  uint32_t kind = le32_load (b), reserved = le32_load (b + 4);

  if (reserved)
    return fail (d, REC_FMT "reserved field is 0x%" PRIx32 ", must be 0",
                 REC_ARGS (d, r->type), reserved);
  if (kind != XM_XEN_CONFIG && kind != XM_XEN_STREAM &&
      kind != XM_XEN_PREFLIGHT)
    return fail (d, REC_FMT "kind %" PRIu32 " is unknown (1 configuration, "
                 "2 stream, 3 preflight)", REC_ARGS (d, r->type), kind);
  if (kind == XM_XEN_CONFIG && d->xen_config_seen)
    return fail (d, REC_FMT "a second configuration", REC_ARGS (d, r->type));
  if (kind == XM_XEN_PREFLIGHT && !d->xen_config_seen)
    return fail (d, REC_FMT "the preflight before the configuration",
                 REC_ARGS (d, r->type));
  if (kind == XM_XEN_PREFLIGHT && d->xen_preflight_seen)
    return fail (d, REC_FMT "a second preflight", REC_ARGS (d, r->type));
  if (kind == XM_XEN_STREAM && !d->xen_preflight_seen)
    return fail (d, REC_FMT "stream data before the %s",
                 REC_ARGS (d, r->type), d->xen_config_seen ? "preflight"
                 : "configuration");
  if (kind == XM_XEN_CONFIG && memchr (b + 8, 0, r->body_len - 8))
    return fail (d, REC_FMT "the configuration contains a NUL byte",
                 REC_ARGS (d, r->type));
  r->u.xendata.kind = kind;
  r->u.xendata.len = r->body_len - 8;
  r->u.xendata.data = b + 8;
  return 0;
}

static int
decode_ack (struct xm_decoder *d, const uint8_t *b, struct xm_record *r)
{
  uint32_t msglen = le32_load (b + 4);

  if (msglen > XM_ACK_MSG_MAX)
    return fail (d, REC_FMT "message length %" PRIu32 " is over the limit "
                 "of %d", REC_ARGS (d, r->type), msglen, XM_ACK_MSG_MAX);
  if (r->body_len != 8 + msglen)
    return fail (d, REC_FMT "body length %" PRIu32 ", expected %" PRIu32
                 " for a %" PRIu32 "-byte message", REC_ARGS (d, r->type),
                 r->body_len, 8 + msglen, msglen);
  if (memchr (b + 8, 0, msglen))
    return fail (d, REC_FMT "the message contains a NUL byte",
                 REC_ARGS (d, r->type));
  r->u.ack.status = (int32_t) le32_load (b);
  memcpy (r->u.ack.msg, b + 8, msglen);
  r->u.ack.msg[msglen] = 0;
  return 0;
}

int
xm_decode_record (struct xm_decoder *d, const uint8_t *buf, size_t len,
                  struct xm_record *r)
{
  uint32_t type, body_len, seq, crc;
  const uint8_t *b = buf + XM_REC_HDR_SIZE;
  size_t total;
  int e;

  if (d->next_seq == UINT32_MAX)
    return fail (d, "record %" PRIu32 ": the sequence space is exhausted",
                 d->next_seq);
  if (len < XM_REC_HDR_SIZE)
    return fail (d, "record %" PRIu32 ": truncated: %zu bytes, the record "
                 "header is %d", d->next_seq, len, XM_REC_HDR_SIZE);
  type = le32_load (buf);
  body_len = le32_load (buf + 4);
  seq = le32_load (buf + 8);
  if (check_body_len (d, type, body_len) == -1)
    return -1;
  total = XM_REC_HDR_SIZE + padded (body_len);
  if (len < total)
    return fail (d, REC_FMT "truncated: %zu bytes, the record is %zu",
                 REC_ARGS (d, type), len, total);
  if (len > total)
    return fail (d, REC_FMT "%zu bytes given, the record is %zu",
                 REC_ARGS (d, type), len, total);
  crc = xm_crc32c (0, buf, 12);
  crc = xm_crc32c (crc, b, body_len);
  if (crc != le32_load (buf + 12))
    return fail (d, REC_FMT "checksum mismatch", REC_ARGS (d, type));
  if (seq != d->next_seq)
    return fail (d, "record %" PRIu32 " has sequence %" PRIu32 ", expected %"
                 PRIu32, d->next_seq, seq, d->next_seq);
  for (size_t i = body_len; i < padded (body_len); i++)
    if (b[i])
      return fail (d, REC_FMT "padding byte %zu is 0x%02x, must be 0",
                   REC_ARGS (d, type), i - body_len, b[i]);
  if (check_order (d, type) == -1)
    return -1;

  memset (r, 0, sizeof *r);
  r->type = type;
  r->seq = seq;
  r->body_len = body_len;
  switch (type) {
  case XM_REC_ROUND: e = decode_round (d, b, r); break;
  case XM_REC_PAGES: e = decode_pages (d, b, r); break;
  case XM_REC_CONTEXT: e = decode_context (d, b, r); break;
  case XM_REC_XENDATA: e = decode_xendata (d, b, r); break;
  case XM_REC_END:
    r->u.end.pages_sent = le64_load (b);
    memcpy (r->u.end.digest, b + 8, 32);
    e = 0;
    break;
  default: e = decode_ack (d, b, r); break;
  }
  if (e == -1)
    return -1;

  /* Accepted: only now does the stream's state move on. */
  d->next_seq++;
  if (type == XM_REC_ROUND)
    d->rounds++;
  else if (type == XM_REC_CONTEXT)
    d->context_seen = true;
  else if (type == XM_REC_END)
    d->end_seen = true;
  else if (type == XM_REC_XENDATA && r->u.xendata.kind == XM_XEN_CONFIG)
    d->xen_config_seen = true;
  else if (type == XM_REC_XENDATA && r->u.xendata.kind == XM_XEN_PREFLIGHT)
    d->xen_preflight_seen = true;
  else if (type == XM_REC_ACK && !d->ack_stream)
    d->commit_seen = true;
  return 0;
}
