/*
 * A request as the policy sees it, and the reader that makes one from bytes.
 *
 * fy_req is what the hooks and the fy_ffi_* functions work on: the parsed
 * head, the client as ferry knows it (filled in by the connection that read
 * the request), a req:respond() answer, and the upstream's response head
 * while the response and log hooks run. It belongs to one exchange.
 *
 * fy_req_reader is the socket-free half of reading requests: llhttp in
 * strict mode plus every check ferry makes of a request head (limits, Host
 * rules, Transfer-Encoding, Expect, the request target, hop-by-hop headers).
 * conn.c feeds it what it reads from a client; `ferry test` feeds it the
 * head a spec describes (fy_req_reader_parse_head), so both build requests
 * with the same code.
 */
#ifndef FERRY_REQ_H
#define FERRY_REQ_H

#include "config.h"
#include "http.h"
#include "proxy_protocol.h"

#include <llhttp.h>

struct fy_gen;
struct fy_tls;

typedef struct fy_req {
  uint64_t id;
  struct fy_gen *gen;
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
  /* The client, as the connection that read the request knows it. */
  const char *client_ip;
  int client_port;
  const char *listener;    /* its name */
  const fy_proxy_info *pp; /* what a PROXY protocol header said, or NULL */
  struct fy_tls *tls;      /* the client's TLS session, or NULL */
  /* The upstream's response head (the response and log hooks see it). */
  fy_headers rheaders;
  int ustatus;
} fy_req;

/* The request half of an exchange: the head is being read, then the body, then it is done. */
enum fy_req_state { FY_RQ_HEAD, FY_RQ_BODY, FY_RQ_DONE };

typedef struct fy_req_reader fy_req_reader;
/* What a reader tells its owner; any may be NULL. */
typedef struct fy_req_reader_cb {
  void (*begin)(fy_req_reader *rd);                            /* the first byte of a request */
  void (*body)(fy_req_reader *rd, const char *at, size_t len); /* request body bytes */
  void (*end)(fy_req_reader *rd);                              /* the request's last byte */
} fy_req_reader_cb;

struct fy_req_reader {
  llhttp_t parser;
  fy_req *req;
  const fy_limits *limits;
  const fy_req_reader_cb *cb;
  void *data;
  enum fy_req_state rq;
  int error_status;            /* set by a check that refuses the request */
  fy_http_head_scan head_scan; /* the raw head (or trailer) bytes so far, for what llhttp lets through */
  bool in_trailers;            /* the last chunk is parsed: trailer lines follow */
};

void fy_req_reader_init(fy_req_reader *rd, fy_req *req, const fy_limits *limits, const fy_req_reader_cb *cb,
                        void *data);
/* Ready for the next request's head. */
void fy_req_reader_begin(fy_req_reader *rd);
/*
 * Parses what it can of data; *used is set to the bytes taken. Returns 0
 * (go on; rd->rq says where the request is), or the status a refused
 * request gets (rd->error_status is then set, and *why says why).
 */
int fy_req_reader_execute(fy_req_reader *rd, const char *data, size_t len, size_t *used, const char **why);
/* A whole head in data, read and checked as from a client: 0, or the refusal's status (and *why). */
int fy_req_reader_parse_head(fy_req_reader *rd, const char *data, size_t len, const char **why);

#endif
