/*
 * Dialing a server: the TCP connect, then the PROXY protocol header the
 * server expects (if any), then the TLS handshake (for a TLS group), each
 * step started when the one before it succeeded. Upstream connections
 * (upstream.c) and health probes (health.c) connect through it alike.
 *
 * An fy_dial lives in its owner's struct, next to the owner's fy_sock. The
 * owner's alive() is asked before each step and done() once at the end;
 * alive() returning false (the owner is closing, or has given up) stops
 * the dial silently. done() gets 0, or the failed step (d->stage) and its
 * error. The owner closes the socket as usual; fy_dial_forget before that
 * drops a preface write still in flight.
 */
#ifndef FERRY_DIAL_H
#define FERRY_DIAL_H

#include "buf.h"
#include "tls.h"
#include "write.h"

#include <uv.h>

enum fy_dial_stage { FY_DIAL_CONNECT, FY_DIAL_PREFACE, FY_DIAL_TLS };

typedef struct fy_dial {
  uv_connect_t connect;
  fy_write_req write; /* of the preface */
  fy_sock *sock;
  fy_buf *preface; /* sent first when not empty, then freed (may be filled until the connect completes) */
  fy_tls_client_ctx *tls_ctx;   /* NULL: no TLS */
  const char *tls_name;         /* SNI and certificate name */
  fy_tls_session **tls_session; /* offered for resumption, replaced on success (may be NULL) */
  enum fy_dial_stage stage;
  bool (*alive)(struct fy_dial *d);
  void (*done)(struct fy_dial *d, int status);
  void *data; /* the owner's */
} fy_dial;

/* Starts connecting d->sock (already uv_tcp_init'ed) to addr; a negative error if it could not start. */
int fy_dial_start(fy_dial *d, const struct sockaddr *addr);
void fy_dial_forget(fy_dial *d);

#endif
