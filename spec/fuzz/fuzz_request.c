/*
 * libFuzzer target for the request path: the fuzz input is what a client
 * sends to ferry's http listener (0xFE bytes mark where one write ends, see
 * fuzz_proxy.h). A real worker serves it; its policy answers OPTIONS itself
 * (req:respond) and routes every other request to a group whose one server
 * is an upstream on the same loop. The upstream parses what it receives with
 * llhttp in strict mode and answers every complete request with
 * "200, X-Up: <n>, body ok". The group has no retries and pools up to 4
 * connections, so requests of one client connection may share an upstream
 * connection.
 *
 * The client's bytes are also parsed here (llhttp, strict) into the requests
 * the client sent: C of them complete, possibly followed by one that is cut
 * or malformed. Invariants, besides no crash, leak or sanitizer report:
 *
 * Upstream side
 *   - every upstream connection carries well-formed HTTP/1.1 requests
 *     (strict llhttp accepts all of it), each with one Host, no hop-by-hop
 *     header or header named by the client's Connection, at most one
 *     Content-Length, never both Content-Length and Transfer-Encoding;
 *   - the n-th request the upstream completes is the client's n-th request
 *     that ferry forwards (all but OPTIONS): same method, same target (path
 *     and query of an absolute-form target), byte-for-byte the same body,
 *     the same framing kind (chunked stays chunked, a Content-Length stays
 *     the same), and the client had sent that request completely;
 *   - a connection may end mid-request only when ferry dropped the request
 *     because the client's own request was cut or malformed, and then what
 *     the upstream got of the body is a prefix of the client's.
 * Client side
 *   - the bytes the client receives are well-formed responses (strict llhttp,
 *     a response to HEAD has no body), nothing after the last one;
 *   - at most one final response per request and at most C + 1 of them (the
 *     one more: a 400 for the cut or malformed request after the C, or for
 *     a bare LF where llhttp skips empty lines before a request line);
 *   - a response with Connection: close is the last; fewer than C responses
 *     only when the last one closed the connection (ferry refused a request);
 *   - the responses carrying X-Up are the upstream's answers, numbered
 *     1, 2, ... in order, exactly as many as requests the upstream completed;
 *     each answers a forwarded request, OPTIONS gets "local".
 *
 * Pacing. The client sends its FIN only once it has a response to each of
 * its C complete requests (or a Connection: close, or garbage), so that a
 * cut request at the end still ends the exchange.
 *
 * Ferry bugs this target found, all fixed (README.md "Findings"); tolerated
 * again with FUZZ_STRICT=0:
 *   - a complete request with a body followed at once by the client's FIN is
 *     dropped without an answer when the upstream connection is new; strict
 *     mode sends the FIN right after the last byte, which shows it;
 *   - a HEAD request refused before its head was parsed gets a 400 with a
 *     body;
 *   - a Connection token longer than 128 bytes does not remove the header it
 *     names.
 */
#define FZ_NAME "fuzz_request"
#include "fuzz_proxy.h"

static const char policy_lua[] = "return { route = function(req)\n"
                                 "  if req.method == 'OPTIONS' then return req:respond(200, 'local') end\n"
                                 "  return 'up'\n"
                                 "end }\n";
static const char group_lua[] =
    "retry = { tries = 1 }, keepalive = { max_idle = 4 }, health = { max_fails = 0 }";

static fz_parse ref;          /* what the client sent */
static fz_parse resp;         /* what the client received */
static fz_msg **up_msgs;      /* complete requests the upstream received, in order */
static unsigned *up_msg_conn; /* and the upstream connection of each */
static size_t up_n, up_cap;
static size_t ref_complete; /* C */
static const uint8_t *input;
static size_t input_len;

/* ---- the upstream's answers ------------------------------------------------ */

static void answer_written(uv_write_t *req, int status) {
  (void)status;
  free(req);
}

static void fz_upstream_message(fz_upconn *uc, fz_msg *m) {
  if (up_n == up_cap) {
    up_cap = up_cap ? up_cap * 2 : 8;
    up_msgs = fy_realloc(up_msgs, up_cap * sizeof *up_msgs);
    up_msg_conn = fy_realloc(up_msg_conn, up_cap * sizeof *up_msg_conn);
  }
  up_msgs[up_n] = m;
  up_msg_conn[up_n] = uc->id;
  up_n++;
  /* One allocation: the write request, then the bytes. */
  char head[128];
  int n = snprintf(head, sizeof head, "HTTP/1.1 200 OK\r\nX-Up: %zu\r\nContent-Length: 2\r\n\r\n%s", up_n,
                   m->method == HTTP_HEAD ? "" : "ok");
  uv_write_t *req = fy_malloc(sizeof *req + (size_t)n);
  char *bytes = (char *)(req + 1);
  memcpy(bytes, head, (size_t)n);
  uv_buf_t b = uv_buf_init(bytes, (unsigned)n);
  if (uv_write(req, (uv_stream_t *)&uc->tcp, &b, 1, answer_written) < 0) free(req);
}

