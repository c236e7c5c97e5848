/*
 * An exchange: one request's trip to the upstream and its response's way
 * back, whatever client connection it came on.
 *
 * The exchange owns the attempts (retry.c decides whether a failed one gets
 * another), the upstream connection of the current attempt, the request
 * bytes queued for it, the response parsed from it and the response bytes
 * queued for the client (proxy.c forwards and relays). It moves through one
 * response state, changed only by fy_exchange_enter:
 *
 *   NONE -> WAIT -> BODY -> DONE     (no answer yet, an attempt under way,
 *                                     relaying the body, the answer complete)
 *
 * with WAIT -> NONE (an attempt failed; the next one or a ferry-made answer
 * follows), BODY -> WAIT (a failure before any byte reached the client),
 * NONE/WAIT -> DONE (a ferry-made answer) and DONE -> NONE (the next
 * exchange on the connection).
 *
 * The exchange reaches its client only through fy_exchange_client, the way
 * an h2o generator reaches its connection through the request: conn.c
 * implements it for an HTTP/1.1 connection, and other clients (an HTTP/2
 * stream, an embedding host) can implement it for theirs.
 */
#ifndef FERRY_EXCHANGE_H
#define FERRY_EXCHANGE_H

#include "req.h"
#include "upstream.h"
#include "worker.h"

#include <sys/socket.h>

enum fy_resp_state { FY_RS_NONE, FY_RS_WAIT, FY_RS_BODY, FY_RS_DONE };

/* Where body bytes go next: a zero-copy span, or a copy with new framing. */
typedef struct fy_bodyout {
  const char *span;
  size_t span_len;
  fy_buf copy;
  bool chunked;
} fy_bodyout;

void fy_bodyout_add(fy_bodyout *o, const char *at, size_t len);
/* Fills bufs (at most 2) from head and o; returns the count. */
unsigned fy_bodyout_bufs(fy_buf *head, fy_bodyout *o, uv_buf_t *bufs);
void fy_bodyout_reset(fy_bodyout *o);

typedef struct fy_exchange fy_exchange;

/* What an exchange asks of the client it serves. */
typedef struct fy_exchange_client {
  /* The upstream can take request bytes: read and queue more of the request. */
  void (*pump)(fy_exchange *x);
  /* Response bytes were queued in x->chead and x->cbody: send them. */
  void (*flush)(fy_exchange *x);
  /* The response may be complete: end the exchange once it is sent. */
  void (*done)(fy_exchange *x);
  /* Answer with a ferry-made response (header lines "Name: value\r\n"...). */
  void (*respond)(fy_exchange *x, int status, const char *headers, size_t hlen, const char *body,
                  size_t blen);
  /* The response was cut: end the client's connection so that it cannot look complete. */
  void (*cut)(fy_exchange *x);
  /* Whether the client's connection ends with this exchange. */
  bool (*will_close)(fy_exchange *x);
  /* A write to the client is in flight (queue no more until it ends). */
  bool (*sending)(fy_exchange *x);
  /* The client's addresses for a PROXY protocol header: from the one ferry got, else the socket. */
  void (*addresses)(fy_exchange *x, struct sockaddr_storage *src, struct sockaddr_storage *dst);
} fy_exchange_client;

struct fy_exchange {
  const fy_exchange_client *client;
  void *data; /* the client's */
  fy_worker *w;
  fy_req *req;
  enum fy_resp_state rs;
  bool req_done;    /* the client's request was read to its end */
  bool close_after; /* the client's connection must end with this exchange */
  bool resp_sent;   /* bytes of the final response went to the client */
  /* The current attempt's upstream side. */
  fy_uconn *up;
  fy_buf uhead;     /* head to send upstream */
  fy_bodyout ubody; /* body bytes to send upstream */
  bool uw_pending;  /* a write to the upstream is in flight */
  /* The response, as queued for the client. */
  fy_buf chead;     /* head to send to the client */
  fy_bodyout cbody; /* body bytes to send to the client */
  /* Attempts (retry.c). */
  uv_timer_t retry_timer; /* backoff before the next attempt */
  unsigned attempt;       /* 1 for the first */
  fy_server *tried[10];   /* servers of earlier attempts */
  size_t ntried;
  fy_server *server;   /* of the current attempt */
  uint64_t attempt_ns; /* when the current attempt's request went out */
  uint64_t dial_ns;    /* when the current attempt's new connection started */
  uint64_t key;        /* balancing key from route() */
  bool has_key;
  fy_buf replay;        /* request body bytes sent so far, to send again */
  bool replayable;      /* replay holds every body byte sent */
  bool replay_pending;  /* the next write starts with replay */
  bool continue_sent;   /* 100 Continue went out already */
  int retry_status;     /* a response status that asked for another attempt */
  bool response_failed; /* the response hook failed: answer 500 instead */
  fy_group *counted;    /* the group whose requests count this exchange */
  bool retrying;        /* counted in the group's retries too */
};

