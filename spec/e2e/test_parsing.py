"""Malformed and oversized requests over raw sockets, and client-side limits.

Each rejection test checks three things: the exact status line, that ferry
closed the connection, and (through the upstream's journal) that nothing of
the request reached the upstream.  Many payloads carry a smuggled second
request after the malformed one, which must not reach the upstream either.
"""

import socket
import time
import unittest

from .harness import (CATCH_ALL_POLICY, E2ECase, HttpReader, connect, exchange,
                      read_until_close, request_bytes, send_raw, status_of)

LIMITS = dict(max_request_line=1024, max_header_bytes=4096, max_headers=20,
              header_timeout=2, body_timeout=2, keepalive_timeout=2, keepalive_requests=3)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  limits = {
    max_request_line = %(max_request_line)d,
    max_header_bytes = %(max_header_bytes)d,
    max_headers = %(max_headers)d,
    header_timeout = %(header_timeout)d,
    body_timeout = %(body_timeout)d,
    keepalive_timeout = %(keepalive_timeout)d,
    keepalive_requests = %(keepalive_requests)d,
  },
}
""" % LIMITS

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: p.test\r\n\r\n"


def head(*lines):
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ParsingTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, CATCH_ALL_POLICY, up=cls.up.addr)

    def setUp(self):
        self.up.clear()

    def probe(self):
        """A valid request after a rejection: ferry still serves, and the probe
        is the only thing the upstream has seen since the test started."""
        time.sleep(0.1)
        (resp,) = exchange(self.ferry.port, request_bytes("GET", "/echo?probe=1", host="p.test"), 1)
        self.assertEqual(resp.status, 200, resp)
        return self.up.journal()

    def assertRejected(self, data, status, timeout=5.0):
        reply = send_raw(self.ferry.port, data, timeout=timeout)
        self.assertStatusLine(reply, status)
        self.assertTrue(reply.closed, "ferry must close the connection after %d; got %r"
                        % (status, bytes(reply[:300])))
        journal = self.probe()
        self.assertEqual([r["line"] for r in journal["requests"]], ["GET /echo?probe=1 HTTP/1.1"],
                         "part of a rejected request reached the upstream")
        self.assertEqual(journal["partial"], [], "stray bytes reached the upstream")
        return reply

    # -- control ------------------------------------------------------------

    def test_valid_request_reaches_upstream(self):
        """Control for the rejection tests: a well-formed request does arrive."""
        data = request_bytes("POST", "/echo?control=1", host="p.test", body=b"hello")
        (resp,) = exchange(self.ferry.port, data, 1)
        self.assertEqual(resp.status, 200)
        self.assertEqual(self.up.request_lines(), ["POST /echo?control=1 HTTP/1.1"])

    # -- framing ambiguities (request smuggling) ----------------------------------

    def test_content_length_with_transfer_encoding(self):
        body = b"0\r\n\r\n" + SMUGGLED
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Content-Length: %d" % len(body),
                                 "Transfer-Encoding: chunked") + body, 400)

    def test_two_different_content_lengths(self):
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Content-Length: 5", "Content-Length: 44")
                            + b"hello" + SMUGGLED, 400)

    def test_content_length_list_with_different_values(self):
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Content-Length: 5, 44") + b"hello" + SMUGGLED, 400)

    def test_connection_naming_host(self):
        # It would strip Host on the way out, after routing by it (found by fuzz_request).
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test", "Connection: keep-alive, Host"), 400)

    def test_empty_header_name(self):
        # llhttp lets ": x" by; ferry refuses it (found by fuzz_request).
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test", ": x"), 400)

    def test_a_refused_head_request_gets_no_body(self):
        # Refused in the middle of its head (an obs-fold): the 400 answers a HEAD, so no body follows.
        reply = self.assertRejected(head("HEAD /echo HTTP/1.1", "Host: p.test", "X-A: 1", " folded"), 400)
        self.assertTrue(bytes(reply).endswith(b"\r\n\r\n"), bytes(reply))

    def test_invalid_content_length_value(self):
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Content-Length: +5") + b"hello" + SMUGGLED, 400)

    def test_transfer_encoding_not_ending_in_chunked(self):
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Transfer-Encoding: chunked, gzip")
                            + b"0\r\n\r\n" + SMUGGLED, 400)

    def test_http10_request_with_chunked_body(self):
        # RFC 9112 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing (an
        # HTTP/1.0 hop before ferry reads the body to the close). Kept alive, the bytes
        # after the chunked body were parsed and forwarded as a second request.
        self.assertRejected(head("POST /upload HTTP/1.0", "Host: p.test", "Connection: keep-alive",
                                 "Transfer-Encoding: chunked")
                            + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_transfer_coding_other_than_chunked(self):
        # ferry forwards only chunked framing; a gzip coding under it was dropped on the
        # way, so the upstream got compressed bytes it could not know were compressed.
        reply = self.assertRejected(head("POST /upload HTTP/1.1", "Host: p.test",
                                         "Transfer-Encoding: gzip, chunked")
                                    + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 501)
        self.assertIn(b"Connection: close", bytes(reply))

    def test_transfer_coding_in_a_separate_header(self):
        self.assertRejected(head("POST /upload HTTP/1.1", "Host: p.test", "Transfer-Encoding: gzip",
                                 "Transfer-Encoding: chunked")
                            + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 501)

    def test_whitespace_between_field_name_and_colon(self):
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test",
                                 "Content-Length : 5") + b"hello" + SMUGGLED, 400)

    def test_invalid_chunk_size(self):
        self.assertRejected(head("POST /upload HTTP/1.1", "Host: p.test",
                                 "Transfer-Encoding: chunked")
                            + b"zz\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400)

    def test_chunk_size_overflow(self):
        self.assertRejected(head("POST /upload HTTP/1.1", "Host: p.test",
                                 "Transfer-Encoding: chunked")
                            + b"1" + b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, 400)

    # -- malformed header blocks --------------------------------------------------

    def test_obs_fold(self):
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test",
                                 "X-Folded: first", " second") + SMUGGLED, 400)

    def test_nul_in_header_value(self):
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test",
                                 "X-Bad: a\x00b") + SMUGGLED, 400)

    def test_control_char_in_header_value(self):
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test",
                                 "X-Bad: a\x01b") + SMUGGLED, 400)

    def test_bare_cr_line_ending(self):
        self.assertRejected(b"GET /echo HTTP/1.1\rHost: p.test\r\nX-A: b\r\n\r\n" + SMUGGLED, 400)

    def test_bare_lf_line_endings(self):
        # strict llhttp takes a bare LF after the request line and as the empty line ending
        # the head; ferry checks the raw head bytes for them.
        self.assertRejected(b"GET /echo HTTP/1.1\nHost: p.test\r\n\r\n" + SMUGGLED, 400)

    def test_bare_lf_ending_the_head_of_a_body(self):
        self.assertRejected(b"POST /echo HTTP/1.1\r\nHost: p.test\r\nContent-Length: 5\r\n\nhello"
                            + SMUGGLED, 400)

    def test_obs_fold_after_an_empty_content_length(self):
        # llhttp reads the folded line as the Content-Length value.
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test", "Content-Length:", " 5")
                            + b"hello" + SMUGGLED, 400)

    def test_obs_fold_in_a_trailer(self):
        self.assertRejected(head("POST /upload HTTP/1.1", "Host: p.test", "Transfer-Encoding: chunked")
                            + b"5\r\nhello\r\n0\r\nX-A: 1\r\n folded\r\n\r\n" + SMUGGLED, 400)

    def test_two_spaces_in_the_request_line(self):
        self.assertRejected(b"GET  /echo HTTP/1.1\r\nHost: p.test\r\n\r\n" + SMUGGLED, 400)

    def test_fragment_in_the_target(self):
        # A fragment is no part of a request target (RFC 9112 3.2); passed on, a policy
        # saw a path the upstream may cut at the '#'.
        self.assertRejected(b"GET /echo#.png HTTP/1.1\r\nHost: p.test\r\n\r\n" + SMUGGLED, 400)

    def test_expect_headers_after_a_100_continue(self):
        # Only the first Expect was checked: a second one went to the upstream unchecked.
        self.assertRejected(head("POST /echo HTTP/1.1", "Host: p.test", "Content-Length: 5",
                                 "Expect: 100-continue", "Expect: something") + b"hello" + SMUGGLED, 417)

    def test_http11_request_without_host(self):
        self.assertRejected(b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", 400)

    def test_two_host_headers(self):
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test", "Host: other.test"), 400)

    # -- limits ---------------------------------------------------------------

    def test_request_line_too_long(self):
        target = "/echo?" + "a" * (LIMITS["max_request_line"] + 500)
        self.assertRejected(head("GET %s HTTP/1.1" % target, "Host: p.test"), 414)

    def test_request_line_at_limit_is_accepted(self):
        line_len = LIMITS["max_request_line"] - 16
        target = "/echo?" + "a" * (line_len - len("GET  HTTP/1.1") - len("/echo?"))
        (resp,) = exchange(self.ferry.port, request_bytes("GET", target, host="p.test"), 1)
        self.assertEqual(resp.status, 200, resp)

    def test_header_block_too_large(self):
        fields = ["X-Big-%d: %s" % (i, "v" * 1000) for i in range(5)]
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test", *fields), 431)

    def test_too_many_headers(self):
        fields = ["X-H%d: v" % i for i in range(LIMITS["max_headers"] + 10)]
        self.assertRejected(head("GET /echo HTTP/1.1", "Host: p.test", *fields), 431)

    def test_slow_header_block_times_out(self):
        data = head("GET /echo HTTP/1.1", "Host: p.test", "X-Slow: " + "s" * 40)
        sock = connect(self.ferry.port, timeout=5)
        reply = b""
        closed = False
        try:
            start = time.monotonic()
            for i in range(min(len(data) - 1, 12)):  # never completes the head
                try:
                    sock.sendall(data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    break
                sock.settimeout(1.0)
                try:
                    sock.recv(1, socket.MSG_PEEK)  # something to read, or EOF
                except socket.timeout:
                    continue
                except ConnectionResetError:
                    closed = True
                break
            reply, closed2, _ = read_until_close(sock, 3.0)
            closed = closed or closed2
            elapsed = time.monotonic() - start
        finally:
            sock.close()
        self.assertEqual(status_of(reply), 408, "reply was %r" % reply[:200])
        self.assertTrue(closed, "ferry must close the connection after 408")
        bound = LIMITS["header_timeout"] + 2.0
        self.assertLess(elapsed, bound, "408 came after %.1fs, header_timeout is %ds"
                        % (elapsed, LIMITS["header_timeout"]))
        self.assertEqual(self.up.journal()["requests"], [])
        print("  slow header block answered after %.2fs" % elapsed)

    def test_body_timeout_closes_connection(self):
        sock = connect(self.ferry.port, timeout=5)
        try:
            sock.sendall(request_bytes("POST", "/upload", host="p.test",
                                       headers=[("Content-Length", "100")]) + b"0123456789")
            start = time.monotonic()
            _, closed, _ = read_until_close(sock, LIMITS["body_timeout"] + 4.0)
            elapsed = time.monotonic() - start
        finally:
            sock.close()
        self.assertTrue(closed, "connection still open %.1fs into a stalled body "
                                "(body_timeout = %ds)" % (elapsed, LIMITS["body_timeout"]))
        self.assertLess(elapsed, LIMITS["body_timeout"] + 2.5)

    # -- client keep-alive limits -----------------------------------------------

    def test_keepalive_timeout_closes_idle_connection(self):
        sock = connect(self.ferry.port, timeout=5)
        try:
            sock.sendall(request_bytes("GET", "/echo", host="p.test"))
            reader = HttpReader(sock, timeout=5)
            self.assertEqual(reader.read_response().status, 200)
            start = time.monotonic()
            closed = reader.closed_within(LIMITS["keepalive_timeout"] + 3.0)
            elapsed = time.monotonic() - start
        finally:
            sock.close()
        self.assertTrue(closed, "idle client connection not closed (keepalive_timeout = %ds)"
                        % LIMITS["keepalive_timeout"])
        self.assertGreater(elapsed, LIMITS["keepalive_timeout"] - 1.0,
                           "idle connection closed too early")

    def test_keepalive_requests_limit(self):
        n = LIMITS["keepalive_requests"]
        sock = connect(self.ferry.port, timeout=5)
        try:
            reader = HttpReader(sock, timeout=5)
            responses = []
            for i in range(n):
                sock.sendall(request_bytes("GET", "/echo?i=%d" % i, host="p.test"))
                responses.append(reader.read_response())
            closed = reader.closed_within(3.0)
        finally:
            sock.close()
        self.assertEqual([r.status for r in responses], [200] * n)
        for r in responses[:-1]:
            self.assertNotIn("close", r.tokens("connection"))
        self.assertIn("close", responses[-1].tokens("connection"),
                      "the last allowed request must be answered with Connection: close")
        self.assertTrue(closed)


if __name__ == "__main__":
    unittest.main()
