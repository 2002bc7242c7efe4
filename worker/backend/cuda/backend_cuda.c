/* backend_cuda.c: the CUDA backend: device memory, one stream, cuBLASLt GEMMs and the kernels of kernels/cuda. */
#include "worker/backend/cuda/backend_cuda.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "common/log.h"
#include "common/status.h"
#include "kernels/kernels_cuda.h"
#include "kernels/kernels_cuda_ids.h"
#include "kernels/kernels_cuda_sample.h"

#define GEMM_CACHE 256                 /* cached cuBLASLt plans, keyed by (N, K, T, dtype) */
#define GEMM_WORKSPACE (32u << 20)     /* cuBLASLt workspace bytes */
#define GEMM_TUNE_ALGOS 8              /* heuristic candidates timed when a plan is tuned */
#define GEMM_TUNE_MIN_T 64             /* smaller products keep the first heuristic (cheap, mostly decode) */
#define STAGE_BYTES ((size_t)32 << 20) /* one of the two pinned staging buffers of weight uploads */
#define ATT_PART_BYTES ((size_t)16 << 20) /* split-KV partials: ~2 x 8 blocks per SM, G(D+2) floats each */

typedef struct {
  int valid, N, K, T;
  int tuned; /* 1: ALGO is final (tuning done, or not wanted for this plan) */
  int timed; /* 1: ALGO won a timing of the candidates (or came from a timed plan of T's bucket) */
  dtype_t dt;
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
} gemm_plan_t;

/* A decode step captured as a CUDA graph, replayed while the step's shape (and so every launch argument)
 * is the same: the kernels read positions, slots and block tables from the batch buffer at run time. */
#define GRAPH_CACHE 32
typedef struct {
  int T, S, max_blocks, n_logits;
  int patch; /* the batch has prev_rows (its layout differs, and the graph holds patch_tokens) */
  cudaGraphExec_t exec;
} graph_entry_t;
enum { STEP_EAGER = 0, STEP_CAPTURE, STEP_REPLAY };

typedef struct {
  int device;
  int graphs_on;  /* STRATA_CUDA_GRAPHS (default 1) */
  int graph_max_t; /* decode steps of at most this many tokens are graphs (STRATA_CUDA_GRAPH_MAX_T, 64) */
  cuda_att_work_t att; /* attention scratch and kernel choice (STRATA_CUDA_ATTENTION) */
  int step_mode;  /* STEP_* of the step in flight */
  graph_entry_t graphs[GRAPH_CACHE], *step_graph;
  int graph_next; /* the entry a new graph replaces when the cache is full */
  cudaStream_t stream;
  cublasLtHandle_t lt;
  void *workspace;
  gemm_plan_t plans[GEMM_CACHE];
  int gemv_max_t; /* T up to which matmul uses our GEMV instead of cuBLASLt */
  int gemm_tune;  /* time cuBLASLt's candidates per plan (STRATA_CUDA_GEMM_TUNE=1; default 0) */
  int carveout;     /* shared-memory carveout (percent) of steps of T <= gemv_max_t (STRATA_CUDA_CARVEOUT; -1 off) */
  cudaEvent_t tune_ev[2];
  int fuse_on;    /* weight_prepare_cat fuses (STRATA_CUDA_FUSE, default 1) */
  int err; /* the first error of an op (ops return void); reported by sync and to_host_f32 */
  /* batch_upload: one pinned buffer, one copy */
  int32_t *batch_host, *batch_dev;
  size_t batch_cap; /* int32 elements */
  cudaEvent_t batch_copied;
  /* to_host_f32 of bf16/f16 activations */
  float *f32_scratch;
  void *sample_scratch;
  size_t sample_scratch_cap;
  size_t f32_cap;
  /* asynchronous steps (draw_rows): the drawn ids on the device, which patch_tokens reads (a captured graph
   * reads them at this address: a new buffer clears the graphs), with the sampling parameters; per host
   * slot the pinned ids and parameters, and an event after the slot's download */
  int32_t *draw_dev;
  be_sample_t *draw_sp_dev;
  int draw_cap;
  int32_t *draw_host[2];
  be_sample_t *draw_sp_host[2];
  int draw_host_cap[2];
  cudaEvent_t draw_done[2];
  /* weight uploads: double-buffered pinned host and device staging */
  void *stage_host[2], *stage_dev[2];
  cudaEvent_t stage_free[2];
} cuda_ctx_t;

static cuda_ctx_t *ctx_of(backend_t *be) { return be->ctx; }

/* cu_ok: 0 when E is success, else logs WHAT with the CUDA error and returns STRATA_EIO. */
static int cu_ok(cudaError_t e, const char *what) {
  if (e == cudaSuccess) return 0;
  log_error("cuda backend: %s: %s", what, cudaGetErrorString(e));
  return STRATA_EIO;
}

static void note(backend_t *be, int rc) {
  cuda_ctx_t *c = ctx_of(be);
  if (rc && !c->err) c->err = rc;
}

/* ---- decode steps as CUDA graphs ---- */

static void graphs_clear(cuda_ctx_t *c) {
  for (int i = 0; i < GRAPH_CACHE; i++)
    if (c->graphs[i].exec) cudaGraphExecDestroy(c->graphs[i].exec);
  memset(c->graphs, 0, sizeof c->graphs);
  c->step_graph = NULL;
}

/* step_begin: after a batch upload. A decode-only batch (one token per sequence) replays its cached graph,
 * or is captured into a new one; anything else runs eagerly. */
static int step_end(cuda_ctx_t *c);

static void step_begin(cuda_ctx_t *c, const be_batch_t *b) {
  if (c->step_mode != STEP_EAGER) step_end(c); /* the previous step never read its results */
  c->step_mode = STEP_EAGER;
  if (!c->graphs_on || c->err || b->n_tokens != b->n_seqs || b->n_tokens > c->graph_max_t) return;
  for (int i = 0; i < GRAPH_CACHE; i++) {
    graph_entry_t *g = &c->graphs[i];
    if (g->exec && g->T == b->n_tokens && g->S == b->n_seqs && g->max_blocks == b->max_blocks &&
        g->n_logits == b->n_logits && g->patch == (b->prev_rows != NULL)) {
      c->step_graph = g;
      c->step_mode = STEP_REPLAY;
      return;
    }
  }
  graph_entry_t *g = NULL;
  for (int i = 0; i < GRAPH_CACHE && !g; i++)
    if (!c->graphs[i].exec) g = &c->graphs[i];
  if (!g) {
    g = &c->graphs[c->graph_next];
    c->graph_next = (c->graph_next + 1) % GRAPH_CACHE;
    cudaGraphExecDestroy(g->exec);
  }
  *g = (graph_entry_t){.T = b->n_tokens, .S = b->n_seqs, .max_blocks = b->max_blocks, .n_logits = b->n_logits,
                       .patch = b->prev_rows != NULL};
  if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  c->step_graph = g;
  c->step_mode = STEP_CAPTURE;
}

