/* etcd_kv.c: the etcd client object, unary calls with failover, KV, transactions and leases. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/etcd/etcd.h"
#include "common/etcd/etcd_int.h"
#include "common/log.h"
#include "common/status.h"

#define M_RANGE "/etcdserverpb.KV/Range"
#define M_PUT "/etcdserverpb.KV/Put"
#define M_DELETE "/etcdserverpb.KV/DeleteRange"
#define M_TXN "/etcdserverpb.KV/Txn"
#define M_COMPACT "/etcdserverpb.KV/Compact"
#define M_GRANT "/etcdserverpb.Lease/LeaseGrant"
#define M_REVOKE "/etcdserverpb.Lease/LeaseRevoke"

int64_t etcd_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int etcd_backoff_next(int ms) {
  ms = ms < ETCD_BACKOFF_MIN_MS ? ETCD_BACKOFF_MIN_MS : ms * 2;
  return ms > ETCD_BACKOFF_MAX_MS ? ETCD_BACKOFF_MAX_MS : ms;
}

static void etcd_sleep_ms(int64_t ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

int etcd_call(etcd_client_t *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, int64_t budget_ms) {
  int64_t deadline = etcd_now_ms() + budget_ms;
  int backoff = 25;
  rpc_status_t st = {GRPC_STATUS_UNAVAILABLE, "no attempt"};
  for (;;) {
    size_t i = atomic_load(&c->cur);
    int64_t left = deadline - etcd_now_ms();
    /* With several endpoints a black-holed one must not eat the whole budget. */
    int64_t attempt = c->n_endpoints > 1 ? left / 2 : left;
    if (attempt < 50) attempt = left;
    if (attempt < 1) attempt = 1;
    int rc = rpc_unary_call(c->channels[i % c->n_endpoints], method, req, desc, resp, attempt, &st);
    if (rc == 0) {
      if (atomic_exchange(&c->outage, 0)) log_info("etcd: reachable again at %s", c->endpoints[i % c->n_endpoints]);
      return 0;
    }
    if (rc != STRATA_EUNAVAILABLE && rc != STRATA_ETIMEDOUT) {
      if (rc != STRATA_ENOTFOUND)
        log_error("etcd: %s failed: %s (%s)", method, rpc_status_name(st.code), st.details);
      return rc;
    }
    size_t next = i + 1;
    atomic_compare_exchange_strong(&c->cur, &i, next);
    left = deadline - etcd_now_ms();
    if (left <= 0) break;
    etcd_sleep_ms(backoff < left ? backoff : left);
    backoff = backoff * 2 > 500 ? 500 : backoff * 2;
  }
  if (!atomic_exchange(&c->outage, 1))
    log_warn("etcd: cannot reach etcd (%zu endpoint(s), first %s) within %lld ms: %s (%s); retrying "
             "quietly until it is back",
             c->n_endpoints, c->endpoints[0], (long long)budget_ms, rpc_status_name(st.code), st.details);
  return STRATA_EUNAVAILABLE;
}

/* ---- the client object ----------------------------------------------------------------------- */

static void etcd_tick(void *arg) {
  etcd_client_t *c = arg;
  for (;;) {
    pthread_mutex_lock(&c->mu);
    etcd_cmd_t *cmd = c->cmds;
    if (cmd) {
      c->cmds = cmd->next;
      if (!c->cmds) c->cmds_tail = &c->cmds;
    }
    pthread_mutex_unlock(&c->mu);
    if (!cmd) break;
    etcd_session_run_cmd(c, cmd);
    pthread_mutex_lock(&c->mu);
    cmd->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
  }
  int64_t now = etcd_now_ms();
  etcd_session_tick(c, now);
  etcd_watch_tick(c, now);
}

