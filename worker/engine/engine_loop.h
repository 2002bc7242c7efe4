/* engine_loop.h: the engine thread. It owns an engine and runs engine_step() whenever there is work;
 * other threads talk to it only through two queues:
 *   inbox  (any thread -> engine): add and abort commands, engine_loop_submit / engine_loop_abort;
 *   outbox (engine -> consumer):   events (tokens, finishes), drained by engine_loop_poll.
 * After putting events in the outbox the engine thread calls the NOTIFY callback (e.g. a libev
 * ev_async_send), which must be cheap and thread-safe; notifications coalesce, so the consumer drains
 * everything on each wake-up. */
#ifndef STRATA_ENGINE_LOOP_H
#define STRATA_ENGINE_LOOP_H

#include <stdint.h>

#include "worker/engine/engine.h"

typedef struct engine_loop engine_loop_t;

/* An event for the consumer: an engine_out_t, or a refusal of a submitted request. */
typedef struct {
  engine_out_t out;
  int rejected;       /* 1: engine_add refused the request (out.finished = 1, FINISH_ERROR) */
  char error[192];    /* why, for a user (when rejected) */
} engine_event_t;

/* engine_loop_start: starts the engine thread over E (owned by the loop from now on; freed by
 * engine_loop_stop). NOTIFY(DATA) is called from the engine thread when events are ready. */
int engine_loop_start(engine_loop_t **out, engine_t *e, void (*notify)(void *data), void *data);
/* engine_loop_stop: aborts what is left, joins the thread and frees the engine. */
void engine_loop_stop(engine_loop_t *l);

/* engine_loop_submit: queues a request (PROMPT copied). Thread-safe. Refusals come back as events. */
int engine_loop_submit(engine_loop_t *l, uint64_t id, const int32_t *prompt, int n_prompt,
                       const sampling_params_t *sp);
/* engine_loop_submit_ex: engine_loop_submit of a migrated request (see engine_add_ex). */
int engine_loop_submit_ex(engine_loop_t *l, uint64_t id, const int32_t *tokens, int n_tokens, int n_prior,
                          const sampling_params_t *sp);
/* engine_loop_abort: asks to cancel request ID (its blocks are freed on the engine thread; an ABORT
 * finish event follows). Thread-safe; unknown ids are ignored. */
void engine_loop_abort(engine_loop_t *l, uint64_t id);

/* engine_loop_poll: moves up to MAX pending events into EVS; returns how many. Thread-safe. */
int engine_loop_poll(engine_loop_t *l, engine_event_t *evs, int max);

/* engine_loop_stats: the latest statistics (updated by the engine thread after every step). */
void engine_loop_stats(engine_loop_t *l, engine_stats_t *st);
/* engine_loop_queue_len: requests submitted but not yet seen by the engine, plus waiting ones. */
int engine_loop_n_pending(engine_loop_t *l);

/* engine_loop_failed: nonzero once the engine thread stopped on a fatal backend error (the process
 * should report itself unhealthy and drain). Thread-safe. */
int engine_loop_failed(engine_loop_t *l);

const engine_t *engine_loop_engine(const engine_loop_t *l);

#endif
