/*
 * Lua modules the host registers through the embedding API, present in
 * every Lua state ferry makes (policies require them by name).
 */
#ifndef FERRY_LUA_MODULES_H
#define FERRY_LUA_MODULES_H

#include <stddef.h>

struct lua_State;

/* 0, UV_EINVAL (no name, or ferry's own "ferry"/"ferry.*"), UV_EEXIST. Any thread. */
int fy_lua_modules_add_c(const char *name, int (*open)(struct lua_State *L));
int fy_lua_modules_add_lua(const char *name, const char *source, size_t len);
/* Sets package.preload[name] for every registered module in L. */
void fy_lua_modules_apply(struct lua_State *L);

#endif
