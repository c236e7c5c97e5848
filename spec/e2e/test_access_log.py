"""The access log (`log.access`, docs/operations.md "Access log"): JSON lines
with every documented field for a proxied, a retried, a refused, a cut and a
PROXY-protocol request; fields added by the policy; SIGUSR1 rotation under
load losing no line; a blocked log file (a FIFO nobody reads) that slows no
request, its lines dropped and counted."""

import http.client
import json
import os
import signal
import socket
import threading
import time
import unittest
import urllib.request

from .harness import (E2ECase, Ferry, HttpReader, connect, curl, curl_many, free_port, port_accepts,
                      request_bytes, send_raw, wait_until)
from .test_proxy_protocol import v2
from .certs import pki
from .test_tls import tls_connect, tls_get

CONFIG = """
return {
  listeners = {
    { name = "edge", type = "http", address = "$listen" },
    { name = "nlb", type = "http", address = "127.0.0.1:$pp_port", proxy_protocol = { trusted = { "127.0.0.0/8" } } },
  },
  upstreams = {
    metrics = { servers = { "$live" } },
    flaky = { servers = { "127.0.0.1:$dead", "$live" }, retry = { tries = 2, backoff = 0 } },
  },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = { format = "json", file = "$log_file" $buffer } },
}
"""

POLICY = """
return {
  route = function(req)
    req:log_field("route_seen", true)
    if req.host == "a.test" then return "metrics" end
    if req.host == "flaky.test" then return "flaky" end
    return req:respond(421, "unknown host\\n")
  end,
  -- The first attempt of flaky goes to the server that refuses connections.
  select = function(req, group, attempt)
    if group.name == "flaky" and attempt == 1 then
      for _, s in ipairs(group.servers) do
        if s.address == "127.0.0.1:$dead" then return s end
      end
    end
    return nil
  end,
  log = function(req, res)
    req:log_field("tenant", req.headers:get("x-tenant") or "none")
    req:log_field("answer", res.status)
  end,
}
"""

FIELDS = ["time", "request_id", "listener", "client_addr", "client_port", "peer_addr", "proxy_source",
          "vpce_id", "tls_sni", "tls_version", "method", "host", "path", "query", "status", "bytes_in",
          "bytes_out", "group", "server", "attempts", "failures", "upstream_connect_ms",
          "upstream_header_ms", "duration_ms", "policy_ms", "termination", "fields"]


def read_lines(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.decode().splitlines()]


class AccessLogFieldsTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("live")
        cls.pp_port = free_port()
        cls.admin = free_port()
        cls.ferry = Ferry(CONFIG, POLICY, live=cls.up.addr, dead=free_port(), pp_port=cls.pp_port,
                          admin="127.0.0.1:%d" % cls.admin, log_file="$dir/access.log", buffer="")
        cls.ferry.config_template = cls.ferry.config_template.replace("$log_file", "access.log")
        cls.addClassCleanup(cls.ferry.stop)
        cls.ferry.start()
        cls.ferry_for_logs = cls.ferry
        cls.log_path = os.path.join(cls.ferry.dir, "access.log")
        assert wait_until(lambda: port_accepts(cls.pp_port), 5)

    def line(self, pred, what):
        found = wait_until(lambda: [l for l in read_lines(self.log_path) if pred(l)], 5)
        self.assertTrue(found, "no access line for %s in:\n%s" % (what, read_lines(self.log_path)))
        self.assertEqual(len(found), 1, found)
        line = found[0]
        self.assertEqual(list(line.keys()), FIELDS, "field names or order changed")
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertIsInstance(line["request_id"], int)
        self.assertIsInstance(line["duration_ms"], float)
        self.assertGreaterEqual(line["duration_ms"], line["policy_ms"])
        self.assertGreater(line["policy_ms"], 0)
        self.assertTrue(line["fields"]["route_seen"])
        return line

    def test_proxied_request(self):
        r = curl(self.ferry.url("/echo?q=1"), host="a.test", headers=[("X-Tenant", "t-1")],
                 method="POST", data=b"x" * 1000)
        self.assertEqual(r.status, 200, r)
        l = self.line(lambda l: l["fields"].get("tenant") == "t-1", "the proxied request")
        self.assertEqual((l["listener"], l["client_addr"], l["method"], l["host"], l["path"], l["query"]),
                         ("edge", "127.0.0.1", "POST", "a.test", "/echo", "q=1"))
        self.assertIsInstance(l["client_port"], int)
        self.assertEqual((l["peer_addr"], l["proxy_source"], l["vpce_id"], l["tls_sni"], l["tls_version"]),
                         (None,) * 5)
        self.assertEqual((l["status"], l["bytes_in"], l["group"], l["server"], l["attempts"], l["failures"]),
                         (200, 1000, "metrics", self.up.addr, 1, []))
        self.assertGreater(l["bytes_out"], len(r.body))
        self.assertIsInstance(l["upstream_header_ms"], float)
        self.assertLessEqual(l["upstream_header_ms"], l["duration_ms"])
        self.assertTrue(l["upstream_connect_ms"] is None or l["upstream_connect_ms"] <= l["duration_ms"])
        self.assertEqual(l["termination"], "ok")
        self.assertEqual(l["fields"], {"route_seen": True, "tenant": "t-1", "answer": 200})

    def test_retried_request(self):
        r = curl(self.ferry.url("/echo"), host="flaky.test", headers=[("X-Tenant", "t-retry")])
        self.assertEqual(r.status, 200, r)
        l = self.line(lambda l: l["fields"].get("tenant") == "t-retry", "the retried request")
        self.assertEqual((l["group"], l["server"], l["attempts"], l["failures"], l["termination"]),
                         ("flaky", self.up.addr, 2, ["connect_refused"], "ok"))
        self.assertIsInstance(l["upstream_connect_ms"], float)  # the second attempt's new connection

    def test_refused_requests(self):
        r = curl(self.ferry.url("/x"), host="nope.test", headers=[("X-Tenant", "t-421")])
        self.assertEqual(r.status, 421)
        l = self.line(lambda l: l["fields"].get("tenant") == "t-421", "the request the policy answered")
        self.assertEqual((l["status"], l["group"], l["server"], l["attempts"], l["termination"]),
                         (421, None, None, 0, "answered"))
        self.assertIsNone(l["upstream_header_ms"])
        # Two Host headers: ferry refuses it before any policy runs (so no route_seen).
        reply = send_raw(self.ferry.port, b"GET /twohosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        self.assertEqual(reply.status, 400)
        found = wait_until(lambda: [l for l in read_lines(self.log_path) if l["status"] == 400], 5)
        self.assertTrue(found)
        self.assertEqual((found[0]["termination"], found[0]["group"], found[0]["fields"]),
                         ("refused", None, {}))

    def test_cut_response(self):
        sock = connect(self.ferry.port)
        try:
            sock.sendall(request_bytes("GET", "/abort?after=100", host="a.test", headers=[("X-Tenant", "t-cut")]))
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        l = self.line(lambda l: l["fields"].get("tenant") == "t-cut", "the cut response")
        self.assertEqual((l["status"], l["group"], l["termination"]), (200, "metrics", "upstream_cut"))
        self.assertGreater(l["bytes_out"], 100)
        self.assertEqual(l["failures"], ["reset"])

    def test_proxy_protocol_fields(self):
        sock = connect(self.pp_port)
        try:
            sock.sendall(v2(src="10.1.2.3", sport=5555, vpce="vpce-0123456789abcdef0")
                         + request_bytes("GET", "/echo", host="a.test", headers=[("X-Tenant", "t-pp")]))
            self.assertEqual(HttpReader(sock, timeout=5).read_response().status, 200)
            local_port = sock.getsockname()[1]
        finally:
            sock.close()
        l = self.line(lambda l: l["fields"].get("tenant") == "t-pp", "the PROXY protocol request")
        self.assertEqual((l["listener"], l["client_addr"], l["client_port"], l["proxy_source"], l["vpce_id"]),
                         ("nlb", "10.1.2.3", 5555, "10.1.2.3:5555", "vpce-0123456789abcdef0"))
        self.assertEqual(l["peer_addr"], "127.0.0.1:%d" % local_port)


ROTATE_CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$live" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = { format = "$format", file = "$log" $buffer } },
}
"""

ROUTE_ALL = """
return { route = function(req) return "metrics" end }
"""


class Load:
    """Threads sending keep-alive requests until stopped (at most `each` each); statuses counted."""

    def __init__(self, port, threads=4, each=5000):
        self.port, self.each = port, each
        self.ok, self.failures = 0, []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for _ in range(self.each):
                if self.stopping.is_set():
                    break
                try:
                    conn.request("GET", "/echo", headers={"Host": "a.test"})
                    resp = conn.getresponse()
                    resp.read()
                    with self.lock:
                        if resp.status == 200:
                            self.ok += 1
                        else:
                            self.failures.append(resp.status)
                except (OSError, http.client.HTTPException) as e:
                    with self.lock:
                        self.failures.append(repr(e))
                    conn.close()
        finally:
            conn.close()

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)


def edge_lines(paths):
    n = 0
    for p in paths:
        try:
            with open(p) as f:
                n += sum(1 for line in f if '"listener":"edge"' in line)
        except FileNotFoundError:
            pass
    return n


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
        return resp.read().decode()


def dropped(text, reason):
    for line in text.splitlines():
        if line.startswith('ferry_access_log_dropped_total{reason="%s"} ' % reason):
            return int(line.split()[-1])
    raise AssertionError("no ferry_access_log_dropped_total{reason=%s} in /metrics" % reason)


class RotationTest(E2ECase):
    def test_sigusr1_under_load_loses_no_line(self):
        up = self.start_upstream("live")
        admin = free_port()
        ferry = self.start_ferry(ROTATE_CONFIG, ROUTE_ALL, live=up.addr, admin="127.0.0.1:%d" % admin,
                                 format="json", log="access.log", buffer="")
        path = os.path.join(ferry.dir, "access.log")
        rotated = []
        load = Load(ferry.port).start()
        try:
            for i in range(1, 4):  # logrotate's create mode: move the file, then signal
                self.assertTrue(wait_until(lambda: edge_lines([path]) >= 100, 20))
                os.rename(path, "%s.%d" % (path, i))
                rotated.append("%s.%d" % (path, i))
                os.kill(ferry.pid, signal.SIGUSR1)
                self.assertTrue(wait_until(lambda: os.path.exists(path), 5))
            self.assertTrue(wait_until(lambda: edge_lines([path]) >= 100, 20))
        finally:
            load.join()
        self.assertEqual(load.failures, [])
        self.assertGreater(load.ok, 400)
        files = rotated + [path]
        self.assertTrue(wait_until(lambda: edge_lines(files) >= load.ok, 10))
        self.assertEqual(edge_lines(files), load.ok, "lines lost or doubled over the rotations")
        self.assertTrue(all(edge_lines([p]) >= 100 for p in files), "a file got fewer lines than waited for")
        self.assertEqual(dropped(scrape(admin), "full"), 0)


class BlockedLogTest(E2ECase):
    def test_a_fifo_nobody_reads_blocks_no_request(self):
        up = self.start_upstream("live")
        admin = free_port()
        ferry = Ferry(ROTATE_CONFIG, ROUTE_ALL, live=up.addr, admin="127.0.0.1:%d" % admin, format="json",
                      log="fifo", buffer=", buffer = 65536")
        fifo = os.path.join(ferry.dir, "fifo")
        os.mkfifo(fifo)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read until the end
        self.addCleanup(os.close, reader)
        self.addCleanup(ferry.stop)
        ferry.start()
        self.ferry_for_logs = ferry
        n = 800  # ~450 kB of lines: the pipe (64 KiB) and the buffer (64 KiB) fill long before
        statuses = []
        for _ in range(4):
            results, rc, err = curl_many([ferry.url("/echo")] * (n // 4), host="a.test", timeout=30)
            self.assertEqual(rc, 0, err)
            statuses += [r[0] for r in results]
        self.assertEqual(statuses, [200] * n, "requests failed while the log was blocked")
        lost = dropped(scrape(admin), "full")
        self.assertGreater(lost, 0, "nothing was dropped: the FIFO did not block the writer?")
        self.assertLess(lost, n)
        # Now read the FIFO: every line not counted as dropped arrives.
        got = bytearray()

        def drain():
            while True:
                try:
                    chunk = os.read(reader, 65536)
                except BlockingIOError:
                    return got.count(b'"listener":"edge"') + lost >= n
                if not chunk:
                    return True
                got.extend(chunk)
        self.assertTrue(wait_until(drain, 10))
        self.assertEqual(got.count(b'"listener":"edge"') + lost, n)
        for line in bytes(got).splitlines():
            json.loads(line)  # whole lines only, never a torn one


if __name__ == "__main__":
    unittest.main()


TLS_CONFIG = """
return {
  listeners = { { name = "agents", type = "https", address = "$listen",
                  tls = { certificates = { { cert = "metrics.pem", key = "metrics.key" } } } } },
  upstreams = { metrics = { servers = { "$live" } } },
  policy = "$policy",
  log = { access = { format = "json", file = "access.log" } },
}
"""


class AccessLogTlsTest(E2ECase):
    def test_sni_and_version(self):
        up = self.start_upstream("live")
        ferry = self.start_ferry(TLS_CONFIG, ROUTE_ALL, files=pki().files("metrics"), live=up.addr)
        sock = tls_connect(ferry.port, "metrics.observability.internal")
        try:
            self.assertEqual(tls_get(sock, "/echo", "metrics.observability.internal").status, 200)
        finally:
            sock.close()
        path = os.path.join(ferry.dir, "access.log")
        lines = wait_until(lambda: read_lines(path), 5)
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual((lines[0]["tls_sni"], lines[0]["tls_version"], lines[0]["listener"]),
                         ("metrics.observability.internal", "TLSv1.2", "agents"))


class AccessLogConfigTest(unittest.TestCase):
    def check(self, access):
        from .harness import ConfigDir
        d = ConfigDir("""return {
  listeners = { { name = "edge", type = "http", address = "127.0.0.1:1" } },
  upstreams = { metrics = { servers = { "127.0.0.1:2" } } },
  policy = "$policy",
  log = {
    access = %s,
  },
}
""" % access, 'return { route = function(req) return "metrics" end }\n')
        self.addCleanup(d.cleanup)
        return d.check()

    def test_bad_settings_name_file_and_line(self):
        for access, message in (('{ format = "xml" }', "log.access.format: 'xml' is not one of text, json"),
                                ('"json"', "log.access: expected a boolean or a table, got string"),
                                ('{ file = "" }', "log.access.file: must not be empty"),
                                ('{ buffer = 100 }', "log.access.buffer: must be at least 65536"),
                                ('{ fromat = "json" }', "log.access.fromat: unknown key")):
            rc, out = self.check(access)
            self.assertEqual(rc, 1, out)
            self.assertRegex(out, r"ferry\.lua:\d+: ", out)
            self.assertIn(message, out)
        for access in ("true", "false", '{ format = "json", file = "/dev/null", buffer = 65536 }'):
            rc, out = self.check(access)
            self.assertEqual(rc, 0, out)
