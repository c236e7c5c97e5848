#include "upstream.h"

#include "log.h"
#include "pool.h"
#include "worker.h"

#include <stdio.h>

/* ---- groups ------------------------------------------------------------- */

static bool fy_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b);
static void fy_server_free(fy_server *s);

fy_server_health *fy_server_health_ref(fy_server_health *h) {
  atomic_fetch_add(&h->refs, 1);
  return h;
}

void fy_server_health_unref(fy_server_health *h) {
  if (h && atomic_fetch_sub(&h->refs, 1) == 1) free(h);
}

static void fy_server_init(fy_server *s, fy_group *g, const fy_cfg_server *cs, const struct sockaddr *sa,
                           size_t salen) {
  memset(s, 0, sizeof *s);
  s->group = g;
  s->name = cs->name;
  s->weight = cs->weight ? cs->weight : 1;
  memcpy(&s->addr, sa, salen);
  fy_list_init(&s->idle);
  char ip[INET6_ADDRSTRLEN] = "?";
  int port = 0;
  fy_addr_name(&s->addr, ip, sizeof ip, &port);
  snprintf(s->addr_text, sizeof s->addr_text, sa->sa_family == AF_INET6 ? "[%s]:%d" : "%s:%d", ip, port);
}

/* The TLS name of an entry's servers: the group's server_name, else the entry's host. */
static const char *fy_entry_tls_name(const fy_group *g, const fy_entry *e) {
  return g->cfg->tls_ctx ? fy_tls_client_name(g->cfg->tls_ctx, e->cfg->host) : NULL;
}

/* Whether e already has a server for this address: an address is one server per TLS name. */
static bool fy_group_has(const fy_group *g, const fy_entry *e, const struct sockaddr_storage *ss) {
  for (size_t j = 0; j < g->nservers; j++)
    if (fy_addr_equal(&g->servers[j]->addr, ss) &&
        fy_str_eq(g->servers[j]->tls_name, fy_entry_tls_name(g, e)))
      return true;
  return false;
}

