/*
 * `ferry test`: busted inside ferry's LuaJIT, plus the ferry.testbed module.
 *
 * The state is made like a generation's (luaL_newstate + fy_lua_openlibs, so
 * the embedded ferry.* modules come from package.preload) and gets the global
 * `arg` a standalone interpreter would set. Then the same line as
 * /usr/bin/busted runs: require 'busted.runner'({ standalone = false }).
 * The chunk is named "@ferry test", which busted takes for the script's file
 * name: it calls itself "ferry test" in its messages and, on failure, raises
 * (an error with no message) instead of calling os.exit, so the state is
 * closed here and the exit status returned to main.
 *
 * ferry.testbed builds requests with the code conn.c uses: the head a
 * spec describes is written as a client sends it and read by req.c's
 * fy_req_reader (llhttp and every check of a request head, with the
 * config's default limits) into a fy_req held in a userdata, and makes
 * one of them the current hook call's request (fy_hook_current), so
 * ferry.core's request handle and the fy_ffi_* functions work on it
 * exactly as during a real hook: no loop runs in `ferry test`. A PROXY
 * protocol header a spec describes is written as a load balancer sends it
 * and read by ferry's parser into its pp, as conn.c does; a TLS session it
 * describes becomes the hook call's tls, which fy_ffi_req_tls reads
 * instead of a socket's session (the server name kept as tls.c keeps it).
 * The hooks are entered in their own phase (route, select, retry,
 * response, log). For the response and log hooks,
 * an upstream response is put where proxy.c keeps it (req.rheaders,
 * req.ustatus) and the request entered in that hook's phase, so ferry.core's
 * res handle and the fy_ffi_res_* functions work on it too.
 */
#include "test_cmd.h"

#include "req.h"
#include "http.h"
#include "lua_host.h"
#include "proxy_protocol.h"
#include "tls.h"
#include "worker.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <uv.h>

#define FY_TESTBED_MT "ferry.testbed.request"

/* Where Debian's lua-busted and its C modules (term.core, system.core) live. */
#if defined(__x86_64__)
#define FY_TEST_TRIPLET "x86_64-linux-gnu"
#elif defined(__aarch64__)
#define FY_TEST_TRIPLET "aarch64-linux-gnu"
#elif defined(__i386__)
#define FY_TEST_TRIPLET "i386-linux-gnu"
#else
#define FY_TEST_TRIPLET ""
#endif
static const char *const fy_test_lpath[] = {"/usr/local/share/lua/5.1/?.lua",
                                            "/usr/local/share/lua/5.1/?/init.lua", "/usr/share/lua/5.1/?.lua",
                                            "/usr/share/lua/5.1/?/init.lua"};
static const char *const fy_test_cpath[] = {
    "/usr/local/lib/lua/5.1/?.so", "/usr/lib/" FY_TEST_TRIPLET "/lua/5.1/?.so", "/usr/lib/lua/5.1/?.so"};

static fy_limits fy_testbed_limits; /* the config's defaults (ferry.config's schema) */

typedef struct fy_testbed_req {
  fy_req req;
  char client_ip[INET6_ADDRSTRLEN];
  int client_port;
  fy_proxy_info *pp;
  fy_listener listener;
  char method[32];
  bool has_tls;
  fy_tls_info tls; /* what the request's TLS session said (strings below and in tls_strings) */
  char sni[256];
  char *tls_strings[4]; /* version, cipher, alpn, client_subject */
  fy_buf wire, head;    /* the head as a client would send it (header lines, then all of it) */
} fy_testbed_req;

/* ---- ferry.testbed --------------------------------------------------------- */

static const char *fy_tb_field_str(lua_State *L, int t, const char *key, const char *def, size_t *len) {
  lua_getfield(L, t, key);
  const char *s = def;
  if (lua_type(L, -1) == LUA_TSTRING)
    s = lua_tolstring(L, -1, len);
  else if (!lua_isnil(L, -1))
    luaL_error(L, "testbed.new: %s must be a string", key);
  else if (len)
    *len = def ? strlen(def) : 0;
  lua_pop(L, 1); /* still referenced by the spec table */
  return s;
}

