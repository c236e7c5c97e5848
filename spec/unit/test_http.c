/* Unit tests for core/http.c: headers, hop-by-hop rules, hosts, targets, framing. */
#include "check.h"
#include "http.h"

#include <ctype.h>
#include <string.h>
#include <sys/types.h>

static void test_headers(void) {
  fy_headers h;
  fy_headers_init(&h);
  fy_headers_add(&h, "Host", 4, "a.test", 6);
  fy_headers_add(&h, "X-Tag", 5, "one", 3);
  fy_headers_add(&h, "x-tag", 5, "two", 3);
  CHECK(fy_headers_find(&h, "HOST", 4, 0) == 0);
  CHECK(fy_headers_find(&h, "x-TAG", 5, 0) == 1);
  CHECK(fy_headers_find(&h, "x-tag", 5, 2) == 2);
  CHECK(fy_headers_find(&h, "x-ta", 4, 0) == -1);
  CHECK(fy_headers_remove(&h, "X-TAG", 5) == 2);
  CHECK(fy_headers_find(&h, "x-tag", 5, 0) == -1);
  /* values stay addressable after the buffer grows */
  for (int i = 0; i < 200; i++)
    fy_headers_add(&h, "X-Fill", 6, "0123456789abcdef", 16);
  const fy_hdr *e = &h.v[0];
  CHECK_STR(fy_hdr_val(&h, e), e->val_len, "a.test");
  fy_headers_reset(&h);
  CHECK(h.n == 0 && fy_headers_find(&h, "host", 4, 0) == -1);
  fy_headers_free(&h);
}

static void test_collect(void) {
  fy_headers h;
  fy_headers_init(&h);
  /* a name and a value in pieces, as reads split them */
  CHECK(fy_headers_collect_name(&h, "Ho", 2, 2) && fy_headers_collect_name(&h, "st", 2, 2));
  CHECK(fy_headers_collect_name_end(&h));
  fy_headers_collect_value(&h, "a.", 2);
  fy_headers_collect_value(&h, "test", 4);
  CHECK(fy_headers_collect_name(&h, "X", 1, 2) && fy_headers_collect_name_end(&h));
  CHECK(h.n == 2 && fy_headers_find(&h, "host", 4, 0) == 0);
  CHECK_STR(fy_hdr_val(&h, &h.v[0]), h.v[0].val_len, "a.test");
  CHECK(h.v[1].val_len == 0);
  CHECK(!fy_headers_collect_name(&h, "Y", 1, 2)); /* a third entry is over the limit */
  CHECK(!fy_headers_collect_name_end(&h));        /* no name is open */
  fy_headers_reset(&h);
  CHECK(!fy_headers_collect_name_end(&h)); /* ": x" first */
  CHECK(fy_headers_collect_name(&h, "", 0, 2) && !fy_headers_collect_name_end(&h));
  fy_headers_free(&h);
}

