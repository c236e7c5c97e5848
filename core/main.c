/*
 * The ferry command: run, check, reload, test, version. A client of the
 * embedding API (ferry.h) like any other host: it alone installs signal
 * handlers, sends the log to stderr, and turns on what a library leaves
 * off by default (malloc_trim, sd_notify).
 */
#include "ferry.h"

#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef FERRY_DEFAULT_CONFIG
#define FERRY_DEFAULT_CONFIG "examples/ferry.lua"
#endif

static void fy_usage(FILE *f) {
  fprintf(f,
          "usage: ferry <command> [options]\n"
          "\n"
          "  run [-c FILE]     serve with the configuration FILE\n"
          "  check [-c FILE]   load FILE and every policy it names; print each error as\n"
          "                    file:line: message and exit 1 if there is any\n"
          "  reload [-c FILE]  ask the running ferry (through FILE's admin listener) to load\n"
          "                    FILE as its next generation; exit 0 once it is live\n"
          "  test [PATH...]    run busted specs inside ferry's LuaJIT with the ferry modules\n"
          "                    (busted arguments; default: .busted's settings, else spec/)\n"
          "  version           print the versions of ferry and of the libraries it links\n"
          "\n"
          "FILE defaults to %s\n",
          FERRY_DEFAULT_CONFIG);
}

static const char *fy_config_arg(int argc, char **argv) {
  const char *path = FERRY_DEFAULT_CONFIG;
  for (int i = 2; i < argc; i++) {
    if ((strcmp(argv[i], "-c") == 0 || strcmp(argv[i], "--config") == 0) && i + 1 < argc) {
      path = argv[++i];
    } else {
      fprintf(stderr, "ferry: unexpected argument '%s'\n", argv[i]);
      fy_usage(stderr);
      exit(2);
    }
  }
  return path;
}

static int fy_cmd_version(void) {
  printf("ferry %s\n%s", ferry_version(), ferry_library_versions());
  return 0;
}

/* The report's last line (the summary) to stdout, the warnings before it to stderr. */
static int fy_cmd_check(const char *path) {
  char *report = NULL;
  int rc = ferry_check(path, &report);
  if (rc != 0) {
    if (report) fputs(report, stderr);
    ferry_free(report);
    return 1;
  }
  size_t len = strlen(report);
  const char *last = report;
  for (size_t i = 0; i + 1 < len; i++)
    if (report[i] == '\n') last = report + i + 1;
  fwrite(report, 1, (size_t)(last - report), stderr);
  fputs(last, stdout);
  ferry_free(report);
  return 0;
}

static uv_signal_t fy_sigterm, fy_sigint, fy_sighup, fy_sigusr1;

static void fy_on_stopped(ferry_runtime *rt, void *data) {
  (void)rt;
  (void)data;
  uv_close((uv_handle_t *)&fy_sigterm, NULL);
  uv_close((uv_handle_t *)&fy_sigint, NULL);
  uv_close((uv_handle_t *)&fy_sighup, NULL);
  uv_close((uv_handle_t *)&fy_sigusr1, NULL);
  ferry_log(FERRY_LOG_INFO, "stopped");
}

static void fy_on_reloaded(ferry_runtime *rt, int status, unsigned number, const char *errors, void *data) {
  (void)rt;
  (void)data;
  if (status != 0)
    ferry_log(FERRY_LOG_ERROR, "reload refused, generation %u keeps serving:\n%s", number, errors);
}

static void fy_on_signal(uv_signal_t *s, int signum) {
  ferry_runtime *rt = s->data;
  if (signum == SIGUSR1) {
    ferry_log(FERRY_LOG_INFO, "SIGUSR1: reopening the access log");
    ferry_reopen_access_log();
    return;
  }
  if (signum == SIGHUP) {
    ferry_log(FERRY_LOG_INFO, "SIGHUP: reloading %s", ferry_config_path(rt));
    ferry_reload(rt, NULL, fy_on_reloaded, NULL);
    return;
  }
  ferry_log(FERRY_LOG_INFO, "%s: draining (in-flight requests finish, new connections are refused)",
            signum == SIGTERM ? "SIGTERM" : "SIGINT");
  ferry_stop(rt, fy_on_stopped, NULL);
}