/* ---- the client ------------------------------------------------------------ */

/*
 * Final response i answers request i; the answer to a HEAD has no body. But
 * ferry refuses some HEAD requests before it knows they are HEAD requests
 * (a malformed or folded header: llhttp has read the method, ferry has not
 * looked at it yet), and its 400 then carries a body (see README.md). So when
 * a reading fails, the last HEAD answer before the failure is read the other
 * way, and it must then be one of ferry's refusals.
 */
static int flip_index = -1; /* the final response read the other way */
static int last_head = -1;  /* the last final response to a HEAD request read so far */

static bool response_bodiless(fz_parse *ps, size_t i) {
  (void)ps;
  if (i >= ref.n || ref.msgs[i]->method != HTTP_HEAD) return false;
  last_head = (int)i;
  return (int)i != flip_index;
}

static void parse_responses(bool finish) {
  fz_parse_free(&resp);
  fz_parse_init(&resp, HTTP_RESPONSE);
  resp.bodiless = response_bodiless;
  fz_parse_feed(&resp, fz_client.rx.data, fz_client.rx.len);
  /* A reset is not an end of message: a body that only the close delimits stays cut. */
  if (finish && !fz_client.reset) fz_parse_finish(&resp);
}

static size_t finals(const fz_parse *ps, bool *closing) {
  size_t n = 0;
  *closing = false;
  for (size_t i = 0; i < ps->n; i++) {
    const fz_msg *m = ps->msgs[i];
    if (!m->complete || m->status < 200) continue;
    n++;
    char v[64];
    if (fz_get(m, "connection", v, sizeof v) && strcasecmp(v, "close") == 0) *closing = true;
  }
  return n;
}

static void fz_client_received(void) {
  if (fz_client.fin || fz_client.eof) return;
  parse_responses(false);
  bool closing;
  size_t n = finals(&resp, &closing);
  if (fz_client.w.done && (n >= ref_complete || closing || resp.err != HPE_OK)) fz_client_fin();
}

static void written(fz_writer *w) {
  (void)w;
  if (fz_strict || ref_complete == 0) {
    fz_client_fin();
    return;
  }
  fz_client_received(); /* the answers may all be in already */
}

static void fz_client_connected(void) {
  fz_writer_start(&fz_client.w, (uv_stream_t *)&fz_client.tcp, input, input_len, written);
}

/* ---- checks ---------------------------------------------------------------- */

static void fz_dump(void) {
  fz_print_bytes("client sent", fz_client.unsplit.data, fz_client.unsplit.len);
  fz_print_parse("client requests (reference parse)", &ref);
  for (fz_upconn *uc = fz_upconns; uc; uc = uc->next) {
    char what[64];
    snprintf(what, sizeof what, "upstream connection %u received", uc->id);
    fz_print_bytes(what, uc->rx.data, uc->rx.len);
  }
  fz_print_bytes("client received", fz_client.rx.data, fz_client.rx.len);
  fz_print_parse("client responses", &resp);
}

/* The origin-form target ferry sends for a client's target. */
static void expected_target(const fy_buf *url, fy_buf *out) {
  fy_buf_reset(out);
  const char *t = url->data ? url->data : "", *end = t + url->len;
  if (url->len == 0 || t[0] == '/' || (url->len == 1 && t[0] == '*')) {
    fy_buf_append(out, t, url->len);
    return;
  }
  const char *p = memmem(t, url->len, "://", 3);
  p = p ? p + 3 : t;
  while (p < end && *p != '/' && *p != '?')
    p++;
  if (p == end || *p == '?') fy_buf_append(out, "/", 1);
  fy_buf_append(out, p, (size_t)(end - p));
}

/* The header names the client's Connection headers list. */
static bool named_by_connection(const fz_msg *client, const char *name, size_t len) {
  const fy_headers *h = &client->headers;
  for (ssize_t i = fy_headers_find(h, "connection", 10, 0); i >= 0;
       i = fy_headers_find(h, "connection", 10, (size_t)i + 1)) {
    const char *p = fy_hdr_val(h, &h->v[i]), *end = p + h->v[i].val_len;
    while (p < end) {
      while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
        p++;
      const char *tok = p;
      while (p < end && *p != ',' && *p != ' ' && *p != '\t')
        p++;
      if (p > tok && fy_http_token_eq(tok, (size_t)(p - tok), name, len)) return true;
    }
  }
  return false;
}

