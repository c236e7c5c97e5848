/*
 * Retries: whether a failed attempt gets another, within the group's limits
 * and the policy's retry hook, and the replay buffer that makes a request
 * with a body safe to send again.
 *
 * Limits come first and the hook cannot lift them: the number of tries, the
 * overall deadline, the retry budget (retries in flight may not exceed a
 * share of the group's requests in flight, so a failing region cannot turn
 * into a retry storm), and replayability (every body byte sent so far must
 * still be in the replay buffer). Within them the policy's retry(req,
 * attempt, failure) decides when it exists; otherwise a request is retried
 * when nothing reached the server (connect failures) or when its method is
 * idempotent.
 */
#include "exchange.h"

#include "log.h"

#include <stdio.h>

const char *fy_failure_name(enum fy_failure f) {
  switch (f) {
  case FY_FAIL_CONNECT: return "connect_refused";
  case FY_FAIL_CONNECT_TIMEOUT: return "connect_timeout";
  case FY_FAIL_RESET: return "reset";
  case FY_FAIL_TIMEOUT: return "timeout";
  case FY_FAIL_BAD_RESPONSE: return "bad_response";
  case FY_FAIL_STATUS: return "status";
  case FY_FAIL_TLS: return "tls_handshake";
  }
  return "?";
}

static bool fy_method_idempotent(const char *m) {
  static const char *const idempotent[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"};
  for (size_t i = 0; i < FY_ARRAY_SIZE(idempotent); i++)
    if (strcmp(m, idempotent[i]) == 0) return true;
  return false;
}

static bool fy_retry_within_limits(fy_exchange *x, enum fy_failure f) {
  const fy_cfg_group *cfg = &x->req->gen->cfg->groups[x->req->group];
  fy_group *g = &x->req->gen->groups[x->req->group];
  if (x->attempt >= cfg->tries || x->ntried >= FY_ARRAY_SIZE(x->tried)) return false;
  if (cfg->deadline && fy_exchange_now_ms(x) + fy_retry_backoff_ms(x) - x->req->started_ms >= cfg->deadline)
    return false;
  bool nothing_sent = f == FY_FAIL_CONNECT || f == FY_FAIL_CONNECT_TIMEOUT || f == FY_FAIL_TLS;
  if (!nothing_sent && x->req->has_body && !x->replayable) return false;
  double allowed = FY_MAX((double)cfg->min_retries, cfg->budget * (double)g->requests);
  unsigned others = g->retries - (x->retrying ? 1 : 0); /* this exchange already holds its place */
  if ((double)others >= allowed) {
    fy_log_warn("request %llu: retry budget of group %s exhausted (%u retries in flight)",
                (unsigned long long)x->req->id, cfg->name, g->retries);
    return false;
  }
  return true;
}

static bool fy_retry_ask_policy(fy_exchange *x, enum fy_failure f, int status, bool *again) {
  fy_req *r = x->req;
  fy_buf err;
  fy_buf_init(&err);
  enum fy_hook_outcome out = fy_lua_retry(&r->gen->lua, r->policy, r, x->attempt, fy_failure_name(f), status,
                                          x->server ? x->server->addr_text : "", again, &err);
  if (out != FY_HOOK_OK) {
    fy_log_error("request %llu: retry: %s: %.*s", (unsigned long long)r->id, fy_hook_outcome_name(out),
                 (int)err.len, err.data);
    *again = false;
  }
  fy_buf_free(&err);
  return true;
}

bool fy_retry_decide(fy_exchange *x, enum fy_failure f, int status, bool stale) {
  if (!fy_retry_within_limits(x, f)) return false;
  bool again;
  if (fy_lua_has_hook(&x->req->gen->lua, x->req->policy, FY_HOOK_HAS_RETRY)) {
    fy_retry_ask_policy(x, f, status, &again);
  } else {
    bool nothing_sent = f == FY_FAIL_CONNECT || f == FY_FAIL_CONNECT_TIMEOUT || f == FY_FAIL_TLS;
    again = nothing_sent || fy_method_idempotent(x->req->method);
  }
  if (again)
    fy_log_info("request %llu: attempt %u to %s failed (%s%s%.0d), trying again%s",
                (unsigned long long)x->req->id, x->attempt, x->server ? x->server->addr_text : "-",
                fy_failure_name(f), status ? " " : "", status, stale ? " (stale keep-alive connection)" : "");
  return again;
}

/* Exponential backoff with jitter: base * 2^(attempt-1), scaled by a random 0.5..1.5. */
uint64_t fy_retry_backoff_ms(fy_exchange *x) {
  const fy_cfg_group *cfg = &x->req->gen->cfg->groups[x->req->group];
  if (cfg->backoff == 0) return 0;
  uint64_t ms = cfg->backoff << FY_MIN(x->attempt - 1, 10u);
  uint64_t jitter = (uint64_t)(fy_hash_bytes(&x->req->id, sizeof x->req->id) % 1000);
  return FY_MAX(1, ms / 2 + ms * jitter / 1000);
}

/*
 * Whether keeping a copy of the body can ever pay off: a body is sent again
 * only when another try is allowed and the request may be retried after its
 * first bytes went out (an idempotent method, or a policy that decides).
 * A POST under the default rules is never replayed, so it is never copied.
 */
bool fy_retry_may_replay(fy_exchange *x) {
  const fy_cfg_group *cfg = &x->req->gen->cfg->groups[x->req->group];
  if (cfg->tries < 2 || cfg->replay_buffer == 0) return false;
  return fy_method_idempotent(x->req->method) ||
         fy_lua_has_hook(&x->req->gen->lua, x->req->policy, FY_HOOK_HAS_RETRY);
}

void fy_replay_add(fy_exchange *x, const uv_buf_t *bufs, unsigned n) {
  if (!x->replayable) return;
  const fy_cfg_group *cfg = &x->req->gen->cfg->groups[x->req->group];
  size_t add = 0;
  for (unsigned i = 0; i < n; i++)
    add += bufs[i].len;
  if (x->replay.len + add > cfg->replay_buffer) {
    x->replayable = false; /* too big to keep: this request will not be tried again */
    fy_buf_free(&x->replay);
    return;
  }
  for (unsigned i = 0; i < n; i++)
    fy_buf_append(&x->replay, bufs[i].base, bufs[i].len);
}

void fy_retry_end(fy_exchange *x) {
  uv_timer_stop(&x->retry_timer);
  if (x->counted) {
    x->counted->requests--;
    if (x->retrying) x->counted->retries--;
  }
  x->counted = NULL;
  x->retrying = false;
  fy_buf_free(&x->replay);
  x->replay_pending = false;
}
