/*
 * libFuzzer target for the config loader: fy_config_load() (core/config.c)
 * on arbitrary file contents. The input is written to a config file and
 * loaded, which runs it as a Lua chunk in the loader's sandbox, checks the
 * result with the schema of lua/ferry/config.lua and copies it into C
 * structs. Invariants:
 *   - the loader returns FY_OK with a config and no error text, or
 *     FY_ECONFIG with no config and a non-empty error text of whole lines;
 *   - an accepted config is what the C side relies on: at least one listener,
 *     ports in 1..65535, policy indexes in range, groups sorted by unique
 *     name with at least one server each, retry and limit values inside the
 *     schema's ranges, warnings as "<path>:" lines;
 *   - no crash, sanitizer report or leak (fy_config_free is called).
 * And three more, which ferry did not meet when this target was written
 * (fixed since; FUZZ_STRICT=0 drops them):
 *   - every error line starts with "<path>:";
 *   - every proxy_protocol.trusted network the schema accepts parses in C;
 *   - no NaN reaches config.c (else UBSan stops on the float conversion).
 *
 * Bounding the chunk. The loader runs the file without an instruction or
 * memory limit, so `while true do end` would hang it (and would hang a
 * worker's reload: see the report in README.md). Rather than skip inputs by
 * keyword, this target links with -Wl,--wrap=luaL_newstate,--wrap=luaL_openlibs
 * so that, while the target calls fy_config_load(), the loader's state gets an
 * allocator capped at FUZZ_LUA_MEMORY, the JIT off (compiled code never runs
 * hooks) and a count hook that raises after FUZZ_LUA_INSTRUCTIONS. An input
 * that runs into either cap is still checked for crashes and leaks, but its
 * error text is not checked (the message comes from this target) and it is
 * kept out of the corpus. A C library call that never returns to Lua (a
 * pathological string.find pattern) is not bounded; libFuzzer's -timeout is.
 *
 * Inputs holding an ESC byte (0x1b) are skipped: loadfile() takes a file that
 * starts with it (after an optional BOM and #! line) as LuaJIT bytecode,
 * which LuaJIT does not verify, so a crafted file crashes the loader. That is
 * reported, not fuzzed (lua/ferry/config.lua should call loadfile(file, "t")).
 */
#include "config.h"

#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REQUIRE(cond)                                                                                        \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                           \
      abort();                                                                                               \
    }                                                                                                        \
  } while (0)

#define FUZZ_LUA_MEMORY (16u << 20)
#define FUZZ_LUA_INSTRUCTIONS 5000000
#define FUZZ_HOOK_EVERY 1000

/* ---- the bounded Lua state --------------------------------------------- */

static struct {
  bool active; /* fy_config_load() of this target is running */
  size_t used;
  long instructions;
  bool oom, budget, nan;
} fz;

static void *fz_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    fz.used -= osize;
    return NULL;
  }
  if (nsize > osize && fz.used + (nsize - osize) > FUZZ_LUA_MEMORY) {
    fz.oom = true;
    return NULL;
  }
  void *p = realloc(ptr, nsize);
  if (p == NULL) {
    fz.oom = true;
    return NULL;
  }
  fz.used = fz.used - osize + nsize;
  return p;
}

/*
 * Lua coverage. The schema in lua/ferry/config.lua is where most of the
 * loader's decisions are made, and libFuzzer cannot see inside the LuaJIT
 * interpreter. So a line hook turns every line run in ferry's own modules
 * (chunk names "@lua/...", not the fuzzed config itself) into a hit in an
 * extra-counters array, which libFuzzer reads as coverage.
 */
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t lua_lines[1 << 14];

static void fz_line(lua_State *L, lua_Debug *ar) {
  if (!lua_getinfo(L, "S", ar) || strncmp(ar->source, "@lua/", 5) != 0) return;
  uint32_t h = 2166136261u;
  for (const char *p = ar->source; *p; p++)
    h = (h ^ (uint8_t)*p) * 16777619u;
  h ^= (uint32_t)ar->currentline * 2654435761u;
  uint8_t *c = &lua_lines[h % sizeof lua_lines];
  if (*c < 255) (*c)++;
}

