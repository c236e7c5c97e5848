/*
 * The C functions that lua/ferry/core.lua calls through the FFI.
 *
 * Each takes the request id that Lua was given and looks the request up on
 * every call: only the request whose hook is running is reachable, so a
 * handle that Lua kept after its hook returned fails cleanly. The surface
 * (structs, return codes, field numbers) is declared in ffi.h, whose text is
 * also ferry.core's cdef.
 */
#include "ffi.h"

#include "req.h"
#include "tls.h"
#include "worker.h"
#include "log.h"

#include <lauxlib.h>
#include <lua.h>

#include <stdio.h>

_Static_assert(sizeof(((fy_ffi_proxy *)0)->source) == INET6_ADDRSTRLEN,
               "fy_ffi_proxy.source: INET6_ADDRSTRLEN");

static fy_req *fy_ffi_req(double id) {
  fy_req *r = fy_hook_current.req;
  return r && (double)r->id == id ? r : NULL;
}

int fy_ffi_req_str(double id, int field, const char **out, size_t *len) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  switch (field) {
  case FY_FFI_FIELD_METHOD: *out = r->method, *len = strlen(r->method); return 1;
  case FY_FFI_FIELD_HOST: *out = r->host, *len = r->host_len; return 1;
  case FY_FFI_FIELD_PATH: *out = r->target.path, *len = r->target.path_len; return 1;
  case FY_FFI_FIELD_QUERY: *out = r->target.query, *len = r->target.query_len; return r->target.query != NULL;
  case FY_FFI_FIELD_URI: *out = r->url.data, *len = r->url.len; return 1;
  case FY_FFI_FIELD_CLIENT_ADDR: *out = r->client_ip, *len = strlen(r->client_ip); return 1;
  case FY_FFI_FIELD_LISTENER: *out = r->listener, *len = strlen(r->listener); return 1;
  default: return FY_FFI_EINVAL;
  }
}

int fy_ffi_req_proxy(double id, fy_ffi_proxy *out) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  const fy_proxy_info *pp = r->pp;
  if (pp == NULL) return 0;
  memset(out, 0, sizeof *out);
  out->version = pp->version;
  out->local = pp->local;
  if (!pp->local && pp->family != AF_UNSPEC) { /* the text fy_proxy_protocol_accept made */
    _Static_assert(sizeof out->source == sizeof pp->src_text, "req.proxy.source holds an address's text");
    memcpy(out->source, pp->src_text, sizeof out->source);
    memcpy(out->destination, pp->dst_text, sizeof out->destination);
    out->source_port = pp->src_port;
    out->destination_port = pp->dst_port;
  }
  out->vpce_id = pp->vpce_id;
  out->authority = pp->authority;
  out->alpn = pp->alpn;
  return 1;
}

int fy_ffi_req_tls(double id, fy_ffi_tls *out) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  fy_tls_info info;
  if (fy_hook_current.tls)
    info = *fy_hook_current.tls;
  else if (!fy_tls_get_info(r->tls, &info))
    return 0;
  out->sni = info.sni;
  out->version = info.version;
  out->cipher = info.cipher;
  out->alpn = info.alpn;
  out->client_subject = info.client_subject;
  out->client_verified = info.client_verified;
  out->resumed = info.resumed;
  return 1;
}

/* Lua made req.ctx for this request: release it when the request ends. */
int fy_ffi_req_ctx(double id) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  r->has_ctx = true;
  return 0;
}

int fy_ffi_req_client_port(double id) {
  fy_req *r = fy_ffi_req(id);
  return r ? r->client_port : FY_FFI_EGONE;
}

/* The request's Content-Length: 1 (in *out), or 0 when the body is chunked or absent. */
int fy_ffi_req_content_length(double id, double *out) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (r->chunked || !r->has_content_length) return 0;
  *out = (double)r->content_length;
  return 1;
}

/* The nth (0-based) value of a header: 1 found, 0 absent. */
int fy_ffi_req_header_get(double id, const char *name, size_t nlen, int nth, const char **out, size_t *len) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (!fy_http_name_ok(name, nlen)) return FY_FFI_EINVAL;
  ssize_t i = fy_headers_find(&r->headers, name, nlen, 0);
  for (; i >= 0 && nth > 0; nth--)
    i = fy_headers_find(&r->headers, name, nlen, (size_t)i + 1);
  if (i < 0) return 0;
  *out = fy_hdr_val(&r->headers, &r->headers.v[i]);
  *len = r->headers.v[i].val_len;
  return 1;
}