static void check_forwarded(const fz_msg *u, const fz_msg *c) {
  static const char *const hop[] = {"connection", "keep-alive", "proxy-connection",   "te",
                                    "trailer",    "upgrade",    "proxy-authenticate", "proxy-authorization"};
  for (size_t i = 0; i < FY_ARRAY_SIZE(hop); i++)
    REQUIRE(fz_count(u, hop[i]) == 0);
  for (size_t i = 0; i < u->headers.n; i++) {
    const fy_hdr *e = &u->headers.v[i];
    /* KNOWN: ferry compares only the first 128 bytes of a Connection token. */
    /* X-Forwarded-For/-Proto are ferry's own (it drops the client's and writes its own). */
    bool own = fy_http_token_eq(fy_hdr_name(&u->headers, e), e->name_len, "x-forwarded-for", 15) ||
               fy_http_token_eq(fy_hdr_name(&u->headers, e), e->name_len, "x-forwarded-proto", 17);
    if (!own && named_by_connection(c, fy_hdr_name(&u->headers, e), e->name_len) &&
        (fz_strict || e->name_len <= 128)) {
      fprintf(stderr, "forwarded a header the client's Connection names: %.*s\n", (int)e->name_len,
              fy_hdr_name(&u->headers, e));
      REQUIRE(!"headers named by Connection are not forwarded");
    }
  }
  REQUIRE(u->major == 1 && u->minor == 1);
  REQUIRE(fz_count(u, "host") == 1);
  REQUIRE(fz_count(u, "x-forwarded-for") == 1 && fz_count(u, "x-forwarded-proto") == 1);
  REQUIRE(fz_count(u, "content-length") <= 1 && fz_count(u, "transfer-encoding") <= 1);
  REQUIRE(!(u->has_cl && u->chunked));
  REQUIRE(u->method == c->method);
  fy_buf want;
  fy_buf_init(&want);
  expected_target(&c->url, &want);
  REQUIRE(fz_buf_eq(&u->url, want.data, want.len));
  fy_buf_free(&want);
  /* The framing kind is kept; the body is the same bytes. */
  if (c->chunked)
    REQUIRE(u->chunked && !u->has_cl);
  else if (c->has_cl && c->content_length > 0)
    REQUIRE(u->has_cl && u->content_length == c->content_length && !u->chunked);
  else
    REQUIRE(!u->chunked && (!u->has_cl || u->content_length == 0));
  REQUIRE(fz_buf_eq(&u->body, c->body.data, c->body.len));
}

/* Index in ref of the n-th request (0-based) that ferry forwards, or ref.n. */
static size_t forwarded_index(size_t n) {
  for (size_t i = 0; i < ref.n; i++)
    if (ref.msgs[i]->method != HTTP_OPTIONS && n-- == 0) return i;
  return ref.n;
}

static void check_upstream(void) {
  for (size_t n = 0; n < up_n; n++) {
    size_t i = forwarded_index(n);
    REQUIRE(i < ref.n);
    const fz_msg *c = ref.msgs[i];
    if (!c->complete) {
      fprintf(stderr, "upstream request %zu is complete, but the client's request %zu was not\n", n + 1, i);
      REQUIRE(!"ferry forwards only what the client sent");
    }
    check_forwarded(up_msgs[n], c);
  }
  /* A connection that ended inside a request. */
  size_t cut = 0;
  for (fz_upconn *uc = fz_upconns; uc; uc = uc->next) {
    /* Ended between requests, or (ferry closed it, or we closed it after ferry did) inside one. */
    if (!uc->ps.eof_incomplete && uc->rx.len == uc->ps.last_end) continue;
    cut++;
    REQUIRE(cut == 1); /* only the request in progress can be cut */
    size_t i = forwarded_index(up_n);
    REQUIRE(i < ref.n);
    const fz_msg *c = ref.msgs[i];
    const fz_msg *u = fz_cur(&uc->ps);
    if (c->complete) {
      fprintf(stderr, "upstream connection %u ended inside a request the client had sent completely (%zu)\n",
              uc->id, i);
      REQUIRE(!"a request is cut upstream only when the client's was");
    }
    REQUIRE(u != NULL && !u->complete);
    REQUIRE(u->body.len <= c->body.len &&
            (u->body.len == 0 || memcmp(u->body.data, c->body.data, u->body.len) == 0));
  }
}