static void fz_hook(lua_State *L, lua_Debug *ar) {
  if (ar->event == LUA_HOOKLINE) {
    fz_line(L, ar);
    return;
  }
  fz.instructions += FUZZ_HOOK_EVERY;
  if (fz.instructions < FUZZ_LUA_INSTRUCTIONS) return;
  fz.budget = true;
  lua_sethook(L, fz_hook, LUA_MASKCOUNT | LUA_MASKLINE, 1); /* every instruction raises from now on */
  luaL_error(L, "fuzz_config: instruction budget exceeded");
}

static int fz_panic(lua_State *L) {
  fprintf(stderr, "fuzz_config: Lua panic: %s\n", lua_tostring(L, -1));
  abort();
}

lua_State *__real_luaL_newstate(void);
lua_State *__wrap_luaL_newstate(void);
void __real_luaL_openlibs(lua_State *L);
void __wrap_luaL_openlibs(lua_State *L);

lua_State *__wrap_luaL_newstate(void) {
  if (!fz.active) return __real_luaL_newstate();
  lua_State *L = lua_newstate(fz_alloc, NULL);
  REQUIRE(L != NULL);
  lua_atpanic(L, fz_panic);
  lua_sethook(L, fz_hook, LUA_MASKCOUNT | LUA_MASKLINE, FUZZ_HOOK_EVERY);
  return L;
}

void __wrap_luaL_openlibs(lua_State *L) {
  __real_luaL_openlibs(L);
  if (fz.active) luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
}

/*
 * KNOWN: the schema's min/max checks let NaN through (`x < min` and `x > max`
 * are both false), and config.c then converts it to an integer, which is
 * undefined behaviour (UBSan: "nan is outside the range of representable
 * values"). Unless FUZZ_STRICT is set, the numbers config.c reads during the
 * load are passed through here and a NaN becomes 0, so fuzzing goes on past it.
 */
lua_Number __real_lua_tonumber(lua_State *L, int idx);
lua_Number __wrap_lua_tonumber(lua_State *L, int idx);
static bool strict;

lua_Number __wrap_lua_tonumber(lua_State *L, int idx) {
  lua_Number v = __real_lua_tonumber(L, idx);
  if (fz.active && v != v && !strict) {
    fz.nan = true;
    return 0;
  }
  return v;
}

/* ---- checks --------------------------------------------------------------- */

static char dir[] = "/tmp/fuzz_config.XXXXXX";
static char path[64];

/* Text is whole lines, each starting with "<path>:". */
static void check_lines(const char *text, size_t len, const char *what) {
  size_t plen = strlen(path);
  REQUIRE(len > 0 && text[len - 1] == '\n');
  for (size_t at = 0; at < len;) {
    const char *nl = memchr(text + at, '\n', len - at);
    size_t n = (size_t)(nl - (text + at));
    if (!(n > plen && memcmp(text + at, path, plen) == 0 && text[at + plen] == ':')) {
      fprintf(stderr, "%s line without \"%s:\": %.*s\n", what, path, (int)n, text + at);
      REQUIRE(!"every line of the text starts with the config path");
    }
    at += n + 1;
  }
}

