#include "lua_host.h"

#include "log.h"
#include "lua_embed.h"
#include "lua_modules.h"
#include "conn.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <uv.h>

/* Time allowed to load one policy file (its module-level code). */
#define FY_LUA_LOAD_BUDGET_MS 2000
#define FY_LUA_HOOK_EVERY 1000 /* VM instructions between two deadline checks */

static const fy_ffi_api fy_ffi_table = {
    .fy_ffi_abi_layout = fy_ffi_abi_layout,
    .fy_ffi_req_str = fy_ffi_req_str,
    .fy_ffi_req_client_port = fy_ffi_req_client_port,
    .fy_ffi_req_content_length = fy_ffi_req_content_length,
    .fy_ffi_req_header_get = fy_ffi_req_header_get,
    .fy_ffi_req_header_set = fy_ffi_req_header_set,
    .fy_ffi_req_respond_header = fy_ffi_req_respond_header,
    .fy_ffi_req_respond = fy_ffi_req_respond,
    .fy_ffi_req_ctx = fy_ffi_req_ctx,
    .fy_ffi_req_proxy = fy_ffi_req_proxy,
    .fy_ffi_req_tls = fy_ffi_req_tls,
    .fy_ffi_group_server = fy_ffi_group_server,
    .fy_ffi_res_info = fy_ffi_res_info,
    .fy_ffi_res_header_get = fy_ffi_res_header_get,
    .fy_ffi_res_header_set = fy_ffi_res_header_set,
    .fy_ffi_stream_info = fy_ffi_stream_info,
    .fy_ffi_stream_vpce = fy_ffi_stream_vpce,
    .fy_ffi_log = fy_ffi_log,
    .fy_ffi_req_log_field = fy_ffi_req_log_field,
    .fy_ffi_metric_declare = fy_ffi_metric_declare,
    .fy_ffi_metric_inc = fy_ffi_metric_inc,
    .fy_ffi_metric_value = fy_ffi_metric_value,
    .fy_ffi_metric_reset = fy_ffi_metric_reset,
    .fy_ffi_metric_slot = fy_ffi_metric_slot,
};

void fy_lua_openlibs(lua_State *L) {
  luaL_openlibs(L);
  fy_lua_api_open(L);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_pushlightuserdata(L, (void *)&fy_ffi_table);
  lua_setfield(L, -2, "ferry.api");
  lua_pop(L, 2);
  fy_lua_embed_preload(L);
  fy_lua_modules_apply(L);
}

const char *fy_hook_outcome_name(enum fy_hook_outcome out) {
  switch (out) {
  case FY_HOOK_OK: return "ok";
  case FY_HOOK_ERROR: return "error";
  case FY_HOOK_TIMEOUT: return "timeout";
  case FY_HOOK_NOMEM: return "out of memory";
  }
  return "?";
}

/* ---- budgets ------------------------------------------------------------ */

/*
 * limits.lua_memory, counted in front of LuaJIT's own allocator (its
 * per-state arena: about half the instructions of the C library's malloc on
 * a policy's short-lived tables and strings).
 */
static void *fy_lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  fy_lua *lua = ud;
  if (nsize == 0) {
    lua->inner_alloc(lua->inner_ud, ptr, osize, 0);
    lua->mem_used -= osize;
    return NULL;
  }
  if (nsize > osize && lua->mem_used + (nsize - osize) > lua->mem_cap) {
    lua->oom = true;
    return NULL;
  }
  void *p = lua->inner_alloc(lua->inner_ud, ptr, osize, nsize);
  if (p == NULL) {
    lua->oom = true;
    return NULL;
  }
  lua->mem_used = lua->mem_used - osize + nsize;
  return p;
}

__thread fy_hook_call fy_hook_current;

static __thread fy_lua *fy_lua_running;

static void fy_lua_budget_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  fy_lua *lua = fy_lua_running;
  if (lua == NULL || uv_hrtime() < lua->deadline_ns) return;
  lua->timed_out = true;
  /* From now on every instruction raises, so a pcall in the policy cannot swallow it. */
  lua_sethook(L, fy_lua_budget_hook, LUA_MASKCOUNT, 1);
  lua->hook_armed = false;
  luaL_error(L, "ran longer than its %d ms budget (limits.hook_timeout)", (int)lua->budget_ms);
}