static fy_server *fy_group_add_server(fy_group *g, fy_entry *e, const struct sockaddr_storage *ss,
                                      fy_server_health *health) {
  fy_server *s = fy_calloc(1, sizeof *s);
  fy_server_init(s, g, e->cfg, (const struct sockaddr *)ss,
                 ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
  if (health) {
    s->health = fy_server_health_ref(health);
  } else {
    s->health = fy_calloc(1, sizeof *s->health);
    atomic_init(&s->health->refs, 1);
  }
  s->entry = e;
  s->tls_name = fy_entry_tls_name(g, e);
  g->servers = fy_realloc(g->servers, (g->nservers + 1) * sizeof *g->servers);
  g->servers[g->nservers++] = s;
  if (g->loop) fy_health_start(s, g->loop); /* the group serves already: check the newcomer too */
  return s;
}

static int fy_ring_cmp(const void *a, const void *b) {
  uint64_t x = ((const fy_ring_node *)a)->hash, y = ((const fy_ring_node *)b)->hash;
  return x < y ? -1 : x > y;
}

/* Consistent hashing ring: FY_RING_POINTS points per unit of weight. */
#define FY_RING_POINTS 100
static void fy_group_build_ring(fy_group *g) {
  free(g->ring);
  g->ring = NULL;
  g->nring = 0;
  if (g->cfg->balance != FY_BALANCE_HASH || g->nservers == 0) return;
  size_t n = 0;
  for (size_t i = 0; i < g->nservers; i++)
    n += g->servers[i]->weight * FY_RING_POINTS;
  g->ring = fy_calloc(n, sizeof *g->ring);
  for (size_t i = 0; i < g->nservers; i++) {
    fy_server *s = g->servers[i];
    for (unsigned k = 0; k < s->weight * FY_RING_POINTS; k++) {
      char point[96];
      int len = snprintf(point, sizeof point, "%s#%u", s->addr_text, k);
      g->ring[g->nring++] = (fy_ring_node){fy_hash_bytes(point, (size_t)len), s};
    }
  }
  qsort(g->ring, g->nring, sizeof *g->ring, fy_ring_cmp);
}

/* An IP literal needs no resolving; a name is resolved now and again while running. */
static int fy_entry_init(fy_group *g, fy_entry *e, const fy_cfg_server *cs, size_t i, const fy_config *cfg,
                         fy_dns_memo *memo, fy_buf *errors) {
  e->group = g;
  e->cfg = cs;
  fy_dns_answer answer;
  memset(&answer, 0, sizeof answer);
  if (uv_ip4_addr(cs->host, cs->port, (struct sockaddr_in *)&answer.addrs[0]) == 0 ||
      uv_ip6_addr(cs->host, cs->port, (struct sockaddr_in6 *)&answer.addrs[0]) == 0) {
    answer.n = 1;
    e->literal = true;
  } else {
    char err[256];
    if (fy_dns_resolve_memo(memo, cfg->dns_servers, cs->host, cs->port, cfg->dns_timeout, &answer, err,
                            sizeof err) != 0) {
      fy_buf_printf(errors, "%s: upstreams.%s.servers[%zu]: cannot resolve '%s': %s\n", cfg->path,
                    g->cfg->name, i + 1, cs->host, err);
      return FY_ECONFIG;
    }
    e->ttl = answer.ttl;
  }
  for (size_t k = 0; k < answer.n; k++)
    if (!fy_group_has(g, e, &answer.addrs[k])) fy_group_add_server(g, e, &answer.addrs[k], NULL);
  return 0;
}

int fy_groups_init(fy_group **out, const fy_config *cfg, fy_dns_memo *memo, fy_buf *errors) {
  int rc = 0;
  fy_group *groups = fy_calloc(cfg->ngroups, sizeof *groups);
  for (size_t i = 0; i < cfg->ngroups; i++) {
    fy_group *g = &groups[i];
    g->index = i;
    g->cfg = &cfg->groups[i];
    g->config = cfg;
    g->nentries = g->cfg->nservers;
    g->entries = fy_calloc(g->nentries, sizeof *g->entries);
    for (size_t j = 0; j < g->nentries; j++)
      if (fy_entry_init(g, &g->entries[j], &g->cfg->servers[j], j, cfg, memo, errors) != 0) rc = FY_ECONFIG;
    fy_group_build_ring(g);
  }
  *out = groups;
  if (rc != 0) fy_groups_close(groups, cfg->ngroups);
  return rc;
}

/* ---- re-resolving names while running ------------------------------------------ */

static uint64_t fy_entry_interval(const fy_entry *e, bool failed) {
  const fy_config *cfg = e->group->config;
  uint64_t ms = failed ? cfg->dns_min_ttl : (uint64_t)e->ttl * 1000;
  return FY_MAX(cfg->dns_min_ttl, FY_MIN(ms, cfg->dns_max_ttl));
}

static void fy_entry_schedule(fy_entry *e, bool failed);

/*
 * Servers of e whose address left the answer stop taking new requests:
 * their idle connections close, busy ones finish and then close. They stay
 * allocated (in g->gone) until the generation goes, since exchanges in
 * flight may still point at them.
 */
static void fy_entry_drop_server(fy_group *g, size_t index) {
  fy_server *s = g->servers[index];
  fy_log_info("upstream %s: %s no longer resolves to %s: draining it", g->cfg->name, s->name, s->addr_text);
  s->gone = true;
  fy_health_stop(s);
  while (!fy_list_empty(&s->idle))
    fy_upstream_release(FY_CONTAINER_OF(s->idle.next, fy_uconn, pool_link), false);
  g->servers[index] = g->servers[--g->nservers];
  g->gone = fy_realloc(g->gone, (g->ngone + 1) * sizeof *g->gone);
  g->gone[g->ngone++] = s;
}

fy_server_health *fy_group_health_of(fy_group *g, size_t entry, const struct sockaddr_storage *addr) {
  for (size_t j = 0; j < g->nservers; j++)
    if (g->servers[j]->entry == &g->entries[entry] && fy_addr_equal(&g->servers[j]->addr, addr))
      return g->servers[j]->health;
  return NULL;
}

void fy_groups_share_health(fy_group *to, fy_group *from, size_t n) {
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < to[i].nservers; j++) {
      fy_server *s = to[i].servers[j];
      fy_server_health *h = fy_group_health_of(&from[i], (size_t)(s->entry - to[i].entries), &s->addr);
      if (h == NULL || h == s->health) continue;
      fy_server_health_unref(s->health);
      s->health = fy_server_health_ref(h);
    }
}

static void fy_entry_apply(fy_entry *e, const fy_dns_answer *answer, fy_server_health *const *health) {
  fy_group *g = e->group;
  bool changed = false;
  for (size_t i = g->nservers; i-- > 0;) {
    fy_server *s = g->servers[i];
    if (s->entry != e) continue;
    bool kept = false;
    for (size_t k = 0; k < answer->n && !kept; k++)
      kept = fy_addr_equal(&s->addr, &answer->addrs[k]);
    if (!kept) {
      fy_entry_drop_server(g, i);
      changed = true;
    }
  }
  for (size_t k = 0; k < answer->n; k++) {
    if (fy_group_has(g, e, &answer->addrs[k])) continue;
    fy_server *s = fy_group_add_server(g, e, &answer->addrs[k], health ? health[k] : NULL);
    fy_log_info("upstream %s: %s now also resolves to %s", g->cfg->name, e->cfg->name, s->addr_text);
    changed = true;
  }
  if (changed) fy_group_build_ring(g);
}

