/*
 * A client connection and the HTTP exchanges on it.
 *
 * One request is handled at a time: when a request's last byte has been
 * parsed the client parser pauses, so pipelined requests wait in the read
 * buffer (and then in the kernel) and are answered in order. Each exchange
 * moves through explicit states on both halves:
 *
 *   request half:  HEAD -> BODY -> DONE       (parsing the client's request)
 *   response half: NONE -> WAIT -> BODY -> DONE (relaying the answer)
 *
 * The exchange ends when both halves are DONE and no write is in flight;
 * then the connection either starts over at HEAD or closes. conn.c owns the
 * client side (parsing, limits, timers, writes to the client, closing);
 * proxy.c owns the upstream side (routing, forwarding, relaying).
 *
 * Back-pressure: body bytes are written from the buffer they were read into,
 * and the side that produced them is not read again until the write ends. A
 * connection therefore holds at most one read buffer per side, whatever the
 * body size.
 */
#ifndef FERRY_CONN_H
#define FERRY_CONN_H

#include "deadline.h"
#include "http.h"
#include "pool.h"
#include "proxy_protocol.h"
#include "tls.h"
#include "worker.h"

#include <llhttp.h>
#include <netinet/in.h>

enum fy_req_state { FY_RQ_HEAD, FY_RQ_BODY, FY_RQ_DONE };
enum fy_resp_state { FY_RS_NONE, FY_RS_WAIT, FY_RS_BODY, FY_RS_DONE };

/* What a client connection is waiting for; each has its own timeout. */
enum fy_conn_wait {
  FY_WAIT_NONE,      /* nothing from the client (the upstream's timers run) */
  FY_WAIT_KEEPALIVE, /* the first byte of the next request */
  FY_WAIT_HEADER,    /* the rest of a request head */
  FY_WAIT_BODY,      /* more request body */
  FY_WAIT_SEND,      /* the client to take what ferry writes */
  FY_WAIT_LINGER,    /* the client's close after ferry's */
};

/* Where body bytes go next: a zero-copy span, or a copy with new framing. */
typedef struct fy_bodyout {
  const char *span;
  size_t span_len;
  fy_buf copy;
  bool chunked;
} fy_bodyout;

typedef struct fy_req {
  uint64_t id;
  fy_gen *gen;
  int policy;
  fy_buf url;
  fy_headers headers;
  size_t header_bytes;
  fy_target target;
  char host[256];
  size_t host_len;
  const char *method;
  uint8_t http_minor;
  bool has_body, chunked, keepalive, expect_continue, head, has_content_length;
  uint64_t content_length;
  bool has_ctx; /* Lua holds a ctx table for it (released at the end) */
  uint64_t started_ms;
  int status; /* sent to the client */
  uint64_t bytes_out;
  int group;
  const char *server;
  /* For the latency histograms and the access log (uv_hrtime ns; 0: did not happen). */
  uint64_t started_ns;
  uint64_t connect_ns; /* opening the last new upstream connection (0: a pooled one) */
  uint64_t header_ns;  /* the last attempt's request sent to its response head */
  uint64_t policy_ns;  /* in hooks, all of them */
  uint8_t failures[8]; /* enum fy_failure of each failed attempt, in order */
  unsigned nfailures;
  uint64_t bytes_in;       /* request body bytes received */
  const char *termination; /* why the exchange ended (access log); NULL: "ok" */
  fy_buf log_fields;       /* the policy's fields for the access line (access_log.c) */
  /* A response made by req:respond(). */
  int respond_status;
  fy_buf respond_headers;
  fy_buf respond_body;
} fy_req;

#define FY_CONN_RBUF_SIZE FY_POOL_BLOCK_SIZE