/* step_end: before the step's results are read: ends a capture and launches the graph (new or cached). */
static int step_end(cuda_ctx_t *c) {
  int mode = c->step_mode, rc = 0;
  c->step_mode = STEP_EAGER;
  graph_entry_t *g = c->step_graph;
  if (mode == STEP_CAPTURE) {
    cudaGraph_t graph = NULL;
    rc = cu_ok(cudaStreamEndCapture(c->stream, &graph), "capturing a decode step");
    if (!rc && !c->err) rc = cu_ok(cudaGraphInstantiate(&g->exec, graph, 0), "instantiating a decode step graph");
    if (graph) cudaGraphDestroy(graph);
    if (rc || c->err) {
      /* the step's ops were recorded, not run: this step fails, later ones run eagerly */
      log_error("cuda backend: a decode step could not run as a CUDA graph; graphs are off from now on");
      g->exec = NULL;
      c->graphs_on = 0;
      return rc ? rc : c->err;
    }
  }
  if (mode != STEP_EAGER) rc = cu_ok(cudaGraphLaunch(g->exec, c->stream), "launching a decode step graph");
  return rc;
}

/* In a replayed step the graph already holds every op: the op calls of the forward pass are skipped. */
static int replaying(backend_t *be) { return ctx_of(be)->step_mode == STEP_REPLAY; }

/* Memory calls inside a step (after batch_upload, before the logits are read) would break the capture or
 * run out of order with a replayed graph: they are refused. */
static int outside_step(backend_t *be, const char *what) {
  cuda_ctx_t *c = ctx_of(be);
  if (c->step_mode == STEP_EAGER) return 0;
  log_error("cuda backend: %s inside a forward step (between batch_upload and to_host_f32/sync) is not allowed",
            what);
  if (!c->err) c->err = STRATA_EINVAL;
  return STRATA_EINVAL;
}

/* ---- memory ---- */

static void *cuda_alloc(backend_t *be, size_t bytes) {
  cuda_ctx_t *c = ctx_of(be);
  void *p = NULL;
  if (outside_step(be, "alloc")) return NULL;
  if (bytes == 0) bytes = 1;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    log_error("cuda backend: out of device memory allocating %.1f MiB on %s (%s)", bytes / 1048576.0, be->device,
              cudaGetErrorString(e));
    return NULL;
  }
  if (cu_ok(cudaMemsetAsync(p, 0, bytes, c->stream), "zeroing an allocation") ||
      cu_ok(cudaStreamSynchronize(c->stream), "zeroing an allocation")) {
    cudaFree(p);
    return NULL;
  }
  return p;
}

static void cuda_free(backend_t *be, void *p) {
  graphs_clear(ctx_of(be)); /* a cached graph may point into P */
  if (p) cudaFree(p);
}

static int cuda_upload(backend_t *be, void *dst, const void *src, size_t bytes) {
  cuda_ctx_t *c = ctx_of(be);
  if (!bytes) return 0;
  if (outside_step(be, "upload")) return STRATA_EINVAL;
  int rc = cu_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream), "upload");
  if (!rc) rc = cu_ok(cudaStreamSynchronize(c->stream), "upload");
  return rc;
}

