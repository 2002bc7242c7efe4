/* gguf.c: a bounds-checked GGUF v2/v3 reader over a read-only mmap (header, metadata, tensor directory). */
#include "common/gguf.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "common/log.h"
#include "common/status.h"

/* NOTE: nesting deeper than this is legal in the format but used by no real file; a cap keeps a
 * corrupt file from recursing without bound. */
#define GGUF_MAX_ARRAY_DEPTH 4
#define GGUF_MAX_DIMS 4

/* A cursor over the mapping. Every read checks the bytes left first. */
typedef struct {
  const uint8_t *base;
  uint64_t size;
  uint64_t pos;
  const char *path;
} gguf_cur_t;

static int cur_need(gguf_cur_t *c, uint64_t n, const char *what) {
  if (n > c->size - c->pos) {
    log_error("%s: %s at offset %" PRIu64 " needs %" PRIu64 " bytes but the file ends at %" PRIu64
              " (truncated or corrupt GGUF)",
              c->path, what, c->pos, n, c->size);
    return STRATA_EFORMAT;
  }
  return 0;
}

static int cur_u32(gguf_cur_t *c, uint32_t *v, const char *what) {
  int rc = cur_need(c, 4, what);
  if (rc) return rc;
  memcpy(v, c->base + c->pos, 4);
  c->pos += 4;
  return 0;
}

static int cur_u64(gguf_cur_t *c, uint64_t *v, const char *what) {
  int rc = cur_need(c, 8, what);
  if (rc) return rc;
  memcpy(v, c->base + c->pos, 8);
  c->pos += 8;
  return 0;
}

static int cur_str(gguf_cur_t *c, gguf_str_t *s, const char *what) {
  uint64_t n;
  int rc = cur_u64(c, &n, what);
  if (rc) return rc;
  if ((rc = cur_need(c, n, what))) return rc;
  s->ptr = (const char *)(c->base + c->pos);
  s->len = n;
  c->pos += n;
  return 0;
}

/* Size of one scalar element, or 0 for strings / arrays / unknown types. */
static uint64_t type_size(uint32_t t) {
  switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_BOOL:
      return 1;
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
      return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
      return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
      return 8;
    default:
      return 0;
  }
}

static int type_valid(uint32_t t) { return t <= GGUF_TYPE_FLOAT64; }

/* skip_value: advances over one value of type T (arrays recursively), checking every length. */
static int skip_value(gguf_cur_t *c, uint32_t t, int depth, const char *key_for_log) {
  int rc;
  if (!type_valid(t)) {
    log_error("%s: metadata '%s' has unknown value type %u", c->path, key_for_log, t);
    return STRATA_EFORMAT;
  }
  if (t == GGUF_TYPE_STRING) {
    gguf_str_t s;
    return cur_str(c, &s, "string value");
  }
  if (t != GGUF_TYPE_ARRAY) {
    if ((rc = cur_need(c, type_size(t), "metadata value"))) return rc;
    c->pos += type_size(t);
    return 0;
  }
  if (depth >= GGUF_MAX_ARRAY_DEPTH) {
    log_error("%s: metadata '%s' nests arrays deeper than %d", c->path, key_for_log, GGUF_MAX_ARRAY_DEPTH);
    return STRATA_EFORMAT;
  }
  uint32_t at;
  uint64_t n;
  if ((rc = cur_u32(c, &at, "array element type")) || (rc = cur_u64(c, &n, "array length"))) return rc;
  if (!type_valid(at)) {
    log_error("%s: metadata '%s' is an array of unknown type %u", c->path, key_for_log, at);
    return STRATA_EFORMAT;
  }
  uint64_t es = type_size(at);
  if (es) {
    if (n > (c->size - c->pos) / es) {
      log_error("%s: metadata '%s' array of %" PRIu64 " elements runs past the end of the file (size %" PRIu64 ")",
                c->path, key_for_log, n, c->size);
      return STRATA_EFORMAT;
    }
    c->pos += n * es;
    return 0;
  }
  /* Strings and arrays take at least 8 bytes each: reject impossible counts before looping. */
  if (n > (c->size - c->pos) / 8) {
    log_error("%s: metadata '%s' array of %" PRIu64 " elements runs past the end of the file (size %" PRIu64 ")",
              c->path, key_for_log, n, c->size);
    return STRATA_EFORMAT;
  }
  for (uint64_t i = 0; i < n; i++)
    if ((rc = skip_value(c, at, depth + 1, key_for_log))) return rc;
  return 0;
}