static void check_client(void) {
  flip_index = last_head = -1;
  parse_responses(true);
  if ((resp.err != HPE_OK || resp.eof_incomplete || resp.last_end != resp.offset) && last_head >= 0) {
    flip_index = last_head;
    parse_responses(true);
  }
  if (resp.err != HPE_OK) {
    fprintf(stderr, "the client got bytes llhttp (strict) refuses: %s: %s\n", llhttp_errno_name(resp.err),
            resp.err_reason);
    REQUIRE(!"ferry sends well-formed responses");
  }
  REQUIRE(!resp.upgraded);
  REQUIRE(!resp.eof_incomplete && resp.last_end == resp.offset); /* no cut response */

  /* A cut or malformed request follows the complete ones. llhttp skips empty
   * lines before a request line without starting a message, bare LFs included;
   * ferry refuses a bare LF there with a 400, so any byte after the last
   * complete request may earn one. */
  size_t complete_end = ref_complete ? ref.msgs[ref_complete - 1]->end : 0;
  bool more = ref.n > ref_complete || ref.offset > complete_end;
  size_t nfinal = 0, from_upstream = 0;
  bool closed = false;
  for (size_t k = 0; k < resp.n; k++) {
    const fz_msg *m = resp.msgs[k];
    REQUIRE(m->complete);
    REQUIRE(!closed); /* nothing after Connection: close */
    REQUIRE(m->major == 1 && m->minor == 1);
    REQUIRE(!(m->has_cl && m->chunked));
    if (m->status < 200) {
      REQUIRE(m->status == 100);
      continue;
    }
    size_t i = nfinal++;
    REQUIRE(i < ref_complete + (more ? 1 : 0));
    char v[64];
    if (fz_get(m, "connection", v, sizeof v) && strcasecmp(v, "close") == 0) closed = true;
    if (i == ref.n) { /* refused bytes llhttp took for empty lines */
      REQUIRE(m->status == 400 && closed && fz_count(m, "server") == 1 && !fz_get(m, "x-up", v, sizeof v));
      continue;
    }
    const fz_msg *c = ref.msgs[i];
    if ((int)i == flip_index) /* KNOWN: a refused HEAD request answered with a body */
      REQUIRE(!fz_strict && m->status >= 400 && closed && fz_count(m, "server") == 1);
    if (fz_get(m, "x-up", v, sizeof v)) {
      REQUIRE(strtoul(v, NULL, 10) == ++from_upstream);
      REQUIRE(c->complete && c->method != HTTP_OPTIONS && m->status == 200);
      REQUIRE(fz_buf_eq(&m->body, m->skipped_body ? "" : "ok", m->skipped_body ? 0 : 2));
    } else if (c->method == HTTP_OPTIONS && m->status == 200) {
      /* The policy answers from route(), after the head: a request whose body is not
       * complete gets that answer too, and then the connection closes. */
      REQUIRE(fz_buf_eq(&m->body, "local", 5));
      REQUIRE(c->complete || closed);
    } else {
      REQUIRE(m->status >= 400 && fz_count(m, "server") == 1); /* ferry's own refusal */
    }
  }
  REQUIRE(from_upstream == up_n);
  if (nfinal < ref_complete && !closed) {
    fprintf(stderr,
            "%zu of the client's %zu complete requests got no answer, and no answer closed the "
            "connection\n",
            ref_complete - nfinal, ref_complete);
    REQUIRE(!"every complete request is answered unless ferry closes the connection");
  }
}

/* ---- the target ---------------------------------------------------------------- */

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  fz_policy_lua = policy_lua;
  fz_group_lua = group_lua;
  fz_setup();
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  input = data;
  input_len = size;
  fz_unsplit(&fz_client.unsplit, data, size);
  fz_parse_init(&ref, HTTP_REQUEST);
  fz_parse_feed(&ref, fz_client.unsplit.data, fz_client.unsplit.len);
  fz_parse_finish(&ref);
  ref_complete = 0;
  while (ref_complete < ref.n && ref.msgs[ref_complete]->complete)
    ref_complete++;
  fz_parse_init(&resp, HTTP_RESPONSE);

  fz_run();
  check_upstream();
  check_client();
  if (getenv("FUZZ_VERBOSE")) fz_dump();

  fz_parse_free(&ref);
  fz_parse_free(&resp);
  fz_upconns_free();
  up_n = 0;
  return 0;
}