int fy_ffi_req_header_set(double id, int mode, const char *name, size_t nlen, const char *val, size_t vlen) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  /* By the response hook the request has gone upstream: an edit would change nothing (as in OpenResty). */
  int hook = fy_hook_current.hook;
  if (hook == FY_HOOK_RESPONSE || hook == FY_HOOK_LOG) return FY_FFI_EPHASE;
  if (!fy_http_name_ok(name, nlen) || (mode != FY_FFI_HDR_REMOVE && !fy_http_value_ok(val, vlen)))
    return FY_FFI_EINVAL;
  if (mode != FY_FFI_HDR_ADD) fy_headers_remove(&r->headers, name, nlen);
  if (mode != FY_FFI_HDR_REMOVE) fy_headers_add(&r->headers, name, nlen, val, vlen);
  return 0;
}

int fy_ffi_req_respond_header(double id, const char *name, size_t nlen, const char *val, size_t vlen) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (!fy_http_name_ok(name, nlen) || !fy_http_value_ok(val, vlen)) return FY_FFI_EINVAL;
  if (fy_http_is_hop_by_hop(name, nlen)) return 0; /* ferry frames the response itself */
  fy_buf_append(&r->respond_headers, name, nlen);
  fy_buf_append(&r->respond_headers, ": ", 2);
  fy_buf_append(&r->respond_headers, val, vlen);
  fy_buf_append(&r->respond_headers, "\r\n", 2);
  return 0;
}

int fy_ffi_req_respond(double id, int status, const char *body, size_t blen) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (fy_hook_current.hook != FY_HOOK_ROUTE) return FY_FFI_EROUTE;
  if (r->respond_status) return FY_FFI_EPHASE;
  if (status < 200 || status > 599) return FY_FFI_EINVAL;
  r->respond_status = status;
  fy_buf_reset(&r->respond_body);
  fy_buf_append(&r->respond_body, body, blen);
  return 0;
}

/* ---- the response, for the response and log hooks ------------------------ */

static fy_headers *fy_ffi_res_headers(fy_req *r) { return &r->rheaders; }

static bool fy_ffi_res_phase(bool edit) {
  int hook = fy_hook_current.hook;
  return hook == FY_HOOK_RESPONSE || (!edit && hook == FY_HOOK_LOG);
}

/* status, and what the response was when the log hook runs: bytes sent to the client. */
int fy_ffi_res_info(double id, int *status, double *bytes) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (!fy_ffi_res_phase(false)) return FY_FFI_EPHASE;
  *status = r->status ? r->status : r->ustatus;
  *bytes = (double)r->bytes_out;
  return 0;
}

int fy_ffi_res_header_get(double id, const char *name, size_t nlen, int nth, const char **out, size_t *len) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (!fy_ffi_res_phase(false)) return FY_FFI_EPHASE;
  if (!fy_http_name_ok(name, nlen)) return FY_FFI_EINVAL;
  fy_headers *h = fy_ffi_res_headers(r);
  ssize_t i = fy_headers_find(h, name, nlen, 0);
  for (; i >= 0 && nth > 0; nth--)
    i = fy_headers_find(h, name, nlen, (size_t)i + 1);
  if (i < 0) return 0;
  *out = fy_hdr_val(h, &h->v[i]);
  *len = h->v[i].val_len;
  return 1;
}

int fy_ffi_res_header_set(double id, int mode, const char *name, size_t nlen, const char *val, size_t vlen) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (!fy_ffi_res_phase(true)) return FY_FFI_EPHASE;
  if (!fy_http_name_ok(name, nlen) || (mode != FY_FFI_HDR_REMOVE && !fy_http_value_ok(val, vlen)))
    return FY_FFI_EINVAL;
  if (fy_http_is_hop_by_hop(name, nlen)) return FY_FFI_EINVAL; /* framing is ferry's */
  fy_headers *h = fy_ffi_res_headers(r);
  if (mode != FY_FFI_HDR_ADD) fy_headers_remove(h, name, nlen);
  if (mode != FY_FFI_HDR_REMOVE) fy_headers_add(h, name, nlen, val, vlen);
  return 0;
}

