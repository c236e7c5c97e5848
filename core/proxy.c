/*
 * The upstream side of an exchange: run the route hook, get a connection to
 * a server of the chosen group, forward the request head and body, parse the
 * response and relay it to the client with ferry's own framing. It works
 * on an fy_exchange and reaches the client only through x->client
 * (exchange.h); response state changes go through fy_exchange_enter.
 */
#include "exchange.h"

#include "log.h"

#include <stdio.h>

#define FY_MAX_RESPONSE_HEADER_BYTES (64 * 1024)

static void fy_proxy_connect(fy_exchange *x);
static void fy_proxy_upstream_pump(fy_exchange *x);

static inline fy_exchange *fy_proxy_exchange_of(llhttp_t *p) { return p->data; }
static inline const fy_cfg_group *fy_proxy_group(fy_exchange *x) {
  return &x->req->gen->cfg->groups[x->req->group];
}

/* ---- failure ------------------------------------------------------------ */

/* Each failed attempt's kind, for the access log (the first eight). */
static void fy_proxy_note_failure(fy_exchange *x, enum fy_failure f) {
  if (x->req->nfailures < FY_ARRAY_SIZE(x->req->failures)) x->req->failures[x->req->nfailures] = (uint8_t)f;
  x->req->nfailures++;
}

/*
 * The series of a group or server in this worker's metrics: the labels are
 * rendered and looked up on first use only, then the pointer is kept on the
 * group or server (which belong to this worker's generation).
 */
static fy_series *fy_group_series(fy_exchange *x, fy_series **slot, enum fy_metric_family f,
                                  const fy_group *g) {
  if (*slot == NULL) {
    char labels[FY_LABELS_MAX];
    *slot =
        fy_metrics_series(&x->w->metrics, f, fy_labels(labels, sizeof labels, "group", g->cfg->name, NULL));
  }
  return *slot;
}

static fy_series *fy_server_series(fy_exchange *x, fy_series **slot, enum fy_metric_family f,
                                   const fy_server *s, const char *class) {
  if (*slot == NULL) {
    char labels[FY_LABELS_MAX];
    *slot = fy_metrics_series(&x->w->metrics, f,
                              fy_labels(labels, sizeof labels, "group", s->group->cfg->name, "server",
                                        s->addr_text, class ? "class" : NULL, class, NULL));
  }
  return *slot;
}

/* A response head from the current attempt's server: its latency and its class. */
static void fy_proxy_observe_head(fy_exchange *x, int status) {
  fy_server *s = x->server;
  x->req->header_ns = uv_hrtime() - x->attempt_ns;
  fy_series_observe(fy_group_series(x, &s->group->m_header, FY_M_HEADER_DURATION, s->group),
                    x->req->header_ns);
  fy_series_add(fy_server_series(x, &s->m_responses[fy_metrics_class_index(status)], FY_M_SERVER_RESPONSES, s,
                                 fy_metrics_class(status)),
                1);
}

static void fy_proxy_detach(fy_exchange *x, bool reusable) {
  fy_uconn *uc = x->up;
  if (uc == NULL) return;
  x->up = NULL;
  x->uw_pending = false;
  fy_buf_reset(&x->uhead);
  fy_bodyout_reset(&x->ubody);
  uc->owner = NULL;
  fy_upstream_release(uc, reusable);
}

void fy_proxy_abort(fy_exchange *x) { fy_proxy_detach(x, false); }

/*
 * A retry starts outside the client parsing loop, so when it gets a pooled
 * connection (ready at once) nothing else would send the request: pump here.
 */
static void fy_proxy_reconnect(fy_exchange *x) {
  fy_proxy_connect(x);
  if (x->up && x->up->state == FY_UC_ACTIVE) x->client->pump(x);
}

static void fy_proxy_retry_timer_cb(uv_timer_t *t) { fy_proxy_reconnect(t->data); }

/* Starts the next attempt, after a backoff; the failed upstream is already detached. */
static void fy_proxy_retry(fy_exchange *x) {
  x->attempt++;
  x->w->stats.retries++;
  if (!x->retrying) x->counted->retries++;
  x->retrying = true;
  fy_exchange_enter(x, FY_RS_NONE);
  x->replay_pending = x->replay.len > 0;
  uint64_t ms = fy_retry_backoff_ms(x);
  if (ms == 0)
    fy_proxy_reconnect(x);
  else
    uv_timer_start(&x->retry_timer, fy_proxy_retry_timer_cb, ms, 0);
}

