"""Request and response bodies: framing in both directions, HEAD, 204/304,
Expect: 100-continue."""

import socket
import time
import unittest

from .harness import (CATCH_ALL_POLICY, E2ECase, HttpReader, connect, curl,
                      curl_download_sha, exchange, pattern_bytes, pattern_sha256,
                      request_bytes, sha256)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
}
"""

HOST = "bodies.test"


class BodiesTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, CATCH_ALL_POLICY, up=cls.up.addr)

    def url(self, path):
        return self.ferry.url(path)

    # -- request bodies ---------------------------------------------------------

    def test_post_with_content_length(self):
        body = pattern_bytes(300_001)
        r = curl(self.url("/echo"), host=HOST, data=body, headers=[("Expect", "")])
        self.assertEqual((r.rc, r.status), (0, 200), r)
        info = r.json()
        self.assertEqual(info["method"], "POST")
        self.assertEqual(info["body_len"], len(body))
        self.assertEqual(info["body_sha256"], sha256(body))

    def test_post_then_half_close_is_answered(self):
        # The whole request and the client's FIN arrive before the upstream
        # connection is ready (fuzz_request found this dropped).
        for size in (5, 100_000):
            body = pattern_bytes(size)
            sock = connect(self.ferry.port, timeout=10)
            try:
                sock.sendall(request_bytes("POST", "/echo", host=HOST, body=body))
                sock.shutdown(socket.SHUT_WR)
                r = HttpReader(sock, timeout=10).read_response()
            finally:
                sock.close()
            self.assertEqual(r.status, 200, "size %d" % size)
            self.assertEqual((r.json()["body_len"], r.json()["body_sha256"]), (size, sha256(body)))

    def test_half_close_in_the_middle_of_a_body_is_not_forwarded(self):
        sock = connect(self.ferry.port, timeout=10)
        try:
            sock.sendall(request_bytes("POST", "/echo", host=HOST, headers=[("Content-Length", "10")]) + b"half")
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(10)
            data = sock.recv(4096)
        finally:
            sock.close()
        self.assertNotIn(b"200 OK", data)

    def test_post_empty_body(self):
        r = curl(self.url("/echo"), host=HOST, data=b"")
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.json()["body_len"], 0)

    def test_chunked_request_body_from_curl(self):
        body = pattern_bytes(500_000)
        r = curl(self.url("/upload"), host=HOST, data=body,
                 headers=[("Transfer-Encoding", "chunked"), ("Expect", "")])
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.json()["body_len"], len(body))
        self.assertEqual(r.json()["body_sha256"], sha256(body))

    def test_chunked_request_body_is_reframed(self):
        chunked = (b"5;ext=1\r\nhello\r\n"
                   b"6\r\n world\r\n"
                   b"0\r\nX-Trailer: t\r\n\r\n")
        data = request_bytes("POST", "/echo", host=HOST,
                             headers=[("Transfer-Encoding", "chunked")], body=chunked)
        (resp,) = exchange(self.ferry.port, data, 1)
        self.assertEqual(resp.status, 200, resp)
        info = resp.json()
        self.assertEqual(info["body_len"], 11)
        self.assertEqual(info["body_sha256"], sha256(b"hello world"))
        names = [k.lower() for k, _ in info["headers"]]
        framing = [h for h in names if h in ("content-length", "transfer-encoding")]
        self.assertEqual(len(framing), 1,
                         "upstream request must carry exactly one framing header: %r" % info["headers"])
        if framing == ["content-length"]:
            self.assertEqual([v for k, v in info["headers"] if k.lower() == "content-length"], ["11"])

    def test_request_bodies_on_one_keepalive_connection(self):
        first, second = pattern_bytes(70_000), b"second body"
        data = (request_bytes("POST", "/echo?n=1", host=HOST, body=first)
                + request_bytes("POST", "/echo?n=2", host=HOST,
                                headers=[("Transfer-Encoding", "chunked")],
                                body=b"b\r\nsecond body\r\n0\r\n\r\n")
                + request_bytes("GET", "/echo?n=3", host=HOST))
        r1, r2, r3 = exchange(self.ferry.port, data, 3, timeout=10)
        self.assertEqual([r1.status, r2.status, r3.status], [200, 200, 200])
        self.assertEqual(r1.json()["body_sha256"], sha256(first))
        self.assertEqual(r2.json()["body_sha256"], sha256(second))
        self.assertEqual((r3.json()["query"], r3.json()["body_len"]), ("n=3", 0))

    # -- response bodies ----------------------------------------------------------

    def test_response_framings_are_received_intact(self):
        n = (1 << 20) + 123
        for mode in ("cl", "chunked", "close"):
            with self.subTest(mode=mode):
                rc, status, got, digest, err = curl_download_sha(
                    self.url("/bytes?n=%d&mode=%s" % (n, mode)), host=HOST, timeout=20)
                self.assertEqual((rc, status), (0, 200), err)
                self.assertEqual(got, n)
                self.assertEqual(digest, pattern_sha256(n))

    def test_head_has_no_body(self):
        for mode in ("cl", "chunked"):
            with self.subTest(mode=mode):
                data = (request_bytes("HEAD", "/bytes?n=5000&mode=%s" % mode, host=HOST)
                        + request_bytes("GET", "/echo?after=head", host=HOST))
                head, after = exchange(self.ferry.port, data, 2, methods=["HEAD", "GET"])
                self.assertEqual(head.status, 200)
                self.assertEqual(head.body, b"")
                if mode == "cl":
                    self.assertIn(head.header("content-length"), (None, "5000"))
                # If ferry had sent a body after the HEAD response, it would be
                # read here in place of the next status line.
                self.assertEqual(after.status, 200, after)
                self.assertEqual(after.json()["query"], "after=head")

    def test_head_with_curl(self):
        r = curl(self.url("/bytes?n=5000"), host=HOST, method="HEAD", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertIn(r.header("content-length"), (None, "5000"))
        self.assertLess(r.elapsed, 5)

    def test_204_and_304_have_no_body(self):
        data = (request_bytes("GET", "/status?code=204", host=HOST)
                + request_bytes("GET", "/status?code=304", host=HOST)
                + request_bytes("GET", "/echo?after=304", host=HOST))
        r204, r304, after = exchange(self.ferry.port, data, 3)
        self.assertEqual((r204.status, r204.body), (204, b""))
        self.assertEqual((r304.status, r304.body), (304, b""))
        self.assertIsNone(r204.header("transfer-encoding"))
        self.assertEqual(after.status, 200, after)
        self.assertEqual(after.json()["query"], "after=304")

    def test_status_codes_are_passed_through(self):
        for code in (201, 404, 500, 503):
            with self.subTest(code=code):
                r = curl(self.url("/status?code=%d" % code), host=HOST, timeout=10)
                self.assertEqual((r.rc, r.status, r.body), (0, code, b"status %d\n" % code))

    # -- Expect: 100-continue -----------------------------------------------------

    def test_expect_100_continue_upload_with_curl(self):
        body = pattern_bytes(2 << 20)
        r = curl(self.url("/upload"), host=HOST, data=body,
                 headers=[("Expect", "100-continue")], timeout=20)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.json()["body_len"], len(body))
        self.assertEqual(r.json()["body_sha256"], sha256(body))

    def test_expect_100_continue_is_answered_promptly(self):
        """The client must get `100 Continue` without waiting out its own timer."""
        body = b"x" * 10_000
        sock = connect(self.ferry.port, timeout=5)
        try:
            sock.sendall(request_bytes("POST", "/upload", host=HOST, headers=[
                ("Content-Length", str(len(body))), ("Expect", "100-continue")]))
            reader = HttpReader(sock, timeout=5)
            try:
                interim = reader.read_head(time.monotonic() + 3)
            except socket.timeout:
                self.fail("no 100 Continue within 3 s of sending Expect: 100-continue")
            self.assertEqual(interim.status, 100, "expected 100 Continue, got %r" % interim)
            sock.sendall(body)
            final = reader.read_response()
        finally:
            sock.close()
        self.assertEqual(final.status, 200, final)
        self.assertEqual(final.json()["body_sha256"], sha256(body))


if __name__ == "__main__":
    unittest.main()