static void fy_lua_budget_start(fy_lua *lua, uint64_t ms) {
  lua->timed_out = lua->oom = false;
  lua->budget_ms = ms;
  lua->deadline_ns = uv_hrtime() + ms * 1000000;
  fy_lua_running = lua;
  /* The hook stays set between calls (it returns at once while no budget
   * runs): LuaJIT rewrites its dispatch table on every lua_sethook that
   * turns the hook on or off, about 1,000 instructions a request for both. */
  if (!lua->hook_armed) {
    lua_sethook(lua->L, fy_lua_budget_hook, LUA_MASKCOUNT, FY_LUA_HOOK_EVERY);
    lua->hook_armed = true;
  }
}

static void fy_lua_budget_end(fy_lua *lua) {
  fy_lua_running = NULL;
  if (lua->oom) lua_gc(lua->L, LUA_GCCOLLECT, 0); /* give the garbage back before the next call */
}

/* Calls ferry.core.<fn> with the value at the top of the stack; leaves 2 results. */
static int fy_lua_core_call(fy_lua *lua, const char *fn, int nargs) {
  lua_State *L = lua->L;
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.core");
  if (lua_pcall(L, 1, 1, 0) != 0) return LUA_ERRRUN;
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_insert(L, -1 - nargs);
  fy_lua_budget_start(lua, FY_LUA_LOAD_BUDGET_MS);
  int rc = lua_pcall(L, nargs, 2, 0);
  fy_lua_budget_end(lua);
  return rc;
}

static int fy_lua_set_groups(fy_lua *lua, const fy_config *cfg) {
  lua_State *L = lua->L;
  lua_createtable(L, (int)cfg->ngroups, 0);
  for (size_t i = 0; i < cfg->ngroups; i++) {
    lua_pushstring(L, cfg->groups[i].name);
    lua_rawseti(L, -2, (int)i + 1);
  }
  int rc = fy_lua_core_call(lua, "set_groups", 1);
  if (rc == 0) lua_settop(L, 0); /* else the error stays on top, for fy_lua_init's message */
  return rc;
}

__thread fy_lua *fy_lua_loading;

static int fy_lua_load_policies(fy_lua *lua, const fy_config *cfg, fy_buf *errors) {
  lua_State *L = lua->L;
  int rc = FY_OK;
  fy_lua_loading = lua;
  for (size_t i = 0; i < cfg->npolicies; i++) {
    lua_pushstring(L, cfg->policies[i]);
    lua_pushstring(L, cfg->policy_keys ? cfg->policy_keys[i] : NULL);
    int prc = fy_lua_core_call(lua, "load_policy", 2);
    if (prc != 0 || lua_isnil(L, -2)) {
      const char *msg = lua_tostring(L, -1);
      if (lua->timed_out || lua->oom)
        fy_buf_printf(errors, "%s: loading the policy %s\n", cfg->policies[i],
                      lua->oom ? "ran out of memory (limits.lua_memory)"
                               : "took too long (a loop at module level?)");
      else
        fy_buf_printf(errors, "%s\n", msg ? msg : "(error object is not a string)");
      rc = FY_ESCRIPT;
    }
    lua_settop(L, 0);
  }
  fy_lua_loading = NULL;
  return rc;
}

int fy_lua_init(fy_lua *lua, const fy_config *cfg, fy_buf *errors) {
  memset(lua, 0, sizeof *lua);
  lua->mem_cap = cfg->limits.lua_memory;
  lua->hook_budget_ms = cfg->limits.hook_timeout;
  lua_State *L = lua->L = luaL_newstate();
  if (L == NULL) {
    fy_buf_printf(errors, "cannot create a Lua state\n");
    return FY_ESCRIPT;
  }
  lua->inner_alloc = lua_getallocf(L, &lua->inner_ud);
  lua->mem_used = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
  lua_setallocf(L, fy_lua_alloc, lua);
  fy_lua_openlibs(L);
  if (fy_lua_set_groups(lua, cfg) != 0) {
    fy_buf_printf(errors, "ferry.core: %s\n", lua_tostring(L, -1));
    return FY_ESCRIPT;
  }
  int rc = fy_lua_load_policies(lua, cfg, errors);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.core");
  lua_call(L, 1, 1);
  int core = lua_gettop(L);
  lua_getfield(L, core, "route");
  lua->route_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "select");
  lua->select_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "retry");
  lua->retry_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "response");
  lua->response_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "log_hook");
  lua->log_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "release");
  lua->release_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, core, "route_stream");
  lua->stream_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* Which optional hooks each policy has, so C calls only those that exist. */
  lua->npolicies = cfg->npolicies;
  lua->hooks = fy_calloc(cfg->npolicies, sizeof *lua->hooks);
  lua_getfield(L, core, "hooks");
  for (size_t i = 0; i < cfg->npolicies && rc == FY_OK; i++) {
    lua_pushvalue(L, -1);
    lua_pushinteger(L, (lua_Integer)i + 1);
    lua_call(L, 1, 1);
    lua->hooks[i] = (unsigned)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_settop(L, 0);
  return rc;
}

