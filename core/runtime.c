#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "runtime.h"

#include "access_log.h"
#include "log.h"
#include "notify.h"
#include "pool.h"
#include "watch.h"

#include <limits.h>
#include <malloc.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct fy_reload fy_reload;

struct fy_runtime {
  uv_loop_t *loop;
  fy_worker control;
  fy_worker *workers;
  uv_loop_t *loops; /* the serving workers' own */
  size_t nworkers;
  char *config_path;
  char *config_text, *config_base; /* a config given as text: what a reload of "the running config" reads */
  bool on_loop, trim, notify;      /* fy_runtime_opts */
  uint64_t reloads, reload_failures;
  fy_reload *reload;      /* the reload running, then the ones waiting, in order */
  bool stopping;          /* no more reloads; workers drain */
  size_t stopped, exited; /* serving workers done draining, and done altogether */
  bool control_stopped;
  void (*on_stopped)(fy_runtime *rt, void *data);
  void *on_stopped_data;
  atomic_bool trim_wanted;
  fy_msg trim_msg;
};

/* ---- how many workers --------------------------------------------------------- */

/* The smallest cpu.max quota of this process's cgroup v2 and its parents, in CPUs; 0: none. */
static unsigned fy_cgroup_cpus(void) {
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (f == NULL) return 0;
  char line[PATH_MAX], path[PATH_MAX] = "";
  while (fgets(line, sizeof line, f))
    if (strncmp(line, "0::", 3) == 0) {
      snprintf(path, sizeof path, "%s", line + 3);
      path[strcspn(path, "\n")] = '\0';
    }
  fclose(f);
  unsigned best = 0;
  for (;;) {
    char file[PATH_MAX + 32];
    snprintf(file, sizeof file, "/sys/fs/cgroup%s/cpu.max", strcmp(path, "/") == 0 ? "" : path);
    FILE *q = fopen(file, "r");
    if (q) {
      char quota[32];
      unsigned long long period = 0;
      if (fscanf(q, "%31s %llu", quota, &period) == 2 && strcmp(quota, "max") != 0 && period > 0) {
        unsigned long long want = strtoull(quota, NULL, 10);
        unsigned cpus = (unsigned)((want + period - 1) / period); /* a quota of 1.5 CPUs: 2 workers */
        if (cpus == 0) cpus = 1;
        if (best == 0 || cpus < best) best = cpus;
      }
      fclose(q);
    }
    char *slash = strrchr(path, '/');
    if (slash == NULL || path[0] == '\0' || strcmp(path, "/") == 0) break;
    if (slash == path)
      path[1] = '\0';
    else
      *slash = '\0';
  }
  return best;
}

unsigned fy_runtime_auto_workers(void) {
  cpu_set_t set;
  unsigned n = 1;
  if (sched_getaffinity(0, sizeof set, &set) == 0) n = (unsigned)CPU_COUNT(&set);
  unsigned quota = fy_cgroup_cpus();
  if (quota && quota < n) n = quota;
  return n ? n : 1;
}

/* ---- building generations ------------------------------------------------------ */

static void fy_runtime_on_resolved(fy_group *g, size_t entry, const fy_dns_answer *answer, void *data);

/*
 * Builds the control generation and one generation per worker from cfg
 * (one DNS answer per name for all of them); the workers' servers share the
 * health of the control generation's. All or nothing.
 */