static int etcd_parse_endpoints(etcd_client_t *c, const char *list) {
  char *copy = strdup(list ? list : "");
  if (!copy) return STRATA_ENOMEM;
  size_t cap = 1;
  for (const char *p = copy; *p; p++) cap += *p == ',';
  c->endpoints = calloc(cap, sizeof(char *));
  if (!c->endpoints) {
    free(copy);
    return STRATA_ENOMEM;
  }
  char *save = NULL;
  for (char *t = strtok_r(copy, ", ", &save); t; t = strtok_r(NULL, ", ", &save)) {
    if (!(c->endpoints[c->n_endpoints] = strdup(t))) break;
    c->n_endpoints++;
  }
  free(copy);
  if (c->n_endpoints == 0) {
    log_error("etcd: no endpoint given (expected \"host:port[,host:port...]\", got \"%s\")", list ? list : "");
    return STRATA_EINVAL;
  }
  return 0;
}

int etcd_client_new(const etcd_config_t *cfg, etcd_client_t **out) {
  *out = NULL;
  etcd_client_t *c = calloc(1, sizeof(*c));
  if (!c) return STRATA_ENOMEM;
  rpc_init();
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  c->cmds_tail = &c->cmds;
  c->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 5000;
  c->ttl_s = cfg->session_ttl_s > 0 ? cfg->session_ttl_s : 10;
  c->on_session = cfg->on_session;
  c->arg = cfg->arg;
  int rc = etcd_parse_endpoints(c, cfg->endpoints);
  if (rc < 0) goto fail;
  rc = STRATA_ENOMEM;
  if (!(c->channels = calloc(c->n_endpoints, sizeof(*c->channels)))) goto fail;
  rpc_channel_opts_t copts = {.ca_file = cfg->ca_file};
  for (size_t i = 0; i < c->n_endpoints; i++)
    if ((rc = rpc_channel_new(c->endpoints[i], &copts, &c->channels[i])) < 0) goto fail;
  if ((rc = rpc_loop_new(etcd_tick, c, ETCD_TICK_MS, &c->loop)) < 0) goto fail;
  *out = c;
  return 0;
fail:
  etcd_client_free(c);
  return rc;
}

void etcd_client_free(etcd_client_t *c) {
  if (!c) return;
  if (c->loop) {
    /* Streams must end before the queue goes: cancel them and let the thread run their closes. */
    pthread_mutex_lock(&c->mu);
    int n_watches = c->watches != NULL;
    pthread_mutex_unlock(&c->mu);
    if (n_watches) log_error("etcd: client freed with live watches; free them first");
    etcd_cmd_t stop = {.kind = ETCD_CMD_STOP};
    etcd_post_cmd(c, &stop);
    rpc_loop_free(c->loop);
  }
  while (c->regs) {
    etcd_reg_t *r = c->regs;
    c->regs = r->next;
    free(r->key);
    free(r->value);
    free(r);
  }
  for (size_t i = 0; c->channels && i < c->n_endpoints; i++)
    if (c->channels[i]) grpc_channel_destroy(c->channels[i]);
  free(c->channels);
  for (size_t i = 0; i < c->n_endpoints; i++) free(c->endpoints[i]);
  free(c->endpoints);
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
  free(c);
  rpc_shutdown();
}

/* ---- KV ---------------------------------------------------------------------------------------- */

void etcd_prefix_end(const char *p, size_t n, char *out, size_t *out_n) {
  memcpy(out, p, n);
  while (n > 0) {
    if ((unsigned char)out[n - 1] < 0xff) {
      out[n - 1]++;
      *out_n = n;
      return;
    }
    n--;
  }
  out[0] = '\0'; /* no upper bound: every key >= the prefix */
  *out_n = 1;
}

void etcd_kvs_free(etcd_kvs_t *r) {
  if (!r) return;
  for (size_t i = 0; i < r->n_kvs; i++) {
    free(r->kvs[i].key);
    free(r->kvs[i].value);
  }
  free(r->kvs);
  memset(r, 0, sizeof(*r));
}

