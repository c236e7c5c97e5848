/* The client side of a connection: parsing, limits, timers, writes, closing. */
#include "conn.h"

#include "access_log.h"
#include "log.h"
#include "pool.h"

#include <stdio.h>
#include <strings.h>
#include <unistd.h>

#define FY_LINGER_MS 2000
#define FY_IDLE_TRIM_MS 500 /* idle this long, a keep-alive connection frees its head buffers */

static void fy_conn_request_begin(fy_conn *c);
static void fy_conn_update_reading(fy_conn *c);
static void fy_conn_retime(fy_conn *c, bool activity);
static void fy_conn_client_eof(fy_conn *c, ssize_t err);
static void fy_conn_release_memory(fy_conn *c);
static void fy_conn_client_pump(fy_conn *c);
static void fy_conn_flush_client(fy_conn *c);
static void fy_conn_exchange_maybe_done(fy_conn *c);
static bool fy_conn_will_close(fy_conn *c);
static void fy_conn_req_client(fy_conn *c);

static inline const fy_limits *fy_conn_limits(fy_conn *c) { return &c->gen->cfg->limits; }

uint64_t fy_now_ms(fy_conn *c) { return uv_now(c->w->loop); }

/* ---- the request reader's callbacks ------------------------------------- */

static void fy_conn_request_begun(fy_req_reader *rd) {
  fy_conn *c = rd->data;
  if (c->req.started_ms == 0) c->req.started_ms = fy_now_ms(c);
  if (c->req.started_ns == 0) c->req.started_ns = uv_hrtime();
  fy_conn_retime(c, false); /* from keep-alive idle to the header deadline */
}

static void fy_conn_request_body(fy_req_reader *rd, const char *at, size_t len) {
  fy_conn *c = rd->data;
  c->req.bytes_in += len;
  fy_exchange_body(&c->ex, at, len);
}

static void fy_conn_request_ended(fy_req_reader *rd) { fy_exchange_body_end(&((fy_conn *)rd->data)->ex); }

static const fy_req_reader_cb fy_conn_reader_cb = {
    .begin = fy_conn_request_begun,
    .body = fy_conn_request_body,
    .end = fy_conn_request_ended,
};

/* ---- parsing loop ------------------------------------------------------ */

static void fy_conn_parse_error(fy_conn *c, int status, const char *why) {
  fy_log_info("client %s:%d: request refused with %d: %s", c->client_ip, c->client_port, status, why);
  c->close_after = true;
  c->req.termination = "refused";
  fy_proxy_abort(&c->ex);
  fy_conn_respond_simple(c, status, fy_http_reason(status));
}

static bool fy_conn_can_parse(fy_conn *c) {
  if (c->closing || c->rpos >= c->rlen) return false;
  if (c->rd.rq == FY_RQ_HEAD) return c->ex.rs == FY_RS_NONE;
  return c->rd.rq == FY_RQ_BODY && fy_proxy_can_read_body(&c->ex);
}

static fy_tls_server_ctx *fy_conn_tls_ctx(fy_conn *c) {
  return c->listener->admin ? NULL : c->gen->cfg->listeners[c->listener->index].tls_ctx;
}

/* TLS from here on: seed holds ciphertext already read (after a PROXY header). */
static void fy_conn_start_tls(fy_conn *c, const char *seed, size_t len) {
  if (c->reading) fy_sock_read_stop(&c->sock); /* the TLS session reads the socket now */
  c->reading = false;
  fy_tls_accept(&c->sock, fy_conn_tls_ctx(c), seed, len);
  fy_conn_req_client(c);
  c->rpos = c->rlen = 0;
  fy_conn_update_reading(c);
}

/*
 * The PROXY protocol header that a trusted load balancer sends before the
 * client's bytes. Until it is complete nothing is parsed as HTTP; a bad one
 * closes the connection without an answer (the peer is a load balancer, not
 * an HTTP client). Afterwards the client's address is the header's source.
 */
static bool fy_conn_read_proxy_header(fy_conn *c) {
  int n = fy_proxy_protocol_accept((const uint8_t *)c->rbuf + c->rpos, c->rlen - c->rpos, c->pp, c->client_ip,
                                   sizeof c->client_ip, &c->client_port);
  if (n == 0) return false; /* more to come */
  if (n < 0) {
    fy_log_warn("listener %s: bad PROXY protocol header from %s:%d: %s; closing", c->listener->name,
                c->client_ip, c->client_port, fy_proxy_protocol_strerror(n));
    fy_conn_close(c);
    return false;
  }
  c->rpos += (size_t)n;
  c->pp_pending = false;
  fy_conn_req_client(c);    /* the client's address is the header's */
  if (fy_conn_tls_ctx(c)) { /* what follows the header is the TLS handshake */
    fy_conn_start_tls(c, c->rbuf + c->rpos, c->rlen - c->rpos);
    return false;
  }
  return true;
}