static int fy_runtime_build(fy_runtime *rt, fy_config *cfg, fy_gen **control, fy_gen **gens, fy_buf *errors) {
  fy_dns_memo memo = {0};
  int rc = fy_gen_build(&rt->control, fy_config_ref(cfg), &memo, control, errors);
  if (rc != FY_OK) {
    fy_config_free(cfg);
    fy_dns_memo_free(&memo);
    return rc;
  }
  size_t built = 0;
  for (; built < rt->nworkers; built++) {
    rc = fy_gen_build(&rt->workers[built], fy_config_ref(cfg), &memo, &gens[built], errors);
    if (rc != FY_OK) {
      fy_config_free(cfg);
      break;
    }
    fy_groups_share_health(gens[built]->groups, (*control)->groups, cfg->ngroups);
  }
  fy_dns_memo_free(&memo);
  if (rc != FY_OK) {
    for (size_t i = 0; i < built; i++)
      fy_gen_unref(gens[i]);
    fy_gen_unref(*control);
    return rc;
  }
  for (size_t i = 0; i < cfg->ngroups; i++) {
    (*control)->groups[i].on_resolved = fy_runtime_on_resolved;
    (*control)->groups[i].on_resolved_data = rt;
  }
  return FY_OK;
}

/* ---- DNS answers for every worker ------------------------------------------------- */

typedef struct fy_answer_msg {
  fy_msg m;
  unsigned generation;
  size_t group, entry;
  fy_dns_answer answer;
  fy_server_health *health[FY_DNS_MAX_ADDRS];
} fy_answer_msg;

static void fy_answer_run(fy_msg *m, fy_worker *w) {
  fy_answer_msg *a = (fy_answer_msg *)m;
  /* An answer for a generation that is no longer live is dropped; the next one resolves again. */
  if (w->gen && w->gen->number == a->generation)
    fy_group_apply_answer(&w->gen->groups[a->group], a->entry, &a->answer, a->health);
  for (size_t k = 0; k < a->answer.n; k++)
    fy_server_health_unref(a->health[k]);
  free(a);
}

/* The control generation re-resolved a name: every worker applies the same answer. */
static void fy_runtime_on_resolved(fy_group *g, size_t entry, const fy_dns_answer *answer, void *data) {
  fy_runtime *rt = data;
  if (rt->stopping) return;
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_answer_msg *a = fy_calloc(1, sizeof *a);
    a->m.run = fy_answer_run;
    a->generation = rt->control.gen->number;
    a->group = g->index;
    a->entry = entry;
    a->answer = *answer;
    for (size_t k = 0; k < answer->n; k++) {
      fy_server_health *h = fy_group_health_of(g, entry, &answer->addrs[k]);
      a->health[k] = h ? fy_server_health_ref(h) : NULL;
    }
    fy_worker_post(&rt->workers[i], &a->m);
  }
}

/* ---- threads ------------------------------------------------------------------- */

static void fy_worker_thread(void *arg) {
  fy_worker *w = arg;
  uv_run(w->loop, UV_RUN_DEFAULT);
  fy_gen_unref(w->gen);
  w->gen = NULL;
  uv_run(w->loop, UV_RUN_NOWAIT); /* close callbacks of pooled upstream connections */
  uv_loop_close(w->loop);
  fy_pool_drain();
  fy_access_log_thread_end();
}

static void fy_trim_run(fy_msg *m, fy_worker *w) {
  fy_runtime *rt = w->rt;
  (void)m;
  atomic_store(&rt->trim_wanted, false);
  if (rt->trim) malloc_trim(256 * 1024);
}

void fy_runtime_trim(fy_runtime *rt) {
  if (!atomic_exchange(&rt->trim_wanted, true)) fy_worker_post(&rt->control, &rt->trim_msg);
}