void fy_group_apply_answer(fy_group *g, size_t entry, const fy_dns_answer *answer,
                           fy_server_health *const *health) {
  fy_entry_apply(&g->entries[entry], answer, health);
}

static void fy_entry_resolved(void *data, int status, const char *error, const fy_dns_answer *answer) {
  fy_entry *e = data;
  e->pending = NULL;
  /* Resolution runs on the loop of the worker that re-resolves (a runtime's control worker): it counts it. */
  fy_worker *w = e->group->loop ? fy_worker_of(e->group->loop) : NULL;
  if (w) {
    char labels[64];
    const char *outcome = status != 0 ? "failed" : answer->n == 0 ? "empty" : "ok";
    fy_metrics_add(&w->metrics, FY_M_DNS_LOOKUPS, fy_labels(labels, sizeof labels, "outcome", outcome, NULL),
                   1);
  }
  if (status != 0 || answer->n == 0) {
    fy_log_warn("upstream %s: resolving %s failed (%s); keeping its %s addresses", e->group->cfg->name,
                e->cfg->host, error ? error : "no address", "last good");
    fy_entry_schedule(e, true);
    return;
  }
  e->ttl = answer->ttl;
  fy_entry_apply(e, answer, NULL);
  if (e->group->on_resolved)
    e->group->on_resolved(e->group, (size_t)(e - e->group->entries), answer, e->group->on_resolved_data);
  fy_entry_schedule(e, false);
}

static void fy_entry_timer_cb(uv_timer_t *t) {
  fy_entry *e = t->data;
  e->pending = fy_dns_resolve(e->group->dns, e->cfg->host, e->cfg->port, fy_entry_resolved, e);
}

static void fy_entry_schedule(fy_entry *e, bool failed) {
  uv_timer_start(e->timer, fy_entry_timer_cb, fy_entry_interval(e, failed), 0);
}

static void fy_entry_timer_free(uv_handle_t *h) { free(h); }

void fy_groups_start(fy_group *groups, size_t n, uv_loop_t *loop, fy_dns *dns) {
  for (size_t i = 0; i < n; i++) {
    fy_group *g = &groups[i];
    g->dns = dns;
    g->loop = loop;
    for (size_t j = 0; j < g->nservers; j++)
      fy_health_start(g->servers[j], loop);
    for (size_t j = 0; j < g->nentries; j++) {
      fy_entry *e = &g->entries[j];
      if (e->literal || e->timer) continue;
      e->timer = fy_malloc(sizeof *e->timer);
      uv_timer_init(loop, e->timer);
      e->timer->data = e;
      fy_entry_schedule(e, false);
    }
  }
}

static void fy_groups_stop_entries(fy_group *g) {
  g->loop = NULL;
  for (size_t j = 0; j < g->nservers; j++)
    fy_health_stop(g->servers[j]);
  for (size_t j = 0; j < g->nentries; j++) {
    fy_entry *e = &g->entries[j];
    fy_dns_cancel(e->pending);
    e->pending = NULL;
    if (e->timer) uv_close((uv_handle_t *)e->timer, fy_entry_timer_free);
    e->timer = NULL;
  }
}

static bool fy_addr_equal(const struct sockaddr_storage *a, const struct sockaddr_storage *b) {
  if (a->ss_family != b->ss_family) return false;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  }
  const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
  return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

/* A server of groups that a connection to old may serve: same address, same TLS identity. */
static fy_server *fy_groups_find_server(fy_group *groups, size_t n, const fy_server *old) {
  for (size_t i = 0; i < n; i++)
    for (size_t j = 0; j < groups[i].nservers; j++) {
      const fy_server *s = groups[i].servers[j];
      if (fy_addr_equal(&s->addr, &old->addr) && fy_str_eq(s->tls_name, old->tls_name) &&
          fy_tls_client_ctx_same(s->group->cfg->tls_ctx, old->group->cfg->tls_ctx))
        return groups[i].servers[j];
    }
  return NULL;
}

