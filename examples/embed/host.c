/*
 * A host program that embeds ferry: it runs its own libuv loop with its own
 * work (a small listener that answers with ferry's metrics, and a timer
 * that counts its turns), runs ferry on that same loop, and gives ferry's
 * policies a Lua module of its own, myhost.tenants, written in C.
 *
 *   host CONFIG [METRICS_PORT]
 *
 * SIGHUP or the key r (then Enter) on stdin reloads the config; SIGTERM,
 * SIGINT or q stops ferry, then the host's own work, then the program.
 */
#include <ferry.h>

#include <lauxlib.h>
#include <lua.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the host's Lua module ------------------------------------------------ */

/* The host's data. Read-only here; a real host would guard what changes. */
static const struct {
  const char *host, *name, *plan;
} tenants[] = {
    {"acme.example", "acme", "gold"},
    {"initech.example", "initech", "silver"},
};

/* tenants.lookup(host) -> name, plan | nil. Runs on a ferry worker, in any of its Lua states. */
static int tenants_lookup(lua_State *L) {
  const char *host = luaL_checkstring(L, 1);
  for (size_t i = 0; i < sizeof tenants / sizeof tenants[0]; i++)
    if (strcmp(host, tenants[i].host) == 0) {
      lua_pushstring(L, tenants[i].name);
      lua_pushstring(L, tenants[i].plan);
      return 2;
    }
  lua_pushnil(L);
  return 1;
}

static int tenants_host_name(lua_State *L) {
  lua_pushliteral(L, "example-host");
  return 1;
}

/* The loader: require "myhost.tenants" returns this table. */
static int tenants_open(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, tenants_lookup);
  lua_setfield(L, -2, "lookup");
  lua_pushcfunction(L, tenants_host_name);
  lua_setfield(L, -2, "host_name");
  return 1;
}

/* ---- the host's own work --------------------------------------------------- */

static uv_loop_t loop;
static ferry_runtime *rt;
static uv_signal_t sighup, sigterm, sigint;
static uv_tty_t input;
static uv_timer_t ticker;
static uv_tcp_t metrics_server;
static unsigned long ticks;
static int have_input, have_metrics;

static void on_tick(uv_timer_t *t) {
  (void)t;
  ticks++;
}

typedef struct metrics_client {
  uv_tcp_t tcp;
  uv_write_t write;
  char *reply;
} metrics_client;

static void client_closed(uv_handle_t *h) {
  metrics_client *c = h->data;
  free(c->reply);
  free(c);
}

static void client_written(uv_write_t *w, int status) {
  (void)status;
  uv_close((uv_handle_t *)w->handle, client_closed);
}

/* ferry's metrics text, with the host's own line added, as one HTTP response. */
static void metrics_ready(ferry_runtime *r, const char *text, size_t len, void *data) {
  (void)r;
  metrics_client *c = data;
  char extra[64];
  int elen = snprintf(extra, sizeof extra, "host_ticks_total %lu\n", ticks);
  c->reply = malloc(len + (size_t)elen + 128);
  if (c->reply == NULL) abort();
  int n = snprintf(c->reply, 128,
                   "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   len + (size_t)elen);
  memcpy(c->reply + n, text, len);
  memcpy(c->reply + n + len, extra, (size_t)elen);
  uv_buf_t b = uv_buf_init(c->reply, (unsigned)(n + len + (size_t)elen));
  uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, client_written);
}

static void on_metrics_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  metrics_client *c = calloc(1, sizeof *c);
  if (c == NULL) abort();
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || rt == NULL) {
    uv_close((uv_handle_t *)&c->tcp, client_closed);
    return;
  }
  ferry_metrics(rt, metrics_ready, c); /* the request itself is not read: any request gets the metrics */
}

/* ---- reload and stop --------------------------------------------------------- */

static void on_reloaded(ferry_runtime *r, int status, unsigned generation, const char *errors, void *data) {
  (void)r;
  (void)data;
  if (status == 0)
    printf("host: generation %u is live\n", generation);
  else
    printf("host: reload refused, generation %u keeps serving:\n%s", generation, errors);
  fflush(stdout);
}

static void on_stopped(ferry_runtime *r, void *data) {
  (void)data;
  ferry_runtime_free(r);
  rt = NULL;
  /* Then the host's own work: the loop ends once these have closed. */
  uv_close((uv_handle_t *)&sighup, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sigint, NULL);
  uv_close((uv_handle_t *)&ticker, NULL);
  if (have_metrics) uv_close((uv_handle_t *)&metrics_server, NULL);
  if (have_input) uv_close((uv_handle_t *)&input, NULL);
  printf("host: ferry stopped after %lu ticks\n", ticks);
  fflush(stdout);
}

static void stop(void) {
  if (rt) ferry_stop(rt, on_stopped, NULL);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s;
  if (signum == SIGHUP && rt)
    ferry_reload(rt, NULL, on_reloaded, NULL);
  else if (signum != SIGHUP)
    stop();
}

static void input_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf) {
  static char space[256];
  (void)h;
  (void)size;
  *buf = uv_buf_init(space, sizeof space);
}

static void on_input(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  if (n < 0) { /* stdin ended: keep serving, stop listening to it */
    uv_read_stop(s);
    return;
  }
  for (ssize_t i = 0; i < n; i++) {
    if (buf->base[i] == 'r' && rt) ferry_reload(rt, NULL, on_reloaded, NULL);
    if (buf->base[i] == 'q') stop();
  }
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CONFIG [METRICS_PORT]\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a libuv program writing to sockets */
  ferry_set_log_sink(ferry_log_stderr, NULL);
  if (ferry_register_cmodule("myhost.tenants", tenants_open) != 0) return 1;
  uv_loop_init(&loop);

  ferry_options opts = {.config_path = argv[1], .run = FERRY_RUN_ON_LOOP};
  char *errors = NULL;
  int rc = ferry_start(&rt, &loop, &opts, &errors);
  if (rc != 0) {
    fprintf(stderr, "%shost: ferry did not start: %s\n", errors ? errors : "", ferry_strerror(rc));
    ferry_free(errors);
    return 1;
  }
  printf("host: ferry %s serving %s on the host's loop\n", ferry_version(), ferry_config_path(rt));

  uv_timer_init(&loop, &ticker);
  uv_timer_start(&ticker, on_tick, 100, 100);
  uv_signal_init(&loop, &sighup);
  uv_signal_start(&sighup, on_signal, SIGHUP);
  uv_signal_init(&loop, &sigterm);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_init(&loop, &sigint);
  uv_signal_start(&sigint, on_signal, SIGINT);
  if (argc > 2) {
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", atoi(argv[2]), &addr);
    uv_tcp_init(&loop, &metrics_server);
    if (uv_tcp_bind(&metrics_server, (const struct sockaddr *)&addr, 0) == 0 &&
        uv_listen((uv_stream_t *)&metrics_server, 16, on_metrics_connection) == 0) {
      have_metrics = 1;
      printf("host: metrics on 127.0.0.1:%s\n", argv[2]);
    } else {
      uv_close((uv_handle_t *)&metrics_server, NULL);
    }
  }
  if (uv_guess_handle(0) == UV_TTY && uv_tty_init(&loop, &input, 0, 1) == 0) {
    have_input = 1;
    uv_read_start((uv_stream_t *)&input, input_alloc, on_input);
  }
  fflush(stdout);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return 0;
}
