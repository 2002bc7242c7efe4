/* config.c: the config table: parsing option values from defaults, the environment, the command line
 * and live SETs, and printing help and dumps. */
#include "common/config.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/status.h"

/* One parsed value, held apart from the conf until it is known good (so a bad SET changes nothing). */
typedef union {
  int i;
  int64_t i64;
  double f;
  bool b;
  char *s;
  cfg_strlist_t list;
} cfg_val_t;

static int fail(char *err, size_t err_len, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t err_len, int code, const char *fmt, ...) {
  if (err && err_len > 0) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
  }
  return code;
}

static void *field_of(const cfg_option_t *opt, const void *conf) { return (char *)conf + opt->offset; }

static void list_clear(cfg_strlist_t *l) {
  for (int i = 0; i < l->n; i++) free(l->items[i]);
  free(l->items);
  l->items = NULL;
  l->n = 0;
}

static int list_push(cfg_strlist_t *l, const char *s, size_t len) {
  char **items = realloc(l->items, (size_t)(l->n + 1) * sizeof(*items));
  if (!items) return STRATA_ENOMEM;
  l->items = items;
  char *copy = strndup(s, len);
  if (!copy) return STRATA_ENOMEM;
  l->items[l->n++] = copy;
  return 0;
}

/* list_append_csv: appends the comma-separated items of TEXT to L, trimming blanks around each and
 * skipping empty ones (so "" is an empty list and "a, b," is two items). */
static int list_append_csv(cfg_strlist_t *l, const char *text) {
  const char *p = text;
  while (*p) {
    const char *end = strchr(p, ',');
    if (!end) end = p + strlen(p);
    const char *a = p, *b = end;
    while (a < b && isspace((unsigned char)*a)) a++;
    while (b > a && isspace((unsigned char)b[-1])) b--;
    if (b > a && list_push(l, a, (size_t)(b - a)) != 0) return STRATA_ENOMEM;
    p = *end ? end + 1 : end;
  }
  return 0;
}

static int parse_bool(const char *s, bool *out) {
  static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) return *out = true, 0;
    if (strcasecmp(s, no[i]) == 0) return *out = false, 0;
  }
  return -1;
}

static int parse_int(const cfg_option_t *opt, const char *who, const char *s, int64_t *out, char *err,
                     size_t err_len) {
  char *end;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (end == s || *end != '\0' || isspace((unsigned char)*s))
    return fail(err, err_len, STRATA_EINVAL, "%s: '%s' is not an integer", who, s);
  if (errno == ERANGE)
    return fail(err, err_len, STRATA_EINVAL, "%s: %s is out of range [%" PRId64 ", %" PRId64 "]", who, s, opt->imin,
                opt->imax);
  if (x < opt->imin)
    return fail(err, err_len, STRATA_EINVAL, "%s: %lld is below the minimum %" PRId64, who, x, opt->imin);
  if (x > opt->imax)
    return fail(err, err_len, STRATA_EINVAL, "%s: %lld is above the maximum %" PRId64, who, x, opt->imax);
  if (opt->type == CFG_TYPE_INT && (x < INT_MIN || x > INT_MAX))
    return fail(err, err_len, STRATA_EINVAL, "%s: %lld does not fit an int", who, x);
  *out = x;
  return 0;
}

static int parse_float(const cfg_option_t *opt, const char *who, const char *s, double *out, char *err,
                       size_t err_len) {
  char *end;
  double x = strtod(s, &end);
  if (end == s || *end != '\0' || isspace((unsigned char)*s) || !isfinite(x))
    return fail(err, err_len, STRATA_EINVAL, "%s: '%s' is not a finite number", who, s);
  if (x < opt->fmin) return fail(err, err_len, STRATA_EINVAL, "%s: %g is below the minimum %g", who, x, opt->fmin);
  if (x > opt->fmax) return fail(err, err_len, STRATA_EINVAL, "%s: %g is above the maximum %g", who, x, opt->fmax);
  *out = x;
  return 0;
}

static int parse_enum(const cfg_option_t *opt, const char *who, const char *s, int *out, char *err, size_t err_len) {
  char names[256] = "";
  size_t used = 0;
  for (int i = 0; opt->enum_names && opt->enum_names[i]; i++) {
    if (strcasecmp(s, opt->enum_names[i]) == 0) return *out = i, 0;
    int w = snprintf(names + used, sizeof(names) - used, "%s%s", i ? ", " : "", opt->enum_names[i]);
    if (w > 0 && (size_t)w < sizeof(names) - used) used += (size_t)w;
  }
  return fail(err, err_len, STRATA_EINVAL, "%s: '%s' is not one of %s", who, s, names);
}

