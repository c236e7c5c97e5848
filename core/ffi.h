/*
 * The FFI surface: everything lua/ferry/core.lua binds with LuaJIT's FFI,
 * declared once. The functions are defined in lua_api.c; they take the id
 * of the request whose hook is running and return >= 0 on success or one of
 * the FY_FFI_E* codes.
 *
 * The text between the FY_FFI_CDEF markers is what ferry.core hands to
 * ffi.cdef: CMake embeds it as the module ferry.cdef (cmake/embed_lua.cmake),
 * so Lua never carries a copy. It must stay plain declarations that LuaJIT's
 * C parser takes: no preprocessor lines, no macros. ferry.core reads the
 * return codes, field numbers and hook bits from the enums below (by name,
 * from the same text), and when it loads it compares the layout of every
 * struct as LuaJIT sees it with what the C compiler made (fy_ffi_abi_layout)
 * and refuses to load on any difference. Lua calls the functions through
 * the table fy_ffi_api, never by symbol: none of them is exported.
 */
#ifndef FERRY_FFI_H
#define FERRY_FFI_H

#include <stddef.h>
#include <stdint.h>

/* FY_FFI_CDEF_BEGIN */
enum {
  FY_FFI_EGONE = -1,  /* the request is not the one whose hook is running */
  FY_FFI_EPHASE = -2, /* not allowed in this hook */
  FY_FFI_EINVAL = -3, /* invalid argument */
  FY_FFI_EROUTE = -4, /* only route(req) may do this (req:respond) */
};

/*
 * What ferry.core's route, select, retry, response, log_hook and route_stream
 * return to lua_host.c first, besides an answer >= 0: no answer (route:
 * answered with req:respond(); select: the balancer picks; route_stream:
 * close), or the hook failed (the message comes second).
 */
enum { FY_HOOK_NO_ANSWER = -1, FY_HOOK_FAILED = -2 };

/* fy_ffi_req_str: the request's string fields; Lua names them in lower case (FY_FFI_FIELD_HOST: req.host). */
enum {
  FY_FFI_FIELD_METHOD,
  FY_FFI_FIELD_HOST,
  FY_FFI_FIELD_PATH,
  FY_FFI_FIELD_QUERY,
  FY_FFI_FIELD_URI,
  FY_FFI_FIELD_CLIENT_ADDR,
  FY_FFI_FIELD_LISTENER,
};

/* The mode of fy_ffi_req_header_set and fy_ffi_res_header_set. */
enum { FY_FFI_HDR_SET, FY_FFI_HDR_ADD, FY_FFI_HDR_REMOVE };

/* What ferry.core.hooks(policy) returns: the hooks a policy has, one bit each (FY_HOOK_HAS_SELECT: select).
 */
enum {
  FY_HOOK_HAS_SELECT = 1,
  FY_HOOK_HAS_RETRY = 2,
  FY_HOOK_HAS_RESPONSE = 4,
  FY_HOOK_HAS_LOG = 8,
  FY_HOOK_HAS_ROUTE = 16,
  FY_HOOK_HAS_ROUTE_STREAM = 32,
};

/* What the PROXY protocol header said: 1 filled, 0 when the listener takes none.
 * source and destination are INET6_ADDRSTRLEN (46) bytes: lua_api.c asserts it. */
typedef struct fy_ffi_proxy {
  int version, local, source_port, destination_port;
  char source[46], destination[46];
  const char *vpce_id, *authority, *alpn;
} fy_ffi_proxy;

/* The TLS session of an https listener's connection: 1 filled, 0 for plain HTTP. */
typedef struct fy_ffi_tls {
  const char *sni, *version, *cipher, *alpn, *client_subject;
  int client_verified, resumed;
} fy_ffi_tls;

/* The view of one server of a group for select(): 1 filled, 0 past the end. */
typedef struct fy_ffi_server {
  const char *name;
  size_t name_len;
  const char *address;
  size_t address_len;
  int weight, active, in_service, fails;
  double latency_ms;
} fy_ffi_server;

/* A tcp listener's connection, for route_stream(conn). */
typedef struct fy_ffi_stream {
  const char *sni, *alpn, *listener, *client_addr;
  int client_port, local_port, has_proxy;
} fy_ffi_stream;

/* One line of the struct layouts C compiled: field NULL for the struct's size. */
typedef struct fy_ffi_layout {
  const char *type, *field;
  size_t offset, size;
} fy_ffi_layout;

/* The layouts of the structs above: *n entries. */
const fy_ffi_layout *fy_ffi_abi_layout(int *n);