static int parse_kv(gguf_cur_t *c, gguf_kv_t *kv) {
  int rc;
  uint32_t t;
  if ((rc = cur_str(c, &kv->key, "metadata key")) || (rc = cur_u32(c, &t, "metadata value type"))) return rc;
  char key[96];
  snprintf(key, sizeof key, "%.*s", (int)(kv->key.len < 80 ? kv->key.len : 80), kv->key.ptr);
  if (!type_valid(t)) {
    log_error("%s: metadata '%s' has unknown value type %u", c->path, key, t);
    return STRATA_EFORMAT;
  }
  kv->type = (gguf_type_t)t;
  kv->arr_type = 0;
  kv->arr_len = 0;
  if (t == GGUF_TYPE_ARRAY) {
    uint64_t start = c->pos;
    uint32_t at;
    uint64_t n;
    if ((rc = cur_u32(c, &at, "array element type")) || (rc = cur_u64(c, &n, "array length"))) return rc;
    kv->arr_type = (gguf_type_t)at;
    kv->arr_len = n;
    kv->data = c->base + c->pos;
    c->pos = start;
  } else {
    kv->data = c->base + c->pos;
  }
  return skip_value(c, t, 0, key);
}

/* Open-addressing set of tensor names, only to reject duplicates in O(n). */
static int check_duplicate_names(const gguf_file_t *f) {
  uint64_t cap = 16;
  while (cap < f->n_tensors * 2) cap *= 2;
  uint32_t *slots = calloc(cap, sizeof *slots);
  if (!slots) return STRATA_ENOMEM;
  int rc = 0;
  for (uint64_t i = 0; i < f->n_tensors && !rc; i++) {
    const gguf_str_t *nm = &f->tensors[i].name;
    uint64_t h = XXH3_64bits(nm->ptr, nm->len) & (cap - 1);
    for (;; h = (h + 1) & (cap - 1)) {
      if (!slots[h]) {
        slots[h] = (uint32_t)(i + 1);
        break;
      }
      const gguf_str_t *o = &f->tensors[slots[h] - 1].name;
      if (o->len == nm->len && memcmp(o->ptr, nm->ptr, nm->len) == 0) {
        log_error("%s: tensor '%.*s' appears twice", f->path, (int)(nm->len < 200 ? nm->len : 200), nm->ptr);
        rc = STRATA_EFORMAT;
        break;
      }
    }
  }
  free(slots);
  return rc;
}