/* parse_value: TEXT as OPT's type into V (which then owns any memory), or an error naming WHO (the
 * option as the user wrote it: "--max-num-seqs", "STRATA_MAX_NUM_SEQS", "max-num-seqs"). */
static int parse_value(const cfg_option_t *opt, const char *who, const char *text, cfg_val_t *v, char *err,
                       size_t err_len) {
  memset(v, 0, sizeof(*v));
  int64_t x = 0;
  int rc;
  switch (opt->type) {
  case CFG_TYPE_INT:
  case CFG_TYPE_INT64:
    if ((rc = parse_int(opt, who, text, &x, err, err_len)) != 0) return rc;
    if (opt->type == CFG_TYPE_INT) v->i = (int)x;
    else v->i64 = x;
    return 0;
  case CFG_TYPE_FLOAT: return parse_float(opt, who, text, &v->f, err, err_len);
  case CFG_TYPE_BOOL:
    if (parse_bool(text, &v->b) != 0)
      return fail(err, err_len, STRATA_EINVAL, "%s: '%s' is not a boolean (true/false, yes/no, on/off, 1/0)", who,
                  text);
    return 0;
  case CFG_TYPE_STRING:
    if (!(v->s = strdup(text))) return fail(err, err_len, STRATA_ENOMEM, "%s: out of memory", who);
    return 0;
  case CFG_TYPE_STRLIST:
    if (list_append_csv(&v->list, text) != 0) {
      list_clear(&v->list);
      return fail(err, err_len, STRATA_ENOMEM, "%s: out of memory", who);
    }
    return 0;
  case CFG_TYPE_ENUM: return parse_enum(opt, who, text, &v->i, err, err_len);
  }
  return fail(err, err_len, STRATA_EINVAL, "%s: option has an unknown type %d", who, (int)opt->type);
}

/* commit: V replaces OPT's field in CONF (the old value is freed; V's memory moves into CONF). */
static void commit(const cfg_option_t *opt, void *conf, cfg_val_t *v) {
  void *f = field_of(opt, conf);
  switch (opt->type) {
  case CFG_TYPE_INT:
  case CFG_TYPE_ENUM: *(int *)f = v->i; break;
  case CFG_TYPE_INT64: *(int64_t *)f = v->i64; break;
  case CFG_TYPE_FLOAT: *(double *)f = v->f; break;
  case CFG_TYPE_BOOL: *(bool *)f = v->b; break;
  case CFG_TYPE_STRING:
    free(*(char **)f);
    *(char **)f = v->s;
    break;
  case CFG_TYPE_STRLIST:
    list_clear((cfg_strlist_t *)f);
    *(cfg_strlist_t *)f = v->list;
    break;
  }
  memset(v, 0, sizeof(*v));
}

static int set_from_text(const cfg_option_t *opt, void *conf, const char *who, const char *text, char *err,
                         size_t err_len) {
  cfg_val_t v;
  int rc = parse_value(opt, who, text, &v, err, err_len);
  if (rc != 0) return rc;
  commit(opt, conf, &v);
  return 0;
}

const cfg_option_t *cfg_find(const cfg_option_t *table, const char *name) {
  if (!table || !name) return NULL;
  for (const cfg_option_t *o = table; o->name; o++)
    if (strcmp(o->name, name) == 0) return o;
  return NULL;
}

/* edit_distance: Levenshtein distance of A and B, capped for long inputs (names are short). */
static int edit_distance(const char *a, const char *b) {
  enum { CAP = 64 };
  int la = (int)strnlen(a, CAP), lb = (int)strnlen(b, CAP);
  int row[CAP + 1];
  for (int j = 0; j <= lb; j++) row[j] = j;
  for (int i = 1; i <= la; i++) {
    int diag = row[0];
    row[0] = i;
    for (int j = 1; j <= lb; j++) {
      int up = row[j];
      int best = diag + (a[i - 1] != b[j - 1]);
      if (up + 1 < best) best = up + 1;
      if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
      row[j] = best;
      diag = up;
    }
  }
  return row[lb];
}

