/*
 * `tcp` listeners: byte pass-through chosen by the route_stream hook.
 *
 * A connection first has its PROXY protocol header read (when the listener
 * takes one) and its first bytes peeked for a TLS ClientHello, without
 * terminating TLS: the SNI and ALPN it names are shown to route_stream(conn),
 * which picks an upstream group (or nil: close). Then ferry connects to a
 * server of the group, sends the peeked bytes, and moves bytes both ways
 * with splice(2) through a pipe per direction, so payload never enters user
 * space (read/write through a buffer where a pipe cannot be had). A side
 * that reaches EOF is shut down for writing on the other side once its pipe
 * is empty (half-close); the stream ends when both directions have, on an
 * error, or after limits.stream_idle_timeout without a byte.
 *
 * The sockets are accepted and connected with uv_tcp_t, then moved with
 * uv_poll_t handles on their descriptors: libuv streams cannot splice.
 */
#define _GNU_SOURCE
#include "stream.h"

#include "conn.h"
#include "ffi.h"
#include "log.h"
#include "proxy_protocol.h"
#include "sni.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#define FY_SPLICE_CHUNK (256 * 1024)

enum fy_dir_state { FY_DIR_READ, FY_DIR_WRITE, FY_DIR_DONE, FY_DIR_ERROR };

typedef struct fy_dir {
  int from, to;
  int pipe[2]; /* -1: no pipe, copy through buf */
  size_t in_pipe;
  char *buf;
  size_t blen, boff;
  const char *prefix; /* bytes to send before any other (the peeked ClientHello) */
  size_t prefix_len, prefix_off;
  bool eof, shut;
  enum fy_dir_state state;
  uint64_t bytes;
} fy_dir;

typedef struct fy_stream {
  uv_tcp_t client, upstream;
  uv_connect_t connect;
  uv_timer_t timer;
  uv_poll_t cpoll, upoll;
  int cev, uev; /* events the polls watch now */
  fy_worker *w;
  fy_listener *listener;
  fy_gen *gen;
  fy_list link;
  char peek[FY_SNI_MAX_PEEK + FY_PP_MAX_HEADER];
  size_t peek_len, peek_off; /* peek_off: after the PROXY header */
  fy_proxy_info *pp;
  bool pp_pending;
  fy_sni_info sni;
  bool sni_done;
  char client_ip[INET6_ADDRSTRLEN];
  int client_port, local_port;
  uint64_t id;
  int group;
  fy_server *server;
  fy_dir c2u, u2c;
  bool polling, closing, connected;
  unsigned handles;
  uint64_t started_ms;
} fy_stream;

static void fy_stream_close(fy_stream *s, const char *why);

/* ---- moving bytes ---------------------------------------------------------- */

static void fy_dir_init(fy_dir *d, int from, int to) {
  d->from = from;
  d->to = to;
  if (pipe2(d->pipe, O_NONBLOCK | O_CLOEXEC) != 0)
    d->pipe[0] = d->pipe[1] = -1;
  else
    fcntl(d->pipe[1], F_SETPIPE_SZ, FY_SPLICE_CHUNK);
  d->state = FY_DIR_READ;
}

static void fy_dir_free(fy_dir *d) {
  if (d->pipe[0] >= 0) close(d->pipe[0]);
  if (d->pipe[1] >= 0) close(d->pipe[1]);
  d->pipe[0] = d->pipe[1] = -1;
  free(d->buf);
  d->buf = NULL;
}

/* Sends what is pending towards d->to; false when it would block or failed. */
static bool fy_dir_flush(fy_dir *d) {
  while (d->prefix_off < d->prefix_len) {
    ssize_t n = write(d->to, d->prefix + d->prefix_off, d->prefix_len - d->prefix_off);
    if (n < 0) return d->state = errno == EAGAIN ? FY_DIR_WRITE : FY_DIR_ERROR, false;
    d->prefix_off += (size_t)n;
    d->bytes += (size_t)n;
  }
  while (d->in_pipe > 0) {
    ssize_t n = splice(d->pipe[0], NULL, d->to, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n < 0) return d->state = errno == EAGAIN ? FY_DIR_WRITE : FY_DIR_ERROR, false;
    d->in_pipe -= (size_t)n;
    d->bytes += (size_t)n;
  }
  while (d->boff < d->blen) {
    ssize_t n = write(d->to, d->buf + d->boff, d->blen - d->boff);
    if (n < 0) return d->state = errno == EAGAIN ? FY_DIR_WRITE : FY_DIR_ERROR, false;
    d->boff += (size_t)n;
    d->bytes += (size_t)n;
  }
  return true;
}

