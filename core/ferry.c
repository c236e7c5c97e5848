/*
 * The embedding API (include/ferry.h) over the runtime: the only functions
 * libferry exports. A ferry_runtime wraps one fy_runtime with what the
 * public contract adds: NUL-terminated error text for the caller, callbacks
 * that carry the host's data, and a stop callback that runs only once every
 * handle ferry had on the host's loop has closed, so the host may free the
 * runtime from it.
 */
#include "ferry.h"

#include "access_log.h"
#include "config.h"
#include "log.h"
#include "lua_modules.h"
#include "runtime.h"
#include "test_cmd.h"
#include "tls.h"
#include "worker.h"

#include <ares.h>
#include <llhttp.h>
#include <luajit.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FERRY_ECONFIG == FY_ECONFIG && FERRY_ESCRIPT == FY_ESCRIPT, "ferry.h codes are the core's");
_Static_assert((int)FERRY_LOG_DEBUG == (int)FY_LOG_DEBUG && (int)FERRY_LOG_ERROR == (int)FY_LOG_ERROR,
               "log levels");

struct ferry_runtime {
  fy_runtime *rt;
  uv_loop_t *loop;
  uv_idle_t reaper; /* after the drain: turns the loop until no handle is closing */
  ferry_stop_cb stop_cb;
  void *stop_data;
  bool stopping;
};

/* ---- versions, errors, text ----------------------------------------------------- */

FERRY_API const char *ferry_version(void) { return FERRY_VERSION_STRING; }
FERRY_API unsigned ferry_version_number(void) { return FERRY_VERSION_HEX; }

static char fy_versions[512];
static uv_once_t fy_versions_once = UV_ONCE_INIT;

static void fy_versions_init(void) {
  snprintf(fy_versions, sizeof fy_versions,
           "libuv %s\n%s\nllhttp %d.%d.%d (strict mode)\nc-ares %s\n%s (TLS 1.2)\n", uv_version_string(),
           LUAJIT_VERSION, LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH,
           ares_version(NULL), fy_tls_version());
}

FERRY_API const char *ferry_library_versions(void) {
  uv_once(&fy_versions_once, fy_versions_init);
  return fy_versions;
}

FERRY_API const char *ferry_strerror(int err) { return fy_strerror(err); }
FERRY_API void ferry_free(void *text) { free(text); }

/* A NUL-terminated copy of b for the caller (NULL when empty). */
static char *fy_buf_text(const fy_buf *b) {
  if (b->len == 0) return NULL;
  char *s = fy_malloc(b->len + 1);
  memcpy(s, b->data, b->len);
  s[b->len] = '\0';
  return s;
}

/* ---- logging, modules ---------------------------------------------------------- */

FERRY_API void ferry_set_log_sink(ferry_log_fn fn, void *data) { fy_log_set_sink(fn, data); }

FERRY_API void ferry_log_stderr(int level, const char *line, size_t len, void *data) {
  fy_log_stderr(level, line, len, data);
}

FERRY_API void ferry_log(int level, const char *fmt, ...) {
  if (level < FERRY_LOG_DEBUG || level > FERRY_LOG_ERROR || level < fy_log_level_current) return;
  char msg[3900];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  fy_log(level, "%s", msg);
}

FERRY_API int ferry_register_cmodule(const char *name, ferry_lua_cfunction open) {
  if (open == NULL) return UV_EINVAL;
  return fy_lua_modules_add_c(name, open);
}

FERRY_API int ferry_register_lua_module(const char *name, const char *source, size_t len) {
  return fy_lua_modules_add_lua(name, source, len);
}

/* ---- a runtime ------------------------------------------------------------------ */

FERRY_API int ferry_start(ferry_runtime **out, uv_loop_t *loop, const ferry_options *opts, char **errors) {
  *out = NULL;
  if (errors) *errors = NULL;
  if (loop == NULL || opts == NULL || (opts->config_path == NULL && opts->config_text == NULL) ||
      (opts->run != FERRY_RUN_THREADS && opts->run != FERRY_RUN_ON_LOOP))
    return UV_EINVAL;
  fy_runtime_opts o = {
      .path = opts->config_path ? opts->config_path : "config",
      .text = opts->config_text,
      .base = opts->base_dir ? opts->base_dir : ".",
      .on_loop = opts->run == FERRY_RUN_ON_LOOP,
      .trim = (opts->flags & FERRY_TRIM) != 0,
      .notify = (opts->flags & FERRY_NOTIFY) != 0,
  };
  fy_buf report;
  fy_buf_init(&report);
  fy_runtime *rt = NULL;
  int rc = fy_runtime_start(&rt, loop, &o, &report);
  if (rc != FY_OK) {
    if (errors) *errors = fy_buf_text(&report);
    fy_buf_free(&report);
    return rc;
  }
  fy_buf_free(&report);
  ferry_runtime *f = fy_calloc(1, sizeof *f);
  f->rt = rt;
  f->loop = loop;
  *out = f;
  return 0;
}

typedef struct fy_api_call {
  ferry_runtime *f;
  union {
    ferry_reload_cb reload;
    ferry_metrics_cb metrics;
  } cb;
  void *data;
} fy_api_call;

static fy_api_call *fy_api_call_new(ferry_runtime *f, void *data) {
  fy_api_call *c = fy_calloc(1, sizeof *c);
  c->f = f;
  c->data = data;
  return c;
}

