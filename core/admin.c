/*
 * The admin listener: a few endpoints answered by the core, never by a
 * policy. Bind it to loopback or a management network only; it can make
 * ferry load any config file the process can read.
 *
 *   GET  /health   200 "ok", or 503 "draining" once ferry is stopping
 *   GET  /ready    200 "ready" once a generation serves and every upstream
 *                  group has an address; 503 with the reason otherwise
 *   GET  /status   JSON: live generation, reload and hook counters
 *   GET  /metrics  Prometheus text: responses, attempts, retries, failures,
 *                  servers in service, connections, reloads, hook outcomes
 *   POST /reload   reload from the file named by the X-Ferry-Config header
 *                  (default: the running config); 200 once the new
 *                  generation is live, 422 with the errors if it was refused
 */
#include "access_log.h"
#include "conn.h"
#include "log.h"

#include <stdio.h>

static bool fy_admin_is(fy_req *r, const char *method, const char *path) {
  return strcmp(r->method, method) == 0 && r->target.path_len == strlen(path) &&
         memcmp(r->target.path, path, r->target.path_len) == 0;
}

static void fy_admin_reload(fy_conn *c) {
  fy_worker *w = c->w;
  fy_req *r = &c->req;
  char path[4096];
  ssize_t i = fy_headers_find(&r->headers, "x-ferry-config", 14, 0);
  if (i >= 0) {
    const fy_hdr *e = &r->headers.v[i];
    snprintf(path, sizeof path, "%.*s", (int)e->val_len, fy_hdr_val(&r->headers, e));
  } else {
    snprintf(path, sizeof path, "%s", w->config_path ? w->config_path : "");
  }
  fy_buf out;
  fy_buf_init(&out);
  unsigned number = 0;
  if (fy_worker_reload(w, path, &out, &number) == FY_OK) {
    fy_buf_reset(&out);
    fy_buf_printf(&out, "generation %u is live\n", number);
    fy_conn_respond(c, 200, "text/plain", out.data, out.len);
  } else {
    fy_log_error("reload of %s refused, generation %u keeps serving:\n%.*s", path, w->gen->number,
                 (int)out.len, out.data);
    fy_conn_respond(c, 422, "text/plain", out.data, out.len);
  }
  fy_buf_free(&out);
}

static void fy_admin_status(fy_conn *c) {
  fy_worker *w = c->w;
  const fy_lua *lua = &w->gen->lua;
  size_t conns = 0;
  for (fy_list *e = w->conns.next; e != &w->conns; e = e->next)
    conns++;
  fy_buf out;
  fy_buf_init(&out);
  fy_buf_printf(&out,
                "{\"generation\": %u, \"config\": \"%s\", \"connections\": %zu, \"reloads\": %llu, "
                "\"reload_failures\": %llu, \"lua_memory\": %zu, \"hook_errors\": %llu, "
                "\"hook_timeouts\": %llu, \"hook_nomem\": %llu, \"draining\": %s}\n",
                w->gen->number, w->config_path ? w->config_path : "", conns, (unsigned long long)w->reloads,
                (unsigned long long)w->reload_failures, lua->mem_used, (unsigned long long)lua->errors,
                (unsigned long long)lua->timeouts, (unsigned long long)lua->nomem,
                w->stopping ? "true" : "false");
  fy_conn_respond(c, 200, "application/json", out.data, out.len);
  fy_buf_free(&out);
}

static void fy_admin_metric(fy_buf *o, const char *name, const char *type, const char *help) {
  fy_buf_printf(o, "# HELP ferry_%s %s\n# TYPE ferry_%s %s\n", name, help, name, type);
}