static int cuda_download(backend_t *be, void *dst, const void *src, size_t bytes) {
  cuda_ctx_t *c = ctx_of(be);
  if (!bytes) return 0;
  if (outside_step(be, "download")) return STRATA_EINVAL;
  int rc = cu_ok(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download");
  if (!rc) rc = cu_ok(cudaStreamSynchronize(c->stream), "download");
  return rc;
}

static int cuda_sync(backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  int rs = step_end(c);
  int rc = cu_ok(cudaStreamSynchronize(c->stream), "synchronize");
  if (rs && !rc) rc = rs;
  if (c->err) {
    rc = c->err;
    c->err = 0;
  }
  return rc;
}

/* STRATA_CUDA_RESERVE_MIB (default 0) is subtracted from the free memory reported: a stopgap while the
 * engine sizes the KV cache from free memory before the weights are on the device (see docs/gpu.md). */
static int cuda_mem_info(backend_t *be, size_t *free_bytes, size_t *total_bytes) {
  int rc = cu_ok(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
  const char *env = getenv("STRATA_CUDA_RESERVE_MIB");
  size_t reserve = env ? (size_t)strtoull(env, NULL, 10) << 20 : 0;
  if (!rc) *free_bytes = *free_bytes > reserve ? *free_bytes - reserve : 0;
  return rc;
}

/* ---- weights ---- */

/* stage_chunk: fills staging buffer I from SRC (N elements of STYPE, or ROWS rows of a quantized type
 * dequantized to f32), uploads it and converts it into DST (DTYPE) at element offset OFF. */
static int stage_chunk(backend_t *be, int i, void *dst, dtype_t dtype, int64_t off, const void *src, dtype_t stype,
                       int64_t n) {
  cuda_ctx_t *c = ctx_of(be);
  int rc = cu_ok(cudaEventSynchronize(c->stage_free[i]), "weight staging");
  if (rc) return rc;
  dtype_t ctype = stype;
  size_t bytes;
  if (dtype_is_quant(stype)) {
    if ((rc = dtype_to_f32(stype, src, c->stage_host[i], n)) != 0) return rc;
    ctype = DTYPE_F32;
    bytes = (size_t)n * 4;
  } else {
    bytes = dtype_row_bytes(stype, n);
    memcpy(c->stage_host[i], src, bytes);
  }
  char *d = (char *)dst + (size_t)off * dtype_act_bytes(dtype);
  if (ctype == dtype) {
    rc = cu_ok(cudaMemcpyAsync(d, c->stage_host[i], bytes, cudaMemcpyHostToDevice, c->stream), "weight upload");
  } else {
    rc = cu_ok(cudaMemcpyAsync(c->stage_dev[i], c->stage_host[i], bytes, cudaMemcpyHostToDevice, c->stream),
               "weight upload");
    if (!rc) rc = cuda_convert(d, dtype, c->stage_dev[i], ctype, n, c->stream);
  }
  if (!rc) rc = cu_ok(cudaEventRecord(c->stage_free[i], c->stream), "weight staging");
  return rc;
}

static int stage_init(backend_t *be) {
  cuda_ctx_t *c = ctx_of(be);
  if (c->stage_host[0]) return 0;
  for (int i = 0; i < 2; i++) {
    if (cu_ok(cudaHostAlloc(&c->stage_host[i], STAGE_BYTES, cudaHostAllocDefault), "pinned staging buffer") ||
        cu_ok(cudaMalloc(&c->stage_dev[i], STAGE_BYTES), "device staging buffer") ||
        cu_ok(cudaEventCreateWithFlags(&c->stage_free[i], cudaEventDisableTiming), "staging event"))
      return STRATA_ENOMEM;
  }
  return 0;
}

static int weight_dtype_ok(const weight_t *src) {
  dtype_t st = src->dtype;
  if (st == DTYPE_F32 || st == DTYPE_F16 || st == DTYPE_BF16 || dtype_is_quant(st)) return 1;
  log_error("cuda backend: weight dtype %s cannot be placed on the GPU", dtype_name(st));
  return 0;
}

/* upload_weight: host weight SRC converted to DT into device memory P (its elements in order). */
static int upload_weight(backend_t *be, void *p, dtype_t dt, const weight_t *src) {
  dtype_t st = src->dtype;
  int64_t n = src->rows * src->cols;
  if (src->gen.on) /* a dummy matrix: made in place, the values the host loader would have made */
    return cuda_dummy_fill(p, dt, st, src->gen.seed, src->gen.tensor, src->gen.scale, n, ctx_of(be)->stream);
  int rc = stage_init(be);
  if (!rc && dtype_is_quant(st)) {
    int64_t rows_per = (int64_t)(STAGE_BYTES / ((size_t)src->cols * 4));
    if (rows_per < 1) {
      log_error("cuda backend: a weight row of %lld elements exceeds the staging buffer", (long long)src->cols);
      rc = STRATA_EUNSUPPORTED;
    }
    size_t row_bytes = dtype_row_bytes(st, src->cols);
    for (int64_t r = 0, i = 0; !rc && r < src->rows; r += rows_per, i++) {
      int64_t nr = src->rows - r < rows_per ? src->rows - r : rows_per;
      rc = stage_chunk(be, (int)(i & 1), p, dt, r * src->cols, (const char *)src->data + (size_t)r * row_bytes, st,
                       nr * src->cols);
    }
  } else if (!rc) {
    int64_t per = (int64_t)(STAGE_BYTES / 4);
    size_t esz = dtype_row_bytes(st, 1);
    for (int64_t o = 0, i = 0; !rc && o < n; o += per, i++)
      rc = stage_chunk(be, (int)(i & 1), p, dt, o, (const char *)src->data + (size_t)o * esz, st,
                       n - o < per ? n - o : per);
  }
  return rc;
}

/* Matrices become the activation dtype; vectors (norm weights, biases: one row) stay f32, as the ops
 * take them as float. Quantized weights are dequantized on the host, chunk by chunk. The copies go
 * through two pinned buffers so that filling one overlaps the transfer of the other. */
static int cuda_weight_prepare(backend_t *be, weight_t *dst, const weight_t *src) {
  cuda_ctx_t *c = ctx_of(be);
  memset(dst, 0, sizeof *dst);
  dtype_t dt = src->rows == 1 ? DTYPE_F32 : be->act_dtype;
  if (!weight_dtype_ok(src)) return STRATA_EUNSUPPORTED;
  void *p = cuda_alloc(be, (size_t)(src->rows * src->cols) * dtype_act_bytes(dt));
  if (!p) return STRATA_ENOMEM;
  int rc = upload_weight(be, p, dt, src);
  if (!rc) rc = cu_ok(cudaStreamSynchronize(c->stream), "weight upload");
  if (rc) {
    cudaFree(p);
    return rc;
  }
  *dst = (weight_t){.data = p, .dtype = dt, .rows = src->rows, .cols = src->cols};
  return 0;
}

/* Fused projections: the parts stacked in one allocation, so that one GEMV streams them all (STRATA_CUDA_FUSE=0
 * turns this off: the forward pass then places the parts one by one). */
static int cuda_weight_prepare_cat(backend_t *be, weight_t *dst, const weight_t *const *srcs, int n) {
  cuda_ctx_t *c = ctx_of(be);
  memset(dst, 0, sizeof *dst);
  if (!c->fuse_on || n < 1) return STRATA_EUNSUPPORTED;
  int vec = srcs[0]->rows == 1;
  int64_t rows = 0, cols = 0;
  for (int i = 0; i < n; i++) {
    const weight_t *s = srcs[i];
    if ((!s->data && !s->gen.on) || (vec && s->rows != 1) || (!vec && s->cols != srcs[0]->cols))
      return STRATA_EUNSUPPORTED;
    if (!weight_dtype_ok(s)) return STRATA_EUNSUPPORTED;
    rows += s->rows;
    cols += s->cols;
  }
  if (vec) rows = 1;
  else cols = srcs[0]->cols;
  dtype_t dt = vec ? DTYPE_F32 : be->act_dtype;
  size_t esz = dtype_act_bytes(dt);
  char *p = cuda_alloc(be, (size_t)(rows * cols) * esz);
  if (!p) return STRATA_ENOMEM;
  int rc = 0;
  size_t off = 0;
  for (int i = 0; i < n && !rc; i++) {
    rc = upload_weight(be, p + off, dt, srcs[i]);
    off += (size_t)(srcs[i]->rows * srcs[i]->cols) * esz;
  }
  if (!rc) rc = cu_ok(cudaStreamSynchronize(c->stream), "weight upload");
  if (rc) {
    cudaFree(p);
    return rc;
  }
  *dst = (weight_t){.data = p, .dtype = dt, .rows = rows, .cols = cols};
  return 0;
}

static void cuda_weight_release(backend_t *be, weight_t *w) {
  if (w->data) cudaFree((void *)w->data);
  memset(w, 0, sizeof *w);
}

/* ---- the batch: every array in one pinned buffer and one copy ---- */

static int batch_reserve(backend_t *be, size_t n) {
  cuda_ctx_t *c = ctx_of(be);
  if (n <= c->batch_cap) return 0;
  size_t cap = n < 4096 ? 4096 : n * 2;
  int rc = cu_ok(cudaStreamSynchronize(c->stream), "batch buffer");
  if (rc) return rc;
  /* every captured graph reads the step's arrays from the old device buffer: they go with it */
  graphs_clear(c);
  cudaFreeHost(c->batch_host);
  cudaFree(c->batch_dev);
  c->batch_host = NULL;
  c->batch_dev = NULL;
  c->batch_cap = 0;
  if (cu_ok(cudaHostAlloc((void **)&c->batch_host, cap * 4, cudaHostAllocDefault), "pinned batch buffer") ||
      cu_ok(cudaMalloc((void **)&c->batch_dev, cap * 4), "device batch buffer"))
    return STRATA_ENOMEM;
  c->batch_cap = cap;
  return 0;
}

static int cuda_batch_upload(backend_t *be, be_batch_t *dst, const be_batch_t *src) {
  cuda_ctx_t *c = ctx_of(be);
  const int T = src->n_tokens, S = src->n_seqs;
  struct {
    const int32_t *p;
    size_t n;
    const int32_t **out;
  } parts[] = {
      {src->tokens, (size_t)T, &dst->tokens},         {src->positions, (size_t)T, &dst->positions},
      {src->slots, (size_t)T, &dst->slots},           {src->seq_of, (size_t)T, &dst->seq_of},
      {src->q_start, (size_t)S + 1, &dst->q_start},   {src->kv_len, (size_t)S, &dst->kv_len},
      {src->block_table, (size_t)S * (size_t)(src->max_blocks > 0 ? src->max_blocks : 0), &dst->block_table},
      {src->logit_rows, (size_t)(src->n_logits > 0 ? src->n_logits : 0), &dst->logit_rows},
      {src->prev_rows, (size_t)T, &dst->prev_rows},
  };
  *dst = *src;
  size_t total = 0;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) total += parts[i].p ? (parts[i].n + 3) & ~(size_t)3 : 0;
  int rc = batch_reserve(be, total);
  /* the previous step's copy must have left the pinned buffer before it is refilled */
  if (!rc) rc = cu_ok(cudaEventSynchronize(c->batch_copied), "batch upload");
  if (rc) return rc;
  size_t o = 0;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    if (!parts[i].p) {
      *parts[i].out = NULL;
      continue;
    }
    memcpy(c->batch_host + o, parts[i].p, parts[i].n * 4);
    *parts[i].out = c->batch_dev + o;
    o += (parts[i].n + 3) & ~(size_t)3;
  }
  rc = cu_ok(cudaMemcpyAsync(c->batch_dev, c->batch_host, o * 4, cudaMemcpyHostToDevice, c->stream), "batch upload");
  if (!rc) rc = cu_ok(cudaEventRecord(c->batch_copied, c->stream), "batch upload");
  /* the kernels of a step served by our GEMV share one carveout; cuBLASLt's steps keep the driver's choice */
  cuda_set_launch_carveout(src->n_tokens <= c->gemv_max_t ? c->carveout : -1);
  if (!rc) step_begin(c, dst);
  return rc;
}

