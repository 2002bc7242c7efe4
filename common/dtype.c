/* dtype.c: sizes of element types and conversions to f32 (the reference dequantizers). */
#include "common/dtype.h"

#include <strings.h>

#include "common/status.h"

static const struct {
  const char *name;
  int block_elems;
  size_t block_bytes;
  int ggml; /* GGML type id, -1 if none */
} g_types[DTYPE_COUNT] = {
    [DTYPE_F32] = {"f32", 1, 4, 0},        [DTYPE_F16] = {"f16", 1, 2, 1},
    [DTYPE_BF16] = {"bf16", 1, 2, 30},     [DTYPE_Q8_0] = {"q8_0", 32, 34, 8},
    [DTYPE_Q4_0] = {"q4_0", 32, 18, 2},    [DTYPE_Q4_K] = {"q4_k", 256, 144, 12},
    [DTYPE_Q5_K] = {"q5_k", 256, 176, 13}, [DTYPE_Q6_K] = {"q6_k", 256, 210, 14},
    [DTYPE_I32] = {"i32", 1, 4, 26},
};

const char *dtype_name(dtype_t t) { return (unsigned)t < DTYPE_COUNT ? g_types[t].name : "?"; }

int dtype_parse(const char *s) {
  for (int i = 0; i < DTYPE_COUNT; i++)
    if (strcasecmp(s, g_types[i].name) == 0) return i;
  return -1;
}

int dtype_block_elems(dtype_t t) { return (unsigned)t < DTYPE_COUNT ? g_types[t].block_elems : 0; }
size_t dtype_block_bytes(dtype_t t) { return (unsigned)t < DTYPE_COUNT ? g_types[t].block_bytes : 0; }
int dtype_is_quant(dtype_t t) { return dtype_block_elems(t) > 1; }

size_t dtype_row_bytes(dtype_t t, int64_t n) {
  int be = dtype_block_elems(t);
  if (be <= 0 || n < 0 || n % be) return 0;
  return (size_t)(n / be) * g_types[t].block_bytes;
}

int dtype_from_ggml(uint32_t ggml_type) {
  for (int i = 0; i < DTYPE_COUNT; i++)
    if (g_types[i].ggml == (int)ggml_type) return i;
  return -1;
}

/* k-quants (GGML layouts, super-blocks of 256). Q4_K and Q5_K split a super-block into 8 sub-blocks
 * of 32 with a 6-bit scale and a 6-bit min each, packed into 12 bytes: sub-blocks 0..3 keep theirs in
 * the low 6 bits of bytes 0..3 (scales) and 4..7 (mins); sub-blocks 4..7 take their low 4 bits from
 * the nibbles of bytes 8..11 and their top 2 bits from the top bits of bytes 0..3 / 4..7. */
static void kq_scale_min(const uint8_t *sc, int j, int *scale, int *min) {
  if (j < 4) {
    *scale = sc[j] & 63;
    *min = sc[j + 4] & 63;
  } else {
    *scale = (sc[j + 4] & 0x0f) | ((sc[j - 4] >> 6) << 4);
    *min = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

/* Q4_K: { f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }. Each 32 bytes of qs hold two sub-blocks:
 * the low nibbles are sub-block 2k, the high nibbles 2k+1. x = d*scale*q - dmin*min.
 * Q5_K adds qh[32] (between scales and qs): bit 2k of qh[l] is the fifth bit of element l of
 * sub-block 2k, bit 2k+1 that of sub-block 2k+1. */
static void dequant_q45_k(const uint8_t *p, float *dst, int64_t n_blocks, int five) {
  size_t bsize = five ? 176 : 144;
  for (int64_t b = 0; b < n_blocks; b++, p += bsize, dst += 256) {
    uint16_t h;
    memcpy(&h, p, 2);
    float d = f16_to_f32(h);
    memcpy(&h, p + 2, 2);
    float dmin = f16_to_f32(h);
    const uint8_t *scales = p + 4, *qh = p + 16, *qs = p + (five ? 48 : 16);
    for (int sb = 0; sb < 8; sb++) {
      int sc, mn;
      kq_scale_min(scales, sb, &sc, &mn);
      const uint8_t *q = qs + 32 * (sb / 2);
      int shift = (sb & 1) ? 4 : 0;
      for (int l = 0; l < 32; l++) {
        int v = (q[l] >> shift) & 0x0f;
        if (five && (qh[l] >> sb) & 1) v += 16;
        dst[sb * 32 + l] = d * (float)sc * (float)v - dmin * (float)mn;
      }
    }
  }
}

/* Q6_K: { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }: 16 sub-blocks of 16, 6-bit values minus
 * 32. Each half (128 elements) uses 64 bytes of ql and 32 of qh: element i (0..127) of the half takes
 * its low 4 bits from ql[i % 64] (low nibble for i < 64, else high) and its top 2 bits from
 * qh[i % 32] at bit position 2*(i / 32). */
static void dequant_q6_k(const uint8_t *p, float *dst, int64_t n_blocks) {
  for (int64_t b = 0; b < n_blocks; b++, p += 210, dst += 256) {
    uint16_t h;
    memcpy(&h, p + 208, 2);
    float d = f16_to_f32(h);
    const int8_t *scales = (const int8_t *)(p + 192);
    for (int half = 0; half < 2; half++) {
      const uint8_t *ql = p + 64 * half, *qh = p + 128 + 32 * half;
      for (int i = 0; i < 128; i++) {
        int lo = (ql[i % 64] >> (i < 64 ? 0 : 4)) & 0x0f;
        int hi = (qh[i % 32] >> (2 * (i / 32))) & 3;
        int e = half * 128 + i;
        dst[e] = d * (float)scales[e / 16] * (float)((lo | (hi << 4)) - 32);
      }
    }
  }
}

int dtype_to_f32(dtype_t t, const void *src, float *dst, int64_t n) {
  const uint8_t *p = src;
  switch (t) {
    case DTYPE_F32:
      memcpy(dst, src, (size_t)n * 4);
      return 0;
    case DTYPE_F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = f16_to_f32(h);
      }
      return 0;
    case DTYPE_BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = bf16_to_f32(h);
      }
      return 0;
    case DTYPE_Q8_0: /* struct { f16 d; int8 qs[32]; } */
      for (int64_t b = 0; b < n / 32; b++, p += 34) {
        uint16_t h;
        memcpy(&h, p, 2);
        float d = f16_to_f32(h);
        const int8_t *q = (const int8_t *)(p + 2);
        for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)q[j];
      }
      return 0;
    case DTYPE_Q4_0: /* struct { f16 d; uint8 qs[16]; }: low nibbles are elements 0..15, high 16..31 */
      for (int64_t b = 0; b < n / 32; b++, p += 18) {
        uint16_t h;
        memcpy(&h, p, 2);
        float d = f16_to_f32(h);
        for (int j = 0; j < 16; j++) {
          dst[b * 32 + j] = d * (float)((p[2 + j] & 0x0f) - 8);
          dst[b * 32 + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
        }
      }
      return 0;
    case DTYPE_Q4_K:
      dequant_q45_k(p, dst, n / 256, 0);
      return 0;
    case DTYPE_Q5_K:
      dequant_q45_k(p, dst, n / 256, 1);
      return 0;
    case DTYPE_Q6_K:
      dequant_q6_k(p, dst, n / 256);
      return 0;
    case DTYPE_I32:
      for (int64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        dst[i] = (float)v;
      }
      return 0;
    default:
      return STRATA_EUNSUPPORTED;
  }
}