int fy_runtime_start(fy_runtime **out, uv_loop_t *loop, const fy_runtime_opts *opts, fy_buf *errors) {
  const char *path = opts->path;
  fy_config *cfg = NULL;
  int rc = fy_config_load_text(path, opts->text, opts->base, &cfg, errors);
  if (rc != FY_OK) return rc;
  fy_runtime *rt = fy_calloc(1, sizeof *rt);
  rt->loop = loop;
  rt->on_loop = opts->on_loop;
  rt->trim = opts->trim;
  rt->notify = opts->notify;
  rt->nworkers = rt->on_loop ? 1 : cfg->workers ? cfg->workers : fy_runtime_auto_workers();
  rt->workers = fy_calloc(rt->nworkers, sizeof *rt->workers);
  rt->loops = fy_calloc(rt->nworkers, sizeof *rt->loops);
  rt->trim_msg.run = fy_trim_run;
  char real[PATH_MAX];
  if (opts->text) {
    rt->config_path = fy_strdup(path);
    rt->config_text = fy_strdup(opts->text);
    rt->config_base = fy_strdup(opts->base ? opts->base : ".");
  } else {
    rt->config_path = fy_strdup(realpath(path, real) ? real : path);
  }
  fy_worker_init(&rt->control, loop, NULL);
  rt->control.rt = rt;
  rt->control.control = true;
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_worker *w = &rt->workers[i];
    uv_loop_t *wl = loop;
    if (!rt->on_loop) {
      wl = &rt->loops[i];
      uv_loop_init(wl); /* no UV_METRICS_IDLE_TIME: it costs a second epoll_wait before every sleep */
    }
    fy_worker_init(w, wl, NULL);
    w->rt = rt;
    w->index = (unsigned)i;
  }
  /*
   * On the host's loop, a handle's loop leads to the control worker, which
   * outlives the serving one: deferred writes of either run in its check phase.
   */
  if (rt->on_loop) loop->data = &rt->control;
  fy_gen **gens = fy_calloc(rt->nworkers, sizeof *gens);
  rc = fy_runtime_build(rt, cfg, &rt->control.gen, gens, errors);
  fy_config_free(cfg);
  for (size_t i = 0; i < rt->nworkers && rc == FY_OK; i++)
    rt->workers[i].gen = gens[i];
  free(gens);
  if (rc == FY_OK) {
    const fy_config *live = rt->control.gen->cfg;
    fy_log_level_current = live->log_level;
    if (live->warnings.len) fy_log_warn("%.*s", (int)live->warnings.len - 1, live->warnings.data);
    rt->control.config_path = fy_strdup(rt->config_path);
    rc = fy_access_log_configure(live, errors);
    for (size_t i = 0; i < rt->nworkers && rc == 0; i++)
      rc = fy_worker_listen(&rt->workers[i], errors);
    if (rc == 0) rc = fy_worker_listen(&rt->control, errors);
  }
  if (rc != FY_OK) {
    /* Nothing ran: close what was opened and let the loops end. */
    for (size_t i = 0; i < rt->nworkers; i++) {
      fy_worker *w = &rt->workers[i];
      for (size_t j = 0; j < w->nlisteners; j++)
        fy_listener_close(&w->listeners[j], NULL);
      fy_worker_close(w);
      uv_run(w->loop, UV_RUN_NOWAIT);
      if (w->gen) fy_gen_unref(w->gen);
      uv_run(w->loop, UV_RUN_NOWAIT);
      if (!rt->on_loop) uv_loop_close(w->loop);
    }
    for (size_t j = 0; j < rt->control.nlisteners; j++)
      fy_listener_close(&rt->control.listeners[j], NULL);
    fy_worker_close(&rt->control);
    uv_run(loop, UV_RUN_NOWAIT);
    if (rt->control.gen) fy_gen_unref(rt->control.gen);
    uv_run(loop, UV_RUN_NOWAIT);
    fy_runtime_free(rt);
    return rc ? rc : FY_ECONFIG;
  }
  fy_worker_inbox_init(&rt->control);
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_worker_inbox_init(&rt->workers[i]);
    if (!rt->on_loop) uv_thread_create(&rt->workers[i].thread, fy_worker_thread, &rt->workers[i]);
  }
  fy_log_info("%zu worker%s serving%s", rt->nworkers, rt->nworkers == 1 ? "" : "s",
              rt->on_loop ? " on the host's loop" : "");
  if (rt->notify) fy_notify_ready();
  *out = rt;
  return FY_OK;
}

