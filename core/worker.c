#define _GNU_SOURCE /* accept4 */
#include "worker.h"

#include <malloc.h>

#include "conn.h"
#include "log.h"
#include "runtime.h"
#include "stream.h"
#include "watch.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- generations -------------------------------------------------------- */

int fy_gen_new(fy_worker *w, fy_config *cfg, fy_gen **out, fy_buf *errors) {
  return fy_gen_build(w, cfg, NULL, out, errors);
}

int fy_gen_build(fy_worker *w, fy_config *cfg, fy_dns_memo *memo, fy_gen **out, fy_buf *errors) {
  fy_gen *g = fy_calloc(1, sizeof *g);
  g->refs = 1;
  g->number = 1;
  g->cfg = cfg;
  g->w = w;
  int rc = fy_groups_init(&g->groups, cfg, memo, errors);
  int lrc = fy_lua_init(&g->lua, cfg, errors);
  g->lua.w = w;
  for (size_t i = 0; i < cfg->nlisteners && lrc == 0; i++) {
    const fy_cfg_listener *l = &cfg->listeners[i];
    unsigned need = l->tcp ? FY_HOOK_HAS_ROUTE_STREAM : FY_HOOK_HAS_ROUTE;
    if (!fy_lua_has_hook(&g->lua, l->policy, need)) {
      fy_buf_printf(errors, "%s: listeners[%zu]: the policy %s has no %s hook, which a%s listener needs\n",
                    cfg->path, i + 1, cfg->policies[l->policy], l->tcp ? "route_stream(conn)" : "route(req)",
                    l->tcp ? " tcp" : "n http");
      lrc = FY_ESCRIPT;
    }
  }
  if (rc != 0 || lrc != 0) {
    if (rc == 0) fy_groups_close(g->groups, cfg->ngroups);
    fy_lua_close(&g->lua);
    free(g);
    return rc != 0 ? rc : lrc;
  }
  *out = g;
  return FY_OK;
}

void fy_gen_unref(fy_gen *g) {
  if (--g->refs > 0) return;
  fy_groups_close(g->groups, g->cfg->ngroups);
  fy_lua_close(&g->lua);
  fy_config_free(g->cfg);
  free(g);
}

/* ---- listeners ---------------------------------------------------------- */

/*
 * Accepting. The listening socket is polled here rather than handed to
 * uv_listen: libuv accepts until accept4 fails with EAGAIN and drops the
 * peer's address, so every new connection cost that failed call and a
 * getpeername. Like nginx (multi_accept off), one connection is taken per
 * readiness report; the poll is level-triggered, so the next turn of the
 * loop takes the next one. Out of descriptors (EMFILE, ENFILE) or kernel
 * memory, accepting pauses for FY_ACCEPT_PAUSE_MS, as nginx does, instead of
 * spinning on a socket that stays readable.
 */
#define FY_ACCEPT_PAUSE_MS 100

static void fy_listener_readable(uv_poll_t *p, int status, int events);

static void fy_listener_resume(uv_timer_t *t) {
  fy_listener *l = t->data;
  uv_poll_start(&l->poll, UV_READABLE, fy_listener_readable);
}

static void fy_listener_readable(uv_poll_t *p, int status, int events) {
  fy_listener *l = p->data;
  (void)events;
  if (status < 0) {
    fy_log_warn("listener %s: poll: %s", l->name, uv_strerror(status));
    return;
  }
  struct sockaddr_storage peer;
  socklen_t len = sizeof peer;
  memset(&peer, 0, sizeof peer);
  int fd = accept4(l->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINTR || e == ECONNABORTED) return;
    fy_log_warn("listener %s: accept: %s", l->name, strerror(e));
    if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
      uv_poll_stop(&l->poll);
      uv_timer_start(&l->pause, fy_listener_resume, FY_ACCEPT_PAUSE_MS, 0);
    }
    return;
  }
  if (!l->admin && l->w->gen->cfg->listeners[l->index].tcp)
    fy_stream_accept(l, fd, &peer);
  else
    fy_conn_accept(l, fd, &peer);
}

