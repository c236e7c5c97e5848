/*
 * The connection state machine, driven in-process: a real worker on a uv
 * loop in the main thread, a blocking client in a second thread. The edge
 * listener's policy answers some hosts itself and forwards "up.test" to a
 * second listener of the same worker, so both halves of an exchange (and
 * the upstream keep-alive pool) are exercised without other processes.
 */
#include "check.h"
#include "config.h"
#include "worker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static int edge_port, up_port;
static uv_async_t stop_async;
static fy_worker worker;

static int free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  bind(fd, (struct sockaddr *)&a, sizeof a);
  getsockname(fd, (struct sockaddr *)&a, &len);
  close(fd);
  return ntohs(a.sin_port);
}

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {
      .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Reads until `want` bytes of text matched the expected count of responses, or EOF. */
static size_t read_some(int fd, char *buf, size_t cap, const char *until, int count) {
  size_t n = 0;
  buf[0] = '\0';
  for (;;) {
    int seen = 0;
    for (const char *p = buf; (p = strstr(p, until)) != NULL; p++)
      seen++;
    if (seen >= count || n + 1 >= cap) break;
    ssize_t r = recv(fd, buf + n, cap - n - 1, 0);
    if (r <= 0) break;
    n += (size_t)r;
    buf[n] = '\0';
  }
  return n;
}

static bool closed_by_peer(int fd) {
  char c;
  return recv(fd, &c, 1, 0) == 0;
}

static void test_pipelining(void) {
  int fd = dial(edge_port);
  CHECK(fd >= 0);
  const char *reqs = "GET /one HTTP/1.1\r\nHost: local.test\r\n\r\n"
                     "GET /two HTTP/1.1\r\nHost: local.test\r\n\r\n"
                     "GET /three HTTP/1.1\r\nHost: local.test\r\n\r\n";
  send(fd, reqs, strlen(reqs), 0);
  char buf[8192];
  read_some(fd, buf, sizeof buf, "path=", 3);
  char *one = strstr(buf, "path=/one"), *two = strstr(buf, "path=/two"), *three = strstr(buf, "path=/three");
  CHECK(one && two && three && one < two && two < three);
  /* the connection is still usable after the pipeline */
  const char *again = "GET /four HTTP/1.1\r\nHost: local.test\r\n\r\n";
  send(fd, again, strlen(again), 0);
  read_some(fd, buf, sizeof buf, "path=", 1);
  CHECK(strstr(buf, "path=/four") != NULL);
  close(fd);
}

static void test_proxied_and_pooled(void) {
  int fd = dial(edge_port);
  char buf[8192];
  const char *req = "GET /p HTTP/1.1\r\nHost: up.test\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n";
  send(fd, req, strlen(req), 0);
  read_some(fd, buf, sizeof buf, " end\n", 1);
  CHECK(strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) == 0);
  CHECK(strstr(buf, "upstream saw /p xff=10.0.0.9, 127.0.0.1") != NULL);
  char *port1 = strstr(buf, "port=");
  int first = port1 ? atoi(port1 + 5) : -1;
  send(fd, req, strlen(req), 0);
  read_some(fd, buf, sizeof buf, " end\n", 1);
  char *port2 = strstr(buf, "port=");
  int second = port2 ? atoi(port2 + 5) : -2;
  CHECK(first == second); /* the pooled upstream connection was reused */
  close(fd);
}

static void test_bad_request_closes(void) {
  int fd = dial(edge_port);
  const char *req = "GET / HTTP/1.1\r\nHost: local.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx";
  send(fd, req, strlen(req), 0);
  char buf[4096];
  read_some(fd, buf, sizeof buf, "\r\n\r\n", 1);
  CHECK(strncmp(buf, "HTTP/1.1 400 ", 13) == 0);
  CHECK(strstr(buf, "Connection: close") != NULL);
  CHECK(closed_by_peer(fd));
  close(fd);
}

