/* test_status.c: the status table, dtype conversions and block hashing (common/). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "common/block_hash.h"
#include "common/dtype.h"
#include "common/status.h"

static void test_strerror(void **state) {
  (void)state;
  assert_string_equal(strata_strerror(0), "success");
  assert_string_equal(strata_strerror(STRATA_EFORMAT), "malformed data");
  assert_string_equal(strata_errname(STRATA_ENOMEM), "ENOMEM");
  assert_string_equal(strata_strerror(-999), "unknown error");
}

/* Reference values from IEEE 754 binary16 / bfloat16 bit patterns. */
static void test_half_floats(void **state) {
  (void)state;
  assert_true(f16_to_f32(0x3c00) == 1.0f);
  assert_true(f16_to_f32(0xc000) == -2.0f);
  assert_true(f16_to_f32(0x7bff) == 65504.0f);
  assert_true(f16_to_f32(0x0001) == ldexpf(1.0f, -24)); /* smallest subnormal */
  assert_true(isinf(f16_to_f32(0x7c00)));
  assert_int_equal(f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(f32_to_f16(1e6f), 0x7c00);
  assert_int_equal(f32_to_f16(ldexpf(1.0f, -24)), 0x0001);
  assert_int_equal(f32_to_f16(0.1f), 0x2e66);
  assert_true(bf16_to_f32(0x3f80) == 1.0f);
  assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(f32_to_bf16(3.14159265f), 0x4049);
  for (uint32_t h = 0; h < 0x7c00; h++) assert_int_equal(f32_to_f16(f16_to_f32((uint16_t)h)), h);
}

static void test_q8_0(void **state) {
  (void)state;
  uint8_t blk[34];
  uint16_t d = f32_to_f16(0.5f);
  memcpy(blk, &d, 2);
  for (int i = 0; i < 32; i++) blk[2 + i] = (uint8_t)(int8_t)(i - 16);
  float out[32];
  assert_int_equal(dtype_to_f32(DTYPE_Q8_0, blk, out, 32), 0);
  for (int i = 0; i < 32; i++) assert_true(out[i] == 0.5f * (float)(i - 16));
  assert_int_equal(dtype_row_bytes(DTYPE_Q8_0, 64), 68);
  assert_int_equal(dtype_row_bytes(DTYPE_Q8_0, 33), 0);
  assert_int_equal(dtype_from_ggml(30), DTYPE_BF16);
}

static void test_block_hash_chain(void **state) {
  (void)state;
  int32_t toks[48];
  for (int i = 0; i < 48; i++) toks[i] = i * 7;
  uint64_t h[4];
  assert_int_equal(block_hash_chain(toks, 40, 16, 1, h, 4), 2);
  assert_true(h[0] == block_hash(0, toks, 16, 1));
  assert_true(h[1] == block_hash(h[0], toks + 16, 16, 1));
  /* chaining: the same block after a different prefix hashes differently */
  assert_true(block_hash(0, toks + 16, 16, 1) != h[1]);
  assert_true(block_hash(0, toks, 16, 2) != h[0]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror),
      cmocka_unit_test(test_half_floats),
      cmocka_unit_test(test_q8_0),
      cmocka_unit_test(test_block_hash_chain),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