const char *fy_runtime_config_path(const fy_runtime *rt) { return rt->config_path; }
fy_worker *fy_runtime_control(fy_runtime *rt) { return &rt->control; }
unsigned fy_runtime_generation(const fy_runtime *rt) { return rt->control.gen->number; }
size_t fy_runtime_workers(const fy_runtime *rt) { return rt->nworkers; }
uint64_t fy_runtime_reloads(const fy_runtime *rt, bool failed) {
  return failed ? rt->reload_failures : rt->reloads;
}

/* ---- one reload for the process ---------------------------------------------------- */

typedef struct fy_switch_msg {
  fy_msg m;
  fy_reload *r;
  fy_gen *gen;
} fy_switch_msg;

struct fy_reload {
  fy_reload *next;
  fy_runtime *rt;
  char *path;
  char *text, *base; /* the config given as text, or NULL */
  fy_reload_cb cb;
  void *data;
  uv_work_t work;
  uint64_t start;
  int rc;
  fy_buf errors;
  const fy_config *live; /* read by the loader: no reload changes it meanwhile */
  fy_gen *control;
  fy_gen **gens;
  fy_switch_msg *switches;
  atomic_size_t acks;
  fy_msg done;
};

static void fy_reload_next(fy_runtime *rt);
static void fy_runtime_maybe_exit(fy_runtime *rt);

/* On a thread of the pool: everything that reads files or blocks on the DNS. */
static void fy_reload_work(uv_work_t *req) {
  fy_reload *r = req->data;
  fy_runtime *rt = r->rt;
  fy_config *cfg = NULL;
  r->rc = fy_config_load_text(r->path, r->text, r->base, &cfg, &r->errors);
  unsigned nworkers = rt->on_loop ? 0 : (unsigned)rt->nworkers; /* 0: any, the host's loop runs one */
  if (r->rc == FY_OK) r->rc = fy_worker_check_reload(r->live, cfg, nworkers, &r->errors);
  if (r->rc == FY_OK) r->rc = fy_runtime_build(rt, cfg, &r->control, r->gens, &r->errors);
  fy_config_free(cfg);
}

static void fy_reload_finish(fy_reload *r) {
  fy_runtime *rt = r->rt;
  if (r->rc == FY_OK) {
    rt->reloads++;
    fy_log_info("generation %u is live on %zu worker%s (%s, built in %.1f ms)", rt->control.gen->number,
                rt->nworkers, rt->nworkers == 1 ? "" : "s", r->path, (double)(uv_hrtime() - r->start) / 1e6);
  } else {
    rt->reload_failures++;
  }
  /* The service manager sees every reload end, a refused one too. */
  if (!rt->stopping && rt->notify) fy_notify_ready();
  if (r->cb) r->cb(rt, r->rc, rt->control.gen->number, &r->errors, r->data);
  rt->reload = r->next;
  fy_buf_free(&r->errors);
  free(r->gens);
  free(r->switches);
  free(r->path);
  free(r->text);
  free(r->base);
  free(r);
  fy_reload_next(rt);
  fy_runtime_maybe_exit(rt);
}

/* Every worker serves the new generation: the control one switches last, then probes and resolves. */
static void fy_reload_all_switched(fy_msg *m, fy_worker *cw) {
  fy_reload *r = FY_CONTAINER_OF(m, fy_reload, done);
  fy_runtime *rt = r->rt;
  const fy_config *cfg = r->control->cfg;
  fy_buf ignored;
  fy_buf_init(&ignored);
  /* c-ares refuses new servers while a query is in flight (ARES_ENOTIMP), and
   * re-resolution keeps one in flight often: set them only when they change. */
  if (cw->dns && !fy_str_eq(cfg->dns_servers, cw->gen->cfg->dns_servers))
    fy_dns_set_servers(cw->dns, cfg->dns_servers, &ignored); /* checked by the loader */
  fy_buf_free(&ignored);
  fy_worker_switch(cw, r->control);
  fy_log_level_current = cfg->log_level;
  if (r->text == NULL && rt->config_text) { /* a file now: a plain reload reads it from here on */
    free(rt->config_text);
    free(rt->config_base);
    rt->config_text = rt->config_base = NULL;
  }
  if (r->path != rt->config_path && strcmp(r->path, rt->config_path) != 0) {
    free(rt->config_path);
    rt->config_path = fy_strdup(r->path);
    free(cw->config_path);
    cw->config_path = fy_strdup(r->path);
  }
  if (cfg->watch || cw->watch) fy_watch_update(cw);
  fy_buf log_errors;
  fy_buf_init(&log_errors);
  if (fy_access_log_configure(cfg, &log_errors) != FY_OK)
    fy_log_error("generation %u is live, but the access log keeps its old file: %.*s", cw->gen->number,
                 (int)log_errors.len, log_errors.data);
  fy_buf_free(&log_errors);
  fy_reload_finish(r);
}

