/*
 * TLS with mbedTLS, and fy_sock: the stream every connection reads and
 * writes through, with or without TLS.
 *
 * A fy_sock is a uv_tcp_t plus an optional fy_tls session. Owners (client
 * connections, upstream connections, health probes) call fy_sock_read_start,
 * fy_sock_write, fy_sock_shutdown and fy_sock_close instead of the uv_*
 * functions, with the same callbacks and the same contract: the callbacks
 * see plaintext, and a write completes once its bytes (encrypted) are with
 * the kernel. The uv_tcp_t must be the first member so a callback's handle
 * is also the fy_sock.
 *
 * mbedTLS runs on memory BIOs: ciphertext read from the socket sits in a
 * pool block until mbedtls_ssl_read() or the handshake asks for it, and
 * ciphertext produced by mbedtls_ssl_write() collects in a buffer that one
 * fy_write() at a time sends. Nothing blocks.
 *
 * Contexts (fy_tls_server_ctx for an https listener, fy_tls_client_ctx for
 * an upstream group) hold the certificates and the mbedTLS configuration of
 * one generation. They are reference counted: every session holds its
 * context, so a reload that brings new certificates never pulls them from
 * under a connection that handshook with the old ones.
 */
#ifndef FERRY_TLS_H
#define FERRY_TLS_H

#include "buf.h"
#include "write.h"

#include <stdbool.h>
#include <uv.h>

typedef struct fy_tls fy_tls;
typedef struct fy_tls_server_ctx fy_tls_server_ctx;
typedef struct fy_tls_client_ctx fy_tls_client_ctx;

/* ---- configuration (filled by config.c) -------------------------------- */

typedef struct fy_cfg_tls_cert {
  char *cert, *key; /* paths */
  char **names;     /* configured names; none: the certificate's own DNS names */
  size_t nnames;
} fy_cfg_tls_cert;

typedef struct fy_cfg_tls_server {
  fy_cfg_tls_cert *certs; /* the first is the default */
  size_t ncerts;
  char *client_ca; /* NULL: no client certificates asked for */
  bool client_optional;
  bool session_tickets;
  char **ciphers; /* mbedTLS names; none: ferry's defaults */
  size_t nciphers;
} fy_cfg_tls_server;

typedef struct fy_cfg_tls_client {
  bool enabled;
  bool verify;
  char *ca;          /* CA bundle for verification */
  char *server_name; /* NULL: each server entry's host name */
  char *cert, *key;  /* client certificate, or NULL */
  char **ciphers;
  size_t nciphers;
} fy_cfg_tls_client;

/*
 * Build the contexts. On failure they return -1 and write into err a
 * message that starts with the key at fault relative to the tls table
 * ("certificates[2].key: ...", "client_ca: ...").
 */
int fy_tls_server_ctx_new(const fy_cfg_tls_server *cfg, fy_tls_server_ctx **out, char *err, size_t errlen);
int fy_tls_client_ctx_new(const fy_cfg_tls_client *cfg, fy_tls_client_ctx **out, char *err, size_t errlen);
void fy_tls_server_ctx_unref(fy_tls_server_ctx *ctx);
void fy_tls_client_ctx_unref(fy_tls_client_ctx *ctx);
/* Two client contexts that would present and verify the same identity. */
bool fy_tls_client_ctx_same(const fy_tls_client_ctx *a, const fy_tls_client_ctx *b);
/* The name a client context sends and checks for a server entry called host. */
const char *fy_tls_client_name(const fy_tls_client_ctx *ctx, const char *host);

/* ---- sessions ------------------------------------------------------------ */

/* A client session (for resumption) remembered per upstream server. */
typedef struct fy_tls_session fy_tls_session;
void fy_tls_session_free(fy_tls_session *s);

typedef void (*fy_tls_handshake_cb)(fy_tls *t, int status);

typedef struct fy_sock {
  uv_tcp_t tcp; /* first: a uv callback's handle is the fy_sock */
  fy_tls *tls;  /* NULL: plain TCP */
} fy_sock;

/*
 * Starts a server-side session on an accepted socket; reading starts with the
 * owner's fy_sock_read_start. seed: ciphertext the owner read already (the
 * bytes after a PROXY protocol header), or NULL.
 */
void fy_tls_accept(fy_sock *s, fy_tls_server_ctx *ctx, const char *seed, size_t len);
/*
 * Starts a client-side session on a connected socket: sends the ClientHello
 * with SNI name and checks the certificate against it. done runs once, with
 * 0 or a negative error, never before this returns. *session (may be NULL)
 * is offered for resumption and replaced by the new session on success.
 */
void fy_tls_connect(fy_sock *s, fy_tls_client_ctx *ctx, const char *name, fy_tls_session **session,
                    fy_tls_handshake_cb done, void *data);
void *fy_tls_data(fy_tls *t);
/* Whether the handshake is done (and has not failed). */
bool fy_tls_is_open(const fy_tls *t);
/* Why the last handshake or record failed, for logs ("" if none). */
const char *fy_tls_error(const fy_tls *t);

/* What the policy sees as req.tls. Strings are owned by the session. */
typedef struct fy_tls_info {
  const char *sni, *version, *cipher, *alpn, *client_subject;
  bool client_verified, resumed;
} fy_tls_info;
bool fy_tls_get_info(fy_tls *t, fy_tls_info *out);
/* The server name a client sent, as ferry keeps it: lower-cased into out (256 bytes); 0 (none) unless 1..255
 * bytes. */
size_t fy_tls_sni_name(const unsigned char *name, size_t len, char *out);

int fy_sock_read_start(fy_sock *s, uv_alloc_cb alloc, uv_read_cb read);
void fy_sock_read_stop(fy_sock *s);
int fy_sock_write(fy_sock *s, fy_write_req *req, uv_buf_t *bufs, unsigned n, fy_write_cb cb);
/* Sends close_notify (TLS) and then FIN, after everything written so far. */
int fy_sock_shutdown(fy_sock *s, uv_shutdown_t *req, uv_shutdown_cb cb);
/*
 * Closes the handle; the TLS session is freed by fy_sock_free in the close
 * callback. reset: with RST rather than FIN, so the peer can tell a cut
 * response from a complete one even where only the close ends the body.
 */
void fy_sock_close(fy_sock *s, uv_close_cb cb, bool reset);
void fy_sock_free(fy_sock *s);

/* Handshake outcomes, counted per worker for GET /metrics. */
enum fy_tls_outcome { FY_TLS_NEW, FY_TLS_RESUMED, FY_TLS_FAILED_HANDSHAKE };

/* "mbed TLS 2.28.3", for ferry version. */
const char *fy_tls_version(void);

#endif