void fy_groups_adopt_idle(fy_group *to, size_t nto, fy_group *from, size_t nfrom) {
  for (size_t i = 0; i < nfrom; i++) {
    for (size_t j = 0; j < from[i].nservers; j++) {
      fy_server *old = from[i].servers[j];
      fy_server *s = fy_groups_find_server(to, nto, old);
      while (s && !fy_list_empty(&old->idle) && s->nidle < s->group->cfg->max_idle) {
        fy_uconn *uc = FY_CONTAINER_OF(old->idle.next, fy_uconn, pool_link);
        fy_list_remove(&uc->pool_link);
        old->nidle--;
        uc->server = s;
        fy_list_insert_head(&s->idle, &uc->pool_link);
        s->nidle++;
        fy_uconn_timer(uc, s->group->cfg->idle_timeout);
      }
    }
  }
}

void fy_groups_stop(fy_group *groups, size_t n) {
  for (size_t i = 0; i < n; i++)
    fy_groups_stop_entries(&groups[i]);
}

void fy_groups_drop_idle(fy_group *groups, size_t n) {
  for (size_t i = 0; i < n; i++) {
    fy_group *g = &groups[i];
    for (size_t j = 0; j < g->nservers; j++) {
      fy_server *s = g->servers[j];
      while (!fy_list_empty(&s->idle))
        fy_upstream_release(FY_CONTAINER_OF(s->idle.next, fy_uconn, pool_link), false);
    }
  }
}

static void fy_server_free(fy_server *s) {
  fy_tls_session_free(s->tls_session);
  fy_server_health_unref(s->health);
  free(s);
}

void fy_groups_close(fy_group *groups, size_t n) {
  fy_groups_drop_idle(groups, n);
  for (size_t i = 0; i < n; i++) {
    fy_group *g = &groups[i];
    fy_groups_stop_entries(g);
    for (size_t j = 0; j < g->nservers; j++)
      fy_server_free(g->servers[j]);
    for (size_t j = 0; j < g->ngone; j++)
      fy_server_free(g->gone[j]);
    free(g->servers);
    free(g->gone);
    free(g->entries);
    free(g->ring);
    free(g->m_requests);
  }
  free(groups);
}

/* ---- connections -------------------------------------------------------- */

static void fy_uconn_close_cb(uv_handle_t *h) {
  fy_uconn *uc = h->data;
  if (--uc->closing == 0) {
    fy_pool_put(uc->rbuf);
    fy_buf_free(&uc->preface);
    fy_sock_free(&uc->sock);
    free(uc);
  }
}

static void fy_uconn_close(fy_uconn *uc) {
  if (uc->state == FY_UC_CLOSING) return;
  if (uc->state == FY_UC_IDLE) {
    fy_list_remove(&uc->pool_link);
    uc->server->nidle--;
  } else {
    uc->server->active--;
  }
  uc->state = FY_UC_CLOSING;
  uc->owner = NULL;
  fy_write_forget(&uc->write_req);
  fy_dial_forget(&uc->dial);
  uc->closing = 2;
  fy_sock_close(&uc->sock, fy_uconn_close_cb, false);
  uv_close((uv_handle_t *)&uc->timer, fy_uconn_close_cb);
}

static void fy_uconn_timer_cb(fy_deadline *d) {
  fy_uconn *uc = d->timer.data;
  if (uc->state == FY_UC_IDLE || uc->owner == NULL) {
    fy_uconn_close(uc);
  } else if (uc->state == FY_UC_CONNECTING) {
    fy_uconn_ready_cb ready = uc->on_ready;
    ready(uc, FY_ETIMEDOUT); /* the owner releases it, which closes it */
  } else {
    uc->on_timeout(uc);
  }
}

void fy_uconn_timer(fy_uconn *uc, uint64_t ms) { fy_deadline_set(&uc->timer, ms); }

static void fy_uconn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  fy_uconn *uc = h->data;
  (void)suggested;
  if (uc->rbuf == NULL) uc->rbuf = fy_pool_get();
  if (uc->rpos == uc->rlen && !uc->pinned) uc->rpos = uc->rlen = 0;
  *buf = uv_buf_init(uc->rbuf + uc->rlen, (unsigned)(FY_UCONN_RBUF_SIZE - uc->rlen));
}

static void fy_uconn_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  fy_uconn *uc = s->data;
  (void)buf;
  if (n == 0) return;
  if (uc->state != FY_UC_ACTIVE || uc->owner == NULL) {
    fy_uconn_close(uc); /* an idle connection spoke or closed: it is no use any more */
    return;
  }
  if (n > 0)
    uc->rlen += (size_t)n;
  else
    uc->eof = true;
  fy_uconn_update_reading(uc);
  uc->on_read(uc, n);
}

/*
 * A connection is read all the time, idle or busy, so that a server's close
 * is noticed at once and no exchange pays for switching reads off and on.
 * Reading pauses only when the buffer is full: of bytes not parsed yet, or
 * of bytes a client write still points into (pinned).
 */
