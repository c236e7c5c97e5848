/*
 * Active health checks: every `health.check.interval`, each server of a
 * group with a check gets a probe, a TCP connect and, when a path is
 * configured, a GET of that path whose status must be 2xx or 3xx, all within
 * `health.check.timeout`. `fall` failures in a row take the server out of
 * service, `rise` successes in a row bring it back. Servers start in
 * service. A probe speaks the group's language: a PROXY protocol LOCAL
 * header first when the group sends PROXY headers, then the TLS handshake
 * (certificate and name checked) when the group uses TLS.
 *
 * A probe is a one-shot request: it owns its handles and frees itself in
 * its close callback. It keeps a pointer to its server only while the
 * server's checks run; stopping them clears that pointer first, so a probe
 * in flight then ends without reporting.
 */
#include "upstream.h"

#include "log.h"
#include "proxy_protocol.h"

#include <stdio.h>

typedef struct fy_probe {
  fy_sock sock; /* first: the uv handle's address is the probe's */
  fy_dial dial; /* connect, PROXY header, TLS */
  fy_write_req write;
  uv_timer_t timer;
  fy_server *server; /* NULL once the checks stopped */
  char request[512];
  fy_buf preface; /* a PROXY protocol LOCAL header, for a group that sends PROXY */
  char reply[64];
  size_t reply_len;
  unsigned closing;
  bool finished;
} fy_probe;

static void fy_probe_freed(uv_handle_t *h) {
  fy_probe *p = h->data;
  if (--p->closing == 0) {
    fy_sock_free(&p->sock);
    fy_buf_free(&p->preface);
    free(p);
  }
}

static void fy_health_record(fy_server *s, bool ok, const char *why) {
  const fy_cfg_group *cfg = s->group->cfg;
  if (ok) {
    s->check_fails = 0;
    if (atomic_load(&s->health->down) && ++s->check_passes >= cfg->check_rise) {
      atomic_store(&s->health->down, false);
      fy_log_info("upstream %s: %s is up again (health check)", cfg->name, s->addr_text);
    }
    return;
  }
  s->check_passes = 0;
  if (!atomic_load(&s->health->down) && ++s->check_fails >= cfg->check_fall) {
    atomic_store(&s->health->down, true);
    fy_log_warn("upstream %s: %s is down (health check: %s)", cfg->name, s->addr_text, why);
  }
}

static void fy_probe_finish(fy_probe *p, bool ok, const char *why) {
  if (p->finished) return;
  p->finished = true;
  if (p->server) {
    p->server->probe = NULL;
    fy_health_record(p->server, ok, why);
  }
  p->closing = 2;
  fy_write_forget(&p->write);
  fy_dial_forget(&p->dial);
  fy_sock_close(&p->sock, fy_probe_freed, false);
  uv_close((uv_handle_t *)&p->timer, fy_probe_freed);
}

static void fy_probe_timeout(uv_timer_t *t) { fy_probe_finish(t->data, false, "timed out"); }

static void fy_probe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  fy_probe *p = h->data;
  (void)suggested;
  *buf = uv_buf_init(p->reply + p->reply_len, (unsigned)(sizeof p->reply - 1 - p->reply_len));
}

/* Enough of the status line to judge: "HTTP/1.x NNN". */
static void fy_probe_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  fy_probe *p = s->data;
  (void)buf;
  if (n > 0) p->reply_len += (size_t)n;
  p->reply[p->reply_len] = '\0';
  int status = 0;
  if (p->reply_len >= 12 && sscanf(p->reply, "HTTP/1.%*1d %3d", &status) == 1) {
    fy_probe_finish(p, status >= 200 && status < 400, "bad status");
    return;
  }
  if (n < 0 || p->reply_len >= sizeof p->reply - 1) fy_probe_finish(p, false, "no valid answer");
}

static void fy_probe_written(fy_write_req *w, int status) {
  fy_probe *p = FY_CONTAINER_OF(w, fy_probe, write);
  if (status < 0) fy_probe_finish(p, false, p->sock.tls ? fy_tls_error(p->sock.tls) : uv_strerror(status));
}