int fy_ffi_req_str(double id, int field, const char **out, size_t *len);
int fy_ffi_req_client_port(double id);
/* The request's Content-Length: 1 (in *out), or 0 when the body is chunked or absent. */
int fy_ffi_req_content_length(double id, double *out);
/* The nth (0-based) value of a header: 1 found, 0 absent. */
int fy_ffi_req_header_get(double id, const char *name, size_t nlen, int nth, const char **out, size_t *len);
int fy_ffi_req_header_set(double id, int mode, const char *name, size_t nlen, const char *val, size_t vlen);
int fy_ffi_req_respond_header(double id, const char *name, size_t nlen, const char *val, size_t vlen);
int fy_ffi_req_respond(double id, int status, const char *body, size_t blen);
/* Lua made req.ctx for this request: C calls ferry.core.release(id) when the request ends. */
int fy_ffi_req_ctx(double id);
int fy_ffi_req_proxy(double id, fy_ffi_proxy *out);
int fy_ffi_req_tls(double id, fy_ffi_tls *out);
int fy_ffi_group_server(double id, int group, int index, fy_ffi_server *out);
/* status, and what the response was when the log hook runs: bytes sent to the client. */
int fy_ffi_res_info(double id, int *status, double *bytes);
int fy_ffi_res_header_get(double id, const char *name, size_t nlen, int nth, const char **out, size_t *len);
int fy_ffi_res_header_set(double id, int mode, const char *name, size_t nlen, const char *val, size_t vlen);
int fy_ffi_stream_info(double id, fy_ffi_stream *out);
const char *fy_ffi_stream_vpce(double id);
void fy_ffi_log(int level, const char *msg, size_t len);
/*
 * req:log_field(name, value): kind 0 a string (escaped by C), 1 a number
 * already formatted by Lua (finite), 2 true, 3 false. 0, FY_FFI_EGONE, or
 * FY_FFI_EINVAL when the request's fields would pass their size cap
 * (access_log.c).
 */
int fy_ffi_req_log_field(double id, const char *name, size_t nlen, int kind, const char *val, size_t vlen);
/*
 * ferry.metrics (policy_metrics.c). labels and values are NUL-ended strings
 * back to back. declare: the counter's id >= 0, or < 0 with the reason in
 * msg; only while a policy loads (or outside any hook under ferry test).
 * inc: 0, or < 0 from a phase that may not count. slot: in a hook of a
 * worker's generation, the series' counter itself, which stays put for the
 * worker's life (Lua keeps it and adds to it); NULL elsewhere (under ferry
 * test, or when it cannot count), where Lua calls inc. value and reset are
 * for specs; reset is refused where ferry serves.
 */
int fy_ffi_metric_declare(const char *name, const char *help, const char *labels, char *msg, size_t msglen);
int fy_ffi_metric_inc(int id, const char *values, size_t len, unsigned nvalues, double n);
int fy_ffi_metric_value(const char *name, const char *values, size_t len, unsigned nvalues, double *out);
int fy_ffi_metric_reset(void);
uint64_t *fy_ffi_metric_slot(int id, const char *values, size_t len, unsigned nvalues);
/*
 * The functions above, as Lua reaches them: lua_host.c hands every state
 * the address of one constant table (package.loaded["ferry.api"], a light
 * userdata) and ferry.core casts it to this type. Going through pointers
 * rather than ffi.C keeps the symbols hidden: libferry exports only the
 * ferry_* API, and a host that loads it with dlopen(RTLD_LOCAL) works the
 * same. A field is named as its function, so call sites read C.fy_ffi_x().
 */
typedef struct fy_ffi_api {
  const fy_ffi_layout *(*fy_ffi_abi_layout)(int *n);
  int (*fy_ffi_req_str)(double id, int field, const char **out, size_t *len);
  int (*fy_ffi_req_client_port)(double id);
  int (*fy_ffi_req_content_length)(double id, double *out);
  int (*fy_ffi_req_header_get)(double id, const char *name, size_t nlen, int nth, const char **out,
                               size_t *len);
  int (*fy_ffi_req_header_set)(double id, int mode, const char *name, size_t nlen, const char *val,
                               size_t vlen);
  int (*fy_ffi_req_respond_header)(double id, const char *name, size_t nlen, const char *val, size_t vlen);
  int (*fy_ffi_req_respond)(double id, int status, const char *body, size_t blen);
  int (*fy_ffi_req_ctx)(double id);
  int (*fy_ffi_req_proxy)(double id, fy_ffi_proxy *out);
  int (*fy_ffi_req_tls)(double id, fy_ffi_tls *out);
  int (*fy_ffi_group_server)(double id, int group, int index, fy_ffi_server *out);
  int (*fy_ffi_res_info)(double id, int *status, double *bytes);
  int (*fy_ffi_res_header_get)(double id, const char *name, size_t nlen, int nth, const char **out,
                               size_t *len);
  int (*fy_ffi_res_header_set)(double id, int mode, const char *name, size_t nlen, const char *val,
                               size_t vlen);
  int (*fy_ffi_stream_info)(double id, fy_ffi_stream *out);
  const char *(*fy_ffi_stream_vpce)(double id);
  void (*fy_ffi_log)(int level, const char *msg, size_t len);
  int (*fy_ffi_req_log_field)(double id, const char *name, size_t nlen, int kind, const char *val,
                              size_t vlen);
  int (*fy_ffi_metric_declare)(const char *name, const char *help, const char *labels, char *msg,
                               size_t msglen);
  int (*fy_ffi_metric_inc)(int id, const char *values, size_t len, unsigned nvalues, double n);
  int (*fy_ffi_metric_value)(const char *name, const char *values, size_t len, unsigned nvalues, double *out);
  int (*fy_ffi_metric_reset)(void);
  uint64_t *(*fy_ffi_metric_slot)(int id, const char *values, size_t len, unsigned nvalues);
} fy_ffi_api;
/* FY_FFI_CDEF_END */

#endif