/* The head is read: the admin listener answers itself; any other hands the request to its exchange. */
static void fy_conn_request_ready(fy_conn *c) {
  if (c->listener->admin) {
    fy_admin_handle(c);
    return;
  }
  c->req.policy = c->req.gen->cfg->listeners[c->listener->index].policy;
  fy_proxy_start(&c->ex);
}

static void fy_conn_client_pump(fy_conn *c) {
  if (c->pp_pending && !fy_conn_read_proxy_header(c)) {
    if (!c->closing) fy_conn_update_reading(c);
    return;
  }
  while (fy_conn_can_parse(c)) {
    enum fy_req_state before = c->rd.rq;
    size_t used;
    const char *why = NULL;
    int status = fy_req_reader_execute(&c->rd, c->rbuf + c->rpos, c->rlen - c->rpos, &used, &why);
    c->rpos += used;
    if (status != 0) {
      fy_conn_parse_error(c, status, why);
      return;
    }
    c->ex.req_done = c->rd.rq == FY_RQ_DONE;
    if (before == FY_RQ_HEAD && c->rd.rq != FY_RQ_HEAD) fy_conn_request_ready(c);
  }
  if (c->closing) return;
  if (c->client_eof && c->rd.rq == FY_RQ_HEAD && c->ex.rs == FY_RS_NONE && c->rpos == c->rlen) {
    fy_conn_client_eof(c, UV_EOF); /* no complete request is left to answer */
    return;
  }
  if (c->client_eof && c->rd.rq == FY_RQ_BODY && c->rpos == c->rlen && fy_proxy_can_read_body(&c->ex)) {
    fy_conn_close(c); /* every byte the client sent is taken, and its body is not complete */
    return;
  }
  fy_proxy_flush_upstream(&c->ex);
  fy_conn_update_reading(c);
  fy_conn_retime(c, false);
  fy_conn_exchange_maybe_done(c);
}

/* ---- reading ------------------------------------------------------------ */

static __thread char fy_linger_sink[4096];

static void fy_conn_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  fy_conn *c = h->data;
  (void)suggested;
  if (c->lingering) {
    *buf = uv_buf_init(fy_linger_sink, sizeof fy_linger_sink);
    return;
  }
  if (c->rbuf == NULL) c->rbuf = fy_pool_get();
  if (c->ex.uw_pending) {
    /* A write to the upstream may point into rbuf: append only. */
  } else if (c->rpos == c->rlen) {
    c->rpos = c->rlen = 0;
  } else if (c->rpos > 0) {
    memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
    c->rlen -= c->rpos;
    c->rpos = 0;
  }
  *buf = uv_buf_init(c->rbuf + c->rlen, (unsigned)(FY_CONN_RBUF_SIZE - c->rlen));
}

static void fy_conn_client_eof(fy_conn *c, ssize_t err) {
  if (err == UV_EPROTO && c->sock.tls)
    fy_log_info("client %s:%d: TLS: %s", c->client_ip, c->client_port, fy_tls_error(c->sock.tls));
  else if (err != UV_EOF)
    fy_log_debug("client %s:%d: read: %s", c->client_ip, c->client_port, uv_strerror((int)err));
  if (c->rd.rq == FY_RQ_HEAD && c->rpos == c->rlen && c->req.url.len == 0) {
    fy_conn_close(c); /* an idle client went away */
    return;
  }
  if (c->rd.rq == FY_RQ_HEAD) {
    c->close_after = true;
    fy_conn_respond_simple(c, 400, "incomplete request\n");
    return;
  }
  if (err == UV_EOF && (c->rd.rq == FY_RQ_DONE || c->rpos < c->rlen)) {
    /* The client half-closed after its request(s), or after body bytes not
     * forwarded yet (the upstream is still connecting): answer what it sent,
     * then close. */
    c->client_eof = true;
    fy_conn_update_reading(c);
    return;
  }
  fy_conn_close(c); /* gone in the middle of a body */
}

