/*
 * The admin listener: a few endpoints answered by the core, never by a
 * policy. Bind it to loopback or a management network only; it can make
 * ferry load any config file the process can read.
 *
 *   GET  /health   200 "ok", or 503 "draining" once ferry is stopping
 *   GET  /status   JSON: live generation, reload and hook counters
 *   POST /reload   reload from the file named by the X-Ferry-Config header
 *                  (default: the running config); 200 once the new
 *                  generation is live, 422 with the errors if it was refused
 */
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
  for (fy_list *e = w->conns.next; e != &w->conns; e = e->next) conns++;
  fy_buf out;
  fy_buf_init(&out);
  fy_buf_printf(&out,
                "{\"generation\": %u, \"config\": \"%s\", \"connections\": %zu, \"reloads\": %llu, "
                "\"reload_failures\": %llu, \"lua_memory\": %zu, \"hook_errors\": %llu, "
                "\"hook_timeouts\": %llu, \"hook_nomem\": %llu, \"draining\": %s}\n",
                w->gen->number, w->config_path ? w->config_path : "", conns,
                (unsigned long long)w->reloads, (unsigned long long)w->reload_failures, lua->mem_used,
                (unsigned long long)lua->errors, (unsigned long long)lua->timeouts,
                (unsigned long long)lua->nomem, w->stopping ? "true" : "false");
  fy_conn_respond(c, 200, "application/json", out.data, out.len);
  fy_buf_free(&out);
}

void fy_admin_handle(fy_conn *c) {
  fy_req *r = &c->req;
  if (fy_admin_is(r, "GET", "/health") || fy_admin_is(r, "HEAD", "/health")) {
    if (c->w->stopping) fy_conn_respond_simple(c, 503, "draining\n");
    else fy_conn_respond_simple(c, 200, "ok\n");
  } else if (fy_admin_is(r, "GET", "/status")) {
    fy_admin_status(c);
  } else if (fy_admin_is(r, "POST", "/reload")) {
    fy_admin_reload(c);
  } else {
    fy_conn_respond_simple(c, 404, "admin endpoints: GET /health, GET /status, POST /reload\n");
  }
}