/* ---- ops ---- */

static void cuda_op_embed(backend_t *be, void *out, const weight_t *emb, const int32_t *ids, int T) {
  if (replaying(be)) return;
  note(be, cuda_embed(out, emb->data, emb->rows, (int)emb->cols, ids, T, be->act_dtype, ctx_of(be)->stream));
}

/* STRATA_CUDA_SKIP=norm,rope,attention (any of them): those ops do nothing. For measurements only (what an
 * op class costs inside a real step, by difference): the results are wrong. */
enum { SKIP_NORM = 1, SKIP_ROPE = 2, SKIP_ATTENTION = 4 };

static int skip_ops(void) {
  static int mask = -1;
  if (mask < 0) {
    const char *e = getenv("STRATA_CUDA_SKIP");
    mask = 0;
    if (e && strstr(e, "norm")) mask |= SKIP_NORM;
    if (e && strstr(e, "rope")) mask |= SKIP_ROPE;
    if (e && strstr(e, "attention")) mask |= SKIP_ATTENTION;
    if (mask) log_warn("cuda backend: STRATA_CUDA_SKIP=%s: ops left out for a measurement, results are wrong", e);
  }
  return mask;
}

static void cuda_op_rmsnorm(backend_t *be, void *out, const void *x, const float *w, int rows, int C, float eps) {
  if (replaying(be) || (skip_ops() & SKIP_NORM)) return;
  note(be, cuda_rmsnorm(out, x, w, rows, C, eps, be->act_dtype, ctx_of(be)->stream));
}

static void cuda_op_add_rmsnorm(backend_t *be, void *out, void *residual, const void *x, const float *w, int rows,
                                int C, float eps) {
  if (replaying(be) || (skip_ops() & SKIP_NORM)) return;
  note(be, cuda_add_rmsnorm(out, residual, x, w, rows, C, eps, be->act_dtype, ctx_of(be)->stream));
}

static cudaDataType_t lt_type(dtype_t t) {
  return t == DTYPE_F32 ? CUDA_R_32F : t == DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

static void plan_destroy(gemm_plan_t *p) {
  if (p->op) cublasLtMatmulDescDestroy(p->op);
  if (p->a) cublasLtMatrixLayoutDestroy(p->a);
  if (p->b) cublasLtMatrixLayoutDestroy(p->b);
  if (p->c) cublasLtMatrixLayoutDestroy(p->c);
  memset(p, 0, sizeof *p);
}

static int t_bucket(int T) { /* the power of two >= T: plans of one bucket share a tuned algorithm */
  int b = 1;
  while (b < T && b < (1 << 30)) b <<= 1;
  return b;
}

/* plan_heuristics: up to MAX candidates of cuBLASLt's heuristic for plan P (best first) into RES; returns
 * how many (0 when none or on error). */
static int plan_heuristics(cuda_ctx_t *c, gemm_plan_t *p, cublasLtMatmulHeuristicResult_t *res, int max) {
  cublasLtMatmulPreference_t pref = NULL;
  uint64_t ws = GEMM_WORKSPACE;
  int n_res = 0;
  int ok = cublasLtMatmulPreferenceCreate(&pref) == 0 &&
           cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws) == 0 &&
           cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, max, res, &n_res) == 0;
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  return ok ? n_res : 0;
}

/* plan_time: milliseconds of 2 runs of P with ALGO on the real buffers after one untimed run, or -1 when the
 * algorithm fails. Synchronizes the stream. */
static float plan_time(cuda_ctx_t *c, gemm_plan_t *p, const cublasLtMatmulAlgo_t *algo, void *out, const void *x,
                       const void *w) {
  const float alpha = 1.0f, beta = 0.0f;
  for (int r = 0; r < 3; r++) {
    if (r == 1 && cudaEventRecord(c->tune_ev[0], c->stream) != cudaSuccess) return -1;
    if (cublasLtMatmul(c->lt, p->op, &alpha, w, p->a, x, p->b, &beta, out, p->c, out, p->c, algo, c->workspace,
                       GEMM_WORKSPACE, c->stream) != CUBLAS_STATUS_SUCCESS)
      return -1;
  }
  float ms = -1;
  if (cudaEventRecord(c->tune_ev[1], c->stream) != cudaSuccess || cudaEventSynchronize(c->tune_ev[1]) != cudaSuccess ||
      cudaEventElapsedTime(&ms, c->tune_ev[0], c->tune_ev[1]) != cudaSuccess)
    ms = -1;
  cudaGetLastError();
  return ms;
}

/* plan_tune: picks P's algorithm by timing (outside a capture only: the caller checks). A tuned plan of the
 * same (N, K, dtype) and T bucket lends its algorithm when cuBLASLt accepts it for this T (prefill chunks of
 * varying length time once per bucket); else up to GEMM_TUNE_ALGOS heuristic candidates are timed on the
 * call's own buffers (OUT is overwritten, which the call does anyway) and the fastest kept. A failure keeps
 * the first heuristic. */
