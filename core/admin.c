/*
 * The admin listener: a few endpoints answered by the core, never by a
 * policy. Bind it to loopback or a management network only; it can make
 * ferry load any config file the process can read.
 *
 *   GET  /health   200 "ok", or 503 "draining" once ferry is stopping
 *   GET  /ready    200 "ready" once a generation serves and every upstream
 *                  group has an address; 503 with the reason otherwise
 *   GET  /status   JSON: live generation, reload and hook counters, and
 *                  each worker's generation, connections and load
 *   GET  /metrics  Prometheus text summed over the workers: responses,
 *                  attempts, retries, failures, servers in service,
 *                  connections (also per worker), reloads, hook outcomes
 *
 * The admin listener is served by the runtime's control worker; figures of
 * the serving workers come from a snapshot each takes on its own loop.
 *   POST /reload   reload from the file named by the X-Ferry-Config header
 *                  (default: the running config); 200 once the new
 *                  generation is live, 422 with the errors if it was refused
 */
#include "access_log.h"
#include "conn.h"
#include "log.h"
#include "runtime.h"

#include <stdio.h>

static bool fy_admin_is(fy_req *r, const char *method, const char *path) {
  return strcmp(r->method, method) == 0 && r->target.path_len == strlen(path) &&
         memcmp(r->target.path, path, r->target.path_len) == 0;
}

/*
 * Reloads and snapshots take turns of other loops: the connection waits
 * with an fy_admin_wait, which its close cancels (the answer then has no
 * one to go to).
 */
typedef struct fy_admin_wait {
  fy_conn *c; /* NULL once the connection closed */
} fy_admin_wait;

static fy_admin_wait *fy_admin_wait_new(fy_conn *c) {
  fy_admin_wait *wt = fy_calloc(1, sizeof *wt);
  wt->c = c;
  c->admin_wait = wt;
  return wt;
}

/* The connection to answer, or NULL; frees the wait either way. */
static fy_conn *fy_admin_wait_end(fy_admin_wait *wt) {
  fy_conn *c = wt->c;
  if (c) c->admin_wait = NULL;
  free(wt);
  return c;
}

void fy_admin_abort(fy_conn *c) {
  fy_admin_wait *wt = c->admin_wait;
  c->admin_wait = NULL;
  if (wt) wt->c = NULL;
}

static void fy_admin_reloaded(fy_runtime *rt, int status, unsigned number, const fy_buf *errors, void *data) {
  (void)rt;
  fy_conn *c = fy_admin_wait_end(data);
  if (status != FY_OK)
    fy_log_error("reload refused, generation %u keeps serving:\n%.*s", number, (int)errors->len,
                 errors->data);
  if (c == NULL) return;
  if (status == FY_OK) {
    char out[64];
    int n = snprintf(out, sizeof out, "generation %u is live\n", number);
    fy_conn_respond(c, 200, "text/plain", out, (size_t)n);
  } else {
    fy_conn_respond(c, 422, "text/plain", errors->data, errors->len);
  }
}

static void fy_admin_reload(fy_conn *c) {
  fy_req *r = &c->req;
  char path[4096] = "";
  ssize_t i = fy_headers_find(&r->headers, "x-ferry-config", 14, 0);
  if (i >= 0) {
    const fy_hdr *e = &r->headers.v[i];
    snprintf(path, sizeof path, "%.*s", (int)e->val_len, fy_hdr_val(&r->headers, e));
  }
  fy_runtime_reload(c->w->rt, path, fy_admin_reloaded, fy_admin_wait_new(c));
}

static void fy_admin_status_collected(fy_runtime *rt, const fy_worker_view *v, size_t n, void *data) {
  fy_conn *c = fy_admin_wait_end(data);
  if (c == NULL) return;
  fy_worker *cw = c->w;
  size_t conns = 0;
  uint64_t errors = 0, timeouts = 0, nomem = 0;
  size_t mem = 0;
  for (size_t i = 0; i < n; i++) {
    conns += v[i].connections;
    errors += v[i].hook_errors;
    timeouts += v[i].hook_timeouts;
    nomem += v[i].hook_nomem;
    mem = FY_MAX(mem, v[i].lua_memory); /* each worker's state has its own cap */
  }
  fy_buf out;
  fy_buf_init(&out);
  fy_buf_printf(&out,
                "{\"generation\": %u, \"config\": \"%s\", \"connections\": %zu, \"reloads\": %llu, "
                "\"reload_failures\": %llu, \"lua_memory\": %zu, \"hook_errors\": %llu, "
                "\"hook_timeouts\": %llu, \"hook_nomem\": %llu, \"draining\": %s, \"workers\": [",
                fy_runtime_generation(rt), fy_runtime_config_path(rt), conns,
                (unsigned long long)fy_runtime_reloads(rt, false),
                (unsigned long long)fy_runtime_reloads(rt, true), mem, (unsigned long long)errors,
                (unsigned long long)timeouts, (unsigned long long)nomem, cw->stopping ? "true" : "false");
  for (size_t i = 0; i < n; i++) {
    uint64_t requests = 0;
    for (int k = 0; k < 6; k++)
      requests += v[i].stats.responses[k];
    fy_buf_printf(&out,
                  "%s{\"worker\": %u, \"generation\": %u, \"connections\": %zu, \"streams\": %zu, "
                  "\"requests\": %llu, \"lua_memory\": %zu, \"busy\": %.3f}",
                  i ? ", " : "", v[i].index, v[i].generation, v[i].connections, v[i].streams,
                  (unsigned long long)requests, v[i].lua_memory, v[i].busy);
  }
  fy_buf_printf(&out, "]}\n");
  fy_conn_respond(c, 200, "application/json", out.data, out.len);
  fy_buf_free(&out);
}

