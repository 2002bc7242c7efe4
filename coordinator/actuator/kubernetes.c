/* kubernetes.c: the `kubernetes` actuator: reads and patches the scale subresource of each pool's
 * StatefulSet through the API server (HTTPS with the cluster CA verified, service-account token). */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/actuator/actuator_int.h"

#define SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"
#define MAX_BODY_BYTES (1 << 20)

typedef struct {
  char pool[48];
  char id[96];
  int ordinal;
  actuator_worker_state_t state;
} victim_t;

typedef struct {
  char *api;        /* "https://host:port", no trailing slash */
  char *token_file;
  char *ca_file;
  char *ns;
  char *sts_tmpl;   /* "strata-worker-{pool}" */
  long timeout_ms;
  victim_t *victims; /* (n_victims) */
  int n_victims;
} k8s_t;

static void k8s_destroy(void *impl) {
  k8s_t *k = impl;
  if (!k) return;
  free(k->api);
  free(k->token_file);
  free(k->ca_file);
  free(k->ns);
  free(k->sts_tmpl);
  free(k->victims);
  free(k);
  curl_global_cleanup();
}

/* read_small_file: the first line-trimmed contents of PATH (at most 64 KiB) as a malloc'd string. */
static char *read_small_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *buf = malloc(65536);
  size_t n = buf ? fread(buf, 1, 65535, f) : 0;
  fclose(f);
  if (!buf) return NULL;
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t')) n--;
  buf[n] = '\0';
  return buf;
}

static char *dup_or(const char *s, const char *def) { return strdup(s && *s ? s : def); }

/* default_api: https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT (IPv6 hosts bracketed). */
static char *default_api(void) {
  const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
  if (!host || !*host) return NULL;
  char buf[512];
  snprintf(buf, sizeof(buf), strchr(host, ':') ? "https://[%s]:%s" : "https://%s:%s", host,
           port && *port ? port : "443");
  return strdup(buf);
}

int actuator_k8s_create(const actuator_config_t *cfg, void **impl) {
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    log_error("actuator kubernetes: libcurl failed to initialise");
    return STRATA_EINTERNAL;
  }
  int rc = STRATA_ENOMEM;
  k8s_t *k = calloc(1, sizeof(*k));
  if (!k) {
    curl_global_cleanup();
    return STRATA_ENOMEM;
  }
  k->timeout_ms = cfg->k8s_timeout_ms > 0 ? cfg->k8s_timeout_ms : 10000;
  k->api = cfg->k8s_api_server && *cfg->k8s_api_server ? strdup(cfg->k8s_api_server) : default_api();
  if (!k->api) {
    log_error("actuator kubernetes: no API server: set the API server address or run in a pod "
              "(KUBERNETES_SERVICE_HOST is unset)");
    rc = STRATA_EINVAL;
    goto fail;
  }
  size_t al = strlen(k->api);
  while (al > 0 && k->api[al - 1] == '/') k->api[--al] = '\0';
  k->token_file = dup_or(cfg->k8s_token_file, SA_DIR "/token");
  k->ca_file = dup_or(cfg->k8s_ca_file, SA_DIR "/ca.crt");
  k->sts_tmpl = dup_or(cfg->k8s_statefulset, "strata-worker-{pool}");
  if (!k->token_file || !k->ca_file || !k->sts_tmpl) goto fail;
  if (cfg->k8s_namespace && *cfg->k8s_namespace) {
    k->ns = strdup(cfg->k8s_namespace);
    if (!k->ns) goto fail;
  } else {
    const char *nsf = cfg->k8s_namespace_file && *cfg->k8s_namespace_file ? cfg->k8s_namespace_file
                                                                           : SA_DIR "/namespace";
    k->ns = read_small_file(nsf);
    if (!k->ns || !*k->ns) {
      log_error("actuator kubernetes: cannot read the namespace from %s (set the namespace explicitly outside "
                "a pod)", nsf);
      rc = STRATA_EIO;
      goto fail;
    }
  }
  for (const char *c = k->ns; *c; c++) {
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-')) {
      log_error("actuator kubernetes: namespace \"%s\" is not a valid Kubernetes name", k->ns);
      rc = STRATA_EINVAL;
      goto fail;
    }
  }
  *impl = k;
  return 0;
