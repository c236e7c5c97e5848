#include "lua_host.h"

#include "log.h"
#include "lua_embed.h"
#include "conn.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

void fy_lua_openlibs(lua_State *L) {
  luaL_openlibs(L);
  fy_lua_embed_preload(L);
}

/* Calls ferry.core.<fn> with the value at the top of the stack; leaves 2 results. */
static int fy_lua_core_call(lua_State *L, const char *fn, int nargs) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.core");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, fn);
  lua_remove(L, -2);
  lua_insert(L, -1 - nargs);
  return lua_pcall(L, nargs, 2, 0);
}

static void fy_lua_set_groups(lua_State *L, const fy_config *cfg) {
  lua_createtable(L, (int)cfg->ngroups, 0);
  for (size_t i = 0; i < cfg->ngroups; i++) {
    lua_pushstring(L, cfg->groups[i].name);
    lua_rawseti(L, -2, (int)i + 1);
  }
  fy_lua_core_call(L, "set_groups", 1);
  lua_settop(L, 0);
}

int fy_lua_init(fy_lua *lua, const fy_config *cfg, fy_buf *errors) {
  int rc = FY_OK;
  memset(lua, 0, sizeof *lua);
  lua_State *L = lua->L = luaL_newstate();
  fy_lua_openlibs(L);
  fy_lua_set_groups(L, cfg);
  for (size_t i = 0; i < cfg->npolicies; i++) {
    lua_pushstring(L, cfg->policies[i]);
    if (fy_lua_core_call(L, "load_policy", 1) != 0 || lua_isnil(L, -2)) {
      fy_buf_printf(errors, "%s\n", lua_tostring(L, -1));
      rc = FY_ESCRIPT;
    }
    lua_settop(L, 0);
  }
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.core");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "route");
  lua->route_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_settop(L, 0);
  return rc;
}

void fy_lua_close(fy_lua *lua) {
  if (lua->L) lua_close(lua->L);
  lua->L = NULL;
}

/* ---- the one door into Lua --------------------------------------------- */

static enum fy_hook_outcome fy_lua_failed(fy_lua *lua, int rc, fy_buf *err) {
  size_t len = 0;
  const char *msg = lua_tolstring(lua->L, -1, &len);
  if (msg == NULL) msg = "(error object is not a string)", len = strlen(msg);
  fy_buf_append(err, msg, len);
  lua_settop(lua->L, 0);
  if (rc == LUA_ERRMEM) {
    lua->nomem++;
    return FY_HOOK_NOMEM;
  }
  lua->errors++;
  return FY_HOOK_ERROR;
}

/*
 * Runs ferry.core.<hook>(policy, request id) with the request made current
 * for the fy_ffi_* calls. Lua returns (code, message): code >= 0 is the
 * hook's answer, -1 means it answered with req:respond(), -2 is an error.
 */
static enum fy_hook_outcome fy_lua_run(fy_lua *lua, int ref, int policy, struct fy_req *req,
                                       int *code, fy_buf *err) {
  lua_State *L = lua->L;
  fy_worker *w = fy_worker_current;
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_pushinteger(L, policy + 1);
  lua_pushnumber(L, (double)req->id);
  w->hook_req = req;
  int rc = lua_pcall(L, 2, 2, 0);
  w->hook_req = NULL;
  if (rc != 0) return fy_lua_failed(lua, rc, err);
  *code = (int)lua_tointeger(L, -2);
  if (*code == -2) return fy_lua_failed(lua, LUA_ERRRUN, err);
  lua_settop(L, 0);
  return FY_HOOK_OK;
}

enum fy_hook_outcome fy_lua_route(fy_lua *lua, int policy, struct fy_req *req, int *group, fy_buf *err) {
  int code = -1;
  enum fy_hook_outcome out = fy_lua_run(lua, lua->route_ref, policy, req, &code, err);
  *group = code;
  return out;
}
