/* etcd_session.c: registered keys under one kept-alive lease. The session outlives etcd outages: a
 * lease that lapsed while etcd was unreachable, or that etcd no longer knows, is replaced and every key
 * put again as soon as etcd answers; a key deleted behind our back (operator `etcdctl del`) is put
 * again under the live lease. */
#include <stdlib.h>
#include <string.h>

#include "common/etcd/etcd.h"
#include "common/etcd/etcd_int.h"
#include "common/log.h"
#include "common/status.h"

#define M_KEEPALIVE "/etcdserverpb.Lease/LeaseKeepAlive"
#define M_TTL "/etcdserverpb.Lease/LeaseTimeToLive"

static void sess_set_lease(etcd_client_t *c, int64_t lease) {
  c->lease = lease;
  atomic_store(&c->sess_lease_pub, lease);
}

static void sess_notify(etcd_client_t *c, etcd_session_event_t ev, int64_t lease) {
  if (c->on_session && !c->stopped) c->on_session(c->arg, ev, lease);
}

/* ACTIVE -> LOST. UNREACHABLE: renewals went unanswered, so etcd may still hold the lease (it
 * re-extends leases when it restarts): revoke it once the keys are under the new one, or the old
 * lease would linger for a TTL. Logged here, once per loss; the retries that follow are quiet. */
static void sess_lose(etcd_client_t *c, int unreachable) {
  int64_t old = c->lease;
  c->sess = ETCD_SESS_LOST;
  c->stale_lease = unreachable ? old : 0;
  sess_set_lease(c, 0);
  c->retry_at_ms = etcd_now_ms();
  c->backoff_ms = 0;
  c->lost_at_ms = c->retry_at_ms;
  if (unreachable)
    log_warn("etcd: unreachable: session lease %llx not renewed for %lld s; the registered keys may expire, "
             "and will be put again under a new lease as soon as etcd answers",
             (unsigned long long)old, (long long)(c->ttl_ms / 1000));
  else
    log_warn("etcd: session lease %llx is gone (revoked or expired in etcd); putting the registered keys "
             "again under a new lease", (unsigned long long)old);
  sess_notify(c, ETCD_SESSION_LOST, old);
}

/* Grant a lease; on success the session is ACTIVE with it. */
static int sess_grant(etcd_client_t *c, int64_t budget_ms) {
  int64_t id = 0, ttl = 0, t0 = etcd_now_ms();
  int rc = etcd_lease_grant_budget(c, c->ttl_s, budget_ms, &id, &ttl);
  if (rc < 0) return rc;
  if (ttl <= 0) ttl = c->ttl_s;
  sess_set_lease(c, id);
  c->sess = ETCD_SESS_ACTIVE;
  c->ttl_ms = ttl * 1000;
  /* Counted from before the request: the server's clock started no earlier. */
  c->expire_at_ms = t0 + c->ttl_ms;
  c->next_ka_ms = etcd_now_ms() + c->ttl_ms / 3;
  c->check_due = 0;
  return 0;
}

static void ka_on_message(rpc_stream_t *s, const ProtobufCMessage *m, void *arg) {
  etcd_client_t *c = arg;
  const Etcdserverpb__LeaseKeepAliveResponse *r = (const Etcdserverpb__LeaseKeepAliveResponse *)m;
  if (s != c->ka || c->sess != ETCD_SESS_ACTIVE || r->id != c->lease) return;
  if (r->ttl <= 0) {
    sess_lose(c, 0);
    return;
  }
  if (atomic_exchange(&c->outage, 0)) log_info("etcd: reachable again (session lease %llx renewed)",
                                               (unsigned long long)c->lease);
  c->ttl_ms = r->ttl * 1000;
  c->expire_at_ms = c->last_send_ms + c->ttl_ms;
  c->next_ka_ms = etcd_now_ms() + c->ttl_ms / 3;
  /* etcd answered: a good moment to verify our keys (an unreachable etcd would block the check). */
  c->check_due = 1;
}

static void ka_on_close(rpc_stream_t *s, int rc, const rpc_status_t *st, void *arg) {
  etcd_client_t *c = arg;
  if (c->ka == s) c->ka = NULL;
  if (rc < 0 && rc != STRATA_ECANCELED) {
    /* The first sign of an outage for a client that only keeps a session: say so once. */
    if (!c->stopped && c->sess == ETCD_SESS_ACTIVE && !atomic_exchange(&c->outage, 1))
      log_warn("etcd: lost the keep-alive stream (%s: %s); renewing quietly until etcd answers (lease %llx "
               "lasts %lld ms more)", rpc_status_name(st->code), st->details, (unsigned long long)c->lease,
               (long long)(c->expire_at_ms - etcd_now_ms()));
    else
      log_debug("etcd: keep-alive stream ended: %s (%s)", rpc_status_name(st->code), st->details);
  }
  rpc_stream_release(s);
}

