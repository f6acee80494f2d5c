/* The xenmem stream: a versioned record format (doc/xenmem-stream.md).
 *
 * The encoder builds records into caller buffers; the decoder checks every
 * record against the format *and* the stream's state (sequence numbers,
 * record order, pfn bounds, lengths, checksums) before the caller sees it,
 * so the receiver never acts on a record that is malformed or out of
 * place.  Pure code, no I/O: the transport moves the bytes, and the fuzz
 * harness drives the decoder directly. */
#ifndef XENMEM_STREAM_H
#define XENMEM_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define XM_STREAM_MAGIC "SXMXMEM\n"     /* 8 bytes, no NUL */
#define XM_STREAM_VERSION 2     /* 2: xen streams carry a preflight */
#define XM_HEADER_SIZE 32
#define XM_REC_HDR_SIZE 16
#define XM_BATCH_MAX 1024               /* entries per PAGES record */
#define XM_CONTEXT_MAX (1u << 20)
#define XM_ACK_MSG_MAX 199              /* ACK message bytes (no NUL) */
/* The largest record, header included: a full PAGES batch of data pages. */
#define XM_REC_MAX (16 + 8 + 8 * XM_BATCH_MAX + XM_BATCH_MAX * 4096u)

enum xm_rec_type {
  XM_REC_ROUND = 1,             /* a pre-copy round begins */
  XM_REC_PAGES = 2,             /* a batch of pages (data or zero) */
  XM_REC_CONTEXT = 3,           /* vCPU/platform state (after the last round) */
  XM_REC_END = 4,               /* memory digest; nothing follows */
  XM_REC_ACK = 5,               /* receiver -> sender: result */
  XM_REC_XENDATA = 6,           /* backend xen only: libxl's own stream */
};

/* XENDATA kinds.  The xen backend drives libxenguest (xc_domain_save on
 * the source, libxl's restore on the destination): its stream is the
 * domain's configuration (JSON, libxl_domain_config) once, first, then
 * the preflight (preflight.h: what the destination checks before anything
 * moves; it answers with an ACK), then libxl's migration stream v2 in
 * opaque pieces, then END. */
#define XM_XEN_CONFIG 1
#define XM_XEN_STREAM 2
#define XM_XEN_PREFLIGHT 3
#define XM_XENDATA_MAX (1u << 20)       /* data bytes per XENDATA record */

/* Entry flags in a PAGES record's pfn list (top bits of each u64). */
#define XM_PFN_ZERO (1ull << 63)       /* no data follows: all zero */
#define XM_PFN_MASK ((1ull << 52) - 1)

/* Header flags. */
#define XM_HDR_CHECK_ONLY 1u    /* backend xen: configuration and preflight
                                 * only; the receiver answers, then waits
                                 * for the real stream */

struct xm_header {
  uint32_t version;
  uint32_t backend;             /* enum xm_backend_id */
  uint64_t npages;
  uint32_t flags;               /* XM_HDR_*; others must be 0 */
};

/* A decoded record.  Pointers point into the buffer given to the decoder. */
struct xm_record {
  uint32_t type;
  uint32_t seq;
  uint32_t body_len;
  union {
    struct { uint32_t round; uint64_t pages; } round;
    struct {
      uint32_t count;           /* entries */
      uint32_t ndata;           /* entries with data */
      const uint8_t *pfns;      /* count little-endian u64, flags included */
      const uint8_t *data;      /* ndata pages, in pfn-list order */
    } pages;
    struct { uint32_t backend; const uint8_t *blob; uint32_t len; } context;
    struct { uint64_t pages_sent; uint8_t digest[32]; } end;
    struct { int32_t status; char msg[XM_ACK_MSG_MAX + 1]; } ack;
    struct { uint32_t kind; uint32_t len; const uint8_t *data; } xendata;
  } u;
};

/* Decoder state: what may come next.  The sender's stream (header, then
 * ROUND/PAGES/CONTEXT/END) and the receiver's reply channel (ACK records
 * only, no header) are separate streams, each with its own decoder and its
 * own sequence numbers from 0. */
