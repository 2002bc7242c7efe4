/* test_backend_cpu.c: the be_ops_t table of the CPU backend, reached through backend_create("cpu"). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/status.h"
#include "kernels/kernels.h"
#include "worker/backend/backend.h"

static float *rand_vec(size_t n, unsigned seed) {
  float *v = malloc(n * sizeof(float));
  assert_non_null(v);
  srand(seed);
  for (size_t i = 0; i < n; i++) v[i] = (float)rand() / RAND_MAX * 2 - 1;
  return v;
}

static void test_create(void **state) {
  (void)state;
  backend_t *be = NULL;
  assert_int_equal(backend_create(&be, "cuda", 0, -1), STRATA_EUNSUPPORTED);
  assert_null(be);
  assert_int_equal(backend_create(&be, "cuda:1", 0, -1), STRATA_EUNSUPPORTED);
  assert_int_equal(backend_create(&be, "tpu", 0, -1), STRATA_EINVAL);
  assert_int_equal(backend_create(&be, "cpu", 0, DTYPE_BF16), STRATA_EUNSUPPORTED);
  assert_int_equal(backend_create(&be, "auto", 3, -1), 0);
  assert_string_equal(be->ops->name, "cpu");
  assert_int_equal(be->n_threads, 3);
  assert_int_equal(be->act_dtype, DTYPE_F32);
  backend_destroy(be);
  assert_int_equal(backend_create(&be, "cpu", 0, DTYPE_F32), 0);
  assert_true(be->n_threads >= 1);
  assert_string_equal(be->device, "cpu");
  backend_destroy(be);
  backend_destroy(NULL);
}

static void test_memory(void **state) {
  (void)state;
  backend_t *be = NULL;
  assert_int_equal(backend_create(&be, "cpu", 2, -1), 0);
  const be_ops_t *o = be->ops;
  uint8_t *p = o->alloc(be, 1000), src[1000], back[1000];
  assert_non_null(p);
  for (int i = 0; i < 1000; i++) assert_int_equal(p[i], 0); /* zeroed */
  for (int i = 0; i < 1000; i++) src[i] = (uint8_t)(i * 7);
  assert_int_equal(o->upload(be, p, src, 1000), 0);
  assert_int_equal(o->download(be, back, p, 1000), 0);
  assert_memory_equal(src, back, 1000);
  assert_int_equal(o->sync(be), 0);
  size_t fr = 0, tot = 0;
  assert_int_equal(o->mem_info(be, &fr, &tot), 0);
  assert_true(tot > 0 && fr > 0 && fr <= tot);
  float wdata[6] = {1, 2, 3, 4, 5, 6};
  weight_t hw = {.data = wdata, .dtype = DTYPE_F32, .rows = 2, .cols = 3}, dw;
  assert_int_equal(o->weight_prepare(be, &dw, &hw), 0);
  assert_int_equal(dw.rows, 2);
  assert_int_equal(dw.cols, 3);
  assert_int_equal(dw.dtype, DTYPE_F32);
  float got[6];
  assert_int_equal(o->download(be, got, dw.data, sizeof(got)), 0);
  assert_memory_equal(got, wdata, sizeof(got));
  o->weight_release(be, &dw);
  int32_t tok[2] = {5, 6};
  be_batch_t hb = {.n_tokens = 2, .tokens = tok}, db;
  assert_int_equal(o->batch_upload(be, &db, &hb), 0);
  assert_int_equal(db.n_tokens, 2);
  assert_int_equal(db.tokens[1], 6);
  o->free(be, p);
  backend_destroy(be);
}