unsigned fy_listener_close(fy_listener *l, uv_close_cb cb) {
  if (!l->open) return 0; /* never opened, or fy_listener_open failed and closed its socket */
  l->open = false;
  l->poll.data = l->pause.data = l->w;
  uv_close((uv_handle_t *)&l->poll, cb); /* stops polling the socket: it can close now */
  uv_close((uv_handle_t *)&l->pause, cb);
  close(l->fd);
  l->fd = -1;
  return 2;
}

static int fy_listener_open(fy_worker *w, fy_listener *l, const fy_cfg_listener *cl, fy_buf *errors) {
  struct sockaddr_storage ss;
  l->fd = -1;
  int rc = uv_ip4_addr(cl->host, cl->port, (struct sockaddr_in *)&ss);
  if (rc != 0) rc = uv_ip6_addr(cl->host, cl->port, (struct sockaddr_in6 *)&ss);
  if (rc != 0) {
    fy_buf_printf(errors, "listener %s: '%s' is not an IP address\n", cl->name, cl->host);
    return FY_ECONFIG;
  }
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
  socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
  rc = fd < 0 ? -errno : 0;
  bool shared = w->rt && !l->admin;
  if (rc == 0 && shared && w->index == 0) {
    /* Each worker has its own socket on the address (SO_REUSEPORT) and the
     * kernel spreads new connections over them. Another process's
     * SO_REUSEPORT socket would share the port with ours without a word:
     * the first worker binds once without it, so that an address in use is
     * refused as it is with one worker. */
    int probe = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0 || setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(probe, (struct sockaddr *)&ss, len) != 0)
      rc = -errno;
    if (probe >= 0) close(probe);
  }
  if (rc == 0 && (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
                  (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) ||
                  bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 511) != 0))
    rc = -errno;
  if (rc == 0) rc = uv_poll_init_socket(w->loop, &l->poll, fd);
  if (rc != 0) {
    if (fd >= 0) close(fd);
    fy_buf_printf(errors, "listener %s: cannot listen on %s:%d: %s\n", cl->name, cl->host, cl->port,
                  uv_strerror(rc));
    return rc;
  }
  l->fd = fd;
  l->open = true;
  uv_timer_init(w->loop, &l->pause);
  l->poll.data = l->pause.data = l;
  uv_poll_start(&l->poll, UV_READABLE, fy_listener_readable);
  if (w->rt && w->index > 0) return 0; /* the first worker says it for all */
  fy_log_info("listener %s: serving %s on %s:%d", cl->name,
              cl->tcp     ? "tcp"
              : cl->https ? "https"
                          : "http",
              cl->host, cl->port);
  return 0;
}

int fy_worker_listen(fy_worker *w, fy_buf *errors) {
  const fy_config *cfg = w->gen->cfg;
  w->listeners = fy_calloc(cfg->nlisteners + 1, sizeof *w->listeners);
  int rc = 0;
  w->nlisteners = 0;
  for (size_t i = 0; i < cfg->nlisteners && rc == 0 && !w->control; i++) {
    fy_listener *l = &w->listeners[w->nlisteners++];
    l->w = w;
    l->index = i;
    snprintf(l->name, sizeof l->name, "%s", cfg->listeners[i].name);
    rc = fy_listener_open(w, l, &cfg->listeners[i], errors);
  }
  if (w->rt && !w->control) return rc; /* a serving worker: the control worker does the rest */
  if (rc == 0 && cfg->admin_host) {
    fy_listener *l = &w->listeners[w->nlisteners++];
    fy_cfg_listener admin = {.name = "admin", .host = cfg->admin_host, .port = cfg->admin_port};
    l->w = w;
    l->admin = true;
    snprintf(l->name, sizeof l->name, "admin");
    rc = fy_listener_open(w, l, &admin, errors);
  }
  if (rc == 0 && cfg->watch) fy_watch_update(w);
  if (rc == 0 && (rc = fy_dns_new(&w->dns, w->loop, cfg->dns_servers, errors)) == 0)
    fy_groups_start(w->gen->groups, cfg->ngroups, w->loop, w->dns);
  return rc;
}

