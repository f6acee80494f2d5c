/* libFuzzer harness: the xenmem stream decoder (xenmem/stream.c), driven
 * as the receiver drives it: the header, then per record the 16-byte
 * header to xm_record_body_len, the body only if it is within what is
 * left, then xm_decode_record, until the first refusal or the end of the
 * input.  Each record goes to the decoder in a buffer of exactly its size,
 * so a read past it is an ASan report, not a silent read of the next one.
 *
 * Checks beyond "no crash": a refusal leaves a terminated message and the
 * decoder's state untouched; an accepted record's pfns are within the
 * guest; and an accepted header or record re-encodes to exactly the bytes
 * that were decoded (so the decoder accepts nothing the encoder would not
 * have written).
 *
 * Input: one flag byte, then the stream.  Flag bit 0 clear: the harness
 * recomputes the header's and each record's CRC first, so that mutations
 * get past the checksums to the field and order checks.  Bit 1 set: decode
 * as the reply channel (ACK records, no header).
 *
 * A preflight record's body (XENDATA kind 3) also goes through its own
 * decoder (xenmem/preflight.c) and must re-encode the same.
 *
 * The codecs have no dependencies beyond common/endian.h, and are
 * compiled in here so that the generic tests/fuzz/fuzz-% rule builds this
 * harness as it is. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../xenmem/stream.c"
#include "../../xenmem/preflight.c"

static uint32_t
ld32 (const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
         (uint32_t) p[3] << 24;
}

static void
st32 (uint8_t *p, uint32_t v)
{
  for (int i = 0; i < 4; i++)
    p[i] = v >> (8 * i);
}

static void
fix_crcs (uint8_t *b, size_t n, bool acks)
{
  size_t o = 0;

  if (!acks) {
    if (n < XM_HEADER_SIZE)
      return;
    st32 (b + 28, xm_crc32c (0, b, 28));
    o = XM_HEADER_SIZE;
  }
  while (n - o >= 16) {
    uint64_t body = ld32 (b + o + 4), total = 16 + ((body + 7) & ~7ull);
    if (total > n - o)
      return;
    st32 (b + o + 12, xm_crc32c (xm_crc32c (0, b + o, 12), b + o + 16, body));
    o += total;
  }
}

static bool verbose;

/* Re-encode R and compare with REC[0..len). */
static void
check_reencode (const struct xm_record *r, const uint8_t *rec, size_t len)
{
  static uint8_t *out, *data;
  static uint64_t pfns[XM_BATCH_MAX];
  static bool zero[XM_BATCH_MAX];
  size_t n = 0;

  if (!out) {
    out = malloc (XM_REC_MAX);
    data = malloc ((size_t) XM_BATCH_MAX * 4096);
    if (!out || !data)
      abort ();
  }
  switch (r->type) {
  case XM_REC_ROUND:
    n = xm_encode_round (out, r->seq, r->u.round.round, r->u.round.pages);
    break;
  case XM_REC_PAGES: {
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->u.pages.count; i++) {
      uint64_t e = le64_load (r->u.pages.pfns + 8 * (size_t) i);
      pfns[i] = e & XM_PFN_MASK;
      zero[i] = e & XM_PFN_ZERO;
      if (!zero[i])
        memcpy (data + (size_t) i * 4096,
                r->u.pages.data + (size_t) k++ * 4096, 4096);
    }
    if (k != r->u.pages.ndata)
      abort ();
    n = xm_encode_pages (out, r->seq, pfns, zero, r->u.pages.count, data);
    break;
  }
  case XM_REC_CONTEXT:
    n = xm_encode_context (out, r->seq, r->u.context.backend,
                           r->u.context.blob, r->u.context.len);
    break;
  case XM_REC_END:
    n = xm_encode_end (out, r->seq, r->u.end.pages_sent, r->u.end.digest);
    break;
  case XM_REC_XENDATA:
    n = xm_encode_xendata (out, r->seq, r->u.xendata.kind, r->u.xendata.data,
                           r->u.xendata.len);
    if (r->u.xendata.kind == XM_XEN_PREFLIGHT) {
      /* The preflight body: refused with a terminated message, or
       * accepted and re-encoded to the same bytes. */
      static struct xm_preflight pf;
      static uint8_t pbuf[24 + 64 * XM_PF_DISKS_MAX + 24 * XM_PF_LEAVES_MAX
                          + 16 * XM_PF_MSRS_MAX];
      char err[256] = "";
      if (xm_preflight_decode (r->u.xendata.data, r->u.xendata.len, &pf,
                               err, sizeof err) == -1) {
        if (!err[0] || strnlen (err, sizeof err) == sizeof err)
          abort ();
        if (verbose)
          fprintf (stderr, "%s\n", err);
      }
      else if (xm_preflight_encode (&pf, pbuf) != r->u.xendata.len ||
               memcmp (pbuf, r->u.xendata.data, r->u.xendata.len) != 0)
        abort ();
    }
    break;
  case XM_REC_ACK:
    if (strlen (r->u.ack.msg) > XM_ACK_MSG_MAX)
      abort ();
    n = xm_encode_ack (out, r->seq, r->u.ack.status, r->u.ack.msg);
    break;
  default:
    abort ();                   /* the decoder accepted an unknown type */
  }
  if (n != len || memcmp (out, rec, len) != 0)
    abort ();
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct xm_decoder d, before;
  struct xm_header h;
  struct xm_record r;
  uint8_t *b;
  bool acks;
  size_t n, o = 0;

  if (size < 1)
    return 0;
  static int v = -1;
  if (v == -1)
    v = getenv ("XM_FUZZ_VERBOSE") != NULL;
  verbose = v;
  acks = data[0] & 2;
  n = size - 1;
  b = malloc (n ? n : 1);
  memcpy (b, data + 1, n);
  if (!(data[0] & 1))
    fix_crcs (b, n, acks);

  if (acks)
    xm_decoder_init_acks (&d);
  else {
    xm_decoder_init (&d);
    if (n < XM_HEADER_SIZE)
      goto out;
    if (xm_decode_header (&d, b, XM_HEADER_SIZE, &h) == -1) {
      if (verbose)
        fprintf (stderr, "%s\n", d.err);
      goto out;
    }
    {
      uint8_t hb[XM_HEADER_SIZE];
      if (xm_encode_header (hb, &h) != XM_HEADER_SIZE ||
          memcmp (hb, b, XM_HEADER_SIZE) != 0)
        abort ();
    }
    o = XM_HEADER_SIZE;
  }

  while (n - o >= XM_REC_HDR_SIZE) {
    int64_t blen;
    uint8_t *rec;
    size_t len;
    int ret;

    before = d;
    blen = xm_record_body_len (&d, b + o);
    if (blen < 0 || (uint64_t) blen > n - o - XM_REC_HDR_SIZE) {
      if (verbose)
        fprintf (stderr, "%s\n", blen < 0 ? d.err : "input ends in a record");
      break;
    }
    if (blen > XM_REC_MAX - XM_REC_HDR_SIZE || (blen & 7))
      abort ();
    len = XM_REC_HDR_SIZE + blen;
    rec = malloc (len);
    memcpy (rec, b + o, len);
    ret = xm_decode_record (&d, rec, len, &r);
    if (ret == -1) {
      if (verbose)
        fprintf (stderr, "%s\n", d.err);
      /* A terminated message, and the state as it was. */
      if (!d.err[0] || strnlen (d.err, sizeof d.err) == sizeof d.err)
        abort ();
      if (before.npages != d.npages || before.backend != d.backend ||
          before.next_seq != d.next_seq || before.rounds != d.rounds ||
          before.context_seen != d.context_seen ||
          before.end_seen != d.end_seen || before.commit_seen != d.commit_seen ||
          before.header_seen != d.header_seen ||
          before.ack_stream != d.ack_stream)
        abort ();
      free (rec);
      break;
    }
    if (r.type == XM_REC_PAGES)
      for (uint32_t i = 0; i < r.u.pages.count; i++)
        if ((le64_load (r.u.pages.pfns + 8 * (size_t) i) & XM_PFN_MASK) >=
            d.npages)
          abort ();
    check_reencode (&r, rec, len);
    if (verbose)
      fprintf (stderr, "record %u: type %u, %zu bytes\n", r.seq, r.type, len);
    free (rec);
    o += len;
  }

 out:
  free (b);
  return 0;
}
