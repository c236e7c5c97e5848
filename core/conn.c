/* The client side of a connection: parsing, limits, timers, writes, closing. */
#include "conn.h"

#include "access_log.h"
#include "log.h"
#include "pool.h"

#include <stdio.h>
#include <strings.h>

#define FY_LINGER_MS 2000
#define FY_IDLE_TRIM_MS 500 /* idle this long, a keep-alive connection frees its head buffers */

static void fy_conn_request_begin(fy_conn *c);
static void fy_conn_update_reading(fy_conn *c);
static void fy_conn_retime(fy_conn *c, bool activity);
static void fy_conn_client_eof(fy_conn *c, ssize_t err);
static void fy_conn_release_memory(fy_conn *c);

static inline fy_conn *fy_conn_of(llhttp_t *p) { return p->data; }
static inline const fy_limits *fy_conn_limits(fy_conn *c) { return &c->gen->cfg->limits; }

uint64_t fy_now_ms(fy_conn *c) { return uv_now(c->w->loop); }

/* ---- body output ------------------------------------------------------- */

void fy_bodyout_add(fy_bodyout *o, const char *at, size_t len) {
  if (o->chunked) {
    fy_http_chunk(&o->copy, at, len);
    return;
  }
  if (o->span == NULL && o->copy.len == 0) {
    o->span = at;
    o->span_len = len;
    return;
  }
  if (o->span) {
    fy_buf_append(&o->copy, o->span, o->span_len);
    o->span = NULL;
  }
  fy_buf_append(&o->copy, at, len);
}

unsigned fy_bodyout_bufs(fy_buf *head, fy_bodyout *o, uv_buf_t *bufs) {
  unsigned n = 0;
  if (head->len) bufs[n++] = uv_buf_init(head->data, (unsigned)head->len);
  if (o->span)
    bufs[n++] = uv_buf_init((char *)o->span, (unsigned)o->span_len);
  else if (o->copy.len)
    bufs[n++] = uv_buf_init(o->copy.data, (unsigned)o->copy.len);
  return n;
}

void fy_bodyout_reset(fy_bodyout *o) {
  o->span = NULL;
  o->span_len = 0;
  fy_buf_reset(&o->copy);
}

/* ---- request parser callbacks ---------------------------------------- */

static int fy_conn_refuse(fy_conn *c, int status) {
  c->error_status = status;
  return -1;
}

static int fy_on_message_begin(llhttp_t *p) {
  fy_conn *c = fy_conn_of(p);
  if (c->req.started_ms == 0) c->req.started_ms = fy_now_ms(c);
  if (c->req.started_ns == 0) c->req.started_ns = uv_hrtime();
  fy_conn_retime(c, false); /* from keep-alive idle to the header deadline */
  return 0;
}

static int fy_on_method_complete(llhttp_t *p) {
  fy_conn_of(p)->req.head = p->method == HTTP_HEAD; /* from here on, a refusal of a HEAD has no body */
  return 0;
}

static int fy_on_url(llhttp_t *p, const char *at, size_t len) {
  fy_conn *c = fy_conn_of(p);
  if (c->req.url.len + len > fy_conn_limits(c)->max_request_line) return fy_conn_refuse(c, 414);
  fy_buf_append(&c->req.url, at, len);
  return 0;
}

static int fy_on_header_field(llhttp_t *p, const char *at, size_t len) {
  fy_conn *c = fy_conn_of(p);
  c->req.header_bytes += len;
  if (c->req.header_bytes > fy_conn_limits(c)->max_header_bytes) return fy_conn_refuse(c, 431);
  if (!fy_headers_collect_name(&c->req.headers, at, len, fy_conn_limits(c)->max_headers))
    return fy_conn_refuse(c, 431);
  return 0;
}

static int fy_on_header_field_complete(llhttp_t *p) {
  fy_conn *c = fy_conn_of(p);
  if (!fy_headers_collect_name_end(&c->req.headers)) return fy_conn_refuse(c, 400); /* ": x" */
  return 0;
}

static int fy_on_header_value(llhttp_t *p, const char *at, size_t len) {
  fy_conn *c = fy_conn_of(p);
  c->req.header_bytes += len;
  if (c->req.header_bytes > fy_conn_limits(c)->max_header_bytes) return fy_conn_refuse(c, 431);
  if (!fy_http_value_ok(at, len)) return fy_conn_refuse(c, 400);
  fy_headers_collect_value(&c->req.headers, at, len);
  return 0;
}

