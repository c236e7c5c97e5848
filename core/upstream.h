/*
 * Upstream groups, their servers and the connections to them.
 *
 * A group is a list of servers picked in turn. Each server keeps a pool of
 * idle keep-alive connections (at most max_idle, each closed after
 * idle_timeout or as soon as the server closes it). An fy_uconn is the
 * transport to one server: it connects, reads into its own buffer and runs
 * one timer; what the bytes mean is decided by its owner (proxy.c).
 *
 * Lifetime: fy_upstream_acquire() hands a connection to an owner; the owner
 * gives it back with fy_upstream_release(), which pools or closes it. Memory
 * is freed only in the close callbacks.
 */
#ifndef FERRY_UPSTREAM_H
#define FERRY_UPSTREAM_H

#include "common.h"
#include "config.h"
#include "pool.h"
#include "deadline.h"
#include "dial.h"
#include "dns.h"
#include "metrics.h"
#include "tls.h"
#include "write.h"

#include <llhttp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <uv.h>

struct fy_gen;
struct fy_exchange;
struct fy_uconn;

/*
 * A server is one address of a configured server entry: a name that resolves
 * to several addresses (a cloud load balancer's does) gives one fy_server per
 * address, each with the entry's weight, its own pool and its own health.
 */
struct fy_entry;

/*
 * What every worker knows of one server: its passive and active health.
 * The workers' fy_servers for one address share one of these (made by the
 * process's probing generation), so a server ejected through one worker's
 * failures is out of service for all. Plain atomics: read on every pick,
 * written only when something changes.
 */
typedef struct fy_server_health {
  atomic_uint refs;
  atomic_bool down;               /* failed `fall` checks in a row */
  atomic_uint fails;              /* consecutive failures, from every worker */
  atomic_uint ejections;          /* times ejected in a row; doubles the ejection time */
  _Atomic uint64_t ejected_until; /* loop time (ms); 0 = in service */
} fy_server_health;

fy_server_health *fy_server_health_ref(fy_server_health *h);
void fy_server_health_unref(fy_server_health *h);

typedef struct fy_server {
  struct fy_group *group;
  struct fy_entry *entry; /* the configured server it came from */
  bool gone;              /* its address left the DNS answer: no new requests */
  const char *name;       /* the entry as configured, "host:port" */
  char addr_text[64];     /* this address, "ip:port" */
  struct sockaddr_storage addr;
  unsigned weight;
  fy_list idle; /* fy_uconn.pool_link */
  unsigned nidle;
  unsigned active;             /* connections in use (connecting or busy) */
  int current_weight;          /* smooth weighted round robin */
  double ewma_ms;              /* response head latency, for p2c */
  uint64_t ewma_at;            /* loop time of its last update */
  fy_server_health *health;    /* shared by every worker's server at this address */
  const char *tls_name;        /* SNI and certificate name (TLS groups), else NULL */
  fy_tls_session *tls_session; /* the last session, offered for resumption */
  /* active health checks (health.c): run by the process's probing generation only */
  unsigned check_passes, check_fails;
  uv_timer_t *check_timer; /* own allocation, freed by its close callback */
  void *probe;             /* the check in flight */
  /* this worker's series for it, found on first use (metrics.h) */
  fy_series *m_attempts, *m_responses[FY_METRICS_NCLASSES];
} fy_server;

typedef struct fy_ring_node {
  uint64_t hash;
  fy_server *server;
} fy_ring_node;

/* A configured server entry; a name is re-resolved on its TTL while running. */
typedef struct fy_entry {
  struct fy_group *group;
  const fy_cfg_server *cfg;
  bool literal;      /* an IP address: never resolved */
  unsigned ttl;      /* of the last answer, seconds */
  uv_timer_t *timer; /* next resolution (own allocation: freed by its close callback) */
  fy_dns_req *pending;
} fy_entry;

struct fy_group;
/* A name of g re-resolved (entries[entry]) and applied: the runtime tells the workers. */
typedef void (*fy_group_resolved_cb)(struct fy_group *g, size_t entry, const fy_dns_answer *answer,
                                     void *data);

typedef struct fy_group {
  const fy_cfg_group *cfg;
  size_t index; /* in its generation's groups */
  const fy_config *config;
  fy_server **servers; /* in service (or ejected), in no particular order */
  size_t nservers;
  fy_server **gone; /* drained after a DNS change, freed with the group */
  size_t ngone;
  fy_entry *entries;
  size_t nentries;
  fy_dns *dns;
  uv_loop_t *loop;    /* set while the group serves (re-resolution and checks run) */
  size_t next;        /* rotation cursor */
  fy_ring_node *ring; /* consistent hashing, sorted by hash */
  size_t nring;
  unsigned requests, retries; /* exchanges and retries in flight, for the retry budget */
  bool retired;               /* its generation is no longer live: do not pool into it */
  fy_group_resolved_cb on_resolved;
  void *on_resolved_data;
  /* this worker's series for it, found on first use (metrics.h); m_requests by
   * [listener index * FY_METRICS_NCLASSES + class] */
  fy_series *m_connect, *m_header, **m_requests;
} fy_group;