static char *etcd_dup(const void *p, size_t n) {
  char *s = malloc(n + 1);
  if (!s) return NULL;
  if (n) memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

static int etcd_kvs_fill(etcd_kvs_t *out, const Etcdserverpb__RangeResponse *r) {
  memset(out, 0, sizeof(*out));
  out->revision = r->header ? r->header->revision : 0;
  if (r->n_kvs == 0) return 0;
  if (!(out->kvs = calloc(r->n_kvs, sizeof(*out->kvs)))) return STRATA_ENOMEM;
  for (size_t i = 0; i < r->n_kvs; i++) {
    const Mvccpb__KeyValue *kv = r->kvs[i];
    etcd_kv_t *o = &out->kvs[out->n_kvs++];
    o->key = etcd_dup(kv->key.data, kv->key.len);
    o->value = etcd_dup(kv->value.data, kv->value.len);
    if (!o->key || !o->value) {
      etcd_kvs_free(out);
      return STRATA_ENOMEM;
    }
    o->key_len = kv->key.len;
    o->value_len = kv->value.len;
    o->create_revision = kv->create_revision;
    o->mod_revision = kv->mod_revision;
    o->version = kv->version;
    o->lease = kv->lease;
  }
  return 0;
}

int etcd_range(etcd_client_t *c, const char *key, size_t key_len, const char *end, size_t end_len,
               int64_t revision, int64_t budget_ms, etcd_kvs_t *out) {
  Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
  req.key = (ProtobufCBinaryData){key_len, (uint8_t *)key};
  req.range_end = (ProtobufCBinaryData){end_len, (uint8_t *)end};
  req.revision = revision;
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_RANGE, &req.base, &etcdserverpb__range_response__descriptor, &resp, budget_ms);
  if (rc < 0) return rc;
  rc = etcd_kvs_fill(out, (Etcdserverpb__RangeResponse *)resp);
  protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}

int etcd_get(etcd_client_t *c, const char *key, int64_t revision, etcd_kvs_t *out) {
  if (!key || !*key) return STRATA_EINVAL;
  return etcd_range(c, key, strlen(key), NULL, 0, revision, c->timeout_ms, out);
}

int etcd_get_prefix(etcd_client_t *c, const char *prefix, int64_t revision, etcd_kvs_t *out) {
  size_t n = strlen(prefix), end_n = 0;
  char *end = malloc(n + 1);
  if (!end) return STRATA_ENOMEM;
  etcd_prefix_end(prefix, n, end, &end_n);
  /* An empty key with range_end "\0" means every key. */
  int rc = etcd_range(c, n ? prefix : "", n ? n : 1, end, end_n, revision, c->timeout_ms, out);
  free(end);
  return rc;
}

int etcd_put(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
             int64_t *revision) {
  return etcd_put_budget(c, key, value, n, lease, c->timeout_ms, revision);
}

int etcd_put_budget(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
                    int64_t budget_ms, int64_t *revision) {
  if (!key || !*key) return STRATA_EINVAL;
  Etcdserverpb__PutRequest req = ETCDSERVERPB__PUT_REQUEST__INIT;
  req.key = (ProtobufCBinaryData){strlen(key), (uint8_t *)key};
  req.value = (ProtobufCBinaryData){n, (uint8_t *)value};
  req.lease = lease;
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_PUT, &req.base, &etcdserverpb__put_response__descriptor, &resp, budget_ms);
  if (rc < 0) return rc;
  Etcdserverpb__PutResponse *r = (Etcdserverpb__PutResponse *)resp;
  if (revision) *revision = r->header ? r->header->revision : 0;
  protobuf_c_message_free_unpacked(resp, NULL);
  return 0;
}