/* nil and a message: what ferry would do instead of running a hook. */
static int fy_tb_refused_with(lua_State *L, int status, const char *fmt, const char *detail) {
  lua_pushnil(L);
  lua_pushfstring(L, "ferry answers %d before any hook runs: ", status);
  lua_pushfstring(L, fmt, detail);
  lua_concat(L, 2);
  return 2;
}

static int fy_tb_refused(lua_State *L, const char *fmt, const char *detail) {
  return fy_tb_refused_with(L, 400, fmt, detail);
}

static bool fy_tb_target_ok(const char *t, size_t len) {
  if (len == 0) return false;
  for (size_t i = 0; i < len; i++)
    if ((unsigned char)t[i] <= 0x20 || t[i] == 0x7f) return false;
  return true;
}

enum { FY_TB_HEADERS_OK, FY_TB_HEADERS_BAD_NAME, FY_TB_HEADERS_BAD_VALUE };
static const char *const fy_tb_headers_why[] = {NULL, "header name '%s' is not a token",
                                                "the value of header '%s' has a control character"};

/*
 * Adds the list {{name, value}, ...} at stack index idx (nil: none) to h,
 * or as header lines to wire when h is NULL, checked as llhttp and the
 * reader check headers from the wire (so that a line written to wire is one
 * header). Returns FY_TB_HEADERS_OK, or which check failed, *bad then being
 * the header's name (a string of the list, so it stays valid). The stack is
 * as it was.
 */
static int fy_tb_add_headers(lua_State *L, int idx, fy_headers *h, fy_buf *wire, const char *who,
                             const char **bad) {
  if (lua_isnil(L, idx)) return FY_TB_HEADERS_OK;
  luaL_checktype(L, idx, LUA_TTABLE);
  for (int i = 1;; i++) {
    lua_rawgeti(L, idx, i);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      return FY_TB_HEADERS_OK;
    }
    if (!lua_istable(L, -1)) luaL_error(L, "%s: headers[%d] must be {name, value}", who, i);
    lua_rawgeti(L, -1, 1);
    lua_rawgeti(L, -2, 2);
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    const char *val = lua_tolstring(L, -1, &vlen);
    if (name == NULL || val == NULL) luaL_error(L, "%s: headers[%d] must be {name, value}", who, i);
    int rc = !fy_http_name_ok(name, nlen)   ? FY_TB_HEADERS_BAD_NAME
             : !fy_http_value_ok(val, vlen) ? FY_TB_HEADERS_BAD_VALUE
                                            : FY_TB_HEADERS_OK;
    if (rc != FY_TB_HEADERS_OK) {
      *bad = name;
      lua_pop(L, 3);
      return rc;
    }
    if (h) {
      fy_headers_add(h, name, nlen, val, vlen);
    } else {
      fy_buf_append(wire, name, nlen);
      fy_buf_append(wire, ": ", 2);
      fy_buf_append(wire, val, vlen);
      fy_buf_append(wire, "\r\n", 2);
    }
    lua_pop(L, 3);
  }
}

/* A string field of the table at t, or NULL when absent. */
static const char *fy_tb_opt_str(lua_State *L, int t, const char *key, size_t *len) {
  lua_getfield(L, t, key);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, len);
  lua_pop(L, 1); /* still referenced by the table */
  return s;
}