void fy_ffi_log(int level, const char *msg, size_t len) {
  if (level < FY_LOG_DEBUG || level > FY_LOG_ERROR) level = FY_LOG_INFO;
  const fy_req *r = fy_hook_current.req;
  if (r)
    fy_log(level, "request %llu: %.*s", (unsigned long long)r->id, (int)len, msg);
  else
    fy_log(level, "%.*s", (int)len, msg);
}

int fy_ffi_group_server(double id, int group, int index, fy_ffi_server *out) {
  fy_req *r = fy_ffi_req(id);
  if (r == NULL) return FY_FFI_EGONE;
  if (group < 0 || (size_t)group >= r->gen->cfg->ngroups) return FY_FFI_EINVAL;
  fy_group *g = &r->gen->groups[group];
  if (index < 0 || (size_t)index >= g->nservers) return 0;
  fy_server *s = g->servers[index];
  uint64_t now = uv_now(r->gen->w->loop); /* the worker the request's generation serves on */
  *out = (fy_ffi_server){s->name,
                         strlen(s->name),
                         s->addr_text,
                         strlen(s->addr_text),
                         (int)s->weight,
                         (int)s->active,
                         fy_server_in_service(s, now),
                         (int)atomic_load_explicit(&s->health->fails, memory_order_relaxed),
                         s->ewma_ms};
  return 1;
}

/* ---- the layouts ferry.core checks its cdef against when it loads --------- */