/* ---- reload ------------------------------------------------------------- */

/* Listeners are bound once: a reload may not add, remove or move one. */
static int fy_reload_check_listeners(const fy_config *live, const fy_config *next, fy_buf *errors) {
  int rc = FY_OK;
  if (live->nlisteners != next->nlisteners) {
    fy_buf_printf(errors,
                  "%s: listeners: %zu listeners instead of %zu; adding or removing a listener "
                  "needs a restart\n",
                  next->path, next->nlisteners, live->nlisteners);
    return FY_ECONFIG;
  }
  for (size_t i = 0; i < live->nlisteners; i++) {
    const fy_cfg_listener *a = &live->listeners[i], *b = &next->listeners[i];
    if (!fy_str_eq(a->name, b->name) || !fy_str_eq(a->host, b->host) || a->port != b->port) {
      fy_buf_printf(errors,
                    "%s: listeners[%zu]: %s on %s:%d would become %s on %s:%d; a listener's name "
                    "and address need a restart\n",
                    next->path, i + 1, a->name, a->host, a->port, b->name, b->host, b->port);
      rc = FY_ECONFIG;
    } else if (a->tcp != b->tcp || a->https != b->https) {
      fy_buf_printf(errors, "%s: listeners[%zu]: %s: changing a listener's type needs a restart\n",
                    next->path, i + 1, a->name);
      rc = FY_ECONFIG;
    }
  }
  if (!fy_str_eq(live->admin_host, next->admin_host) || live->admin_port != next->admin_port) {
    fy_buf_printf(errors, "%s: admin.address: the admin listener's address needs a restart\n", next->path);
    rc = FY_ECONFIG;
  }
  return rc;
}

int fy_worker_check_reload(const fy_config *live, const fy_config *next, unsigned nworkers, fy_buf *errors) {
  int rc = fy_reload_check_listeners(live, next, errors);
  unsigned want = next->workers ? next->workers : fy_runtime_auto_workers();
  if (nworkers && want != nworkers) { /* 0: a runtime serving on its host's loop, always one worker */
    fy_buf_printf(errors,
                  "%s: workers: %u workers instead of %u; changing the number of workers needs a restart\n",
                  next->path, want, nworkers);
    rc = FY_ECONFIG;
  }
  return rc;
}

void fy_worker_switch(fy_worker *w, fy_gen *next) {
  fy_gen *live = w->gen;
  fy_groups_stop(live->groups, live->cfg->ngroups);
  if (w->dns) fy_groups_start(next->groups, next->cfg->ngroups, w->loop, w->dns);
  fy_groups_adopt_idle(next->groups, next->cfg->ngroups, live->groups, live->cfg->ngroups);
  for (size_t i = 0; i < live->cfg->ngroups; i++)
    live->groups[i].retired = true;
  w->gen = next;
  fy_gen_unref(live); /* freed once its last exchange ends */
}

/* ---- the inbox ------------------------------------------------------------ */

static void fy_worker_inbox_cb(uv_async_t *a) {
  fy_worker *w = a->data;
  uv_mutex_lock(&w->inbox_lock);
  fy_msg *m = w->inbox_head;
  w->inbox_head = NULL;
  w->inbox_tail = &w->inbox_head;
  uv_mutex_unlock(&w->inbox_lock);
  while (m) {
    fy_msg *next = m->next;
    m->run(m, w);
    m = next;
  }
}

void fy_worker_inbox_init(fy_worker *w) {
  uv_mutex_init(&w->inbox_lock);
  w->inbox_head = NULL;
  w->inbox_tail = &w->inbox_head;
  uv_async_init(w->loop, &w->inbox_async, fy_worker_inbox_cb);
  w->inbox_async.data = w;
}