static void fy_admin_metric(fy_buf *o, const char *name, const char *type, const char *help) {
  fy_buf_printf(o, "# HELP ferry_%s %s\n# TYPE ferry_%s %s\n", name, help, name, type);
}

/* Servers as the control generation knows them (health is shared), connections summed over workers. */
static void fy_admin_servers(fy_buf *o, const fy_gen *gen, uint64_t now, const fy_worker_view *v, size_t n) {
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
      unsigned busy = 0, idle = 0;
      for (size_t k = 0; k < n; k++)
        for (size_t m = 0; m < v[k].nservers; m++)
          if (v[k].servers[m].group == i && strcmp(v[k].servers[m].addr, s->addr_text) == 0) {
            busy += v[k].servers[m].active;
            idle += v[k].servers[m].nidle;
          }
      fy_buf_printf(o,
                    "ferry_upstream_connections{group=\"%s\",server=\"%s\",state=\"busy\"} %u\n"
                    "ferry_upstream_connections{group=\"%s\",server=\"%s\",state=\"idle\"} %u\n",
                    g->cfg->name, s->addr_text, busy, g->cfg->name, s->addr_text, idle);
    }
  }
}

void fy_admin_metrics_text(fy_runtime *rt, const fy_worker_view *v, size_t n, fy_buf *out) {
  fy_worker *w = fy_runtime_control(rt);
  fy_worker_stats st;
  memset(&st, 0, sizeof st);
  uint64_t errors = 0, timeouts = 0, nomem = 0;
  size_t mem = 0;
  for (size_t i = 0; i < n; i++) {
    const fy_worker_stats *x = &v[i].stats;
    for (int k = 0; k < 6; k++)
      st.responses[k] += x->responses[k];
    st.attempts += x->attempts;
    st.retries += x->retries;
    for (int k = 0; k < 7; k++)
      st.failures[k] += x->failures[k];
    st.streams += x->streams;
    st.shed += x->shed;
    for (int a = 0; a < 2; a++)
      for (int b = 0; b < 3; b++)
        st.tls[a][b] += x->tls[a][b];
    errors += v[i].hook_errors;
    timeouts += v[i].hook_timeouts;
    nomem += v[i].hook_nomem;
    mem += v[i].lua_memory;
  }
  for (int a = 0; a < 2; a++) /* the control loop's own: TLS handshakes of health probes */
    for (int b = 0; b < 3; b++)
      st.tls[a][b] += w->stats.tls[a][b];
  fy_buf o = *out;
  fy_admin_metric(&o, "responses_total", "counter", "answers to clients by status class (none: cut)");
  static const char *const classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (int i = 0; i < 6; i++)
    fy_buf_printf(&o, "ferry_responses_total{class=\"%s\"} %llu\n", classes[i],
                  (unsigned long long)st.responses[i]);
  fy_admin_metric(&o, "upstream_attempts_total", "counter", "attempts to reach an upstream server");
  fy_buf_printf(&o, "ferry_upstream_attempts_total %llu\n", (unsigned long long)st.attempts);
  fy_admin_metric(&o, "upstream_retries_total", "counter", "attempts after a failed one");
  fy_buf_printf(&o, "ferry_upstream_retries_total %llu\n", (unsigned long long)st.retries);
  fy_admin_metric(&o, "upstream_failures_total", "counter", "failed attempts by kind");
  for (int f = FY_FAIL_CONNECT; f <= FY_FAIL_TLS; f++)
    fy_buf_printf(&o, "ferry_upstream_failures_total{kind=\"%s\"} %llu\n",
                  fy_failure_name((enum fy_failure)f), (unsigned long long)st.failures[f]);
  fy_admin_servers(&o, w->gen, uv_now(w->loop), v, n);
  size_t conns = 0;
  for (size_t i = 0; i < n; i++)
    conns += v[i].connections;
  fy_admin_metric(&o, "client_connections", "gauge", "client connections open (http listeners)");
  fy_buf_printf(&o, "ferry_client_connections %zu\n", conns);
  fy_admin_metric(&o, "worker_client_connections", "gauge", "client connections open on each worker");
  for (size_t i = 0; i < n; i++)
    fy_buf_printf(&o, "ferry_worker_client_connections{worker=\"%u\"} %zu\n", v[i].index, v[i].connections);
  fy_admin_metric(&o, "worker_responses_total", "counter", "answers to clients by each worker");
  for (size_t i = 0; i < n; i++) {
    uint64_t r = 0;
    for (int k = 0; k < 6; k++)
      r += v[i].stats.responses[k];
    fy_buf_printf(&o, "ferry_worker_responses_total{worker=\"%u\"} %llu\n", v[i].index,
                  (unsigned long long)r);
  }
  fy_admin_metric(&o, "connections_shed_total", "counter", "connections refused by limits.max_connections");
  fy_buf_printf(&o, "ferry_connections_shed_total %llu\n", (unsigned long long)st.shed);
  fy_admin_metric(&o, "streams_total", "counter", "connections accepted on tcp listeners");
  fy_buf_printf(&o, "ferry_streams_total %llu\n", (unsigned long long)st.streams);
  fy_admin_metric(&o, "tls_handshakes_total", "counter",
                  "TLS handshakes by side (client: https listeners, upstream: TLS groups) and result");
  static const char *const sides[] = {"client", "upstream"}, *const results[] = {"new", "resumed", "failed"};
  for (int s = 0; s < 2; s++)
    for (int r = 0; r < 3; r++)
      fy_buf_printf(&o, "ferry_tls_handshakes_total{side=\"%s\",result=\"%s\"} %llu\n", sides[s], results[r],
                    (unsigned long long)st.tls[s][r]);
  fy_admin_metric(&o, "generation", "gauge", "number of the live generation");
  fy_buf_printf(&o, "ferry_generation %u\n", fy_runtime_generation(rt));
  fy_admin_metric(&o, "workers", "gauge", "worker threads serving");
  fy_buf_printf(&o, "ferry_workers %zu\n", n);
  fy_admin_metric(&o, "reloads_total", "counter", "reloads by result");
  fy_buf_printf(&o, "ferry_reloads_total{result=\"ok\"} %llu\nferry_reloads_total{result=\"refused\"} %llu\n",
                (unsigned long long)fy_runtime_reloads(rt, false),
                (unsigned long long)fy_runtime_reloads(rt, true));
  fy_admin_metric(&o, "hook_failures", "gauge", "failed hook calls of the live generation by outcome");
  fy_buf_printf(&o,
                "ferry_hook_failures{outcome=\"error\"} %llu\nferry_hook_failures{outcome=\"timeout\"} %llu\n"
                "ferry_hook_failures{outcome=\"nomem\"} %llu\n",
                (unsigned long long)errors, (unsigned long long)timeouts, (unsigned long long)nomem);
  fy_admin_metric(&o, "lua_memory_bytes", "gauge",
                  "memory of the live generation's Lua states (all workers)");
  fy_buf_printf(&o, "ferry_lua_memory_bytes %zu\n", mem);
  fy_metrics metrics = {0};
  fy_policy_metrics policy = {0};
  uint64_t dropped = 0;
  for (size_t i = 0; i < n; i++) {
    fy_metrics_merge(&metrics, &v[i].metrics);
    fy_policy_metrics_merge(&policy, &v[i].policy);
    dropped += v[i].access_dropped;
  }
  fy_metrics_merge(&metrics, &w->metrics); /* the control loop's own: DNS lookups */
  fy_metrics_write(&o, &metrics);
  fy_policy_metrics_write(&o, &policy);
  fy_metrics_free(&metrics);
  fy_policy_metrics_free(&policy);
  fy_admin_metric(
      &o, "access_log_dropped_total", "counter",
      "access log lines lost: full (the writer's buffer was full: a slow, full or blocked file) or "
      "write_error (the file refused a write)");
  fy_buf_printf(&o,
                "ferry_access_log_dropped_total{reason=\"full\"} %llu\n"
                "ferry_access_log_dropped_total{reason=\"write_error\"} %llu\n",
                (unsigned long long)dropped, (unsigned long long)fy_access_log_write_errors());
  *out = o;
}

static void fy_admin_metrics_collected(fy_runtime *rt, const fy_worker_view *v, size_t n, void *data) {
  fy_conn *c = fy_admin_wait_end(data);
  if (c == NULL) return;
  fy_buf o;
  fy_buf_init(&o);
  fy_admin_metrics_text(rt, v, n, &o);
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
  } else if (c->w->rt == NULL) {
    fy_conn_respond_simple(c, 404, "admin endpoints: GET /health, GET /ready\n");
  } else if (fy_admin_is(r, "GET", "/status")) {
    fy_runtime_collect(c->w->rt, fy_admin_status_collected, fy_admin_wait_new(c));
  } else if (fy_admin_is(r, "GET", "/metrics")) {
    fy_runtime_collect(c->w->rt, fy_admin_metrics_collected, fy_admin_wait_new(c));
  } else if (fy_admin_is(r, "POST", "/reload")) {
    fy_admin_reload(c);
  } else {
    fy_conn_respond_simple(
        c, 404, "admin endpoints: GET /health, GET /ready, GET /status, GET /metrics, POST /reload\n");
  }
}