static int fy_tb_opt_int(lua_State *L, int t, const char *key, int def) {
  lua_getfield(L, t, key);
  int v = lua_isnil(L, -1) ? def : (int)luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

static bool fy_tb_opt_bool(lua_State *L, int t, const char *key) {
  lua_getfield(L, t, key);
  bool v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

static void fy_tb_addr(lua_State *L, int t, const char *key, int port, struct sockaddr_storage *ss) {
  size_t len = 0;
  const char *ip = fy_tb_opt_str(L, t, key, &len);
  memset(ss, 0, sizeof *ss);
  if (ip && uv_ip4_addr(ip, port, (struct sockaddr_in *)ss) == 0) return;
  if (ip && uv_ip6_addr(ip, port, (struct sockaddr_in6 *)ss) == 0) return;
  luaL_error(L, "t.request: proxy.%s '%s' is not an IP address", key, ip ? ip : "(none)");
}

/* Appends a v2 TLV (type, then subtype if >= 0, then value) and fixes the header's length field. */
static size_t fy_tb_tlv(uint8_t *buf, size_t n, int type, int subtype, const char *val, size_t vlen) {
  size_t len = vlen + (subtype >= 0);
  buf[n] = (uint8_t)type;
  buf[n + 1] = (uint8_t)(len >> 8);
  buf[n + 2] = (uint8_t)len;
  n += 3;
  if (subtype >= 0) buf[n++] = (uint8_t)subtype;
  memcpy(buf + n, val, vlen);
  n += vlen;
  buf[14] = (uint8_t)((n - 16) >> 8);
  buf[15] = (uint8_t)(n - 16);
  return n;
}

/*
 * The PROXY protocol header of the table at t (ferry.testing's proxy, its
 * defaults filled in: version, local, source, source_port, destination,
 * destination_port, vpce_id, authority, alpn): written as a load balancer
 * sends it, then read by ferry's parser into c->pp, the client address
 * taken from it as conn.c does. NULL, or why ferry would close such a
 * connection.
 */
static const char *fy_tb_proxy(lua_State *L, int t, fy_testbed_req *c) {
  int version = fy_tb_opt_int(L, t, "version", 2);
  bool local = fy_tb_opt_bool(L, t, "local");
  uint8_t buf[FY_PP_MAX_HEADER];
  size_t n;
  if (local) {
    n = fy_proxy_protocol_write(2, NULL, NULL, NULL, buf);
  } else {
    struct sockaddr_storage src, dst;
    fy_tb_addr(L, t, "source", fy_tb_opt_int(L, t, "source_port", 0), &src);
    fy_tb_addr(L, t, "destination", fy_tb_opt_int(L, t, "destination_port", 0), &dst);
    if (src.ss_family != dst.ss_family)
      luaL_error(L,
                 "t.request: proxy.source and proxy.destination: one header's addresses are of one family");
    n = fy_proxy_protocol_write(version, &src, &dst, NULL, buf);
    static const struct {
      const char *key;
      int type, subtype;
    } tlvs[] = {{"vpce_id", 0xEA, 0x01}, {"authority", 0x02, -1}, {"alpn", 0x01, -1}};
    for (size_t i = 0; i < FY_ARRAY_SIZE(tlvs); i++) {
      size_t len = 0;
      const char *v = fy_tb_opt_str(L, t, tlvs[i].key, &len);
      if (v == NULL) continue;
      if (version != 2) luaL_error(L, "t.request: proxy.%s: a v1 header has no TLVs", tlvs[i].key);
      if (n + 4 + len > sizeof buf)
        luaL_error(L, "t.request: proxy.%s: too long for a PROXY header", tlvs[i].key);
      n = fy_tb_tlv(buf, n, tlvs[i].type, tlvs[i].subtype, v, len);
    }
  }
  c->pp = fy_calloc(1, sizeof *c->pp);
  int rc = fy_proxy_protocol_accept(buf, n, c->pp, c->client_ip, sizeof c->client_ip, &c->client_port);
  if (rc <= 0) return rc < 0 ? fy_proxy_protocol_strerror(rc) : "the header is incomplete";
  return NULL;
}

/* The TLS session of the table at t (ferry.testing's tls, defaults filled in), as fy_tls_get_info gives it.
 */
static void fy_tb_tls(lua_State *L, int t, fy_testbed_req *tb) {
  static const char *const keys[] = {"version", "cipher", "alpn", "client_subject"};
  const char **fields[] = {&tb->tls.version, &tb->tls.cipher, &tb->tls.alpn, &tb->tls.client_subject};
  for (size_t i = 0; i < FY_ARRAY_SIZE(keys); i++) {
    size_t len = 0;
    const char *v = fy_tb_opt_str(L, t, keys[i], &len);
    tb->tls_strings[i] = v ? fy_strdup(v) : NULL;
    *fields[i] = tb->tls_strings[i];
  }
  size_t len = 0;
  const char *sni = fy_tb_opt_str(L, t, "sni", &len);
  tb->tls.sni = sni && fy_tls_sni_name((const unsigned char *)sni, len, tb->sni) ? tb->sni : NULL;
  tb->tls.client_verified = fy_tb_opt_bool(L, t, "client_verified");
  tb->tls.resumed = fy_tb_opt_bool(L, t, "resumed");
  tb->has_tls = true;
}

/* Whether the header lines name Host. */
static bool fy_tb_has_host(const char *p, size_t len) {
  const char *end = p + len;
  while (p < end) {
    const char *colon = memchr(p, ':', (size_t)(end - p));
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (colon == NULL || eol == NULL) return false;
    if (fy_http_token_eq(p, (size_t)(colon - p), "host", 4)) return true;
    p = eol + 1;
  }
  return false;
}

/*
 * testbed.new{ method=, target=, headers={{name, value}, ...}, client_addr=,
 *              client_port=, listener=, id=, proxy=, tls= }
 * -> request userdata, or nil and why ferry would refuse such a request.
 */
static int fy_tb_new(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  fy_testbed_req *t = lua_newuserdata(L, sizeof *t);
  memset(t, 0, sizeof *t);
  fy_testbed_req *c = t;
  fy_req *r = &t->req;
  fy_buf_init(&r->url);
  fy_headers_init(&r->headers);
  fy_buf_init(&r->respond_headers);
  fy_buf_init(&r->respond_body);
  fy_headers_init(&r->rheaders);
  fy_buf_init(&t->wire);
  fy_buf_init(&t->head);
  luaL_getmetatable(L, FY_TESTBED_MT);
  lua_setmetatable(L, -2); /* from here __gc frees the buffers */

  lua_getfield(L, 1, "id");
  lua_Number id = lua_isnil(L, -1) ? 1 : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  if (id < 1 || id != (lua_Number)(uint64_t)id)
    return luaL_error(L, "testbed.new: id must be a positive integer");
  r->id = (uint64_t)id;

  size_t len;
  const char *method = fy_tb_field_str(L, 1, "method", "GET", &len);
  if (!fy_http_name_ok(method, len) || len >= sizeof t->method)
    return fy_tb_refused(L, "method '%s' is not a token", method);
  memcpy(t->method, method, len + 1);

  /* The head as a client sends it, read by the reader conn.c uses; a
   * request without a Host header is taken for HTTP/1.0 (where it is
   * allowed) rather than refused. */
  const char *target = fy_tb_field_str(L, 1, "target", "/", &len);
  if (!fy_tb_target_ok(target, len)) return fy_tb_refused(L, "request target '%s'", target);
  fy_buf *wire = &t->wire, *head = &t->head; /* freed by __gc, also when an error is raised */
  lua_getfield(L, 1, "headers");
  const char *bad = NULL;
  int hrc = fy_tb_add_headers(L, lua_gettop(L), NULL, wire, "testbed.new", &bad);
  lua_pop(L, 1);
  if (hrc != FY_TB_HEADERS_OK) return fy_tb_refused(L, fy_tb_headers_why[hrc], bad);
  fy_buf_puts(head, t->method);
  fy_buf_append(head, " ", 1);
  fy_buf_append(head, target, len);
  fy_buf_puts(head, fy_tb_has_host(wire->data, wire->len) ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");
  fy_buf_append(head, wire->data, wire->len);
  fy_buf_append(head, "\r\n", 2);
  fy_req_reader rd;
  fy_req_reader_init(&rd, r, &fy_testbed_limits, NULL, NULL);
  const char *refusal = NULL;
  int status = fy_req_reader_parse_head(&rd, head->data, head->len, &refusal);
  if (status != 0) return fy_tb_refused_with(L, status, "%s", refusal);

  const char *addr = fy_tb_field_str(L, 1, "client_addr", "127.0.0.1", &len);
  unsigned char bin[16];
  if (len >= sizeof c->client_ip ||
      (uv_inet_pton(AF_INET, addr, bin) != 0 && uv_inet_pton(AF_INET6, addr, bin) != 0))
    return luaL_error(L, "testbed.new: client_addr '%s' is not an IP address", addr);
  memcpy(c->client_ip, addr, len + 1);
  lua_getfield(L, 1, "client_port");
  lua_Number port = lua_isnil(L, -1) ? 40000 : luaL_checknumber(L, -1);
  lua_pop(L, 1);
  if (port < 1 || port > 65535 || port != (int)port)
    return luaL_error(L, "testbed.new: client_port must be an integer from 1 to 65535");
  c->client_port = (int)port;

  const char *listener = fy_tb_field_str(L, 1, "listener", "edge", &len);
  if (len >= sizeof t->listener.name) return luaL_error(L, "testbed.new: listener name too long");
  memcpy(t->listener.name, listener, len + 1);
  r->client_ip = c->client_ip;
  r->client_port = c->client_port;
  r->listener = t->listener.name;

  lua_getfield(L, 1, "proxy");
  if (!lua_isnil(L, -1)) {
    const char *why = fy_tb_proxy(L, lua_gettop(L), c);
    if (why) {
      lua_pushnil(L);
      lua_pushfstring(L, "proxy: ferry closes a connection whose PROXY header is like this (%s)", why);
      return 2;
    }
  }
  lua_pop(L, 1);
  r->pp = c->pp;
  r->client_port = c->client_port; /* the PROXY header's source */
  lua_getfield(L, 1, "tls");
  if (!lua_isnil(L, -1)) fy_tb_tls(L, lua_gettop(L), t);
  lua_pop(L, 1);

  lua_settop(L, 2);
  return 1;
}

static fy_testbed_req *fy_tb_check(lua_State *L, int i) { return luaL_checkudata(L, i, FY_TESTBED_MT); }

static int fy_tb_gc(lua_State *L) {
  fy_testbed_req *t = fy_tb_check(L, 1);
  fy_req *r = &t->req;
  if (fy_hook_current.req == r) fy_hook_current = (fy_hook_call){0};
  fy_buf_free(&r->url);
  fy_headers_free(&r->headers);
  fy_buf_free(&r->respond_headers);
  fy_buf_free(&r->respond_body);
  fy_buf_free(&r->log_fields);
  fy_headers_free(&r->rheaders);
  fy_buf_free(&t->wire);
  fy_buf_free(&t->head);
  free(t->pp);
  t->pp = NULL;
  for (size_t i = 0; i < FY_ARRAY_SIZE(t->tls_strings); i++) {
    free(t->tls_strings[i]);
    t->tls_strings[i] = NULL;
  }
  return 0;
}

/*
 * testbed.enter(request [, hook]): it becomes the request whose hook is
 * running. hook is "route" (the default), "select", "retry", "response" or
 * "log": the phase lua_api.c checks (only route may call req:respond;
 * request headers are editable until the request goes upstream; res is
 * readable in response and log, editable only in response).
 */
static int fy_tb_enter(lua_State *L) {
  fy_testbed_req *t = fy_tb_check(L, 1);
  static const char *const hooks[] = {"route", "select", "retry", "response", "log", NULL};
  static const int hook_ids[] = {FY_HOOK_ROUTE, FY_HOOK_SELECT, FY_HOOK_RETRY, FY_HOOK_RESPONSE, FY_HOOK_LOG};
  int hook = hook_ids[luaL_checkoption(L, 2, "route", hooks)];
  fy_hook_current = (fy_hook_call){.req = &t->req, .hook = hook, .tls = t->has_tls ? &t->tls : NULL};
  return 0;
}

/* testbed.leave(): no request is current; handles raise "request is gone". */
static int fy_tb_leave(lua_State *L) {
  fy_hook_current = (fy_hook_call){0};
  return 0;
}

/* testbed.id(request) -> the id a handle of this request carries. */
static int fy_tb_id(lua_State *L) {
  lua_pushnumber(L, (lua_Number)fy_tb_check(L, 1)->req.id);
  return 1;
}

/* Pushes {{name, value}, ...}: the live headers of h (not the removed ones), in order. */
static void fy_tb_push_headers(lua_State *L, const fy_headers *h) {
  lua_newtable(L);
  int n = 0;
  for (size_t i = 0; i < h->n; i++) {
    const fy_hdr *e = &h->v[i];
    if (e->flags & FY_HDR_REMOVED) continue;
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, fy_hdr_name(h, e), e->name_len);
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, fy_hdr_val(h, e), e->val_len);
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, ++n);
  }
}

