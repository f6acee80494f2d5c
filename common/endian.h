/* Big- and little-endian loads and stores on byte buffers.
 *
 * VHD metadata is big-endian and is read out of unaligned byte buffers, so
 * every field access goes through these helpers rather than through casts. */
#ifndef SXM_ENDIAN_H
#define SXM_ENDIAN_H

#include <stdint.h>

static inline uint16_t
be16_load (const uint8_t *p)
{
  return (uint16_t) ((p[0] << 8) | p[1]);
}

static inline uint32_t
be32_load (const uint8_t *p)
{
  return ((uint32_t) p[0] << 24) | ((uint32_t) p[1] << 16) |
         ((uint32_t) p[2] << 8) | p[3];
}

static inline uint64_t
be64_load (const uint8_t *p)
{
  return ((uint64_t) be32_load (p) << 32) | be32_load (p + 4);
}

static inline void
be16_store (uint8_t *p, uint16_t v)
{
  p[0] = v >> 8;
  p[1] = v;
}

static inline void
be32_store (uint8_t *p, uint32_t v)
{
  p[0] = v >> 24;
  p[1] = v >> 16;
  p[2] = v >> 8;
  p[3] = v;
}

static inline void
be64_store (uint8_t *p, uint64_t v)
{
  be32_store (p, v >> 32);
  be32_store (p + 4, (uint32_t) v);
}

/* Little-endian: the xenmem stream's fields (little-endian on every
 * host), at arbitrary offsets in a receive buffer. */
static inline uint32_t
le32_load (const uint8_t *p)
{
  return (uint32_t) p[0] | (uint32_t) p[1] << 8 | (uint32_t) p[2] << 16 |
         (uint32_t) p[3] << 24;
}

static inline uint64_t
le64_load (const uint8_t *p)
{
  return (uint64_t) le32_load (p) | (uint64_t) le32_load (p + 4) << 32;
}

static inline void
le32_store (uint8_t *p, uint32_t v)
{
  p[0] = v;
  p[1] = v >> 8;
  p[2] = v >> 16;
  p[3] = v >> 24;
}

static inline void
le64_store (uint8_t *p, uint64_t v)
{
  le32_store (p, (uint32_t) v);
  le32_store (p + 4, (uint32_t) (v >> 32));
}

#endif