int etcd_delete_range(etcd_client_t *c, const char *key, int prefix, int64_t budget_ms, int64_t *n_deleted) {
  size_t n = strlen(key), end_n = 0;
  if (!prefix && n == 0) return STRATA_EINVAL;
  char *end = malloc(n + 1);
  if (!end) return STRATA_ENOMEM;
  Etcdserverpb__DeleteRangeRequest req = ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
  req.key = (ProtobufCBinaryData){n ? n : 1, (uint8_t *)(n ? key : "")};
  if (prefix) {
    etcd_prefix_end(key, n, end, &end_n);
    req.range_end = (ProtobufCBinaryData){end_n, (uint8_t *)end};
  }
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_DELETE, &req.base, &etcdserverpb__delete_range_response__descriptor, &resp,
                     budget_ms);
  free(end);
  if (rc < 0) return rc;
  if (n_deleted) *n_deleted = ((Etcdserverpb__DeleteRangeResponse *)resp)->deleted;
  protobuf_c_message_free_unpacked(resp, NULL);
  return 0;
}

int etcd_delete(etcd_client_t *c, const char *key, int64_t *n_deleted) {
  return etcd_delete_range(c, key, 0, c->timeout_ms, n_deleted);
}

int etcd_delete_prefix(etcd_client_t *c, const char *prefix, int64_t *n_deleted) {
  return etcd_delete_range(c, prefix, 1, c->timeout_ms, n_deleted);
}

int etcd_compact(etcd_client_t *c, int64_t revision) {
  Etcdserverpb__CompactionRequest req = ETCDSERVERPB__COMPACTION_REQUEST__INIT;
  req.revision = revision;
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_COMPACT, &req.base, &etcdserverpb__compaction_response__descriptor, &resp,
                     c->timeout_ms);
  if (rc == 0) protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}

/* ---- transactions ----------------------------------------------------------------------------- */

/* The request ops of one branch, with the storage they point into. */
typedef struct {
  Etcdserverpb__RequestOp *ops;
  Etcdserverpb__RequestOp **ptrs;
  Etcdserverpb__PutRequest *puts;
  Etcdserverpb__DeleteRangeRequest *dels;
  char **ends;
  size_t n;
} etcd_branch_t;

static void etcd_branch_free(etcd_branch_t *b) {
  for (size_t i = 0; b->ends && i < b->n; i++) free(b->ends[i]);
  free(b->ends);
  free(b->ops);
  free(b->ptrs);
  free(b->puts);
  free(b->dels);
}

static int etcd_branch_build(etcd_branch_t *b, const etcd_op_t *ops, size_t n) {
  memset(b, 0, sizeof(*b));
  b->n = n;
  if (n == 0) return 0;
  b->ops = calloc(n, sizeof(*b->ops));
  b->ptrs = calloc(n, sizeof(*b->ptrs));
  b->puts = calloc(n, sizeof(*b->puts));
  b->dels = calloc(n, sizeof(*b->dels));
  b->ends = calloc(n, sizeof(*b->ends));
  if (!b->ops || !b->ptrs || !b->puts || !b->dels || !b->ends) return STRATA_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    const etcd_op_t *o = &ops[i];
    if (!o->key || (!*o->key && o->kind != ETCD_OP_DELETE_PREFIX)) return STRATA_EINVAL;
    size_t kn = strlen(o->key);
    b->ptrs[i] = &b->ops[i];
    b->ops[i] = (Etcdserverpb__RequestOp)ETCDSERVERPB__REQUEST_OP__INIT;
    if (o->kind == ETCD_OP_PUT) {
      b->puts[i] = (Etcdserverpb__PutRequest)ETCDSERVERPB__PUT_REQUEST__INIT;
      b->puts[i].key = (ProtobufCBinaryData){kn, (uint8_t *)o->key};
      b->puts[i].value = (ProtobufCBinaryData){o->value_len, (uint8_t *)o->value};
      b->puts[i].lease = o->lease;
      b->ops[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_PUT;
      b->ops[i].request_put = &b->puts[i];
    } else {
      b->dels[i] = (Etcdserverpb__DeleteRangeRequest)ETCDSERVERPB__DELETE_RANGE_REQUEST__INIT;
      b->dels[i].key = (ProtobufCBinaryData){kn ? kn : 1, (uint8_t *)(kn ? o->key : "")};
      if (o->kind == ETCD_OP_DELETE_PREFIX) {
        size_t en = 0;
        if (!(b->ends[i] = malloc(kn + 1))) return STRATA_ENOMEM;
        etcd_prefix_end(o->key, kn, b->ends[i], &en);
        b->dels[i].range_end = (ProtobufCBinaryData){en, (uint8_t *)b->ends[i]};
      }
      b->ops[i].request_case = ETCDSERVERPB__REQUEST_OP__REQUEST_REQUEST_DELETE_RANGE;
      b->ops[i].request_delete_range = &b->dels[i];
    }
  }
  return 0;
}

