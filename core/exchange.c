/* An exchange's life, its response state and its body buffers (exchange.h). */
#include "exchange.h"

#include "log.h"

#include <assert.h>

#ifndef NDEBUG
static const char *const fy_resp_state_names[] = {"NONE", "WAIT", "BODY", "DONE"};

/* The transitions exchange.h draws: [from] is a bit set of the states it may go to. */
static const unsigned fy_resp_transitions[] = {
    [FY_RS_NONE] = 1u << FY_RS_NONE | 1u << FY_RS_WAIT | 1u << FY_RS_DONE,
    [FY_RS_WAIT] = 1u << FY_RS_NONE | 1u << FY_RS_WAIT | 1u << FY_RS_BODY | 1u << FY_RS_DONE,
    [FY_RS_BODY] = 1u << FY_RS_WAIT | 1u << FY_RS_DONE,
    [FY_RS_DONE] = 1u << FY_RS_NONE,
};
#endif

void fy_exchange_check_transition(fy_exchange *x, enum fy_resp_state to) {
#ifndef NDEBUG
  if (!(fy_resp_transitions[x->rs] & 1u << to)) {
    fy_log_error("request %llu: invalid response state transition %s -> %s", (unsigned long long)x->req->id,
                 fy_resp_state_names[x->rs], fy_resp_state_names[to]);
    assert(!"invalid response state transition");
  }
#else
  (void)x, (void)to;
#endif
}

void fy_exchange_init(fy_exchange *x, fy_worker *w, fy_req *req, const fy_exchange_client *client,
                      void *data) {
  x->w = w;
  x->req = req;
  x->client = client;
  x->data = data;
  uv_timer_init(w->loop, &x->retry_timer);
  x->retry_timer.data = x;
}

void fy_exchange_begin(fy_exchange *x) {
  fy_exchange_enter(x, FY_RS_NONE);
  x->req_done = false;
  x->close_after = false;
  x->resp_sent = false;
}

void fy_exchange_end(fy_exchange *x) {
  fy_retry_end(x);
  fy_headers_reset(&x->req->rheaders);
}

void fy_exchange_trim(fy_exchange *x) {
  fy_buf_free(&x->chead);
  fy_buf_free(&x->uhead);
  fy_buf_free(&x->cbody.copy);
  fy_buf_free(&x->ubody.copy);
}

void fy_exchange_free(fy_exchange *x) {
  fy_exchange_trim(x);
  fy_buf_free(&x->replay);
}

void fy_exchange_close(fy_exchange *x, uv_close_cb cb) { uv_close((uv_handle_t *)&x->retry_timer, cb); }

void fy_exchange_respond_simple(fy_exchange *x, int status, const char *body) {
  static const char ctype[] = "Content-Type: text/plain\r\n";
  x->client->respond(x, status, ctype, sizeof ctype - 1, body, strlen(body));
}

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
