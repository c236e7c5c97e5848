"""Routing by Host, keep-alive, pipelining and header rewriting.

One ferry with three groups (metrics, logs, traces), each on its own upstream
process, and a fourth upstream (the trap) that no group names: an open proxy
would be caught connecting to it.
"""

import json
import os
import signal
import subprocess
import threading
import time
import unittest

from .harness import (E2ECase, ROUTING_POLICY, curl, curl_many, exchange, free_port,
                      pattern_sha256, port_accepts, request_bytes, send_raw, sha256,
                      wait_until)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = {
    metrics = { servers = { "$metrics" } },
    logs    = { servers = { "$logs" } },
    traces  = { servers = { "$traces" } },
  },
  policy = "$policy",
  log = { level = "info", access = true },
}
"""

METRICS = "metrics.observability.internal"
LOGS = "logs.observability.internal"
TRACES = "traces.observability.internal"

# Hop-by-hop fields (RFC 9110 7.6.1) a proxy must not forward in either direction.
HOP_BY_HOP = {"keep-alive", "proxy-connection", "te", "trailer", "upgrade"}


def echo_headers(resp_body):
    info = json.loads(resp_body)
    return info, [(k.lower(), v) for k, v in info["headers"]]


def values(headers, name):
    return [v for k, v in headers if k == name]


class ProxyBasicTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.metrics = cls.start_upstream_cls("metrics")
        cls.logs = cls.start_upstream_cls("logs")
        cls.traces = cls.start_upstream_cls("traces")
        cls.trap = cls.start_upstream_cls("trap")
        cls.ferry = cls.start_ferry_cls(CONFIG, ROUTING_POLICY, metrics=cls.metrics.addr,
                                        logs=cls.logs.addr, traces=cls.traces.addr)
        cls.all_upstreams = (cls.metrics, cls.logs, cls.traces, cls.trap)

    def setUp(self):
        for up in self.all_upstreams:
            up.clear()

    def assertTrapUntouched(self):
        journal = self.trap.journal()
        self.assertEqual(journal["connections"], 0,
                         "ferry opened a connection to a server no group names: open proxy")
        self.assertEqual(journal["requests"], [])

    # -- routing -----------------------------------------------------------

    def test_routes_by_host_to_each_group(self):
        for host, name in ((METRICS, "metrics"), (LOGS, "logs"), (TRACES, "traces")):
            with self.subTest(host=host):
                r = curl(self.ferry.url("/echo?g=" + name), host=host, timeout=10)
                self.assertEqual(r.rc, 0, r)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(r.json()["name"], name)
        for up, name in ((self.metrics, "metrics"), (self.logs, "logs"), (self.traces, "traces")):
            self.assertEqual(up.request_lines(), ["GET /echo?g=%s HTTP/1.1" % name])
        self.assertTrapUntouched()

    def test_unknown_host_is_rejected_and_never_forwarded(self):
        r = curl(self.ferry.url("/echo"), host="unknown.observability.internal", timeout=10)
        self.assertEqual(r.rc, 0, r)
        self.assertTrue(400 <= r.status < 500, r)
        for up in self.all_upstreams:
            self.assertNothingReached(up, "for an unknown Host")

    def test_host_is_normalised_for_policy_and_forwarded_as_sent(self):
        sent = "METRICS.Observability.Internal:8080"
        r = curl(self.ferry.url("/echo"), host=sent, timeout=10)
        self.assertEqual(r.status, 200, r)
        info, headers = echo_headers(r.body)
        self.assertEqual(info["name"], "metrics")
        self.assertEqual(values(headers, "x-policy-host"), [METRICS],
                         "req.host must be lower-case without the port")
        self.assertEqual(values(headers, "host"), [sent], "Host must be forwarded as sent")

    def test_absolute_form_never_makes_ferry_an_open_proxy(self):
        trap_authority = "127.0.0.1:%d" % self.trap.port
        cases = [
            ("http://evil.example/echo", METRICS),
            ("http://%s/echo" % trap_authority, METRICS),
            ("http://%s/echo" % METRICS, trap_authority),
        ]
        for target, host in cases:
            with self.subTest(target=target, host=host):
                self.metrics.clear()
                reply = send_raw(self.ferry.port, request_bytes(
                    "GET", target, host=host, headers=[("Connection", "close")]), timeout=5)
                status = reply.status
                self.assertIsNotNone(status, "no response: %r" % bytes(reply[:200]))
                self.assertTrue(200 <= status < 300 or 400 <= status < 500,
                                "absolute-form must be routed to a configured group or "
                                "rejected, got %r" % bytes(reply[:200]))
                lines = self.metrics.request_lines()
                if 200 <= status < 300:
                    self.assertIn(b'"name": "metrics"', reply)
                    self.assertEqual(len(lines), 1, lines)
                else:
                    self.assertEqual(lines, [])
                for up in (self.logs, self.traces):
                    self.assertNothingReached(up)
                self.assertTrapUntouched()

    def test_connect_method_is_not_tunnelled(self):
        authority = "127.0.0.1:%d" % self.trap.port
        reply = send_raw(self.ferry.port, request_bytes(
            "CONNECT", authority, host=authority, headers=[("Connection", "close")]), timeout=3)
        status = reply.status
        self.assertIsNotNone(status, "no response to CONNECT: %r" % bytes(reply[:200]))
        self.assertFalse(200 <= status < 300, "CONNECT must not be accepted: %r" % bytes(reply[:200]))
        self.assertTrapUntouched()

    # -- keep-alive and pipelining --------------------------------------------

    def test_client_connection_is_kept_alive(self):
        urls = [self.ferry.url("/echo?i=%d" % i) for i in range(4)]
        results, rc, err = curl_many(urls, host=METRICS)
        self.assertEqual(rc, 0, err)
        self.assertEqual([s for s, _, _ in results], [200] * 4)
        self.assertEqual([c for _, c, _ in results], [1, 0, 0, 0],
                         "curl had to reconnect: ferry did not keep the client connection")
        self.assertEqual([json.loads(b)["query"] for _, _, b in results],
                         ["i=%d" % i for i in range(4)])

    def test_upstream_closing_after_its_answer_keeps_the_client_connection(self):
        # The upstream answers with Connection: close and closes right after a
        # complete response: the client still gets every byte and keeps its
        # own keep-alive connection; the next request goes on a new upstream
        # connection.
        urls = [self.ferry.url("/status?code=200&close=1"), self.ferry.url("/bytes?n=300000&mode=cl&close=1"),
                self.ferry.url("/echo?after=close")]
        results, rc, err = curl_many(urls, host=METRICS)
        self.assertEqual(rc, 0, err)
        self.assertEqual([s for s, _, _ in results], [200] * 3)
        self.assertEqual([c for _, c, _ in results], [1, 0, 0],
                         "ferry closed the client connection after an upstream close")
        self.assertEqual(results[0][2], b"status 200\n")
        self.assertEqual(len(results[1][2]), 300000)
        self.assertEqual(json.loads(results[2][2])["query"], "after=close")

    def test_upstream_connection_is_reused(self):
        urls = [self.ferry.url("/echo?i=%d" % i) for i in range(4)]
        results, rc, err = curl_many(urls, host=METRICS)
        self.assertEqual(rc, 0, err)
        infos = [json.loads(b) for _, _, b in results]
        conns = [i["conn_id"] for i in infos]
        self.assertLess(len(set(conns)), len(conns),
                        "every request used a new upstream connection: %r" % conns)
        self.assertGreater(max(i["conn_requests"] for i in infos), 1)

    def test_pipelined_requests_answered_in_order(self):
        data = (request_bytes("GET", "/echo?seq=1", host=METRICS)
                + request_bytes("GET", "/bytes?n=70000&mode=chunked", host=METRICS)
                + request_bytes("POST", "/echo?seq=3", host=METRICS, body=b"third"))
        first, second, third = exchange(self.ferry.port, data, 3, timeout=10)
        self.assertEqual(first.status, 200)
        self.assertEqual(first.json()["query"], "seq=1")
        self.assertEqual(second.status, 200)
        self.assertEqual(sha256(second.body), pattern_sha256(70000))
        self.assertEqual(third.status, 200)
        self.assertEqual(third.json()["query"], "seq=3")
        self.assertEqual(third.json()["body_sha256"], sha256(b"third"))

    # -- headers -------------------------------------------------------------

    def test_hop_by_hop_request_headers_are_removed(self):
        data = request_bytes("GET", "/echo", host=METRICS, headers=[
            ("Connection", "keep-alive, X-Foo"),
            ("X-Foo", "private"),
            ("Keep-Alive", "timeout=300"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "e2e/1"),
            ("X-Keep", "yes"),
        ])
        (resp,) = exchange(self.ferry.port, data, 1)
        self.assertEqual(resp.status, 200, resp)
        _, headers = echo_headers(resp.body)
        names = {k for k, _ in headers}
        self.assertFalse(names & (HOP_BY_HOP | {"x-foo"}),
                         "hop-by-hop headers reached the upstream: %r" % headers)
        tokens = {t.strip().lower() for v in values(headers, "connection") for t in v.split(",")}
        self.assertLessEqual(tokens, {"keep-alive", "close"}, headers)
        self.assertEqual(values(headers, "x-keep"), ["yes"])

    def test_hop_by_hop_response_headers_are_removed(self):
        data = request_bytes("GET", "/hop", host=METRICS) + request_bytes("GET", "/echo", host=METRICS)
        hop, after = exchange(self.ferry.port, data, 2)
        self.assertEqual(hop.status, 200, hop)
        self.assertEqual(hop.body, b"hop body\n")
        names = set(hop.header_names())
        self.assertFalse(names & (HOP_BY_HOP | {"x-private"}),
                         "hop-by-hop headers reached the client: %r" % hop.headers)
        self.assertLessEqual(set(hop.tokens("connection")), {"keep-alive", "close"}, hop.headers)
        self.assertEqual(hop.header_all("x-end-to-end"), ["kept"])
        self.assertEqual(after.status, 200, "the connection must stay usable after /hop")

    def test_x_forwarded_for_is_appended(self):
        r = curl(self.ferry.url("/echo"), host=METRICS,
                 headers=[("X-Forwarded-For", "203.0.113.7")], timeout=10)
        self.assertEqual(r.status, 200, r)
        _, headers = echo_headers(r.body)
        chain = [p.strip() for v in values(headers, "x-forwarded-for") for p in v.split(",")]
        self.assertEqual(chain, ["203.0.113.7", "127.0.0.1"])
        self.assertEqual(values(headers, "x-forwarded-proto"), ["http"])

    def test_x_forwarded_headers_added_when_absent(self):
        r = curl(self.ferry.url("/echo"), host=METRICS, timeout=10)
        self.assertEqual(r.status, 200, r)
        _, headers = echo_headers(r.body)
        self.assertEqual(values(headers, "x-forwarded-for"), ["127.0.0.1"])
        self.assertEqual(values(headers, "x-forwarded-proto"), ["http"])
        self.assertEqual(values(headers, "host"), [METRICS])


class ShutdownTest(E2ECase):
    """SIGTERM drains (DESIGN.md): in-flight requests finish, then exit 0.

    Idle connections (a client's keep-alive connection, ferry's own pooled
    upstream connections) are not in-flight work and must not hold the exit.
    """

    EXIT_BOUND = 5.0

    def setUp(self):
        self.up = self.start_upstream("metrics")
        self.ferry = self.start_ferry(CONFIG, ROUTING_POLICY, metrics=self.up.addr,
                                      logs=self.up.addr, traces=self.up.addr)

    def terminate_and_wait(self):
        start = time.monotonic()
        os.kill(self.ferry.pid, signal.SIGTERM)
        try:
            rc = self.ferry.proc.wait(timeout=self.EXIT_BOUND)
        except subprocess.TimeoutExpired:
            rc = None
        return rc, time.monotonic() - start

    def test_sigterm_after_traffic_exits_0_promptly(self):
        r = curl(self.ferry.url("/echo"), host=METRICS, timeout=10)
        self.assertEqual(r.status, 200, r)
        rc, elapsed = self.terminate_and_wait()
        self.assertEqual(rc, 0, "ferry did not exit 0 within %.0fs of SIGTERM with no request "
                                "in flight (exit status %r)" % (self.EXIT_BOUND, rc))

    def test_sigterm_lets_in_flight_request_finish(self):
        out = {}
        worker = threading.Thread(target=lambda: out.update(
            r=curl(self.ferry.url("/slow?delay=1"), host=METRICS, timeout=10)))
        worker.start()
        self.assertTrue(wait_until(lambda: self.up.request_lines(), 5), "request never arrived")
        rc, elapsed = self.terminate_and_wait()
        worker.join(15)
        self.assertEqual((out["r"].rc, out["r"].status, out["r"].body), (0, 200, b"slow\n"),
                         "the in-flight request was cut by SIGTERM")
        self.assertFalse(port_accepts(self.ferry.port), "still accepting after the drain")
        self.assertEqual(rc, 0, "ferry did not exit 0 within %.0fs of SIGTERM (exit status %r)"
                         % (self.EXIT_BOUND, rc))


if __name__ == "__main__":
    unittest.main()


DRAIN_CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$metrics" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  drain = { delay = 1, timeout = 5 },
}
"""