static void plan_tune(cuda_ctx_t *c, gemm_plan_t *p, void *out, const void *x, const void *w) {
  p->tuned = 1;
  for (int i = 0; i < GEMM_CACHE; i++) {
    const gemm_plan_t *q = &c->plans[i];
    cublasLtMatmulHeuristicResult_t chk;
    if (q != p && q->valid && q->timed && q->N == p->N && q->K == p->K && q->dt == p->dt &&
        t_bucket(q->T) == t_bucket(p->T) &&
        cublasLtMatmulAlgoCheck(c->lt, p->op, p->a, p->b, p->c, p->c, &q->algo, &chk) == CUBLAS_STATUS_SUCCESS &&
        chk.workspaceSize <= GEMM_WORKSPACE) {
      p->algo = q->algo;
      p->timed = 1;
      return;
    }
  }
  cublasLtMatmulHeuristicResult_t res[GEMM_TUNE_ALGOS];
  int n = plan_heuristics(c, p, res, GEMM_TUNE_ALGOS), best = -1;
  float best_ms = 0;
  for (int i = 0; i < n; i++) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS || res[i].workspaceSize > GEMM_WORKSPACE) continue;
    float ms = plan_time(c, p, &res[i].algo, out, x, w);
    if (ms >= 0 && (best < 0 || ms < best_ms)) best = i, best_ms = ms;
  }
  if (best >= 0) p->algo = res[best].algo, p->timed = 1;
}

/* plan_get: the cached cuBLASLt plan for out(T,N) = x(T,K) w(N,K)^T, made (with its first heuristic) on first
 * use. Column-major view: out^T (N,T) = op(W^T as K x N)^T (N,K) * x^T (K,T). */
static gemm_plan_t *plan_get(backend_t *be, int N, int K, int T, dtype_t dt) {
  cuda_ctx_t *c = ctx_of(be);
  unsigned h = ((unsigned)N * 2654435761u) ^ ((unsigned)K * 40503u) ^ ((unsigned)T * 97u) ^ (unsigned)dt;
  gemm_plan_t *p = NULL;
  for (int i = 0; i < 8; i++) {
    gemm_plan_t *q = &c->plans[(h + (unsigned)i) % GEMM_CACHE];
    if (q->valid && q->N == N && q->K == K && q->T == T && q->dt == dt) return q;
    if (!q->valid && !p) p = q;
  }
  if (!p) p = &c->plans[h % GEMM_CACHE];
  plan_destroy(p);
  cudaDataType_t ty = lt_type(dt);
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasLtMatmulHeuristicResult_t res;
  int ok = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS &&
           cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta) == 0 &&
           cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb) == 0 &&
           cublasLtMatrixLayoutCreate(&p->a, ty, (uint64_t)K, (uint64_t)N, K) == 0 &&
           cublasLtMatrixLayoutCreate(&p->b, ty, (uint64_t)K, (uint64_t)T, K) == 0 &&
           cublasLtMatrixLayoutCreate(&p->c, ty, (uint64_t)N, (uint64_t)T, N) == 0 && plan_heuristics(c, p, &res, 1) > 0;
  if (!ok) {
    log_error("cuda backend: cuBLASLt has no algorithm for a %s GEMM of (T %d) x (N %d, K %d)", dtype_name(dt), T, N,
              K);
    plan_destroy(p);
    return NULL;
  }
  p->algo = res.algo;
  p->valid = 1;
  p->tuned = !c->gemm_tune || T < GEMM_TUNE_MIN_T;
  p->N = N;
  p->K = K;
  p->T = T;
  p->dt = dt;
  return p;
}

/* capturing: whether the stream is recording a CUDA graph (no synchronizing work may run then) */
static int capturing(cuda_ctx_t *c) {
  enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (c->step_mode == STEP_CAPTURE) return 1;
  if (cudaStreamIsCapturing(c->stream, &st) != cudaSuccess) {
    cudaGetLastError();
    return 1;
  }
  return st != cudaStreamCaptureStatusNone;
}

static void cuda_op_matmul(backend_t *be, void *out, const void *x, const weight_t *w, const float *bias, int T) {
  if (replaying(be)) return;
  cuda_ctx_t *c = ctx_of(be);
  const int N = (int)w->rows, K = (int)w->cols;
  if (w->dtype != be->act_dtype) {
    log_error("cuda backend: matmul weight in %s with %s activations (not prepared by this backend?)",
              dtype_name(w->dtype), dtype_name(be->act_dtype));
    note(be, STRATA_EINVAL);
    return;
  }
  if (T <= c->gemv_max_t) {
    note(be, cuda_gemv(out, x, w->data, N, K, bias, T, be->act_dtype, c->stream));
    return;
  }
  gemm_plan_t *p = plan_get(be, N, K, T, be->act_dtype);
  if (!p) {
    note(be, STRATA_EUNSUPPORTED);
    return;
  }
  /* a plan made during a capture keeps its first heuristic until a call outside one tunes it */
  if (!p->tuned && !c->err && !capturing(c)) plan_tune(c, p, out, x, w->data);
  const float alpha = 1.0f, beta = 0.0f;
  cublasStatus_t s = cublasLtMatmul(c->lt, p->op, &alpha, w->data, p->a, x, p->b, &beta, out, p->c, out, p->c,
                                    &p->algo, c->workspace, GEMM_WORKSPACE, c->stream);
  if (s != CUBLAS_STATUS_SUCCESS) {
    log_error("cuda backend: cublasLtMatmul (T %d, N %d, K %d) failed: status %d", T, N, K, (int)s);
    note(be, STRATA_EIO);
    return;
  }
  if (bias) note(be, cuda_add_bias(out, bias, T, N, be->act_dtype, c->stream));
}

static cuda_kv_t kv_of(const be_kv_t *kv) {
  return (cuda_kv_t){.data = kv->data, .dtype = kv->dtype, .n_blocks = kv->n_blocks, .n_layers = kv->n_layers,
                     .n_kv_heads = kv->n_kv_heads, .block_size = kv->block_size, .head_dim = kv->head_dim};
}

static void cuda_op_rope_kv_write(backend_t *be, void *q, void *k, const void *v, be_kv_t *kv, int layer,
                                  const be_batch_t *b, const be_rope_t *rope, int n_heads, int n_kv_heads) {
  if (replaying(be)) return;
  cuda_kv_t ck = kv_of(kv);
  if (n_kv_heads != kv->n_kv_heads || rope->head_dim != kv->head_dim || kv->dtype != be->act_dtype) {
    log_error("cuda backend: rope_kv_write with %d KV heads of %d for a cache of %d heads of %d", n_kv_heads,
              rope->head_dim, kv->n_kv_heads, kv->head_dim);
    note(be, STRATA_EINVAL);
    return;
  }
  note(be, cuda_rope_kv_write(q, k, v, &ck, layer, b->positions, b->slots, b->n_tokens, n_heads, rope->style,
                              rope->inv_freq, ctx_of(be)->stream));
}

