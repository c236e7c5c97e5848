/*
 * The in-process world of fuzz_request and fuzz_response: one real ferry
 * worker (conn.c, proxy.c, upstream.c, the Lua policy host) on a uv loop in
 * this thread, serving an http listener on loopback whose upstream group
 * points at a small upstream server on the same loop, and a client socket on
 * the same loop that talks to the listener. Nothing is mocked: bytes cross
 * real loopback TCP sockets, so ferry sees reads split as the kernel splits
 * them.
 *
 * Splits. A byte 0xFE in a fuzz input is not sent: it ends one write, and the
 * next piece goes out on a later turn of the loop, after ferry has read the
 * first (loopback delivers a write at once). So "GET / HT\xfeTP/1.1..." is
 * read by ferry in two reads, and a mutation that inserts 0xFE explores
 * buffer boundaries in ferry's parsers.
 *
 * Every message on every socket is parsed here with llhttp in strict mode
 * (the build ferry uses), into fz_msg records that the targets check.
 *
 * This header holds static functions shared by the two targets; each target
 * defines FZ_NAME, the policy (fz_policy_lua), the group settings
 * (fz_group_lua) and fz_upstream_message(), which the upstream server calls
 * for every complete request it parses.
 */
#ifndef FERRY_FUZZ_PROXY_H
#define FERRY_FUZZ_PROXY_H

#define _GNU_SOURCE /* memmem */

#include "config.h"
#include "http.h"
#include "log.h"
#include "upstream.h"
#include "worker.h"

#include <arpa/inet.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* Each target uses only some of these helpers. */
#pragma GCC diagnostic ignored "-Wunused-function"

#define FZ_SPLIT 0xfe
#define FZ_WATCHDOG_MS 3000 /* ferry's own timeouts are 10 s: anything slower is a hang */

static void fz_dump(void);

#define REQUIRE(cond)                                                                                        \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                           \
      fz_dump();                                                                                             \
      abort();                                                                                               \
    }                                                                                                        \
  } while (0)

static bool fz_strict; /* FUZZ_STRICT=1: known ferry issues count as findings */

/*
 * LeakSanitizer does not scan the machine code LuaJIT's JIT writes into its
 * own mappings, so a Lua object that only a compiled trace refers to looks
 * leaked. Lua memory is the Lua GC's business: leaks are checked for ferry's
 * own allocations, not for blocks of a generation's Lua state.
 */
const char *__lsan_default_suppressions(void);
const char *__lsan_default_suppressions(void) { return "leak:fy_lua_alloc\n"; }

/* ---- messages ------------------------------------------------------------ */

typedef struct fz_msg {
  int method; /* requests: llhttp method, -1 until parsed */
  int status; /* responses */
  int major, minor;
  fy_buf url, body;
  fy_headers headers;
  bool headers_done, complete, chunked, has_cl, te, upgrade, skipped_body;
  bool empty_name; /* a header line with no name (": x"), which llhttp lets by and ferry refuses */
  bool at_eof;     /* completed by the end of the stream (a close-delimited body) */
  uint64_t content_length;
  size_t end; /* offset just past the message in its stream, once complete */
} fz_msg;

/* A stream of messages of one type parsed as bytes arrive. */
typedef struct fz_parse {
  llhttp_t p;
  llhttp_settings_t settings;
  fz_msg **msgs;
  size_t n, cap;
  size_t offset;          /* bytes fed so far */
  size_t last_end;        /* end of the last complete message */
  llhttp_errno_t err;     /* the first error; parsing stops there */
  const char *err_reason; /* llhttp's text for it */
  size_t err_offset;
  bool upgraded; /* stopped after an upgrade: the rest is not HTTP */
  bool finished; /* fz_parse_finish ran */
  bool eof_incomplete;
  fy_buf field, value;
  bool in_value;
  size_t finals; /* responses: final (>= 200) responses begun */
  /* responses: whether the final response number i (0-based) has no body (a HEAD answer) */
  bool (*bodiless)(struct fz_parse *ps, size_t final_index);
} fz_parse;

static fz_msg *fz_cur(fz_parse *ps) { return ps->n ? ps->msgs[ps->n - 1] : NULL; }
static size_t fz_count(const fz_msg *m, const char *name);

