/* The ferry command: run, check, reload, test, version. */
#include "access_log.h"
#include "config.h"
#include "log.h"
#include "runtime.h"
#include "test_cmd.h"
#include "worker.h"

#include <ares.h>
#include <arpa/inet.h>
#include <limits.h>
#include <llhttp.h>
#include <luajit.h>
#include <netdb.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef FERRY_VERSION
#define FERRY_VERSION "0.1.0"
#endif
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

/* Loads config and builds a generation; prints errors and returns NULL on failure. */
static fy_gen *fy_load(fy_worker *w, const char *path) {
  fy_buf errors;
  fy_buf_init(&errors);
  fy_config *cfg = NULL;
  fy_gen *gen = NULL;
  if (fy_config_load(path, &cfg, &errors) == FY_OK && fy_gen_new(w, cfg, &gen, &errors) != FY_OK) {
    fy_config_free(cfg);
    gen = NULL;
  }
  if (errors.len) fwrite(errors.data, 1, errors.len, stderr);
  fy_buf_free(&errors);
  return gen;
}

static int fy_cmd_version(void) {
  printf("ferry %s\n", FERRY_VERSION);
  printf("libuv %s\n", uv_version_string());
  printf("%s\n", LUAJIT_VERSION); /* "LuaJIT 2.1.0-beta3" */
  printf("llhttp %d.%d.%d (strict mode)\n", LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH);
  printf("c-ares %s\n", ares_version(NULL));
  printf("%s (TLS 1.2)\n", fy_tls_version()); /* "mbed TLS 2.28.3" */
  return 0;
}

static int fy_cmd_check(const char *path) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  fy_worker w;
  fy_worker_init(&w, &loop, NULL);
  fy_gen *gen = fy_load(&w, path);
  if (gen == NULL) {
    fy_worker_close(&w);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return 1;
  }
  if (gen->cfg->warnings.len) fwrite(gen->cfg->warnings.data, 1, gen->cfg->warnings.len, stderr);
  printf("%s: ok (%zu listeners, %zu upstream groups, %zu policies)\n", path, gen->cfg->nlisteners,
         gen->cfg->ngroups, gen->cfg->npolicies);
  fy_gen_unref(gen);
  fy_worker_close(&w);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);
  return 0;
}

static uv_signal_t fy_sigterm, fy_sigint, fy_sighup, fy_sigusr1;

static void fy_on_stopped(fy_runtime *rt) {
  (void)rt;
  uv_close((uv_handle_t *)&fy_sigterm, NULL);
  uv_close((uv_handle_t *)&fy_sigint, NULL);
  uv_close((uv_handle_t *)&fy_sighup, NULL);
  uv_close((uv_handle_t *)&fy_sigusr1, NULL);
  fy_log_info("stopped");
}

static void fy_on_reloaded(fy_runtime *rt, int status, unsigned number, const fy_buf *errors, void *data) {
  (void)rt;
  (void)data;
  if (status != FY_OK)
    fy_log_error("reload refused, generation %u keeps serving:\n%.*s", number, (int)errors->len,
                 errors->data);
}

static void fy_on_signal(uv_signal_t *s, int signum) {
  fy_runtime *rt = s->data;
  if (signum == SIGUSR1) {
    fy_log_info("SIGUSR1: reopening the access log");
    fy_access_log_reopen();
    return;
  }
  if (signum == SIGHUP) {
    fy_log_info("SIGHUP: reloading %s", fy_runtime_config_path(rt));
    fy_runtime_reload(rt, NULL, fy_on_reloaded, NULL);
    return;
  }
  fy_log_info("%s: draining (in-flight requests finish, new connections are refused)",
              signum == SIGTERM ? "SIGTERM" : "SIGINT");
  fy_runtime_stop(rt, fy_on_stopped);
}

static int fy_cmd_run(const char *path) {
  uv_loop_t *loop = uv_default_loop();
  signal(SIGPIPE, SIG_IGN);
  fy_buf errors;
  fy_buf_init(&errors);
  fy_runtime *rt = NULL;
  if (fy_runtime_start(&rt, loop, path, &errors) != FY_OK) {
    fwrite(errors.data, 1, errors.len, stderr);
    fprintf(stderr, "ferry: %s: not starting\n", path);
    fy_buf_free(&errors);
    return 1;
  }
  fy_buf_free(&errors);
  uv_signal_t *sigs[] = {&fy_sigterm, &fy_sigint, &fy_sighup, &fy_sigusr1};
  int nums[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1};
  for (int i = 0; i < 4; i++) {
    uv_signal_init(loop, sigs[i]);
    sigs[i]->data = rt;
    uv_signal_start(sigs[i], fy_on_signal, nums[i]);
  }
  fy_log_info("ferry %s running with %s (pid %d)", FERRY_VERSION, path, (int)uv_os_getpid());
  uv_run(loop, UV_RUN_DEFAULT);
  fy_runtime_free(rt);
  return 0;
}

/* ---- ferry reload ------------------------------------------------------- */

/* Sends one request to the admin listener and returns its status, the body in out. */
static int fy_admin_call(const char *host, int port, const char *request, fy_buf *out) {
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
    fy_buf_append(out, buf, (size_t)n);
  close(fd);
  fy_buf_append(out, "", 1);
  int status = 0;
  if (sscanf(out->data, "HTTP/1.%*d %d", &status) != 1) return -1;
  const char *body = strstr(out->data, "\r\n\r\n");
  size_t skip = body ? (size_t)(body + 4 - out->data) : out->len;
  memmove(out->data, out->data + skip, out->len - skip);
  out->len -= skip;
  return status;
}

static int fy_cmd_reload(const char *path) {
  fy_buf errors;
  fy_buf_init(&errors);
  fy_config *cfg = NULL;
  if (fy_config_load(path, &cfg, &errors) != FY_OK) {
    fwrite(errors.data, 1, errors.len, stderr);
    return 1;
  }
  if (cfg->admin_host == NULL) {
    fprintf(stderr,
            "ferry: %s has no admin.address; ferry reload talks to the running ferry through its "
            "admin listener (or send it SIGHUP)\n",
            path);
    fy_config_free(cfg);
    return 2;
  }
  char real[PATH_MAX];
  char request[PATH_MAX + 256];
  snprintf(request, sizeof request,
           "POST /reload HTTP/1.1\r\nHost: ferry-admin\r\nX-Ferry-Config: %s\r\n"
           "Content-Length: 0\r\nConnection: close\r\n\r\n",
           realpath(path, real) ? real : path);
  int status = fy_admin_call(cfg->admin_host, cfg->admin_port, request, &errors);
  if (status < 0) {
    fprintf(stderr, "ferry: no ferry answers on the admin listener %s:%d\n", cfg->admin_host,
            cfg->admin_port);
  } else {
    fwrite(errors.data, 1, strnlen(errors.data, errors.len), status == 200 ? stdout : stderr);
  }
  fy_config_free(cfg);
  fy_buf_free(&errors);
  return status == 200 ? 0 : 1;
}

int main(int argc, char **argv) {
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
  if (strcmp(cmd, "test") == 0) return fy_cmd_test(argc, argv);
  if (strcmp(cmd, "check") == 0) return fy_cmd_check(fy_config_arg(argc, argv));
  if (strcmp(cmd, "run") == 0) return fy_cmd_run(fy_config_arg(argc, argv));
  if (strcmp(cmd, "reload") == 0) return fy_cmd_reload(fy_config_arg(argc, argv));
  fprintf(stderr, "ferry: unknown command '%s'\n", cmd);
  fy_usage(stderr);
  return 2;
}