static int parse_tensor_info(gguf_cur_t *c, gguf_tensor_t *t) {
  int rc;
  if ((rc = cur_str(c, &t->name, "tensor name")) || (rc = cur_u32(c, &t->n_dims, "tensor dimension count")))
    return rc;
  int nl = (int)(t->name.len < 200 ? t->name.len : 200);
  if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS) {
    log_error("%s: tensor '%.*s' has %u dimensions (1..%d allowed)", c->path, nl, t->name.ptr, t->n_dims,
              GGUF_MAX_DIMS);
    return STRATA_EFORMAT;
  }
  for (int d = 0; d < GGUF_MAX_DIMS; d++) t->ne[d] = 1;
  for (uint32_t d = 0; d < t->n_dims; d++) {
    uint64_t v;
    if ((rc = cur_u64(c, &v, "tensor dimension"))) return rc;
    if (v > (uint64_t)INT64_MAX) {
      log_error("%s: tensor '%.*s' dimension %u is %" PRIu64 " (negative as int64)", c->path, nl, t->name.ptr, d, v);
      return STRATA_EFORMAT;
    }
    t->ne[d] = (int64_t)v;
  }
  /* The element count must fit in int64 (checked by division, never by a product that could wrap). */
  int64_t n_el = 1;
  for (int d = 0; d < GGUF_MAX_DIMS; d++) {
    if (t->ne[d] != 0 && n_el > INT64_MAX / t->ne[d]) {
      log_error("%s: tensor '%.*s' element count overflows", c->path, nl, t->name.ptr);
      return STRATA_EFORMAT;
    }
    n_el *= t->ne[d];
  }
  if ((rc = cur_u32(c, &t->ggml_type, "tensor type")) || (rc = cur_u64(c, &t->offset, "tensor offset"))) return rc;
  t->dtype = dtype_from_ggml(t->ggml_type);
  t->n_bytes = 0;
  t->data = NULL;
  if (t->dtype < 0) return 0;
  if (t->ne[0] % dtype_block_elems((dtype_t)t->dtype) != 0) {
    log_error("%s: tensor '%.*s' row of %" PRId64 " elements is not a multiple of the %s block size %d", c->path,
              nl, t->name.ptr, t->ne[0], dtype_name((dtype_t)t->dtype), dtype_block_elems((dtype_t)t->dtype));
    return STRATA_EFORMAT;
  }
  uint64_t row = dtype_row_bytes((dtype_t)t->dtype, t->ne[0]);
  uint64_t rows = (uint64_t)t->ne[1] * (uint64_t)t->ne[2] * (uint64_t)t->ne[3]; /* <= n_el, no wrap */
  if (rows != 0 && row > UINT64_MAX / rows) {
    log_error("%s: tensor '%.*s' byte size overflows", c->path, nl, t->name.ptr);
    return STRATA_EFORMAT;
  }
  t->n_bytes = row * rows;
  return 0;
}

static int parse_alignment(gguf_file_t *f) {
  f->alignment = 32;
  const gguf_kv_t *kv = gguf_find(f, "general.alignment");
  if (!kv) return 0;
  uint32_t a;
  if (kv->type != GGUF_TYPE_UINT32 || (memcpy(&a, kv->data, 4), a == 0) || (a & (a - 1))) {
    log_error("%s: general.alignment must be a power-of-two uint32", f->path);
    return STRATA_EFORMAT;
  }
  f->alignment = a;
  return 0;
}

/* place_tensors: aligns the data section and checks each tensor's bytes lie inside the file. */
static int place_tensors(gguf_file_t *f, uint64_t info_end) {
  uint64_t size = f->map.size, a = f->alignment;
  uint64_t data_off = info_end + (a - info_end % a) % a;
  if (data_off > size) data_off = size; /* no tensor bytes at all: only an error if a tensor needs some */
  f->data_base = (const uint8_t *)f->map.data + data_off;
  for (uint64_t i = 0; i < f->n_tensors; i++) {
    gguf_tensor_t *t = &f->tensors[i];
    int nl = (int)(t->name.len < 200 ? t->name.len : 200);
    if (t->offset % a != 0) {
      log_error("%s: tensor '%.*s' offset %" PRIu64 " is not aligned to %" PRIu64, f->path, nl, t->name.ptr,
                t->offset, a);
      return STRATA_EFORMAT;
    }
    if (t->dtype < 0) continue;
    uint64_t avail = size - data_off;
    if (t->offset > avail || t->n_bytes > avail - t->offset) {
      uint64_t lo = t->offset > UINT64_MAX - data_off ? UINT64_MAX : data_off + t->offset;
      uint64_t hi = t->n_bytes > UINT64_MAX - lo ? UINT64_MAX : lo + t->n_bytes;
      log_error("%s: tensor '%.*s' data [%" PRIu64 ", %" PRIu64 ") is past the end of the file (size %" PRIu64 ")",
                f->path, nl, t->name.ptr, lo, hi, size);
      return STRATA_EFORMAT;
    }
    t->data = f->data_base + t->offset;
  }
  return 0;
}

