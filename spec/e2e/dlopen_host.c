/*
 * A host that loads libferry.so with dlopen(RTLD_NOW | RTLD_LOCAL) and
 * exports no symbols of its own (test_embed.py): ferry's Lua side must bind
 * its C functions without any global symbol. It reads the config file given
 * and starts ferry from that text (a config string, base directory the
 * file's), registers a Lua module the policy requires, and serves on its
 * own loop until SIGTERM.
 *
 *   dlopen_host LIBFERRY CONFIG BASE_DIR
 */
#include <ferry.h>

#include <dlfcn.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FN(name) static __typeof__(name) *p_##name
FN(ferry_start);
FN(ferry_stop);
FN(ferry_runtime_free);
FN(ferry_register_lua_module);
FN(ferry_set_log_sink);
FN(ferry_log_stderr);
FN(ferry_free);

static const char tenants[] = "local M = {}\n"
                              "function M.lookup(host) return host == 'acme.example' and 'acme' or nil end\n"
                              "return M\n";

static uv_signal_t sigterm;

static void on_stopped(ferry_runtime *rt, void *data) {
  (void)data;
  p_ferry_runtime_free(rt);
  uv_close((uv_handle_t *)&sigterm, NULL);
  printf("dlopen host: stopped\n");
  fflush(stdout);
}

static void on_sigterm(uv_signal_t *s, int signum) {
  (void)signum;
  p_ferry_stop(s->data, on_stopped, NULL);
}

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  static char text[65536];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  return text;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  signal(SIGPIPE, SIG_IGN);
  void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
#define LOAD(name) *(void **)&p_##name = dlsym(lib, #name)
  LOAD(ferry_start);
  LOAD(ferry_stop);
  LOAD(ferry_runtime_free);
  LOAD(ferry_register_lua_module);
  LOAD(ferry_set_log_sink);
  LOAD(ferry_log_stderr);
  LOAD(ferry_free);
  if (!p_ferry_start || !p_ferry_stop || !p_ferry_runtime_free || !p_ferry_register_lua_module ||
      !p_ferry_set_log_sink || !p_ferry_log_stderr || !p_ferry_free)
    return 1;
  p_ferry_set_log_sink(p_ferry_log_stderr, NULL);
  if (p_ferry_register_lua_module("dlhost.tenants", tenants, sizeof tenants - 1) != 0) return 1;
  const char *text = read_file(argv[2]);
  if (text == NULL) return 1;
  uv_loop_t *loop = uv_default_loop();
  ferry_options opts = {
      .config_path = "dlopen-config", .config_text = text, .base_dir = argv[3], .run = FERRY_RUN_THREADS};
  ferry_runtime *rt = NULL;
  char *errors = NULL;
  if (p_ferry_start(&rt, loop, &opts, &errors) != 0) {
    fprintf(stderr, "%s", errors ? errors : "ferry_start failed\n");
    p_ferry_free(errors);
    return 1;
  }
  uv_signal_init(loop, &sigterm);
  sigterm.data = rt;
  uv_signal_start(&sigterm, on_sigterm, SIGTERM);
  printf("dlopen host: serving\n");
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
