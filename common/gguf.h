/* gguf.h: a reader for GGUF v2/v3 files (metadata and tensor directory over a read-only mmap).
 * Every offset, length and count is checked against the file size: a truncated or corrupt file
 * fails with one logged error naming the file and the problem, never a crash. */
#ifndef STRATA_GGUF_H
#define STRATA_GGUF_H

#include <stdint.h>

#include "common/dtype.h"
#include "common/fileio.h"

typedef enum {
  GGUF_TYPE_UINT8 = 0,
  GGUF_TYPE_INT8 = 1,
  GGUF_TYPE_UINT16 = 2,
  GGUF_TYPE_INT16 = 3,
  GGUF_TYPE_UINT32 = 4,
  GGUF_TYPE_INT32 = 5,
  GGUF_TYPE_FLOAT32 = 6,
  GGUF_TYPE_BOOL = 7,
  GGUF_TYPE_STRING = 8,
  GGUF_TYPE_ARRAY = 9,
  GGUF_TYPE_UINT64 = 10,
  GGUF_TYPE_INT64 = 11,
  GGUF_TYPE_FLOAT64 = 12,
} gguf_type_t;

/* A string inside the mapping: not NUL-terminated. */
typedef struct {
  const char *ptr;
  uint64_t len;
} gguf_str_t;

typedef struct {
  gguf_str_t key;
  gguf_type_t type;
  gguf_type_t arr_type; /* element type when type == GGUF_TYPE_ARRAY */
  uint64_t arr_len;     /* element count when type == GGUF_TYPE_ARRAY */
  const uint8_t *data;  /* the raw value in the mapping (for arrays: the first element) */
} gguf_kv_t;

typedef struct {
  gguf_str_t name;
  uint32_t n_dims;
  int64_t ne[4];       /* ne[0] is the fastest-varying (row length); unused dims are 1 */
  uint32_t ggml_type;  /* as stored */
  int dtype;           /* dtype_t, or -1 when the GGML type is not supported */
  uint64_t offset;     /* from the start of the data section */
  uint64_t n_bytes;    /* 0 when dtype is -1 */
  const void *data;    /* in the mapping; NULL when dtype is -1 */
} gguf_tensor_t;

typedef struct {
  const char *path; /* owned copy */
  file_map_t map;
  uint32_t version;
  uint64_t n_kv;
  gguf_kv_t *kvs;         /* (n_kv) owned */
  uint64_t n_tensors;
  gguf_tensor_t *tensors; /* (n_tensors) owned */
  uint64_t alignment;     /* general.alignment, default 32 */
  const uint8_t *data_base;
} gguf_file_t;

/* gguf_open: maps and parses PATH (caller-owned F). Returns 0, STRATA_ENOTFOUND, STRATA_EIO or
 * STRATA_EFORMAT (bad magic, unsupported version, out-of-bounds, bad type, tensor past the end...). */
int gguf_open(gguf_file_t *f, const char *path);
void gguf_close(gguf_file_t *f);

const gguf_kv_t *gguf_find(const gguf_file_t *f, const char *key);
const gguf_tensor_t *gguf_find_tensor(const gguf_file_t *f, const char *name);

/* Typed getters. Return 0, STRATA_ENOTFOUND when the key is absent, or STRATA_EFORMAT when its type
 * does not convert (any integer type converts to an integer getter when the value fits). */
int gguf_get_u32(const gguf_file_t *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file_t *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file_t *f, const char *key, float *out);
int gguf_get_bool(const gguf_file_t *f, const char *key, int *out);
int gguf_get_str(const gguf_file_t *f, const char *key, gguf_str_t *out);

/* gguf_get_str_array: views of every string of a string array (malloc'd array in *OUT, caller frees
 * the array only). */
int gguf_get_str_array(const gguf_file_t *f, const char *key, gguf_str_t **out, uint64_t *n);
/* gguf_get_arr: a numeric array's raw elements (checked to be of TYPE). */
int gguf_get_arr(const gguf_file_t *f, const char *key, gguf_type_t type, const void **data, uint64_t *n);

/* gguf_str_eq: whether S equals the C string C. */
int gguf_str_eq(gguf_str_t s, const char *c);

#endif
