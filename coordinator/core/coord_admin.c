/* coord_admin.c: the strata.v1.Admin gRPC service: policies (JSON in etcd at
 * /strata/<cluster>/policy/<pool>, merged with autoscale_policy_update), the worker list, draining a
 * worker (Worker.Drain) and the cluster status. Handlers run on the Admin server's thread: they read
 * the loop's snapshot and call etcd and workers synchronously (each call is bounded by a deadline). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"
#include "coordinator/core/coord_int.h"
#include "strata/v1/admin.pb-c.h"
#include "strata/v1/worker.pb-c.h"

#define ADMIN_DRAIN_TIMEOUT_MS 5000

static const char *pool_or_default(const char *p) { return p && p[0] ? p : "unified"; }

static int policy_key(coord_t *c, const char *pool, char *key, size_t len) {
  if (strchr(pool, '/') || strlen(pool) > 15) return STRATA_EINVAL;
  snprintf(key, len, "%spolicy/%s", c->prefix, pool);
  return 0;
}

/* policy_read: P = defaults + the stored document (if any); *MOD_REV its mod_revision (0: none). */
static int policy_read(coord_t *c, const char *pool, autoscale_policy_t *p, int64_t *mod_rev, char *err,
                       size_t err_len) {
  char key[300];
  autoscale_policy_defaults(p);
  *mod_rev = 0;
  if (policy_key(c, pool, key, sizeof key)) {
    snprintf(err, err_len, "bad pool name '%s'", pool);
    return STRATA_EINVAL;
  }
  etcd_kvs_t kvs = {0};
  int rc = etcd_get(c->etcd, key, 0, &kvs);
  if (rc) {
    snprintf(err, err_len, "cannot read %s from etcd (%s)", key, strata_strerror(rc));
    return rc;
  }
  if (kvs.n_kvs == 1) {
    *mod_rev = kvs.kvs[0].mod_revision;
    char perr[256] = "";
    rc = autoscale_policy_merge_json(p, kvs.kvs[0].value, kvs.kvs[0].value_len, perr, sizeof perr);
    if (rc) {
      log_warn("coordinator: the policy at %s is invalid (%s); using the defaults for it", key, perr);
      autoscale_policy_defaults(p);
      rc = 0;
    }
  }
  etcd_kvs_free(&kvs);
  return rc;
}

int coord_policy_load(coord_t *c, const char *pool, autoscale_policy_t *p, char *err, size_t err_len) {
  int64_t rev;
  return policy_read(c, pool, p, &rev, err, err_len);
}