static void fy_conn_read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  fy_conn *c = s->data;
  (void)buf;
  if (n == 0) return;
  if (c->lingering) {
    if (n < 0) fy_conn_close(c);
    return;
  }
  if (n < 0) {
    fy_conn_client_eof(c, n);
    return;
  }
  c->rlen += (size_t)n;
  fy_conn_retime(c, true);
  fy_conn_client_pump(c);
}

/*
 * The client is read whenever there is room in the read buffer, also while
 * an exchange is under way: a pipelined request then waits parsed-not in
 * rbuf, and back-pressure comes from the buffer filling up. Toggling reads
 * per request would cost epoll_ctl calls on every exchange.
 */
static void fy_conn_update_reading(fy_conn *c) {
  if (c->rpos == c->rlen && !c->ex.uw_pending) c->rpos = c->rlen = 0; /* nothing refers to rbuf */
  bool room = c->rbuf == NULL || c->rlen < FY_CONN_RBUF_SIZE || (c->rpos > 0 && !c->ex.uw_pending);
  bool want = !c->closing && !c->lingering && !c->client_eof && room;
  if (want == c->reading) return;
  c->reading = want;
  if (want)
    fy_sock_read_start(&c->sock, fy_conn_alloc_cb, fy_conn_read_cb);
  else
    fy_sock_read_stop(&c->sock);
}

/* ---- timers ------------------------------------------------------------- */

/* What the connection waits for from the client right now, which sets its deadline. */
static enum fy_conn_wait fy_conn_waiting_for(fy_conn *c) {
  if (c->lingering) return FY_WAIT_LINGER;
  if (c->cw_pending) return FY_WAIT_SEND;
  if (c->rd.rq == FY_RQ_HEAD && c->ex.rs == FY_RS_NONE)
    return c->req.started_ms ? FY_WAIT_HEADER : FY_WAIT_KEEPALIVE;
  if (c->rd.rq == FY_RQ_BODY && fy_proxy_can_read_body(&c->ex) && c->rpos == c->rlen) return FY_WAIT_BODY;
  return FY_WAIT_NONE; /* waiting on the upstream, whose own timers run */
}

static void fy_conn_timeout_cb(fy_deadline *d) {
  fy_conn *c = d->timer.data;
  switch (c->wait) {
  case FY_WAIT_HEADER:
    if (c->sock.tls &&
        !fy_tls_is_open(c->sock.tls)) { /* no handshake within the header deadline: no one to answer */
      fy_log_info("client %s:%d: TLS handshake timeout", c->client_ip, c->client_port);
      fy_conn_close(c);
      break;
    }
    c->close_after = true;
    c->req.termination = "client_timeout";
    fy_conn_respond_simple(c, 408, "request header timeout\n");
    break;
  case FY_WAIT_BODY:
    fy_log_info("client %s:%d: request body timeout", c->client_ip, c->client_port);
    c->close_after = true;
    fy_proxy_abort(&c->ex);
    if (c->ex.rs == FY_RS_WAIT) fy_exchange_enter(&c->ex, FY_RS_NONE);
    c->req.termination = "client_timeout";
    fy_conn_respond_simple(c, 408, "request body timeout\n");
    break;
  case FY_WAIT_KEEPALIVE:
    if (!c->trimmed && c->rpos == c->rlen) {
      fy_conn_release_memory(c);
      c->trimmed = true;
      fy_worker_memory_released(c->w);
      uint64_t ka = fy_conn_limits(c)->keepalive_timeout;
      fy_deadline_set(&c->timer, ka > FY_IDLE_TRIM_MS ? ka - FY_IDLE_TRIM_MS : 1);
      break;
    }
    fy_conn_close(c);
    break;
  default: /* a client that stopped reading, the end of a linger */ fy_conn_close(c); break;
  }
}

/*
 * Re-arms the client deadline when what the connection waits for changed.
 * Header and keep-alive deadlines are fixed when they start (a client
 * trickling a header byte at a time cannot extend them); body and send
 * deadlines restart on each sign of progress (activity).
 */
static void fy_conn_retime(fy_conn *c, bool activity) {
  if (c->closing) return;
  enum fy_conn_wait w = fy_conn_waiting_for(c);
  if (w == c->wait && !(activity && (w == FY_WAIT_BODY || w == FY_WAIT_SEND))) return;
  const fy_limits *l = fy_conn_limits(c);
  uint64_t ms = 0;
  switch (w) {
  case FY_WAIT_HEADER: ms = l->header_timeout; break;
  case FY_WAIT_KEEPALIVE: ms = FY_MIN(l->keepalive_timeout, FY_IDLE_TRIM_MS); break;
  case FY_WAIT_BODY: ms = l->body_timeout; break;
  case FY_WAIT_SEND: ms = l->send_timeout; break;
  case FY_WAIT_LINGER: ms = FY_LINGER_MS; break;
  case FY_WAIT_NONE: break;
  }
  c->wait = w;
  fy_deadline_set(&c->timer, ms);
}