static void fz_flush_header(fz_parse *ps) {
  fz_msg *m = fz_cur(ps);
  if (m && !m->headers_done && (ps->field.len || ps->in_value)) { /* trailers are not kept */
    if (ps->field.len == 0) m->empty_name = true;
    fy_headers_add(&m->headers, ps->field.data ? ps->field.data : "", ps->field.len,
                   ps->value.data ? ps->value.data : "", ps->value.len);
  }
  fy_buf_reset(&ps->field);
  fy_buf_reset(&ps->value);
  ps->in_value = false;
}

static int fz_on_begin(llhttp_t *p) {
  fz_parse *ps = p->data;
  if (ps->n == ps->cap) {
    ps->cap = ps->cap ? ps->cap * 2 : 8;
    ps->msgs = fy_realloc(ps->msgs, ps->cap * sizeof *ps->msgs);
  }
  fz_msg *m = fy_calloc(1, sizeof *m);
  m->method = -1;
  fy_headers_init(&m->headers);
  ps->msgs[ps->n++] = m;
  fy_buf_reset(&ps->field);
  fy_buf_reset(&ps->value);
  ps->in_value = false;
  return 0;
}

static int fz_on_method_complete(llhttp_t *p) {
  fz_cur(p->data)->method = p->method;
  return 0;
}

static int fz_on_url(llhttp_t *p, const char *at, size_t len) {
  fy_buf_append(&fz_cur(p->data)->url, at, len);
  return 0;
}

static int fz_on_field(llhttp_t *p, const char *at, size_t len) {
  fz_parse *ps = p->data;
  if (ps->in_value) fz_flush_header(ps);
  fy_buf_append(&ps->field, at, len);
  return 0;
}

static int fz_on_value(llhttp_t *p, const char *at, size_t len) {
  fz_parse *ps = p->data;
  ps->in_value = true;
  fy_buf_append(&ps->value, at, len);
  return 0;
}

static int fz_on_value_complete(llhttp_t *p) {
  fz_parse *ps = p->data;
  ps->in_value = true; /* an empty value has no on_header_value */
  fz_flush_header(ps);
  return 0;
}

static int fz_on_headers_complete(llhttp_t *p) {
  fz_parse *ps = p->data;
  fz_msg *m = fz_cur(ps);
  fz_flush_header(ps);
  m->headers_done = true;
  m->major = p->http_major;
  m->minor = p->http_minor;
  m->status = p->status_code;
  if (p->type == HTTP_REQUEST) m->method = p->method;
  m->chunked = (p->flags & F_CHUNKED) != 0;
  m->has_cl = (p->flags & F_CONTENT_LENGTH) != 0;
  m->content_length = m->has_cl ? p->content_length : 0;
  m->upgrade = llhttp_get_upgrade(p) != 0;
  m->te = fz_count(m, "transfer-encoding") > 0;
  if (p->type != HTTP_RESPONSE) return 0;
  /* RFC 9112 6.3: 1xx, 204 and 304 responses end with their head, whatever
   * their Content-Length or Transfer-Encoding says (llhttp 8 reads a body
   * for them when one of those is present); so does the answer to a HEAD. */
  bool bodiless =
      (m->status >= 100 && m->status < 200 && m->status != 101) || m->status == 204 || m->status == 304;
  if (m->status >= 200) {
    size_t index = ps->finals++;
    if (ps->bodiless && ps->bodiless(ps, index)) bodiless = true;
  }
  m->skipped_body = bodiless;
  return bodiless ? 1 : 0;
}

static int fz_on_body(llhttp_t *p, const char *at, size_t len) {
  fy_buf_append(&fz_cur(p->data)->body, at, len);
  return 0;
}

static int fz_on_complete(llhttp_t *p) {
  fz_cur(p->data)->complete = true;
  return HPE_PAUSED; /* so that fz_parse_feed learns where the message ended */
}

static void fz_parse_init(fz_parse *ps, llhttp_type_t type) {
  memset(ps, 0, sizeof *ps);
  llhttp_settings_init(&ps->settings);
  ps->settings.on_message_begin = fz_on_begin;
  ps->settings.on_method_complete = fz_on_method_complete;
  ps->settings.on_url = fz_on_url;
  ps->settings.on_header_field = fz_on_field;
  ps->settings.on_header_value = fz_on_value;
  ps->settings.on_header_value_complete = fz_on_value_complete;
  ps->settings.on_headers_complete = fz_on_headers_complete;
  ps->settings.on_body = fz_on_body;
  ps->settings.on_message_complete = fz_on_complete;
  llhttp_init(&ps->p, type, &ps->settings);
  ps->p.data = ps;
}