/* Each op once, against the kernel it wraps called directly (bit-exact: same code, other pool). */
static void test_ops(void **state) {
  (void)state;
  backend_t *be = NULL;
  assert_int_equal(backend_create(&be, "cpu", 2, -1), 0);
  const be_ops_t *o = be->ops;
  const int T = 5, C = 64, H = 4, Hkv = 2, D = 16, F = 96, V = 10, B = 4;
  float *x = rand_vec((size_t)T * C, 1), *w = rand_vec(C, 2), *emb = rand_vec((size_t)V * C, 3);
  float *wm = rand_vec((size_t)F * C, 4), *bias = rand_vec(F, 5);
  float *out = o->alloc(be, (size_t)T * F * 4), *ref = malloc((size_t)T * F * 4);
  int32_t ids[5] = {1, 9, 0, 4, 4};
  weight_t we = {.data = emb, .dtype = DTYPE_F32, .rows = V, .cols = C};
  o->embed(be, out, &we, ids, T);
  for (int t = 0; t < T; t++) assert_memory_equal(out + t * C, emb + ids[t] * C, C * 4);

  o->rmsnorm(be, out, x, w, T, C, 1e-6f);
  kern_rmsnorm(ref, x, w, T, C, 1e-6f, NULL);
  assert_memory_equal(out, ref, (size_t)T * C * 4);

  float *res1 = rand_vec((size_t)T * C, 6), *res2 = rand_vec((size_t)T * C, 6);
  o->add_rmsnorm(be, out, res1, x, w, T, C, 1e-6f);
  kern_add_rmsnorm(ref, res2, x, w, T, C, 1e-6f, NULL);
  assert_memory_equal(out, ref, (size_t)T * C * 4);
  assert_memory_equal(res1, res2, (size_t)T * C * 4);

  uint16_t *wbf = malloc((size_t)F * C * 2);
  for (int i = 0; i < F * C; i++) wbf[i] = f32_to_bf16(wm[i]);
  weight_t wmat = {.data = wbf, .dtype = DTYPE_BF16, .rows = F, .cols = C};
  o->matmul(be, out, x, &wmat, bias, T);
  assert_int_equal(kern_matmul(ref, x, wbf, DTYPE_BF16, F, C, bias, T, NULL), 0);
  assert_memory_equal(out, ref, (size_t)T * F * 4);

  float *g = rand_vec((size_t)T * F, 7), *u = rand_vec((size_t)T * F, 8);
  o->silu_mul(be, out, g, u, T, F);
  kern_silu_mul(ref, g, u, T, F, NULL);
  assert_memory_equal(out, ref, (size_t)T * F * 4);

  int32_t rows[2] = {4, 1};
  o->gather_rows(be, out, g, rows, 2, F);
  assert_memory_equal(out, g + 4 * F, F * 4);
  assert_memory_equal(out + F, g + 1 * F, F * 4);
  float host[96];
  assert_int_equal(o->to_host_f32(be, host, out, F), 0);
  assert_memory_equal(host, g + 4 * F, F * 4);

  /* rope_kv_write + attention: two sequences, a 3-token prefill and a 2-token chunk. */
  be_kv_t kv = {.dtype = DTYPE_F32, .n_blocks = 6, .n_layers = 2, .n_kv_heads = Hkv, .block_size = B, .head_dim = D};
  kv.block_bytes = (size_t)kv.n_layers * 2 * Hkv * B * D * 4;
  kv.data = o->alloc(be, kv.n_blocks * kv.block_bytes);
  kern_kv_t kkv = {.data = malloc(kv.n_blocks * kv.block_bytes), .n_blocks = 6, .n_layers = 2, .n_kv_heads = Hkv,
                   .block_size = B, .head_dim = D};
  memset(kkv.data, 0, kv.n_blocks * kv.block_bytes);
  int32_t pos[5] = {0, 1, 2, 3, 4}, seq_of[5] = {0, 0, 0, 1, 1}, q_start[3] = {0, 3, 5}, kv_len[2] = {3, 5};
  int32_t bt[4] = {3, 0, 5, 2}, slots[5] = {3 * B + 0, 3 * B + 1, 3 * B + 2, 2 * B + 3, 2 * B + 0};
  pos[3] = 3, pos[4] = 4; /* sequence 1 at positions 3 and 4: blocks 5 (pos 0..3) and 2 (pos 4..7) */
  slots[3] = 5 * B + 3, slots[4] = 2 * B + 0;
  float *q1 = rand_vec((size_t)T * H * D, 9), *k1 = rand_vec((size_t)T * Hkv * D, 10), *v = rand_vec(T * Hkv * D, 11);
  float *q2 = malloc((size_t)T * H * D * 4), *k2 = malloc((size_t)T * Hkv * D * 4);
  memcpy(q2, q1, (size_t)T * H * D * 4);
  memcpy(k2, k1, (size_t)T * Hkv * D * 4);
  float inv_freq[8];
  for (int i = 0; i < D / 2; i++) inv_freq[i] = powf(10000.0f, -2.0f * i / D);
  be_rope_t rope = {.style = ROPE_STYLE_NEOX, .head_dim = D, .inv_freq = inv_freq};
  be_batch_t hb = {.n_tokens = T, .n_seqs = 2, .tokens = ids, .positions = pos, .slots = slots, .seq_of = seq_of,
                   .q_start = q_start, .kv_len = kv_len, .block_table = bt, .max_blocks = 2, .max_kv_len = 5},
             b;
  assert_int_equal(o->batch_upload(be, &b, &hb), 0);
  o->rope_kv_write(be, q1, k1, v, &kv, 1, &b, &rope, H, Hkv);
  kern_rope_kv_write(q2, k2, v, &kkv, 1, pos, slots, T, H, ROPE_STYLE_NEOX, inv_freq, NULL);
  assert_memory_equal(q1, q2, (size_t)T * H * D * 4);
  assert_memory_equal(k1, k2, (size_t)T * Hkv * D * 4);
  assert_memory_equal(kv.data, kkv.data, kv.n_blocks * kv.block_bytes);
  float *ao = malloc((size_t)T * H * D * 4), *ar = malloc((size_t)T * H * D * 4);
  o->attention(be, ao, q1, &kv, 1, &b, H, Hkv, 0.25f);
  kern_attention(ar, q2, &kkv, 1, pos, seq_of, bt, 2, T, H, 0.25f, NULL);
  assert_memory_equal(ao, ar, (size_t)T * H * D * 4);
  /* the first token of sequence 0 sees only itself: its output is its own v (GQA: heads 0,1 -> kv 0) */
  for (int i = 0; i < D; i++) assert_float_equal(ao[i], v[i], 1e-6);
  for (int i = 0; i < D; i++) assert_float_equal(ao[2 * D + i], v[D + i], 1e-6);

  /* the fused-projection ops: a (T, 2F) gate|up and a (T, LD) q|k|v (with Qwen3 norms), against the kernels */
  float *gu = rand_vec((size_t)T * 2 * F, 12);
  o->silu_mul_cat(be, out, gu, T, F);
  kern_silu_mul_ld(ref, gu, gu + F, T, F, 2 * F, NULL);
  assert_memory_equal(out, ref, (size_t)T * F * 4);
  const int LD = (H + 2 * Hkv) * D;
  float *qkv = rand_vec((size_t)T * LD, 13), *qn = rand_vec(D, 14), *kn = rand_vec(D, 15);
  memset(kv.data, 0, kv.n_blocks * kv.block_bytes);
  memset(kkv.data, 0, kv.n_blocks * kv.block_bytes);
  o->rope_qkv_write(be, q1, qkv, LD, qn, kn, 1e-6f, &kv, 0, &b, &rope, H, Hkv);
  kern_rope_qkv_write(q2, qkv, LD, qn, kn, 1e-6f, &kkv, 0, pos, slots, T, H, ROPE_STYLE_NEOX, inv_freq, NULL);
  assert_memory_equal(q1, q2, (size_t)T * H * D * 4);
  assert_memory_equal(kv.data, kkv.data, kv.n_blocks * kv.block_bytes);
  /* the CPU keeps projections separate: its weights alias the host ones */
  assert_null(o->weight_prepare_cat);
  free(gu), free(qkv), free(qn), free(kn);

  free(ao), free(ar), free(q1), free(q2), free(k1), free(k2), free(v), free(kkv.data);
  o->free(be, kv.data);
  free(x), free(w), free(emb), free(wm), free(bias), free(ref), free(res1), free(res2), free(wbf), free(g), free(u);
  o->free(be, out);
  backend_destroy(be);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create),
      cmocka_unit_test(test_memory),
      cmocka_unit_test(test_ops),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
