/* engine_loop.c: the engine thread and its inbox/outbox queues (mutex + condition variable). */
#include "worker/engine/engine_loop.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/status.h"

typedef struct cmd {
  struct cmd *next;
  int is_abort;
  uint64_t id;
  int n_prior;
  sampling_params_t sp;
  int n_prompt;
  int32_t prompt[]; /* (n_prompt) */
} cmd_t;

struct engine_loop {
  engine_t *e;
  pthread_t thread;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
  int failed;               /* the engine stopped on a fatal error, under mu */
  cmd_t *in_head, *in_tail; /* inbox, under mu */
  int n_in;
  engine_event_t *out;      /* outbox ring, under mu */
  int out_head, n_out, cap_out;
  engine_stats_t stats;     /* under mu */
  void (*notify)(void *);
  void *notify_data;
};

/* push_event: appends to the outbox (growing it); called with mu held. */
static int push_event(engine_loop_t *l, const engine_event_t *ev) {
  if (l->n_out == l->cap_out) {
    int cap = l->cap_out ? 2 * l->cap_out : 1024;
    engine_event_t *p = malloc(sizeof *p * (size_t)cap);
    if (!p) return STRATA_ENOMEM;
    for (int i = 0; i < l->n_out; i++) p[i] = l->out[(l->out_head + i) % l->cap_out];
    free(l->out);
    l->out = p;
    l->out_head = 0;
    l->cap_out = cap;
  }
  l->out[(l->out_head + l->n_out++) % l->cap_out] = *ev;
  return 0;
}

/* take_inbox: applies queued commands to the engine (engine thread). */
static void take_inbox(engine_loop_t *l, cmd_t *c) {
  while (c) {
    cmd_t *next = c->next;
    if (c->is_abort) {
      engine_abort(l->e, c->id);
    } else {
      engine_event_t ev = {0};
      int rc = engine_add_ex(l->e, c->id, c->prompt, c->n_prompt, c->n_prior, &c->sp, ev.error, sizeof ev.error);
      if (rc) {
        ev.rejected = 1;
        ev.out = (engine_out_t){.id = c->id, .finished = 1, .finish = FINISH_ERROR, .n_prompt = c->n_prompt};
        if (!ev.error[0]) snprintf(ev.error, sizeof ev.error, "%s", strata_strerror(rc));
        pthread_mutex_lock(&l->mu);
        push_event(l, &ev);
        pthread_mutex_unlock(&l->mu);
      }
    }
    free(c);
    c = next;
  }
}

static void *loop_main(void *arg) {
  engine_loop_t *l = arg;
  for (;;) {
    pthread_mutex_lock(&l->mu);
    while (!l->stop && !l->in_head && !engine_has_work(l->e)) pthread_cond_wait(&l->cv, &l->mu);
    cmd_t *cmds = l->in_head;
    l->in_head = l->in_tail = NULL;
    l->n_in = 0;
    int stop = l->stop;
    pthread_mutex_unlock(&l->mu);
    take_inbox(l, cmds);
    if (stop) break;
    int notify = 0;
    if (engine_has_work(l->e)) {
      const engine_out_t *outs;
      int n_outs;
      int rc = engine_step(l->e, &outs, &n_outs);
      if (rc) {
        /* NOTE: a backend failure is fatal for this engine (crash-only): report and stop stepping. */
        log_error("engine step failed (%s): the engine stops", strata_strerror(rc));
        pthread_mutex_lock(&l->mu);
        l->failed = 1;
        pthread_mutex_unlock(&l->mu);
        if (l->notify) l->notify(l->notify_data);
        break;
      }
      pthread_mutex_lock(&l->mu);
      for (int i = 0; i < n_outs; i++) push_event(l, &(engine_event_t){.out = outs[i]});
      engine_stats(l->e, &l->stats);
      pthread_mutex_unlock(&l->mu);
      notify = n_outs > 0;
    }
    pthread_mutex_lock(&l->mu);
    notify |= l->n_out > 0;
    pthread_mutex_unlock(&l->mu);
    if (notify && l->notify) l->notify(l->notify_data);
  }
  return NULL;
}