static void fy_switch_run(fy_msg *m, fy_worker *w) {
  fy_switch_msg *s = (fy_switch_msg *)m;
  fy_reload *r = s->r;
  fy_runtime *rt = r->rt; /* read before the count: once it is full, r may be gone */
  fy_worker_switch(w, s->gen);
  if (atomic_fetch_add(&r->acks, 1) + 1 == rt->nworkers) fy_worker_post(&rt->control, &r->done);
}

static void fy_reload_built(uv_work_t *req, int status) {
  fy_reload *r = req->data;
  fy_runtime *rt = r->rt;
  (void)status;
  if (r->rc == FY_OK && rt->stopping) {
    fy_gen_unref(r->control);
    for (size_t i = 0; i < rt->nworkers; i++)
      fy_gen_unref(r->gens[i]);
    fy_buf_printf(&r->errors, "ferry is stopping\n");
    r->rc = FY_ECONFIG;
  }
  if (r->rc != FY_OK) {
    fy_reload_finish(r);
    return;
  }
  unsigned number = rt->control.gen->number + 1;
  r->control->number = number;
  r->switches = fy_calloc(rt->nworkers, sizeof *r->switches);
  r->done.run = fy_reload_all_switched;
  for (size_t i = 0; i < rt->nworkers; i++) {
    r->gens[i]->number = number;
    r->switches[i] = (fy_switch_msg){.m.run = fy_switch_run, .r = r, .gen = r->gens[i]};
    fy_worker_post(&rt->workers[i], &r->switches[i].m);
  }
}

static void fy_reload_next(fy_runtime *rt) {
  fy_reload *r = rt->reload;
  if (r == NULL) return;
  r->start = uv_hrtime();
  r->live = rt->control.gen->cfg;
  fy_log_info("reloading %s on %zu worker%s", r->path, rt->nworkers, rt->nworkers == 1 ? "" : "s");
  if (rt->notify) fy_notify_reloading();
  uv_queue_work(rt->loop, &r->work, fy_reload_work, fy_reload_built);
}

void fy_runtime_reload(fy_runtime *rt, const char *path, fy_reload_cb cb, void *data) {
  fy_reload *r = fy_calloc(1, sizeof *r);
  r->rt = rt;
  r->path = fy_strdup(path && path[0] ? path : rt->config_path);
  if (!(path && path[0]) && rt->config_text) {
    r->text = fy_strdup(rt->config_text);
    r->base = fy_strdup(rt->config_base);
  }
  r->cb = cb;
  r->data = data;
  r->work.data = r;
  r->gens = fy_calloc(rt->nworkers, sizeof *r->gens);
  fy_buf_init(&r->errors);
  if (rt->stopping) {
    fy_buf_printf(&r->errors, "ferry is stopping\n");
    rt->reload_failures++;
    if (cb) cb(rt, FY_ECONFIG, rt->control.gen->number, &r->errors, data);
    fy_buf_free(&r->errors);
    free(r->gens);
    free(r->path);
    free(r->text);
    free(r->base);
    free(r);
    return;
  }
  fy_reload **tail = &rt->reload;
  while (*tail)
    tail = &(*tail)->next;
  *tail = r;
  if (rt->reload == r) fy_reload_next(rt);
}

