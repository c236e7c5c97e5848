/*
 * The runtime: one process's workers and the services they share.
 *
 * N serving workers each run their own loop on their own thread, with their
 * own SO_REUSEPORT sockets on every listener, Lua states, pools and slabs.
 * The control worker runs on the caller's loop: it serves the admin
 * listener, watches the config files, and owns the process-wide services
 * (DNS re-resolution, active health checks) through a generation of its own
 * whose groups probe and resolve; the servers of every worker's generation
 * share the health of the control generation's server at the same address.
 *
 * Workers hear from the control loop only through messages posted to their
 * inbox (a new DNS answer, a generation to switch to, a request for a
 * snapshot, stop), never through a lock on the request path.
 *
 * A reload is one for the process: the config is loaded and every worker's
 * generation is built once, on a thread of libuv's pool (file reads and
 * blocking name resolution stay off every loop); if any part fails nothing
 * switches. Then each worker switches on its own loop, and the reload's
 * callback runs once all of them serve the new generation.
 */
#ifndef FERRY_RUNTIME_H
#define FERRY_RUNTIME_H

#include "worker.h"

typedef struct fy_runtime fy_runtime;

/* The workers "auto" means: CPUs of the affinity mask, capped by a cgroup v2 cpu.max quota. */
unsigned fy_runtime_auto_workers(void);

/* What to start: the config and the process-wide effects a host allows. */
typedef struct fy_runtime_opts {
  const char *path; /* the config file; with text, only the name errors give it */
  const char *text; /* the config itself, or NULL to read path */
  const char *base; /* with text: the directory relative paths are under */
  /*
   * One serving worker on loop itself, beside the control worker, with no
   * thread: for a host that wants ferry on its own loop. The config's
   * workers setting is ignored.
   */
  bool on_loop;
  bool trim;   /* malloc_trim the process's heap after connections release memory */
  bool notify; /* tell the service manager (sd_notify) about readiness and reloads */
} fy_runtime_opts;

/*
 * Loads the config, builds every generation, binds every listener and
 * starts the worker threads; the control worker serves on loop. On failure
 * errors holds the report and nothing runs.
 */
int fy_runtime_start(fy_runtime **out, uv_loop_t *loop, const fy_runtime_opts *opts, fy_buf *errors);

/* status 0 and the live number, or an error and its report. Runs on the control loop. */
typedef void (*fy_reload_cb)(fy_runtime *rt, int status, unsigned number, const fy_buf *errors, void *data);
/* Reloads every worker from path (NULL: the running config, file or text); one reload at a time, in order. */
void fy_runtime_reload(fy_runtime *rt, const char *path, fy_reload_cb cb, void *data);
/* Drains every worker; stopped runs on the control loop once all are done. */
void fy_runtime_stop(fy_runtime *rt, void (*stopped)(fy_runtime *rt, void *data), void *data);
/*
 * After stopped ran: joins the threads and drops the last generations,
 * whose handles on the control loop close; fy_runtime_free once their close
 * callbacks have run (the loop ended, or a later turn found none closing).
 */
void fy_runtime_release(fy_runtime *rt);
void fy_runtime_free(fy_runtime *rt);

const char *fy_runtime_config_path(const fy_runtime *rt);
unsigned fy_runtime_generation(const fy_runtime *rt);
size_t fy_runtime_workers(const fy_runtime *rt);
uint64_t fy_runtime_reloads(const fy_runtime *rt, bool failed);

/* A server's connections on one worker, for /metrics. */
typedef struct fy_server_view {
  size_t group;
  char addr[64];
  unsigned active, nidle;
} fy_server_view;

/* What one worker reports of itself, taken on its own loop. */
typedef struct fy_worker_view {
  unsigned index, generation;
  size_t connections, streams;
  fy_worker_stats stats;
  size_t lua_memory;
  uint64_t hook_errors, hook_timeouts, hook_nomem;
  double busy; /* share of its time the loop was not waiting, since it started */
  fy_server_view *servers;
  size_t nservers;
  fy_metrics metrics;       /* a copy of the worker's (fy_metrics_merge into an empty one) */
  fy_policy_metrics policy; /* a copy of its policy counters, the live generation's marked live */
  uint64_t access_dropped;
} fy_worker_view;

/* Asks every worker for its view; done runs on the control loop with all of them. */
typedef void (*fy_collect_cb)(fy_runtime *rt, const fy_worker_view *views, size_t n, void *data);
void fy_runtime_collect(fy_runtime *rt, fy_collect_cb done, void *data);

/* The control worker, on the control loop. */
fy_worker *fy_runtime_control(fy_runtime *rt);
/* Appends the text GET /metrics serves, from what fy_runtime_collect gathered (admin.c). */
void fy_admin_metrics_text(fy_runtime *rt, const fy_worker_view *views, size_t n, fy_buf *out);

/* A worker freed memory: one malloc_trim for the process runs on the control loop. */
void fy_runtime_trim(fy_runtime *rt);

#endif