fail:
  k8s_destroy(k);
  return rc;
}

/* sts_name: the StatefulSet of POOL from the template; 0 or STRATA_EINVAL. */
static int sts_name(const k8s_t *k, const char *pool, char *out, size_t len) {
  const char *at = strstr(k->sts_tmpl, "{pool}");
  int n = at ? snprintf(out, len, "%.*s%s%s", (int)(at - k->sts_tmpl), k->sts_tmpl, pool, at + 6)
             : snprintf(out, len, "%s", k->sts_tmpl);
  if (n < 0 || (size_t)n >= len || n > 63) {
    log_error("actuator kubernetes: StatefulSet name for pool %s is longer than 63 characters", pool);
    return STRATA_EINVAL;
  }
  for (const char *c = out; *c; c++) {
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '.')) {
      log_error("actuator kubernetes: StatefulSet name \"%s\" is not a valid Kubernetes name", out);
      return STRATA_EINVAL;
    }
  }
  return 0;
}

typedef struct {
  char *data;
  size_t n;
} body_t;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *user) {
  body_t *b = user;
  size_t add = size * nmemb;
  if (b->n + add > MAX_BODY_BYTES) return 0; /* aborts the transfer: no API answer is this big */
  char *grown = realloc(b->data, b->n + add + 1);
  if (!grown) return 0;
  memcpy(grown + b->n, ptr, add);
  b->data = grown;
  b->n += add;
  b->data[b->n] = '\0';
  return add;
}

/* status_message: the "message" of a Kubernetes Status body, for the log (or "" when none). */
static void status_message(const body_t *b, char *out, size_t len) {
  out[0] = '\0';
  cJSON *j = b->data ? cJSON_ParseWithLength(b->data, b->n) : NULL;
  const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
  if (cJSON_IsString(m)) snprintf(out, len, ": %s", m->valuestring);
  cJSON_Delete(j);
}

static int curl_code(CURLcode c) {
  switch (c) {
  case CURLE_OPERATION_TIMEDOUT: return STRATA_ETIMEDOUT;
  case CURLE_COULDNT_CONNECT:
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_SEND_ERROR:
  case CURLE_RECV_ERROR:
  case CURLE_GOT_NOTHING: return STRATA_EUNAVAILABLE;
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM: return STRATA_EAUTH;
  default: return STRATA_EIO;
  }
}

/* http_code: an API server status to a STRATA_E* code, logged with what to do about it. */
static int http_code(const k8s_t *k, long status, const char *method, const char *sts, const body_t *b) {
  char msg[256];
  status_message(b, msg, sizeof(msg));
  switch (status) {
  case 200: return 0;
  case 401:
    log_error("actuator kubernetes: %s statefulset %s/%s: 401 unauthorized: the API server rejected the token in "
              "%s%s", method, k->ns, sts, k->token_file, msg);
    return STRATA_EAUTH;
  case 403:
    log_error("actuator kubernetes: %s statefulset %s/%s: 403 forbidden: the service account needs get and patch "
              "on statefulsets/scale in namespace %s%s", method, k->ns, sts, k->ns, msg);
    return STRATA_EAUTH;
  case 404:
    log_error("actuator kubernetes: %s statefulset %s/%s: 404 not found (is the pool deployed, and the name "
              "template right?)%s", method, k->ns, sts, msg);
    return STRATA_ENOTFOUND;
  case 409:
    log_error("actuator kubernetes: %s statefulset %s/%s: 409 conflict, will retry%s", method, k->ns, sts, msg);
    return STRATA_EAGAIN;
  default:
    log_error("actuator kubernetes: %s statefulset %s/%s: HTTP %ld%s", method, k->ns, sts, status, msg);
    if (status == 429 || status >= 500) return STRATA_EUNAVAILABLE;
    return status >= 400 && status < 500 ? STRATA_EINVAL : STRATA_EIO;
  }
}