static int fy_cmd_run(const char *path) {
  uv_loop_t *loop = uv_default_loop();
  signal(SIGPIPE, SIG_IGN);
  /*
   * Signals are caught before ferry starts serving: a SIGHUP sent as soon as
   * the port answers must reload, not end the process by default. libuv
   * queues them on the loop, which runs only once rt is set.
   */
  uv_signal_t *sigs[] = {&fy_sigterm, &fy_sigint, &fy_sighup, &fy_sigusr1};
  int nums[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
  for (int i = 0; i < 4; i++) {
    uv_signal_init(loop, sigs[i]);
    uv_signal_start(sigs[i], fy_on_signal, nums[i]);
  }
  ferry_options opts = {.config_path = path, .run = FERRY_RUN_THREADS, .flags = FERRY_TRIM | FERRY_NOTIFY};
  ferry_runtime *rt = NULL;
  char *errors = NULL;
  if (ferry_start(&rt, loop, &opts, &errors) != 0) {
    if (errors) fputs(errors, stderr);
    fprintf(stderr, "ferry: %s: not starting\n", path);
    ferry_free(errors);
    for (int i = 0; i < 4; i++)
      uv_close((uv_handle_t *)sigs[i], NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return 1;
  }
  for (int i = 0; i < 4; i++)
    sigs[i]->data = rt;
  ferry_log(FERRY_LOG_INFO, "ferry %s running with %s (pid %d)", ferry_version(), path, (int)uv_os_getpid());
  uv_run(loop, UV_RUN_DEFAULT);
  ferry_runtime_free(rt);
  return 0;
}

/* ---- ferry reload ------------------------------------------------------- */

/* A growing byte string (main.c sees only ferry.h). */
typedef struct fy_text {
  char *data;
  size_t len, cap;
} fy_text;

static void fy_text_append(fy_text *t, const char *p, size_t n) {
  if (t->len + n > t->cap) {
    t->cap = (t->len + n) * 2;
    t->data = realloc(t->data, t->cap);
    if (t->data == NULL) abort(); /* ferry.h's allocation policy */
  }
  memcpy(t->data + t->len, p, n);
  t->len += n;
}

/* Sends one request to the admin listener and returns its status, the body in out. */
static int fy_admin_call(const char *host, int port, const char *request, fy_text *out) {
  char portstr[8];
  snprintf(portstr, sizeof portstr, "%d", port);
  struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
  if (getaddrinfo(host, portstr, &hints, &res) != 0 || res == NULL) return -1;
  int fd = socket(res->ai_family, SOCK_STREAM, 0);
  int ok = fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0;
  freeaddrinfo(res);
  if (!ok) {
    if (fd >= 0) close(fd);
    return -1;
  }
  size_t len = strlen(request);
  for (size_t off = 0; off < len;) {
    ssize_t n = write(fd, request + off, len - off);
    if (n <= 0) break;
    off += (size_t)n;
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0)
    fy_text_append(out, buf, (size_t)n);
  close(fd);
  fy_text_append(out, "", 1);
  int status = 0;
  if (sscanf(out->data, "HTTP/1.%*d %d", &status) != 1) return -1;
  const char *body = strstr(out->data, "\r\n\r\n");
  size_t skip = body ? (size_t)(body + 4 - out->data) : out->len;
  memmove(out->data, out->data + skip, out->len - skip);
  out->len -= skip;
  return status;
}

static int fy_cmd_reload(const char *path) {
  char *host = NULL, *errors = NULL;
  int port = 0;
  int rc = ferry_admin_address(path, &host, &port, &errors);
  if (rc < 0) {
    if (errors) fputs(errors, stderr);
    ferry_free(errors);
    return 1;
  }
  if (rc == 1) {
    fprintf(stderr,
            "ferry: %s has no admin.address; ferry reload talks to the running ferry through its "
            "admin listener (or send it SIGHUP)\n",
            path);
    return 2;
  }
  char real[PATH_MAX];
  char request[PATH_MAX + 256];
  snprintf(request, sizeof request,
           "POST /reload HTTP/1.1\r\nHost: ferry-admin\r\nX-Ferry-Config: %s\r\n"
           "Content-Length: 0\r\nConnection: close\r\n\r\n",
           realpath(path, real) ? real : path);
  fy_text body = {0};
  int status = fy_admin_call(host, port, request, &body);
  if (status < 0) {
    fprintf(stderr, "ferry: no ferry answers on the admin listener %s:%d\n", host, port);
  } else {
    fwrite(body.data, 1, strnlen(body.data, body.len), status == 200 ? stdout : stderr);
  }
  ferry_free(host);
  free(body.data);
  return status == 200 ? 0 : 1;
}

int main(int argc, char **argv) {
  ferry_set_log_sink(ferry_log_stderr, NULL);
  if (argc < 2) {
    fy_usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) return fy_cmd_version();
  if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    fy_usage(stdout);
    return 0;
  }
  if (strcmp(cmd, "test") == 0) return ferry_test_main(argc, argv);
  if (strcmp(cmd, "check") == 0) return fy_cmd_check(fy_config_arg(argc, argv));
  if (strcmp(cmd, "run") == 0) return fy_cmd_run(fy_config_arg(argc, argv));
  if (strcmp(cmd, "reload") == 0) return fy_cmd_reload(fy_config_arg(argc, argv));
  fprintf(stderr, "ferry: unknown command '%s'\n", cmd);
  fy_usage(stderr);
  return 2;
}