static void cuda_op_rope_qkv_write(backend_t *be, void *q_out, const void *qkv, int ld, const float *q_norm,
                                   const float *k_norm, float eps, be_kv_t *kv, int layer, const be_batch_t *b,
                                   const be_rope_t *rope, int n_heads, int n_kv_heads) {
  if (replaying(be) || (skip_ops() & SKIP_ROPE)) return;
  cuda_kv_t ck = kv_of(kv);
  if (n_kv_heads != kv->n_kv_heads || rope->head_dim != kv->head_dim || kv->dtype != be->act_dtype) {
    log_error("cuda backend: rope_qkv_write with %d KV heads of %d for a cache of %d heads of %d", n_kv_heads,
              rope->head_dim, kv->n_kv_heads, kv->head_dim);
    note(be, STRATA_EINVAL);
    return;
  }
  note(be, cuda_rope_qkv_write(q_out, qkv, ld, q_norm, k_norm, eps, &ck, layer, b->positions, b->slots, b->n_tokens,
                               n_heads, rope->style, rope->inv_freq, ctx_of(be)->stream));
}

static void cuda_op_attention(backend_t *be, void *out, const void *q, const be_kv_t *kv, int layer,
                              const be_batch_t *b, int n_heads, int n_kv_heads, float scale) {
  if (replaying(be) || (skip_ops() & SKIP_ATTENTION)) return;
  cuda_kv_t ck = kv_of(kv);
  if (n_kv_heads != kv->n_kv_heads || kv->dtype != be->act_dtype) {
    log_error("cuda backend: attention with %d KV heads for a cache of %d", n_kv_heads, kv->n_kv_heads);
    note(be, STRATA_EINVAL);
    return;
  }
  note(be, cuda_attention(out, q, &ck, layer, b->positions, b->seq_of, b->block_table, b->max_blocks, b->n_tokens,
                          b->n_seqs, n_heads, scale, &ctx_of(be)->att, ctx_of(be)->stream));
}

static void cuda_op_silu_mul(backend_t *be, void *out, const void *gate, const void *up, int T, int F) {
  if (replaying(be)) return;
  note(be, cuda_silu_mul(out, gate, up, T, F, be->act_dtype, ctx_of(be)->stream));
}

static void cuda_op_silu_mul_cat(backend_t *be, void *out, const void *gu, int T, int F) {
  if (replaying(be)) return;
  const char *g = gu;
  note(be, cuda_silu_mul_ld(out, g, g + (size_t)F * dtype_act_bytes(be->act_dtype), T, F, 2 * F, be->act_dtype,
                            ctx_of(be)->stream));
}

static void cuda_op_gather_rows(backend_t *be, void *out, const void *x, const int32_t *rows, int n, int C) {
  if (replaying(be)) return;
  note(be, cuda_gather_rows(out, x, rows, n, C, be->act_dtype, ctx_of(be)->stream));
}

/* Only the logits cross to the host, as f32 (converted on the device first when activations are 16-bit). */
static int cuda_to_host_f32(backend_t *be, float *host_out, const void *x, int64_t n) {
  cuda_ctx_t *c = ctx_of(be);
  if (n <= 0) return cuda_sync(be);
  const void *src = x;
  int rc = step_end(c);
  if (rc) return rc;
  if (be->act_dtype != DTYPE_F32) {
    if ((size_t)n > c->f32_cap) {
      if ((rc = cu_ok(cudaStreamSynchronize(c->stream), "logits buffer")) != 0) return rc;
      cudaFree(c->f32_scratch);
      c->f32_scratch = NULL;
      c->f32_cap = 0;
      if ((rc = cu_ok(cudaMalloc((void **)&c->f32_scratch, (size_t)n * 4), "logits buffer")) != 0) return rc;
      c->f32_cap = (size_t)n;
    }
    if ((rc = cuda_convert(c->f32_scratch, DTYPE_F32, x, be->act_dtype, n, c->stream)) != 0) return rc;
    src = c->f32_scratch;
  }
  rc = cu_ok(cudaMemcpyAsync(host_out, src, (size_t)n * 4, cudaMemcpyDeviceToHost, c->stream), "logits download");
  int rs = cuda_sync(be);
  return rc ? rc : rs;
}

/* argmax_rows / sample_rows: an asynchronous draw into host slot 0, then its wait (the same kernels, buffers and
 * transfers as the asynchronous engine's steps) */
static int cuda_draw_rows(backend_t *be, int slot, const void *x, const be_sample_t *p, int n, int V);
static int cuda_draw_wait(backend_t *be, int slot, int32_t *host_out, int n);

static int cuda_argmax_rows_op(backend_t *be, int32_t *host_out, const void *x, int n, int V) {
  if (n <= 0) return cuda_sync(be);
  int rc = cuda_draw_rows(be, 0, x, NULL, n, V);
  return rc ? rc : cuda_draw_wait(be, 0, host_out, n);
}

static int cuda_sample_rows_op(backend_t *be, int32_t *host_out, const void *x, const be_sample_t *p, int n,
                               int V) {
  if (n <= 0) return cuda_sync(be);
  int rc = cuda_draw_rows(be, 0, x, p, n, V);
  return rc ? rc : cuda_draw_wait(be, 0, host_out, n);
}

/* ---- asynchronous steps ---- */

/* cuda_patch_tokens_op: in the step (captured with it): the batch's own token array is patched in place. */
static int cuda_patch_tokens_op(backend_t *be, be_batch_t *b) {
  if (replaying(be) || !b->prev_rows || b->n_tokens <= 0) return 0;
  cuda_ctx_t *c = ctx_of(be);
  int rc = cuda_patch_tokens((int32_t *)b->tokens, b->prev_rows, c->draw_dev, b->n_tokens, c->stream);
  note(be, rc);
  return rc;
}