/* scale_request: GET (PATCH_BODY NULL) or PATCH of POOL's scale subresource; the new or current
 * spec.replicas goes to *REPLICAS. */
static int scale_request(k8s_t *k, const char *pool, const char *patch_body, int *replicas) {
  const char *method = patch_body ? "PATCH" : "GET";
  char sts[96], url[1024], auth[8192];
  int rc = sts_name(k, pool, sts, sizeof(sts));
  if (rc) return rc;
  snprintf(url, sizeof(url), "%s/apis/apps/v1/namespaces/%s/statefulsets/%s/scale", k->api, k->ns, sts);
  char *token = read_small_file(k->token_file); /* NOTE: read per request: projected tokens rotate */
  if (!token || !*token || strlen(token) > sizeof(auth) - 32 || strpbrk(token, "\r\n")) {
    log_error("actuator kubernetes: cannot read a service-account token from %s", k->token_file);
    free(token);
    return STRATA_EAUTH;
  }
  snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
  memset(token, 0, strlen(token));
  free(token);

  body_t b = {0};
  char cerr[CURL_ERROR_SIZE] = "";
  struct curl_slist *hdrs = NULL, *h;
  CURL *c = curl_easy_init();
  rc = STRATA_ENOMEM;
  if (!c) goto done;
  if (!(h = curl_slist_append(hdrs, auth))) goto done;
  hdrs = h;
  if (!(h = curl_slist_append(hdrs, "Accept: application/json"))) goto done;
  hdrs = h;
  if (patch_body) {
    if (!(h = curl_slist_append(hdrs, "Content-Type: application/merge-patch+json"))) goto done;
    hdrs = h;
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PATCH");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, patch_body);
  }
  curl_easy_setopt(c, CURLOPT_URL, url);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
  curl_easy_setopt(c, CURLOPT_CAINFO, k->ca_file);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, k->timeout_ms);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, k->timeout_ms);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
  CURLcode cc = curl_easy_perform(c);
  if (cc != CURLE_OK) {
    rc = curl_code(cc);
    log_error("actuator kubernetes: %s %s: %s%s%s", method, url, cerr[0] ? cerr : curl_easy_strerror(cc),
              rc == STRATA_EAUTH ? "; is this the CA that signed the API server's certificate: " : "",
              rc == STRATA_EAUTH ? k->ca_file : "");
    goto done;
  }
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  rc = http_code(k, status, method, sts, &b);
  if (rc) goto done;
  cJSON *j = cJSON_ParseWithLength(b.data ? b.data : "", b.n);
  const cJSON *spec = cJSON_GetObjectItemCaseSensitive(j, "spec");
  const cJSON *r = cJSON_GetObjectItemCaseSensitive(spec, "replicas");
  /* NOTE: the API server omits spec.replicas when it is 0 (omitempty), so only a missing spec is wrong. */
  if (!cJSON_IsObject(spec) || (r && (!cJSON_IsNumber(r) || r->valuedouble < 0 || r->valuedouble > 1e6))) {
    log_error("actuator kubernetes: %s %s: the answer is not a Scale object", method, url);
    rc = STRATA_EFORMAT;
  } else {
    *replicas = r ? r->valueint : 0;
  }
  cJSON_Delete(j);
done:
  memset(auth, 0, sizeof(auth));
  curl_slist_free_all(hdrs); /* holds a copy of the token */
  if (c) curl_easy_cleanup(c);
  free(b.data);
  return rc;
}

static int k8s_get(void *impl, const char *pool, int *n) { return scale_request(impl, pool, NULL, n); }

