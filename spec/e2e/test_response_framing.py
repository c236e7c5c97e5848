"""Upstream answers whose framing lies (found by fuzz_response, kept here as
regressions): 1xx, 204 and 304 never carry a body whatever their headers
say, so bytes after them can never reach the client as an extra response
(they are junk where the next status line must be: 502); a status below
100 is not HTTP and gets 502."""

import socket
import threading
import time
import unittest

from .harness import E2ECase, HttpReader, connect, free_port, request_bytes

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { raw = { servers = { "127.0.0.1:$raw" }, retry = { tries = 1 }, timeouts = { read = 5 } } },
  policy = "$policy",
}
"""

POLICY = 'return { route = function(req) return "raw" end }'

# path -> the exact bytes the upstream answers with
ANSWERS = {
    "/204-with-length": b"HTTP/1.1 204 No Content\r\nContent-Length: 42\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil",
    "/204-chunked": b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2f\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil\r\n0\r\n\r\n",
    "/304-with-length": b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n",
    "/1xx-with-body": b"HTTP/1.1 103 Early Hints\r\nContent-Length: 4\r\n\r\nevil"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "/status-99": b"HTTP/1.1 099 Odd\r\nContent-Length: 4\r\n\r\nevil",
    "/plain": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nplain",
    "/empty-name": b"HTTP/1.1 200 OK\r\n: x\r\nContent-Length: 2\r\n\r\nok",
    "/cut-later": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", b"zz\r\n"),
    "/cut-in-trailers": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                         b"0\r\nX-Trailer: 1\r\n", "close"),
    "/bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nevil\r\n0\r\n\r\n",
}


class RawUpstream:
    """Answers each request with ANSWERS[path], then waits for the next."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def stop(self):
        self.stopping = True
        self.thread.join(5)
        self.sock.close()

    def serve(self):
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        conn.settimeout(10)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                path = head.split(b" ")[1].decode()
                answer = ANSWERS[path]
                if isinstance(answer, tuple):  # in two reads: the head goes out before the break
                    conn.sendall(answer[0])
                    time.sleep(0.3)
                    conn.sendall(answer[1])
                    if answer[2:] == ("close",):
                        return
                    continue
                conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()


class ResponseFramingTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.raw = RawUpstream()
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, raw=cls.raw.port)

    @classmethod
    def tearDownClass(cls):
        cls.raw.stop()
        super().tearDownClass()

    def two_requests(self, first, second="/plain"):
        """Both on one client connection: the second answer must be the second upstream's."""
        sock = connect(self.ferry.port, timeout=10)
        try:
            reader = HttpReader(sock, timeout=10)
            sock.sendall(request_bytes("GET", first, host="a.test"))
            r1 = reader.read_response()
            sock.sendall(request_bytes("GET", second, host="a.test"))
            r2 = reader.read_response()
            return r1, r2
        finally:
            sock.close()

    def test_204_with_content_length_injects_nothing(self):
        r1, r2 = self.two_requests("/204-with-length")
        self.assertEqual((r1.status, r1.body), (204, b""))
        self.assertEqual((r2.status, r2.body), (200, b"plain"), "the upstream's extra bytes reached the client")

    def test_204_chunked_injects_nothing(self):
        r1, r2 = self.two_requests("/204-chunked")
        self.assertEqual((r1.status, r1.body), (204, b""))
        self.assertEqual((r2.status, r2.body), (200, b"plain"))

    def test_304_with_content_length_is_answered_at_once(self):
        start = time.monotonic()
        r1, r2 = self.two_requests("/304-with-length")
        self.assertLess(time.monotonic() - start, 3, "ferry waited for a body a 304 never has")
        self.assertEqual((r1.status, r1.body, r1.header("etag")), (304, b"", '"x"'))
        self.assertEqual((r2.status, r2.body), (200, b"plain"))

    def test_interim_response_body_is_not_relayed(self):
        # A 1xx ends at its blank line: "evil" is then where a status line must be, so the answer is 502.
        r1, r2 = self.two_requests("/1xx-with-body")
        self.assertEqual(r1.status, 502)
        self.assertNotIn(b"evil", r1.body)
        self.assertEqual((r2.status, r2.body), (200, b"plain"))

    def test_a_head_and_broken_framing_in_one_read_get_502(self):
        # Nothing had gone out to the client yet: it gets a clean 502, not a cut connection.
        sock = connect(self.ferry.port, timeout=10)
        try:
            sock.sendall(request_bytes("GET", "/bad-chunk", host="a.test"))
            r = HttpReader(sock, timeout=10).read_response()
        finally:
            sock.close()
        self.assertEqual(r.status, 502)
        self.assertNotIn(b"evil", r.body)

    def test_an_empty_header_name_is_502(self):
        # Found by fuzz_response: ferry indexed the header list before its first entry.
        r1, r2 = self.two_requests("/empty-name")
        self.assertEqual(r1.status, 502)
        self.assertEqual((r2.status, r2.body), (200, b"plain"))

    def test_a_cut_close_delimited_body_ends_with_a_reset(self):
        # An HTTP/1.0 client's body ends at the close: a FIN would make a cut answer look complete.
        sock = connect(self.ferry.port, timeout=10)
        data = b""
        try:
            sock.sendall(b"GET /cut-later HTTP/1.0\r\nHost: a.test\r\n\r\n")
            with self.assertRaises(ConnectionResetError):
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        finally:
            sock.close()
        self.assertIn(b"hello", data)  # what had gone out before the break

    def test_a_close_in_the_middle_of_trailers_cuts_at_once(self):
        # Found by fuzz_response: ferry waited for the read timeout, the client hung meanwhile.
        sock = connect(self.ferry.port, timeout=10)
        start = time.monotonic()
        try:
            sock.sendall(request_bytes("GET", "/cut-in-trailers", host="a.test"))
            data = b""
            try:
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
        finally:
            sock.close()
        self.assertLess(time.monotonic() - start, 3, "the client waited for the upstream read timeout")
        self.assertNotIn(b"0\r\n\r\n", data, "the cut answer was made to look complete")

    def test_status_below_100_is_502(self):
        r1, r2 = self.two_requests("/status-99")
        self.assertEqual(r1.status, 502)
        self.assertNotIn(b"evil", r1.body)
        self.assertEqual((r2.status, r2.body), (200, b"plain"))


if __name__ == "__main__":
    unittest.main()