/* Takes what is there from d->from; false when it would block, ended or failed. */
static bool fy_dir_fill(fy_dir *d) {
  ssize_t n;
  if (d->pipe[0] >= 0) {
    n = splice(d->from, NULL, d->pipe[1], NULL, FY_SPLICE_CHUNK, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) d->in_pipe = (size_t)n;
  } else {
    if (d->buf == NULL) d->buf = fy_malloc(FY_SPLICE_CHUNK);
    n = read(d->from, d->buf, FY_SPLICE_CHUNK);
    if (n > 0) d->blen = (size_t)n, d->boff = 0;
  }
  if (n > 0) return true;
  if (n == 0)
    d->eof = true;
  else
    d->state = errno == EAGAIN ? FY_DIR_READ : FY_DIR_ERROR;
  return false;
}

/* Moves as much as the sockets take now and says what the direction waits for. */
static void fy_dir_pump(fy_dir *d) {
  if (d->state == FY_DIR_DONE || d->state == FY_DIR_ERROR) return;
  for (;;) {
    if (!fy_dir_flush(d)) return;
    if (d->eof) {
      if (!d->shut) shutdown(d->to, SHUT_WR); /* pass the half-close on */
      d->shut = true;
      d->state = FY_DIR_DONE;
      return;
    }
    if (!fy_dir_fill(d) && !d->eof) return;
  }
}

static int fy_poll_events(const fy_dir *reads, const fy_dir *writes) {
  return (reads->state == FY_DIR_READ ? UV_READABLE : 0) | (writes->state == FY_DIR_WRITE ? UV_WRITABLE : 0);
}

static void fy_stream_poll_cb(uv_poll_t *h, int status, int events);

static void fy_stream_watch(uv_poll_t *p, int *current, int want) {
  if (want == *current) return;
  *current = want;
  if (want)
    uv_poll_start(p, want, fy_stream_poll_cb);
  else
    uv_poll_stop(p);
}

static void fy_stream_timeout(uv_timer_t *t) { fy_stream_close(t->data, "idle timeout"); }

static void fy_stream_pump(fy_stream *s) {
  fy_dir_pump(&s->c2u);
  fy_dir_pump(&s->u2c);
  if (s->c2u.state == FY_DIR_ERROR || s->u2c.state == FY_DIR_ERROR) {
    fy_stream_close(s, strerror(errno));
    return;
  }
  if (s->c2u.state == FY_DIR_DONE && s->u2c.state == FY_DIR_DONE) {
    fy_stream_close(s, NULL);
    return;
  }
  fy_stream_watch(&s->cpoll, &s->cev, fy_poll_events(&s->c2u, &s->u2c));
  fy_stream_watch(&s->upoll, &s->uev, fy_poll_events(&s->u2c, &s->c2u));
  uv_timer_start(&s->timer, fy_stream_timeout, s->gen->cfg->limits.stream_idle_timeout, 0);
}

static void fy_stream_poll_cb(uv_poll_t *h, int status, int events) {
  fy_stream *s = h->data;
  (void)events;
  if (status < 0) {
    fy_stream_close(s, uv_strerror(status));
    return;
  }
  if (s->c2u.state != FY_DIR_DONE) s->c2u.state = FY_DIR_READ;
  if (s->u2c.state != FY_DIR_DONE) s->u2c.state = FY_DIR_READ;
  fy_stream_pump(s);
}

/* The upstream answered the connect: start moving bytes, the peeked ones first. */
static void fy_stream_start_splice(fy_stream *s) {
  uv_os_fd_t cfd, ufd;
  uv_fileno((uv_handle_t *)&s->client, &cfd);
  uv_fileno((uv_handle_t *)&s->upstream, &ufd);
  fy_dir_init(&s->c2u, cfd, ufd);
  fy_dir_init(&s->u2c, ufd, cfd);
  s->c2u.prefix = s->peek + s->peek_off;
  s->c2u.prefix_len = s->peek_len - s->peek_off;
  uv_poll_init_socket(s->w->loop, &s->cpoll, cfd);
  uv_poll_init_socket(s->w->loop, &s->upoll, ufd);
  s->cpoll.data = s->upoll.data = s;
  s->polling = true;
  fy_stream_pump(s);
}