int engine_loop_start(engine_loop_t **out, engine_t *e, void (*notify)(void *), void *data) {
  engine_loop_t *l = calloc(1, sizeof *l);
  if (!l) return STRATA_ENOMEM;
  l->e = e;
  l->notify = notify;
  l->notify_data = data;
  pthread_mutex_init(&l->mu, NULL);
  pthread_cond_init(&l->cv, NULL);
  engine_stats(e, &l->stats);
  if (pthread_create(&l->thread, NULL, loop_main, l) != 0) {
    log_error("cannot start the engine thread");
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    free(l);
    return STRATA_EINTERNAL;
  }
  *out = l;
  return 0;
}

void engine_loop_stop(engine_loop_t *l) {
  if (!l) return;
  pthread_mutex_lock(&l->mu);
  l->stop = 1;
  pthread_cond_signal(&l->cv);
  pthread_mutex_unlock(&l->mu);
  pthread_join(l->thread, NULL);
  for (cmd_t *c = l->in_head; c;) {
    cmd_t *n = c->next;
    free(c);
    c = n;
  }
  engine_free(l->e);
  free(l->out);
  pthread_mutex_destroy(&l->mu);
  pthread_cond_destroy(&l->cv);
  free(l);
}

static void enqueue(engine_loop_t *l, cmd_t *c) {
  pthread_mutex_lock(&l->mu);
  if (l->in_tail)
    l->in_tail->next = c;
  else
    l->in_head = c;
  l->in_tail = c;
  l->n_in++;
  pthread_cond_signal(&l->cv);
  pthread_mutex_unlock(&l->mu);
}

int engine_loop_submit(engine_loop_t *l, uint64_t id, const int32_t *prompt, int n_prompt,
                       const sampling_params_t *sp) {
  return engine_loop_submit_ex(l, id, prompt, n_prompt, 0, sp);
}

int engine_loop_submit_ex(engine_loop_t *l, uint64_t id, const int32_t *prompt, int n_prompt, int n_prior,
                          const sampling_params_t *sp) {
  if (n_prompt < 0) return STRATA_EINVAL;
  cmd_t *c = malloc(sizeof *c + sizeof(int32_t) * (size_t)n_prompt);
  if (!c) return STRATA_ENOMEM;
  c->next = NULL;
  c->is_abort = 0;
  c->id = id;
  c->sp = *sp;
  c->n_prior = n_prior;
  c->n_prompt = n_prompt;
  if (n_prompt) memcpy(c->prompt, prompt, sizeof(int32_t) * (size_t)n_prompt);
  enqueue(l, c);
  return 0;
}

void engine_loop_abort(engine_loop_t *l, uint64_t id) {
  cmd_t *c = calloc(1, sizeof *c);
  if (!c) return;
  c->is_abort = 1;
  c->id = id;
  enqueue(l, c);
}

int engine_loop_poll(engine_loop_t *l, engine_event_t *evs, int max) {
  pthread_mutex_lock(&l->mu);
  int n = l->n_out < max ? l->n_out : max;
  for (int i = 0; i < n; i++) evs[i] = l->out[(l->out_head + i) % l->cap_out];
  if (n) {
    l->out_head = (l->out_head + n) % l->cap_out;
    l->n_out -= n;
  }
  pthread_mutex_unlock(&l->mu);
  return n;
}

void engine_loop_stats(engine_loop_t *l, engine_stats_t *st) {
  pthread_mutex_lock(&l->mu);
  *st = l->stats;
  pthread_mutex_unlock(&l->mu);
}

int engine_loop_n_pending(engine_loop_t *l) {
  pthread_mutex_lock(&l->mu);
  int n = l->n_in + l->stats.n_waiting;
  pthread_mutex_unlock(&l->mu);
  return n;
}

int engine_loop_failed(engine_loop_t *l) {
  pthread_mutex_lock(&l->mu);
  int f = l->failed;
  pthread_mutex_unlock(&l->mu);
  return f;
}

const engine_t *engine_loop_engine(const engine_loop_t *l) { return l->e; }