static void check_config(const fy_config *cfg) {
  REQUIRE(cfg->path && strcmp(cfg->path, path) == 0);
  REQUIRE(cfg->nlisteners >= 1 && cfg->npolicies >= 1);
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    const fy_cfg_listener *l = &cfg->listeners[i];
    REQUIRE(l->name && l->name[0] && l->host && l->host[0]);
    REQUIRE(l->port >= 1 && l->port <= 65535);
    REQUIRE(l->policy >= 0 && (size_t)l->policy < cfg->npolicies);
    for (size_t j = 0; j < l->nproxy_trusted; j++) {
      const fy_cidr *n = &l->proxy_trusted[j];
      if (n->family == 0 && strict) REQUIRE(!"proxy_protocol.trusted: every network parses");
      REQUIRE(n->bits <= (n->family == AF_INET ? 32u : 128u));
    }
  }
  for (size_t i = 0; i < cfg->npolicies; i++)
    REQUIRE(cfg->policies[i] && cfg->policies[i][0] == '/');
  for (size_t i = 0; i < cfg->ngroups; i++) {
    const fy_cfg_group *g = &cfg->groups[i];
    REQUIRE(g->name && g->name[0]);
    if (i > 0) REQUIRE(strcmp(cfg->groups[i - 1].name, g->name) < 0);
    REQUIRE(g->nservers >= 1);
    for (size_t j = 0; j < g->nservers; j++) {
      const fy_cfg_server *s = &g->servers[j];
      REQUIRE(s->host && s->host[0] && s->name && s->port >= 1 && s->port <= 65535);
      REQUIRE(s->weight >= 1 && s->weight <= 1000);
    }
    REQUIRE(g->tries >= 1 && g->tries <= 10 && g->nstatuses <= 16);
    for (size_t j = 0; j < g->nstatuses; j++)
      REQUIRE(g->statuses[j] >= 500 && g->statuses[j] <= 599);
    REQUIRE(g->budget >= 0 && g->budget <= 1 && g->max_ejected >= 0 && g->max_ejected <= 1);
    REQUIRE(g->connect_timeout >= 1 && g->read_timeout >= 1 && g->write_timeout >= 1 && g->idle_timeout >= 1);
    REQUIRE(g->check_path == NULL || g->check_path[0] == '/');
  }
  const fy_limits *l = &cfg->limits;
  REQUIRE(l->max_request_line >= 64 && l->max_header_bytes >= 256 && l->max_headers >= 1);
  REQUIRE(l->header_timeout >= 1 && l->body_timeout >= 1 && l->send_timeout >= 1 &&
          l->keepalive_timeout >= 1);
  REQUIRE(l->keepalive_requests >= 1 && l->max_connections >= 1 && l->hook_timeout >= 1);
  REQUIRE(l->lua_memory >= 1024 * 1024);
  REQUIRE(cfg->log_level >= 0 && cfg->log_level <= 3);
  REQUIRE(cfg->admin_host == NULL || (cfg->admin_port >= 1 && cfg->admin_port <= 65535));
  REQUIRE(cfg->dns_min_ttl <= cfg->dns_max_ttl);
  if (cfg->warnings.len) check_lines(cfg->warnings.data, cfg->warnings.len, "warning");
}

static void cleanup(void) {
  unlink(path);
  rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  strict = !(getenv("FUZZ_STRICT") && strcmp(getenv("FUZZ_STRICT"), "0") == 0); /* FUZZ_STRICT=0: lenient */
  REQUIRE(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/ferry.lua", dir);
  atexit(cleanup);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (memchr(data, 0x1b, size)) return -1; /* LuaJIT bytecode: see the top of the file */
  FILE *f = fopen(path, "wb");
  REQUIRE(f != NULL);
  REQUIRE(fwrite(data, 1, size, f) == size);
  REQUIRE(fclose(f) == 0);

  fy_buf errors;
  fy_buf_init(&errors);
  fy_config *cfg = NULL;
  memset(&fz, 0, sizeof fz);
  fz.active = true;
  int rc = fy_config_load(path, &cfg, &errors);
  fz.active = false;
  REQUIRE(fz.used == 0); /* the state was closed */
  bool capped = fz.oom || fz.budget;
  if (getenv("FUZZ_VERBOSE"))
    fprintf(stderr, "rc=%d oom=%d budget=%d instructions<=%ld\n%.*s", rc, fz.oom, fz.budget, fz.instructions,
            (int)errors.len, errors.data ? errors.data : "");

  REQUIRE(rc == FY_OK || rc == FY_ECONFIG);
  if (rc == FY_OK) {
    REQUIRE(cfg != NULL && errors.len == 0);
    if (!fz.nan) check_config(cfg); /* a NaN made 0 breaks the ranges */
  } else {
    REQUIRE(cfg == NULL);
    /* KNOWN: lines without "<path>:" come from a message of the config's own
     * making (error("x", 0), error({})), an out-of-memory error, or a key or
     * value holding a newline echoed into a message. Only FUZZ_STRICT checks
     * every line; otherwise the text is only required to be whole lines. */
    REQUIRE(errors.len > 0 && errors.data[errors.len - 1] == '\n');
    if (!capped && strict) check_lines(errors.data, errors.len, "error");
  }
  fy_config_free(cfg);
  fy_buf_free(&errors);
  return capped || fz.nan ? -1 : 0;
}