static int etcd_cmps_build(Etcdserverpb__Compare *cmp, Etcdserverpb__Compare **ptrs, const etcd_cmp_t *in, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (!in[i].key || !*in[i].key || (int)in[i].target < 0 || in[i].target > ETCD_CMP_VALUE ||
        (int)in[i].result < 0 || in[i].result > ETCD_CMP_NOT_EQUAL)
      return STRATA_EINVAL;
    cmp[i] = (Etcdserverpb__Compare)ETCDSERVERPB__COMPARE__INIT;
    /* Our enums follow etcd's numbering (CompareResult, CompareTarget). */
    cmp[i].result = (Etcdserverpb__Compare__CompareResult)in[i].result;
    cmp[i].target = (Etcdserverpb__Compare__CompareTarget)in[i].target;
    cmp[i].key = (ProtobufCBinaryData){strlen(in[i].key), (uint8_t *)in[i].key};
    switch (in[i].target) {
      case ETCD_CMP_VERSION:
        cmp[i].target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VERSION;
        cmp[i].version = in[i].number;
        break;
      case ETCD_CMP_CREATE:
        cmp[i].target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_CREATE_REVISION;
        cmp[i].create_revision = in[i].number;
        break;
      case ETCD_CMP_MOD:
        cmp[i].target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_MOD_REVISION;
        cmp[i].mod_revision = in[i].number;
        break;
      case ETCD_CMP_VALUE:
        cmp[i].target_union_case = ETCDSERVERPB__COMPARE__TARGET_UNION_VALUE;
        cmp[i].value = (ProtobufCBinaryData){in[i].value_len, (uint8_t *)in[i].value};
        break;
    }
    ptrs[i] = &cmp[i];
  }
  return 0;
}

int etcd_txn(etcd_client_t *c, const etcd_cmp_t *cmps, size_t n_cmps, const etcd_op_t *success,
             size_t n_success, const etcd_op_t *failure, size_t n_failure, int *succeeded,
             int64_t *revision) {
  etcd_branch_t ok_b, fail_b;
  Etcdserverpb__Compare *cmp = calloc(n_cmps ? n_cmps : 1, sizeof(*cmp));
  Etcdserverpb__Compare **cmp_ptrs = calloc(n_cmps ? n_cmps : 1, sizeof(*cmp_ptrs));
  int rc = etcd_branch_build(&ok_b, success, n_success);
  int rc2 = etcd_branch_build(&fail_b, failure, n_failure);
  if (rc == 0) rc = rc2;
  if (rc == 0 && (!cmp || !cmp_ptrs)) rc = STRATA_ENOMEM;
  if (rc == 0) rc = etcd_cmps_build(cmp, cmp_ptrs, cmps, n_cmps);
  if (rc < 0) {
    if (rc == STRATA_EINVAL) log_error("etcd: txn with an empty key or an unknown compare/op kind");
    goto out;
  }
  Etcdserverpb__TxnRequest req = ETCDSERVERPB__TXN_REQUEST__INIT;
  req.n_compare = n_cmps;
  req.compare = cmp_ptrs;
  req.n_success = n_success;
  req.success = ok_b.ptrs;
  req.n_failure = n_failure;
  req.failure = fail_b.ptrs;
  ProtobufCMessage *resp = NULL;
  rc = etcd_call(c, M_TXN, &req.base, &etcdserverpb__txn_response__descriptor, &resp, c->timeout_ms);
  if (rc == 0) {
    Etcdserverpb__TxnResponse *r = (Etcdserverpb__TxnResponse *)resp;
    if (succeeded) *succeeded = r->succeeded;
    if (revision) *revision = r->header ? r->header->revision : 0;
    protobuf_c_message_free_unpacked(resp, NULL);
  }
out:
  etcd_branch_free(&ok_b);
  etcd_branch_free(&fail_b);
  free(cmp);
  free(cmp_ptrs);
  return rc;
}