/* ---- writing ------------------------------------------------------------ */

static bool fy_conn_output_queued(fy_conn *c) {
  return c->ex.chead.len || c->ex.cbody.span || c->ex.cbody.copy.len;
}

static void fy_conn_write_cb(fy_write_req *wr, int status) {
  fy_conn *c = FY_CONTAINER_OF(wr, fy_conn, cwrite);
  c->cw_pending = false;
  if (c->closing) return;
  if (status < 0) {
    fy_log_debug("client %s:%d: write: %s", c->client_ip, c->client_port, uv_strerror(status));
    fy_conn_close(c);
    return;
  }
  fy_buf_reset(&c->cw_head);
  fy_buf_reset(&c->cw_copy);
  fy_exchange_pin(&c->ex, false);
  fy_conn_retime(c, true);
  if (fy_conn_output_queued(c))
    fy_conn_flush_client(c); /* queued while this write ran */
  else if (c->ex.rs == FY_RS_DONE)
    fy_conn_exchange_maybe_done(c);
  else
    fy_proxy_response_written(&c->ex);
}

/*
 * TCP_NODELAY, set when it can matter. Nagle's algorithm holds a small
 * segment back only while an earlier small one is unacknowledged (Linux
 * follows Minshall's rule), so a connection's first write always leaves at
 * once; the option is set before the second write, or when the first could
 * not be written whole and its rest will follow later. A connection that
 * carries one response (Connection: close) then costs one system call less,
 * as in nginx, which also sets it lazily. TLS connections set it at accept:
 * the handshake writes on its own.
 */
static void fy_conn_nodelay(fy_conn *c) {
  if (c->nodelay) return;
  c->nodelay = true;
  uv_tcp_nodelay(&c->sock.tcp, 1);
}

static void fy_buf_swap(fy_buf *a, fy_buf *b) {
  fy_buf t = *a;
  *a = *b;
  *b = t;
}

/*
 * Starts a write of everything queued for the client. The queued buffers are
 * handed to the write (swapped with the idle in-flight pair), so output
 * queued while it runs lands in fresh buffers and never moves memory the
 * kernel is still reading.
 */
static void fy_conn_flush_client(fy_conn *c) {
  if (c->cw_pending || c->closing) return;
  fy_exchange *x = &c->ex;
  uv_buf_t bufs[2];
  unsigned n = fy_bodyout_bufs(&x->chead, &x->cbody, bufs);
  if (n == 0) return;
  fy_buf_swap(&x->chead, &c->cw_head);
  fy_buf_swap(&x->cbody.copy, &c->cw_copy);
  if (x->cbody.span) fy_exchange_pin(x, true); /* the span lives in the upstream's rbuf */
  if (x->rs == FY_RS_BODY || x->rs == FY_RS_DONE) x->resp_sent = true;
  x->cbody.span = NULL;
  for (unsigned i = 0; i < n; i++)
    c->req.bytes_out += bufs[i].len;
  if (c->wrote) fy_conn_nodelay(c);
  c->wrote = true;
  int rc = fy_sock_write(&c->sock, &c->cwrite, bufs, n, fy_conn_write_cb);
  if (rc < 0) {
    fy_conn_close(c);
    return;
  }
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->sock.tcp) > 0) fy_conn_nodelay(c);
  c->cw_pending = true;
  fy_conn_retime(c, true);
}

static bool fy_conn_will_close(fy_conn *c) {
  return c->close_after || c->ex.close_after || (c->client_eof && c->rpos == c->rlen) || !c->req.keepalive ||
         c->rd.rq != FY_RQ_DONE || c->w->stopping || c->nreq + 1 >= fy_conn_limits(c)->keepalive_requests;
}