/* testbed.headers(request) -> {{name, value}, ...}: the live headers, in order. */
static int fy_tb_headers(lua_State *L) {
  fy_tb_push_headers(L, &fy_tb_check(L, 1)->req.headers);
  return 1;
}

/* testbed.response(request) -> status, body, {{name, value}, ...}, or nil. */
static int fy_tb_response(lua_State *L) {
  const fy_req *r = &fy_tb_check(L, 1)->req;
  if (r->respond_status == 0) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushinteger(L, r->respond_status);
  lua_pushlstring(L, r->respond_body.data ? r->respond_body.data : "", r->respond_body.len);
  lua_newtable(L);
  const char *p = r->respond_headers.data, *end = p + r->respond_headers.len;
  for (int n = 1; p && p < end; n++) { /* "Name: value\r\n" lines, as lua_api.c writes them */
    const char *colon = memchr(p, ':', (size_t)(end - p));
    const char *eol = memchr(p, '\r', (size_t)(end - p));
    if (colon == NULL || eol == NULL || colon > eol) break;
    lua_createtable(L, 2, 0);
    lua_pushlstring(L, p, (size_t)(colon - p));
    lua_rawseti(L, -2, 1);
    lua_pushlstring(L, colon + 2, (size_t)(eol - colon - 2));
    lua_rawseti(L, -2, 2);
    lua_rawseti(L, -2, n);
    p = eol + 2;
  }
  return 3;
}

