/*
 * The embedding API (include/ferry.h) as a host uses it, linked with
 * libferry.so: start, serve, reload and stop cycles in one process (the
 * sanitizer build proves nothing leaks), a bad config string, both reload
 * outcomes, a stop callback that runs once, a host Lua module policies
 * require, the metrics text, and two runtimes serving their own listeners
 * side by side. Requests come from real sockets on a client thread.
 */
#include "check.h"

#include <ferry.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* A port the kernel just handed out and took back: free unless someone races for it. */
static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

/* One GET with Connection: close; the whole response in out (NUL-ended). 0 or -1. */
static int http_get(int port, const char *host, char *out, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {
      .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 10};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  char req[256];
  int n = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  size_t len = 0;
  ssize_t r;
  while (len + 1 < cap && (r = read(fd, out + len, cap - 1 - len)) > 0)
    len += (size_t)r;
  out[len] = '\0';
  close(fd);
  return len ? 0 : -1;
}

static char *config_for(int port, const char *policy) {
  char *text = malloc(512);
  snprintf(text, 512,
           "return {\n"
           "  listeners = { { name = \"api\", address = \"127.0.0.1:%d\", policy = \"%s\" } },\n"
           "  drain = { delay = 0, timeout = 5 },\n"
           "  log = { level = \"warn\", access = false },\n"
           "}\n",
           port, policy);
  return text;
}

/* ---- one runtime on the test's loop, driven by a client thread ------------------ */

typedef struct cycle {
  uv_loop_t loop;
  ferry_runtime *rt;
  int port;
  uv_async_t wake; /* the client thread is done */
  uv_thread_t client;
  char body[4096];
  int got;
  int reloads_ok, reloads_failed, stops;
  unsigned generation;
  char reload_errors[1024];
  char metrics[256];
} cycle;

static void on_stopped(ferry_runtime *rt, void *data) {
  cycle *c = data;
  c->stops++;
  ferry_runtime_free(rt);
  c->rt = NULL;
  uv_close((uv_handle_t *)&c->wake, NULL);
}

static void on_metrics(ferry_runtime *rt, const char *text, size_t len, void *data) {
  cycle *c = data;
  (void)rt;
  const char *line = strstr(text, "ferry_responses_total{class=\"2xx\"}");
  if (line && (size_t)(line - text) < len)
    snprintf(c->metrics, sizeof c->metrics, "%.*s", (int)strcspn(line, "\n"), line);
  /* Stopping twice: the second call does nothing and its callback never runs. */
  ferry_stop(c->rt, on_stopped, c);
  ferry_stop(c->rt, on_stopped, c);
}

static void on_bad_reload(ferry_runtime *rt, int status, unsigned generation, const char *errors,
                          void *data) {
  cycle *c = data;
  (void)rt;
  if (status == 0) {
    c->reloads_ok++;
  } else {
    c->reloads_failed++;
    snprintf(c->reload_errors, sizeof c->reload_errors, "%s", errors);
  }
  c->generation = generation;
  ferry_metrics(c->rt, on_metrics, c);
}

static void on_good_reload(ferry_runtime *rt, int status, unsigned generation, const char *errors,
                           void *data) {
  cycle *c = data;
  (void)errors;
  if (status == 0) c->reloads_ok++;
  c->generation = generation;
  ferry_reload(rt, "spec/unit/no-such-config.lua", on_bad_reload, c);
}

static void on_wake(uv_async_t *a) {
  cycle *c = a->data;
  ferry_reload(c->rt, NULL, on_good_reload, c);
}

static void client_thread(void *arg) {
  cycle *c = arg;
  c->got = http_get(c->port, "acme.example", c->body, sizeof c->body) == 0;
  uv_async_send(&c->wake);
}

static void run_cycle(int round) {
  cycle c;
  memset(&c, 0, sizeof c);
  uv_loop_init(&c.loop);
  c.port = free_port();
  char *text = config_for(c.port, "spec/unit/api_policy.lua");
  ferry_options opts = {.config_text = text,
                        .config_path = "api-config",
                        .base_dir = ".",
                        .run = round % 2 ? FERRY_RUN_THREADS : FERRY_RUN_ON_LOOP};
  char *errors = NULL;
  int rc = ferry_start(&c.rt, &c.loop, &opts, &errors);
  free(text);
  CHECK(rc == 0);
  CHECK(errors == NULL);
  if (rc != 0) {
    fprintf(stderr, "%s", errors ? errors : "");
    ferry_free(errors);
    return;
  }
  CHECK(ferry_generation(c.rt) == 1);
  CHECK(round % 2 ? ferry_workers(c.rt) >= 1 : ferry_workers(c.rt) == 1);
  uv_async_init(&c.loop, &c.wake, on_wake);
  c.wake.data = &c;
  uv_thread_create(&c.client, client_thread, &c);
  uv_run(&c.loop, UV_RUN_DEFAULT);
  uv_thread_join(&c.client);
  CHECK(uv_loop_close(&c.loop) == 0); /* nothing of ferry's is left on the loop */
  CHECK(c.got);
  CHECK(strstr(c.body, "HTTP/1.1 200") != NULL);
  CHECK(strstr(c.body, "tenant acme from the host") != NULL); /* the registered module answered */
  CHECK(c.reloads_ok == 1);
  CHECK(c.reloads_failed == 1);
  CHECK(c.generation == 2);
  CHECK(strstr(c.reload_errors, "no-such-config.lua") != NULL);
  CHECK(c.stops == 1);
  CHECK(strcmp(c.metrics, "ferry_responses_total{class=\"2xx\"} 1") == 0);
}