/* ---- snapshots for /status and /metrics ------------------------------------------- */

typedef struct fy_collect fy_collect;
typedef struct fy_collect_part {
  fy_msg m;
  fy_collect *c;
  size_t i;
} fy_collect_part;

struct fy_collect {
  fy_runtime *rt;
  atomic_size_t pending;
  fy_worker_view *views;
  fy_collect_part *parts;
  fy_collect_cb cb;
  void *data;
  fy_msg done;
};

static void fy_collect_done(fy_msg *m, fy_worker *cw) {
  fy_collect *c = FY_CONTAINER_OF(m, fy_collect, done);
  (void)cw;
  c->cb(c->rt, c->views, c->rt->nworkers, c->data);
  for (size_t i = 0; i < c->rt->nworkers; i++) {
    free(c->views[i].servers);
    fy_metrics_free(&c->views[i].metrics);
    fy_policy_metrics_free(&c->views[i].policy);
  }
  free(c->views);
  free(c->parts);
  free(c);
}

static void fy_collect_run(fy_msg *m, fy_worker *w) {
  fy_collect_part *p = (fy_collect_part *)m;
  fy_collect *c = p->c;
  fy_worker_view *v = &c->views[p->i];
  v->index = w->index;
  v->generation = w->gen->number;
  for (fy_list *e = w->conns.next; e != &w->conns; e = e->next)
    v->connections++;
  for (fy_list *e = w->streams.next; e != &w->streams; e = e->next)
    v->streams++;
  v->stats = w->stats;
  v->lua_memory = w->gen->lua.mem_used;
  v->hook_errors = w->gen->lua.errors;
  v->hook_timeouts = w->gen->lua.timeouts;
  v->hook_nomem = w->gen->lua.nomem;
  fy_metrics_merge(&v->metrics, &w->metrics);
  fy_lua_counters_bind(&w->gen->lua);
  fy_policy_metrics_mark_live(&w->policy_metrics, w->gen->lua.counters, w->gen->lua.ncounters);
  fy_policy_metrics_merge(&v->policy, &w->policy_metrics);
  v->access_dropped = w->access_dropped;
  /* This runs on the worker's thread: its CPU time over its age. */
  struct timespec ts;
  uint64_t up = uv_hrtime() - w->started_ns, cpu = 0;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0)
    cpu = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  v->busy = up > 0 ? FY_MIN((double)cpu / (double)up, 1.0) : 0;
  const fy_gen *g = w->gen;
  for (size_t i = 0; i < g->cfg->ngroups; i++) {
    const fy_group *gr = &g->groups[i];
    v->servers = fy_realloc(v->servers, (v->nservers + gr->nservers + 1) * sizeof *v->servers);
    for (size_t j = 0; j < gr->nservers; j++) {
      fy_server_view *sv = &v->servers[v->nservers++];
      sv->group = i;
      snprintf(sv->addr, sizeof sv->addr, "%s", gr->servers[j]->addr_text);
      sv->active = gr->servers[j]->active;
      sv->nidle = gr->servers[j]->nidle;
    }
  }
  if (atomic_fetch_sub(&c->pending, 1) == 1) fy_worker_post(&c->rt->control, &c->done);
}

void fy_runtime_collect(fy_runtime *rt, fy_collect_cb done, void *data) {
  fy_collect *c = fy_calloc(1, sizeof *c);
  c->rt = rt;
  c->cb = done;
  c->data = data;
  c->done.run = fy_collect_done;
  atomic_init(&c->pending, rt->nworkers);
  c->views = fy_calloc(rt->nworkers, sizeof *c->views);
  c->parts = fy_calloc(rt->nworkers, sizeof *c->parts);
  for (size_t i = 0; i < rt->nworkers; i++) {
    c->parts[i] = (fy_collect_part){.m.run = fy_collect_run, .c = c, .i = i};
    fy_worker_post(&rt->workers[i], &c->parts[i].m);
  }
}