static void fz_parse_free(fz_parse *ps) {
  for (size_t i = 0; i < ps->n; i++) {
    fy_buf_free(&ps->msgs[i]->url);
    fy_buf_free(&ps->msgs[i]->body);
    fy_headers_free(&ps->msgs[i]->headers);
    free(ps->msgs[i]);
  }
  free(ps->msgs);
  fy_buf_free(&ps->field);
  fy_buf_free(&ps->value);
  memset(ps, 0, sizeof *ps);
}

static bool fz_parse_stopped(const fz_parse *ps) { return ps->err != HPE_OK || ps->upgraded; }

static void fz_parse_feed(fz_parse *ps, const char *data, size_t len) {
  while (len > 0 && !fz_parse_stopped(ps)) {
    llhttp_errno_t err = llhttp_execute(&ps->p, data, len);
    size_t used = err == HPE_OK ? len : (size_t)(llhttp_get_error_pos(&ps->p) - data);
    ps->offset += used;
    data += used;
    len -= used;
    if (err == HPE_PAUSED) {
      fz_cur(ps)->end = ps->last_end = ps->offset;
      llhttp_resume(&ps->p);
    } else if (err == HPE_PAUSED_UPGRADE) {
      fz_cur(ps)->end = ps->last_end = ps->offset;
      ps->upgraded = true;
    } else if (err != HPE_OK) {
      ps->err = err;
      ps->err_reason = llhttp_get_error_reason(&ps->p);
      ps->err_offset = ps->offset;
    }
  }
  ps->offset += len; /* bytes after a stop are still counted */
}

/* The stream ended. Returns true when it ended between messages (or after an
 * error/upgrade); a close-delimited response body completes here. */
static bool fz_parse_finish(fz_parse *ps) {
  ps->finished = true;
  if (fz_parse_stopped(ps)) return true;
  /* Paused at the end of the last message, llhttp has not yet marked it safe to end. */
  if (ps->n && ps->offset == ps->last_end) return true;
  llhttp_errno_t err = llhttp_finish(&ps->p);
  if (err == HPE_PAUSED) { /* on_message_complete of a body that ends at EOF */
    fz_cur(ps)->at_eof = true;
    fz_cur(ps)->end = ps->last_end = ps->offset;
    llhttp_resume(&ps->p);
    return true;
  }
  if (err == HPE_OK) return true;
  ps->eof_incomplete = true;
  return false;
}

/* Headers of a message called name (case-insensitive): how many. */
static size_t fz_count(const fz_msg *m, const char *name) {
  size_t n = 0;
  for (ssize_t i = fy_headers_find(&m->headers, name, strlen(name), 0); i >= 0;
       i = fy_headers_find(&m->headers, name, strlen(name), (size_t)i + 1))
    n++;
  return n;
}

/* The first value of header name, NUL-terminated into out, or NULL. */
static const char *fz_get(const fz_msg *m, const char *name, char *out, size_t cap) {
  ssize_t i = fy_headers_find(&m->headers, name, strlen(name), 0);
  if (i < 0) return NULL;
  const fy_hdr *e = &m->headers.v[i];
  size_t n = FY_MIN(e->val_len, cap - 1);
  memcpy(out, fy_hdr_val(&m->headers, e), n);
  out[n] = '\0';
  return out;
}

static bool fz_buf_eq(const fy_buf *b, const char *s, size_t len) {
  return b->len == len && (len == 0 || memcmp(b->data, s, len) == 0);
}

static void fz_print_bytes(const char *what, const char *data, size_t len) {
  fprintf(stderr, "---- %s (%zu bytes) ----\n", what, len);
  for (size_t i = 0; i < len && i < 8192; i++) {
    unsigned char c = (unsigned char)data[i];
    if (c == '\n')
      fputs("\\n\n", stderr);
    else if (c == '\r')
      fputs("\\r", stderr);
    else if (c >= 0x20 && c < 0x7f && c != '\\')
      fputc(c, stderr);
    else
      fprintf(stderr, "\\x%02x", c);
  }
  fputs("\n", stderr);
}