class DrainDelayTest(E2ECase):
    """With drain.delay, SIGTERM first fails the health check while still
    serving (so a load balancer can take the instance out), then stops
    accepting, then exits 0."""

    def test_health_fails_first_then_listeners_close(self):
        up = self.start_upstream("metrics")
        admin = free_port()
        ferry = self.start_ferry(DRAIN_CONFIG, ROUTING_POLICY, metrics=up.addr, admin="127.0.0.1:%d" % admin)
        health = curl("http://127.0.0.1:%d/health" % admin, timeout=5)
        self.assertEqual(health.status, 200, health)
        start = time.monotonic()
        os.kill(ferry.pid, signal.SIGTERM)
        time.sleep(0.2)
        health = curl("http://127.0.0.1:%d/health" % admin, timeout=5)
        self.assertEqual((health.status, health.body), (503, b"draining\n"), health)
        r = curl(ferry.url("/echo"), host=METRICS, timeout=5)
        self.assertEqual(r.status, 200, "still serving during the drain delay: %r" % r)
        self.assertEqual(r.header("connection"), "close")
        self.assertTrue(wait_until(lambda: not port_accepts(ferry.port), timeout=5),
                        "the listener never closed")
        self.assertGreaterEqual(time.monotonic() - start, 0.9, "closed before the drain delay")
        self.assertEqual(ferry.proc.wait(timeout=5), 0)