static void fy_admin_servers(fy_buf *o, const fy_gen *gen, uint64_t now) {
  fy_admin_metric(o, "upstream_server_up", "gauge",
                  "1 while a server takes requests (not down, not ejected)");
  for (size_t i = 0; i < gen->cfg->ngroups; i++) {
    const fy_group *g = &gen->groups[i];
    for (size_t j = 0; j < g->nservers; j++)
      fy_buf_printf(o, "ferry_upstream_server_up{group=\"%s\",server=\"%s\"} %d\n", g->cfg->name,
                    g->servers[j]->addr_text, fy_server_in_service(g->servers[j], now));
  }
  fy_admin_metric(o, "upstream_connections", "gauge", "connections to a server, busy or idle in its pool");
  for (size_t i = 0; i < gen->cfg->ngroups; i++) {
    const fy_group *g = &gen->groups[i];
    for (size_t j = 0; j < g->nservers; j++) {
      const fy_server *s = g->servers[j];
      fy_buf_printf(o,
                    "ferry_upstream_connections{group=\"%s\",server=\"%s\",state=\"busy\"} %u\n"
                    "ferry_upstream_connections{group=\"%s\",server=\"%s\",state=\"idle\"} %u\n",
                    g->cfg->name, s->addr_text, s->active, g->cfg->name, s->addr_text, s->nidle);
    }
  }
}

static void fy_admin_metrics(fy_conn *c) {
  fy_worker *w = c->w;
  fy_buf o;
  fy_buf_init(&o);
  fy_admin_metric(&o, "responses_total", "counter", "answers to clients by status class (none: cut)");
  static const char *const classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (int i = 0; i < 6; i++)
    fy_buf_printf(&o, "ferry_responses_total{class=\"%s\"} %llu\n", classes[i],
                  (unsigned long long)w->stats.responses[i]);
  fy_admin_metric(&o, "upstream_attempts_total", "counter", "attempts to reach an upstream server");
  fy_buf_printf(&o, "ferry_upstream_attempts_total %llu\n", (unsigned long long)w->stats.attempts);
  fy_admin_metric(&o, "upstream_retries_total", "counter", "attempts after a failed one");
  fy_buf_printf(&o, "ferry_upstream_retries_total %llu\n", (unsigned long long)w->stats.retries);
  fy_admin_metric(&o, "upstream_failures_total", "counter", "failed attempts by kind");
  for (int f = FY_FAIL_CONNECT; f <= FY_FAIL_TLS; f++)
    fy_buf_printf(&o, "ferry_upstream_failures_total{kind=\"%s\"} %llu\n",
                  fy_failure_name((enum fy_failure)f), (unsigned long long)w->stats.failures[f]);
  fy_admin_servers(&o, w->gen, uv_now(w->loop));
  size_t conns = 0;
  for (fy_list *e = w->conns.next; e != &w->conns; e = e->next)
    conns++;
  fy_admin_metric(&o, "client_connections", "gauge", "client connections open (http listeners)");
  fy_buf_printf(&o, "ferry_client_connections %zu\n", conns);
  fy_admin_metric(&o, "connections_shed_total", "counter", "connections refused by limits.max_connections");
  fy_buf_printf(&o, "ferry_connections_shed_total %llu\n", (unsigned long long)w->stats.shed);
  fy_admin_metric(&o, "streams_total", "counter", "connections accepted on tcp listeners");
  fy_buf_printf(&o, "ferry_streams_total %llu\n", (unsigned long long)w->stats.streams);
  fy_admin_metric(&o, "tls_handshakes_total", "counter",
                  "TLS handshakes by side (client: https listeners, upstream: TLS groups) and result");
  static const char *const sides[] = {"client", "upstream"}, *const results[] = {"new", "resumed", "failed"};
  for (int s = 0; s < 2; s++)
    for (int r = 0; r < 3; r++)
      fy_buf_printf(&o, "ferry_tls_handshakes_total{side=\"%s\",result=\"%s\"} %llu\n", sides[s], results[r],
                    (unsigned long long)w->stats.tls[s][r]);
  fy_admin_metric(&o, "generation", "gauge", "number of the live generation");
  fy_buf_printf(&o, "ferry_generation %u\n", w->gen->number);
  fy_admin_metric(&o, "reloads_total", "counter", "reloads by result");
  fy_buf_printf(&o, "ferry_reloads_total{result=\"ok\"} %llu\nferry_reloads_total{result=\"refused\"} %llu\n",
                (unsigned long long)w->reloads, (unsigned long long)w->reload_failures);
  const fy_lua *lua = &w->gen->lua;
  fy_admin_metric(&o, "hook_failures", "gauge", "failed hook calls of the live generation by outcome");
  fy_buf_printf(&o,
                "ferry_hook_failures{outcome=\"error\"} %llu\nferry_hook_failures{outcome=\"timeout\"} %llu\n"
                "ferry_hook_failures{outcome=\"nomem\"} %llu\n",
                (unsigned long long)lua->errors, (unsigned long long)lua->timeouts,
                (unsigned long long)lua->nomem);
  fy_admin_metric(&o, "lua_memory_bytes", "gauge", "memory of the live generation's Lua state");
  fy_buf_printf(&o, "ferry_lua_memory_bytes %zu\n", lua->mem_used);
  fy_metrics_write(&o, &w->stats.metrics);
  fy_policy_metrics_mark_live(&w->stats.policy, lua->counters, lua->ncounters);
  fy_policy_metrics_write(&o, &w->stats.policy);
  fy_admin_metric(
      &o, "access_log_dropped_total", "counter",
      "access log lines lost: full (the writer's buffer was full: a slow, full or blocked file) or "
      "write_error (the file refused a write)");
  fy_buf_printf(&o,
                "ferry_access_log_dropped_total{reason=\"full\"} %llu\n"
                "ferry_access_log_dropped_total{reason=\"write_error\"} %llu\n",
                (unsigned long long)w->stats.access_dropped,
                (unsigned long long)fy_access_log_write_errors());
  fy_conn_respond(c, 200, "text/plain; version=0.0.4", o.data, o.len);
  fy_buf_free(&o);
}