/*
 * testbed.set_response(request, status, {{name, value}, ...} [, bytes])
 * -> true, or nil and why ferry would not take such a response from an
 * upstream. Fills what proxy.c has when the response hook runs: the
 * upstream's status (req.ustatus) and headers (req.rheaders), nothing sent
 * yet. With bytes, what it has when the log hook runs: status is also what
 * the client got (req.status) and bytes what was sent to it (req.bytes_out).
 */
static int fy_tb_set_response(lua_State *L) {
  fy_testbed_req *t = fy_tb_check(L, 1);
  lua_Integer status = luaL_checkinteger(L, 2);
  luaL_argcheck(L, status >= 100 && status <= 999, 2, "a status is 100 to 999");
  bool sent = !lua_isnoneornil(L, 4);
  lua_Number bytes = sent ? luaL_checknumber(L, 4) : 0;
  luaL_argcheck(L, bytes >= 0 && bytes < 9007199254740992.0 && bytes == (lua_Number)(uint64_t)bytes, 4,
                "bytes is a whole number");
  fy_req *c = &t->req;
  fy_headers_reset(&c->rheaders);
  const char *bad = NULL;
  int rc = fy_tb_add_headers(L, 3, &c->rheaders, NULL, "testbed.set_response", &bad);
  if (rc != FY_TB_HEADERS_OK) {
    fy_headers_reset(&c->rheaders);
    lua_pushnil(L);
    lua_pushfstring(L, fy_tb_headers_why[rc], bad);
    return 2;
  }
  c->ustatus = (int)status;
  c->status = sent ? (int)status : 0;
  c->bytes_out = (uint64_t)bytes;
  lua_pushboolean(L, 1);
  return 1;
}

