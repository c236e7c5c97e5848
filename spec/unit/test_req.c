/*
 * The socket-free request reader: a whole head read and checked as from a
 * client (what `ferry test` uses, and what conn.c feeds its reads into).
 */
#include "check.h"
#include "req.h"

#include <string.h>

static const fy_limits limits = {.max_request_line = 64, .max_header_bytes = 256, .max_headers = 4};

/* The status a head gets (0: accepted), the request left in *r (freed by the caller). */
static int parse(const char *head, fy_req *r) {
  memset(r, 0, sizeof *r);
  fy_buf_init(&r->url);
  fy_headers_init(&r->headers);
  fy_req_reader rd;
  fy_req_reader_init(&rd, r, &limits, NULL, NULL);
  const char *why = NULL;
  int status = fy_req_reader_parse_head(&rd, head, strlen(head), &why);
  CHECK(status == 0 || (why && *why));
  return status;
}

static int status_of(const char *head) {
  fy_req r;
  int status = parse(head, &r);
  fy_buf_free(&r.url);
  fy_headers_free(&r.headers);
  return status;
}

int main(void) {
  fy_req r;
  CHECK(parse("GET /a?b=c HTTP/1.1\r\nHost: Metrics.Example:80\r\nConnection: x-private\r\nX-Private: 1\r\n"
              "X-Kept: 2\r\n\r\n",
              &r) == 0);
  CHECK(strcmp(r.method, "GET") == 0 && r.http_minor == 1 && r.keepalive && !r.has_body);
  CHECK_STR(r.host, r.host_len, "metrics.example");
  CHECK_STR(r.target.path, r.target.path_len, "/a");
  CHECK_STR(r.target.query, r.target.query_len, "b=c");
  CHECK(fy_headers_find(&r.headers, "x-private", 9, 0) < 0 &&
        fy_headers_find(&r.headers, "x-kept", 6, 0) >= 0);
  fy_buf_free(&r.url);
  fy_headers_free(&r.headers);

  CHECK(parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n", &r) == 0);
  CHECK(r.chunked && r.has_body);
  fy_buf_free(&r.url);
  fy_headers_free(&r.headers);

  CHECK(status_of("GET / HTTP/1.0\r\n\r\n") == 0);   /* HTTP/1.0 may go without Host */
  CHECK(status_of("GET / HTTP/1.1\r\n\r\n") == 400); /* HTTP/1.1 may not */
  CHECK(status_of("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400);
  CHECK(status_of("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") ==
        400);
  CHECK(status_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n") == 400);
  CHECK(status_of("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == 501);
  CHECK(status_of("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-fast\r\nContent-Length: 1\r\n\r\n") == 417);
  CHECK(status_of(
            "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n") ==
        414);
  CHECK(status_of("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n") == 431);
  CHECK(status_of("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n") == 400);
  CHECK(status_of("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n") == 405);
  CHECK(status_of("GET / HTTP/2.0\r\nHost: a\r\n\r\n") != 0);
  CHECK(status_of("GET / HTTP/1.1\r\nHost: a\r\n") == 400); /* incomplete */
  return check_done("test_req");
}