/* ---- connecting ------------------------------------------------------------- */

static void fy_stream_connected(uv_connect_t *req, int status) {
  fy_stream *s = req->data;
  if (s->closing) return;
  if (status < 0) {
    /* The client's bytes are not replayed elsewhere: the stream ends, and
     * passive health steers the next one away from this server. */
    fy_server_failed(s->server, uv_now(s->w->loop));
    fy_stream_close(s, uv_strerror(status));
    return;
  }
  s->connected = true;
  uv_tcp_nodelay(&s->upstream, 1);
  fy_stream_start_splice(s);
}

static void fy_stream_connect(fy_stream *s) {
  fy_group *g = &s->gen->groups[s->group];
  s->server = fy_group_pick(g, 0, false, NULL, 0, uv_now(s->w->loop));
  uv_tcp_init(s->w->loop, &s->upstream);
  s->upstream.data = s;
  s->connect.data = s;
  uv_timer_start(&s->timer, fy_stream_timeout, g->cfg->connect_timeout, 0);
  int rc =
      uv_tcp_connect(&s->connect, &s->upstream, (struct sockaddr *)&s->server->addr, fy_stream_connected);
  if (rc < 0) fy_stream_close(s, uv_strerror(rc));
}

/* ---- routing ---------------------------------------------------------------- */

static void fy_stream_route(fy_stream *s) {
  uv_read_stop((uv_stream_t *)&s->client);
  fy_buf err;
  fy_buf_init(&err);
  int group = -1;
  int policy = s->gen->cfg->listeners[s->listener->index].policy;
  fy_hook_call outer = fy_hook_current;
  fy_hook_current = (fy_hook_call){.stream = s};
  enum fy_hook_outcome out = fy_lua_route_stream(&s->gen->lua, policy, s->id, &group, &err);
  fy_hook_current = outer;
  if (out != FY_HOOK_OK) {
    fy_log_error("stream %llu: route_stream: %s: %.*s", (unsigned long long)s->id, fy_hook_outcome_name(out),
                 (int)err.len, err.data);
    fy_buf_free(&err);
    fy_stream_close(s, "policy error");
    return;
  }
  fy_buf_free(&err);
  if (group < 0) {
    fy_stream_close(s, "the policy refused it");
    return;
  }
  s->group = group;
  fy_stream_connect(s);
}

/* Reads the PROXY header, then enough of the first bytes to know the SNI. */
static void fy_stream_inspect(fy_stream *s) {
  if (s->pp_pending) {
    int n = fy_proxy_protocol_accept((const uint8_t *)s->peek, s->peek_len, s->pp, s->client_ip,
                                     sizeof s->client_ip, &s->client_port);
    if (n == 0) return;
    if (n < 0) {
      fy_stream_close(s, fy_proxy_protocol_strerror(n));
      return;
    }
    s->peek_off = (size_t)n;
    s->pp_pending = false;
  }
  if (s->peek_len == s->peek_off) return;
  int rc = fy_sni_peek((const uint8_t *)s->peek + s->peek_off, s->peek_len - s->peek_off, &s->sni);
  if (rc == 0 && s->peek_len < sizeof s->peek) return; /* more of the hello to come */
  if (rc <= 0) memset(&s->sni, 0, sizeof s->sni);      /* not TLS, or no usable name: route without */
  s->sni_done = true;
  fy_stream_route(s);
}

static void fy_stream_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  fy_stream *s = h->data;
  (void)suggested;
  *buf = uv_buf_init(s->peek + s->peek_len, (unsigned)(sizeof s->peek - s->peek_len));
}

static void fy_stream_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  fy_stream *s = h->data;
  (void)buf;
  if (n == 0) return;
  if (n < 0) {
    fy_stream_close(s, n == UV_EOF ? "client closed before routing" : uv_strerror((int)n));
    return;
  }
  s->peek_len += (size_t)n;
  fy_stream_inspect(s);
}

/* No first bytes in time (a server-speaks-first protocol): route without SNI. */
static void fy_stream_peek_timeout(uv_timer_t *t) {
  fy_stream *s = t->data;
  if (s->pp_pending) {
    fy_stream_close(s, "no PROXY header in time");
    return;
  }
  s->sni_done = true;
  fy_stream_route(s);
}

/* ---- lifecycle -------------------------------------------------------------- */

