/* dtype.h: element types of weights and activations, their sizes, and conversions to f32. */
#ifndef STRATA_DTYPE_H
#define STRATA_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
  DTYPE_F32 = 0,
  DTYPE_F16,
  DTYPE_BF16,
  DTYPE_Q8_0, /* blocks of 32: f16 scale + 32 x int8 (GGML layout) */
  DTYPE_Q4_0, /* blocks of 32: f16 scale + 16 bytes of nibbles */
  DTYPE_Q4_K, /* super-blocks of 256 (GGML k-quants) */
  DTYPE_Q5_K,
  DTYPE_Q6_K,
  DTYPE_I32,
  DTYPE_COUNT
} dtype_t;

const char *dtype_name(dtype_t t);
/* dtype_parse: "f32", "f16", "bf16", "q8_0"... -> dtype, or -1. */
int dtype_parse(const char *s);
/* Elements per block (1 for plain types) and bytes per block. */
int dtype_block_elems(dtype_t t);
size_t dtype_block_bytes(dtype_t t);
/* dtype_row_bytes: bytes of N elements; N must be a multiple of the block size (else 0). */
size_t dtype_row_bytes(dtype_t t, int64_t n);
int dtype_is_quant(dtype_t t);
/* dtype_from_ggml: GGML type id (GGUF tensor info) -> dtype, or -1 when unsupported. */
int dtype_from_ggml(uint32_t ggml_type);
/* dtype_to_f32: converts (dequantizes) N elements of SRC to f32. N as in dtype_row_bytes.
 * Returns 0, or STRATA_EUNSUPPORTED for a type without a converter. */
int dtype_to_f32(dtype_t t, const void *src, float *dst, int64_t n);

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even */
  return (uint16_t)(u >> 16);
}

static inline float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: renormalize */
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) {
        man <<= 1;
        exp--;
      }
      u = sign | (exp << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static inline uint16_t f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000;
  int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
  uint32_t man = u & 0x7fffff;
  if (((u >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
  if (exp >= 31) return (uint16_t)(sign | 0x7c00);
  if (exp <= 0) {
    if (exp < -10) return (uint16_t)sign;
    man |= 0x800000;
    uint32_t shift = (uint32_t)(14 - exp);
    uint32_t half = 1u << (shift - 1);
    uint32_t r = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  uint32_t r = ((uint32_t)exp << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++; /* may carry into the exponent: still right */
  return (uint16_t)(sign | r);
}

#endif