void fy_lua_close(fy_lua *lua) {
  if (lua->L) {
    /* LuaJIT frees its whole arena at once only when it closes under its own allocator */
    lua_setallocf(lua->L, lua->inner_alloc, lua->inner_ud);
    lua_close(lua->L);
  }
  lua->L = NULL;
  free(lua->hooks);
  lua->hooks = NULL;
  free(lua->counters);
  lua->counters = NULL;
  lua->ncounters = 0;
  fy_policy_metrics_free(&lua->declared);
}

/* ---- the one door into Lua --------------------------------------------- */

static enum fy_hook_outcome fy_lua_failed(fy_lua *lua, int rc, fy_buf *err) {
  size_t len = 0;
  const char *msg = lua_tolstring(lua->L, -1, &len);
  if (msg == NULL) msg = "(error object is not a string)", len = strlen(msg);
  fy_buf_append(err, msg, len);
  lua_settop(lua->L, 0);
  if (lua->timed_out) {
    lua->timeouts++;
    return FY_HOOK_TIMEOUT;
  }
  if (rc == LUA_ERRMEM || lua->oom) {
    lua->nomem++;
    return FY_HOOK_NOMEM;
  }
  lua->errors++;
  return FY_HOOK_ERROR;
}

/*
 * Runs ferry.core.<hook>(policy, request id) with the request made current
 * for the fy_ffi_* calls. Lua returns (code, message): code >= 0 is the
 * hook's answer, else FY_HOOK_NO_ANSWER or FY_HOOK_FAILED (ffi.h).
 */
