/* config.h: one table declares every option once; the command line, the environment, a live SET,
 * the help text and the config dump all go through it.
 *
 * A caller declares its options as an array of cfg_option_t ended by CFG_END, each pointing (by
 * offsetof) into the caller's own struct:
 *
 *   typedef struct { int max_num_seqs; bool prefix_caching; char *api_key; cfg_strlist_t peers; } conf_t;
 *   static const cfg_option_t opts[] = {
 *       CFG_INT("max-num-seqs", conf_t, max_num_seqs, "256", 1, 4096, CFG_MUTABLE, "Most running sequences"),
 *       CFG_BOOL("prefix-caching", conf_t, prefix_caching, "true", 0, "Reuse cached prompt blocks"),
 *       CFG_STRING("api-key", conf_t, api_key, NULL, CFG_SECRET, "Bearer token clients must send"),
 *       CFG_LIST("peer", conf_t, peers, NULL, 0, "Peer address (repeat for more)"),
 *       CFG_END};
 *
 * Precedence: default < environment (STRATA_MAX_NUM_SEQS=8; lists comma-separated) < command line
 * (--max-num-seqs 8, --max-num-seqs=8, --prefix-caching / --no-prefix-caching; a repeated list option
 * appends). Strings and lists are owned by the table: cfg_free() releases them.
 *
 * Errors go to the caller's ERR buffer (name the option and the bound, e.g. "--max-num-seqs: 0 is
 * below the minimum 1") and are not logged here: the caller shows them to whoever typed the value
 * (stderr for a CLI, a response body for SET). Not thread-safe: one thread owns a conf at a time. */
#ifndef STRATA_CONFIG_H
#define STRATA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
  CFG_TYPE_INT,     /* int */
  CFG_TYPE_INT64,   /* int64_t */
  CFG_TYPE_FLOAT,   /* double */
  CFG_TYPE_BOOL,    /* bool */
  CFG_TYPE_STRING,  /* char * (owned by the table; NULL when unset) */
  CFG_TYPE_STRLIST, /* cfg_strlist_t */
  CFG_TYPE_ENUM,    /* int: index into the option's names */
} cfg_type_t;

enum {
  CFG_MUTABLE = 1u << 0, /* a live cfg_set() may change it */
  CFG_SECRET = 1u << 1,  /* never printed: help shows no default, dump shows "***" */
};

/* A list of strings owned by the table. */
typedef struct {
  char **items; /* (n) */
  int n;
} cfg_strlist_t;

typedef struct {
  const char *name;  /* "max-num-seqs": lower case and dashes; NULL ends the table */
  cfg_type_t type;
  size_t offset;     /* of the field in the caller's struct */
  const char *def;   /* default as text (as on the command line; lists comma-separated); NULL: 0/unset */
  int64_t imin, imax;             /* bounds of INT and INT64 options */
  double fmin, fmax;              /* bounds of FLOAT options */
  const char *const *enum_names;  /* ENUM: the accepted names, NULL-terminated */
  unsigned flags;                 /* CFG_MUTABLE | CFG_SECRET */
  const char *doc;                /* one line for the help text */
} cfg_option_t;

/* Declaration helpers. The pointer comparison inside sizeof is never evaluated: it only makes the
 * compiler reject a field whose C type does not match the option's type. */
#define CFG_FIELD_(st, field, ctype) (offsetof(st, field) + 0 * sizeof(&((st *)0)->field == (ctype *)0))
#define CFG_INT(name, st, field, def, lo, hi, flags, doc) \
  {(name), CFG_TYPE_INT, CFG_FIELD_(st, field, int), (def), (lo), (hi), 0, 0, NULL, (flags), (doc)}
#define CFG_INT64(name, st, field, def, lo, hi, flags, doc) \
  {(name), CFG_TYPE_INT64, CFG_FIELD_(st, field, int64_t), (def), (lo), (hi), 0, 0, NULL, (flags), (doc)}