/* testbed.strip_response(request): what proxy.c does to the headers when it writes the head. */
static int fy_tb_strip_response(lua_State *L) {
  fy_http_strip_hop_by_hop(&fy_tb_check(L, 1)->req.rheaders);
  return 0;
}

/* testbed.response_head(request) -> status, {{name, value}, ...}: the response's live head. */
static int fy_tb_response_head(lua_State *L) {
  fy_req *c = &fy_tb_check(L, 1)->req;
  lua_pushinteger(L, c->ustatus);
  fy_tb_push_headers(L, &c->rheaders);
  return 2;
}

/* The default of limits.<key> in ferry.config's schema, which the config loader fills in. */
static size_t fy_tb_limit_default(lua_State *L, const char *key) {
  lua_getglobal(L, "require");
  lua_pushliteral(L, "ferry.config");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "schema");
  lua_getfield(L, -1, "fields");
  lua_getfield(L, -1, "limits");
  lua_getfield(L, -1, "fields");
  lua_getfield(L, -1, key);
  lua_getfield(L, -1, "default");
  size_t v = (size_t)luaL_checknumber(L, -1);
  lua_pop(L, 7);
  return v;
}

static int fy_tb_open(lua_State *L) {
  fy_testbed_limits.max_request_line = fy_tb_limit_default(L, "max_request_line");
  fy_testbed_limits.max_header_bytes = fy_tb_limit_default(L, "max_header_bytes");
  fy_testbed_limits.max_headers = fy_tb_limit_default(L, "max_headers");
  if (luaL_newmetatable(L, FY_TESTBED_MT)) {
    lua_pushcfunction(L, fy_tb_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushliteral(L, "ferry.testbed request");
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
      {"new", fy_tb_new},
      {"enter", fy_tb_enter},
      {"leave", fy_tb_leave},
      {"id", fy_tb_id},
      {"headers", fy_tb_headers},
      {"response", fy_tb_response},
      {"set_response", fy_tb_set_response},
      {"strip_response", fy_tb_strip_response},
      {"response_head", fy_tb_response_head},
      {NULL, NULL},
  };
  lua_newtable(L);
  luaL_register(L, NULL, fns);
  return 1;
}

/* ---- the command ---------------------------------------------------------- */

/* Appends each entry of dirs to package[field] unless it is there already. */
static void fy_test_add_path(lua_State *L, const char *field, const char *const *dirs, size_t n) {
  lua_getglobal(L, "package");
  for (size_t i = 0; i < n; i++) {
    lua_getfield(L, -1, field);
    const char *cur = lua_tostring(L, -1);
    bool present = cur && strstr(cur, dirs[i]) != NULL;
    lua_pop(L, 1);
    if (present || strstr(dirs[i], "//") != NULL) continue;
    lua_getfield(L, -1, field);
    lua_pushliteral(L, ";");
    lua_pushstring(L, dirs[i]);
    lua_concat(L, 3);
    lua_setfield(L, -2, field);
  }
  lua_pop(L, 1);
}

/* Message handler: a traceback for string errors; busted's own failure exit
 * raises nil, which is passed through untouched. */
static int fy_test_traceback(lua_State *L) {
  if (!lua_isstring(L, 1)) return 1;
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int fy_cmd_test(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "ferry test: cannot create a Lua state\n");
    return 1;
  }
  fy_lua_openlibs(L);
  fy_test_add_path(L, "path", fy_test_lpath, FY_ARRAY_SIZE(fy_test_lpath));
  fy_test_add_path(L, "cpath", fy_test_cpath, FY_ARRAY_SIZE(fy_test_cpath));

  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, fy_tb_open);
  lua_setfield(L, -2, "ferry.testbed");
  lua_pop(L, 2);

  /* arg as `luajit script a b` sets it: arg[-1] the interpreter, arg[0] the script. */
  lua_createtable(L, argc > 2 ? argc - 2 : 0, 2);
  lua_pushstring(L, argv[0]);
  lua_rawseti(L, -2, -1);
  lua_pushliteral(L, "ferry test");
  lua_rawseti(L, -2, 0);
  for (int i = 2; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");

  /* Counters specs' policies declare count here: there is no generation in `ferry test`. */
  fy_policy_metrics counters = {0};
  fy_policy_metrics_direct = &counters;
  static const char runner[] = "require 'busted.runner'({ standalone = false })\n";
  lua_pushcfunction(L, fy_test_traceback);
  int status = 0;
  if (luaL_loadbuffer(L, runner, sizeof runner - 1, "@ferry test") != 0 || lua_pcall(L, 0, 0, -2) != 0) {
    /* nil: busted has printed its summary and reports failures; else a real error */
    if (lua_isstring(L, -1)) fprintf(stderr, "ferry test: %s\n", lua_tostring(L, -1));
    status = 1;
  }
  fflush(stdout);
  lua_close(L);
  fy_hook_current = (fy_hook_call){0};
  fy_policy_metrics_direct = NULL;
  fy_policy_metrics_free(&counters);
  return status;
}