static enum fy_failure fy_proxy_classify(fy_uconn *uc, int err) {
  if (uc && uc->state == FY_UC_CONNECTING && uc->sock.tls && err == UV_EPROTO) return FY_FAIL_TLS;
  if (uc == NULL || uc->state == FY_UC_CONNECTING)
    return err == FY_ETIMEDOUT ? FY_FAIL_CONNECT_TIMEOUT : FY_FAIL_CONNECT;
  if (err == FY_ETIMEDOUT) return FY_FAIL_TIMEOUT;
  if (err == FY_EUPSTREAM) return FY_FAIL_BAD_RESPONSE;
  return FY_FAIL_RESET;
}

/*
 * The attempt failed. Before any byte of the response reached the client
 * the request is tried again when retry.c allows it, or the client gets 502
 * (504 for a timeout). After the response has started, the client
 * connection is cut so that a truncated response can never look complete.
 */
static void fy_proxy_fail(fy_exchange *x, int err) {
  fy_uconn *uc = x->up;
  enum fy_failure f = fy_proxy_classify(uc, err);
  x->w->stats.failures[f]++;
  fy_proxy_note_failure(x, f);
  /* A reused keep-alive connection the server had closed: not the server's fault. */
  bool stale = uc && uc->requests > 1 && f == FY_FAIL_RESET;
  const char *server = x->server ? x->server->addr_text : "-";
  fy_proxy_abort(x);
  if (x->rs == FY_RS_BODY && !x->resp_sent) {
    /* The head was parsed but not one byte went out (the failure came in the
     * same read): the client can still get a clean 502, or another try. */
    fy_buf_reset(&x->chead);
    fy_bodyout_reset(&x->cbody);
    x->req->status = 0;
    fy_exchange_enter(x, FY_RS_WAIT);
  }
  if (x->rs == FY_RS_WAIT || x->rs == FY_RS_NONE) {
    if (x->server && !stale) fy_server_failed(x->server, fy_exchange_now_ms(x));
    if (fy_retry_decide(x, f, 0, stale)) {
      fy_proxy_retry(x);
      return;
    }
    int status = f == FY_FAIL_TIMEOUT || f == FY_FAIL_CONNECT_TIMEOUT ? 504 : 502;
    x->req->termination = "upstream_failed";
    fy_log_warn("request %llu: upstream %s: %s (%s) -> %d after %u attempt%s", (unsigned long long)x->req->id,
                server, fy_strerror(err), fy_failure_name(f), status, x->attempt, x->attempt > 1 ? "s" : "");
    fy_exchange_enter(x, FY_RS_NONE);
    fy_exchange_respond_simple(x, status, fy_http_reason(status));
    return;
  }
  fy_log_warn("request %llu: upstream %s failed mid-response: %s; closing the client connection",
              (unsigned long long)x->req->id, server, fy_strerror(err));
  if (x->server) fy_server_failed(x->server, fy_exchange_now_ms(x));
  x->req->status = x->req->status ? x->req->status : 502;
  x->req->termination = "upstream_cut";
  x->client->cut(x); /* a FIN would end a close-delimited body as if it were complete */
}

/* ---- response parser ---------------------------------------------------- */

static int fy_on_resp_begin(llhttp_t *p) {
  fy_headers_reset(&fy_proxy_exchange_of(p)->req->rheaders);
  return 0;
}

static int fy_on_resp_field(llhttp_t *p, const char *at, size_t len) {
  fy_headers *h = &fy_proxy_exchange_of(p)->req->rheaders;
  if (h->buf.len + len > FY_MAX_RESPONSE_HEADER_BYTES) return -1;
  fy_headers_collect_name(h, at, len, SIZE_MAX);
  return 0;
}

static int fy_on_resp_field_complete(llhttp_t *p) {
  /* An empty header name: not a response ferry relays. */
  return fy_headers_collect_name_end(&fy_proxy_exchange_of(p)->req->rheaders) ? 0 : -1;
}

static int fy_on_resp_value(llhttp_t *p, const char *at, size_t len) {
  fy_headers *h = &fy_proxy_exchange_of(p)->req->rheaders;
  if (h->buf.len + len > FY_MAX_RESPONSE_HEADER_BYTES) return -1;
  fy_headers_collect_value(h, at, len);
  return 0;
}

