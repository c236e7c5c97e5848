/*
 * The configuration of one generation, as plain C data.
 *
 * fy_config_load() runs the config file in a sandboxed Lua state, checks it
 * with the schema in lua/ferry/config.lua and copies the normalised result
 * here. All validation rules live in that Lua module; this unit only moves
 * checked values into structs. Times are milliseconds.
 */
#ifndef FERRY_CONFIG_H
#define FERRY_CONFIG_H

#include "buf.h"
#include "tls.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <sys/socket.h>

/* A network for PROXY protocol trust: family, address bytes, prefix length. */
typedef struct fy_cidr {
  int family;
  uint8_t addr[16];
  unsigned bits;
} fy_cidr;

typedef struct fy_cfg_listener {
  char *name;
  char *host;
  int port;
  int policy; /* index into fy_config.policies */
  bool tcp;   /* a tcp listener (stream.c) rather than http */
  bool https; /* TLS terminated here (tls_ctx) */
  fy_cfg_tls_server tls;
  fy_tls_server_ctx *tls_ctx;
  /* PROXY protocol: expected first on every connection, only from these networks */
  fy_cidr *proxy_trusted;
  size_t nproxy_trusted;
} fy_cfg_listener;

bool fy_cidr_parse(const char *text, fy_cidr *out);
bool fy_cidr_contains(const fy_cidr *net, const struct sockaddr *sa);
/* Whether peer is in one of the listener's proxy_protocol.trusted networks. */
bool fy_cfg_listener_trusts(const fy_cfg_listener *cl, const struct sockaddr *peer);
struct fy_proxy_info;
/*
 * Whether a connection from peer to cl starts with a PROXY protocol header:
 * 0 and *pp NULL (the listener takes none), 0 and *pp a new zeroed
 * fy_proxy_info for fy_proxy_protocol_accept (the caller frees it), or -1:
 * refused, since PROXY headers are taken only from trusted networks.
 */
int fy_cfg_listener_expect_proxy(const fy_cfg_listener *cl, const struct sockaddr *peer,
                                 struct fy_proxy_info **pp);

typedef struct fy_cfg_server {
  char *name; /* "host:port" as written */
  char *host;
  int port;
  unsigned weight;
} fy_cfg_server;

enum fy_balance { FY_BALANCE_ROUND_ROBIN, FY_BALANCE_LEAST_CONN, FY_BALANCE_P2C, FY_BALANCE_HASH };

typedef struct fy_cfg_group {
  char *name;
  fy_cfg_server *servers;
  size_t nservers;
  enum fy_balance balance;
  uint64_t connect_timeout, read_timeout, write_timeout, idle_timeout;
  unsigned max_idle;
  /* retries */
  unsigned tries;   /* attempts in all, the first included */
  int statuses[16]; /* answers worth another try (idempotent requests) */
  size_t nstatuses;
  uint64_t backoff, deadline;
  double budget;
  unsigned min_retries;
  size_t replay_buffer;
  /* passive health */
  unsigned max_fails;
  uint64_t eject, max_eject;
  double max_ejected;
  /* active checks: interval 0 = none; no path = TCP connect only */
  char *check_path;
  uint64_t check_interval, check_timeout;
  unsigned check_rise, check_fall;
  /* TLS to the servers (tls_ctx NULL: plain TCP) */
  fy_cfg_tls_client tls;
  fy_tls_client_ctx *tls_ctx;
  int proxy_protocol; /* PROXY protocol version sent first on each connection, 0: none */
} fy_cfg_group;

typedef struct fy_limits {
  size_t max_request_line, max_header_bytes, max_headers;
  uint64_t header_timeout, body_timeout, send_timeout, keepalive_timeout;
  unsigned keepalive_requests;
  unsigned max_connections;
  uint64_t stream_idle_timeout;
  uint64_t hook_timeout; /* longest run of one hook call */
  size_t lua_memory;     /* cap of a generation's Lua state */
} fy_limits;

typedef struct fy_config {
  atomic_uint refs; /* every worker's generation of one reload shares the config */
  char *path;
  fy_cfg_listener *listeners;
  size_t nlisteners;
  fy_cfg_group *groups; /* sorted by name */
  size_t ngroups;
  char **policies;
  char **policy_keys; /* per policy: "file:line: key.path" of the config key naming it */
  size_t npolicies;
  fy_limits limits;
  unsigned workers; /* worker threads; 0: "auto" (fy_runtime_auto_workers) */
  int log_level;
  bool access_log;
  bool access_json;  /* log.access.format = "json" (else the text line) */
  char *access_file; /* NULL: stderr */
  size_t access_buffer;
  char *admin_host; /* NULL: no admin listener */
  int admin_port;
  bool watch; /* reload when the config or a policy file changes */
  uint64_t drain_delay, drain_timeout;
  char *dns_servers; /* c-ares "host:port,..." or NULL for resolv.conf */
  uint64_t dns_min_ttl, dns_max_ttl, dns_timeout;
  fy_buf warnings; /* "file:line: warning: ..." lines: valid settings likely to fail in production */
  uint64_t watch_debounce;
} fy_config;

/*
 * Loads and checks path. On failure returns FY_ECONFIG and appends one line
 * per error ("file:line: message") to errors.
 */
int fy_config_load(const char *path, fy_config **out, fy_buf *errors);
/* The same for a config given as text: path only names it in errors; relative paths are under base. */
int fy_config_load_text(const char *path, const char *text, const char *base, fy_config **out,
                        fy_buf *errors);
/* Drops a reference; the last one frees it. */
void fy_config_free(fy_config *cfg);
static inline fy_config *fy_config_ref(fy_config *cfg) {
  atomic_fetch_add(&cfg->refs, 1);
  return cfg;
}

#endif