struct xm_decoder {
  uint64_t npages;
  uint32_t backend;
  uint32_t next_seq;            /* = index of the next record */
  uint32_t rounds;              /* ROUND records seen */
  bool context_seen, end_seen, header_seen;
  bool commit_seen;             /* the sender's ACK after END */
  bool xen_config_seen;         /* backend xen: the XENDATA config */
  bool xen_preflight_seen;      /* backend xen: the XENDATA preflight */
  bool ack_stream;              /* the reply channel: ACK records only */
  char err[256];                /* why the last call failed */
};

/* Encoding: each returns the number of bytes written to OUT (which must
 * hold them: XM_HEADER_SIZE, or the record size, at most XM_REC_MAX). */
size_t xm_encode_header (uint8_t *out, const struct xm_header *h);
/* Records: SEQ is the sender's running record number (from 0). */
size_t xm_encode_round (uint8_t *out, uint32_t seq, uint32_t round,
                        uint64_t pages);
/* PAGES: N pfns (1 .. XM_BATCH_MAX, each < npages); ZERO[i] says pfn i is
 * all zeros (its data is not sent; ZERO may be NULL: none is); DATA holds
 * the N pages in order, page i at DATA + i * 4096 (zero ones skipped over,
 * not copied; DATA may be NULL if every page is zero). */
size_t xm_encode_pages (uint8_t *out, uint32_t seq, const uint64_t *pfns,
                        const bool *zero, unsigned n, const uint8_t *data);
size_t xm_encode_context (uint8_t *out, uint32_t seq, uint32_t backend,
                          const void *blob, uint32_t len);
size_t xm_encode_end (uint8_t *out, uint32_t seq, uint64_t pages_sent,
                      const uint8_t digest[32]);
/* XENDATA: KIND (XM_XEN_*), LEN bytes of DATA (1 .. XM_XENDATA_MAX). */
size_t xm_encode_xendata (uint8_t *out, uint32_t seq, uint32_t kind,
                          const void *data, uint32_t len);
/* ACK: MSG is cut to its first XM_ACK_MSG_MAX bytes. */
size_t xm_encode_ack (uint8_t *out, uint32_t seq, int32_t status,
                      const char *msg);

/* Decoding.  A call that fails leaves the decoder's state as it was; the
 * stream is dead anyway (the receiver refuses it). */
void xm_decoder_init (struct xm_decoder *d);        /* sender's stream */
void xm_decoder_init_acks (struct xm_decoder *d);   /* reply channel */
/* The first XM_HEADER_SIZE bytes of BUF (LEN must be at least that): 0 and
 * *H filled, or -1 with d->err set. */
int xm_decode_header (struct xm_decoder *d, const uint8_t *buf, size_t len,
                      struct xm_header *h);
/* Given the 16-byte record header, the body length that follows it (padded
 * to 8), or -1 with d->err set (type unknown or not allowed on this
 * channel, length over the type's limit), so that the caller never reads
 * an oversize body.  Does not change the decoder's state. */
int64_t xm_record_body_len (struct xm_decoder *d, const uint8_t hdr[16]);
/* Check and decode a whole record: LEN must be exactly the header plus
 * the padded body.  0 and *R filled (pointers into BUF), or -1 with d->err
 * set. */
int xm_decode_record (struct xm_decoder *d, const uint8_t *buf, size_t len,
                      struct xm_record *r);

/* CRC-32C (Castagnoli), chainable: start with 0, feed the running value
 * back in: xm_crc32c (xm_crc32c (0, a, n), b, m) is the CRC of a then b.
 * xm_crc32c (0, "123456789", 9) == 0xe3069283. */
/* Entry I (< r->u.pages.count) of a decoded PAGES record: the pfn with its
 * XM_PFN_* flags. */
uint64_t xm_pages_entry (const struct xm_record *r, uint32_t i);

uint32_t xm_crc32c (uint32_t crc, const void *buf, size_t len);
/* The table-driven version (what xm_crc32c uses without SSE4.2). */
uint32_t xm_crc32c_sw (uint32_t crc, const void *buf, size_t len);

#endif