/*
 * Readiness is stricter than liveness: a process that is alive but cannot
 * forward (no generation yet, a group with no address, draining) should get
 * no new traffic from an orchestrator, yet must not be restarted for it.
 */
static void fy_admin_ready(fy_conn *c) {
  const fy_worker *w = c->w;
  char why[256];
  why[0] = 0;
  if (w->stopping)
    snprintf(why, sizeof why, "draining\n");
  else if (w->gen == NULL || w->unbound)
    snprintf(why, sizeof why, "not serving yet\n");
  else
    for (size_t i = 0; i < w->gen->cfg->ngroups && !why[0]; i++)
      if (w->gen->groups[i].nservers == 0)
        snprintf(why, sizeof why, "upstream group %s has no address\n", w->gen->groups[i].cfg->name);
  if (why[0])
    fy_conn_respond_simple(c, 503, why);
  else
    fy_conn_respond_simple(c, 200, "ready\n");
}

void fy_admin_handle(fy_conn *c) {
  fy_req *r = &c->req;
  if (fy_admin_is(r, "GET", "/health") || fy_admin_is(r, "HEAD", "/health")) {
    if (c->w->stopping)
      fy_conn_respond_simple(c, 503, "draining\n");
    else
      fy_conn_respond_simple(c, 200, "ok\n");
  } else if (fy_admin_is(r, "GET", "/ready") || fy_admin_is(r, "HEAD", "/ready")) {
    fy_admin_ready(c);
  } else if (fy_admin_is(r, "GET", "/status")) {
    fy_admin_status(c);
  } else if (fy_admin_is(r, "GET", "/metrics")) {
    fy_admin_metrics(c);
  } else if (fy_admin_is(r, "POST", "/reload")) {
    fy_admin_reload(c);
  } else {
    fy_conn_respond_simple(
        c, 404, "admin endpoints: GET /health, GET /ready, GET /status, GET /metrics, POST /reload\n");
  }
}