/* Writes the response head for the client, choosing the framing of the body. */
static void fy_proxy_write_response_head(fy_exchange *x, llhttp_t *p) {
  fy_req *r = x->req;
  fy_buf *o = &x->chead;
  int status = p->status_code;
  bool cl = (p->flags & F_CONTENT_LENGTH) && !(p->flags & F_CHUNKED);
  bool bodiless = r->head || status == 204 || status == 304;
  if (!x->req_done) x->close_after = true; /* answered before the request ended */
  x->cbody.chunked = false;
  if (!bodiless && !cl) {
    if (r->http_minor >= 1)
      x->cbody.chunked = true;
    else
      x->close_after = true; /* HTTP/1.0 client: the end of the body is the close */
  }
  bool close = x->client->will_close(x);
  fy_http_strip_hop_by_hop(&x->req->rheaders);
  fy_buf_reset(o);
  fy_http_status_line(o, status);
  for (size_t i = 0; i < x->req->rheaders.n; i++) {
    const fy_hdr *e = &x->req->rheaders.v[i];
    if (e->flags & FY_HDR_REMOVED) continue;
    fy_buf_append(o, fy_hdr_name(&x->req->rheaders, e), e->name_len);
    fy_buf_append(o, ": ", 2);
    fy_buf_append(o, fy_hdr_val(&x->req->rheaders, e), e->val_len);
    fy_buf_append(o, "\r\n", 2);
  }
  if (cl && status != 204) {
    fy_buf_puts(o, "Content-Length: ");
    fy_buf_u64(o, p->content_length);
    fy_buf_append(o, "\r\n", 2);
  }
  if (x->cbody.chunked) fy_buf_puts(o, "Transfer-Encoding: chunked\r\n");
  if (close)
    fy_buf_puts(o, "Connection: close\r\n");
  else if (r->http_minor == 0)
    fy_buf_puts(o, "Connection: keep-alive\r\n");
  fy_buf_append(o, "\r\n", 2);
  r->status = status;
}

/* The policy's response(req, res) hook may edit the headers before they go out. */
static bool fy_proxy_response_hook(fy_exchange *x) {
  fy_req *r = x->req;
  if (!fy_lua_has_hook(&r->gen->lua, r->policy, FY_HOOK_HAS_RESPONSE)) return true;
  fy_buf err;
  fy_buf_init(&err);
  enum fy_hook_outcome out = fy_lua_response(&r->gen->lua, r->policy, r, &err);
  if (out != FY_HOOK_OK)
    fy_log_error("request %llu: response: %s: %.*s", (unsigned long long)r->id, fy_hook_outcome_name(out),
                 (int)err.len, err.data);
  fy_buf_free(&err);
  return out == FY_HOOK_OK;
}

void fy_proxy_log_hook(fy_exchange *x) {
  fy_req *r = x->req;
  if (r->gen == NULL || r->method == NULL || !fy_lua_has_hook(&r->gen->lua, r->policy, FY_HOOK_HAS_LOG))
    return;
  fy_buf err;
  fy_buf_init(&err);
  enum fy_hook_outcome out = fy_lua_log(&r->gen->lua, r->policy, r, &err);
  if (out != FY_HOOK_OK)
    fy_log_error("request %llu: log: %s: %.*s", (unsigned long long)r->id, fy_hook_outcome_name(out),
                 (int)err.len, err.data);
  fy_buf_free(&err);
}

static bool fy_proxy_status_listed(const fy_cfg_group *cfg, int status) {
  for (size_t i = 0; i < cfg->nstatuses; i++)
    if (cfg->statuses[i] == status) return true;
  return false;
}