/* closest: the option name nearest NAME if it is near enough to be a likely typo, else NULL. */
static const char *closest(const cfg_option_t *table, const char *name) {
  const char *best = NULL;
  int bd = INT_MAX;
  for (const cfg_option_t *o = table; o->name; o++) {
    int d = edit_distance(name, o->name);
    if (d < bd) bd = d, best = o->name;
  }
  int limit = (int)strlen(name) / 3;
  if (limit < 2) limit = 2;
  return bd <= limit ? best : NULL;
}

static int unknown_option(const cfg_option_t *table, const char *dashes, const char *name, int code, char *err,
                          size_t err_len) {
  const char *near = closest(table, name);
  if (near) return fail(err, err_len, code, "unknown option %s%s (did you mean %s%s?)", dashes, name, dashes, near);
  return fail(err, err_len, code, "unknown option %s%s", dashes, name);
}

int cfg_defaults(const cfg_option_t *table, void *conf, char *err, size_t err_len) {
  for (const cfg_option_t *o = table; o->name; o++) {
    if (o->def) {
      char who[96];
      snprintf(who, sizeof(who), "default of %s", o->name);
      int rc = set_from_text(o, conf, who, o->def, err, err_len);
      if (rc != 0) return rc;
    } else {
      cfg_val_t zero;
      memset(&zero, 0, sizeof(zero));
      commit(o, conf, &zero);
    }
  }
  return 0;
}

/* env_name: "max-num-seqs" -> "STRATA_MAX_NUM_SEQS". */
static void env_name(const char *name, char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "STRATA_");
  for (const char *p = name; *p && n + 1 < len; p++)
    buf[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  buf[n < len ? n : len - 1] = '\0';
}

int cfg_load_env(const cfg_option_t *table, void *conf, char *err, size_t err_len) {
  for (const cfg_option_t *o = table; o->name; o++) {
    char env[128];
    env_name(o->name, env, sizeof(env));
    const char *v = getenv(env);
    if (!v) continue;
    int rc = set_from_text(o, conf, env, v, err, err_len);
    if (rc != 0) return rc;
  }
  return 0;
}

/* parse_one: the option argument ARGV[*I] (starting "--"), consuming a following value if it takes
 * one. SEEN marks list options already given on this command line: their first use replaces what the
 * environment or default gave, later ones append. */
static int parse_one(const cfg_option_t *table, void *conf, int argc, char *const *argv, int *i, unsigned char *seen,
                     char *err, size_t err_len) {
  const char *arg = argv[*i] + 2;
  const char *eq = strchr(arg, '=');
  char name[128];
  size_t nlen = eq ? (size_t)(eq - arg) : strlen(arg);
  if (nlen >= sizeof(name)) return fail(err, err_len, STRATA_EINVAL, "unknown option --%.40s...", arg);
  memcpy(name, arg, nlen);
  name[nlen] = '\0';
  const char *value = eq ? eq + 1 : NULL;
  const cfg_option_t *o = cfg_find(table, name);
  if (!o && strncmp(name, "no-", 3) == 0) {
    const cfg_option_t *b = cfg_find(table, name + 3);
    if (b && b->type == CFG_TYPE_BOOL) {
      if (value) return fail(err, err_len, STRATA_EINVAL, "--%s takes no value (got '%s')", name, value);
      o = b;
      value = "false";
    }
  }
  if (!o) return unknown_option(table, "--", name, STRATA_EINVAL, err, err_len);
  char who[140];
  snprintf(who, sizeof(who), "--%s", o->name);
  if (!value && o->type == CFG_TYPE_BOOL) value = "true";
  if (!value) {
    if (*i + 1 >= argc) return fail(err, err_len, STRATA_EINVAL, "%s: missing value", who);
    value = argv[++*i];
    if (strncmp(value, "--", 2) == 0 && value[2])
      return fail(err, err_len, STRATA_EINVAL, "%s: missing value (got the option %s; write %s=%s if meant)", who,
                  value, who, value);
  }
  cfg_val_t v;
  int rc = parse_value(o, who, value, &v, err, err_len);
  if (rc != 0) return rc;
  int k = (int)(o - table);
  if (o->type == CFG_TYPE_STRLIST && seen[k]) { /* a repeat: append to this command line's list */
    cfg_strlist_t *l = field_of(o, conf);
    for (int j = 0; j < v.list.n && rc == 0; j++) rc = list_push(l, v.list.items[j], strlen(v.list.items[j]));
    list_clear(&v.list);
    if (rc != 0) return fail(err, err_len, rc, "%s: out of memory", who);
  } else {
    commit(o, conf, &v);
  }
  seen[k] = 1;
  return 0;
}