static void test_hop_by_hop(void) {
  fy_headers h;
  fy_headers_init(&h);
  fy_headers_add(&h, "Connection", 10, "keep-alive, X-Private ,x-other", 30);
  fy_headers_add(&h, "X-Private", 9, "secret", 6);
  fy_headers_add(&h, "X-Other", 7, "1", 1);
  fy_headers_add(&h, "Keep-Alive", 10, "timeout=5", 9);
  fy_headers_add(&h, "Transfer-Encoding", 17, "chunked", 7);
  fy_headers_add(&h, "TE", 2, "trailers", 8);
  fy_headers_add(&h, "Upgrade", 7, "websocket", 9);
  fy_headers_add(&h, "Proxy-Connection", 16, "keep-alive", 10);
  fy_headers_add(&h, "Content-Length", 14, "5", 1);
  fy_headers_add(&h, "X-Kept", 6, "yes", 3);
  fy_http_strip_hop_by_hop(&h);
  size_t live = 0;
  for (size_t i = 0; i < h.n; i++)
    live += !(h.v[i].flags & FY_HDR_REMOVED);
  CHECK(live == 1);
  CHECK(fy_headers_find(&h, "x-kept", 6, 0) == 9);
  CHECK(fy_http_is_hop_by_hop("KEEP-ALIVE", 10));
  CHECK(!fy_http_is_hop_by_hop("keep", 4));
  static const char *const hop[] = {"connection",
                                    "keep-alive",
                                    "proxy-connection",
                                    "te",
                                    "trailer",
                                    "TRANSFER-ENCODING",
                                    "upgrade",
                                    "proxy-authenticate",
                                    "proxy-authorization",
                                    "Content-Length"};
  for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
    CHECK(fy_http_is_hop_by_hop(hop[i], strlen(hop[i])));
  static const char *const end_to_end[] = {
      "content-type",      "host",      "tx",          "trailers",
      "upgrades",          "connectio", "keep-alivE2", "proxy-authorizatio",
      "transfer-encodinG "};
  for (size_t i = 0; i < sizeof end_to_end / sizeof end_to_end[0]; i++)
    CHECK(!fy_http_is_hop_by_hop(end_to_end[i], strlen(end_to_end[i])));
  fy_headers_free(&h);

  /* A token longer than any fixed buffer still removes the header it names (fuzz_request). */
  char name[300];
  memset(name, 'x', sizeof name);
  fy_headers_init(&h);
  fy_headers_add(&h, "Connection", 10, name, sizeof name);
  fy_headers_add(&h, name, sizeof name, "secret", 6);
  fy_headers_add(&h, name, 128, "kept", 4); /* its first 128 bytes are another name */
  fy_http_strip_hop_by_hop(&h);
  CHECK(h.v[1].flags & FY_HDR_REMOVED);
  CHECK(!(h.v[2].flags & FY_HDR_REMOVED));
  fy_headers_free(&h);
}

static void host_is(const char *in, const char *want) {
  char out[64];
  ssize_t n = fy_http_host_normalize(in, strlen(in), out, sizeof out);
  if (want == NULL) {
    CHECK(n == -1);
  } else {
    CHECK(n >= 0 && (size_t)n == strlen(want) && strcmp(out, want) == 0);
  }
}

static void test_host(void) {
  host_is("Metrics.Observability.Internal", "metrics.observability.internal");
  host_is("metrics.observability.internal:8080", "metrics.observability.internal");
  host_is("[::1]:8080", "[::1]");
  host_is("[::1]", "[::1]");
  host_is("127.0.0.1:80", "127.0.0.1");
  host_is("", "");
  host_is("a.test:80x", NULL);
  host_is("a b.test", NULL);
  host_is("a.test/evil", NULL);
  host_is("[::1", NULL);
  host_is("user@a.test", NULL);
  /* Every byte value, against the C locale's classification. */
  for (int c = 1; c < 256; c++) {
    char in[4] = {'a', (char)c, 'b', 0}, out[8];
    bool ok = isalnum(c) || c == '-' || c == '.' || c == '_' || c == '[' || c == ']' || c == ':';
    ssize_t n = fy_http_host_normalize(in, 3, out, sizeof out);
    if (c == ':') continue; /* a port separator: "b" is not a port */
    CHECK((n >= 0) == ok);
    if (ok) CHECK(n == 3 && out[1] == (char)tolower(c));
  }
}

static void test_target(void) {
  fy_target t;
  const char *s = "/a/b?x=1&y=2";
  CHECK(fy_http_target_parse(s, strlen(s), &t) == 0);
  CHECK_STR(t.path, t.path_len, "/a/b");
  CHECK_STR(t.query, t.query_len, "x=1&y=2");
  CHECK(t.authority == NULL);
  s = "http://Evil.Example:81/p?q";
  CHECK(fy_http_target_parse(s, strlen(s), &t) == 0);
  CHECK_STR(t.authority, t.authority_len, "Evil.Example:81");
  CHECK_STR(t.path, t.path_len, "/p");
  CHECK_STR(t.query, t.query_len, "q");
  s = "http://a.test";
  CHECK(fy_http_target_parse(s, strlen(s), &t) == 0 && t.path_len == 1 && t.path[0] == '/');
  s = "http://a.test?z";
  CHECK(fy_http_target_parse(s, strlen(s), &t) == 0 && t.path[0] == '/' && t.query_len == 1);
  s = "*";
  CHECK(fy_http_target_parse(s, 1, &t) == 0 && t.path_len == 1);
  s = "/";
  CHECK(fy_http_target_parse(s, 1, &t) == 0 && t.query == NULL);
  CHECK(fy_http_target_parse("a.test:443", 10, &t) == -1);
  CHECK(fy_http_target_parse("ftp://a/", 8, &t) == -1);
  CHECK(fy_http_target_parse("http://u@a.test/", 16, &t) == -1);
  CHECK(fy_http_target_parse("/a#b", 4, &t) == -1); /* a fragment is not part of a request target */
  CHECK(fy_http_target_parse("/a?x#b", 6, &t) == -1);
  CHECK(fy_http_target_parse("http:///x", 9, &t) == -1);
}

