"""PROXY protocol sent to upstream groups (docs/config.md, `proxy_protocol`
of a group): the client's address as ferry knows it, the AWS endpoint id
passed on, one header per connection and no pooling, and LOCAL headers on
active health checks."""

import socket
import struct
import threading
import time
import unittest

from .harness import E2ECase, HttpReader, connect, free_port, request_bytes, wait_until

SIG = b"\r\n\r\n\x00\r\nQUIT\n"

CONFIG = """
return {
  listeners = {
    { name = "nlb", type = "http", address = "$listen", proxy_protocol = { trusted = { "127.0.0.0/8" } } },
    { name = "plain", type = "http", address = "127.0.0.1:$plain" },
  },
  upstreams = {
    v2 = { servers = { "127.0.0.1:$up" }, proxy_protocol = "v2" },
    v1 = { servers = { "127.0.0.1:$up" }, proxy_protocol = "v1" },
    checked = { servers = { "127.0.0.1:$checked" }, proxy_protocol = "v2",
                health = { check = { interval = 0.2, timeout = 1 } } },
  },
  policy = "$policy",
}
"""

POLICY = """
return { route = function(req) return req.headers:get("x-group") or "v2" end }
"""


class ProxyReader:
    """A loopback upstream that records the PROXY header of each connection
    and answers every request on it with 200, keeping the connection open."""

    def __init__(self):
        self.port = free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.headers = []  # one entry per connection: the parsed PROXY header
        self.requests = 0
        self.lock = threading.Lock()
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

    @staticmethod
    def read_exact(conn, n, buf):
        while len(buf) < n:
            chunk = conn.recv(4096)
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def parse_header(self, conn):
        buf = self.read_exact(conn, 16, b"")
        if buf.startswith(b"PROXY "):
            while b"\r\n" not in buf:
                buf = self.read_exact(conn, len(buf) + 1, buf)
            line, rest = buf.split(b"\r\n", 1)
            return {"version": 1, "line": line.decode()}, rest
        if not buf.startswith(SIG):
            return {"version": 0, "raw": buf}, buf
        cmd, fam, length = buf[12], buf[13], struct.unpack("!H", buf[14:16])[0]
        buf = self.read_exact(conn, 16 + length, buf)
        body, rest = buf[16:16 + length], buf[16 + length:]
        h = {"version": 2, "local": cmd == 0x20, "family": fam}
        tlvs = b""
        if fam == 0x11:
            h["src"] = "%s:%d" % (socket.inet_ntoa(body[0:4]), struct.unpack("!H", body[8:10])[0])
            h["dst"] = "%s:%d" % (socket.inet_ntoa(body[4:8]), struct.unpack("!H", body[10:12])[0])
            tlvs = body[12:]
        while len(tlvs) >= 3:
            t, n = tlvs[0], struct.unpack("!H", tlvs[1:3])[0]
            if t == 0xEA and tlvs[3] == 0x01:
                h["vpce"] = tlvs[4:3 + n].decode()
            tlvs = tlvs[3 + n:]
        return h, rest

    def handle(self, conn):
        conn.settimeout(5)
        try:
            header, buf = self.parse_header(conn)
            with self.lock:
                self.headers.append(header)
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                _, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests += 1
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


def v2_header(src="10.1.2.3", dst="10.0.0.1", sport=5555, dport=443, vpce=None):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    if vpce:
        value = b"\x01" + vpce.encode()
        body += struct.pack("!BH", 0xEA, len(value)) + value
    return SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class ProxyToUpstreamTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = ProxyReader()
        cls.checked = ProxyReader()
        cls.plain_port = free_port()
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, up=cls.up.port, checked=cls.checked.port,
                                        plain=cls.plain_port)

    @classmethod
    def tearDownClass(cls):
        cls.up.stop()
        cls.checked.stop()
        super().tearDownClass()

    def setUp(self):
        with self.up.lock:
            self.up.headers.clear()
            self.up.requests = 0

    def exchange(self, port, prefix=b"", group="v2", n=1):
        sock = connect(port, timeout=5)
        try:
            sock.sendall(prefix)
            reader = HttpReader(sock, timeout=5)
            statuses = []
            for _ in range(n):
                sock.sendall(request_bytes("GET", "/", host="metrics.observability.internal",
                                           headers=[("X-Group", group)]))
                statuses.append(reader.read_response().status)
            return statuses
        finally:
            sock.close()

    def test_v2_passes_on_the_client_and_the_endpoint_id(self):
        self.assertEqual(self.exchange(self.ferry.port, v2_header(vpce="vpce-0123456789abcdef0")), [200])
        self.assertEqual(self.up.headers, [{"version": 2, "local": False, "family": 0x11, "src": "10.1.2.3:5555",
                                            "dst": "10.0.0.1:443", "vpce": "vpce-0123456789abcdef0"}])

    def test_v2_without_a_received_header_names_the_socket_peer(self):
        sock = connect(self.plain_port, timeout=5)
        try:
            sport = sock.getsockname()[1]
            sock.sendall(request_bytes("GET", "/", host="m", headers=[("X-Group", "v2")]))
            self.assertEqual(HttpReader(sock, timeout=5).read_response().status, 200)
        finally:
            sock.close()
        [h] = self.up.headers
        self.assertEqual((h["src"], h["dst"], "vpce" in h), ("127.0.0.1:%d" % sport,
                                                               "127.0.0.1:%d" % self.plain_port, False))

    def test_v1_line(self):
        prefix = b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\n"
        self.assertEqual(self.exchange(self.ferry.port, prefix, group="v1"), [200])
        self.assertEqual(self.up.headers, [{"version": 1, "line": "PROXY TCP4 192.0.2.7 198.51.100.1 40000 443"}])

    def test_each_request_gets_its_own_connection(self):
        # A connection that announced one client must never carry another's request.
        self.assertEqual(self.exchange(self.ferry.port, v2_header(src="10.9.9.9"), n=3), [200, 200, 200])
        self.assertEqual(self.exchange(self.ferry.port, v2_header(src="10.8.8.8"), n=1), [200])
        self.assertTrue(wait_until(lambda: self.up.requests == 4, 3))
        self.assertEqual([h["src"].split(":")[0] for h in self.up.headers],
                         ["10.9.9.9"] * 3 + ["10.8.8.8"])

    def test_health_checks_send_local(self):
        self.assertTrue(wait_until(lambda: len(self.checked.headers) >= 2, 5), self.checked.headers)
        for h in self.checked.headers[:2]:
            self.assertEqual((h["version"], h["local"]), (2, True))


if __name__ == "__main__":
    unittest.main()
