"""PROXY protocol on http listeners (docs/config.md "listeners"): v1 and v2
from trusted networks, the AWS VPC endpoint id visible to the policy as
req.proxy.vpce_id, LOCAL health checks, and refusals: an untrusted source,
a malformed or truncated header."""

import socket
import struct
import unittest

from .harness import E2ECase, HttpReader, connect, read_until_close, request_bytes

CONFIG = """
return {
  listeners = {
    { name = "nlb", type = "http", address = "$listen", proxy_protocol = { trusted = { "$trusted" } } },
  },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  limits = { header_timeout = 2 },
}
"""

# The seed's cross-account allowlist: only these endpoints may push data.
POLICY = r"""
local allowed = { ["vpce-0123456789abcdef0"] = true }
return {
  route = function(req)
    local p = req.proxy
    if req.path == "/whoami" then
      return req:respond(200, string.format("v%s local=%s src=%s:%s dst=%s:%s vpce=%s client=%s\n",
        p.version, tostring(p["local"]), tostring(p.source), tostring(p.source_port),
        tostring(p.destination), tostring(p.destination_port), tostring(p.vpce_id), req.client_addr))
    end
    if p.vpce_id and not allowed[p.vpce_id] then
      return req:respond(403, "endpoint " .. p.vpce_id .. " is not allowed\n")
    end
    return "default"
  end,
}
"""

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(src="10.1.2.3", dst="10.0.0.1", sport=5555, dport=80, vpce=None, command=0x21):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    if vpce is not None:
        value = b"\x01" + vpce.encode()
        body += struct.pack("!BH", 0xEA, len(value)) + value
    fam = 0x11 if command == 0x21 else 0x00
    if command == 0x20:
        body = b""
    return SIG + bytes([command, fam]) + struct.pack("!H", len(body)) + body


class ProxyProtocolTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, up=cls.up.addr, trusted="127.0.0.0/8")

    def exchange(self, prefix, path="/whoami"):
        sock = connect(self.ferry.port, timeout=5)
        try:
            sock.sendall(prefix + request_bytes("GET", path, host="metrics.observability.internal"))
            return HttpReader(sock, timeout=5).read_response()
        finally:
            sock.close()

    def test_v1_sets_the_client_address(self):
        r = self.exchange(b"PROXY TCP4 10.9.8.7 10.0.0.1 40000 80\r\n")
        self.assertEqual(r.status, 200)
        self.assertIn(b"v1 local=false src=10.9.8.7:40000 dst=10.0.0.1:80 vpce=nil client=10.9.8.7", r.body)

    def test_v2_with_the_aws_endpoint_id(self):
        r = self.exchange(v2(vpce="vpce-0123456789abcdef0"))
        self.assertEqual(r.status, 200)
        self.assertIn(b"v2 local=false src=10.1.2.3:5555 dst=10.0.0.1:80 vpce=vpce-0123456789abcdef0", r.body)
        # forwarded: the upstream sees the real client in X-Forwarded-For
        r = self.exchange(v2(src="10.4.4.4", vpce="vpce-0123456789abcdef0"), path="/echo")
        self.assertEqual(r.status, 200)
        headers = dict((k.lower(), v) for k, v in r.json()["headers"])
        self.assertEqual(headers["x-forwarded-for"], "10.4.4.4")

    def test_endpoint_allowlist(self):
        r = self.exchange(v2(vpce="vpce-00000000000000bad"), path="/echo")
        self.assertEqual(r.status, 403)
        self.assertIn(b"vpce-00000000000000bad is not allowed", r.body)

    def test_v2_local_uses_the_socket_address(self):
        r = self.exchange(v2(command=0x20))
        self.assertEqual(r.status, 200)
        self.assertIn(b"v2 local=true src=nil:nil", r.body)
        self.assertIn(b"client=127.0.0.1", r.body)

    def assertClosedWithoutAnswer(self, data):
        sock = connect(self.ferry.port, timeout=5)
        try:
            sock.sendall(data)
            reply, closed, _ = read_until_close(sock, 4.0)
        finally:
            sock.close()
        self.assertTrue(closed, "ferry kept the connection open")
        self.assertFalse(reply.startswith(b"HTTP/1.1 200"), reply[:100])
        self.assertEqual(self.up.journal()["requests"], [], "a request got through")

    def test_malformed_headers_close_the_connection(self):
        self.up.clear()
        self.assertClosedWithoutAnswer(b"PROXY TCP4 10.9.8.7 10.0.0.1 99999 80\r\n" +
                                       request_bytes("GET", "/echo", host="x"))
        self.assertClosedWithoutAnswer(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")  # no header at all
        self.assertClosedWithoutAnswer(SIG + b"\x21\x11\xff\xff" + b"\x00" * 20)  # declared length too big
        self.assertClosedWithoutAnswer(v2()[:20])  # truncated: the header timeout ends it


class UntrustedSourceTest(E2ECase):
    def test_a_source_outside_trusted_is_refused(self):
        up = self.start_upstream("default")
        ferry = self.start_ferry(CONFIG, POLICY, up=up.addr, trusted="10.0.0.0/8")
        sock = connect(ferry.port, timeout=5)
        try:
            sock.sendall(b"PROXY TCP4 10.9.8.7 10.0.0.1 40000 80\r\n" + request_bytes("GET", "/echo", host="x"))
            reply, closed, _ = read_until_close(sock, 3.0)
        finally:
            sock.close()
        self.assertTrue(closed)
        self.assertEqual(reply, b"")
        self.assertIsNotNone(ferry.wait_log(r"not in proxy_protocol\.trusted"))
        self.assertEqual(up.journal()["requests"], [])


if __name__ == "__main__":
    unittest.main()