static void fz_print_parse(const char *what, const fz_parse *ps) {
  fprintf(stderr, "---- %s: %zu messages, %zu bytes, last complete ends at %zu, err %s%s%s at %zu%s%s\n",
          what, ps->n, ps->offset, ps->last_end, llhttp_errno_name(ps->err), ps->err_reason ? ": " : "",
          ps->err_reason ? ps->err_reason : "", ps->err_offset, ps->upgraded ? ", upgraded" : "",
          ps->eof_incomplete ? ", EOF mid-message" : "");
  for (size_t i = 0; i < ps->n; i++) {
    const fz_msg *m = ps->msgs[i];
    fprintf(stderr, "  [%zu] %s %.*s status %d HTTP/%d.%d%s%s%s body %zu%s%s\n", i,
            m->method >= 0 ? llhttp_method_name((llhttp_method_t)m->method) : "-",
            (int)FY_MIN(m->url.len, 200), m->url.data ? m->url.data : "", m->status, m->major, m->minor,
            m->headers_done ? "" : " (head cut)", m->chunked ? " chunked" : "",
            m->has_cl ? " content-length" : "", m->body.len, m->complete ? " complete" : " INCOMPLETE",
            m->skipped_body ? " (bodiless)" : "");
    for (size_t j = 0; j < m->headers.n; j++) {
      const fy_hdr *e = &m->headers.v[j];
      fprintf(stderr, "      %.*s: %.*s\n", (int)e->name_len, fy_hdr_name(&m->headers, e),
              (int)FY_MIN(e->val_len, 200), fy_hdr_val(&m->headers, e));
    }
  }
}

/* ---- writing with splits -------------------------------------------------- */

typedef struct fz_writer {
  uv_stream_t *stream;
  uv_timer_t timer;
  uv_write_t req;
  const uint8_t *data;
  size_t len, pos;
  fy_buf piece;
  bool writing, done, failed;
  void (*on_done)(struct fz_writer *w);
} fz_writer;

static void fz_writer_next(fz_writer *w);

static void fz_writer_timer_cb(uv_timer_t *t) { fz_writer_next(t->data); }

static void fz_writer_write_cb(uv_write_t *req, int status) {
  fz_writer *w = req->data;
  w->writing = false;
  if (w->done) return;
  if (status < 0) {
    w->failed = w->done = true; /* the peer is gone; it may still have answered */
    return;
  }
  uv_timer_start(&w->timer, fz_writer_timer_cb, 0, 0);
}

static void fz_writer_next(fz_writer *w) {
  if (w->done) return;
  if (w->pos >= w->len) {
    w->done = true;
    if (w->on_done) w->on_done(w);
    return;
  }
  const uint8_t *start = w->data + w->pos, *mark = memchr(start, FZ_SPLIT, w->len - w->pos);
  size_t n = mark ? (size_t)(mark - start) : w->len - w->pos;
  w->pos += n + (mark ? 1 : 0);
  if (n == 0) {
    uv_timer_start(&w->timer, fz_writer_timer_cb, 0, 0);
    return;
  }
  fy_buf_reset(&w->piece);
  fy_buf_append(&w->piece, start, n);
  uv_buf_t b = uv_buf_init(w->piece.data, (unsigned)n);
  w->req.data = w;
  if (uv_write(&w->req, w->stream, &b, 1, fz_writer_write_cb) < 0) {
    w->failed = w->done = true;
    return;
  }
  w->writing = true;
}

static void fz_writer_start(fz_writer *w, uv_stream_t *s, const uint8_t *data, size_t len,
                            void (*on_done)(fz_writer *w)) {
  w->stream = s;
  w->data = data;
  w->len = len;
  w->pos = 0;
  w->writing = w->done = w->failed = false;
  w->on_done = on_done;
  fz_writer_next(w);
}

/* Bytes without the split markers. */
static void fz_unsplit(fy_buf *out, const uint8_t *data, size_t len) {
  fy_buf_reset(out);
  for (size_t i = 0; i < len; i++)
    if (data[i] != FZ_SPLIT) fy_buf_append(out, &data[i], 1);
}

/* ---- the world ------------------------------------------------------------ */

static uv_loop_t fz_loop;
static fy_worker fz_worker;
static fy_gen *fz_gen;
static int fz_edge_port, fz_up_port;
static uv_timer_t fz_watchdog;
static bool fz_watchdog_fired;
static unsigned fz_handles; /* harness handles (not ferry's) open */