static void test_http10_closes(void) {
  int fd = dial(edge_port);
  const char *req = "GET /old HTTP/1.0\r\nHost: local.test\r\n\r\n";
  send(fd, req, strlen(req), 0);
  char buf[4096];
  read_some(fd, buf, sizeof buf, "path=", 1);
  CHECK(strstr(buf, "path=/old") != NULL);
  CHECK(closed_by_peer(fd));
  close(fd);
}

static void test_head_has_no_body(void) {
  int fd = dial(edge_port);
  const char *req =
      "HEAD /h HTTP/1.1\r\nHost: local.test\r\n\r\nGET /after HTTP/1.1\r\nHost: local.test\r\n\r\n";
  send(fd, req, strlen(req), 0);
  char buf[4096];
  read_some(fd, buf, sizeof buf, "path=", 1);
  /* the HEAD answer carries Content-Length but no body: the next bytes are the GET's status line */
  char *second = strstr(buf + 1, "HTTP/1.1 200");
  CHECK(second != NULL && strstr(buf, "path=/h") == NULL && strstr(buf, "path=/after") != NULL);
  close(fd);
}

static void *client_main(void *arg) {
  (void)arg;
  test_pipelining();
  test_proxied_and_pooled();
  test_bad_request_closes();
  test_http10_closes();
  test_head_has_no_body();
  uv_async_send(&stop_async);
  return NULL;
}

static void on_stopped(fy_worker *w) {
  fy_worker_close(w);
  uv_close((uv_handle_t *)&stop_async, NULL);
}

static void on_stop(uv_async_t *a) {
  (void)a;
  fy_worker_stop(&worker, on_stopped);
}

int main(void) {
  char dir[] = "/tmp/ferry-test-conn-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  char conf[256], edge[256], up[256], text[2048];
  snprintf(conf, sizeof conf, "%s/ferry.lua", dir);
  snprintf(edge, sizeof edge, "%s/edge.lua", dir);
  snprintf(up, sizeof up, "%s/up.lua", dir);
  edge_port = free_port();
  up_port = free_port();
  write_file(edge, "return { route = function(req)\n"
                   "  if req.host == 'up.test' then return 'up' end\n"
                   "  return req:respond(200, 'path=' .. req.path .. '\\n')\n"
                   "end }\n");
  write_file(up,
             "return { route = function(req)\n"
             "  return req:respond(200, 'upstream saw ' .. req.path .. ' xff=' ..\n"
             "    (req.headers:get('x-forwarded-for') or '-') .. ' port=' .. req.client_port .. ' end\\n')\n"
             "end }\n");
  snprintf(text, sizeof text,
           "return { listeners = { { name = 'edge', address = '127.0.0.1:%d' },\n"
           "  { name = 'up', address = '127.0.0.1:%d', policy = 'up.lua' } },\n"
           "  upstreams = { up = { servers = { '127.0.0.1:%d' } } },\n"
           "  policy = 'edge.lua', log = { access = false } }\n",
           edge_port, up_port, up_port);
  write_file(conf, text);

  fy_buf errors;
  fy_buf_init(&errors);
  fy_config *cfg = NULL;
  fy_gen *gen = NULL;
  uv_loop_t loop;
  uv_loop_init(&loop);
  fy_worker_init(&worker, &loop, NULL);
  CHECK(fy_config_load(conf, &cfg, &errors) == 0);
  CHECK(fy_gen_new(&worker, cfg, &gen, &errors) == 0);
  if (errors.len) fprintf(stderr, "%.*s", (int)errors.len, errors.data);
  if (gen == NULL) return check_done("test_conn");
  worker.gen = gen;
  CHECK(fy_worker_listen(&worker, &errors) == 0);
  uv_async_init(&loop, &stop_async, on_stop);

  pthread_t client;
  pthread_create(&client, NULL, client_main, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  pthread_join(client, NULL);
  fy_gen_unref(gen);
  uv_run(&loop, UV_RUN_NOWAIT);
  CHECK(uv_loop_close(&loop) == 0); /* every handle was closed */
  free(worker.listeners);
  fy_buf_free(&errors);
  return check_done("test_conn");
}