/* Host from the absolute-form target, else from the single Host header. */
static int fy_conn_find_host(fy_conn *c) {
  fy_req *r = &c->req;
  fy_headers *h = &r->headers;
  ssize_t i = fy_headers_find(h, "host", 4, 0);
  if (i >= 0 && fy_headers_find(h, "host", 4, (size_t)i + 1) >= 0) return -1;
  if (i < 0 && r->http_minor >= 1) return -1;
  const char *src = r->target.authority;
  size_t len = r->target.authority_len;
  if (src == NULL && i >= 0) {
    src = fy_hdr_val(h, &h->v[i]);
    len = h->v[i].val_len;
  }
  if (src == NULL) {
    r->host[0] = '\0';
    r->host_len = 0;
    return 0;
  }
  ssize_t n = fy_http_host_normalize(src, len, r->host, sizeof r->host);
  if (n < 0) return -1;
  r->host_len = (size_t)n;
  return 0;
}

/* Every Expect header must be 100-continue, which ferry answers itself: none is passed on. */
static int fy_conn_check_expect(fy_conn *c) {
  fy_req *r = &c->req;
  fy_headers *h = &r->headers;
  bool expect = false;
  for (ssize_t i = fy_headers_find(h, "expect", 6, 0); i >= 0;
       i = fy_headers_find(h, "expect", 6, (size_t)i + 1)) {
    if (!fy_http_token_eq(fy_hdr_val(h, &h->v[i]), h->v[i].val_len, "100-continue", 12)) return -1;
    expect = true;
  }
  r->expect_continue = expect && r->has_body && r->http_minor >= 1;
  fy_headers_remove(h, "expect", 6);
  return 0;
}

/*
 * Transfer-Encoding, beyond what llhttp checks (RFC 9112 6.1). In HTTP/1.0 it
 * is faulty framing: an HTTP/1.0 hop in front of ferry may have read that
 * body up to the close, so the bytes after it are not known to be a request;
 * refused, as nginx does. A coding other than chunked would be lost on the
 * way, since ferry re-frames every body: 501. A header with no coding at all
 * leaves the body length unknown.
 */
static int fy_conn_check_transfer_encoding(fy_conn *c) {
  enum fy_http_te te = fy_http_transfer_encoding(&c->req.headers);
  if (te == FY_TE_NONE) return 0;
  if (c->req.http_minor == 0 || te == FY_TE_BAD) return fy_conn_refuse(c, 400);
  if (te == FY_TE_UNSUPPORTED) return fy_conn_refuse(c, 501);
  return 0;
}

static int fy_on_headers_complete(llhttp_t *p) {
  fy_conn *c = fy_conn_of(p);
  fy_req *r = &c->req;
  if (p->http_major != 1) return fy_conn_refuse(c, 505);
  if (p->method == HTTP_CONNECT) return fy_conn_refuse(c, 405);
  r->http_minor = p->http_minor;
  r->method = llhttp_method_name(p->method);
  r->head = p->method == HTTP_HEAD;
  r->chunked = (p->flags & F_CHUNKED) != 0;
  r->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
  r->content_length = r->has_content_length ? p->content_length : 0;
  r->has_body = r->chunked || (r->has_content_length && p->content_length > 0);
  r->keepalive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
  if (fy_conn_check_transfer_encoding(c) != 0) return -1;
  if (fy_http_target_parse(r->url.data, r->url.len, &r->target) != 0) return fy_conn_refuse(c, 400);
  if (fy_conn_find_host(c) != 0) return fy_conn_refuse(c, 400);
  if (fy_http_strip_hop_by_hop(&r->headers)) return fy_conn_refuse(c, 400); /* Connection named Host */
  if (fy_conn_check_expect(c) != 0) return fy_conn_refuse(c, 417);
  c->rq = FY_RQ_BODY;
  /* Without a body the message completes at once; on_message_complete pauses. */
  return r->has_body ? HPE_PAUSED : 0;
}

