/* tok_spm.c: loads a SentencePiece tokenizer.model by decoding its protobuf wire format by hand (only the
 * few ModelProto fields we need; protobuf-c is not available on every target machine). */
#include <stdlib.h>
#include <string.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/status.h"
#include "common/tok/tok_int.h"

typedef struct {
  const uint8_t *p, *end;
} pb_t;

/* pb_varint: reads a base-128 varint; -1 on truncation or more than 10 bytes. */
static int pb_varint(pb_t *b, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (b->p >= b->end) return -1;
    uint8_t c = *b->p++;
    *v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) return 0;
  }
  return -1;
}

/* pb_field: the next field's number and wire type; for length-delimited fields SUB spans the payload,
 * for fixed32 / varint *V holds the value. Unknown wire types fail. */
static int pb_field(pb_t *b, uint32_t *field, int *wire, uint64_t *v, pb_t *sub) {
  uint64_t key;
  if (pb_varint(b, &key)) return -1;
  *field = (uint32_t)(key >> 3);
  *wire = (int)(key & 7);
  switch (*wire) {
    case 0: return pb_varint(b, v);
    case 1:
      if (b->end - b->p < 8) return -1;
      memcpy(v, b->p, 8);
      b->p += 8;
      return 0;
    case 2:
      if (pb_varint(b, v) || *v > (uint64_t)(b->end - b->p)) return -1;
      sub->p = b->p;
      sub->end = b->p + *v;
      b->p += *v;
      return 0;
    case 5: {
      if (b->end - b->p < 4) return -1;
      uint32_t x;
      memcpy(&x, b->p, 4);
      *v = x;
      b->p += 4;
      return 0;
    }
    default: return -1;
  }
}

typedef struct {
  const uint8_t *text;
  size_t len;
  float score;
  int type;
} spm_piece_t;

static int parse_piece(pb_t m, spm_piece_t *out) {
  out->text = NULL;
  out->len = 0;
  out->score = 0;
  out->type = TOK_TYPE_NORMAL;
  while (m.p < m.end) {
    uint32_t f;
    int w;
    uint64_t v;
    pb_t sub;
    if (pb_field(&m, &f, &w, &v, &sub)) return -1;
    if (f == 1 && w == 2) {
      out->text = sub.p;
      out->len = (size_t)(sub.end - sub.p);
    } else if (f == 2 && w == 5) {
      uint32_t x = (uint32_t)v;
      memcpy(&out->score, &x, 4);
    } else if (f == 3 && w == 0) {
      out->type = v >= 1 && v <= 6 ? (int)v : TOK_TYPE_NORMAL;
    }
  }
  return 0;
}

typedef struct {
  int64_t unk_id, bos_id, eos_id;
  int add_dummy_prefix;
} spm_spec_t;

static int parse_specs(pb_t m, uint32_t which, spm_spec_t *s) {
  while (m.p < m.end) {
    uint32_t f;
    int w;
    uint64_t v;
    pb_t sub;
    if (pb_field(&m, &f, &w, &v, &sub)) return -1;
    if (w != 0) continue;
    if (which == 2 && f == 40) s->unk_id = (int32_t)v;
    if (which == 2 && f == 41) s->bos_id = (int32_t)v;
    if (which == 2 && f == 42) s->eos_id = (int32_t)v;
    if (which == 3 && f == 3) s->add_dummy_prefix = v != 0;
  }
  return 0;
}

/* build: fills T from the N pieces of the ModelProto in BUF. */
static int build(tok_t **out, const char *path, pb_t top, int n) {
  tok_t *t = NULL;
  spm_spec_t spec = {0, 1, 2, 1};
  int rc = tok_alloc(&t, TOK_KIND_SPM, n), id = 0;
  while (!rc && top.p < top.end) {
    uint32_t f;
    int w;
    uint64_t v;
    pb_t sub;
    if (pb_field(&top, &f, &w, &v, &sub)) break; /* counted fine in the first pass */
    if (w != 2) continue;
    if (f == 1) {
      spm_piece_t pc;
      if (parse_piece(sub, &pc)) {
        log_error("%s: SentencePiece piece %d is malformed", path, id);
        rc = STRATA_EFORMAT;
        break;
      }
      rc = tok_set_entry(t, id++, (const char *)pc.text, pc.len, pc.score, pc.type);
    } else if ((f == 2 || f == 3) && parse_specs(sub, f, &spec)) {
      log_error("%s: SentencePiece %s spec is malformed", path, f == 2 ? "trainer" : "normalizer");
      rc = STRATA_EFORMAT;
    }
  }
  if (rc) goto fail;
  t->merge_mode = TOK_MERGE_SCORE;
  t->add_space_prefix = spec.add_dummy_prefix;
  t->unk = spec.unk_id >= 0 && spec.unk_id < n ? (int32_t)spec.unk_id : -1;
  t->bos = spec.bos_id >= 0 && spec.bos_id < n ? (int32_t)spec.bos_id : -1;
  t->eos = spec.eos_id >= 0 && spec.eos_id < n ? (int32_t)spec.eos_id : -1;
  t->add_bos = t->bos >= 0;
  if ((rc = tok_finish(t, path, NULL))) goto fail;
  *out = t;
  return 0;
fail:
  tok_free(t);
  return rc;
}

int tok_load_spm_model(tok_t **out, const char *path) {
  *out = NULL;
  file_map_t map;
  int rc = file_map(&map, path);
  if (rc) return rc;
  pb_t top = {map.data, (const uint8_t *)map.data + map.size}, scan = top;
  int n = 0;
  while (scan.p < scan.end) {
    uint32_t f;
    int w;
    uint64_t v;
    pb_t sub;
    if (pb_field(&scan, &f, &w, &v, &sub)) {
      log_error("%s: not a SentencePiece model (bad protobuf at byte %zu)", path,
                (size_t)(scan.p - (const uint8_t *)map.data));
      rc = STRATA_EFORMAT;
      goto done;
    }
    if (f == 1 && w == 2) n++;
  }
  if (n == 0) {
    log_error("%s: SentencePiece model has no pieces", path);
    rc = STRATA_EFORMAT;
    goto done;
  }
  rc = build(out, path, top, n);
done:
  file_unmap(&map);
  return rc;
}