/* ---- drain and exit ------------------------------------------------------------ */

/*
 * Stopping: every worker drains (its listeners close together, after the
 * same drain.delay); when all are done and no reload is under way, each is
 * told to exit, which closes its inbox and ends its loop; the control loop
 * ends once every worker has exited.
 */
static void fy_exited_run(fy_msg *m, fy_worker *cw) {
  fy_runtime *rt = cw->rt;
  free(m);
  if (++rt->exited < rt->nworkers) return;
  fy_worker_close(&rt->control);
  fy_worker_inbox_close(&rt->control);
  if (rt->on_stopped) rt->on_stopped(rt, rt->on_stopped_data);
}

static void fy_exit_run(fy_msg *m, fy_worker *w) {
  fy_msg *ack = m; /* reused: posted back to say this worker is gone */
  ack->run = fy_exited_run;
  fy_worker_close(w);
  fy_worker_post(&w->rt->control, ack);
  fy_worker_inbox_close(w);
}

static void fy_runtime_maybe_exit(fy_runtime *rt) {
  if (!rt->stopping || !rt->control_stopped || rt->stopped < rt->nworkers || rt->reload) return;
  rt->stopped = SIZE_MAX; /* once */
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_msg *m = fy_calloc(1, sizeof *m);
    m->run = fy_exit_run;
    fy_worker_post(&rt->workers[i], m);
  }
}

static void fy_stopped_run(fy_msg *m, fy_worker *cw) {
  fy_runtime *rt = cw->rt;
  free(m);
  rt->stopped++;
  fy_runtime_maybe_exit(rt);
}

static void fy_worker_drained(fy_worker *w) {
  fy_msg *m = fy_calloc(1, sizeof *m);
  m->run = fy_stopped_run;
  fy_worker_post(&w->rt->control, m);
}

static void fy_control_drained(fy_worker *cw) {
  cw->rt->control_stopped = true;
  fy_runtime_maybe_exit(cw->rt);
}

static void fy_stop_run(fy_msg *m, fy_worker *w) {
  free(m);
  fy_worker_stop(w, fy_worker_drained);
}

void fy_runtime_stop(fy_runtime *rt, void (*stopped)(fy_runtime *rt, void *data), void *data) {
  if (rt->stopping) return;
  rt->stopping = true;
  rt->on_stopped = stopped;
  rt->on_stopped_data = data;
  if (rt->notify) fy_notify_stopping();
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_msg *m = fy_calloc(1, sizeof *m);
    m->run = fy_stop_run;
    fy_worker_post(&rt->workers[i], m);
  }
  fy_worker_stop(&rt->control, fy_control_drained);
}

void fy_runtime_release(fy_runtime *rt) {
  for (size_t i = 0; i < rt->nworkers; i++) {
    fy_worker *w = &rt->workers[i];
    if (!rt->on_loop) {
      uv_thread_join(&w->thread);
    } else if (w->gen) { /* what fy_worker_thread does after its loop, here on the host's */
      fy_gen_unref(w->gen);
      w->gen = NULL;
    }
  }
  if (rt->control.gen) fy_gen_unref(rt->control.gen);
  rt->control.gen = NULL;
}

void fy_runtime_free(fy_runtime *rt) {
  for (size_t i = 0; i < rt->nworkers; i++)
    free(rt->workers[i].listeners);
  if (rt->on_loop) { /* this thread's spare blocks and access log batch, as a worker thread's end */
    fy_pool_drain();
    fy_access_log_thread_end();
  }
  free(rt->control.listeners);
  free(rt->workers);
  free(rt->loops);
  free(rt->config_path);
  free(rt->config_text);
  free(rt->config_base);
  free(rt);
  fy_access_log_close();
}
