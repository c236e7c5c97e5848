"""`tcp` listeners (docs/config.md "listeners"): route_stream(conn) on the
TLS SNI peeked without terminating TLS, bytes moved with splice(2), a
1 GiB transfer compared byte for byte, half-close, and a refusal."""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from .harness import E2ECase, connect, free_port, wait_until

CONFIG = """
return {
  listeners = { { name = "pass", type = "tcp", address = "$listen" } },
  upstreams = {
    sink = { servers = { "$sink" } },
    a = { servers = { "127.0.0.1:$aport" } },
    b = { servers = { "127.0.0.1:$bport" } },
  },
  policy = "$policy",
}
"""

POLICY = r"""
local ferry = require "ferry"
return {
  route_stream = function(conn)
    ferry.log.info("route_stream sni", tostring(conn.sni), "client", conn.client_addr, "port", conn.local_port)
    if conn.sni == "a.test" then return "a" end
    if conn.sni == "b.test" then return "b" end
    if conn.sni == "refused.test" then return nil end
    if conn.sni == nil then return "sink" end
    return nil
  end,
}
"""


class Sink:
    """Reads a connection to its end, then answers with the length and
    sha256 of what it got, and closes: proves half-close both ways."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        h, n = hashlib.sha256(), 0
        conn.settimeout(60)
        try:
            while True:
                data = conn.recv(1 << 20)
                if not data:
                    break
                h.update(data)
                n += len(data)
            conn.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
        finally:
            conn.close()

    def stop(self):
        self.sock.close()


def tls_server(dir, name, port):
    key, crt = os.path.join(dir, name + ".key"), os.path.join(dir, name + ".crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
                    "-subj", "/CN=" + name, "-days", "1"], check=True, capture_output=True)
    return subprocess.Popen(["openssl", "s_server", "-accept", str(port), "-cert", crt, "-key", key, "-www",
                             "-quiet"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


class StreamTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="ferry-e2e-tls-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.sink = Sink()
        cls.addClassCleanup(cls.sink.stop)
        cls.aport, cls.bport = free_port(), free_port()
        cls.servers = [tls_server(cls.dir, "a.test", cls.aport), tls_server(cls.dir, "b.test", cls.bport)]
        for p in cls.servers:
            cls.addClassCleanup(p.wait, 5)
            cls.addClassCleanup(p.terminate)
        from .harness import port_accepts
        for port in (cls.aport, cls.bport):
            assert wait_until(lambda: port_accepts(port), 10), "openssl s_server did not start"
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, sink=cls.sink.addr, aport=cls.aport, bport=cls.bport)

    def test_one_gib_spliced_byte_for_byte(self):
        size, block = 1 << 30, os.urandom(1 << 20)
        expect = hashlib.sha256()
        sock = connect(self.ferry.port, timeout=60)
        start = time.monotonic()
        try:
            for _ in range(size // len(block)):
                sock.sendall(block)
                expect.update(block)
            sock.shutdown(socket.SHUT_WR)  # half-close: the sink answers after our end
            reply = b""
            while not reply.endswith(b"\n"):
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        finally:
            sock.close()
        took = time.monotonic() - start
        self.assertEqual(reply, b"%d %s\n" % (size, expect.hexdigest().encode()))
        sys.stderr.write("\n  1 GiB through the tcp listener in %.2f s (%.0f MB/s, client and sink in Python)\n"
                         % (took, size / took / 1e6))
        self.assertIsNotNone(self.ferry.wait_log(r"stream \d+ .* done, 1073741824 bytes up, 76 down"))

    def sclient(self, name):
        done = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % self.ferry.port,
                               "-servername", name], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=20)
        return done.stdout + done.stderr

    def test_sni_routes_to_the_right_tls_upstream(self):
        for name in ("a.test", "b.test", "a.test"):
            out = self.sclient(name)
            self.assertRegex(out, r"subject=CN\s*=\s*%s" % name.replace(".", r"\."), out[-800:])
        self.assertIsNotNone(self.ferry.wait_log(r"route_stream sni b\.test client 127\.0\.0\.1"))

    def test_route_stream_nil_closes(self):
        out = self.sclient("refused.test")
        self.assertNotRegex(out, r"subject=CN")
        self.assertIsNotNone(self.ferry.wait_log(r"sni=refused\.test -> -: the policy refused it"))


if __name__ == "__main__":
    unittest.main()


PP_CONFIG = """
return {
  listeners = { { name = "pass", type = "tcp", address = "$listen",
                  proxy_protocol = { trusted = { "127.0.0.0/8" } } } },
  upstreams = { sink = { servers = { "$sink" } } },
  policy = "$policy",
}
"""

PP_POLICY = r"""
local ferry = require "ferry"
return {
  route_stream = function(conn)
    ferry.log.info("route_stream client", conn.client_addr, conn.client_port, "vpce",
                   tostring(conn.proxy and conn.proxy.vpce_id))
    return "sink"
  end,
}
"""


class StreamProxyProtocolTest(E2ECase):
    def test_proxy_header_is_read_and_not_forwarded(self):
        sink = Sink()
        self.addCleanup(sink.stop)
        ferry = self.start_ferry(PP_CONFIG, PP_POLICY, sink=sink.addr)
        payload = b"plain bytes, not TLS\n" * 1000
        sock = connect(ferry.port, timeout=10)
        try:
            sock.sendall(b"PROXY TCP4 10.7.7.7 10.0.0.1 41000 443\r\n" + payload)
            sock.shutdown(socket.SHUT_WR)
            reply = b""
            while not reply.endswith(b"\n"):
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        finally:
            sock.close()
        # the sink got exactly the payload: the PROXY header stopped at ferry
        self.assertEqual(reply, b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode()))
        self.assertIsNotNone(ferry.wait_log(r"route_stream client 10\.7\.7\.7 41000 vpce nil"))