int etcd_put_if_absent(etcd_client_t *c, const char *key, const void *value, size_t n, int64_t lease,
                       int *created) {
  etcd_cmp_t cmp = {.key = key, .target = ETCD_CMP_CREATE, .result = ETCD_CMP_EQUAL, .number = 0};
  etcd_op_t put = {.kind = ETCD_OP_PUT, .key = key, .value = value, .value_len = n, .lease = lease};
  return etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, created, NULL);
}

int etcd_put_if_revision(etcd_client_t *c, const char *key, const void *value, size_t n,
                         int64_t lease, int64_t mod_revision, int *swapped) {
  etcd_cmp_t cmp = {.key = key, .target = ETCD_CMP_MOD, .result = ETCD_CMP_EQUAL, .number = mod_revision};
  etcd_op_t put = {.kind = ETCD_OP_PUT, .key = key, .value = value, .value_len = n, .lease = lease};
  return etcd_txn(c, &cmp, 1, &put, 1, NULL, 0, swapped, NULL);
}

/* ---- leases ----------------------------------------------------------------------------------- */

int etcd_lease_grant(etcd_client_t *c, int ttl_s, int64_t *id, int64_t *granted_ttl_s) {
  return etcd_lease_grant_budget(c, ttl_s, c->timeout_ms, id, granted_ttl_s);
}

int etcd_lease_grant_budget(etcd_client_t *c, int ttl_s, int64_t budget_ms, int64_t *id, int64_t *granted_ttl_s) {
  if (ttl_s <= 0) return STRATA_EINVAL;
  Etcdserverpb__LeaseGrantRequest req = ETCDSERVERPB__LEASE_GRANT_REQUEST__INIT;
  req.ttl = ttl_s;
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_GRANT, &req.base, &etcdserverpb__lease_grant_response__descriptor, &resp, budget_ms);
  if (rc < 0) return rc;
  Etcdserverpb__LeaseGrantResponse *r = (Etcdserverpb__LeaseGrantResponse *)resp;
  if (r->error && *r->error) {
    log_error("etcd: lease grant (TTL %d s) refused: %s", ttl_s, r->error);
    rc = STRATA_EINTERNAL;
  } else {
    *id = r->id;
    if (granted_ttl_s) *granted_ttl_s = r->ttl;
  }
  protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}

int etcd_lease_revoke(etcd_client_t *c, int64_t id) { return etcd_lease_revoke_budget(c, id, c->timeout_ms); }

int etcd_lease_revoke_budget(etcd_client_t *c, int64_t id, int64_t budget_ms) {
  Etcdserverpb__LeaseRevokeRequest req = ETCDSERVERPB__LEASE_REVOKE_REQUEST__INIT;
  req.id = id;
  ProtobufCMessage *resp = NULL;
  int rc = etcd_call(c, M_REVOKE, &req.base, &etcdserverpb__lease_revoke_response__descriptor, &resp, budget_ms);
  if (rc == 0) protobuf_c_message_free_unpacked(resp, NULL);
  return rc;
}