/* The policy and the upstream group's settings, from the target. */
static const char *fz_policy_lua;
static const char *fz_group_lua;

/* ---- the upstream server -------------------------------------------------- */

typedef struct fz_upconn {
  uv_tcp_t tcp;
  fz_parse ps;
  fy_buf rx;
  fz_writer w;     /* fuzz_response: the answer */
  fy_buf out;      /* fuzz_request: fixed answers queued */
  uv_write_t wreq; /* fuzz_request */
  unsigned id;
  unsigned handles;  /* tcp + writer timer */
  bool eof, closing; /* ferry closed its side; we are closing */
  bool shut;         /* we sent FIN */
  uv_shutdown_t sreq;
  struct fz_upconn *next;
} fz_upconn;

static uv_tcp_t fz_up_listener;
static fz_upconn *fz_upconns; /* this input's connections, newest first */
static unsigned fz_upconn_count;

static void fz_upstream_message(fz_upconn *uc, fz_msg *m); /* from the target */

static void fz_upconn_closed(fz_upconn *uc) {
  fz_handles--;
  uc->handles--; /* freed at the end of the input */
}
static void fz_upconn_tcp_close_cb(uv_handle_t *h) { fz_upconn_closed(h->data); }
static void fz_upconn_timer_close_cb(uv_handle_t *h) {
  fz_upconn_closed(FY_CONTAINER_OF(h, fz_upconn, w.timer));
}

static void fz_upconn_close(fz_upconn *uc) {
  if (uc->closing || uc->handles == 0) return;
  uc->closing = true;
  uc->w.done = true;
  uv_close((uv_handle_t *)&uc->tcp, fz_upconn_tcp_close_cb);
  uv_close((uv_handle_t *)&uc->w.timer, fz_upconn_timer_close_cb);
}

static void fz_upconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  static char block[64 * 1024];
  (void)h;
  (void)suggested;
  *buf = uv_buf_init(block, sizeof block);
}

static void fz_upconn_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  fz_upconn *uc = s->data;
  if (n == 0 || uc->closing) return;
  if (n < 0) {
    uc->eof = true;
    fz_parse_finish(&uc->ps);
    fz_upconn_close(uc);
    return;
  }
  fy_buf_append(&uc->rx, buf->base, (size_t)n);
  size_t before = uc->ps.n;
  bool was_complete = before && uc->ps.msgs[before - 1]->complete;
  fz_parse_feed(&uc->ps, buf->base, (size_t)n);
  if (uc->ps.err != HPE_OK) {
    fprintf(stderr, "upstream connection %u: ferry sent a request llhttp (strict) refuses: %s: %s\n", uc->id,
            llhttp_errno_name(uc->ps.err), uc->ps.err_reason);
    fz_print_bytes("what the upstream received", uc->rx.data, uc->rx.len);
    REQUIRE(!"ferry sends well-formed requests upstream");
  }
  /* Messages that completed in this read, in order. */
  for (size_t i = before ? before - 1 : 0; i < uc->ps.n; i++) {
    fz_msg *m = uc->ps.msgs[i];
    if (!m->complete || (i == before - 1 && was_complete)) continue;
    fz_upstream_message(uc, m);
  }
}

static void fz_upconn_shutdown_cb(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status;
}

static void fz_on_upstream_connection(uv_stream_t *server, int status) {
  REQUIRE(status == 0);
  fz_upconn *uc = fy_calloc(1, sizeof *uc);
  uv_tcp_init(&fz_loop, &uc->tcp);
  uv_timer_init(&fz_loop, &uc->w.timer);
  uc->tcp.data = uc;
  uc->w.timer.data = &uc->w;
  uc->handles = 2;
  fz_handles += 2;
  uc->id = ++fz_upconn_count;
  fz_parse_init(&uc->ps, HTTP_REQUEST);
  uc->next = fz_upconns;
  fz_upconns = uc;
  REQUIRE(uv_accept(server, (uv_stream_t *)&uc->tcp) == 0);
  uv_read_start((uv_stream_t *)&uc->tcp, fz_upconn_alloc, fz_upconn_read);
}