static void fy_api_reloaded(fy_runtime *rt, int status, unsigned number, const fy_buf *errors, void *data) {
  fy_api_call *c = data;
  (void)rt;
  if (c->cb.reload) {
    char *text = fy_buf_text(errors);
    c->cb.reload(c->f, status, number, text ? text : "", c->data);
    free(text);
  }
  free(c);
}

FERRY_API void ferry_reload(ferry_runtime *f, const char *config_path, ferry_reload_cb cb, void *data) {
  fy_api_call *c = fy_api_call_new(f, data);
  c->cb.reload = cb;
  fy_runtime_reload(f->rt, config_path, fy_api_reloaded, c);
}

static void fy_api_metrics(fy_runtime *rt, const fy_worker_view *views, size_t n, void *data) {
  fy_api_call *c = data;
  fy_buf o;
  fy_buf_init(&o);
  fy_admin_metrics_text(rt, views, n, &o);
  c->cb.metrics(c->f, o.data ? o.data : "", o.len, c->data);
  fy_buf_free(&o);
  free(c);
}

FERRY_API void ferry_metrics(ferry_runtime *f, ferry_metrics_cb cb, void *data) {
  if (cb == NULL || f->stopping) return;
  fy_api_call *c = fy_api_call_new(f, data);
  c->cb.metrics = cb;
  fy_runtime_collect(f->rt, fy_api_metrics, c);
}

static void fy_api_reaper_closed(uv_handle_t *h) {
  ferry_runtime *f = h->data;
  fy_runtime_free(f->rt);
  f->rt = NULL;
  if (f->stop_cb) f->stop_cb(f, f->stop_data); /* last: it may free f */
}

static void fy_api_find_closing(uv_handle_t *h, void *arg) {
  if (uv_is_closing(h)) *(bool *)arg = true;
}

/*
 * The generations' handles close in the loop turns after the drain, some
 * of them only from another's close callback: the runtime's memory goes
 * once a turn finds no handle of the loop closing (a host's own closing
 * handle only delays this by a turn).
 */
static void fy_api_reap(uv_idle_t *idle) {
  bool closing = false;
  uv_walk(idle->loop, fy_api_find_closing, &closing);
  if (!closing) uv_close((uv_handle_t *)idle, fy_api_reaper_closed);
}

static void fy_api_stopped(fy_runtime *rt, void *data) {
  ferry_runtime *f = data;
  fy_runtime_release(rt);
  uv_idle_init(f->loop, &f->reaper);
  f->reaper.data = f;
  uv_idle_start(&f->reaper, fy_api_reap);
}

FERRY_API void ferry_stop(ferry_runtime *f, ferry_stop_cb cb, void *data) {
  if (f->stopping) return;
  f->stopping = true;
  f->stop_cb = cb;
  f->stop_data = data;
  fy_runtime_stop(f->rt, fy_api_stopped, f);
}

FERRY_API void ferry_runtime_free(ferry_runtime *f) {
  if (f == NULL) return;
  free(f);
}

FERRY_API unsigned ferry_generation(const ferry_runtime *f) { return fy_runtime_generation(f->rt); }
FERRY_API size_t ferry_workers(const ferry_runtime *f) { return fy_runtime_workers(f->rt); }
FERRY_API const char *ferry_config_path(const ferry_runtime *f) { return fy_runtime_config_path(f->rt); }
FERRY_API void ferry_reopen_access_log(void) { fy_access_log_reopen(); }

/* ---- without a runtime ------------------------------------------------------------ */

FERRY_API int ferry_check(const char *config_path, char **report) {
  if (report) *report = NULL;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fy_worker w;
  fy_worker_init(&w, &loop, NULL);
  fy_buf out;
  fy_buf_init(&out);
  fy_config *cfg = NULL;
  fy_gen *gen = NULL;
  int rc = fy_config_load(config_path, &cfg, &out);
  if (rc == FY_OK) {
    rc = fy_gen_new(&w, cfg, &gen, &out);
    if (rc != FY_OK) fy_config_free(cfg);
  }
  if (rc == FY_OK) {
    if (gen->cfg->warnings.len) fy_buf_append(&out, gen->cfg->warnings.data, gen->cfg->warnings.len);
    fy_buf_printf(&out, "%s: ok (%zu listeners, %zu upstream groups, %zu policies)\n", config_path,
                  gen->cfg->nlisteners, gen->cfg->ngroups, gen->cfg->npolicies);
    fy_gen_unref(gen);
  }
  fy_worker_close(&w);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  if (report) *report = fy_buf_text(&out);
  fy_buf_free(&out);
  return rc == FY_OK ? 0 : rc;
}

FERRY_API int ferry_admin_address(const char *config_path, char **host, int *port, char **errors) {
  *host = NULL;
  *port = 0;
  if (errors) *errors = NULL;
  fy_buf out;
  fy_buf_init(&out);
  fy_config *cfg = NULL;
  int rc = fy_config_load(config_path, &cfg, &out);
  if (rc != FY_OK) {
    if (errors) *errors = fy_buf_text(&out);
    fy_buf_free(&out);
    return rc;
  }
  fy_buf_free(&out);
  rc = 1;
  if (cfg->admin_host) {
    *host = fy_strdup(cfg->admin_host);
    *port = cfg->admin_port;
    rc = 0;
  }
  fy_config_free(cfg);
  return rc;
}

FERRY_API int ferry_test_main(int argc, char **argv) { return fy_cmd_test(argc, argv); }