#define CFG_FLOAT(name, st, field, def, lo, hi, flags, doc) \
  {(name), CFG_TYPE_FLOAT, CFG_FIELD_(st, field, double), (def), 0, 0, (lo), (hi), NULL, (flags), (doc)}
#define CFG_BOOL(name, st, field, def, flags, doc) \
  {(name), CFG_TYPE_BOOL, CFG_FIELD_(st, field, bool), (def), 0, 0, 0, 0, NULL, (flags), (doc)}
#define CFG_STRING(name, st, field, def, flags, doc) \
  {(name), CFG_TYPE_STRING, CFG_FIELD_(st, field, char *), (def), 0, 0, 0, 0, NULL, (flags), (doc)}
#define CFG_LIST(name, st, field, def, flags, doc) \
  {(name), CFG_TYPE_STRLIST, CFG_FIELD_(st, field, cfg_strlist_t), (def), 0, 0, 0, 0, NULL, (flags), (doc)}
#define CFG_ENUM(name, st, field, names, def, flags, doc) \
  {(name), CFG_TYPE_ENUM, CFG_FIELD_(st, field, int), (def), 0, 0, 0, 0, (names), (flags), (doc)}
#define CFG_END {NULL, CFG_TYPE_INT, 0, NULL, 0, 0, 0, 0, NULL, 0, NULL}

/* cfg_load: fills CONF from TABLE: defaults, then the environment (STRATA_<NAME>, dashes as
 * underscores), then ARGV (ARGC entries, all parsed: the caller strips the program and subcommand
 * names). CONF's table-owned fields must be zero (a fresh `= {0}` struct) or cfg_free()d before.
 * Arguments that do not start with "-" (and all after "--") are positional: POS (room for ARGC
 * entries, may be NULL when none are accepted) receives pointers into ARGV and *N_POS their count.
 * Returns 0, or STRATA_EINVAL (bad value, unknown option: ERR says which and suggests the closest
 * name) or STRATA_ENOMEM. On failure CONF is partly filled: cfg_free() it. */
int cfg_load(const cfg_option_t *table, void *conf, int argc, char *const *argv, const char **pos, int *n_pos,
             char *err, size_t err_len);

/* The three steps of cfg_load(), for callers that need them apart. cfg_defaults() frees what
 * CONF's owned fields held; cfg_load_env() reads getenv(); cfg_parse_args() as cfg_load() does. */
int cfg_defaults(const cfg_option_t *table, void *conf, char *err, size_t err_len);
int cfg_load_env(const cfg_option_t *table, void *conf, char *err, size_t err_len);
int cfg_parse_args(const cfg_option_t *table, void *conf, int argc, char *const *argv, const char **pos,
                   int *n_pos, char *err, size_t err_len);

/* cfg_set: a live change of option NAME to the text VALUE (lists comma-separated, replacing the
 * list). Only CFG_MUTABLE options; on any error the old value stays. Returns 0, STRATA_ENOTFOUND
 * (unknown name, with a suggestion in ERR), STRATA_EUNSUPPORTED (not mutable: needs a restart) or
 * STRATA_EINVAL / STRATA_ENOMEM. */
int cfg_set(const cfg_option_t *table, void *conf, const char *name, const char *value, char *err, size_t err_len);

/* cfg_find: the option called NAME ("max-num-seqs"), or NULL. */
const cfg_option_t *cfg_find(const cfg_option_t *table, const char *name);

/* cfg_format_value: OPT's current value in CONF as text into BUF ("***" for a set secret, "" when
 * unset; lists comma-separated). Returns the length it needed, as snprintf. */
int cfg_format_value(const cfg_option_t *opt, const void *conf, char *buf, size_t len);

/* cfg_help: writes the aligned help text (option, type, default, doc; secrets show no default). */
void cfg_help(const cfg_option_t *table, FILE *out);
/* cfg_dump: writes one "name = value" line per option, secrets as "***" (for logs). */
void cfg_dump(const cfg_option_t *table, const void *conf, FILE *out);

/* cfg_free: releases the strings and lists CONF holds for TABLE and zeroes those fields. */
void cfg_free(const cfg_option_t *table, void *conf);

#endif
