/*
 * The Lua modules a host registers (ferry_register_cmodule and
 * ferry_register_lua_module): one process-wide list, applied to every Lua
 * state ferry makes (fy_lua_openlibs), so that policies can require them in
 * every generation, after reloads and under `ferry test`. The list only
 * grows; a mutex guards it because generations are built on libuv's pool
 * threads while a host may still register.
 */
#include "lua_modules.h"

#include "common.h"

#include <lauxlib.h>
#include <lua.h>
#include <string.h>
#include <uv.h>

typedef struct fy_host_module {
  char *name;
  lua_CFunction open; /* or: */
  char *source;
  size_t len;
} fy_host_module;

static uv_once_t fy_modules_once = UV_ONCE_INIT;
static uv_mutex_t fy_modules_lock;
static fy_host_module *fy_modules;
static size_t fy_nmodules;

static void fy_modules_init(void) { uv_mutex_init(&fy_modules_lock); }

static int fy_modules_add(const char *name, lua_CFunction open, const char *source, size_t len) {
  if (name == NULL || name[0] == '\0' || strcmp(name, "ferry") == 0 || strncmp(name, "ferry.", 6) == 0 ||
      (open == NULL && source == NULL))
    return UV_EINVAL;
  uv_once(&fy_modules_once, fy_modules_init);
  uv_mutex_lock(&fy_modules_lock);
  int rc = 0;
  for (size_t i = 0; i < fy_nmodules; i++)
    if (strcmp(fy_modules[i].name, name) == 0) rc = UV_EEXIST;
  if (rc == 0) {
    fy_modules = fy_realloc(fy_modules, (fy_nmodules + 1) * sizeof *fy_modules);
    fy_host_module *m = &fy_modules[fy_nmodules++];
    m->name = fy_strdup(name);
    m->open = open;
    m->source = NULL;
    m->len = len;
    if (source) {
      m->source = fy_malloc(len + 1);
      memcpy(m->source, source, len);
      m->source[len] = '\0';
    }
  }
  uv_mutex_unlock(&fy_modules_lock);
  return rc;
}

int fy_lua_modules_add_c(const char *name, lua_CFunction open) { return fy_modules_add(name, open, NULL, 0); }

int fy_lua_modules_add_lua(const char *name, const char *source, size_t len) {
  if (source == NULL) return UV_EINVAL;
  return fy_modules_add(name, NULL, source, len);
}

/* package.preload loader of a Lua source module: upvalue 1 its source, 2 its chunk name. */
static int fy_lua_modules_loader(lua_State *L) {
  size_t len = 0;
  const char *src = lua_tolstring(L, lua_upvalueindex(1), &len);
  if (luaL_loadbuffer(L, src, len, lua_tostring(L, lua_upvalueindex(2))) != 0) return lua_error(L);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 1);
  return 1;
}

void fy_lua_modules_apply(lua_State *L) {
  uv_once(&fy_modules_once, fy_modules_init);
  uv_mutex_lock(&fy_modules_lock);
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  for (size_t i = 0; i < fy_nmodules; i++) {
    const fy_host_module *m = &fy_modules[i];
    if (m->open) {
      lua_pushcfunction(L, m->open);
    } else {
      lua_pushlstring(L, m->source, m->len); /* the state's own copy */
      lua_pushfstring(L, "=%s", m->name);
      lua_pushcclosure(L, fy_lua_modules_loader, 2);
    }
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 2);
  uv_mutex_unlock(&fy_modules_lock);
}
