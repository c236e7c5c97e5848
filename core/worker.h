/*
 * A worker: one libuv loop and everything that serves on it.
 *
 * Everything a worker owns (its loop, listeners, live generation, client
 * connections, request ids) sits in fy_worker. The runtime (runtime.h) runs N of them, each on its own
 * thread with its own SO_REUSEPORT listeners, and one control worker on the
 * main loop that serves only the admin listener and runs the process's
 * probes and DNS re-resolution. Nothing a worker owns is shared or locked;
 * other threads reach it only through messages posted to its inbox.
 *
 * A generation (fy_gen) is one loaded configuration: the config, its upstream
 * groups with their pools, and its Lua state. It is reference counted: the
 * worker holds one reference for the live generation and every connection
 * holds one for the generation it started on, so a generation is freed when
 * the last user goes.
 */
#ifndef FERRY_WORKER_H
#define FERRY_WORKER_H

#include "config.h"
#include "lua_host.h"
#include "metrics.h"
#include "policy_metrics.h"
#include "upstream.h"

#include <stdbool.h>
#include <uv.h>

typedef struct fy_gen {
  unsigned refs;
  unsigned number; /* 1 for the first generation, +1 per reload */
  fy_config *cfg;
  fy_group *groups;
  fy_lua lua;
  struct fy_worker *w;
} fy_gen;

typedef struct fy_listener {
  uv_poll_t poll;   /* the listening socket: readable while a connection waits (worker.c) */
  uv_timer_t pause; /* accepting resumes after running out of file descriptors */
  int fd;           /* the listening socket, -1 when not open */
  bool open;        /* poll and pause are initialised: fy_listener_close closes them */
  struct fy_worker *w;
  size_t index; /* into the generation's cfg->listeners */
  bool admin;   /* the admin listener: answered by admin.c, not by a policy */
  char name[64];
  fy_series *m_answered[FY_METRICS_NCLASSES]; /* request durations of group "none" (metrics.h) */
} fy_listener;

/* Closes an open listener's handles (cb runs once for each) and its socket; returns how many handles. */
unsigned fy_listener_close(fy_listener *l, uv_close_cb cb);

struct fy_watch;
struct fy_runtime;
struct fy_worker;

/* Work for a worker's loop, posted from any thread (fy_worker_post). */
typedef struct fy_msg {
  struct fy_msg *next;
  void (*run)(struct fy_msg *m, struct fy_worker *w);
} fy_msg;

/* Counters for GET /metrics (admin.c); monotonic over the worker's life. */
typedef struct fy_worker_stats {
  uint64_t responses[6];                   /* by status class: [1] 1xx ... [5] 5xx, [0] none (cut) */
  uint64_t attempts, retries, failures[7]; /* failures by enum fy_failure */
  uint64_t streams, shed;
  uint64_t tls[2][3]; /* TLS handshakes: [0] client side (https listeners), [1] upstream; by fy_tls_outcome */
} fy_worker_stats;

typedef struct fy_worker {
  uv_loop_t *loop;
  fy_gen *gen;
  fy_listener *listeners;
  size_t nlisteners;
  fy_list conns;
  fy_list streams; /* tcp listener connections (stream.c) */
  unsigned nconns; /* client connections open, for limits.max_connections */
  uint64_t next_req_id;
  char *config_path; /* what SIGHUP and the file watch reload */
  struct fy_watch *watch;
  fy_dns *dns; /* re-resolves upstream names while serving */
  fy_worker_stats stats;
  /*
   * Labelled histograms and counters (metrics.h) and the counters policies
   * declare (policy_metrics.h): touched only on this worker's loop; /metrics
   * gets a copy each worker makes there (fy_worker_view).
   */
  fy_metrics metrics;
  fy_policy_metrics policy_metrics;
  uint64_t access_dropped; /* access log lines dropped: the writer's buffer was full */
  /* Run by a runtime (NULL: a worker on its own, serving every listener itself). */
  struct fy_runtime *rt;
  unsigned index; /* 0..n-1 for serving workers */
  bool control;   /* the runtime's control worker: admin listener, probes, DNS; no traffic */
  uv_thread_t thread;
  uv_async_t inbox_async;
  uv_mutex_t inbox_lock;
  fy_msg *inbox_head, **inbox_tail;
  uint64_t started_ns;
  uv_timer_t deadline; /* drain delay, then drain deadline */
  uv_check_t check;    /* runs the deferred queue */
  uv_idle_t idle;      /* keeps poll from blocking while work is queued */
  uv_timer_t trim;     /* returns freed memory to the system (fy_worker_memory_released) */
  fy_list deferred;
  bool stopping; /* draining: health fails, answers close their connection */
  bool unbound;  /* the listeners are closed */
  unsigned closing;
  void (*on_stopped)(struct fy_worker *w);
} fy_worker;

/* Builds a generation from cfg (taking ownership of one reference to cfg on success). */
int fy_gen_new(fy_worker *w, fy_config *cfg, fy_gen **out, fy_buf *errors);
/* The same, resolving names through memo (one answer per name for a reload's generations). */
int fy_gen_build(fy_worker *w, fy_config *cfg, fy_dns_memo *memo, fy_gen **out, fy_buf *errors);
static inline fy_gen *fy_gen_ref(fy_gen *g) {
  g->refs++;
  return g;
}
void fy_gen_unref(fy_gen *g);

int fy_worker_init(fy_worker *w, uv_loop_t *loop, fy_gen *gen);
/* Closes the worker's own handles once it has stopped (or never started). */
void fy_worker_close(fy_worker *w);
/* Queues d->run for the next turn of the loop; undefer takes it back. */
void fy_worker_defer(fy_worker *w, fy_deferred *d);
void fy_worker_undefer(fy_deferred *d);
/*
 * Opens what w listens on: every listener and the admin one for a worker on
 * its own; the admin listener, the file watch and the process's DNS and
 * probes for a control worker; its own SO_REUSEPORT sockets of the
 * generation's listeners for a serving worker of a runtime.
 */
int fy_worker_listen(fy_worker *w, fy_buf *errors);
/* Closes listeners and connections; on_stopped runs once all handles are closed. */
void fy_worker_stop(fy_worker *w, void (*on_stopped)(fy_worker *w));

/*
 * Whether next may replace live by a reload: listeners, the admin address
 * and the number of workers need a restart. Appends the reasons to errors.
 */
int fy_worker_check_reload(const fy_config *live, const fy_config *next, unsigned nworkers, fy_buf *errors);
/*
 * Makes next live on w (built for w by the runtime's reload): new requests
 * use it, exchanges in flight finish on the one they started with, and idle
 * pooled upstream connections move over to servers at the same address.
 */
void fy_worker_switch(fy_worker *w, fy_gen *next);

/* Queues m to run on w's loop; any thread may post. */
void fy_worker_post(fy_worker *w, fy_msg *m);
/* Sets up w's inbox on its loop; close it last, from w's own loop. */
void fy_worker_inbox_init(fy_worker *w);
void fy_worker_inbox_close(fy_worker *w);

/* Connections freed buffers: memory goes back to the system shortly. */
void fy_worker_memory_released(fy_worker *w);

/* Called when a connection or handle of a stopping worker is gone. */
void fy_worker_maybe_stopped(fy_worker *w);

/* The worker whose loop a handle runs on (fy_worker_init sets loop->data), as libuv's stream->loop. */
static inline fy_worker *fy_worker_of(const uv_loop_t *loop) { return loop->data; }

#endif