void fy_worker_post(fy_worker *w, fy_msg *m) {
  m->next = NULL;
  uv_mutex_lock(&w->inbox_lock);
  *w->inbox_tail = m;
  w->inbox_tail = &m->next;
  uv_mutex_unlock(&w->inbox_lock);
  uv_async_send(&w->inbox_async);
}

static void fy_worker_inbox_closed(uv_handle_t *h) {
  fy_worker *w = h->data;
  uv_mutex_destroy(&w->inbox_lock);
}

void fy_worker_inbox_close(fy_worker *w) {
  fy_worker_inbox_cb(&w->inbox_async); /* nothing posted stays unrun */
  uv_close((uv_handle_t *)&w->inbox_async, fy_worker_inbox_closed);
}

/* ---- worker ------------------------------------------------------------- */

int fy_worker_init(fy_worker *w, uv_loop_t *loop, fy_gen *gen) {
  memset(w, 0, sizeof *w);
  w->loop = loop;
  w->gen = gen;
  fy_list_init(&w->conns);
  fy_list_init(&w->streams);
  fy_list_init(&w->deferred);
  uv_idle_init(loop, &w->idle);
  uv_check_init(loop, &w->check);
  uv_timer_init(loop, &w->trim);
  w->idle.data = w->check.data = w->trim.data = w;
  w->started_ns = uv_hrtime();
  loop->data = w; /* a handle finds its worker through its loop */
  return 0;
}

/* ---- returning memory ---------------------------------------------------- */

#define FY_TRIM_DELAY_MS 250

static void fy_worker_trim_cb(uv_timer_t *t) {
  fy_worker *w = t->data;
  if (w->rt)
    fy_runtime_trim(w->rt); /* one trim for the process, on the control loop */
  else
    malloc_trim(256 * 1024); /* keep a little slack for the next burst */
}

/*
 * Connections that go idle free their head buffers, but glibc keeps freed
 * memory between live allocations resident until malloc_trim() hands whole
 * free pages back. One trim runs 250 ms after the first such release (not
 * per connection): under steady churn at most four a second, each well
 * under a millisecond for a heap of a few MiB.
 */
void fy_worker_memory_released(fy_worker *w) {
  if (uv_is_active((uv_handle_t *)&w->trim) || uv_is_closing((uv_handle_t *)&w->trim)) return;
  uv_timer_start(&w->trim, fy_worker_trim_cb, FY_TRIM_DELAY_MS, 0);
  uv_unref((uv_handle_t *)&w->trim);
}

void fy_worker_close(fy_worker *w) {
  fy_watch_close(w);
  if (w->gen) fy_groups_stop(w->gen->groups, w->gen->cfg->ngroups);
  fy_dns_close(w->dns);
  w->dns = NULL;
  free(w->config_path);
  w->config_path = NULL;
  fy_metrics_free(&w->metrics);
  fy_policy_metrics_free(&w->policy_metrics);
  if (!uv_is_closing((uv_handle_t *)&w->idle)) uv_close((uv_handle_t *)&w->idle, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->check)) uv_close((uv_handle_t *)&w->check, NULL);
  if (!uv_is_closing((uv_handle_t *)&w->trim)) uv_close((uv_handle_t *)&w->trim, NULL);
}

/* ---- deferred work -------------------------------------------------------- */

/*
 * Deferred work runs in the check phase, right after the poll callbacks of
 * the same loop turn, so a write that completed at once costs no extra turn
 * of the loop. Work queued outside the poll phase (a timer) also starts the
 * idle handle, whose only job is to keep poll from blocking until then.
 */
static void fy_worker_check_cb(uv_check_t *h) {
  fy_worker *w = h->data;
  while (!fy_list_empty(&w->deferred)) {
    fy_deferred *d = FY_CONTAINER_OF(w->deferred.next, fy_deferred, link);
    fy_list_remove(&d->link);
    d->run(d);
  }
  uv_check_stop(&w->check);
  uv_idle_stop(&w->idle);
}