#define FY_LAYOUT_SIZE(t)                                                                                    \
  { #t, NULL, 0, sizeof(t) }
#define FY_LAYOUT_FIELD(t, f)                                                                                \
  { #t, #f, offsetof(t, f), sizeof(((t *)0)->f) }

static const fy_ffi_layout fy_ffi_layouts[] = {
    FY_LAYOUT_SIZE(fy_ffi_proxy),
    FY_LAYOUT_FIELD(fy_ffi_proxy, version),
    FY_LAYOUT_FIELD(fy_ffi_proxy, local),
    FY_LAYOUT_FIELD(fy_ffi_proxy, source_port),
    FY_LAYOUT_FIELD(fy_ffi_proxy, destination_port),
    FY_LAYOUT_FIELD(fy_ffi_proxy, source),
    FY_LAYOUT_FIELD(fy_ffi_proxy, destination),
    FY_LAYOUT_FIELD(fy_ffi_proxy, vpce_id),
    FY_LAYOUT_FIELD(fy_ffi_proxy, authority),
    FY_LAYOUT_FIELD(fy_ffi_proxy, alpn),
    FY_LAYOUT_SIZE(fy_ffi_tls),
    FY_LAYOUT_FIELD(fy_ffi_tls, sni),
    FY_LAYOUT_FIELD(fy_ffi_tls, version),
    FY_LAYOUT_FIELD(fy_ffi_tls, cipher),
    FY_LAYOUT_FIELD(fy_ffi_tls, alpn),
    FY_LAYOUT_FIELD(fy_ffi_tls, client_subject),
    FY_LAYOUT_FIELD(fy_ffi_tls, client_verified),
    FY_LAYOUT_FIELD(fy_ffi_tls, resumed),
    FY_LAYOUT_SIZE(fy_ffi_server),
    FY_LAYOUT_FIELD(fy_ffi_server, name),
    FY_LAYOUT_FIELD(fy_ffi_server, name_len),
    FY_LAYOUT_FIELD(fy_ffi_server, address),
    FY_LAYOUT_FIELD(fy_ffi_server, address_len),
    FY_LAYOUT_FIELD(fy_ffi_server, weight),
    FY_LAYOUT_FIELD(fy_ffi_server, active),
    FY_LAYOUT_FIELD(fy_ffi_server, in_service),
    FY_LAYOUT_FIELD(fy_ffi_server, fails),
    FY_LAYOUT_FIELD(fy_ffi_server, latency_ms),
    FY_LAYOUT_SIZE(fy_ffi_stream),
    FY_LAYOUT_FIELD(fy_ffi_stream, sni),
    FY_LAYOUT_FIELD(fy_ffi_stream, alpn),
    FY_LAYOUT_FIELD(fy_ffi_stream, listener),
    FY_LAYOUT_FIELD(fy_ffi_stream, client_addr),
    FY_LAYOUT_FIELD(fy_ffi_stream, client_port),
    FY_LAYOUT_FIELD(fy_ffi_stream, local_port),
    FY_LAYOUT_FIELD(fy_ffi_stream, has_proxy),
    FY_LAYOUT_SIZE(fy_ffi_layout),
    FY_LAYOUT_FIELD(fy_ffi_layout, type),
    FY_LAYOUT_FIELD(fy_ffi_layout, field),
    FY_LAYOUT_FIELD(fy_ffi_layout, offset),
    FY_LAYOUT_FIELD(fy_ffi_layout, size),
    FY_LAYOUT_SIZE(fy_ffi_api),
    FY_LAYOUT_FIELD(fy_ffi_api, fy_ffi_abi_layout),
    FY_LAYOUT_FIELD(fy_ffi_api, fy_ffi_metric_reset),
};

const fy_ffi_layout *fy_ffi_abi_layout(int *n) {
  *n = (int)(sizeof fy_ffi_layouts / sizeof fy_ffi_layouts[0]);
  return fy_ffi_layouts;
}

/* ---- the same, as Lua C functions --------------------------------------- */

/*
 * Policy code runs interpreted (see docs/design.md), and there an FFI call
 * is slow: the clib lookup, argument conversion and the cdata boxes that
 * reading out-parameters makes cost about 5,000 instructions a field, where
 * a Lua C function costs a few hundred. ferry.core uses these for the
 * accessors every request reaches; each returns the fy_ffi_* code first.
 */
static int fy_lua_native_str(lua_State *L) {
  const char *s = NULL;
  size_t len = 0;
  int rc = fy_ffi_req_str(lua_tonumber(L, 1), (int)lua_tointeger(L, 2), &s, &len);
  lua_pushinteger(L, rc);
  if (rc == 1)
    lua_pushlstring(L, s, len);
  else
    lua_pushnil(L);
  return 2;
}

/* (id, name, nth) -> code, value: one value of a request or response header. */
static int fy_lua_native_header_get(lua_State *L,
                                    int (*get)(double, const char *, size_t, int, const char **, size_t *)) {
  size_t nlen = 0, len = 0;
  const char *name = lua_tolstring(L, 2, &nlen), *v = NULL;
  int rc = name ? get(lua_tonumber(L, 1), name, nlen, (int)lua_tointeger(L, 3), &v, &len) : FY_FFI_EINVAL;
  lua_pushinteger(L, rc);
  if (rc == 1)
    lua_pushlstring(L, v, len);
  else
    lua_pushnil(L);
  return 2;
}

/* (id, mode, name, value) -> code: set, add or remove a request or response header. */
static int fy_lua_native_header_set(lua_State *L,
                                    int (*set)(double, int, const char *, size_t, const char *, size_t)) {
  size_t nlen = 0, vlen = 0;
  const char *name = lua_tolstring(L, 3, &nlen), *v = lua_tolstring(L, 4, &vlen);
  int rc = name && v ? set(lua_tonumber(L, 1), (int)lua_tointeger(L, 2), name, nlen, v, vlen) : FY_FFI_EINVAL;
  lua_pushinteger(L, rc);
  return 1;
}

static int fy_lua_native_req_header_get(lua_State *L) {
  return fy_lua_native_header_get(L, fy_ffi_req_header_get);
}
static int fy_lua_native_req_header_set(lua_State *L) {
  return fy_lua_native_header_set(L, fy_ffi_req_header_set);
}
static int fy_lua_native_res_header_get(lua_State *L) {
  return fy_lua_native_header_get(L, fy_ffi_res_header_get);
}
static int fy_lua_native_res_header_set(lua_State *L) {
  return fy_lua_native_header_set(L, fy_ffi_res_header_set);
}

/* req.proxy's keys, the closure's upvalues (interned once, not per request). */
enum {
  FY_PK_VERSION = 1,
  FY_PK_LOCAL,
  FY_PK_SOURCE,
  FY_PK_SOURCE_PORT,
  FY_PK_DESTINATION,
  FY_PK_DESTINATION_PORT,
  FY_PK_VPCE_ID,
  FY_PK_AUTHORITY,
  FY_PK_ALPN,
  FY_PK_COUNT
};
static const char *const fy_proxy_keys[FY_PK_COUNT] = {[FY_PK_VERSION] = "version",
                                                       [FY_PK_LOCAL] = "local",
                                                       [FY_PK_SOURCE] = "source",
                                                       [FY_PK_SOURCE_PORT] = "source_port",
                                                       [FY_PK_DESTINATION] = "destination",
                                                       [FY_PK_DESTINATION_PORT] = "destination_port",
                                                       [FY_PK_VPCE_ID] = "vpce_id",
                                                       [FY_PK_AUTHORITY] = "authority",
                                                       [FY_PK_ALPN] = "alpn"};

/* t[upvalue key] = the value on top of the stack (t below it). */
static void fy_lua_native_set(lua_State *L, int key) {
  lua_pushvalue(L, lua_upvalueindex(key));
  lua_insert(L, -2);
  lua_rawset(L, -3);
}

static void fy_lua_native_field(lua_State *L, int key, const char *v) {
  if (v == NULL || v[0] == '\0') return; /* absent fields are nil */
  lua_pushstring(L, v);
  fy_lua_native_set(L, key);
}

static void fy_lua_native_int(lua_State *L, int key, int v) {
  if (v == 0) return;
  lua_pushinteger(L, v);
  fy_lua_native_set(L, key);
}

/* (id) -> code, table: req.proxy, made here in one go. */
static int fy_lua_native_proxy(lua_State *L) {
  fy_ffi_proxy p;
  int rc = fy_ffi_req_proxy(lua_tonumber(L, 1), &p);
  lua_pushinteger(L, rc);
  if (rc != 1) return 1;
  lua_createtable(L, 0, FY_PK_COUNT - 1);
  lua_pushinteger(L, p.version);
  fy_lua_native_set(L, FY_PK_VERSION);
  lua_pushboolean(L, p.local == 1);
  fy_lua_native_set(L, FY_PK_LOCAL);
  fy_lua_native_field(L, FY_PK_SOURCE, p.source);
  fy_lua_native_int(L, FY_PK_SOURCE_PORT, p.source_port);
  fy_lua_native_field(L, FY_PK_DESTINATION, p.destination);
  fy_lua_native_int(L, FY_PK_DESTINATION_PORT, p.destination_port);
  fy_lua_native_field(L, FY_PK_VPCE_ID, p.vpce_id);
  fy_lua_native_field(L, FY_PK_AUTHORITY, p.authority);
  fy_lua_native_field(L, FY_PK_ALPN, p.alpn);
  return 2;
}

/* (id) -> code, table: req.tls. */
static int fy_lua_native_tls(lua_State *L) {
  fy_ffi_tls t;
  int rc = fy_ffi_req_tls(lua_tonumber(L, 1), &t);
  lua_pushinteger(L, rc);
  if (rc != 1) return 1;
  lua_createtable(L, 0, 7);
  const char *names[] = {"sni", "version", "cipher", "alpn", "client_subject"};
  const char *vals[] = {t.sni, t.version, t.cipher, t.alpn, t.client_subject};
  for (int i = 0; i < 5; i++) {
    if (vals[i] == NULL) continue;
    lua_pushstring(L, vals[i]);
    lua_setfield(L, -2, names[i]);
  }
  lua_pushboolean(L, t.client_verified == 1);
  lua_setfield(L, -2, "client_verified");
  lua_pushboolean(L, t.resumed == 1);
  lua_setfield(L, -2, "resumed");
  return 2;
}

static int fy_lua_native_ctx(lua_State *L) {
  lua_pushinteger(L, fy_ffi_req_ctx(lua_tonumber(L, 1)));
  return 1;
}

void fy_lua_api_open(lua_State *L) {
  static const luaL_Reg fns[] = {{"str", fy_lua_native_str},
                                 {"req_header_get", fy_lua_native_req_header_get},
                                 {"req_header_set", fy_lua_native_req_header_set},
                                 {"res_header_get", fy_lua_native_res_header_get},
                                 {"res_header_set", fy_lua_native_res_header_set},
                                 {"tls", fy_lua_native_tls},
                                 {"ctx", fy_lua_native_ctx},
                                 {NULL, NULL}};
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  for (int k = 1; k < FY_PK_COUNT; k++)
    lua_pushstring(L, fy_proxy_keys[k]);
  lua_pushcclosure(L, fy_lua_native_proxy, FY_PK_COUNT - 1);
  lua_setfield(L, -2, "proxy");
  lua_setfield(L, -2, "ferry.native");
  lua_pop(L, 2);
}
