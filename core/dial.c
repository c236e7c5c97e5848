/* Connect, PROXY header, TLS (dial.h). */
#include "dial.h"

static void fy_dial_tls_done(fy_tls *t, int status) {
  fy_dial *d = fy_tls_data(t);
  if (d->alive(d)) d->done(d, status);
}

/* After the TCP connect and the PROXY header: the TLS handshake, for a TLS group. */
static void fy_dial_secure(fy_dial *d) {
  if (d->tls_ctx == NULL) {
    d->done(d, 0);
    return;
  }
  d->stage = FY_DIAL_TLS;
  fy_tls_connect(d->sock, d->tls_ctx, d->tls_name, d->tls_session, fy_dial_tls_done, d);
}

static void fy_dial_preface_written(fy_write_req *wr, int status) {
  fy_dial *d = FY_CONTAINER_OF(wr, fy_dial, write);
  if (!d->alive(d)) return;
  fy_buf_free(d->preface);
  if (status < 0)
    d->done(d, status);
  else
    fy_dial_secure(d);
}

static void fy_dial_connected(uv_connect_t *req, int status) {
  fy_dial *d = req->data;
  if (!d->alive(d)) return; /* closed while connecting */
  if (status < 0) {
    d->done(d, status);
    return;
  }
  uv_tcp_nodelay(&d->sock->tcp, 1);
  if (d->preface == NULL || d->preface->len == 0) {
    fy_dial_secure(d);
    return;
  }
  d->stage = FY_DIAL_PREFACE;
  uv_buf_t b = uv_buf_init(d->preface->data, (unsigned)d->preface->len);
  int rc = fy_write(&d->write, (uv_stream_t *)&d->sock->tcp, &b, 1, fy_dial_preface_written);
  if (rc < 0) d->done(d, rc);
}

int fy_dial_start(fy_dial *d, const struct sockaddr *addr) {
  d->stage = FY_DIAL_CONNECT;
  d->connect.data = d;
  return uv_tcp_connect(&d->connect, &d->sock->tcp, addr, fy_dial_connected);
}

void fy_dial_forget(fy_dial *d) { fy_write_forget(&d->write); }