static void fy_worker_idle_cb(uv_idle_t *h) { (void)h; }

void fy_worker_defer(fy_worker *w, fy_deferred *d) {
  if (fy_list_empty(&w->deferred)) {
    uv_check_start(&w->check, fy_worker_check_cb);
    uv_idle_start(&w->idle, fy_worker_idle_cb);
  }
  fy_list_insert_head(w->deferred.prev, &d->link); /* append: run in order */
}

void fy_worker_undefer(fy_deferred *d) {
  if (d->link.next != NULL) fy_list_remove(&d->link);
}

void fy_worker_maybe_stopped(fy_worker *w) {
  if (w->stopping && w->unbound && w->closing == 0 && fy_list_empty(&w->conns) &&
      fy_list_empty(&w->streams) && w->on_stopped) {
    if (!uv_is_closing((uv_handle_t *)&w->deadline)) uv_close((uv_handle_t *)&w->deadline, NULL);
    void (*cb)(fy_worker *) = w->on_stopped;
    w->on_stopped = NULL;
    cb(w);
  }
}

static void fy_worker_handle_closed(uv_handle_t *h) {
  fy_worker *w = h->data;
  w->closing--;
  fy_worker_maybe_stopped(w);
}

static void fy_worker_deadline_cb(uv_timer_t *t) {
  fy_worker *w = t->data;
  fy_log_warn("drain deadline reached: closing the remaining connections");
  while (!fy_list_empty(&w->conns))
    fy_conn_close(FY_CONTAINER_OF(w->conns.next, fy_conn, link));
  fy_stream_close_all(w);
}

/* The second half of a drain: stop accepting, close what is idle, wait for the rest. */
static void fy_worker_close_listeners(fy_worker *w) {
  w->unbound = true;
  for (size_t i = 0; i < w->nlisteners; i++)
    w->closing += fy_listener_close(&w->listeners[i], fy_worker_handle_closed);
  /* Idle keep-alive connections close now; busy ones after their exchange. */
  fy_list *e = w->conns.next;
  while (e != &w->conns) {
    fy_conn *c = FY_CONTAINER_OF(e, fy_conn, link);
    e = e->next;
    if (c->rd.rq == FY_RQ_HEAD && c->req.url.len == 0 && c->rpos == c->rlen) fy_conn_close(c);
  }
  fy_groups_drop_idle(w->gen->groups, w->gen->cfg->ngroups);
  fy_groups_stop(w->gen->groups, w->gen->cfg->ngroups);
  uv_timer_start(&w->deadline, fy_worker_deadline_cb, w->gen->cfg->drain_timeout, 0);
  uv_unref((uv_handle_t *)&w->deadline);
  fy_worker_maybe_stopped(w);
}

static void fy_worker_drain_delay_cb(uv_timer_t *t) {
  fy_worker *w = t->data;
  fy_log_info("drain: no longer accepting connections");
  fy_worker_close_listeners(w);
}

/*
 * Drain: /health answers 503 at once and every answer says Connection:
 * close; after drain.delay (time for a load balancer's health checks to
 * take this instance out) the listeners close; in-flight exchanges then
 * have until drain.timeout to finish.
 */
void fy_worker_stop(fy_worker *w, void (*on_stopped)(fy_worker *w)) {
  if (w->stopping) return;
  w->stopping = true;
  w->on_stopped = on_stopped;
  uv_timer_init(w->loop, &w->deadline);
  w->deadline.data = w;
  uint64_t delay = w->gen->cfg->drain_delay;
  if (delay == 0) {
    fy_worker_close_listeners(w);
    return;
  }
  fy_log_info("drain: health checks now fail; still accepting for %.1f s", (double)delay / 1000.0);
  uv_timer_start(&w->deadline, fy_worker_drain_delay_cb, delay, 0);
}