/* Send one renewal on the bidi stream, opening it when needed (it reopens after any failure). */
static void ka_send(etcd_client_t *c, int64_t now) {
  Etcdserverpb__LeaseKeepAliveRequest req = ETCDSERVERPB__LEASE_KEEP_ALIVE_REQUEST__INIT;
  req.id = c->lease;
  c->last_send_ms = now;
  if (c->ka && rpc_stream_send(c->ka, &req.base) == 0) return;
  if (c->ka) return; /* it is ending; its on_close clears it and the next renewal reopens */
  size_t i = atomic_load(&c->cur) % c->n_endpoints;
  rpc_stream_cbs_t cbs = {ka_on_message, ka_on_close};
  if (rpc_stream_open(c->loop, c->channels[i], M_KEEPALIVE, &etcdserverpb__lease_keep_alive_response__descriptor,
                      &req.base, 0, 0, &cbs, c, &c->ka) < 0)
    c->ka = NULL;
}

/* Grant a new lease and put every registered key under it; then drop the lease it replaces. */
static void sess_restore(etcd_client_t *c, int64_t now) {
  int rc = sess_grant(c, ETCD_LOOP_CALL_MS);
  size_t n = 0;
  for (etcd_reg_t *r = c->regs; rc == 0 && r; r = r->next, n++)
    rc = etcd_put_budget(c, r->key, r->value, r->value_len, c->lease, ETCD_LOOP_CALL_MS, NULL);
  if (rc < 0) {
    if (c->sess == ETCD_SESS_ACTIVE) { /* granted, but a put failed: try again from scratch */
      c->sess = ETCD_SESS_LOST;
      sess_set_lease(c, 0);
    }
    c->backoff_ms = etcd_backoff_next(c->backoff_ms);
    c->retry_at_ms = now + c->backoff_ms;
    return;
  }
  if (c->stale_lease) {
    /* Its keys moved to the new lease with the puts above, so revoking deletes nothing. If it fails
     * the old lease simply runs out. */
    int rrc = etcd_lease_revoke_budget(c, c->stale_lease, ETCD_LOOP_CALL_MS);
    if (rrc < 0 && rrc != STRATA_ENOTFOUND)
      log_debug("etcd: could not revoke the replaced lease %llx (%s); it expires by itself",
                (unsigned long long)c->stale_lease, strata_strerror(rrc));
    c->stale_lease = 0;
  }
  log_info("etcd: registered again under lease %llx (%zu key(s) put) %lld ms after the session was lost",
           (unsigned long long)c->lease, n, (long long)(etcd_now_ms() - c->lost_at_ms));
  sess_notify(c, ETCD_SESSION_RESTORED, c->lease);
}

/* Is KEY among the N keys etcd lists under our lease? */
static int key_listed(const char *key, ProtobufCBinaryData *keys, size_t n) {
  size_t len = strlen(key);
  for (size_t i = 0; i < n; i++)
    if (keys[i].len == len && memcmp(keys[i].data, key, len) == 0) return 1;
  return 0;
}

/* Verify that etcd still has every registered key under the live lease; put back those someone
 * deleted. Errors are ignored: the keep-alive notices an unreachable etcd or a vanished lease. */
static void sess_check(etcd_client_t *c) {
  Etcdserverpb__LeaseTimeToLiveRequest req = ETCDSERVERPB__LEASE_TIME_TO_LIVE_REQUEST__INIT;
  req.id = c->lease;
  req.keys = 1;
  ProtobufCMessage *resp = NULL;
  if (etcd_call(c, M_TTL, &req.base, &etcdserverpb__lease_time_to_live_response__descriptor, &resp,
                ETCD_LOOP_CALL_MS) < 0)
    return;
  Etcdserverpb__LeaseTimeToLiveResponse *r = (Etcdserverpb__LeaseTimeToLiveResponse *)resp;
  if (r->ttl <= 0) {
    protobuf_c_message_free_unpacked(resp, NULL);
    sess_lose(c, 0);
    return;
  }
  for (etcd_reg_t *g = c->regs; g; g = g->next) {
    if (key_listed(g->key, r->keys, r->n_keys)) continue;
    log_warn("etcd: registered key %s was deleted or overwritten by someone else; putting it again", g->key);
    int rc = etcd_put_budget(c, g->key, g->value, g->value_len, c->lease, ETCD_LOOP_CALL_MS, NULL);
    if (rc == STRATA_ENOTFOUND) {
      sess_lose(c, 0);
      break;
    }
  }
  protobuf_c_message_free_unpacked(resp, NULL);
}

void etcd_session_tick(etcd_client_t *c, int64_t now) {
  if (c->stopped) return;
  if (c->sess == ETCD_SESS_ACTIVE) {
    if (now >= c->expire_at_ms) {
      sess_lose(c, 1);
    } else if (now >= c->next_ka_ms) {
      ka_send(c, now);
      /* A third of the TTL normally; half of what is left when renewals go unanswered. */
      int64_t step = c->ttl_ms / 3, half_left = (c->expire_at_ms - now) / 2;
      if (half_left < step) step = half_left;
      if (step < ETCD_TICK_MS) step = ETCD_TICK_MS;
      c->next_ka_ms = now + step;
    } else if (c->check_due) {
      c->check_due = 0;
      if (c->regs) sess_check(c);
    }
  }
  if (c->sess == ETCD_SESS_LOST && now >= c->retry_at_ms) sess_restore(c, now);
}