static int fy_on_resp_headers_complete(llhttp_t *p) {
  fy_exchange *x = fy_proxy_exchange_of(p);
  int status = p->status_code;
  /*
   * 1xx, 204 and 304 never have a body, whatever their headers say; llhttp
   * would read one from Content-Length or Transfer-Encoding, and relaying
   * it would put the upstream's bytes into the client's stream (an extra
   * response the client takes for the answer to its next request). Return
   * 1 tells llhttp there is no body.
   */
  if (status < 100 || status == 101) return -1; /* not HTTP; ferry never asks for an upgrade */
  if (status < 200) return 1;                   /* interim responses are dropped */
  fy_proxy_observe_head(x, status);
  uint64_t now = fy_exchange_now_ms(x);
  if (status >= 500)
    fy_server_failed(x->server, now);
  else
    fy_server_succeeded(x->server, (double)(uv_hrtime() - x->attempt_ns) / 1e6, now);
  if (fy_proxy_status_listed(fy_proxy_group(x), status) &&
      fy_retry_decide(x, FY_FAIL_STATUS, status, false)) {
    x->retry_status = status; /* handled once llhttp returns: this answer is dropped */
    x->w->stats.failures[FY_FAIL_STATUS]++;
    fy_proxy_note_failure(x, FY_FAIL_STATUS);
    return HPE_PAUSED;
  }
  x->req->ustatus = status;
  if (!fy_proxy_response_hook(x)) {
    x->response_failed = true; /* handled once llhttp returns */
    return HPE_PAUSED;
  }
  fy_proxy_write_response_head(x, p);
  fy_exchange_enter(x, FY_RS_BODY);
  return x->req->head || status == 204 || status == 304 ? 1 : 0;
}

static int fy_on_resp_body(llhttp_t *p, const char *at, size_t len) {
  fy_exchange *x = fy_proxy_exchange_of(p);
  if (x->rs != FY_RS_BODY) return -1; /* a body with no head relayed before it: never pass it on */
  fy_bodyout_add(&x->cbody, at, len);
  return 0;
}

static int fy_on_resp_complete(llhttp_t *p) {
  fy_exchange *x = fy_proxy_exchange_of(p);
  if (x->rs != FY_RS_BODY) return 0; /* the end of an interim response */
  if (x->cbody.chunked) fy_http_chunk_end(&x->cbody.copy);
  fy_exchange_enter(x, FY_RS_DONE);
  return HPE_PAUSED;
}

static const llhttp_settings_t fy_response_settings = {
    .on_message_begin = fy_on_resp_begin,
    .on_header_field = fy_on_resp_field,
    .on_header_field_complete = fy_on_resp_field_complete,
    .on_header_value = fy_on_resp_value,
    .on_headers_complete = fy_on_resp_headers_complete,
    .on_body = fy_on_resp_body,
    .on_message_complete = fy_on_resp_complete,
};

/* ---- relaying the response ---------------------------------------------- */

static void fy_proxy_upstream_pump(fy_exchange *x) {
  fy_uconn *uc = x->up;
  while (uc->rpos < uc->rlen && x->rs != FY_RS_DONE && !x->client->sending(x)) {
    const char *data = uc->rbuf + uc->rpos;
    size_t len = uc->rlen - uc->rpos;
    llhttp_errno_t err = llhttp_execute(&uc->parser, data, len);
    uc->rpos += err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&uc->parser) - data);
    if (err == HPE_PAUSED && x->response_failed) {
      x->response_failed = false;
      fy_proxy_abort(x);
      fy_exchange_enter(x, FY_RS_NONE);
      x->req->termination = "policy_error";
      fy_exchange_respond_simple(x, 500, "policy error\n");
      return;
    }
    if (err == HPE_PAUSED && x->retry_status) {
      x->retry_status = 0;
      fy_proxy_abort(x); /* the rest of that answer is not wanted */
      fy_proxy_retry(x);
      return;
    }
    if (err == HPE_PAUSED) {
      llhttp_resume(&uc->parser);
    } else if (err != HPE_OK) {
      fy_log_warn("request %llu: bad response from %s: %s", (unsigned long long)x->req->id,
                  uc->server->addr_text, llhttp_get_error_reason(&uc->parser));
      fy_proxy_fail(x, FY_EUPSTREAM);
      return;
    }
  }
  if (x->rs == FY_RS_DONE) fy_uconn_timer(uc, 0);
  x->client->flush(x);
  if (x->up) fy_uconn_update_reading(x->up); /* not if the flush ended the client connection */
  x->client->done(x);
}