/* draw_reserve: room for N drawn ids on the device and in host SLOT (whose last download was waited for). */
static int draw_reserve(cuda_ctx_t *c, int slot, int n) {
  int rc = 0;
  if (n > c->draw_cap) {
    int cap = n < 256 ? 256 : 2 * n;
    if ((rc = cu_ok(cudaStreamSynchronize(c->stream), "token id buffer")) != 0) return rc;
    graphs_clear(c); /* captured steps patch their tokens from the old buffer */
    cudaFree(c->draw_dev);
    cudaFree(c->draw_sp_dev);
    c->draw_dev = NULL;
    c->draw_sp_dev = NULL;
    c->draw_cap = 0;
    if (cu_ok(cudaMalloc((void **)&c->draw_dev, (size_t)cap * 4), "token id buffer") ||
        cu_ok(cudaMalloc((void **)&c->draw_sp_dev, (size_t)cap * sizeof(be_sample_t)), "sampling parameters"))
      return STRATA_ENOMEM;
    c->draw_cap = cap;
  }
  if (n > c->draw_host_cap[slot]) {
    int cap = n < 256 ? 256 : 2 * n;
    cudaFreeHost(c->draw_host[slot]);
    cudaFreeHost(c->draw_sp_host[slot]);
    c->draw_host[slot] = NULL;
    c->draw_sp_host[slot] = NULL;
    c->draw_host_cap[slot] = 0;
    if (cu_ok(cudaHostAlloc((void **)&c->draw_host[slot], (size_t)cap * 4, cudaHostAllocDefault), "pinned ids") ||
        cu_ok(cudaHostAlloc((void **)&c->draw_sp_host[slot], (size_t)cap * sizeof(be_sample_t), cudaHostAllocDefault),
              "pinned sampling parameters"))
      return STRATA_ENOMEM;
    c->draw_host_cap[slot] = cap;
  }
  if (!c->draw_done[slot]) rc = cu_ok(cudaEventCreateWithFlags(&c->draw_done[slot], cudaEventDisableTiming), "event");
  return rc;
}

/* sample_scratch_reserve: cuda_sample_rows' scratch for N rows of V. */
static int sample_scratch_reserve(cuda_ctx_t *c, int n, int V) {
  size_t need = cuda_sample_scratch_bytes(n, V);
  if (need <= c->sample_scratch_cap) return 0;
  int rc = cu_ok(cudaStreamSynchronize(c->stream), "sampling scratch");
  if (rc) return rc;
  cudaFree(c->sample_scratch);
  c->sample_scratch = NULL;
  c->sample_scratch_cap = 0;
  if ((rc = cu_ok(cudaMalloc(&c->sample_scratch, need), "sampling scratch")) != 0) return rc;
  c->sample_scratch_cap = need;
  return 0;
}

/* cuda_draw_rows: the draw and the download are enqueued behind the step; nothing waits. The parameters go
 * through the slot's pinned buffer so that their upload is truly asynchronous. */
static int cuda_draw_rows(backend_t *be, int slot, const void *x, const be_sample_t *p, int n, int V) {
  cuda_ctx_t *c = ctx_of(be);
  if (slot < 0 || slot > 1 || n < 0) return STRATA_EINVAL;
  int rc = step_end(c);
  if (!rc) rc = draw_reserve(c, slot, n);
  if (!rc && n > 0 && p) rc = sample_scratch_reserve(c, n, V);
  if (rc) return rc;
  if (n > 0 && p) {
    memcpy(c->draw_sp_host[slot], p, (size_t)n * sizeof *p);
    rc = cu_ok(cudaMemcpyAsync(c->draw_sp_dev, c->draw_sp_host[slot], (size_t)n * sizeof *p, cudaMemcpyHostToDevice,
                               c->stream), "sampling parameters upload");
    if (!rc) rc = cuda_sample_rows(c->draw_dev, x, c->draw_sp_dev, n, V, be->act_dtype, c->sample_scratch, c->stream);
  } else if (n > 0) {
    rc = cuda_argmax_rows(c->draw_dev, x, n, V, be->act_dtype, c->stream);
  }
  if (!rc && n > 0)
    rc = cu_ok(cudaMemcpyAsync(c->draw_host[slot], c->draw_dev, (size_t)n * 4, cudaMemcpyDeviceToHost, c->stream),
               "drawn ids download");
  if (!rc) rc = cu_ok(cudaEventRecord(c->draw_done[slot], c->stream), "drawn ids event");
  return rc;
}

/* cuda_draw_wait: an error noted by any op enqueued so far (this step's or the next one's) is reported here. */
static int cuda_draw_wait(backend_t *be, int slot, int32_t *host_out, int n) {
  cuda_ctx_t *c = ctx_of(be);
  if (slot < 0 || slot > 1 || n < 0 || n > c->draw_host_cap[slot]) return STRATA_EINVAL;
  int rc = c->draw_done[slot] ? cu_ok(cudaEventSynchronize(c->draw_done[slot]), "waiting for a step") : 0;
  if (!rc && c->err) {
    rc = c->err;
    c->err = 0;
  }
  if (!rc && n > 0) memcpy(host_out, c->draw_host[slot], (size_t)n * 4);
  return rc;
}

static const be_ops_t cuda_ops = {
    .name = "cuda",
    .destroy = backend_cuda_destroy,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .upload = cuda_upload,
    .download = cuda_download,
    .sync = cuda_sync,
    .mem_info = cuda_mem_info,
    .weight_prepare = cuda_weight_prepare,
    .weight_release = cuda_weight_release,
    .weight_prepare_cat = cuda_weight_prepare_cat,
    .batch_upload = cuda_batch_upload,
    .embed = cuda_op_embed,
    .rmsnorm = cuda_op_rmsnorm,
    .add_rmsnorm = cuda_op_add_rmsnorm,
    .matmul = cuda_op_matmul,
    .rope_kv_write = cuda_op_rope_kv_write,
    .rope_qkv_write = cuda_op_rope_qkv_write,
    .attention = cuda_op_attention,
    .silu_mul = cuda_op_silu_mul,
    .silu_mul_cat = cuda_op_silu_mul_cat,
    .gather_rows = cuda_op_gather_rows,
    .to_host_f32 = cuda_to_host_f32,
    .argmax_rows = cuda_argmax_rows_op,
    .sample_rows = cuda_sample_rows_op,
    .patch_tokens = cuda_patch_tokens_op,
    .draw_rows = cuda_draw_rows,
    .draw_wait = cuda_draw_wait,
};

int backend_cuda_available(void) { return cuda_device_count() > 0; }