void fy_conn_respond_with(fy_conn *c, int status, const char *headers, size_t hlen, const char *body,
                          size_t blen) {
  if (c->closing) return;
  if (c->ex.rs == FY_RS_BODY || c->ex.rs == FY_RS_DONE) {
    fy_conn_close(c); /* a response is already under way: all we can do is cut it */
    return;
  }
  if (c->rd.rq != FY_RQ_DONE) c->close_after = true;
  fy_buf_reset(&c->ex.chead);
  fy_bodyout_reset(&c->ex.cbody);
  fy_http_write_simple(&c->ex.chead, status, headers, hlen, body, blen, c->req.head, fy_conn_will_close(c));
  c->req.status = status;
  fy_exchange_enter(&c->ex, FY_RS_DONE);
  fy_conn_flush_client(c);
  fy_conn_update_reading(c);
}

void fy_conn_respond(fy_conn *c, int status, const char *ctype, const char *body, size_t blen) {
  char extra[128];
  int elen = snprintf(extra, sizeof extra, "Content-Type: %s\r\n", ctype);
  fy_conn_respond_with(c, status, extra, (size_t)elen, body, blen);
}

void fy_conn_respond_simple(fy_conn *c, int status, const char *body) {
  fy_conn_respond(c, status, "text/plain", body, strlen(body));
}

/* ---- exchange lifecycle ----------------------------------------------- */

/* The request-duration series of (listener, group, class), its labels rendered once. */
static fy_series *fy_conn_request_series(fy_conn *c) {
  const fy_req *r = &c->req;
  int class = fy_metrics_class_index(r->status);
  fy_group *g = r->group >= 0 && r->gen ? &r->gen->groups[r->group] : NULL;
  fy_series **slot = &c->listener->m_answered[class], *uncached = NULL;
  if (g && c->listener->index >= r->gen->cfg->nlisteners) {
    slot = &uncached; /* a listener this generation does not list: counted, not kept */
  } else if (g) {
    if (g->m_requests == NULL)
      g->m_requests = fy_calloc(r->gen->cfg->nlisteners * FY_METRICS_NCLASSES, sizeof *slot);
    slot = &g->m_requests[c->listener->index * FY_METRICS_NCLASSES + (size_t) class];
  }
  if (*slot == NULL) {
    char labels[FY_LABELS_MAX];
    fy_labels(labels, sizeof labels, "listener", c->listener->name, "group", g ? g->cfg->name : "none",
              "class", fy_metrics_class(r->status), NULL);
    *slot = fy_metrics_series(&c->w->metrics, FY_M_REQUEST_DURATION, labels);
  }
  return *slot;
}

static void fy_conn_observe(fy_conn *c) {
  const fy_req *r = &c->req;
  uint64_t now = uv_hrtime();
  fy_series_observe(fy_conn_request_series(c),
                    r->started_ns && now > r->started_ns ? now - r->started_ns : 0);
}

static void fy_conn_access_log(fy_conn *c) {
  fy_req *r = &c->req;
  if (!c->listener->admin) { /* the admin listener's own answers are not traffic */
    c->w->stats.responses[r->status >= 100 && r->status < 600 ? r->status / 100 : 0]++;
    fy_conn_observe(c);
  }
  fy_proxy_log_hook(&c->ex);
  fy_access_log_write(c);
}

static void fy_conn_request_end(fy_conn *c) {
  fy_req *r = &c->req;
  fy_exchange_end(&c->ex);
  if (r->has_ctx && r->gen) fy_lua_release(&r->gen->lua, r->id);
  r->has_ctx = false;
  fy_buf_reset(&r->url);
  fy_headers_reset(&r->headers);
  fy_buf_reset(&r->respond_headers);
  fy_buf_reset(&r->respond_body);
  if (r->gen) fy_gen_unref(r->gen);
  r->gen = NULL;
}

static void fy_conn_shutdown_cb(uv_shutdown_t *req, int status) {
  fy_conn *c = req->data;
  if (c->closing) return;
  if (status < 0 || c->client_eof) {
    fy_conn_close(c);
    return;
  }
  c->reading = true;
  fy_sock_read_start(&c->sock, fy_conn_alloc_cb, fy_conn_read_cb);
}

/*
 * Closing right after the last write could reset the connection while the
 * client still has unread request bytes in flight, and a reset can destroy
 * the response before the client reads it. So: send FIN, read and discard
 * until the client closes (or a short linger time), then close.
 *
 * Unless nothing can be in flight (nginx's lingering_close decides the
 * same): the client has sent its FIN, or it asked to close with this
 * request, which was read to its end with no byte after it. A plain-TCP
 * close() then sends the response and a FIN, no reset.
 */
