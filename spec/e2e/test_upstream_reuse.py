"""Large request bodies keep their pooled upstream connection: many 256 KiB
POSTs over one keep-alive client connection reach the upstream over one
upstream connection, whatever the body's framing (Content-Length, chunked,
Expect: 100-continue) and however the client writes it (one write, or in
small pieces). The upstream counts the connections it accepted."""

import time
import unittest

from .harness import CATCH_ALL_POLICY, E2ECase, HttpReader, connect, pattern_bytes, request_bytes, sha256

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" }, keepalive = { max_idle = 4 } } },
  policy = "$policy",
}
"""

HOST = "reuse.test"
N = 12
SIZE = 256 * 1024


def chunked(body, piece=65536):
    out = b""
    for i in range(0, len(body), piece):
        part = body[i:i + piece]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


class UpstreamReuseTest(E2ECase):
    def setUp(self):
        # A fresh pair per test: a pooled connection left by another test
        # would hide a new one.
        self.up = self.start_upstream("default")
        self.ferry = self.start_ferry(CONFIG, CATCH_ALL_POLICY, up=self.up.addr)
        self.up.clear()  # the start-up probes' connections are not the test's

    def post_many(self, make, piece=None, expect=False):
        body = pattern_bytes(SIZE)
        sock = connect(self.ferry.port, timeout=10)
        conn_ids = set()
        try:
            reader = HttpReader(sock, timeout=10)
            for i in range(N):
                head, payload = make(i, body)
                if expect:
                    sock.sendall(head)
                    interim = reader.read_head(time.monotonic() + 10)
                    self.assertEqual(interim.status, 100, interim)
                    data = payload
                else:
                    data = head + payload
                if piece:
                    for k in range(0, len(data), piece):
                        sock.sendall(data[k:k + piece])
                else:
                    sock.sendall(data)
                r = reader.read_response()
                self.assertEqual(r.status, 200, "request %d: %r" % (i, r))
                info = r.json()
                self.assertEqual((info["body_len"], info["body_sha256"]), (SIZE, sha256(body)), "request %d" % i)
                conn_ids.add(info["conn_id"])
        finally:
            sock.close()
        journal = self.up.journal()
        self.assertEqual(journal["connections"], 1,
                         "%d large POSTs over one client connection opened %d upstream connections"
                         % (N, journal["connections"]))
        self.assertEqual(len(conn_ids), 1)
        self.assertEqual(len({r["conn"] for r in journal["requests"]}), 1)

    def test_content_length_bodies_in_one_write(self):
        def make(i, body):
            return request_bytes("POST", "/echo?i=%d" % i, host=HOST, headers=[("Content-Length", str(len(body)))]), body
        self.post_many(make)

    def test_content_length_bodies_in_small_writes(self):
        def make(i, body):
            return request_bytes("POST", "/echo?i=%d" % i, host=HOST, headers=[("Content-Length", str(len(body)))]), body
        self.post_many(make, piece=16384)

    def test_chunked_bodies(self):
        def make(i, body):
            return (request_bytes("POST", "/echo?i=%d" % i, host=HOST, headers=[("Transfer-Encoding", "chunked")]),
                    chunked(body))
        self.post_many(make, piece=40000)

    def test_expect_100_continue_bodies(self):
        def make(i, body):
            return (request_bytes("POST", "/echo?i=%d" % i, host=HOST,
                                  headers=[("Content-Length", str(len(body))), ("Expect", "100-continue")]), body)
        self.post_many(make, expect=True)


if __name__ == "__main__":
    unittest.main()