/* Pushes ferry.core.<ref>, the policy number and the request id; the caller adds more. */
static void fy_lua_begin_id(fy_lua *lua, int ref, int policy, uint64_t id) {
  lua_State *L = lua->L;
  lua_settop(L, 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_pushinteger(L, policy + 1);
  lua_pushnumber(L, (double)id);
}

static void fy_lua_begin(fy_lua *lua, int ref, int policy, struct fy_req *req) {
  fy_lua_begin_id(lua, ref, policy, req->id);
}

/* Hook time goes to the hook's histogram and to the request's policy time (the access log's). */
static void fy_lua_timed(fy_lua *lua, struct fy_req *req, int hook, uint64_t ns) {
  static const char *const labels[FY_HOOK_COUNT] = {
      "hook=\"none\"",     "hook=\"route\"", "hook=\"select\"",      "hook=\"retry\"",
      "hook=\"response\"", "hook=\"log\"",   "hook=\"route_stream\""};
  if (lua->w) {
    if (lua->m_hooks[hook] == NULL)
      lua->m_hooks[hook] = fy_metrics_series(&lua->w->metrics, FY_M_HOOK_DURATION, labels[hook]);
    fy_series_observe(lua->m_hooks[hook], ns);
  }
  if (req) req->policy_ns += ns;
}

/*
 * The one door: runs what fy_lua_begin set up (with nextra more arguments)
 * under the hook budget, with req made current for the fy_ffi_* calls. Lua
 * returns (code, message, extra): code >= 0 is the hook's answer,
 * FY_HOOK_NO_ANSWER (route: answered with req:respond(); select: use the
 * balancer) or FY_HOOK_FAILED. On FY_HOOK_OK the three results stay on the stack for the
 * caller, who clears it.
 */
static enum fy_hook_outcome fy_lua_run(fy_lua *lua, struct fy_req *req, int hook, int nextra, int *code,
                                       fy_buf *err) {
  lua_State *L = lua->L;
  fy_hook_call outer = fy_hook_current;
  fy_hook_current.req = req; /* a route_stream call keeps the stream stream.c made current */
  fy_hook_current.hook = hook;
  fy_hook_current.lua = lua;
  fy_lua_budget_start(lua, lua->hook_budget_ms);
  uint64_t start = uv_hrtime();
  int rc = lua_pcall(L, 2 + nextra, 3, 0);
  fy_lua_budget_end(lua);
  fy_lua_timed(lua, req, hook, uv_hrtime() - start);
  fy_hook_current = outer;
  if (rc != 0) return fy_lua_failed(lua, rc, err);
  *code = (int)lua_tointeger(L, -3);
  if (*code == FY_HOOK_FAILED || lua->timed_out || lua->oom) {
    lua_pop(L, 1); /* leave the message on top */
    return fy_lua_failed(lua, LUA_ERRRUN, err);
  }
  return FY_HOOK_OK;
}

enum fy_hook_outcome fy_lua_route(fy_lua *lua, int policy, struct fy_req *req, int *group, fy_buf *key,
                                  fy_buf *err) {
  int code = -1;
  fy_lua_begin(lua, lua->route_ref, policy, req);
  /* Nearly every policy routes by host: handed over here, req.host costs the
   * interpreted policy no FFI call (about 1,000 instructions a request). */
  lua_pushlstring(lua->L, req->host, req->host_len);
  enum fy_hook_outcome out = fy_lua_run(lua, req, FY_HOOK_ROUTE, 1, &code, err);
  *group = code;
  if (out == FY_HOOK_OK && lua_isstring(lua->L, -1)) {
    size_t len;
    const char *k = lua_tolstring(lua->L, -1, &len);
    fy_buf_append(key, k, len);
  }
  lua_settop(lua->L, 0);
  return out;
}

enum fy_hook_outcome fy_lua_select(fy_lua *lua, int policy, struct fy_req *req, int group, unsigned attempt,
                                   int *server, fy_buf *err) {
  fy_lua_begin(lua, lua->select_ref, policy, req);
  lua_pushinteger(lua->L, group);
  lua_pushinteger(lua->L, attempt);
  enum fy_hook_outcome out = fy_lua_run(lua, req, FY_HOOK_SELECT, 2, server, err);
  lua_settop(lua->L, 0);
  return out;
}

enum fy_hook_outcome fy_lua_retry(fy_lua *lua, int policy, struct fy_req *req, unsigned attempt,
                                  const char *kind, int status, const char *server, bool *again,
                                  fy_buf *err) {
  int code = 0;
  fy_lua_begin(lua, lua->retry_ref, policy, req);
  lua_pushinteger(lua->L, attempt);
  lua_pushstring(lua->L, kind);
  lua_pushinteger(lua->L, status);
  lua_pushstring(lua->L, server);
  enum fy_hook_outcome out = fy_lua_run(lua, req, FY_HOOK_RETRY, 4, &code, err);
  *again = code == 1;
  lua_settop(lua->L, 0);
  return out;
}

static enum fy_hook_outcome fy_lua_notify(fy_lua *lua, int ref, int hook, int policy, struct fy_req *req,
                                          fy_buf *err) {
  int code = 0;
  fy_lua_begin(lua, ref, policy, req);
  enum fy_hook_outcome out = fy_lua_run(lua, req, hook, 0, &code, err);
  lua_settop(lua->L, 0);
  return out;
}

enum fy_hook_outcome fy_lua_response(fy_lua *lua, int policy, struct fy_req *req, fy_buf *err) {
  return fy_lua_notify(lua, lua->response_ref, FY_HOOK_RESPONSE, policy, req, err);
}

enum fy_hook_outcome fy_lua_log(fy_lua *lua, int policy, struct fy_req *req, fy_buf *err) {
  return fy_lua_notify(lua, lua->log_ref, FY_HOOK_LOG, policy, req, err);
}

enum fy_hook_outcome fy_lua_route_stream(fy_lua *lua, int policy, uint64_t id, int *group, fy_buf *err) {
  int code = -1;
  fy_lua_begin_id(lua, lua->stream_ref, policy, id);
  enum fy_hook_outcome out = fy_lua_run(lua, NULL, FY_HOOK_ROUTE_STREAM, 0, &code, err);
  *group = code;
  lua_settop(lua->L, 0);
  return out;
}

void fy_lua_release(fy_lua *lua, uint64_t id) {
  lua_State *L = lua->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lua->release_ref);
  lua_pushnumber(L, (double)id);
  if (lua_pcall(L, 1, 0, 0) != 0) lua_pop(L, 1); /* only a table store: cannot fail but for memory */
}

bool fy_lua_has_hook(const fy_lua *lua, int policy, unsigned hook) {
  return policy >= 0 && (size_t)policy < lua->npolicies && (lua->hooks[policy] & hook) != 0;
}