static void fy_conn_close_gracefully(fy_conn *c) {
  bool drained = c->rpos == c->rlen && c->rd.rq == FY_RQ_DONE;
  if (c->sock.tls == NULL && drained && (c->client_eof || (!c->req.keepalive && !c->close_after))) {
    fy_conn_close(c);
    return;
  }
  if (c->reading) fy_sock_read_stop(&c->sock);
  c->reading = false;
  c->lingering = true;
  fy_conn_retime(c, false);
  c->shutdown_req.data = c;
  if (fy_sock_shutdown(&c->sock, &c->shutdown_req, fy_conn_shutdown_cb) < 0) fy_conn_close(c);
}

static void fy_conn_exchange_maybe_done(fy_conn *c) {
  if (c->closing || c->lingering || c->ex.rs != FY_RS_DONE || c->cw_pending) return;
  if (c->rd.rq != FY_RQ_DONE && !c->close_after && !c->ex.close_after) return;
  bool close = fy_conn_will_close(c);
  fy_proxy_finish(&c->ex);
  fy_conn_access_log(c);
  fy_conn_request_end(c);
  c->nreq++;
  if (close) {
    fy_conn_close_gracefully(c);
    return;
  }
  fy_conn_request_begin(c);
  fy_conn_client_pump(c);
}

/*
 * A keep-alive connection idle for FY_IDLE_TRIM_MS frees its head buffers,
 * so an idle connection costs little more than its struct. Doing it at once
 * after every request would cost a handful of malloc/free pairs per request
 * on a busy connection.
 */
static void fy_conn_release_memory(fy_conn *c) {
  fy_buf *bufs[] = {&c->req.url, &c->req.respond_headers, &c->req.respond_body, &c->cw_head, &c->cw_copy};
  for (size_t i = 0; i < FY_ARRAY_SIZE(bufs); i++)
    fy_buf_free(bufs[i]);
  fy_exchange_trim(&c->ex);
  fy_headers_free(&c->req.headers);
  fy_headers_free(&c->req.rheaders);
}

static void fy_conn_request_begin(fy_conn *c) {
  fy_req *r = &c->req;
  if (c->gen != c->w->gen) { /* a reload happened: new requests use the new generation */
    fy_gen_unref(c->gen);
    c->gen = fy_gen_ref(c->w->gen);
  }
  r->gen = fy_gen_ref(c->gen);
  r->id = ++c->w->next_req_id;
  r->header_bytes = 0;
  r->status = 0;
  r->bytes_out = 0;
  r->group = -1;
  r->policy = -1;
  r->server = NULL;
  r->method = NULL;
  r->host_len = 0;
  r->started_ms = 0;
  r->started_ns = r->connect_ns = r->header_ns = r->policy_ns = 0;
  r->nfailures = 0;
  r->bytes_in = 0;
  r->termination = NULL;
  fy_buf_reset(&r->log_fields);
  r->respond_status = 0;
  r->has_body = r->chunked = r->keepalive = r->expect_continue = r->head = r->has_content_length = false;
  fy_conn_req_client(c);
  c->rd.limits = fy_conn_limits(c);
  fy_req_reader_begin(&c->rd);
  fy_exchange_begin(&c->ex);
  if (c->nreq == 0) r->started_ms = fy_now_ms(c); /* the first request's clock starts at accept */
  if (c->nreq == 0) r->started_ns = uv_hrtime();
  c->wait = FY_WAIT_NONE;
  fy_conn_retime(c, false);
  if (c->rpos == c->rlen) { /* idle: the read block goes back to the pool at once */
    fy_pool_put(c->rbuf);
    c->rbuf = NULL;
    c->rpos = c->rlen = 0;
  }
  c->trimmed = false;
}

/* ---- connection memory ------------------------------------------------ */

/*
 * Client connections live in slabs of their own, not in the malloc heap
 * with the head buffers of their requests. Interleaved there, every idle
 * connection pinned the pages of the buffers freed around it: 1,000 idle
 * keep-alive connections cost 5.0 KiB each of RSS for a 2.2 KiB struct.
 * A slab is FY_CONN_SLAB structs from one mmap; freed structs go on a
 * per-thread free list and are reused, so the slabs hold what the peak
 * number of connections needed. Sanitizer builds use calloc, so that
 * AddressSanitizer still sees every use after free.
 */
#define FY_CONN_SLAB 64

#if defined(__SANITIZE_ADDRESS__) /* gcc */
#define FY_CONN_ON_HEAP 1
#elif defined(__has_feature) /* clang */
#if __has_feature(address_sanitizer)
#define FY_CONN_ON_HEAP 1
#endif
#endif

