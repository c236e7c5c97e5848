/*
 * The Lua side of a generation: one LuaJIT state holding the ferry modules
 * and the compiled policy scripts.
 *
 * Every hook runs through fy_lua_route() and friends, which go through one
 * door (fy_lua_run): it calls into lua/ferry/core.lua under lua_pcall and maps
 * what happened to an fy_hook_outcome. Lua reaches the request only through
 * the fy_ffi_* functions (lua_api.c), which look the request up by id on each
 * call; Lua never holds a C pointer.
 */
#ifndef FERRY_LUA_HOST_H
#define FERRY_LUA_HOST_H

#include "buf.h"
#include "config.h"
#include "ffi.h"
#include "policy_metrics.h"

#include <stdbool.h>

struct lua_State;
struct fy_req;

enum fy_hook_outcome {
  FY_HOOK_OK,
  FY_HOOK_ERROR,   /* the hook raised or returned something unusable */
  FY_HOOK_TIMEOUT, /* the hook ran past limits.hook_timeout */
  FY_HOOK_NOMEM,   /* the Lua state reached limits.lua_memory */
};

const char *fy_hook_outcome_name(enum fy_hook_outcome out);

/*
 * Budgets: policy code runs interpreted (ferry turns the JIT off for policy
 * chunks and the modules they require, because LuaJIT's compiled code never
 * checks hooks) under a count hook that raises once the call's deadline has
 * passed; the state's allocator refuses memory past its cap. A C library
 * call that never returns to Lua (a pathological string.find pattern) is
 * the one thing these cannot stop.
 */
struct fy_req;
struct fy_stream;

/*
 * The hook call running on this thread, for the fy_ffi_* functions Lua
 * calls back into. Only the Lua door sets it (a hook call in lua_host.c, a
 * route_stream call in stream.c, `ferry test`'s testbed), for the length
 * of one call, and puts back what was there: everything below the worker
 * takes its context from its handle or request instead.
 */
typedef struct fy_hook_call {
  struct fy_req *req;       /* the request whose hook runs */
  struct fy_stream *stream; /* the stream whose route_stream runs */
  int hook;
  /* `ferry test` only: the TLS session its request stands for (a test request has no socket). */
  const struct fy_tls_info *tls;
  struct fy_lua *lua; /* the state the hook runs in (NULL under `ferry test`) */
} fy_hook_call;
extern __thread fy_hook_call fy_hook_current;

/* FY_HOOK_HAS_*: ffi.h (ferry.core.hooks reports them). */
enum fy_hook_name {
  FY_HOOK_NONE,
  FY_HOOK_ROUTE,
  FY_HOOK_SELECT,
  FY_HOOK_RETRY,
  FY_HOOK_RESPONSE,
  FY_HOOK_LOG,
  FY_HOOK_ROUTE_STREAM,
  FY_HOOK_COUNT
};

typedef struct fy_lua {
  struct lua_State *L;
  int route_ref, select_ref, retry_ref, response_ref, log_ref, release_ref, stream_ref; /* ferry.core.* */
  unsigned *hooks; /* per policy: FY_HOOK_HAS_* */
  size_t npolicies;
  size_t mem_used, mem_cap;
  void *(*inner_alloc)(void *ud, void *ptr, size_t osize, size_t nsize); /* LuaJIT's own, and its ud */
  void *inner_ud;
  uint64_t deadline_ns;             /* of the call running now */
  uint64_t budget_ms;               /* of the call running now */
  uint64_t hook_budget_ms;          /* limits.hook_timeout */
  bool timed_out, oom;              /* what the call running now ran into */
  bool hook_armed;                  /* the count hook is set at FY_LUA_HOOK_EVERY */
  uint64_t errors, timeouts, nomem; /* counters, for metrics */
  /*
   * Policy counters (policy_metrics.h): what its policies declared while
   * loading, on whichever thread built the generation, and once bound on
   * its worker's loop, each one's id in that worker's registry.
   */
  fy_policy_metrics declared;
  int *counters; /* registry ids, in the order of declared (-1: the registry was full) */
  size_t ncounters;
  struct fy_worker *w; /* the worker whose generation this state is (fy_gen_build sets it) */
  struct fy_series *m_hooks[FY_HOOK_COUNT]; /* hook durations in w's metrics, by hook, found on first use */
} fy_lua;

/* The state whose policies are loading on this thread (NULL outside fy_lua_init). */
extern __thread fy_lua *fy_lua_loading;

/* Creates the state, loads every policy of cfg. Errors as "file:line: message". */
int fy_lua_init(fy_lua *lua, const fy_config *cfg, fy_buf *errors);
void fy_lua_close(fy_lua *lua);

bool fy_lua_has_hook(const fy_lua *lua, int policy, unsigned hook);

/*
 * Runs route(req) of policy number `policy`. On FY_HOOK_OK *group is the
 * index of the chosen group, or -1 when the policy answered with
 * req:respond(), and key holds the balancing key the hook returned second
 * (if any). On failure the message (with traceback) is in err.
 */
enum fy_hook_outcome fy_lua_route(fy_lua *lua, int policy, struct fy_req *req, int *group, fy_buf *key,
                                  fy_buf *err);
/* select(req, group, attempt): *server is an index into the group's servers, or -1 (balancer). */
enum fy_hook_outcome fy_lua_select(fy_lua *lua, int policy, struct fy_req *req, int group, unsigned attempt,
                                   int *server, fy_buf *err);
/* route_stream(conn) of a tcp listener's connection: *group, or -1 to close it. */
enum fy_hook_outcome fy_lua_route_stream(fy_lua *lua, int policy, uint64_t id, int *group, fy_buf *err);
/* The request ended: drop what Lua kept for it (its ctx). */
void fy_lua_release(fy_lua *lua, uint64_t id);
/* response(req, res) when the upstream's head arrived; log(req, res) after the exchange. */
enum fy_hook_outcome fy_lua_response(fy_lua *lua, int policy, struct fy_req *req, fy_buf *err);
enum fy_hook_outcome fy_lua_log(fy_lua *lua, int policy, struct fy_req *req, fy_buf *err);
/* retry(req, attempt, failure): *again says whether to try once more. */
enum fy_hook_outcome fy_lua_retry(fy_lua *lua, int policy, struct fy_req *req, unsigned attempt,
                                  const char *kind, int status, const char *server, bool *again, fy_buf *err);

/* Loads the embedded modules and makes them requirable in L. */
void fy_lua_openlibs(struct lua_State *L);
/* package.loaded["ferry.native"]: Lua C versions of the hot fy_ffi_* accessors (lua_api.c). */
void fy_lua_api_open(struct lua_State *L);

#endif