/* ---- a bad config string ----------------------------------------------------------- */

static void bad_config(void) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  ferry_options opts = {.config_text =
                            "return {\n  listeners = { { name = 'x', address = 'nowhere' } },\n}\n",
                        .config_path = "inline.lua",
                        .run = FERRY_RUN_ON_LOOP};
  ferry_runtime *rt = (ferry_runtime *)&loop; /* overwritten: NULL on failure */
  char *errors = NULL;
  int rc = ferry_start(&rt, &loop, &opts, &errors);
  CHECK(rc == FERRY_ECONFIG);
  CHECK(rt == NULL);
  CHECK(errors != NULL && strncmp(errors, "inline.lua:2:", 13) == 0);
  ferry_free(errors);
  opts.config_text = "return {\n  listeners = {\n";
  rc = ferry_start(&rt, &loop, &opts, &errors);
  CHECK(rc == FERRY_ECONFIG && rt == NULL);
  CHECK(errors != NULL && strstr(errors, "inline.lua:") == errors);
  ferry_free(errors);
  CHECK(uv_run(&loop, UV_RUN_NOWAIT) == 0); /* nothing was created on the loop */
  CHECK(uv_loop_close(&loop) == 0);
  CHECK(ferry_start(&rt, &loop, NULL, NULL) == UV_EINVAL);
}

/* ---- two runtimes, each on its own loop thread --------------------------------------- */

typedef struct side {
  uv_loop_t loop;
  ferry_runtime *rt;
  uv_async_t stop;
  uv_thread_t thread;
  int port, stops;
} side;

static void side_stopped(ferry_runtime *rt, void *data) {
  side *s = data;
  s->stops++;
  ferry_runtime_free(rt);
  uv_close((uv_handle_t *)&s->stop, NULL);
}

static void side_on_stop(uv_async_t *a) {
  side *s = a->data;
  ferry_stop(s->rt, side_stopped, s);
}

static void side_thread(void *arg) {
  side *s = arg;
  uv_run(&s->loop, UV_RUN_DEFAULT);
}

static int side_start(side *s, const char *policy) {
  memset(s, 0, sizeof *s);
  uv_loop_init(&s->loop);
  s->port = free_port();
  char *text = config_for(s->port, policy);
  ferry_options opts = {.config_text = text, .base_dir = ".", .run = FERRY_RUN_THREADS};
  int rc = ferry_start(&s->rt, &s->loop, &opts, NULL);
  free(text);
  if (rc != 0) return rc;
  uv_async_init(&s->loop, &s->stop, side_on_stop);
  s->stop.data = s;
  uv_thread_create(&s->thread, side_thread, s);
  return 0;
}

static void side_end(side *s) {
  uv_async_send(&s->stop);
  uv_thread_join(&s->thread);
  CHECK(s->stops == 1);
  CHECK(uv_loop_close(&s->loop) == 0);
}

static void two_runtimes(void) {
  side a, b;
  CHECK(side_start(&a, "spec/unit/api_policy.lua") == 0);
  CHECK(side_start(&b, "spec/unit/api_policy_b.lua") == 0);
  char body[4096];
  CHECK(http_get(a.port, "acme.example", body, sizeof body) == 0 && strstr(body, "tenant acme") != NULL);
  CHECK(http_get(b.port, "acme.example", body, sizeof body) == 0 && strstr(body, "runtime b") != NULL);
  side_end(&a); /* b keeps serving while a is gone */
  CHECK(http_get(a.port, "acme.example", body, sizeof body) != 0);
  CHECK(http_get(b.port, "acme.example", body, sizeof body) == 0 && strstr(body, "runtime b") != NULL);
  side_end(&b);
}

/* ---- the host's module, and what a host cannot register -------------------------------- */

static const char tenants_src[] =
    "local M = {}\n"
    "function M.lookup(host) if host == 'acme.example' then return 'acme' end end\n"
    "return M\n";

static void modules(void) {
  CHECK(ferry_register_lua_module("testhost.tenants", tenants_src, sizeof tenants_src - 1) == 0);
  CHECK(ferry_register_lua_module("testhost.tenants", tenants_src, sizeof tenants_src - 1) == UV_EEXIST);
  CHECK(ferry_register_lua_module("ferry.core", tenants_src, sizeof tenants_src - 1) == UV_EINVAL);
  CHECK(ferry_register_cmodule("testhost.none", NULL) == UV_EINVAL);
}

int main(void) {
  CHECK(strcmp(ferry_version(), FERRY_VERSION_STRING) == 0);
  CHECK(ferry_version_number() == FERRY_VERSION_HEX);
  CHECK(strstr(ferry_library_versions(), "libuv ") != NULL);
  modules();
  bad_config();
  for (int round = 0; round < 4; round++)
    run_cycle(round);
  two_runtimes();
  return check_done("test_api");
}