/* exchange.c: the exchange's life and its one state transition. */
void fy_exchange_init(fy_exchange *x, fy_worker *w, fy_req *req, const fy_exchange_client *client,
                      void *data);
void fy_exchange_begin(fy_exchange *x); /* a new request on the same object */
void fy_exchange_end(fy_exchange *x);   /* the request is over: release what it held */
/* Frees the buffers an idle exchange keeps for the next request. */
void fy_exchange_trim(fy_exchange *x);
void fy_exchange_free(fy_exchange *x);
/* Closes the exchange's handle (its retry timer); cb gets it, its data being x. */
void fy_exchange_close(fy_exchange *x, uv_close_cb cb);
/* Logs and asserts if from x->rs to `to` is not a transition drawn above (debug builds). */
void fy_exchange_check_transition(fy_exchange *x, enum fy_resp_state to);
/* Moves the response state; an invalid transition is a bug (an assert in debug builds). */
static inline void fy_exchange_enter(fy_exchange *x, enum fy_resp_state to) {
#ifndef NDEBUG
  fy_exchange_check_transition(x, to);
#endif
  x->rs = to;
}
/* A client write points into (or no longer into) the upstream's read buffer. */
static inline void fy_exchange_pin(fy_exchange *x, bool pinned) {
  if (x->up) x->up->pinned = pinned;
}
/* Request body bytes from the client, and the end of the request. */
static inline void fy_exchange_body(fy_exchange *x, const char *at, size_t len) {
  if (x->up) fy_bodyout_add(&x->ubody, at, len);
}
static inline void fy_exchange_body_end(fy_exchange *x) {
  if (x->up && x->req->chunked) fy_http_chunk_end(&x->ubody.copy);
}
/* A ferry-made text/plain answer, through the client. */
void fy_exchange_respond_simple(fy_exchange *x, int status, const char *body);
static inline uint64_t fy_exchange_now_ms(fy_exchange *x) { return uv_now(x->w->loop); }

/* retry.c */
enum fy_failure {
  FY_FAIL_CONNECT,         /* no connection (refused, unreachable) */
  FY_FAIL_CONNECT_TIMEOUT, /* no connection within timeouts.connect */
  FY_FAIL_RESET,           /* closed or reset before the response */
  FY_FAIL_TIMEOUT,         /* no response within timeouts.read */
  FY_FAIL_BAD_RESPONSE,    /* a response ferry could not parse */
  FY_FAIL_STATUS,          /* a response status listed in retry.statuses */
  FY_FAIL_TLS,             /* the TLS handshake failed (certificate, name, protocol) */
};
const char *fy_failure_name(enum fy_failure f);
/* Whether this failed attempt may be followed by another (limits, then the retry hook). */
bool fy_retry_decide(fy_exchange *x, enum fy_failure f, int status, bool stale);
uint64_t fy_retry_backoff_ms(fy_exchange *x);
bool fy_retry_may_replay(fy_exchange *x);
/* Keeps a copy of body bytes sent upstream while they fit the replay buffer. */
void fy_replay_add(fy_exchange *x, const uv_buf_t *bufs, unsigned n);
void fy_retry_end(fy_exchange *x); /* the exchange is over: release budget counts */

/* proxy.c */
void fy_proxy_start(fy_exchange *x);          /* headers parsed, req->policy set: route and forward */
void fy_proxy_flush_upstream(fy_exchange *x); /* send queued request bytes */
void fy_proxy_abort(fy_exchange *x);          /* drop the upstream side */
void fy_proxy_finish(fy_exchange *x);         /* exchange over: pool or close the upstream */
bool fy_proxy_can_read_body(fy_exchange *x);
void fy_proxy_response_written(fy_exchange *x);
void fy_proxy_log_hook(fy_exchange *x); /* runs the policy's log hook, if any */

#endif