static void fy_stream_closed(uv_handle_t *h) {
  fy_stream *s = h->data;
  if (--s->handles > 0) return;
  fy_dir_free(&s->c2u);
  fy_dir_free(&s->u2c);
  fy_gen_unref(s->gen);
  free(s->pp);
  fy_worker *w = s->w;
  free(s);
  fy_worker_maybe_stopped(w);
}

static void fy_stream_close(fy_stream *s, const char *why) {
  if (s->closing) return;
  s->closing = true;
  fy_log_info("stream %llu %s:%d sni=%s -> %s: %s, %llu bytes up, %llu down, %llums",
              (unsigned long long)s->id, s->client_ip, s->client_port, s->sni.sni[0] ? s->sni.sni : "-",
              s->server ? s->server->addr_text : "-", why ? why : "done", (unsigned long long)s->c2u.bytes,
              (unsigned long long)s->u2c.bytes, (unsigned long long)(uv_now(s->w->loop) - s->started_ms));
  fy_list_remove(&s->link);
  s->handles = 2;
  if (s->polling) {
    s->handles += 2;
    uv_close((uv_handle_t *)&s->cpoll, fy_stream_closed);
    uv_close((uv_handle_t *)&s->upoll, fy_stream_closed);
  }
  if (s->server) {
    s->handles++;
    uv_close((uv_handle_t *)&s->upstream, fy_stream_closed);
  }
  uv_close((uv_handle_t *)&s->client, fy_stream_closed);
  uv_close((uv_handle_t *)&s->timer, fy_stream_closed);
}

void fy_stream_close_all(fy_worker *w) {
  while (!fy_list_empty(&w->streams))
    fy_stream_close(FY_CONTAINER_OF(w->streams.next, fy_stream, link), "ferry is stopping");
}

void fy_stream_accept(fy_listener *l, int fd, const struct sockaddr_storage *peer) {
  fy_worker *w = l->w;
  fy_stream *s = fy_calloc(1, sizeof *s);
  s->w = w;
  s->listener = l;
  s->gen = fy_gen_ref(w->gen);
  s->id = ++w->next_req_id;
  w->stats.streams++;
  s->started_ms = uv_now(w->loop);
  fy_list_init(&s->link);
  uv_tcp_init(w->loop, &s->client);
  uv_timer_init(w->loop, &s->timer);
  s->client.data = s->timer.data = s;
  fy_list_insert_head(&w->streams, &s->link);
  if (uv_tcp_open(&s->client, fd) < 0) {
    close(fd);
    fy_stream_close(s, "accept failed");
    return;
  }
  fy_addr_name(peer, s->client_ip, sizeof s->client_ip, &s->client_port);
  struct sockaddr_storage local;
  int len = sizeof local;
  if (uv_tcp_getsockname(&s->client, (struct sockaddr *)&local, &len) == 0)
    s->local_port = ntohs(((struct sockaddr_in *)&local)->sin_port);
  const fy_cfg_listener *cl = &s->gen->cfg->listeners[l->index];
  if (fy_cfg_listener_expect_proxy(cl, (const struct sockaddr *)peer, &s->pp) < 0) {
    fy_stream_close(s, "not in proxy_protocol.trusted");
    return;
  }
  s->pp_pending = s->pp != NULL;
  uv_tcp_nodelay(&s->client, 1);
  uv_timer_start(&s->timer, fy_stream_peek_timeout, s->gen->cfg->limits.header_timeout, 0);
  uv_read_start((uv_stream_t *)&s->client, fy_stream_alloc, fy_stream_read);
}

/* ---- what route_stream sees --------------------------------------------------- */

/* fy_ffi_stream and these functions are declared in ffi.h. */
int fy_ffi_stream_info(double id, fy_ffi_stream *out) {
  fy_stream *s = fy_hook_current.stream;
  if (s == NULL || (double)s->id != id) return FY_FFI_EGONE;
  out->sni = s->sni.sni;
  out->alpn = s->sni.alpn_count ? s->sni.alpn[0] : "";
  out->listener = s->listener->name;
  out->client_addr = s->client_ip;
  out->client_port = s->client_port;
  out->local_port = s->local_port;
  out->has_proxy = s->pp != NULL;
  return 0;
}

const char *fy_ffi_stream_vpce(double id) {
  fy_stream *s = fy_hook_current.stream;
  return s && (double)s->id == id && s->pp ? s->pp->vpce_id : "";
}