int cfg_parse_args(const cfg_option_t *table, void *conf, int argc, char *const *argv, const char **pos,
                   int *n_pos, char *err, size_t err_len) {
  int n_opts = 0, np = 0, rc = 0, only_pos = 0;
  for (const cfg_option_t *o = table; o->name; o++) n_opts++;
  unsigned char *seen = calloc((size_t)n_opts + 1, 1);
  if (!seen) return fail(err, err_len, STRATA_ENOMEM, "out of memory parsing the command line");
  for (int i = 0; i < argc && rc == 0; i++) {
    const char *a = argv[i];
    if (!a) continue;
    if (!only_pos && strcmp(a, "--") == 0) {
      only_pos = 1;
    } else if (only_pos || a[0] != '-' || a[1] == '\0') {
      if (!pos) rc = fail(err, err_len, STRATA_EINVAL, "unexpected argument '%s'", a);
      else pos[np++] = a;
    } else if (a[1] != '-') { /* "-x": only long options exist */
      const char *near = closest(table, a + 1);
      rc = near ? fail(err, err_len, STRATA_EINVAL, "unknown option %s (did you mean --%s?)", a, near)
                : fail(err, err_len, STRATA_EINVAL, "unknown option %s (options are long: --name)", a);
    } else {
      rc = parse_one(table, conf, argc, argv, &i, seen, err, err_len);
    }
  }
  free(seen);
  if (n_pos) *n_pos = np;
  return rc;
}

int cfg_load(const cfg_option_t *table, void *conf, int argc, char *const *argv, const char **pos, int *n_pos,
             char *err, size_t err_len) {
  if (n_pos) *n_pos = 0;
  if (!table || !conf || argc < 0 || (argc > 0 && !argv))
    return fail(err, err_len, STRATA_EINVAL, "cfg_load: invalid arguments");
  int rc = cfg_defaults(table, conf, err, err_len);
  if (rc == 0) rc = cfg_load_env(table, conf, err, err_len);
  if (rc == 0) rc = cfg_parse_args(table, conf, argc, argv, pos, n_pos, err, err_len);
  return rc;
}

int cfg_set(const cfg_option_t *table, void *conf, const char *name, const char *value, char *err, size_t err_len) {
  if (!table || !conf || !name || !value) return fail(err, err_len, STRATA_EINVAL, "cfg_set: invalid arguments");
  const cfg_option_t *o = cfg_find(table, name);
  if (!o) return unknown_option(table, "", name, STRATA_ENOTFOUND, err, err_len);
  if (!(o->flags & CFG_MUTABLE))
    return fail(err, err_len, STRATA_EUNSUPPORTED, "%s cannot be changed at run time; restart with --%s", o->name,
                o->name);
  return set_from_text(o, conf, o->name, value, err, err_len);
}

static int is_set(const cfg_option_t *opt, const void *conf) {
  const void *f = field_of(opt, conf);
  if (opt->type == CFG_TYPE_STRING) return *(char *const *)f && **(char *const *)f;
  if (opt->type == CFG_TYPE_STRLIST) return ((const cfg_strlist_t *)f)->n > 0;
  return 1;
}

int cfg_format_value(const cfg_option_t *opt, const void *conf, char *buf, size_t len) {
  const void *f = field_of(opt, conf);
  if (opt->flags & CFG_SECRET) return snprintf(buf, len, "%s", is_set(opt, conf) ? "***" : "");
  switch (opt->type) {
  case CFG_TYPE_INT: return snprintf(buf, len, "%d", *(const int *)f);
  case CFG_TYPE_INT64: return snprintf(buf, len, "%" PRId64, *(const int64_t *)f);
  case CFG_TYPE_FLOAT: return snprintf(buf, len, "%g", *(const double *)f);
  case CFG_TYPE_BOOL: return snprintf(buf, len, "%s", *(const bool *)f ? "true" : "false");
  case CFG_TYPE_STRING: return snprintf(buf, len, "%s", *(char *const *)f ? *(char *const *)f : "");
  case CFG_TYPE_ENUM: {
    int i = *(const int *)f, n = 0;
    while (opt->enum_names && opt->enum_names[n]) n++;
    return snprintf(buf, len, "%s", i >= 0 && i < n ? opt->enum_names[i] : "?");
  }
  case CFG_TYPE_STRLIST: {
    const cfg_strlist_t *l = f;
    int total = 0;
    if (len > 0) buf[0] = '\0';
    for (int i = 0; i < l->n; i++) {
      size_t at = (size_t)total < len ? (size_t)total : len;
      int w = snprintf(buf + at, len - at, "%s%s", i ? "," : "", l->items[i]);
      if (w > 0) total += w;
    }
    return total;
  }
  }
  return snprintf(buf, len, "?");
}