int gguf_open(gguf_file_t *f, const char *path) {
  memset(f, 0, sizeof *f);
  int rc;
  f->path = strdup(path);
  if (!f->path) return STRATA_ENOMEM;
  if ((rc = file_map(&f->map, path))) goto fail;
  gguf_cur_t c = {f->map.data, f->map.size, 0, path};
  uint32_t magic;
  if ((rc = cur_u32(&c, &magic, "magic"))) goto fail;
  if (memcmp(&magic, "GGUF", 4) != 0) {
    log_error("%s: not a GGUF file (bad magic)", path);
    rc = STRATA_EFORMAT;
    goto fail;
  }
  if ((rc = cur_u32(&c, &f->version, "version"))) goto fail;
  if (f->version != 2 && f->version != 3) {
    log_error("%s: GGUF version %u is not supported (2 and 3 are)", path, f->version);
    rc = STRATA_EFORMAT;
    goto fail;
  }
  if ((rc = cur_u64(&c, &f->n_tensors, "tensor count")) || (rc = cur_u64(&c, &f->n_kv, "metadata count"))) goto fail;
  /* A KV takes >= 12 bytes and a tensor info >= 28: bound the counts before allocating. */
  if (f->n_kv > (c.size - c.pos) / 12 || f->n_tensors > (c.size - c.pos) / 28) {
    log_error("%s: header claims %" PRIu64 " metadata entries and %" PRIu64
              " tensors, more than a file of %" PRIu64 " bytes can hold",
              path, f->n_kv, f->n_tensors, c.size);
    rc = STRATA_EFORMAT;
    goto fail;
  }
  f->kvs = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kvs);
  f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
  if (!f->kvs || !f->tensors) {
    rc = STRATA_ENOMEM;
    goto fail;
  }
  for (uint64_t i = 0; i < f->n_kv; i++)
    if ((rc = parse_kv(&c, &f->kvs[i]))) goto fail;
  if ((rc = parse_alignment(f))) goto fail;
  for (uint64_t i = 0; i < f->n_tensors; i++)
    if ((rc = parse_tensor_info(&c, &f->tensors[i]))) goto fail;
  if ((rc = check_duplicate_names(f))) goto fail;
  if ((rc = place_tensors(f, c.pos))) goto fail;
  return 0;
fail:
  gguf_close(f);
  return rc;
}

void gguf_close(gguf_file_t *f) {
  free(f->kvs);
  free(f->tensors);
  file_unmap(&f->map);
  free((void *)f->path);
  memset(f, 0, sizeof *f);
}

int gguf_str_eq(gguf_str_t s, const char *c) {
  size_t n = strlen(c);
  return s.len == n && memcmp(s.ptr, c, n) == 0;
}

const gguf_kv_t *gguf_find(const gguf_file_t *f, const char *key) {
  for (uint64_t i = 0; i < f->n_kv; i++)
    if (gguf_str_eq(f->kvs[i].key, key)) return &f->kvs[i];
  return NULL;
}

const gguf_tensor_t *gguf_find_tensor(const gguf_file_t *f, const char *name) {
  for (uint64_t i = 0; i < f->n_tensors; i++)
    if (gguf_str_eq(f->tensors[i].name, name)) return &f->tensors[i];
  return NULL;
}

