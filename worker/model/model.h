/* model.h: a Llama-family model: its configuration, its weights, and how to load one.
 *
 * Sources: a Hugging Face directory (config.json + model.safetensors or sharded *.safetensors with
 * model.safetensors.index.json), a GGUF v3 file, or "dummy:<preset>" (seeded random weights of a
 * known shape, for benchmarks). Files are memory-mapped; big matrices stay in their stored dtype
 * (f32, f16, bf16, q8_0, k-quants) and point into the mapping; 1-D tensors (norms, biases) are
 * converted to f32 copies.
 *
 * Legend: C model dim, L layers, H query heads, Hkv KV heads, D head dim, F FFN dim, V vocab. */
#ifndef STRATA_MODEL_H
#define STRATA_MODEL_H

#include <stdint.h>

#include "common/dtype.h"
#include "worker/backend/backend.h"

typedef enum { ARCH_LLAMA = 0, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3 } model_arch_t;
typedef enum { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3 } rope_scaling_t;

#define MODEL_MAX_EOS 8

typedef struct {
  model_arch_t arch;
  int dim;          /* C */
  int n_layers;     /* L */
  int n_heads;      /* H */
  int n_kv_heads;   /* Hkv */
  int head_dim;     /* D (may differ from C/H, e.g. Qwen3) */
  int hidden_dim;   /* F */
  int vocab_size;   /* V */
  int max_seq_len;  /* max_position_embeddings (context the model was trained for) */
  float norm_eps;
  float rope_theta;
  int rope_style;   /* ROPE_STYLE_NORM (GGUF llama) or ROPE_STYLE_NEOX (HF, GGUF qwen2/3) */
  rope_scaling_t rope_scaling;
  float rope_factor;            /* linear and llama3 */
  float rope_low_freq_factor;   /* llama3 */
  float rope_high_freq_factor;  /* llama3 */
  int rope_orig_max_pos;        /* llama3: original_max_position_embeddings */
  int qkv_bias;                 /* Qwen2 */
  int qk_norm;                  /* Qwen3 */
  int tied_embeddings;
  int sliding_window;           /* Mistral; 0 = none (not applied yet) */
  int bos_id;                   /* -1 if none */
  int eos_ids[MODEL_MAX_EOS];   /* from config.json / generation_config.json / GGUF */
  int n_eos;
  dtype_t dtype;                /* dtype of the big matrices as stored */
} model_cfg_t;

typedef struct {
  weight_t attn_norm; /* (1, C) f32 */
  weight_t wq;        /* (H*D, C) */
  weight_t wk;        /* (Hkv*D, C) */
  weight_t wv;        /* (Hkv*D, C) */
  weight_t bq;        /* (1, H*D) f32, Qwen2 only (else data NULL) */
  weight_t bk;        /* (1, Hkv*D) f32, Qwen2 only */
  weight_t bv;        /* (1, Hkv*D) f32, Qwen2 only */
  weight_t q_norm;    /* (1, D) f32, Qwen3 only */
  weight_t k_norm;    /* (1, D) f32, Qwen3 only */
  weight_t wo;        /* (C, H*D) */
  weight_t ffn_norm;  /* (1, C) f32 */
  weight_t w_gate;    /* (F, C) */
  weight_t w_up;      /* (F, C) */
  weight_t w_down;    /* (C, F) */
} layer_weights_t;

typedef struct {
  weight_t tok_embd;        /* (V, C) */
  layer_weights_t *layers;  /* (L) */
  weight_t out_norm;        /* (1, C) f32 */
  weight_t output;          /* (V, C); the same data as tok_embd when tied */
} model_weights_t;

typedef struct model_storage model_storage_t; /* loader-private: maps and owned buffers */

typedef struct {
  model_cfg_t cfg;
  model_weights_t w;     /* host weights (mmap or owned) */
  char path[1024];       /* what was loaded ("dummy:tiny" for presets) */
  char name[256];        /* a short name for /v1/models: the directory or file name, or the preset */
  char tokenizer_path[1024]; /* where the tokenizer lives (the GGUF file or the directory); "" for dummy */
  model_storage_t *storage;
  int dummy_on_device;   /* a dummy model whose matrices the backend generates (weight_t.gen) */
} model_t;

typedef struct {
  uint64_t seed;   /* dummy weights: seed (default 0 = a fixed default seed) */
  int dtype;       /* dummy weights: dtype to generate (-1 = f32 for tiny presets, bf16 for big ones) */
  int dummy_on_device; /* dummy weights: matrices left for the backend to generate (weight_t.gen; a GPU fills
                          them in place, no host memory or transfer); the CPU backend refuses them */
} model_load_opts_t;

/* model_load: loads PATH (HF directory, .gguf file, or "dummy:<preset>"). OPTS may be NULL.
 * On error logs one message naming the file and the problem and returns a STRATA_E* code:
 * STRATA_ENOTFOUND, STRATA_EIO, STRATA_EFORMAT (corrupt, truncated, shape mismatch),
 * STRATA_EUNSUPPORTED (architecture or dtype). */
int model_load(model_t **out, const char *path, const model_load_opts_t *opts);
void model_free(model_t *m);

/* model_dummy_presets: NULL-terminated list of preset names ("tiny", "llama3-8b", ...). */
const char *const *model_dummy_presets(void);

/* model_n_params: parameter count (tied embeddings counted once). */
int64_t model_n_params(const model_t *m);

/* model_rope_inv_freq: fills INV_FREQ (D/2) with the rotary inverse frequencies after scaling. */
void model_rope_inv_freq(const model_cfg_t *cfg, float *inv_freq);

#endif