typedef struct fy_conn {
  fy_sock sock;        /* first: the uv handle's address is the connection's */
  fy_deadline timer;   /* what the connection waits for from the client (enum fy_conn_wait) */
  fy_write_req cwrite; /* to the client */
  uv_shutdown_t shutdown_req;
  fy_worker *w;
  fy_listener *listener;
  fy_gen *gen; /* the generation the connection started on */
  fy_list link;
  llhttp_t parser;
  char *rbuf;
  size_t rpos, rlen;
  enum fy_req_state rq;
  enum fy_resp_state rs;
  fy_req req;
  int error_status;            /* set by a parser callback that refuses the request */
  fy_http_head_scan head_scan; /* the raw head (or trailer) bytes so far, for what llhttp lets through */
  bool in_trailers;            /* the last chunk is parsed: trailer lines follow */
  fy_uconn *up;
  llhttp_t uparser;
  fy_headers rheaders; /* upstream response headers */
  int ustatus;
  fy_buf chead;            /* head to send to the client */
  fy_bodyout cbody;        /* body bytes to send to the client */
  fy_buf cw_head, cw_copy; /* what the client write in flight is sending */
  fy_buf uhead;            /* head to send upstream */
  fy_bodyout ubody;        /* body bytes to send upstream */
  enum fy_conn_wait wait;
  bool cw_pending, uw_pending;
  bool reading;
  bool close_after; /* close the client connection when the exchange ends */
  bool closing;
  bool lingering;
  bool client_eof;   /* the client half-closed after a complete request */
  bool accepted;     /* counted in the worker's open connections */
  bool trimmed;      /* idle long enough to have freed its head buffers */
  bool pp_pending;   /* a PROXY protocol header is expected first */
  fy_proxy_info *pp; /* what it said (listeners with proxy_protocol only) */
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
  bool resp_sent;       /* bytes of the final response went to the client */
  bool reset_on_close;  /* close with RST: the response was cut */
  int retry_status;     /* a response status that asked for another attempt */
  bool response_failed; /* the response hook failed: answer 500 instead */
  fy_group *counted;    /* the group whose requests count this exchange */
  bool retrying;        /* counted in the group's retries too */
  unsigned nreq;
  unsigned handles_open;
  void *admin_wait; /* an admin answer that waits on other loops (admin.c) */
  char client_ip[INET6_ADDRSTRLEN];
  int client_port;
} fy_conn;

void fy_conn_accept(fy_listener *l);
void fy_conn_close(fy_conn *c);
/* Answers the current request with a ferry-made response. */
void fy_conn_respond(fy_conn *c, int status, const char *ctype, const char *body, size_t blen);
/* The same with a ready block of header lines ("Name: value\r\n"...). */
void fy_conn_respond_with(fy_conn *c, int status, const char *headers, size_t hlen, const char *body,
                          size_t blen);
void fy_conn_respond_simple(fy_conn *c, int status, const char *body);

/* admin.c: answers a request on the admin listener. */
void fy_admin_handle(fy_conn *c);
/* The connection closes: an admin answer it waits for is dropped. */
void fy_admin_abort(fy_conn *c);
/* Whether the client connection closes once the current exchange ends. */
bool fy_conn_will_close(fy_conn *c);
/* Called by proxy.c when the response half is done or new bytes were queued. */
void fy_conn_flush_client(fy_conn *c);
void fy_conn_exchange_maybe_done(fy_conn *c);
void fy_conn_client_pump(fy_conn *c);
uint64_t fy_now_ms(fy_conn *c);

void fy_bodyout_add(fy_bodyout *o, const char *at, size_t len);
/* Fills bufs (at most 2) from head and o; returns the count. */
unsigned fy_bodyout_bufs(fy_buf *head, fy_bodyout *o, uv_buf_t *bufs);
void fy_bodyout_reset(fy_bodyout *o);

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
bool fy_retry_decide(fy_conn *c, enum fy_failure f, int status, bool stale);
uint64_t fy_retry_backoff_ms(fy_conn *c);
bool fy_retry_may_replay(fy_conn *c);
/* Keeps a copy of body bytes sent upstream while they fit the replay buffer. */
void fy_replay_add(fy_conn *c, const uv_buf_t *bufs, unsigned n);
void fy_retry_end(fy_conn *c); /* the exchange is over: release budget counts */

/* proxy.c */
void fy_proxy_start(fy_conn *c);          /* headers parsed: route and forward */
void fy_proxy_flush_upstream(fy_conn *c); /* send queued request bytes */
void fy_proxy_abort(fy_conn *c);          /* drop the upstream side */
void fy_proxy_finish(fy_conn *c);         /* exchange over: pool or close the upstream */
bool fy_proxy_can_read_body(fy_conn *c);
void fy_proxy_response_written(fy_conn *c);
void fy_proxy_log_hook(fy_conn *c); /* runs the policy's log hook, if any */

#endif