enum fy_uconn_state {
  FY_UC_CONNECTING,
  FY_UC_ACTIVE, /* owned by a client connection */
  FY_UC_IDLE,   /* in its server's pool */
  FY_UC_CLOSING,
};

/* Called once per acquire when the connection is usable (status 0) or failed. */
typedef void (*fy_uconn_ready_cb)(struct fy_uconn *uc, int status);
/* Called for every read: n > 0 bytes were appended to rbuf, or n < 0 is an error/EOF. */
typedef void (*fy_uconn_read_cb)(struct fy_uconn *uc, ssize_t n);
typedef void (*fy_uconn_timeout_cb)(struct fy_uconn *uc);

typedef struct fy_uconn {
  fy_sock sock; /* first: the uv handle's address is the connection's */
  fy_deadline timer;
  fy_dial dial; /* connect, PROXY header, TLS */
  fy_write_req write_req;
  fy_server *server;
  struct fy_exchange *owner;
  fy_uconn_ready_cb on_ready;
  fy_uconn_read_cb on_read;
  fy_uconn_timeout_cb on_timeout;
  fy_list pool_link;
  llhttp_t parser;
  char *rbuf;
  size_t rpos, rlen;
  enum fy_uconn_state state;
  unsigned requests; /* exchanges started on this connection */
  unsigned closing;  /* handles still to close */
  bool reading;
  bool pinned;    /* a client write points into rbuf: append, never rewind */
  bool eof;       /* the server closed its side */
  fy_buf preface; /* PROXY protocol header to send before anything else */
} fy_uconn;

#define FY_UCONN_RBUF_SIZE FY_POOL_BLOCK_SIZE

/*
 * Builds the runtime groups of a generation; resolves server names
 * (blocking: on the loader thread, or before any loop runs). memo, if not
 * NULL, keeps the answers so that the generations of every worker built
 * for one reload ask the DNS once per name.
 */
int fy_groups_init(fy_group **out, const fy_config *cfg, fy_dns_memo *memo, fy_buf *errors);
/* Makes every server of to share the health of the server of from at its address. */
void fy_groups_share_health(fy_group *to, fy_group *from, size_t n);
/*
 * Applies a new answer for g->entries[entry]: servers whose address left it
 * drain, new addresses become servers. health, if not NULL, holds for each
 * address of the answer the shared health its new server takes.
 */
void fy_group_apply_answer(fy_group *g, size_t entry, const fy_dns_answer *answer,
                           fy_server_health *const *health);
/* The health of g's server for entries[entry] at addr, or NULL. */
fy_server_health *fy_group_health_of(fy_group *g, size_t entry, const struct sockaddr_storage *addr);
/* Starts re-resolving the groups' names on their TTL (once the generation serves). */
void fy_groups_start(fy_group *groups, size_t n, uv_loop_t *loop, fy_dns *dns);
void fy_groups_stop(fy_group *groups, size_t n);
void fy_groups_close(fy_group *groups, size_t n);
/* Closes every idle pooled connection (when stopping). */
void fy_groups_drop_idle(fy_group *groups, size_t n);
/* Moves idle pooled connections of old servers to new servers at the same address. */
void fy_groups_adopt_idle(fy_group *to, size_t nto, fy_group *from, size_t nfrom);

/*
 * Picks a server of g with the group's balancer, avoiding the servers in
 * `avoid` (earlier attempts) and ejected ones while any other is left. key
 * is the hash key from the policy (used by "hash"; has_key false: none).
 */
fy_server *fy_group_pick(fy_group *g, uint64_t key, bool has_key, fy_server *const *avoid, size_t navoid,
                         uint64_t now_ms);
uint64_t fy_hash_bytes(const void *data, size_t len);

/* Passive health: record the outcome of an attempt on s. */
void fy_server_succeeded(fy_server *s, double latency_ms, uint64_t now_ms);
void fy_server_failed(fy_server *s, uint64_t now_ms);
bool fy_server_in_service(const fy_server *s, uint64_t now_ms);
/* Active checks of one server (health.c). */
void fy_health_start(fy_server *s, uv_loop_t *loop);
void fy_health_stop(fy_server *s);

/*
 * Gives owner a connection to s: a pooled one, unless fresh (returns 1: the
 * connection is usable now and ready is not called), or a new one (returns
 * 0: ready is called once when the connect ends). A negative return is an
 * error, and ready is never called.
 */
int fy_upstream_acquire(uv_loop_t *loop, fy_server *s, struct fy_exchange *owner, bool fresh,
                        fy_uconn_ready_cb ready, fy_uconn_read_cb on_read, fy_uconn_timeout_cb on_timeout,
                        fy_uconn **out);
/*
 * The PROXY protocol header a new connection of a group with proxy_protocol
 * sends first (before TLS); proxy.c fills it in before the connect ends.
 * Such connections carry one client's address, so they are never pooled.
 */
static inline fy_buf *fy_uconn_preface(fy_uconn *uc) { return &uc->preface; }
/* Returns uc to its pool when reusable, otherwise closes it. */
void fy_upstream_release(fy_uconn *uc, bool reusable);
/* Reads unless the buffer is full; call after rpos, rlen or pinned change. */
void fy_uconn_update_reading(fy_uconn *uc);
void fy_uconn_timer(fy_uconn *uc, uint64_t ms); /* 0 stops it */

#endif