static bool value_ok_bytewise(const char *v, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (((unsigned char)v[i] < 0x20 && v[i] != '\t') || (unsigned char)v[i] == 0x7f) return false;
  return true;
}

static void test_values(void) {
  CHECK(fy_http_value_ok("a\tb c", 5));
  CHECK(!fy_http_value_ok("a\r\nb", 4));
  CHECK(!fy_http_value_ok("a\0b", 3));
  CHECK(!fy_http_value_ok("\x7f", 1));
  /* The word-at-a-time check against the rule byte by byte: every byte value
   * at every place of values that span words, and random values. */
  char v[19];
  for (int pos = 0; pos < 19; pos++)
    for (int c = 0; c < 256; c++) {
      memset(v, 'a', sizeof v);
      v[pos] = (char)c;
      for (size_t len = (size_t)pos + 1; len <= sizeof v; len += 6)
        CHECK(fy_http_value_ok(v, len) == value_ok_bytewise(v, len));
    }
  unsigned seed = 12345;
  for (int n = 0; n < 200000; n++) {
    size_t len = (seed = seed * 1103515245u + 12345u) >> 16 & 15;
    for (size_t i = 0; i < len; i++) {
      seed = seed * 1103515245u + 12345u;
      /* mostly printable, sometimes a tab, a control byte, DEL or above 0x7f */
      unsigned r = seed >> 16;
      v[i] = (char)((r & 31) == 0 ? (r >> 5) & 0xff : (r & 31) == 1 ? '\t' : 0x20 + (r >> 5) % 0x5f);
    }
    CHECK(fy_http_value_ok(v, len) == value_ok_bytewise(v, len));
  }
  CHECK(fy_http_name_ok("X-Tag_1.v~", 10));
  CHECK(!fy_http_name_ok("X Tag", 5));
  CHECK(!fy_http_name_ok("X:Tag", 5));
  CHECK(!fy_http_name_ok("", 0));
}

static void test_framing(void) {
  fy_buf b;
  fy_buf_init(&b);
  fy_http_chunk(&b, "hello", 5);
  fy_http_chunk(&b, "", 0); /* an empty span must not end the body */
  fy_http_chunk(&b, "0123456789abcdefX", 17);
  fy_http_chunk_end(&b);
  CHECK_STR(b.data, b.len, "5\r\nhello\r\n11\r\n0123456789abcdefX\r\n0\r\n\r\n");
  fy_buf_reset(&b);
  fy_http_write_simple(&b, 421, NULL, 0, "no\n", 3, false, true);
  CHECK_STR(b.data, b.len,
            "HTTP/1.1 421 Misdirected Request\r\nServer: ferry\r\nContent-Length: 3\r\n"
            "Connection: close\r\n\r\nno\n");
  fy_buf_reset(&b);
  fy_http_write_simple(&b, 200, "X-A: b\r\n", 8, "body", 4, true, false);
  CHECK_STR(b.data, b.len, "HTTP/1.1 200 OK\r\nServer: ferry\r\nX-A: b\r\nContent-Length: 4\r\n\r\n");
  fy_buf_reset(&b);
  fy_http_write_simple(&b, 204, NULL, 0, "", 0, false, false);
  CHECK_STR(b.data, b.len, "HTTP/1.1 204 No Content\r\nServer: ferry\r\n\r\n");
  fy_buf_free(&b);
}