/* get_int: any integer (or bool) value widened; *is_signed tells how to read *v. */
static int get_int(const gguf_kv_t *kv, int64_t *sv, uint64_t *uv, int *is_signed) {
  const uint8_t *d = kv->data;
  *is_signed = 0;
  switch (kv->type) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_BOOL: *uv = d[0]; return 0;
    case GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, d, 2); *uv = v; return 0; }
    case GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, d, 4); *uv = v; return 0; }
    case GGUF_TYPE_UINT64: memcpy(uv, d, 8); return 0;
    default: break;
  }
  *is_signed = 1;
  switch (kv->type) {
    case GGUF_TYPE_INT8: *sv = (int8_t)d[0]; return 0;
    case GGUF_TYPE_INT16: { int16_t v; memcpy(&v, d, 2); *sv = v; return 0; }
    case GGUF_TYPE_INT32: { int32_t v; memcpy(&v, d, 4); *sv = v; return 0; }
    case GGUF_TYPE_INT64: memcpy(sv, d, 8); return 0;
    default: return STRATA_EFORMAT;
  }
}

int gguf_get_u32(const gguf_file_t *f, const char *key, uint32_t *out) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  int64_t s = 0;
  uint64_t u = 0;
  int is_signed;
  if (get_int(kv, &s, &u, &is_signed)) return STRATA_EFORMAT;
  if (is_signed) {
    if (s < 0 || s > UINT32_MAX) return STRATA_EFORMAT;
    u = (uint64_t)s;
  }
  if (u > UINT32_MAX) return STRATA_EFORMAT;
  *out = (uint32_t)u;
  return 0;
}

int gguf_get_i64(const gguf_file_t *f, const char *key, int64_t *out) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  int64_t s = 0;
  uint64_t u = 0;
  int is_signed;
  if (get_int(kv, &s, &u, &is_signed)) return STRATA_EFORMAT;
  if (!is_signed) {
    if (u > (uint64_t)INT64_MAX) return STRATA_EFORMAT;
    s = (int64_t)u;
  }
  *out = s;
  return 0;
}

int gguf_get_f32(const gguf_file_t *f, const char *key, float *out) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  if (kv->type == GGUF_TYPE_FLOAT32) {
    memcpy(out, kv->data, 4);
    return 0;
  }
  if (kv->type == GGUF_TYPE_FLOAT64) {
    double d;
    memcpy(&d, kv->data, 8);
    *out = (float)d;
    return 0;
  }
  return STRATA_EFORMAT;
}

int gguf_get_bool(const gguf_file_t *f, const char *key, int *out) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  if (kv->type != GGUF_TYPE_BOOL) return STRATA_EFORMAT;
  *out = kv->data[0] != 0;
  return 0;
}

int gguf_get_str(const gguf_file_t *f, const char *key, gguf_str_t *out) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  if (kv->type != GGUF_TYPE_STRING) return STRATA_EFORMAT;
  uint64_t n;
  memcpy(&n, kv->data, 8);
  out->ptr = (const char *)kv->data + 8;
  out->len = n;
  return 0;
}

int gguf_get_str_array(const gguf_file_t *f, const char *key, gguf_str_t **out, uint64_t *n) {
  *out = NULL;
  *n = 0;
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != GGUF_TYPE_STRING) return STRATA_EFORMAT;
  gguf_str_t *v = malloc((kv->arr_len ? kv->arr_len : 1) * sizeof *v);
  if (!v) return STRATA_ENOMEM;
  /* Bounds were checked at open time, so walking the lengths again stays inside the mapping. */
  const uint8_t *p = kv->data;
  for (uint64_t i = 0; i < kv->arr_len; i++) {
    uint64_t len;
    memcpy(&len, p, 8);
    v[i].ptr = (const char *)p + 8;
    v[i].len = len;
    p += 8 + len;
  }
  *out = v;
  *n = kv->arr_len;
  return 0;
}

int gguf_get_arr(const gguf_file_t *f, const char *key, gguf_type_t type, const void **data, uint64_t *n) {
  const gguf_kv_t *kv = gguf_find(f, key);
  if (!kv) return STRATA_ENOTFOUND;
  if (kv->type != GGUF_TYPE_ARRAY || kv->arr_type != type || !type_size(type)) return STRATA_EFORMAT;
  *data = kv->data;
  *n = kv->arr_len;
  return 0;
}