void fy_uconn_update_reading(fy_uconn *uc) {
  if (uc->state == FY_UC_CLOSING || uc->state == FY_UC_CONNECTING) return;
  bool full = uc->rbuf && uc->rlen == FY_UCONN_RBUF_SIZE && (uc->pinned || uc->rpos < uc->rlen);
  bool want = !full && !uc->eof;
  if (want == uc->reading) return;
  uc->reading = want;
  if (want)
    fy_sock_read_start(&uc->sock, fy_uconn_alloc_cb, fy_uconn_on_read);
  else
    fy_sock_read_stop(&uc->sock);
}

/* Connected, PROXY header sent, TLS (if any) established: the owner may use it. */
static void fy_uconn_ready(fy_uconn *uc, int status) {
  if (status == 0) {
    uc->state = FY_UC_ACTIVE;
    fy_uconn_timer(uc, 0);
    fy_uconn_update_reading(uc);
  }
  uc->on_ready(uc, status);
}

static bool fy_uconn_dialing(fy_dial *d) { return ((fy_uconn *)d->data)->state == FY_UC_CONNECTING; }

static void fy_uconn_dialed(fy_dial *d, int status) {
  fy_uconn *uc = d->data;
  if (status < 0 && d->stage == FY_DIAL_TLS)
    fy_log_warn("upstream %s: TLS with %s (%s) failed: %s", uc->server->group->cfg->name,
                uc->server->addr_text, uc->server->tls_name ? uc->server->tls_name : "no name",
                fy_tls_error(uc->sock.tls));
  fy_uconn_ready(uc, status);
}

static fy_uconn *fy_pool_take(fy_server *s) {
  if (fy_list_empty(&s->idle)) return NULL;
  fy_uconn *uc = FY_CONTAINER_OF(s->idle.next, fy_uconn, pool_link);
  fy_list_remove(&uc->pool_link);
  s->nidle--;
  s->active++;
  uc->state = FY_UC_ACTIVE;
  fy_uconn_timer(uc, 0);
  return uc;
}

int fy_upstream_acquire(uv_loop_t *loop, fy_server *s, struct fy_exchange *owner, bool fresh,
                        fy_uconn_ready_cb ready, fy_uconn_read_cb on_read, fy_uconn_timeout_cb on_timeout,
                        fy_uconn **out) {
  fy_uconn *uc = fresh ? NULL : fy_pool_take(s);
  int rc = uc ? 1 : 0;
  if (uc == NULL) {
    uc = fy_calloc(1, sizeof *uc);
    uv_tcp_init(loop, &uc->sock.tcp);
    fy_deadline_init(loop, &uc->timer, fy_uconn_timer_cb, uc);
    uc->sock.tcp.data = uc;
    uc->server = s;
    fy_list_init(&uc->pool_link);
    uc->state = FY_UC_CONNECTING;
    s->active++;
    uc->dial = (fy_dial){.sock = &uc->sock,
                         .preface = &uc->preface,
                         .tls_ctx = s->group->cfg->tls_ctx,
                         .tls_name = s->tls_name,
                         .tls_session = &s->tls_session,
                         .alive = fy_uconn_dialing,
                         .done = fy_uconn_dialed,
                         .data = uc};
    int err = fy_dial_start(&uc->dial, (struct sockaddr *)&s->addr);
    if (err < 0) {
      fy_uconn_close(uc);
      return err;
    }
    fy_uconn_timer(uc, s->group->cfg->connect_timeout);
  }
  uc->owner = owner;
  uc->on_ready = ready;
  uc->on_read = on_read;
  uc->on_timeout = on_timeout;
  *out = uc;
  return rc;
}

void fy_upstream_release(fy_uconn *uc, bool reusable) {
  fy_server *s = uc->server;
  if (!reusable || uc->eof || uc->state != FY_UC_ACTIVE || s->group->retired || s->gone ||
      s->nidle >= s->group->cfg->max_idle || s->group->cfg->proxy_protocol) {
    fy_uconn_close(uc);
    return;
  }
  s->active--;
  s->nidle++;
  uc->state = FY_UC_IDLE;
  uc->owner = NULL;
  uc->rpos = uc->rlen = 0;
  uc->pinned = false;
  fy_pool_put(uc->rbuf); /* an idle connection holds no buffer */
  uc->rbuf = NULL;
  fy_list_insert_head(&s->idle, &uc->pool_link);
  fy_uconn_timer(uc, s->group->cfg->idle_timeout);
  fy_uconn_update_reading(uc);
}