static void fy_proxy_on_read(fy_uconn *uc, ssize_t n) {
  fy_exchange *x = uc->owner;
  if (n > 0) {
    fy_uconn_timer(uc, fy_proxy_group(x)->read_timeout);
    fy_proxy_upstream_pump(x);
    return;
  }
  if (x->rs == FY_RS_DONE) return; /* closed after a complete answer: just not reusable */
  if (n == UV_EOF && x->rs == FY_RS_BODY && llhttp_message_needs_eof(&uc->parser)) {
    llhttp_finish(&uc->parser); /* the end of a close-delimited body: on_message_complete runs */
  }
  if (n == UV_EOF && x->rs == FY_RS_DONE) {
    /* That ended the message. Anything else (in the middle of trailers, say) is a cut,
     * and waiting for more would hang the client. */
    uc->parser.flags &= ~F_CONNECTION_KEEP_ALIVE;
    x->client->flush(x);
    x->client->done(x);
    return;
  }
  fy_proxy_fail(x, (int)n);
}

void fy_proxy_response_written(fy_exchange *x) {
  if (x->up) fy_proxy_upstream_pump(x);
}

static void fy_proxy_on_timeout(fy_uconn *uc) { fy_proxy_fail(uc->owner, FY_ETIMEDOUT); }

/* ---- forwarding the request --------------------------------------------- */

static bool fy_proxy_skip_header(const fy_headers *h, const fy_hdr *e) {
  const char *n = fy_hdr_name(h, e);
  size_t len = e->name_len;
  return (e->flags & FY_HDR_REMOVED) || fy_http_is_hop_by_hop(n, len) ||
         fy_http_token_eq(n, len, "host", 4) || fy_http_token_eq(n, len, "x-forwarded-for", 15) ||
         fy_http_token_eq(n, len, "x-forwarded-proto", 17);
}

static void fy_proxy_write_xff(fy_exchange *x, fy_buf *o) {
  const fy_headers *h = &x->req->headers;
  fy_buf_puts(o, "X-Forwarded-For: ");
  for (ssize_t i = fy_headers_find(h, "x-forwarded-for", 15, 0); i >= 0;
       i = fy_headers_find(h, "x-forwarded-for", 15, (size_t)i + 1)) {
    fy_buf_append(o, fy_hdr_val(h, &h->v[i]), h->v[i].val_len);
    fy_buf_append(o, ", ", 2);
  }
  fy_buf_puts(o, x->req->client_ip);
  fy_buf_puts(o, x->req->tls ? "\r\nX-Forwarded-Proto: https\r\n" : "\r\nX-Forwarded-Proto: http\r\n");
}

static void fy_proxy_write_request_head(fy_exchange *x, fy_server *s) {
  fy_req *r = x->req;
  const fy_headers *h = &r->headers;
  fy_buf *o = &x->uhead;
  fy_buf_reset(o);
  fy_buf_puts(o, r->method);
  fy_buf_append(o, " ", 1);
  fy_buf_append(o, r->target.path, r->target.path_len);
  if (r->target.query) {
    fy_buf_append(o, "?", 1);
    fy_buf_append(o, r->target.query, r->target.query_len);
  }
  fy_buf_puts(o, " HTTP/1.1\r\nHost: ");
  ssize_t host = fy_headers_find(h, "host", 4, 0);
  if (r->target.authority)
    fy_buf_append(o, r->target.authority, r->target.authority_len);
  else if (host >= 0)
    fy_buf_append(o, fy_hdr_val(h, &h->v[host]), h->v[host].val_len);
  else
    fy_buf_puts(o, s->name);
  fy_buf_append(o, "\r\n", 2);
  for (size_t i = 0; i < h->n; i++) {
    const fy_hdr *e = &h->v[i];
    if (fy_proxy_skip_header(h, e)) continue;
    fy_buf_append(o, fy_hdr_name(h, e), e->name_len);
    fy_buf_append(o, ": ", 2);
    fy_buf_append(o, fy_hdr_val(h, e), e->val_len);
    fy_buf_append(o, "\r\n", 2);
  }
  fy_proxy_write_xff(x, o);
  if (r->chunked)
    fy_buf_puts(o, "Transfer-Encoding: chunked\r\n");
  else if (r->has_body) {
    fy_buf_puts(o, "Content-Length: ");
    fy_buf_u64(o, r->content_length);
    fy_buf_append(o, "\r\n", 2);
  }
  fy_buf_append(o, "\r\n", 2);
}

