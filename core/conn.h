/*
 * A client connection: the transport, the request reader, the limits and
 * timers, the writes to the client, closing.
 *
 * One request is handled at a time: when a request's last byte has been
 * parsed the client parser pauses, so pipelined requests wait in the read
 * buffer (and then in the kernel) and are answered in order. The request
 * (req.h) is read by the connection's fy_req_reader; its exchange
 * (exchange.h) takes it upstream and brings the response back, reaching the
 * connection only through the fy_exchange_client functions of conn.c:
 *
 *   request half:  HEAD -> BODY -> DONE         (the reader, conn.c)
 *   response half: NONE -> WAIT -> BODY -> DONE (the exchange, proxy.c)
 *
 * The exchange ends when both halves are DONE and no write is in flight;
 * then the connection either starts over at HEAD or closes.
 *
 * Back-pressure: body bytes are written from the buffer they were read into,
 * and the side that produced them is not read again until the write ends. A
 * connection therefore holds at most one read buffer per side, whatever the
 * body size.
 */
#ifndef FERRY_CONN_H
#define FERRY_CONN_H

#include "deadline.h"
#include "exchange.h"
#include "http.h"
#include "req.h"
#include "pool.h"
#include "proxy_protocol.h"
#include "tls.h"
#include "worker.h"

#include <llhttp.h>
#include <netinet/in.h>

/* What a client connection is waiting for; each has its own timeout. */
enum fy_conn_wait {
  FY_WAIT_NONE,      /* nothing from the client (the upstream's timers run) */
  FY_WAIT_KEEPALIVE, /* the first byte of the next request */
  FY_WAIT_HEADER,    /* the rest of a request head */
  FY_WAIT_BODY,      /* more request body */
  FY_WAIT_SEND,      /* the client to take what ferry writes */
  FY_WAIT_LINGER,    /* the client's close after ferry's */
};

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
  char *rbuf;
  size_t rpos, rlen;
  fy_req req;
  fy_req_reader rd;        /* reads req from rbuf */
  fy_exchange ex;          /* takes req upstream */
  fy_buf cw_head, cw_copy; /* what the client write in flight is sending */
  enum fy_conn_wait wait;
  bool cw_pending;
  bool reading;
  bool close_after; /* close the client connection when the exchange ends */
  bool closing;
  bool lingering;
  bool client_eof;     /* the client half-closed after a complete request */
  bool accepted;       /* counted in the worker's open connections */
  bool trimmed;        /* idle long enough to have freed its head buffers */
  bool wrote;          /* a write to the client has been started */
  bool nodelay;        /* TCP_NODELAY is set on the client socket */
  bool pp_pending;     /* a PROXY protocol header is expected first */
  fy_proxy_info *pp;   /* what it said (listeners with proxy_protocol only) */
  bool reset_on_close; /* close with RST: the response was cut */
  unsigned nreq;
  unsigned handles_open;
  void *admin_wait; /* an admin answer that waits on other loops (admin.c) */
  char client_ip[INET6_ADDRSTRLEN];
  int client_port;
} fy_conn;

void fy_conn_accept(fy_listener *l, int fd, const struct sockaddr_storage *peer);
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
uint64_t fy_now_ms(fy_conn *c);

#endif