static etcd_reg_t **sess_find(etcd_client_t *c, const char *key) {
  etcd_reg_t **p = &c->regs;
  while (*p && strcmp((*p)->key, key) != 0) p = &(*p)->next;
  return p;
}

static int sess_register(etcd_client_t *c, etcd_cmd_t *cmd) {
  int rc = 0;
  if (c->sess == ETCD_SESS_NONE && (rc = sess_grant(c, c->timeout_ms)) < 0) return rc;
  if (c->sess == ETCD_SESS_ACTIVE) {
    rc = etcd_put_budget(c, cmd->key, cmd->value, cmd->value_len, c->lease, c->timeout_ms, NULL);
    if (rc == STRATA_ENOTFOUND) {
      sess_lose(c, 0);
      rc = 0; /* kept: it is put with the others when the session is restored */
    }
    if (rc < 0) return rc;
  }
  etcd_reg_t **p = sess_find(c, cmd->key), *r = *p;
  char *value = malloc(cmd->value_len + 1);
  if (!value) return STRATA_ENOMEM;
  if (cmd->value_len) memcpy(value, cmd->value, cmd->value_len);
  if (!r) {
    if (!(r = calloc(1, sizeof(*r))) || !(r->key = strdup(cmd->key))) {
      free(r);
      free(value);
      return STRATA_ENOMEM;
    }
    *p = r;
  }
  free(r->value);
  r->value = value;
  r->value_len = cmd->value_len;
  return 0;
}

void etcd_session_run_cmd(etcd_client_t *c, etcd_cmd_t *cmd) {
  etcd_reg_t **p, *r;
  switch (cmd->kind) {
    case ETCD_CMD_REGISTER:
      cmd->rc = sess_register(c, cmd);
      break;
    case ETCD_CMD_UNREGISTER:
      p = sess_find(c, cmd->key);
      if (!(r = *p)) {
        cmd->rc = STRATA_ENOTFOUND;
        break;
      }
      *p = r->next;
      free(r->key);
      free(r->value);
      free(r);
      cmd->rc = c->sess == ETCD_SESS_ACTIVE ? etcd_delete_range(c, cmd->key, 0, c->timeout_ms, NULL) : 0;
      break;
    case ETCD_CMD_CLOSE:
      cmd->rc = 0;
      if (c->sess == ETCD_SESS_ACTIVE) {
        cmd->rc = etcd_lease_revoke_budget(c, c->lease, c->timeout_ms);
        if (cmd->rc == STRATA_ENOTFOUND) cmd->rc = 0;
      } else if (c->stale_lease) {
        /* Lost while etcd was away: the keys may still hang on the old lease. */
        cmd->rc = etcd_lease_revoke_budget(c, c->stale_lease, c->timeout_ms);
        if (cmd->rc == STRATA_ENOTFOUND) cmd->rc = 0;
      }
      c->stale_lease = 0;
      while (c->regs) {
        r = c->regs;
        c->regs = r->next;
        free(r->key);
        free(r->value);
        free(r);
      }
      c->sess = ETCD_SESS_NONE;
      sess_set_lease(c, 0);
      break;
    case ETCD_CMD_STOP:
      c->stopped = 1;
      if (c->ka) rpc_stream_cancel(c->ka);
      cmd->rc = 0;
      break;
  }
}

int etcd_post_cmd(etcd_client_t *c, etcd_cmd_t *cmd) {
  if (rpc_loop_on_thread(c->loop)) {
    log_error("etcd: register/unregister/session calls are not allowed from an etcd callback");
    return STRATA_EINVAL;
  }
  cmd->done = 0;
  cmd->next = NULL;
  pthread_mutex_lock(&c->mu);
  *c->cmds_tail = cmd;
  c->cmds_tail = &cmd->next;
  while (!cmd->done) pthread_cond_wait(&c->cv, &c->mu);
  pthread_mutex_unlock(&c->mu);
  return cmd->rc;
}

int etcd_register(etcd_client_t *c, const char *key, const void *value, size_t n) {
  if (!key || !*key) return STRATA_EINVAL;
  etcd_cmd_t cmd = {.kind = ETCD_CMD_REGISTER, .key = key, .value = value, .value_len = n};
  return etcd_post_cmd(c, &cmd);
}

int etcd_unregister(etcd_client_t *c, const char *key) {
  if (!key || !*key) return STRATA_EINVAL;
  etcd_cmd_t cmd = {.kind = ETCD_CMD_UNREGISTER, .key = key};
  return etcd_post_cmd(c, &cmd);
}

int64_t etcd_session_lease(etcd_client_t *c) { return atomic_load(&c->sess_lease_pub); }

int etcd_session_close(etcd_client_t *c) {
  etcd_cmd_t cmd = {.kind = ETCD_CMD_CLOSE};
  return etcd_post_cmd(c, &cmd);
}