static victim_t *find_victim(k8s_t *k, const char *pool, int ordinal, const char *id) {
  for (int i = 0; i < k->n_victims; i++) {
    victim_t *v = &k->victims[i];
    if (strcmp(v->pool, pool) == 0 && (id ? strcmp(v->id, id) == 0 : v->ordinal == ordinal)) return v;
  }
  return NULL;
}

/* forget_victims: drops POOL's victims with ordinal >= FROM (their pods are gone). */
static void forget_victims(k8s_t *k, const char *pool, int from) {
  int j = 0;
  for (int i = 0; i < k->n_victims; i++)
    if (strcmp(k->victims[i].pool, pool) != 0 || k->victims[i].ordinal < from) k->victims[j++] = k->victims[i];
  k->n_victims = j;
}

static int k8s_set(void *impl, const char *pool, int n) {
  k8s_t *k = impl;
  int cur = 0, rc = scale_request(k, pool, NULL, &cur);
  if (rc) return rc;
  if (n == cur) return 0;
  /* NOTE: a StatefulSet removes its highest ordinals first, so those are the pods that must be drained. */
  for (int o = n; o < cur; o++) {
    victim_t *v = find_victim(k, pool, o, NULL);
    if (!v || v->state != ACTUATOR_WORKER_DRAINED) {
      log_error("actuator kubernetes: scaling pool %s from %d to %d removes pod ordinal %d, which is not confirmed "
                "drained (pick victims, drain them, confirm, then retry)", pool, cur, n, o);
      return STRATA_EAGAIN;
    }
  }
  char body[64];
  snprintf(body, sizeof(body), "{\"spec\":{\"replicas\":%d}}", n);
  int now = -1;
  rc = scale_request(k, pool, body, &now);
  if (rc) return rc;
  forget_victims(k, pool, n);
  log_info("actuator kubernetes: pool %s scaled %d -> %d", pool, cur, now);
  return 0;
}

static int k8s_pick(void *impl, const char *pool, char *id, size_t len) {
  k8s_t *k = impl;
  int cur = 0, rc = scale_request(k, pool, NULL, &cur);
  if (rc) return rc;
  char sts[64];
  if ((rc = sts_name(k, pool, sts, sizeof(sts)))) return rc;
  int o = cur - 1;
  while (o >= 0 && find_victim(k, pool, o, NULL)) o--;
  if (o < 0) return STRATA_ENOTFOUND;
  victim_t *grown = realloc(k->victims, (size_t)(k->n_victims + 1) * sizeof(*grown));
  if (!grown) return STRATA_ENOMEM;
  k->victims = grown;
  victim_t *v = &k->victims[k->n_victims++];
  snprintf(v->pool, sizeof(v->pool), "%s", pool);
  snprintf(v->id, sizeof(v->id), "%s-%d", sts, o);
  v->ordinal = o;
  v->state = ACTUATOR_WORKER_DRAINING;
  snprintf(id, len, "%s", v->id);
  return 0;
}

static int k8s_mark(void *impl, const char *pool, const char *id, actuator_worker_state_t st) {
  k8s_t *k = impl;
  victim_t *v = find_victim(k, pool, 0, id);
  if (!v) return STRATA_ENOTFOUND;
  if (st == ACTUATOR_WORKER_RUNNING) {
    *v = k->victims[--k->n_victims];
    return 0;
  }
  v->state = st;
  return 0;
}

static int k8s_list(void *impl, const char *pool, actuator_worker_t *out, int max) {
  k8s_t *k = impl;
  int n = 0;
  for (int i = 0; i < k->n_victims; i++) {
    if (strcmp(k->victims[i].pool, pool) != 0) continue;
    if (n < max) {
      memset(&out[n], 0, sizeof(out[n]));
      snprintf(out[n].id, sizeof(out[n].id), "%s", k->victims[i].id);
      out[n].state = k->victims[i].state;
    }
    n++;
  }
  return n;
}

const actuator_ops_t actuator_k8s_ops = {k8s_get, k8s_set, k8s_pick, k8s_mark, k8s_list, k8s_destroy};