int backend_cuda_create(backend_t **out, int device, int act_dtype) {
  *out = NULL;
  int n_dev = cuda_device_count();
  if (n_dev <= 0) {
    log_error("cuda backend: no CUDA device (no GPU or no driver); use --device cpu");
    return STRATA_EUNSUPPORTED;
  }
  if (device < 0 || device >= n_dev) {
    log_error("cuda backend: device cuda:%d does not exist (%d device%s present)", device, n_dev,
              n_dev == 1 ? "" : "s");
    return STRATA_EINVAL;
  }
  if (act_dtype == -1) act_dtype = DTYPE_BF16;
  if (act_dtype != DTYPE_F32 && act_dtype != DTYPE_BF16 && act_dtype != DTYPE_F16) {
    log_error("cuda backend: activation dtype %s is not supported (f32, bf16 or f16)", dtype_name((dtype_t)act_dtype));
    return STRATA_EUNSUPPORTED;
  }
  backend_t *be = calloc(1, sizeof *be);
  cuda_ctx_t *c = calloc(1, sizeof *c);
  int rc = STRATA_ENOMEM;
  if (!be || !c) {
    log_error("cuda backend: out of host memory");
    free(be);
    free(c);
    return rc;
  }
  be->ops = &cuda_ops;
  be->ctx = c;
  be->act_dtype = (dtype_t)act_dtype;
  be->n_threads = 1;
  snprintf(be->device, sizeof be->device, "cuda:%d", device);
  c->device = device;
  /* measured on H100 (docs/gpu.md): our GEMV wins at T <= 2, cuBLASLt from there on */
  /* decode steps as CUDA graphs: on unless STRATA_CUDA_GRAPHS=0 (the engine rounds the block-table width up
   * to a power of two, so a step shape recurs and a capture is rare; see docs/gpu.md) */
  const char *ge = getenv("STRATA_CUDA_GRAPHS");
  c->graphs_on = !(ge && strcmp(ge, "0") == 0);
  /* NOTE: large decode steps run eagerly: at batch 256 a replayed graph measured slower than eager launches
   * (17.9 against 13.6 ms per step, H100, Llama-3-8B shapes), and their launch cost hides behind the GPU */
  const char *gt = getenv("STRATA_CUDA_GRAPH_MAX_T");
  c->graph_max_t = gt ? atoi(gt) : 64;
  if (c->graph_max_t < 1 || c->graph_max_t > 512) c->graph_max_t = 64;
  be->pad_decode = c->graphs_on ? c->graph_max_t : 0;
  /* STRATA_CUDA_ATTENTION=v1 (the first kernel), notc (no tensor-core prefill) or wmma (the WMMA prefill kernel
   * instead of the flash-attention-2 one): for comparisons */
  const char *ae = getenv("STRATA_CUDA_ATTENTION");
  c->att.impl = CUDA_ATT_AUTO;
  if (ae && strcmp(ae, "v1") == 0) c->att.impl = CUDA_ATT_V1;
  if (ae && strcmp(ae, "notc") == 0) c->att.impl = CUDA_ATT_NO_TC;
  if (ae && strcmp(ae, "wmma") == 0) c->att.impl = CUDA_ATT_WMMA;
  const char *fe = getenv("STRATA_CUDA_FUSE");
  c->fuse_on = !(fe && strcmp(fe, "0") == 0);
  const char *gm = getenv("STRATA_CUDA_GEMV_MAX_T");
  c->gemv_max_t = gm ? atoi(gm) : 2;
  if (c->gemv_max_t < 0 || c->gemv_max_t > CUDA_GEMV_MAX_T) c->gemv_max_t = 2;
  /* STRATA_CUDA_GEMM_TUNE=1: time up to 8 cuBLASLt candidates per plan (T >= 64) and keep the fastest. Off by
   * default: on H100 the first heuristic already runs the Llama-3-8B prefill GEMMs at 770-808 TFLOP/s and
   * tuning won 1% (gemv_bench), not measurable in the engine, while the choice, made from timings, may
   * differ between processes (and so may the low bits of prefill results).
   */
  /* STRATA_CUDA_CARVEOUT=P: decode steps served by our GEMV (T <= gemv_max_t) launch every kernel with P
   * percent of the L1/shared memory as shared memory (-1: the driver's choice per kernel). Default 25: on an
   * H100 at batch 1, 25 and 40 gave 168.5-169.1 tok/s, 50 166.7, 60 163.4, 75 154, 100 153, the driver's
   * choice 161.5 (docs/gpu.md, round 5); the kernels then agree on one split and overlap. Larger steps
   * (cuBLASLt's GEMMs) keep the driver's choice: 25 there cost 1% at batches 8 and 32. */
  const char *ce = getenv("STRATA_CUDA_CARVEOUT");
  c->carveout = ce ? atoi(ce) : 25;
  if (c->carveout > 100) c->carveout = 100;
  const char *te = getenv("STRATA_CUDA_GEMM_TUNE");
  c->gemm_tune = te && strcmp(te, "1") == 0;
  rc = STRATA_EIO;
  if (cu_ok(cudaSetDevice(device), "cudaSetDevice") ||
      cu_ok(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "stream") ||
      cu_ok(cudaEventCreateWithFlags(&c->batch_copied, cudaEventDisableTiming), "event") ||
      cu_ok(cudaEventCreate(&c->tune_ev[0]), "event") || cu_ok(cudaEventCreate(&c->tune_ev[1]), "event") ||
      cu_ok(cudaMalloc(&c->workspace, GEMM_WORKSPACE), "cuBLASLt workspace") ||
      cu_ok(cudaMalloc((void **)&c->att.part, ATT_PART_BYTES), "attention scratch"))
    goto fail;
  c->att.part_bytes = ATT_PART_BYTES;
  if (cublasLtCreate(&c->lt) != CUBLAS_STATUS_SUCCESS) {
    log_error("cuda backend: cublasLtCreate failed on %s", be->device);
    goto fail;
  }
  struct cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) == cudaSuccess) {
    c->att.n_sms = prop.multiProcessorCount;
    log_info("cuda backend: %s (%s, %d SMs, %.1f GiB), %s activations", be->device, prop.name,
             prop.multiProcessorCount, prop.totalGlobalMem / 1073741824.0, dtype_name(be->act_dtype));
  }
  *out = be;
  return 0;
fail:
  backend_cuda_destroy(be);
  return rc;
}

void backend_cuda_destroy(backend_t *be) {
  if (!be) return;
  cuda_ctx_t *c = be->ctx;
  if (c) {
    if (c->stream) cudaStreamSynchronize(c->stream);
    graphs_clear(c);
    for (int i = 0; i < GEMM_CACHE; i++) plan_destroy(&c->plans[i]);
    if (c->lt) cublasLtDestroy(c->lt);
    cudaFree(c->workspace);
    cudaFree(c->att.part);
    cudaFreeHost(c->batch_host);
    cudaFree(c->batch_dev);
    cudaFree(c->f32_scratch);
    cudaFree(c->sample_scratch);
    cudaFree(c->draw_dev);
    cudaFree(c->draw_sp_dev);
    for (int i = 0; i < 2; i++) {
      cudaFreeHost(c->draw_host[i]);
      cudaFreeHost(c->draw_sp_host[i]);
      if (c->draw_done[i]) cudaEventDestroy(c->draw_done[i]);
    }
    for (int i = 0; i < 2; i++) {
      cudaFreeHost(c->stage_host[i]);
      cudaFree(c->stage_dev[i]);
      if (c->stage_free[i]) cudaEventDestroy(c->stage_free[i]);
    }
    if (c->batch_copied) cudaEventDestroy(c->batch_copied);
    for (int i = 0; i < 2; i++)
      if (c->tune_ev[i]) cudaEventDestroy(c->tune_ev[i]);
    if (c->stream) cudaStreamDestroy(c->stream);
  }
  free(c);
  free(be);
}