static void fz_upconns_free(void) {
  while (fz_upconns) {
    fz_upconn *uc = fz_upconns;
    fz_upconns = uc->next;
    fz_parse_free(&uc->ps);
    fy_buf_free(&uc->rx);
    fy_buf_free(&uc->out);
    fy_buf_free(&uc->w.piece);
    free(uc);
  }
  fz_upconn_count = 0;
}

/* ---- the client ------------------------------------------------------------ */

static struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_shutdown_t sreq;
  fz_writer w;
  fy_buf rx;
  unsigned handles;
  bool connected, eof, reset, closed, fin;
  fy_buf unsplit; /* the bytes the writer sends, without markers */
} fz_client;

static void fz_client_close_cb(uv_handle_t *h) {
  (void)h;
  fz_handles--;
  if (--fz_client.handles == 0) fz_client.closed = true;
}

static void fz_client_close(void) {
  if (fz_client.handles == 0 || fz_client.closed || uv_is_closing((uv_handle_t *)&fz_client.tcp)) return;
  fz_client.w.done = true;
  uv_close((uv_handle_t *)&fz_client.tcp, fz_client_close_cb);
  uv_close((uv_handle_t *)&fz_client.w.timer, fz_client_close_cb);
}

static void fz_client_shutdown_cb(uv_shutdown_t *req, int status) {
  (void)req;
  (void)status;
}

/* Sends FIN once: the client has nothing more to say. */
static void fz_client_fin(void) {
  if (fz_client.fin || !fz_client.connected || uv_is_closing((uv_handle_t *)&fz_client.tcp)) return;
  fz_client.fin = true;
  if (uv_shutdown(&fz_client.sreq, (uv_stream_t *)&fz_client.tcp, fz_client_shutdown_cb) < 0)
    fz_client_close();
}

static void fz_client_received(void); /* from the target: bytes were appended to fz_client.rx */

static void fz_client_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  (void)s;
  if (n == 0) return;
  if (n < 0) {
    fz_client.eof = true;
    fz_client.reset = n != UV_EOF;
    fz_client_received();
    fz_client_close();
    return;
  }
  fy_buf_append(&fz_client.rx, buf->base, (size_t)n);
  fz_client_received();
}

static void fz_client_connected(void); /* from the target */

static void fz_client_connect_cb(uv_connect_t *req, int status) {
  (void)req;
  REQUIRE(status == 0);
  fz_client.connected = true;
  uv_read_start((uv_stream_t *)&fz_client.tcp, fz_upconn_alloc, fz_client_read);
  fz_client_connected();
}

static void fz_client_start(void) {
  fy_buf_reset(&fz_client.rx);
  fz_client.connected = fz_client.eof = fz_client.reset = fz_client.closed = fz_client.fin = false;
  uv_tcp_init(&fz_loop, &fz_client.tcp);
  uv_timer_init(&fz_loop, &fz_client.w.timer);
  fz_client.w.timer.data = &fz_client.w;
  fz_client.handles = 2;
  fz_handles += 2;
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", fz_edge_port, &a);
  REQUIRE(uv_tcp_connect(&fz_client.creq, &fz_client.tcp, (struct sockaddr *)&a, fz_client_connect_cb) == 0);
}

/* ---- running one input ------------------------------------------------------ */

static fy_server *fz_server(void) {
  fy_gen *g = fz_worker.gen;
  if (g == NULL || g->cfg->ngroups == 0 || g->groups[0].nservers == 0) return NULL;
  return g->groups[0].servers[0];
}

/* Nothing is left of the input: client gone, ferry idle, upstream connections closed. */
static bool fz_quiet(void) {
  fy_server *s = fz_server();
  if (!fz_client.closed || !fy_list_empty(&fz_worker.conns)) return false;
  for (fz_upconn *uc = fz_upconns; uc; uc = uc->next)
    if (uc->handles) {
      /* The exchanges are over: what ferry still holds is idle in its pool. */
      fz_upconn_close(uc);
      return false;
    }
  return s == NULL || (s->nidle == 0 && s->active == 0);
}

static void fz_watchdog_cb(uv_timer_t *t) {
  (void)t;
  fz_watchdog_fired = true;
}

