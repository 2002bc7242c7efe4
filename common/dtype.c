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