#ifdef FY_CONN_ON_HEAP
static fy_conn *fy_conn_new(void) { return fy_calloc(1, sizeof(fy_conn)); }
static void fy_conn_delete(fy_conn *c) { free(c); }
#else
#include <sys/mman.h>

static __thread fy_conn *fy_conn_spare; /* a free struct's first word points to the next */

static fy_conn *fy_conn_new(void) {
  if (fy_conn_spare == NULL) {
    void *slab = mmap(NULL, FY_CONN_SLAB * sizeof(fy_conn), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (slab == MAP_FAILED) return fy_calloc(1, sizeof(fy_conn)); /* kept on the free list once closed */
    fy_conn *all = slab;
    for (size_t i = FY_CONN_SLAB; i-- > 0;) {
      *(fy_conn **)&all[i] = fy_conn_spare;
      fy_conn_spare = &all[i];
    }
  }
  fy_conn *c = fy_conn_spare;
  fy_conn_spare = *(fy_conn **)c;
  memset(c, 0, sizeof *c);
  return c;
}

static void fy_conn_delete(fy_conn *c) {
  *(fy_conn **)c = fy_conn_spare;
  fy_conn_spare = c;
}
#endif

/* ---- what the exchange sees of the connection ---------------------------- */

/* The client as the policy sees it: the socket's address or the PROXY header's, listener, TLS session. */
static void fy_conn_req_client(fy_conn *c) {
  c->req.client_ip = c->client_ip;
  c->req.client_port = c->client_port;
  c->req.listener = c->listener->name;
  c->req.pp = c->pp;
  c->req.tls = c->sock.tls;
}

static void fy_conn_x_pump(fy_exchange *x) { fy_conn_client_pump(x->data); }
static void fy_conn_x_flush(fy_exchange *x) { fy_conn_flush_client(x->data); }
static void fy_conn_x_done(fy_exchange *x) { fy_conn_exchange_maybe_done(x->data); }
static bool fy_conn_x_will_close(fy_exchange *x) { return fy_conn_will_close(x->data); }
static bool fy_conn_x_sending(fy_exchange *x) { return ((fy_conn *)x->data)->cw_pending; }

static void fy_conn_x_respond(fy_exchange *x, int status, const char *headers, size_t hlen, const char *body,
                              size_t blen) {
  fy_conn_respond_with(x->data, status, headers, hlen, body, blen);
}

static void fy_conn_x_cut(fy_exchange *x) {
  fy_conn *c = x->data;
  c->reset_on_close = true;
  fy_conn_close(c);
}

static void fy_conn_x_addresses(fy_exchange *x, struct sockaddr_storage *src, struct sockaddr_storage *dst) {
  fy_conn *c = x->data;
  const fy_proxy_info *pp = c->pp;
  if (pp && !pp->local && pp->family != AF_UNSPEC) {
    *src = pp->src;
    *dst = pp->dst;
    return;
  }
  int len = sizeof *src;
  memset(src, 0, sizeof *src);
  memset(dst, 0, sizeof *dst);
  uv_tcp_getpeername(&c->sock.tcp, (struct sockaddr *)src, &len);
  len = sizeof *dst;
  uv_tcp_getsockname(&c->sock.tcp, (struct sockaddr *)dst, &len);
}

static const fy_exchange_client fy_conn_exchange_client = {
    .pump = fy_conn_x_pump,
    .flush = fy_conn_x_flush,
    .done = fy_conn_x_done,
    .respond = fy_conn_x_respond,
    .cut = fy_conn_x_cut,
    .will_close = fy_conn_x_will_close,
    .sending = fy_conn_x_sending,
    .addresses = fy_conn_x_addresses,
};

/* ---- accept and close ------------------------------------------------- */

/* True when the connection was refused: PROXY headers are taken only from trusted networks. */
static bool fy_conn_expect_proxy_header(fy_conn *c, const struct sockaddr_storage *peer) {
  const fy_cfg_listener *cl = &c->gen->cfg->listeners[c->listener->index];
  if (fy_cfg_listener_expect_proxy(cl, (const struct sockaddr *)peer, &c->pp) < 0) {
    fy_log_warn("listener %s: %s:%d is not in proxy_protocol.trusted; closing", cl->name, c->client_ip,
                c->client_port);
    fy_conn_close(c);
    return true;
  }
  c->pp_pending = c->pp != NULL;
  return false;
}

static void fy_conn_free(fy_conn *c) {
  if (c->accepted) c->w->nconns--;
  fy_conn_request_end(c);
  fy_buf_free(&c->req.url);
  fy_headers_free(&c->req.headers);
  fy_headers_free(&c->req.rheaders);
  fy_buf_free(&c->req.respond_headers);
  fy_buf_free(&c->req.respond_body);
  fy_buf_free(&c->req.log_fields);
  fy_buf_free(&c->cw_head);
  fy_buf_free(&c->cw_copy);
  fy_exchange_free(&c->ex);
  fy_gen_unref(c->gen);
  fy_pool_put(c->rbuf);
  free(c->pp);
  fy_sock_free(&c->sock);
  fy_conn_delete(c);
}

static void fy_conn_handle_closed(fy_conn *c) {
  if (--c->handles_open == 0) {
    fy_worker *w = c->w;
    fy_conn_free(c);
    fy_worker_maybe_stopped(w);
  }
}

static void fy_conn_close_cb(uv_handle_t *h) { fy_conn_handle_closed(h->data); }

static void fy_conn_exchange_closed(uv_handle_t *h) { fy_conn_handle_closed(((fy_exchange *)h->data)->data); }

void fy_conn_close(fy_conn *c) {
  if (c->closing) return;
  if (c->ex.rs != FY_RS_DONE && c->rd.rq != FY_RQ_HEAD) {
    c->req.status = c->req.status ? c->req.status : 499;
    if (c->req.termination == NULL) c->req.termination = c->w->unbound ? "drain_cut" : "client_cut";
    fy_conn_access_log(c);
  }
  c->closing = true;
  if (c->admin_wait) fy_admin_abort(c);
  fy_write_forget(&c->cwrite);
  fy_proxy_abort(&c->ex);
  fy_list_remove(&c->link);
  fy_sock_close(&c->sock, fy_conn_close_cb, c->reset_on_close);
  uv_close((uv_handle_t *)&c->timer, fy_conn_close_cb);
  fy_exchange_close(&c->ex, fy_conn_exchange_closed);
}

void fy_conn_accept(fy_listener *l, int fd, const struct sockaddr_storage *peer) {
  fy_worker *w = l->w;
  fy_conn *c = fy_conn_new();
  uv_tcp_init(w->loop, &c->sock.tcp);
  c->sock.tcp.data = c;
  c->handles_open = 1;
  c->w = w;
  c->listener = l;
  c->gen = fy_gen_ref(w->gen);
  fy_list_init(&c->link);
  if (uv_tcp_open(&c->sock.tcp, fd) < 0) {
    close(fd);
    c->closing = true;
    uv_close((uv_handle_t *)&c->sock.tcp, fy_conn_close_cb);
    return;
  }
  fy_deadline_init(w->loop, &c->timer, fy_conn_timeout_cb, c);
  fy_exchange_init(&c->ex, w, &c->req, &fy_conn_exchange_client, c);
  c->handles_open = 3;
  fy_list_insert_head(&w->conns, &c->link);
  fy_addr_name(peer, c->client_ip, sizeof c->client_ip, &c->client_port);
  fy_req_reader_init(&c->rd, &c->req, fy_conn_limits(c), &fy_conn_reader_cb, c);
  fy_headers_init(&c->req.headers);
  fy_headers_init(&c->req.rheaders);
  fy_conn_request_begin(c);
  if (!l->admin && fy_conn_expect_proxy_header(c, peer)) return;
  if (fy_conn_tls_ctx(c)) fy_conn_nodelay(c);
  if (!c->pp_pending && fy_conn_tls_ctx(c)) fy_tls_accept(&c->sock, fy_conn_tls_ctx(c), NULL, 0);
  fy_conn_req_client(c); /* the PROXY header's info and the TLS session, now there are any */
  c->accepted = true;
  if (++w->nconns > fy_conn_limits(c)->max_connections && !l->admin) {
    /* Shed load with an answer the client understands, rather than a reset
     * or a backlog that times out: 503, then a graceful close. */
    fy_log_warn("listener %s: %u connections open (limits.max_connections): refusing %s:%d with 503", l->name,
                w->nconns - 1, c->client_ip, c->client_port);
    c->close_after = true;
    w->stats.shed++;
    fy_conn_respond_simple(c, 503, "ferry: too many connections\n");
    return;
  }
  fy_conn_update_reading(c);
}