static void fy_proxy_upstream_write_cb(fy_write_req *wr, int status) {
  fy_uconn *uc = FY_CONTAINER_OF(wr, fy_uconn, write_req);
  fy_exchange *x = uc->owner;
  if (x == NULL) return; /* detached while the write was in flight */
  x->uw_pending = false;
  if (status < 0) {
    fy_proxy_fail(x, status);
    return;
  }
  fy_buf_reset(&x->uhead);
  fy_bodyout_reset(&x->ubody);
  /* The read timeout runs once the whole request is sent; until then the
   * client's body timeout bounds the wait. */
  bool sent = x->req_done;
  fy_uconn_timer(uc, x->rs == FY_RS_WAIT && sent ? fy_proxy_group(x)->read_timeout : 0);
  x->client->pump(x);
}

void fy_proxy_flush_upstream(fy_exchange *x) {
  fy_uconn *uc = x->up;
  if (uc == NULL || uc->state != FY_UC_ACTIVE || x->uw_pending) return;
  uv_buf_t bufs[3];
  unsigned n = 0;
  if (x->uhead.len) bufs[n++] = uv_buf_init(x->uhead.data, (unsigned)x->uhead.len);
  if (x->replay_pending) { /* a retry: the body bytes the failed attempt had sent */
    bufs[n++] = uv_buf_init(x->replay.data, (unsigned)x->replay.len);
    x->replay_pending = false;
  }
  fy_buf none;
  fy_buf_init(&none);
  unsigned nbody = fy_bodyout_bufs(&none, &x->ubody, bufs + n);
  if (x->req->has_body) fy_replay_add(x, bufs + n, nbody);
  n += nbody;
  if (n == 0) return;
  int rc = fy_sock_write(&uc->sock, &uc->write_req, bufs, n, fy_proxy_upstream_write_cb);
  if (rc < 0) {
    fy_proxy_fail(x, rc);
    return;
  }
  x->uw_pending = true;
  fy_uconn_timer(uc, fy_proxy_group(x)->write_timeout);
}

bool fy_proxy_can_read_body(fy_exchange *x) {
  return x->up && x->up->state == FY_UC_ACTIVE && !x->uw_pending;
}

/* The connection is usable: queue the head; the caller pumps the body. */
static void fy_proxy_upstream_ready(fy_exchange *x) {
  fy_uconn *uc = x->up;
  llhttp_init(&uc->parser, HTTP_RESPONSE, &fy_response_settings);
  uc->parser.data = x;
  uc->requests++;
  fy_exchange_enter(x, FY_RS_WAIT);
  x->ubody.chunked = x->req->chunked;
  x->attempt_ns = uv_hrtime();
  fy_proxy_write_request_head(x, uc->server);
  if (x->req->expect_continue && !x->continue_sent) {
    x->continue_sent = true;
    fy_buf_puts(&x->chead, "HTTP/1.1 100 Continue\r\n\r\n");
    x->client->flush(x);
  }
}

static void fy_proxy_on_ready(fy_uconn *uc, int status) {
  fy_exchange *x = uc->owner;
  if (status < 0) {
    fy_proxy_fail(x, status);
    return;
  }
  x->req->connect_ns = uv_hrtime() - x->dial_ns;
  fy_group *g = uc->server->group;
  fy_series_observe(fy_group_series(x, &g->m_connect, FY_M_CONNECT_DURATION, g), x->req->connect_ns);
  fy_proxy_upstream_ready(x);
  x->client->pump(x);
}

/* The server for this attempt: the policy's select hook if it has one, else the balancer. */
static fy_server *fy_proxy_pick(fy_exchange *x) {
  fy_req *r = x->req;
  fy_group *g = &r->gen->groups[r->group];
  if (fy_lua_has_hook(&r->gen->lua, r->policy, FY_HOOK_HAS_SELECT)) {
    int index = -1;
    fy_buf err;
    fy_buf_init(&err);
    enum fy_hook_outcome out = fy_lua_select(&r->gen->lua, r->policy, r, r->group, x->attempt, &index, &err);
    if (out != FY_HOOK_OK)
      fy_log_error("request %llu: select: %s: %.*s", (unsigned long long)r->id, fy_hook_outcome_name(out),
                   (int)err.len, err.data);
    fy_buf_free(&err);
    if (out != FY_HOOK_OK) return NULL;
    if (index >= 0 && (size_t)index < g->nservers) return g->servers[index];
  }
  return fy_group_pick(g, x->key, x->has_key, x->tried, x->ntried, fy_exchange_now_ms(x));
}