static enum fy_http_te te_of(const char *a, const char *b) {
  fy_headers h;
  fy_headers_init(&h);
  fy_headers_add(&h, "Host", 4, "a.test", 6);
  if (a) fy_headers_add(&h, "Transfer-Encoding", 17, a, strlen(a));
  if (b) fy_headers_add(&h, "transfer-encoding", 17, b, strlen(b));
  enum fy_http_te te = fy_http_transfer_encoding(&h);
  fy_headers_free(&h);
  return te;
}

static void test_transfer_encoding(void) {
  CHECK(te_of(NULL, NULL) == FY_TE_NONE);
  CHECK(te_of("chunked", NULL) == FY_TE_CHUNKED);
  CHECK(te_of("Chunked", NULL) == FY_TE_CHUNKED);
  CHECK(te_of(" chunked ,", NULL) == FY_TE_CHUNKED); /* empty list elements are no codings */
  CHECK(te_of("gzip, chunked", NULL) == FY_TE_UNSUPPORTED);
  CHECK(te_of("gzip", "chunked") == FY_TE_UNSUPPORTED); /* two headers are one list */
  CHECK(te_of("identity, chunked", NULL) == FY_TE_UNSUPPORTED);
  CHECK(te_of("chunked, gzip", NULL) == FY_TE_BAD);
  CHECK(te_of("gzip", NULL) == FY_TE_BAD);
  CHECK(te_of("chunked, chunked", NULL) == FY_TE_BAD);
  CHECK(te_of("chunked", "chunked") == FY_TE_BAD);
  CHECK(te_of("", NULL) == FY_TE_BAD);
  CHECK(te_of(" , ", NULL) == FY_TE_BAD);
  CHECK(te_of("chunkedx", NULL) == FY_TE_BAD);
}

/* Runs the head check over the pieces (split at '|'), as reads would deliver them. */
static bool head_ok(const char *pieces, bool trailers) {
  fy_http_head_scan s;
  if (trailers)
    fy_http_head_scan_trailers(&s);
  else
    fy_http_head_scan_init(&s);
  for (const char *p = pieces;;) {
    const char *bar = strchr(p, '|');
    size_t n = bar ? (size_t)(bar - p) : strlen(p);
    if (!fy_http_head_check(&s, p, n)) return false;
    if (bar == NULL) return true;
    p = bar + 1;
  }
}

static void test_head_check(void) {
  CHECK(head_ok("GET / HTTP/1.1\r\nHost: a\r\nX-A: b  c\r\n\r\n", false));
  CHECK(head_ok("\r\nGET / HTTP/1.1\r|\nHost: a\r\n|\r\n", false)); /* an empty line first; CR LF split */
  CHECK(!head_ok("GET / HTTP/1.1\nHost: a\r\n\r\n", false));        /* bare LF */
  CHECK(!head_ok("GET / HTTP/1.1\r\nHost: a\r\n|\n", false));       /* bare LF ends the head */
  CHECK(!head_ok("GET / HTTP/1.1\r\nX-A: b\r\n| c\r\n", false));    /* obs-fold after a split */
  CHECK(!head_ok("GET / HTTP/1.1\r\nContent-Length:\r\n\t5\r\n", false));
  CHECK(!head_ok("GET  / HTTP/1.1\r\n", false));  /* two spaces in the request line */
  CHECK(!head_ok("GET / | HTTP/1.1\r\n", false)); /* ... split between reads */
  CHECK(head_ok("X-Sum: 1\r\n\r\n", true));
  CHECK(!head_ok(" X-Sum: 1\r\n\r\n", true));
  CHECK(!head_ok("X-Sum: 1\r\n folded\r\n\r\n", true));
  CHECK(!head_ok("X-Sum: 1\n\r\n", true));
}

int main(void) {
  test_headers();
  test_collect();
  test_hop_by_hop();
  test_host();
  test_target();
  test_values();
  test_framing();
  test_transfer_encoding();
  test_head_check();
  return check_done("test_http");
}
