/* loader_int.h: what the model loaders (HF safetensors, GGUF, dummy presets) share inside worker/loader. */
#ifndef STRATA_LOADER_INT_H
#define STRATA_LOADER_INT_H

#include <stddef.h>
#include <stdint.h>

#include "common/fileio.h"
#include "common/gguf.h"
#include "worker/model/model.h"

/* The loader-private storage behind a model_t: file mappings and owned buffers, released by
 * model_free. Owner: the model_t it hangs off. */
struct model_storage {
  file_map_t *maps; /* (n_maps) safetensors files */
  int n_maps, cap_maps;
  void **bufs;      /* (n_bufs) malloc'd tensors (1-D f32 copies, dummy weights, realigned copies) */
  int n_bufs, cap_bufs;
  gguf_file_t *gguf; /* the GGUF file, when loaded from one */
};

/* One tensor of a source file, with its shape in PyTorch order: shape[0] is the slowest dim, so a
 * matrix is (rows, cols) = (out features, in features). GGUF dims are reversed into this order. */
#define LD_MAX_DIMS 8
typedef struct {
  const char *name;      /* not NUL-terminated: NAME_LEN bytes */
  size_t name_len;
  int dtype;             /* dtype_t, or -1 when the stored type is not supported */
  const char *dtype_str; /* the stored type's name, for messages (NUL-terminated) */
  int n_dims;
  int64_t shape[LD_MAX_DIMS];
  const void *data;      /* inside a mapping */
  size_t n_bytes;
  const char *file;      /* the file it lives in, for messages */
} ld_tensor_t;

/* A name-sorted table of tensors (see ld_table_sort / ld_table_find). */
typedef struct {
  ld_tensor_t *t; /* (n) owned array */
  size_t n, cap;
} ld_table_t;

/* Names of one checkpoint layout; layer names are printf formats taking the layer index. */
typedef struct {
  const char *tok_embd, *out_norm, *output;
  const char *attn_norm, *wq, *wk, *wv, *wo, *bq, *bk, *bv, *q_norm, *k_norm;
  const char *ffn_norm, *w_gate, *w_up, *w_down;
  const char *cfg_source; /* "config.json", "the GGUF metadata": where the expected shapes come from */
} ld_names_t;

int ld_storage_new(model_t *m);
/* ld_storage_keep: hands the malloc'd P to M's storage (freed by model_free); frees P on failure. */
int ld_storage_keep(model_t *m, void *p);
int ld_storage_add_map(model_t *m, const file_map_t *map);

int ld_table_push(ld_table_t *tab, const ld_tensor_t *t);
/* ld_table_sort: sorts by name; fails with STRATA_EFORMAT (logged, naming FILE) on a duplicate name. */
int ld_table_sort(ld_table_t *tab, const char *file);
const ld_tensor_t *ld_table_find(const ld_table_t *tab, const char *name);
void ld_table_free(ld_table_t *tab);

/* ld_bind_weights: checks that the tensors TAB holds agree with M->cfg (shapes, dtypes) and points
 * M->w at them (matrices into the mapping; 1-D tensors converted to owned f32). Ties the output to
 * the embedding when M->cfg.tied_embeddings. Sets M->cfg.dtype. Logs one error and returns
 * STRATA_EFORMAT (missing tensor, wrong shape, inconsistent size) or STRATA_EUNSUPPORTED (dtype).
 * WHERE names the checkpoint (file or directory) in messages about missing tensors. */
int ld_bind_weights(model_t *m, const ld_table_t *tab, const ld_names_t *names, const char *where);

/* ld_cfg_check: sanity of a parsed config (positive dims, heads dividing, bounded sizes) so that no
 * later product overflows. Logs one error naming FILE and returns STRATA_EFORMAT on a violation. */
int ld_cfg_check(const model_cfg_t *cfg, const char *file);

/* ld_add_eos: appends ID to CFG's EOS list unless present or full. */
void ld_add_eos(model_cfg_t *cfg, int id);

/* ld_set_names: fills M->path, M->name (base name of PATH) and M->tokenizer_path. */
void ld_set_names(model_t *m, const char *path, const char *tokenizer_path);

int ld_load_hf(model_t *m, const char *dir);
int ld_load_gguf(model_t *m, const char *path);
int ld_load_dummy(model_t *m, const char *preset, const model_load_opts_t *opts);

/* ld_dummy_config: the configuration of dummy preset PRESET with dtype DTYPE (-1 = the preset's
 * default) without allocating anything. Returns 0, STRATA_ENOTFOUND (unknown preset, not logged) or
 * STRATA_EUNSUPPORTED (dtype other than f32/f16/bf16, not logged). */
int ld_dummy_config(const char *preset, int dtype, model_cfg_t *cfg);


#endif