/*
 * The PROXY protocol header for a new connection of a group that sends one:
 * the client as ferry knows it (from the PROXY header ferry received, if
 * any, else the socket) and the AWS endpoint id passed on.
 */
static void fy_proxy_write_preface(fy_exchange *x, fy_uconn *uc) {
  struct sockaddr_storage src, dst;
  const fy_proxy_info *pp = x->req->pp;
  x->client->addresses(x, &src, &dst);
  uint8_t header[FY_PP_WRITE_MAX];
  size_t n =
      fy_proxy_protocol_write(fy_proxy_group(x)->proxy_protocol, &src, &dst, pp ? pp->vpce_id : NULL, header);
  fy_buf_reset(fy_uconn_preface(uc));
  fy_buf_append(fy_uconn_preface(uc), header, n);
}

static void fy_proxy_connect(fy_exchange *x) {
  fy_server *s = fy_proxy_pick(x);
  if (s == NULL) {
    fy_exchange_enter(x, FY_RS_NONE);
    x->req->termination = "policy_error";
    fy_exchange_respond_simple(x, 500, "policy error\n");
    return;
  }
  x->server = s;
  x->req->server = s->addr_text;
  x->w->stats.attempts++;
  fy_series_add(fy_server_series(x, &s->m_attempts, FY_M_SERVER_ATTEMPTS, s, NULL), 1);
  x->dial_ns = uv_hrtime();
  if (x->ntried < FY_ARRAY_SIZE(x->tried)) x->tried[x->ntried++] = s;
  fy_exchange_enter(x, FY_RS_WAIT);
  fy_uconn *uc;
  int rc = fy_upstream_acquire(x->w->loop, s, x, false, fy_proxy_on_ready, fy_proxy_on_read,
                               fy_proxy_on_timeout, &uc);
  if (rc < 0) {
    fy_proxy_fail(x, rc);
    return;
  }
  x->up = uc;
  if (rc == 0 && fy_proxy_group(x)->proxy_protocol) fy_proxy_write_preface(x, uc);
  if (rc == 1) fy_proxy_upstream_ready(x);
}

/* A pooled connection is ready at once; a new one reports through fy_proxy_on_ready. */
static void fy_proxy_first_attempt(fy_exchange *x) {
  fy_group *g = &x->req->gen->groups[x->req->group];
  x->attempt = 1;
  x->ntried = 0;
  x->server = NULL;
  x->retry_status = 0;
  x->continue_sent = false;
  x->replayable = fy_retry_may_replay(x);
  x->counted = g;
  g->requests++;
  fy_proxy_connect(x);
}

/* ---- routing ------------------------------------------------------------ */

void fy_proxy_start(fy_exchange *x) {
  fy_req *r = x->req;
  fy_buf err;
  fy_buf_init(&err);
  int group = -1;
  fy_buf key;
  fy_buf_init(&key);
  enum fy_hook_outcome out = fy_lua_route(&r->gen->lua, r->policy, r, &group, &key, &err);
  x->has_key = key.len > 0;
  x->key = x->has_key ? fy_hash_bytes(key.data, key.len) : 0;
  fy_buf_free(&key);
  if (out != FY_HOOK_OK) {
    fy_log_error("request %llu: route: %s: %.*s", (unsigned long long)r->id, fy_hook_outcome_name(out),
                 (int)err.len, err.data);
    fy_buf_free(&err);
    r->termination = "policy_error";
    fy_exchange_respond_simple(x, 500, "policy error\n");
    return;
  }
  fy_buf_free(&err);
  if (group < 0 || r->respond_status) {
    r->termination = "answered"; /* req:respond() wins over a group returned after it */
    x->client->respond(x, r->respond_status, r->respond_headers.data, r->respond_headers.len,
                       r->respond_body.data, r->respond_body.len);
    return;
  }
  r->group = group;
  fy_proxy_first_attempt(x);
}

void fy_proxy_finish(fy_exchange *x) {
  fy_uconn *uc = x->up;
  if (uc == NULL) return;
  bool reusable = x->rs == FY_RS_DONE && x->req_done && !x->uw_pending && !x->w->stopping &&
                  uc->rpos == uc->rlen && llhttp_should_keep_alive(&uc->parser) &&
                  llhttp_get_errno(&uc->parser) == HPE_OK;
  fy_proxy_detach(x, reusable);
}