/* type_text: the type column of the help text ("int", "a|b|c"...). */
static void type_text(const cfg_option_t *o, char *buf, size_t len) {
  static const char *names[] = {"int", "int64", "float", "bool", "string", "list", "enum"};
  if (o->type != CFG_TYPE_ENUM || !o->enum_names) {
    snprintf(buf, len, "%s", (unsigned)o->type < 7 ? names[o->type] : "?");
    return;
  }
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; o->enum_names[i] && used < len; i++) {
    int w = snprintf(buf + used, len - used, "%s%s", i ? "|" : "", o->enum_names[i]);
    if (w > 0) used += (size_t)w;
  }
}

static void name_text(const cfg_option_t *o, char *buf, size_t len) {
  snprintf(buf, len, o->type == CFG_TYPE_BOOL ? "--[no-]%s" : "--%s", o->name);
}

static void default_text(const cfg_option_t *o, char *buf, size_t len) {
  snprintf(buf, len, "%s", (o->flags & CFG_SECRET) || !o->def || !o->def[0] ? "-" : o->def);
}

void cfg_help(const cfg_option_t *table, FILE *out) {
  char a[160], b[160], c[160];
  int wa = 6, wb = 4, wc = 7; /* the header words: OPTION, TYPE, DEFAULT */
  for (const cfg_option_t *o = table; o->name; o++) { /* column widths first */
    name_text(o, a, sizeof(a));
    type_text(o, b, sizeof(b));
    default_text(o, c, sizeof(c));
    if ((int)strlen(a) > wa) wa = (int)strlen(a);
    if ((int)strlen(b) > wb) wb = (int)strlen(b);
    if ((int)strlen(c) > wc) wc = (int)strlen(c);
  }
  fprintf(out, "Options (each may also be set as STRATA_<NAME> in the environment, dashes as underscores;\n"
               "lists are comma-separated, and a repeated list option appends; the command line wins):\n");
  fprintf(out, "  %-*s  %-*s  %-*s  %s\n", wa, "OPTION", wb, "TYPE", wc, "DEFAULT", "DESCRIPTION");
  for (const cfg_option_t *o = table; o->name; o++) {
    name_text(o, a, sizeof(a));
    type_text(o, b, sizeof(b));
    default_text(o, c, sizeof(c));
    fprintf(out, "  %-*s  %-*s  %-*s  %s", wa, a, wb, b, wc, c, o->doc ? o->doc : "");
    if (o->type == CFG_TYPE_INT || o->type == CFG_TYPE_INT64) {
      int64_t top = o->type == CFG_TYPE_INT ? INT_MAX : INT64_MAX;
      if (o->imax >= top) fprintf(out, " [>= %" PRId64 "]", o->imin); /* no upper bound worth printing */
      else fprintf(out, " [%" PRId64 "..%" PRId64 "]", o->imin, o->imax);
    }
    if (o->type == CFG_TYPE_FLOAT) fprintf(out, " [%g..%g]", o->fmin, o->fmax);
    if (o->flags & CFG_MUTABLE) fprintf(out, " (live)");
    if (o->flags & CFG_SECRET) fprintf(out, " (secret)");
    fputc('\n', out);
  }
}

void cfg_dump(const cfg_option_t *table, const void *conf, FILE *out) {
  char buf[1024];
  for (const cfg_option_t *o = table; o->name; o++) {
    int n = cfg_format_value(o, conf, buf, sizeof(buf));
    fprintf(out, "%s = %s%s\n", o->name, buf, n >= (int)sizeof(buf) ? "..." : "");
  }
}

void cfg_free(const cfg_option_t *table, void *conf) {
  if (!table || !conf) return;
  for (const cfg_option_t *o = table; o->name; o++) {
    void *f = field_of(o, conf);
    if (o->type == CFG_TYPE_STRING) {
      free(*(char **)f);
      *(char **)f = NULL;
    } else if (o->type == CFG_TYPE_STRLIST) {
      list_clear((cfg_strlist_t *)f);
    }
  }
}