static void fz_run(void) {
  fz_watchdog_fired = false;
  uv_timer_start(&fz_watchdog, fz_watchdog_cb, FZ_WATCHDOG_MS, 0);
  fz_client_start();
  while (!fz_quiet()) {
    if (fz_watchdog_fired) {
      fprintf(stderr, "%s: the exchange did not end within %d ms: ferry hangs\n", FZ_NAME, FZ_WATCHDOG_MS);
      REQUIRE(!"every exchange ends");
    }
    uv_run(&fz_loop, UV_RUN_ONCE);
  }
  uv_timer_stop(&fz_watchdog);
  uv_run(&fz_loop, UV_RUN_NOWAIT);
  REQUIRE(fz_handles == 0);
}

/* ---- setup ----------------------------------------------------------------- */

static int fz_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  REQUIRE(bind(fd, (struct sockaddr *)&a, sizeof a) == 0);
  REQUIRE(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
  close(fd);
  return ntohs(a.sin_port);
}

static void fz_write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  REQUIRE(f != NULL);
  fputs(text, f);
  REQUIRE(fclose(f) == 0);
}

static char fz_dir[64], fz_conf[128], fz_policy[128];

/* The worker read both files at setup; nothing needs them afterwards. */
static void fz_cleanup(void) {
  unlink(fz_conf);
  unlink(fz_policy);
  rmdir(fz_dir);
}

static void fz_setup(void) {
  const char *s = getenv("FUZZ_STRICT");
  fz_strict = !(s && strcmp(s, "0") == 0); /* the known issues are fixed: strict unless FUZZ_STRICT=0 */
  uv_loop_init(&fz_loop);
  uv_timer_init(&fz_loop, &fz_watchdog);
  uv_unref((uv_handle_t *)&fz_watchdog);

  /* The upstream server first: its port goes into the config. */
  struct sockaddr_in a;
  uv_ip4_addr("127.0.0.1", 0, &a);
  uv_tcp_init(&fz_loop, &fz_up_listener);
  REQUIRE(uv_tcp_bind(&fz_up_listener, (struct sockaddr *)&a, 0) == 0);
  REQUIRE(uv_listen((uv_stream_t *)&fz_up_listener, 128, fz_on_upstream_connection) == 0);
  int alen = sizeof a;
  uv_tcp_getsockname(&fz_up_listener, (struct sockaddr *)&a, &alen);
  fz_up_port = ntohs(a.sin_port);
  fz_edge_port = fz_free_port();

  char text[2048];
  snprintf(fz_dir, sizeof fz_dir, "/tmp/%s.XXXXXX", FZ_NAME);
  REQUIRE(mkdtemp(fz_dir) != NULL);
  snprintf(fz_conf, sizeof fz_conf, "%s/ferry.lua", fz_dir);
  snprintf(fz_policy, sizeof fz_policy, "%s/policy.lua", fz_dir);
  atexit(fz_cleanup);
  fz_write_file(fz_policy, fz_policy_lua);
  /* Ferry's timeouts are far above the watchdog's: an exchange that waits on one is a hang. */
  snprintf(text, sizeof text,
           "return {\n"
           "  listeners = { { name = 'edge', address = '127.0.0.1:%d' } },\n"
           "  upstreams = { up = { servers = { '127.0.0.1:%d' }, %s,\n"
           "    timeouts = { connect = 10, read = 10, write = 10 } } },\n"
           "  limits = { header_timeout = 10, body_timeout = 10, send_timeout = 10, keepalive_timeout = 10,\n"
           "             max_request_line = 1024, max_header_bytes = 2048, max_headers = 32 },\n"
           "  policy = 'policy.lua', log = { level = 'error', access = false },\n"
           "}\n",
           fz_edge_port, fz_up_port, fz_group_lua);
  fz_write_file(fz_conf, text);

  fy_buf errors;
  fy_buf_init(&errors);
  fy_config *cfg = NULL;
  fy_worker_init(&fz_worker, &fz_loop, NULL);
  int rc = fy_config_load(fz_conf, &cfg, &errors);
  if (rc == 0) rc = fy_gen_new(&fz_worker, cfg, &fz_gen, &errors);
  if (rc != 0) fprintf(stderr, "%s: setup: %.*s", FZ_NAME, (int)errors.len, errors.data);
  REQUIRE(rc == 0);
  fz_worker.gen = fz_gen;
  fy_log_level_current = FY_LOG_ERROR;
  REQUIRE(fy_worker_listen(&fz_worker, &errors) == 0);
  fy_buf_free(&errors);
}

#endif
