/* Reading a request head: llhttp's callbacks and the checks ferry adds to them (req.h). */
#include "req.h"

#include <string.h>

static inline fy_req_reader *fy_req_reader_of(llhttp_t *p) { return p->data; }

static int fy_req_reader_refuse(fy_req_reader *rd, int status) {
  rd->error_status = status;
  return -1;
}

static int fy_on_message_begin(llhttp_t *p) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (rd->cb && rd->cb->begin) rd->cb->begin(rd);
  return 0;
}

static int fy_on_method_complete(llhttp_t *p) {
  fy_req_reader_of(p)->req->head = p->method == HTTP_HEAD; /* from here on, a refusal of a HEAD has no body */
  return 0;
}

static int fy_on_url(llhttp_t *p, const char *at, size_t len) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (rd->req->url.len + len > rd->limits->max_request_line) return fy_req_reader_refuse(rd, 414);
  fy_buf_append(&rd->req->url, at, len);
  return 0;
}

static int fy_on_header_field(llhttp_t *p, const char *at, size_t len) {
  fy_req_reader *rd = fy_req_reader_of(p);
  rd->req->header_bytes += len;
  if (rd->req->header_bytes > rd->limits->max_header_bytes) return fy_req_reader_refuse(rd, 431);
  if (!fy_headers_collect_name(&rd->req->headers, at, len, rd->limits->max_headers))
    return fy_req_reader_refuse(rd, 431);
  return 0;
}

static int fy_on_header_field_complete(llhttp_t *p) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (!fy_headers_collect_name_end(&rd->req->headers)) return fy_req_reader_refuse(rd, 400); /* ": x" */
  return 0;
}

static int fy_on_header_value(llhttp_t *p, const char *at, size_t len) {
  fy_req_reader *rd = fy_req_reader_of(p);
  rd->req->header_bytes += len;
  if (rd->req->header_bytes > rd->limits->max_header_bytes) return fy_req_reader_refuse(rd, 431);
  if (!fy_http_value_ok(at, len)) return fy_req_reader_refuse(rd, 400);
  fy_headers_collect_value(&rd->req->headers, at, len);
  return 0;
}

/* Host from the absolute-form target, else from the single Host header. */
static int fy_req_find_host(fy_req *r) {
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
static int fy_req_check_expect(fy_req *r) {
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
static int fy_req_check_transfer_encoding(fy_req_reader *rd) {
  enum fy_http_te te = fy_http_transfer_encoding(&rd->req->headers);
  if (te == FY_TE_NONE) return 0;
  if (rd->req->http_minor == 0 || te == FY_TE_BAD) return fy_req_reader_refuse(rd, 400);
  if (te == FY_TE_UNSUPPORTED) return fy_req_reader_refuse(rd, 501);
  return 0;
}

static int fy_on_headers_complete(llhttp_t *p) {
  fy_req_reader *rd = fy_req_reader_of(p);
  fy_req *r = rd->req;
  if (p->http_major != 1) return fy_req_reader_refuse(rd, 505);
  if (p->method == HTTP_CONNECT) return fy_req_reader_refuse(rd, 405);
  r->http_minor = p->http_minor;
  r->method = llhttp_method_name(p->method);
  r->head = p->method == HTTP_HEAD;
  r->chunked = (p->flags & F_CHUNKED) != 0;
  r->has_content_length = (p->flags & F_CONTENT_LENGTH) != 0;
  r->content_length = r->has_content_length ? p->content_length : 0;
  r->has_body = r->chunked || (r->has_content_length && p->content_length > 0);
  r->keepalive = llhttp_should_keep_alive(p) && !llhttp_get_upgrade(p);
  if (fy_req_check_transfer_encoding(rd) != 0) return -1;
  if (fy_http_target_parse(r->url.data, r->url.len, &r->target) != 0) return fy_req_reader_refuse(rd, 400);
  if (fy_req_find_host(r) != 0) return fy_req_reader_refuse(rd, 400);
  if (fy_http_strip_hop_by_hop(&r->headers)) return fy_req_reader_refuse(rd, 400); /* Connection named Host */
  if (fy_req_check_expect(r) != 0) return fy_req_reader_refuse(rd, 417);
  rd->rq = FY_RQ_BODY;
  /* Without a body the message completes at once; on_message_complete pauses. */
  return r->has_body ? HPE_PAUSED : 0;
}

static int fy_on_body(llhttp_t *p, const char *at, size_t len) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (rd->cb && rd->cb->body) rd->cb->body(rd, at, len);
  return 0;
}

/* The last chunk: a pause, so the pump checks the trailer lines from here like a head's. */
static int fy_on_chunk_header(llhttp_t *p) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (p->content_length != 0) return 0;
  rd->in_trailers = true;
  fy_http_head_scan_trailers(&rd->head_scan);
  return HPE_PAUSED;
}

static int fy_on_message_complete(llhttp_t *p) {
  fy_req_reader *rd = fy_req_reader_of(p);
  if (rd->cb && rd->cb->end) rd->cb->end(rd);
  rd->rq = FY_RQ_DONE;
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

void fy_req_reader_init(fy_req_reader *rd, fy_req *req, const fy_limits *limits, const fy_req_reader_cb *cb,
                        void *data) {
  llhttp_init(&rd->parser, HTTP_REQUEST, &fy_request_settings);
  rd->parser.data = rd;
  rd->req = req;
  rd->limits = limits;
  rd->cb = cb;
  rd->data = data;
  fy_req_reader_begin(rd);
}

void fy_req_reader_begin(fy_req_reader *rd) {
  rd->error_status = 0;
  fy_http_head_scan_init(&rd->head_scan);
  rd->in_trailers = false;
  rd->rq = FY_RQ_HEAD;
}

int fy_req_reader_execute(fy_req_reader *rd, const char *data, size_t len, size_t *used, const char **why) {
  bool scan = rd->rq == FY_RQ_HEAD || rd->in_trailers; /* llhttp pauses where a head or trailers end */
  llhttp_errno_t err = llhttp_execute(&rd->parser, data, len);
  *used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&rd->parser) - data);
  if (scan && !fy_http_head_check(&rd->head_scan, data, *used))
    rd->error_status = 400; /* the earlier fault, whatever a callback found after it */
  else if (err == HPE_PAUSED)
    llhttp_resume(&rd->parser);
  else if (err == HPE_PAUSED_UPGRADE) {
    llhttp_resume_after_upgrade(&rd->parser);
    rd->rq = FY_RQ_DONE;
  } else if (err != HPE_OK && rd->error_status == 0) {
    *why = llhttp_get_error_reason(&rd->parser);
    return rd->error_status = 400;
  }
  if (rd->error_status == 0) return 0;
  *why = fy_http_reason(rd->error_status);
  return rd->error_status;
}

int fy_req_reader_parse_head(fy_req_reader *rd, const char *data, size_t len, const char **why) {
  while (rd->rq == FY_RQ_HEAD) {
    if (len == 0) {
      *why = "incomplete request";
      return 400;
    }
    size_t used;
    int status = fy_req_reader_execute(rd, data, len, &used, why);
    if (status != 0) return status;
    data += used;
    len -= used;
  }
  return 0;
}