/* Connected (and, for a TLS group, handshook): a TCP check passed; an HTTP check asks. */
static void fy_probe_ready(fy_probe *p) {
  if (p->request[0] == '\0') { /* a TCP check: connecting is the test */
    fy_probe_finish(p, true, NULL);
    return;
  }
  uv_buf_t b = uv_buf_init(p->request, (unsigned)strlen(p->request));
  if (fy_sock_write(&p->sock, &p->write, &b, 1, fy_probe_written) < 0 ||
      fy_sock_read_start(&p->sock, fy_probe_alloc, fy_probe_read) < 0)
    fy_probe_finish(p, false, "write failed");
}

/* Whether the probe goes on to the next step of dialing: not once it finished or its checks stopped. */
static bool fy_probe_dialing(fy_dial *d) {
  fy_probe *p = d->data;
  if (p->finished) return false;
  if (p->server == NULL) { /* the checks stopped meanwhile: nothing to report to */
    fy_probe_finish(p, false, "stopped");
    return false;
  }
  return true;
}

static void fy_probe_dialed(fy_dial *d, int status) {
  fy_probe *p = d->data;
  if (status == 0)
    fy_probe_ready(p);
  else
    fy_probe_finish(p, false, d->stage == FY_DIAL_TLS ? fy_tls_error(p->sock.tls) : uv_strerror(status));
}

static void fy_probe_start(fy_server *s) {
  const fy_cfg_group *cfg = s->group->cfg;
  uv_loop_t *loop = s->check_timer->loop;
  fy_probe *p = fy_calloc(1, sizeof *p);
  p->server = s;
  s->probe = p;
  if (cfg->check_path)
    snprintf(p->request, sizeof p->request,
             "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferry-health-check\r\nConnection: close\r\n\r\n",
             cfg->check_path, s->name);
  if (cfg->proxy_protocol) { /* the server expects a PROXY header: LOCAL says the probe is ferry's own */
    uint8_t header[FY_PP_WRITE_MAX];
    fy_buf_append(&p->preface, header,
                  fy_proxy_protocol_write(cfg->proxy_protocol == 1 ? 1 : 2, NULL, &s->addr, NULL, header));
  }
  uv_tcp_init(loop, &p->sock.tcp);
  uv_timer_init(loop, &p->timer);
  p->sock.tcp.data = p->timer.data = p;
  uv_timer_start(&p->timer, fy_probe_timeout, cfg->check_timeout, 0);
  p->dial = (fy_dial){.sock = &p->sock,
                      .preface = &p->preface,
                      .tls_ctx = cfg->tls_ctx,
                      .tls_name = s->tls_name,
                      .alive = fy_probe_dialing,
                      .done = fy_probe_dialed,
                      .data = p};
  if (fy_dial_start(&p->dial, (struct sockaddr *)&s->addr) < 0) fy_probe_finish(p, false, "connect failed");
}

static void fy_health_tick(uv_timer_t *t) {
  fy_server *s = t->data;
  if (s->probe == NULL) fy_probe_start(s);
}

void fy_health_start(fy_server *s, uv_loop_t *loop) {
  const fy_cfg_group *cfg = s->group->cfg;
  if (cfg->check_interval == 0 || s->check_timer) return;
  s->check_timer = fy_malloc(sizeof *s->check_timer);
  uv_timer_init(loop, s->check_timer);
  s->check_timer->data = s;
  uv_timer_start(s->check_timer, fy_health_tick, 0, cfg->check_interval);
}

static void fy_health_timer_freed(uv_handle_t *h) { free(h); }

void fy_health_stop(fy_server *s) {
  if (s->probe) ((fy_probe *)s->probe)->server = NULL;
  s->probe = NULL;
  if (s->check_timer) uv_close((uv_handle_t *)s->check_timer, fy_health_timer_freed);
  s->check_timer = NULL;
}