static void reply_policy(rpc_reply_t *reply, const char *pool, const autoscale_policy_t *p) {
  char *js = autoscale_policy_to_json(p);
  if (!js) {
    rpc_reply_status(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  Strata__V1__Policy out = STRATA__V1__POLICY__INIT;
  out.pool = (char *)pool;
  out.json = js;
  rpc_reply_message(reply, &out.base);
  free(js);
}

static void on_get_policy(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  coord_t *c = arg;
  const Strata__V1__GetPolicyRequest *req = (const Strata__V1__GetPolicyRequest *)msg;
  const char *pool = pool_or_default(req->pool);
  autoscale_policy_t p;
  char err[300] = "";
  int64_t rev;
  int rc = policy_read(c, pool, &p, &rev, err, sizeof err);
  if (rc) {
    rpc_reply_status(reply, rc == STRATA_EINVAL ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_UNAVAILABLE, err);
    return;
  }
  reply_policy(reply, pool, &p);
}

static void on_set_policy(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  coord_t *c = arg;
  const Strata__V1__SetPolicyRequest *req = (const Strata__V1__SetPolicyRequest *)msg;
  const char *pool = pool_or_default(req->pool);
  char key[300], err[512] = "";
  policy_key(c, pool, key, sizeof key);
  /* compare-and-swap on the stored document, so two operators' partial updates both land */
  for (int attempt = 0; attempt < 5; attempt++) {
    autoscale_policy_t p;
    int64_t rev;
    int rc = policy_read(c, pool, &p, &rev, err, sizeof err);
    if (rc) {
      rpc_reply_status(reply, rc == STRATA_EINVAL ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_UNAVAILABLE, err);
      return;
    }
    const char *json = req->json && req->json[0] ? req->json : NULL;
    rc = autoscale_policy_update(&p, json, json ? strlen(json) : 0, (int)req->n_set, (const char *const *)req->set, err,
                                 sizeof err);
    if (rc) {
      rpc_reply_status(reply, GRPC_STATUS_INVALID_ARGUMENT, err);
      return;
    }
    char *js = autoscale_policy_to_json(&p);
    if (!js) {
      rpc_reply_status(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
    int done = 0;
    if (rev) rc = etcd_put_if_revision(c->etcd, key, js, strlen(js), 0, rev, &done);
    else rc = etcd_put_if_absent(c->etcd, key, js, strlen(js), 0, &done);
    free(js);
    if (rc) {
      snprintf(err, sizeof err, "cannot write %s to etcd (%s)", key, strata_strerror(rc));
      rpc_reply_status(reply, GRPC_STATUS_UNAVAILABLE, err);
      return;
    }
    if (done) {
      log_info("coordinator: policy of pool %s updated", pool);
      reply_policy(reply, pool, &p);
      return;
    }
  }
  rpc_reply_status(reply, GRPC_STATUS_ABORTED, "the policy kept changing under us; retry");
}

static void on_list_workers(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  coord_t *c = arg;
  const Strata__V1__ListWorkersRequest *req = (const Strata__V1__ListWorkersRequest *)msg;
  int n = 0;
  coord_snap_worker_t *s = coord_snap_get(c, &n);
  Strata__V1__WorkerInfo *infos = calloc((size_t)n + 1, sizeof *infos);
  Strata__V1__WorkerInfo **ptrs = calloc((size_t)n + 1, sizeof *ptrs);
  if (!s || !infos || !ptrs) {
    rpc_reply_status(reply, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  Strata__V1__ListWorkersResponse resp = STRATA__V1__LIST_WORKERS_RESPONSE__INIT;
  for (int i = 0; i < n; i++) {
    if (req->pool && req->pool[0] && strcmp(req->pool, s[i].info.pool) != 0) continue;
    Strata__V1__WorkerInfo *w = &infos[resp.n_workers];
    strata__v1__worker_info__init(w);
    w->id = s[i].info.id;
    w->pool = s[i].info.pool;
    w->model = s[i].info.model;
    w->address = s[i].info.grpc_address;
    w->state = (char *)registry_health_name(s[i].health);
    w->running = (uint32_t)s[i].load.running;
    w->waiting = (uint32_t)s[i].load.waiting;
    w->kv_usage = s[i].load.kv_total_blocks ? (float)s[i].load.kv_used_blocks / (float)s[i].load.kv_total_blocks : 0;
    ptrs[resp.n_workers++] = w;
  }
  resp.workers = ptrs;
  rpc_reply_message(reply, &resp.base);
out:
  free(s);
  free(infos);
  free(ptrs);
}

int coord_drain_worker(coord_t *c, const char *id, const char *addr, uint32_t deadline_s, char *err, size_t err_len) {
  grpc_channel *ch = NULL;
  int rc = rpc_channel_new(addr, NULL, &ch);
  if (rc) {
    snprintf(err, err_len, "cannot open a channel to %s", addr);
    return rc;
  }
  Strata__V1__DrainRequest dr = STRATA__V1__DRAIN_REQUEST__INIT;
  dr.deadline_s = deadline_s;
  ProtobufCMessage *resp = NULL;
  rpc_status_t st;
  rc = rpc_unary_call(ch, "/strata.v1.Worker/Drain", &dr.base, &strata__v1__drain_response__descriptor, &resp,
                      ADMIN_DRAIN_TIMEOUT_MS, &st);
  grpc_channel_destroy(ch);
  if (rc) {
    snprintf(err, err_len, "worker %s (%s) did not accept Drain: %s %s", id, addr, rpc_status_name(st.code), st.details);
    return rc;
  }
  protobuf_c_message_free_unpacked(resp, NULL);
  coord_msg_t *m = calloc(1, sizeof *m);
  if (m && (m->key = strdup(id))) {
    m->kind = CM_SET_HEALTH;
    m->rc = REGISTRY_DRAINING;
    snprintf(m->text, sizeof m->text, "drained by an operator or the autoscaler");
    coord_post(c, m);
  } else {
    free(m);
  }
  log_info("coordinator: worker %s is draining", id);
  return 0;
}

static void on_drain_worker(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  coord_t *c = arg;
  const Strata__V1__DrainWorkerRequest *req = (const Strata__V1__DrainWorkerRequest *)msg;
  int n = 0;
  coord_snap_worker_t *s = coord_snap_get(c, &n);
  char addr[REGISTRY_NAME_MAX] = "", err[400] = "";
  for (int i = 0; s && i < n; i++)
    if (strcmp(s[i].info.id, req->id ? req->id : "") == 0) snprintf(addr, sizeof addr, "%s", s[i].info.grpc_address);
  free(s);
  if (!addr[0]) {
    snprintf(err, sizeof err, "no worker with id '%s' (see `strata workers`)", req->id ? req->id : "");
    rpc_reply_status(reply, GRPC_STATUS_NOT_FOUND, err);
    return;
  }
  if (coord_drain_worker(c, req->id, addr, req->deadline_s, err, sizeof err) != 0) {
    rpc_reply_status(reply, GRPC_STATUS_UNAVAILABLE, err);
    return;
  }
  Strata__V1__DrainWorkerResponse out = STRATA__V1__DRAIN_WORKER_RESPONSE__INIT;
  out.accepted = 1;
  rpc_reply_message(reply, &out.base);
}

static void on_cluster_status(void *arg, const ProtobufCMessage *msg, rpc_reply_t *reply) {
  (void)msg;
  coord_t *c = arg;
  Strata__V1__PoolStatus ps[COORD_MAX_POOLS], *pp[COORD_MAX_POOLS];
  coord_pool_status_t pools[COORD_MAX_POOLS];
  char leader[128];
  pthread_mutex_lock(&c->snap_mu);
  int n = c->n_pools;
  memcpy(pools, c->pools, sizeof pools);
  snprintf(leader, sizeof leader, "%s", c->leader);
  pthread_mutex_unlock(&c->snap_mu);
  for (int i = 0; i < n; i++) {
    strata__v1__pool_status__init(&ps[i]);
    ps[i].pool = pools[i].pool;
    ps[i].replicas = (uint32_t)pools[i].replicas;
    ps[i].desired_replicas = (uint32_t)pools[i].desired;
    ps[i].last_decision = pools[i].decision;
    ps[i].last_reason = pools[i].reason;
    pp[i] = &ps[i];
  }
  Strata__V1__ClusterStatusResponse out = STRATA__V1__CLUSTER_STATUS_RESPONSE__INIT;
  out.cluster = c->conf->cluster;
  out.leader = leader;
  out.n_pools = (size_t)n;
  out.pools = pp;
  rpc_reply_message(reply, &out.base);
}

static rpc_method_t g_methods[5];

int coord_admin_start(coord_t *c) {
  g_methods[0] = (rpc_method_t){"/strata.v1.Admin/GetPolicy", &strata__v1__get_policy_request__descriptor, on_get_policy, NULL, NULL, c};
  g_methods[1] = (rpc_method_t){"/strata.v1.Admin/SetPolicy", &strata__v1__set_policy_request__descriptor, on_set_policy, NULL, NULL, c};
  g_methods[2] = (rpc_method_t){"/strata.v1.Admin/ListWorkers", &strata__v1__list_workers_request__descriptor, on_list_workers, NULL, NULL, c};
  g_methods[3] = (rpc_method_t){"/strata.v1.Admin/DrainWorker", &strata__v1__drain_worker_request__descriptor, on_drain_worker, NULL, NULL, c};
  g_methods[4] = (rpc_method_t){"/strata.v1.Admin/ClusterStatus", &strata__v1__cluster_status_request__descriptor, on_cluster_status, NULL, NULL, c};
  char addr[300];
  snprintf(addr, sizeof addr, "%s:%d", c->conf->host, c->conf->grpc_port);
  rpc_server_opts_t o = {.addr = addr};
  int rc = rpc_server_new(&o, g_methods, 5, &c->admin);
  if (rc) log_error("coordinator: cannot serve Admin gRPC on %s (%s): is the port taken? (--grpc-port)", addr, strata_strerror(rc));
  return rc;
}
