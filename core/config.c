#include "config.h"

#include "log.h"
#include "lua_embed.h"
#include "proxy_protocol.h"

#include <stdio.h>
#include <uv.h>

#include <lauxlib.h>
#include <luajit.h>
#include <lua.h>
#include <lualib.h>

bool fy_cidr_parse(const char *text, fy_cidr *out) {
  char addr[64];
  const char *slash = strchr(text, '/');
  size_t len = slash ? (size_t)(slash - text) : strlen(text);
  if (len >= sizeof addr) return false;
  memcpy(addr, text, len);
  addr[len] = '\0';
  memset(out, 0, sizeof *out);
  if (uv_inet_pton(AF_INET, addr, out->addr) == 0)
    out->family = AF_INET, out->bits = 32;
  else if (uv_inet_pton(AF_INET6, addr, out->addr) == 0)
    out->family = AF_INET6, out->bits = 128;
  else
    return false;
  if (slash) {
    unsigned bits = (unsigned)atoi(slash + 1);
    if (bits > out->bits) return false;
    out->bits = bits;
  }
  return true;
}

bool fy_cidr_contains(const fy_cidr *net, const struct sockaddr *sa) {
  const uint8_t *a;
  if (sa->sa_family != net->family) return false;
  if (sa->sa_family == AF_INET)
    a = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
  else
    a = (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
  unsigned full = net->bits / 8, rest = net->bits % 8;
  if (memcmp(a, net->addr, full) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = (uint8_t)(0xff << (8 - rest));
  return (a[full] & mask) == (net->addr[full] & mask);
}

bool fy_cfg_listener_trusts(const fy_cfg_listener *cl, const struct sockaddr *peer) {
  for (size_t i = 0; i < cl->nproxy_trusted; i++)
    if (fy_cidr_contains(&cl->proxy_trusted[i], peer)) return true;
  return false;
}

int fy_cfg_listener_expect_proxy(const fy_cfg_listener *cl, const struct sockaddr *peer, fy_proxy_info **pp) {
  *pp = NULL;
  if (cl->nproxy_trusted == 0) return 0;
  if (!fy_cfg_listener_trusts(cl, peer)) return -1;
  *pp = fy_calloc(1, sizeof **pp);
  return 0;
}

static char *fy_cfg_str(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  char *s = fy_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
  lua_pop(L, 1);
  return s;
}

static double fy_cfg_num(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

static uint64_t fy_cfg_ms(lua_State *L, int idx, const char *key) {
  return (uint64_t)(fy_cfg_num(L, idx, key) * 1000.0 + 0.5);
}

static char *fy_cfg_opt_str(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  char *s = lua_isstring(L, -1) ? fy_strdup(lua_tostring(L, -1)) : NULL;
  lua_pop(L, 1);
  return s;
}

static bool fy_cfg_bool(lua_State *L, int idx, const char *key) {
  lua_getfield(L, idx, key);
  bool v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* A list of strings at key (absent: none). */
static char **fy_cfg_strings(lua_State *L, int idx, const char *key, size_t *n) {
  char **v = NULL;
  *n = 0;
  lua_getfield(L, idx, key);
  if (lua_istable(L, -1)) {
    *n = lua_objlen(L, -1);
    v = fy_calloc(*n ? *n : 1, sizeof *v);
    for (size_t i = 0; i < *n; i++) {
      lua_rawgeti(L, -1, (int)i + 1);
      v[i] = fy_strdup(lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
  return v;
}

static void fy_cfg_strings_free(char **v, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

static void fy_cfg_read_tls_server(lua_State *L, int t, fy_cfg_tls_server *tls) {
  lua_getfield(L, t, "certs");
  tls->ncerts = lua_objlen(L, -1);
  tls->certs = fy_calloc(tls->ncerts, sizeof *tls->certs);
  for (size_t i = 0; i < tls->ncerts; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    int c = lua_gettop(L);
    tls->certs[i].cert = fy_cfg_str(L, c, "cert");
    tls->certs[i].key = fy_cfg_str(L, c, "key");
    tls->certs[i].names = fy_cfg_strings(L, c, "names", &tls->certs[i].nnames);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  tls->client_ca = fy_cfg_opt_str(L, t, "client_ca");
  tls->client_optional = fy_cfg_bool(L, t, "client_optional");
  tls->session_tickets = fy_cfg_bool(L, t, "session_tickets");
  tls->ciphers = fy_cfg_strings(L, t, "ciphers", &tls->nciphers);
}

static void fy_cfg_read_tls_client(lua_State *L, int t, fy_cfg_tls_client *tls) {
  tls->verify = fy_cfg_bool(L, t, "verify");
  tls->ca = fy_cfg_opt_str(L, t, "ca");
  tls->server_name = fy_cfg_opt_str(L, t, "server_name");
  tls->cert = fy_cfg_opt_str(L, t, "cert");
  tls->key = fy_cfg_opt_str(L, t, "key");
  tls->ciphers = fy_cfg_strings(L, t, "ciphers", &tls->nciphers);
}

static void fy_cfg_read_listeners(lua_State *L, int t, fy_config *cfg) {
  lua_getfield(L, t, "listeners");
  cfg->nlisteners = lua_objlen(L, -1);
  cfg->listeners = fy_calloc(cfg->nlisteners, sizeof *cfg->listeners);
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    fy_cfg_listener *l = &cfg->listeners[i];
    l->name = fy_cfg_str(L, -1, "name");
    l->host = fy_cfg_str(L, -1, "host");
    l->port = (int)fy_cfg_num(L, -1, "port");
    l->policy = (int)fy_cfg_num(L, -1, "policy") - 1;
    char *type = fy_cfg_str(L, -1, "type");
    l->tcp = strcmp(type, "tcp") == 0;
    l->https = strcmp(type, "https") == 0;
    free(type);
    lua_getfield(L, -1, "tls");
    if (lua_istable(L, -1)) fy_cfg_read_tls_server(L, lua_gettop(L), &l->tls);
    lua_pop(L, 1);
    lua_getfield(L, -1, "proxy_trusted");
    if (lua_istable(L, -1)) {
      l->nproxy_trusted = lua_objlen(L, -1);
      l->proxy_trusted = fy_calloc(l->nproxy_trusted, sizeof *l->proxy_trusted);
      for (size_t j = 0; j < l->nproxy_trusted; j++) {
        lua_rawgeti(L, -1, (int)j + 1);
        fy_cidr_parse(lua_tostring(L, -1), &l->proxy_trusted[j]);
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 2);
  }
  lua_pop(L, 1);
}

static void fy_cfg_read_group(lua_State *L, int t, fy_cfg_group *g) {
  g->name = fy_cfg_str(L, t, "name");
  g->connect_timeout = fy_cfg_ms(L, t, "connect_timeout");
  g->read_timeout = fy_cfg_ms(L, t, "read_timeout");
  g->write_timeout = fy_cfg_ms(L, t, "write_timeout");
  g->idle_timeout = fy_cfg_ms(L, t, "idle_timeout");
  g->max_idle = (unsigned)fy_cfg_num(L, t, "max_idle");
  char *balance = fy_cfg_str(L, t, "balance");
  g->balance = strcmp(balance, "least_conn") == 0 ? FY_BALANCE_LEAST_CONN
               : strcmp(balance, "p2c") == 0      ? FY_BALANCE_P2C
               : strcmp(balance, "hash") == 0     ? FY_BALANCE_HASH
                                                  : FY_BALANCE_ROUND_ROBIN;
  free(balance);
  g->tries = (unsigned)fy_cfg_num(L, t, "tries");
  g->backoff = fy_cfg_ms(L, t, "backoff");
  g->deadline = fy_cfg_ms(L, t, "deadline");
  g->budget = fy_cfg_num(L, t, "budget");
  g->min_retries = (unsigned)fy_cfg_num(L, t, "min_retries");
  g->replay_buffer = (size_t)fy_cfg_num(L, t, "replay_buffer");
  g->max_fails = (unsigned)fy_cfg_num(L, t, "max_fails");
  g->eject = fy_cfg_ms(L, t, "eject");
  g->max_eject = fy_cfg_ms(L, t, "max_eject");
  g->max_ejected = fy_cfg_num(L, t, "max_ejected");
  g->check_interval = fy_cfg_ms(L, t, "check_interval");
  g->check_timeout = fy_cfg_ms(L, t, "check_timeout");
  g->check_rise = (unsigned)fy_cfg_num(L, t, "check_rise");
  g->check_fall = (unsigned)fy_cfg_num(L, t, "check_fall");
  g->proxy_protocol = (int)fy_cfg_num(L, t, "proxy_protocol");
  lua_getfield(L, t, "tls");
  if (lua_istable(L, -1)) {
    fy_cfg_read_tls_client(L, lua_gettop(L), &g->tls);
    g->tls.enabled = true;
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "check_path");
  if (lua_isstring(L, -1)) g->check_path = fy_strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_getfield(L, t, "statuses");
  for (size_t i = 1; i <= lua_objlen(L, -1) && g->nstatuses < FY_ARRAY_SIZE(g->statuses); i++) {
    lua_rawgeti(L, -1, (int)i);
    g->statuses[g->nstatuses++] = (int)lua_tointeger(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "servers");
  g->nservers = lua_objlen(L, -1);
  g->servers = fy_calloc(g->nservers, sizeof *g->servers);
  for (size_t i = 0; i < g->nservers; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    g->servers[i].name = fy_cfg_str(L, -1, "name");
    g->servers[i].host = fy_cfg_str(L, -1, "host");
    g->servers[i].port = (int)fy_cfg_num(L, -1, "port");
    g->servers[i].weight = (unsigned)fy_cfg_num(L, -1, "weight");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void fy_cfg_read_groups(lua_State *L, int t, fy_config *cfg) {
  lua_getfield(L, t, "upstreams");
  cfg->ngroups = lua_objlen(L, -1);
  cfg->groups = fy_calloc(cfg->ngroups, sizeof *cfg->groups);
  for (size_t i = 0; i < cfg->ngroups; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    fy_cfg_read_group(L, lua_gettop(L), &cfg->groups[i]);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

static void fy_cfg_read_rest(lua_State *L, int t, fy_config *cfg) {
  lua_getfield(L, t, "policies");
  cfg->npolicies = lua_objlen(L, -1);
  cfg->policies = fy_calloc(cfg->npolicies, sizeof *cfg->policies);
  cfg->policy_keys = fy_calloc(cfg->npolicies, sizeof *cfg->policy_keys);
  for (size_t i = 0; i < cfg->npolicies; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    cfg->policies[i] = fy_strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "policy_keys");
  for (size_t i = 0; i < cfg->npolicies; i++) {
    lua_rawgeti(L, -1, (int)i + 1);
    cfg->policy_keys[i] = fy_strdup(lua_isstring(L, -1) ? lua_tostring(L, -1) : "policy");
    lua_pop(L, 1);
  }
  lua_pop(L, 1);

  lua_getfield(L, t, "limits");
  int lim = lua_gettop(L);
  fy_limits *l = &cfg->limits;
  l->max_request_line = (size_t)fy_cfg_num(L, lim, "max_request_line");
  l->max_header_bytes = (size_t)fy_cfg_num(L, lim, "max_header_bytes");
  l->max_headers = (size_t)fy_cfg_num(L, lim, "max_headers");
  l->header_timeout = fy_cfg_ms(L, lim, "header_timeout");
  l->body_timeout = fy_cfg_ms(L, lim, "body_timeout");
  l->send_timeout = fy_cfg_ms(L, lim, "send_timeout");
  l->keepalive_timeout = fy_cfg_ms(L, lim, "keepalive_timeout");
  l->keepalive_requests = (unsigned)fy_cfg_num(L, lim, "keepalive_requests");
  l->max_connections = (unsigned)fy_cfg_num(L, lim, "max_connections");
  l->stream_idle_timeout = fy_cfg_ms(L, lim, "stream_idle_timeout");
  l->hook_timeout = fy_cfg_ms(L, lim, "hook_timeout");
  l->lua_memory = (size_t)fy_cfg_num(L, lim, "lua_memory");
  lua_pop(L, 1);

  lua_getfield(L, t, "admin");
  if (lua_istable(L, -1)) {
    cfg->admin_host = fy_cfg_str(L, -1, "host");
    cfg->admin_port = (int)fy_cfg_num(L, -1, "port");
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "warnings");
  for (size_t i = 1; i <= lua_objlen(L, -1); i++) {
    lua_rawgeti(L, -1, (int)i);
    fy_buf_printf(&cfg->warnings, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, t, "dns");
  lua_getfield(L, -1, "servers");
  if (lua_isstring(L, -1)) cfg->dns_servers = fy_strdup(lua_tostring(L, -1));
  lua_pop(L, 1);
  cfg->dns_min_ttl = fy_cfg_ms(L, lua_gettop(L), "min_ttl");
  cfg->dns_max_ttl = fy_cfg_ms(L, lua_gettop(L), "max_ttl");
  cfg->dns_timeout = fy_cfg_ms(L, lua_gettop(L), "timeout");
  lua_pop(L, 1);
  lua_getfield(L, t, "workers");
  cfg->workers = (unsigned)lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, t, "drain");
  cfg->drain_delay = fy_cfg_ms(L, lua_gettop(L), "delay");
  cfg->drain_timeout = fy_cfg_ms(L, lua_gettop(L), "timeout");
  lua_pop(L, 1);
  lua_getfield(L, t, "reload");
  lua_getfield(L, -1, "watch");
  cfg->watch = lua_toboolean(L, -1);
  lua_pop(L, 1);
  cfg->watch_debounce = fy_cfg_ms(L, lua_gettop(L), "debounce");
  lua_pop(L, 1);

  lua_getfield(L, t, "log");
  char *level = fy_cfg_str(L, -1, "level");
  cfg->log_level = fy_log_level_parse(level);
  free(level);
  lua_getfield(L, -1, "access");
  cfg->access_log = lua_toboolean(L, -1);
  if (lua_istable(L, -1)) {
    char *format = fy_cfg_str(L, lua_gettop(L), "format");
    cfg->access_json = format && strcmp(format, "json") == 0;
    free(format);
    lua_getfield(L, -1, "file");
    if (lua_isstring(L, -1)) cfg->access_file = fy_strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    cfg->access_buffer = (size_t)fy_cfg_num(L, lua_gettop(L), "buffer");
  }
  lua_pop(L, 2);
}

/* ---- bounding the config program ------------------------------------------ */

/*
 * A config file is a program: it runs with the JIT off (compiled code never
 * calls hooks), under a count hook that stops it after FY_CFG_TIME_MS, and
 * with an allocator that refuses memory past FY_CFG_MEMORY. A `while true
 * do end` is then an error with its line, not a hung `ferry check` or a
 * worker stuck in a reload.
 */
#define FY_CFG_TIME_MS 2000
#define FY_CFG_MEMORY (256u << 20)

typedef struct fy_cfg_budget {
  size_t used;
  uint64_t deadline_ns;
} fy_cfg_budget;

static void *fy_cfg_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  fy_cfg_budget *b = ud;
  if (nsize == 0) {
    free(ptr);
    b->used -= osize;
    return NULL;
  }
  if (nsize > osize && b->used + (nsize - osize) > FY_CFG_MEMORY) return NULL;
  void *p = realloc(ptr, nsize);
  if (p) b->used = b->used - osize + nsize;
  return p;
}

static __thread fy_cfg_budget *fy_cfg_running;

static void fy_cfg_hook(lua_State *L, lua_Debug *ar) {
  if (fy_cfg_running == NULL || uv_hrtime() < fy_cfg_running->deadline_ns) return;
  lua_sethook(L, NULL, 0, 0); /* once: the error is reported by the code that catches it */
  int line = lua_getinfo(L, "l", ar) ? ar->currentline : -1;
  luaL_error(L, "the config ran for more than %d s, stopped at line %d (a loop that never ends?)",
             FY_CFG_TIME_MS / 1000, line);
}

/* Appends every string of the error list at the top of the stack, each naming path. */
static void fy_cfg_collect_errors(lua_State *L, const char *path, fy_buf *errors) {
  if (lua_isstring(L, -1) || !lua_istable(L, -1)) {
    const char *msg = lua_isstring(L, -1) ? lua_tostring(L, -1) : "the config loader failed";
    size_t plen = strlen(path);
    bool named = strncmp(msg, path, plen) == 0 && msg[plen] == ':';
    fy_buf_printf(errors, "%s%s%s\n", named ? "" : path, named ? "" : ": ", msg);
    return;
  }
  size_t n = lua_istable(L, -1) ? lua_objlen(L, -1) : 0;
  for (size_t i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, (int)i);
    fy_buf_printf(errors, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

/* Appends "file:line: where.message" for a config error found here in C. */
static void fy_cfg_error_at(lua_State *L, const char *path, const char *where, const char *msg,
                            fy_buf *errors) {
  lua_getfield(L, 1, "locate_error"); /* ferry.config is at index 1 */
  lua_pushstring(L, path);
  lua_pushfstring(L, "%s.%s", where, msg);
  if (lua_pcall(L, 2, 1, 0) == 0)
    fy_buf_printf(errors, "%s\n", lua_tostring(L, -1));
  else
    fy_buf_printf(errors, "%s: %s.%s\n", path, where, msg);
  lua_pop(L, 1);
}

/*
 * Certificates and keys are read here, at load time, so that `ferry check`
 * and a reload both refuse a file that will not do, with the line of the
 * setting that names it.
 */
static int fy_cfg_load_tls(lua_State *L, fy_config *cfg, fy_buf *errors) {
  int rc = 0;
  char err[512], where[160];
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    fy_cfg_listener *l = &cfg->listeners[i];
    if (!l->https) continue;
    if (fy_tls_server_ctx_new(&l->tls, &l->tls_ctx, err, sizeof err) != 0) {
      snprintf(where, sizeof where, "listeners[%zu].tls", i + 1);
      fy_cfg_error_at(L, cfg->path, where, err, errors);
      rc = -1;
    }
  }
  for (size_t i = 0; i < cfg->ngroups; i++) {
    fy_cfg_group *g = &cfg->groups[i];
    if (!g->tls.enabled) continue;
    if (fy_tls_client_ctx_new(&g->tls, &g->tls_ctx, err, sizeof err) != 0) {
      snprintf(where, sizeof where, "upstreams.%s.tls", g->name);
      fy_cfg_error_at(L, cfg->path, where, err, errors);
      rc = -1;
    }
  }
  return rc;
}

int fy_config_load(const char *path, fy_config **out, fy_buf *errors) {
  return fy_config_load_text(path, NULL, NULL, out, errors);
}

int fy_config_load_text(const char *path, const char *text, const char *base, fy_config **out,
                        fy_buf *errors) {
  int rc = FY_ECONFIG;
  fy_cfg_budget budget = {.used = 0, .deadline_ns = uv_hrtime() + (uint64_t)FY_CFG_TIME_MS * 1000000};
  lua_State *L = lua_newstate(fy_cfg_alloc, &budget);
  if (L == NULL) {
    fy_buf_printf(errors, "%s: cannot create a Lua state to read it\n", path);
    return FY_ECONFIG;
  }
  fy_cfg_budget *outer = fy_cfg_running;
  fy_cfg_running = &budget;
  luaL_openlibs(L);
  luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
  lua_sethook(L, fy_cfg_hook, LUA_MASKCOUNT, 10000);
  fy_lua_embed_preload(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.config");
  if (lua_pcall(L, 1, 1, 0) != 0) goto fail;
  lua_getfield(L, -1, "load");
  lua_pushstring(L, path);
  if (text) {
    lua_pushstring(L, text);
    lua_pushstring(L, base ? base : ".");
  }
  if (lua_pcall(L, text ? 3 : 1, 2, 0) != 0) goto fail;
  if (lua_isnil(L, -2)) goto fail;
  lua_pop(L, 1);

  fy_config *cfg = fy_calloc(1, sizeof *cfg);
  atomic_init(&cfg->refs, 1);
  int t = lua_gettop(L);
  cfg->path = fy_strdup(path);
  fy_cfg_read_listeners(L, t, cfg);
  fy_cfg_read_groups(L, t, cfg);
  fy_cfg_read_rest(L, t, cfg);
  if (fy_cfg_load_tls(L, cfg, errors) != 0) {
    fy_config_free(cfg);
    goto done;
  }
  *out = cfg;
  rc = FY_OK;
  goto done;
fail:
  fy_cfg_collect_errors(L, path, errors);
done:
  lua_close(L);
  fy_cfg_running = outer;
  return rc;
}

void fy_config_free(fy_config *cfg) {
  if (cfg == NULL || atomic_fetch_sub(&cfg->refs, 1) > 1) return;
  for (size_t i = 0; i < cfg->nlisteners; i++) {
    fy_cfg_listener *l = &cfg->listeners[i];
    for (size_t j = 0; j < l->tls.ncerts; j++) {
      free(l->tls.certs[j].cert);
      free(l->tls.certs[j].key);
      fy_cfg_strings_free(l->tls.certs[j].names, l->tls.certs[j].nnames);
    }
    free(l->tls.certs);
    free(l->tls.client_ca);
    fy_cfg_strings_free(l->tls.ciphers, l->tls.nciphers);
    fy_tls_server_ctx_unref(l->tls_ctx);
    free(cfg->listeners[i].proxy_trusted);
    free(cfg->listeners[i].name);
    free(cfg->listeners[i].host);
  }
  for (size_t i = 0; i < cfg->ngroups; i++) {
    fy_cfg_group *g = &cfg->groups[i];
    for (size_t j = 0; j < g->nservers; j++) {
      free(g->servers[j].name);
      free(g->servers[j].host);
    }
    free(g->servers);
    free(g->check_path);
    free(g->tls.ca);
    free(g->tls.server_name);
    free(g->tls.cert);
    free(g->tls.key);
    fy_cfg_strings_free(g->tls.ciphers, g->tls.nciphers);
    fy_tls_client_ctx_unref(g->tls_ctx);
    free(g->name);
  }
  for (size_t i = 0; i < cfg->npolicies; i++) {
    free(cfg->policies[i]);
    if (cfg->policy_keys) free(cfg->policy_keys[i]);
  }
  free(cfg->policies);
  free(cfg->policy_keys);
  free(cfg->listeners);
  free(cfg->groups);
  free(cfg->admin_host);
  fy_buf_free(&cfg->warnings);
  free(cfg->dns_servers);
  free(cfg->access_file);
  free(cfg->path);
  free(cfg);
}