static int fy_on_body(llhttp_t *p, const char *at, size_t len) {
  fy_conn *c = fy_conn_of(p);
  c->req.bytes_in += len;
  if (c->up) fy_bodyout_add(&c->ubody, at, len);
  return 0;
}

/* The last chunk: a pause, so the pump checks the trailer lines from here like a head's. */
static int fy_on_chunk_header(llhttp_t *p) {
  fy_conn *c = fy_conn_of(p);
  if (p->content_length != 0) return 0;
  c->in_trailers = true;
  fy_http_head_scan_trailers(&c->head_scan);
  return HPE_PAUSED;
}

static int fy_on_message_complete(llhttp_t *p) {
  fy_conn *c = fy_conn_of(p);
  if (c->up && c->req.chunked) fy_http_chunk_end(&c->ubody.copy);
  c->rq = FY_RQ_DONE;
  return HPE_PAUSED;
}

static const llhttp_settings_t fy_request_settings = {
    .on_message_begin = fy_on_message_begin,
    .on_method_complete = fy_on_method_complete,
    .on_url = fy_on_url,
    .on_header_field = fy_on_header_field,
    .on_header_field_complete = fy_on_header_field_complete,
    .on_header_value = fy_on_header_value,
    .on_headers_complete = fy_on_headers_complete,
    .on_body = fy_on_body,
    .on_chunk_header = fy_on_chunk_header,
    .on_message_complete = fy_on_message_complete,
};

/* ---- parsing loop ------------------------------------------------------ */

static void fy_conn_parse_error(fy_conn *c, llhttp_errno_t err) {
  int status = c->error_status ? c->error_status : 400;
  fy_log_info("client %s:%d: request refused with %d: %s", c->client_ip, c->client_port, status,
              c->error_status ? fy_http_reason(status) : llhttp_get_error_reason(&c->parser));
  (void)err;
  c->close_after = true;
  c->req.termination = "refused";
  fy_proxy_abort(c);
  fy_conn_respond_simple(c, status, fy_http_reason(status));
}

static bool fy_conn_can_parse(fy_conn *c) {
  if (c->closing || c->rpos >= c->rlen) return false;
  if (c->rq == FY_RQ_HEAD) return c->rs == FY_RS_NONE;
  return c->rq == FY_RQ_BODY && fy_proxy_can_read_body(c);
}

static fy_tls_server_ctx *fy_conn_tls_ctx(fy_conn *c) {
  return c->listener->admin ? NULL : c->gen->cfg->listeners[c->listener->index].tls_ctx;
}

/* TLS from here on: seed holds ciphertext already read (after a PROXY header). */
static void fy_conn_start_tls(fy_conn *c, const char *seed, size_t len) {
  if (c->reading) fy_sock_read_stop(&c->sock); /* the TLS session reads the socket now */
  c->reading = false;
  fy_tls_accept(&c->sock, fy_conn_tls_ctx(c), seed, len);
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
  size_t avail = c->rlen - c->rpos;
  int n = fy_proxy_protocol_parse((const uint8_t *)c->rbuf + c->rpos, avail, c->pp);
  if (n == 0 && avail < FY_PP_MAX_HEADER) return false; /* more to come */
  if (n <= 0) {
    fy_log_warn("listener %s: bad PROXY protocol header from %s:%d: %s; closing", c->listener->name,
                c->client_ip, c->client_port, fy_proxy_protocol_strerror(n ? n : FY_PP_ETOOBIG));
    fy_conn_close(c);
    return false;
  }
  c->rpos += (size_t)n;
  c->pp_pending = false;
  if (!c->pp->local && (c->pp->family == AF_INET || c->pp->family == AF_INET6))
    fy_addr_name(&c->pp->src, c->client_ip, sizeof c->client_ip, &c->client_port);
  if (fy_conn_tls_ctx(c)) { /* what follows the header is the TLS handshake */
    fy_conn_start_tls(c, c->rbuf + c->rpos, c->rlen - c->rpos);
    return false;
  }
  return true;
}

void fy_conn_client_pump(fy_conn *c) {
  if (c->pp_pending && !fy_conn_read_proxy_header(c)) {
    if (!c->closing) fy_conn_update_reading(c);
    return;
  }
  while (fy_conn_can_parse(c)) {
    const char *data = c->rbuf + c->rpos;
    size_t len = c->rlen - c->rpos;
    enum fy_req_state before = c->rq;
    bool scan = before == FY_RQ_HEAD || c->in_trailers; /* llhttp pauses where a head or trailers end */
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&c->parser) - data);
    c->rpos += used;
    if (scan && !fy_http_head_check(&c->head_scan, data, used)) {
      c->error_status = 400; /* the earlier fault, whatever a callback found after it */
      fy_conn_parse_error(c, err);
      return;
    }
    if (err != HPE_PAUSED && err != HPE_PAUSED_UPGRADE && err != HPE_OK) {
      fy_conn_parse_error(c, err);
      return;
    }
    if (err == HPE_PAUSED) {
      llhttp_resume(&c->parser);
    } else if (err == HPE_PAUSED_UPGRADE) {
      llhttp_resume_after_upgrade(&c->parser);
      c->rq = FY_RQ_DONE;
    }
    if (before == FY_RQ_HEAD && c->rq != FY_RQ_HEAD) fy_proxy_start(c);
  }
  if (c->closing) return;
  if (c->client_eof && c->rq == FY_RQ_HEAD && c->rs == FY_RS_NONE && c->rpos == c->rlen) {
    fy_conn_client_eof(c, UV_EOF); /* no complete request is left to answer */
    return;
  }
  if (c->client_eof && c->rq == FY_RQ_BODY && c->rpos == c->rlen && fy_proxy_can_read_body(c)) {
    fy_conn_close(c); /* every byte the client sent is taken, and its body is not complete */
    return;
  }
  fy_proxy_flush_upstream(c);
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
  if (c->uw_pending) {
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
  if (c->rq == FY_RQ_HEAD && c->rpos == c->rlen && c->req.url.len == 0) {
    fy_conn_close(c); /* an idle client went away */
    return;
  }
  if (c->rq == FY_RQ_HEAD) {
    c->close_after = true;
    fy_conn_respond_simple(c, 400, "incomplete request\n");
    return;
  }
  if (err == UV_EOF && (c->rq == FY_RQ_DONE || c->rpos < c->rlen)) {
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
  if (c->rpos == c->rlen && !c->uw_pending) c->rpos = c->rlen = 0; /* nothing refers to rbuf */
  bool room = c->rbuf == NULL || c->rlen < FY_CONN_RBUF_SIZE || (c->rpos > 0 && !c->uw_pending);
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
  if (c->rq == FY_RQ_HEAD && c->rs == FY_RS_NONE)
    return c->req.started_ms ? FY_WAIT_HEADER : FY_WAIT_KEEPALIVE;
  if (c->rq == FY_RQ_BODY && fy_proxy_can_read_body(c) && c->rpos == c->rlen) return FY_WAIT_BODY;
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
    fy_proxy_abort(c);
    c->rs = c->rs == FY_RS_WAIT ? FY_RS_NONE : c->rs;
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

static bool fy_conn_output_queued(fy_conn *c) { return c->chead.len || c->cbody.span || c->cbody.copy.len; }

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
  if (c->up) c->up->pinned = false;
  fy_conn_retime(c, true);
  if (fy_conn_output_queued(c))
    fy_conn_flush_client(c); /* queued while this write ran */
  else if (c->rs == FY_RS_DONE)
    fy_conn_exchange_maybe_done(c);
  else
    fy_proxy_response_written(c);
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
void fy_conn_flush_client(fy_conn *c) {
  if (c->cw_pending || c->closing) return;
  uv_buf_t bufs[2];
  unsigned n = fy_bodyout_bufs(&c->chead, &c->cbody, bufs);
  if (n == 0) return;
  fy_buf_swap(&c->chead, &c->cw_head);
  fy_buf_swap(&c->cbody.copy, &c->cw_copy);
  if (c->cbody.span && c->up) c->up->pinned = true; /* the span lives in the upstream's rbuf */
  if (c->rs == FY_RS_BODY || c->rs == FY_RS_DONE) c->resp_sent = true;
  c->cbody.span = NULL;
  for (unsigned i = 0; i < n; i++)
    c->req.bytes_out += bufs[i].len;
  int rc = fy_sock_write(&c->sock, &c->cwrite, bufs, n, fy_conn_write_cb);
  if (rc < 0) {
    fy_conn_close(c);
    return;
  }
  c->cw_pending = true;
  fy_conn_retime(c, true);
}

bool fy_conn_will_close(fy_conn *c) {
  return c->close_after || (c->client_eof && c->rpos == c->rlen) || !c->req.keepalive ||
         c->rq != FY_RQ_DONE || c->w->stopping || c->nreq + 1 >= fy_conn_limits(c)->keepalive_requests;
}

void fy_conn_respond_with(fy_conn *c, int status, const char *headers, size_t hlen, const char *body,
                          size_t blen) {
  if (c->closing) return;
  if (c->rs == FY_RS_BODY || c->rs == FY_RS_DONE) {
    fy_conn_close(c); /* a response is already under way: all we can do is cut it */
    return;
  }
  if (c->rq != FY_RQ_DONE) c->close_after = true;
  fy_buf_reset(&c->chead);
  fy_bodyout_reset(&c->cbody);
  fy_http_write_simple(&c->chead, status, headers, hlen, body, blen, c->req.head, fy_conn_will_close(c));
  c->req.status = status;
  c->rs = FY_RS_DONE;
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

static void fy_conn_observe(fy_conn *c) {
  const fy_req *r = &c->req;
  char labels[FY_LABELS_MAX];
  const char *group = r->group >= 0 && r->gen ? r->gen->cfg->groups[r->group].name : "none";
  fy_labels(labels, sizeof labels, "listener", c->listener->name, "group", group, "class",
            fy_metrics_class(r->status), NULL);
  uint64_t now = uv_hrtime();
  fy_metrics_observe(&c->w->metrics, FY_M_REQUEST_DURATION, labels,
                     r->started_ns && now > r->started_ns ? now - r->started_ns : 0);
}

static void fy_conn_access_log(fy_conn *c) {
  fy_req *r = &c->req;
  if (!c->listener->admin) { /* the admin listener's own answers are not traffic */
    c->w->stats.responses[r->status >= 100 && r->status < 600 ? r->status / 100 : 0]++;
    fy_conn_observe(c);
  }
  fy_proxy_log_hook(c);
  fy_access_log_write(c);
}

static void fy_conn_request_end(fy_conn *c) {
  fy_req *r = &c->req;
  fy_retry_end(c);
  if (r->has_ctx && r->gen) fy_lua_release(&r->gen->lua, r->id);
  r->has_ctx = false;
  fy_buf_reset(&r->url);
  fy_headers_reset(&r->headers);
  fy_buf_reset(&r->respond_headers);
  fy_buf_reset(&r->respond_body);
  fy_headers_reset(&c->rheaders);
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
 */
static void fy_conn_close_gracefully(fy_conn *c) {
  if (c->reading) fy_sock_read_stop(&c->sock);
  c->reading = false;
  c->lingering = true;
  fy_conn_retime(c, false);
  c->shutdown_req.data = c;
  if (fy_sock_shutdown(&c->sock, &c->shutdown_req, fy_conn_shutdown_cb) < 0) fy_conn_close(c);
}

void fy_conn_exchange_maybe_done(fy_conn *c) {
  if (c->closing || c->lingering || c->rs != FY_RS_DONE || c->cw_pending) return;
  if (c->rq != FY_RQ_DONE && !c->close_after) return;
  bool close = fy_conn_will_close(c);
  fy_proxy_finish(c);
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
  fy_buf *bufs[] = {
      &c->req.url, &c->req.respond_headers, &c->req.respond_body, &c->chead, &c->uhead, &c->cw_head,
      &c->cw_copy, &c->cbody.copy,          &c->ubody.copy};
  for (size_t i = 0; i < FY_ARRAY_SIZE(bufs); i++)
    fy_buf_free(bufs[i]);
  fy_headers_free(&c->req.headers);
  fy_headers_free(&c->rheaders);
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
  c->error_status = 0;
  c->resp_sent = false;
  fy_http_head_scan_init(&c->head_scan);
  c->in_trailers = false;
  c->rq = FY_RQ_HEAD;
  c->rs = FY_RS_NONE;
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

/* ---- accept and close ------------------------------------------------- */

/* True when the connection was refused: PROXY headers are taken only from trusted networks. */
static bool fy_conn_expect_proxy_header(fy_conn *c, const struct sockaddr_storage *peer) {
  const fy_cfg_listener *cl = &c->gen->cfg->listeners[c->listener->index];
  if (cl->nproxy_trusted == 0) return false;
  if (!fy_cfg_listener_trusts(cl, (const struct sockaddr *)peer)) {
    fy_log_warn("listener %s: %s:%d is not in proxy_protocol.trusted; closing", cl->name, c->client_ip,
                c->client_port);
    fy_conn_close(c);
    return true;
  }
  c->pp = fy_calloc(1, sizeof *c->pp);
  c->pp_pending = true;
  return false;
}

static void fy_conn_free(fy_conn *c) {
  if (c->accepted) c->w->nconns--;
  fy_conn_request_end(c);
  fy_buf_free(&c->req.url);
  fy_headers_free(&c->req.headers);
  fy_headers_free(&c->rheaders);
  fy_buf_free(&c->req.respond_headers);
  fy_buf_free(&c->req.respond_body);
  fy_buf_free(&c->req.log_fields);
  fy_buf_free(&c->chead);
  fy_buf_free(&c->uhead);
  fy_buf_free(&c->cbody.copy);
  fy_buf_free(&c->cw_head);
  fy_buf_free(&c->cw_copy);
  fy_buf_free(&c->ubody.copy);
  fy_gen_unref(c->gen);
  fy_pool_put(c->rbuf);
  free(c->pp);
  fy_sock_free(&c->sock);
  fy_conn_delete(c);
}

static void fy_conn_close_cb(uv_handle_t *h) {
  fy_conn *c = h->data;
  if (--c->handles_open == 0) {
    fy_worker *w = c->w;
    fy_conn_free(c);
    fy_worker_maybe_stopped(w);
  }
}

void fy_conn_close(fy_conn *c) {
  if (c->closing) return;
  if (c->rs != FY_RS_DONE && c->rq != FY_RQ_HEAD) {
    c->req.status = c->req.status ? c->req.status : 499;
    if (c->req.termination == NULL) c->req.termination = c->w->unbound ? "drain_cut" : "client_cut";
    fy_conn_access_log(c);
  }
  c->closing = true;
  if (c->admin_wait) fy_admin_abort(c);
  fy_write_forget(&c->cwrite);
  fy_proxy_abort(c);
  fy_list_remove(&c->link);
  fy_sock_close(&c->sock, fy_conn_close_cb, c->reset_on_close);
  uv_close((uv_handle_t *)&c->timer, fy_conn_close_cb);
  uv_close((uv_handle_t *)&c->retry_timer, fy_conn_close_cb);
}

void fy_conn_accept(fy_listener *l) {
  fy_worker *w = l->w;
  fy_conn *c = fy_conn_new();
  uv_tcp_init(w->loop, &c->sock.tcp);
  c->sock.tcp.data = c;
  c->handles_open = 1;
  c->w = w;
  c->listener = l;
  c->gen = fy_gen_ref(w->gen);
  fy_list_init(&c->link);
  if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->sock.tcp) < 0) {
    c->closing = true;
    uv_close((uv_handle_t *)&c->sock.tcp, fy_conn_close_cb);
    return;
  }
  fy_deadline_init(w->loop, &c->timer, fy_conn_timeout_cb, c);
  uv_timer_init(w->loop, &c->retry_timer);
  c->retry_timer.data = c;
  c->handles_open = 3;
  fy_list_insert_head(&w->conns, &c->link);
  uv_tcp_nodelay(&c->sock.tcp, 1);

  struct sockaddr_storage ss;
  int sslen = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (uv_tcp_getpeername(&c->sock.tcp, (struct sockaddr *)&ss, &sslen) == 0)
    fy_addr_name(&ss, c->client_ip, sizeof c->client_ip, &c->client_port);
  llhttp_init(&c->parser, HTTP_REQUEST, &fy_request_settings);
  c->parser.data = c;
  fy_headers_init(&c->req.headers);
  fy_headers_init(&c->rheaders);
  fy_conn_request_begin(c);
  if (!l->admin && fy_conn_expect_proxy_header(c, &ss)) return;
  if (!c->pp_pending && fy_conn_tls_ctx(c)) fy_tls_accept(&c->sock, fy_conn_tls_ctx(c), NULL, 0);
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
