"""Upstream names re-resolved while running (docs/config.md "dns"): answers
followed on their TTL without a restart, a vanished address drained, a
failed lookup keeping the last good addresses, all against a DNS server the
test runs on loopback."""

import http.client
import os
import sys
import time
import unittest
import urllib.request

from .dnsserver import DNSServer
from .harness import E2ECase, Upstream, free_port, wait_until

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { alb = { servers = { "metrics-alb.test:$upport" }, retry = { tries = 1 } } },
  policy = "$policy",
  dns = { servers = { "$dns" }, min_ttl = 0.2, max_ttl = 1, timeout = 2 },
}
"""

POLICY = 'return { route = function(req) return "alb" end }'


def who(port, conn=None):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/echo", headers={"Host": "m.test"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Upstream")
    finally:
        if own:
            conn.close()


class DNSTest(E2ECase):
    def setUp(self):
        self.dns = DNSServer()
        self.addCleanup(self.dns.stop)
        self.port = free_port()
        self.ups = {}
        for ip, name in (("127.0.0.2", "two"), ("127.0.0.3", "three")):
            up = Upstream(name, host=ip, port=self.port).start()
            self.addCleanup(up.stop)
            self.ups[name] = up

    def test_answer_change_moves_traffic_without_restart(self):
        self.dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        ferry = self.start_ferry(CONFIG, POLICY, dns=self.dns.addr, upport=self.port)
        self.assertEqual(who(ferry.port), (200, "two"))
        # A keep-alive client connection stays open across the change.
        conn = http.client.HTTPConnection("127.0.0.1", ferry.port, timeout=5)
        self.assertEqual(who(ferry.port, conn), (200, "two"))
        self.dns.records["metrics-alb.test"] = (["127.0.0.3"], 1)
        start = time.monotonic()
        self.assertTrue(wait_until(lambda: who(ferry.port, conn) == (200, "three"), timeout=5),
                        ferry.log_tail())
        sys.stderr.write("\n  new address in use %.1f s after the DNS change (ttl 1 s)\n"
                         % (time.monotonic() - start))
        self.assertIsNotNone(ferry.wait_log(r"no longer resolves to 127\.0\.0\.2:%d: draining it" % self.port))
        # New requests never go back to the old address.
        for _ in range(20):
            self.assertEqual(who(ferry.port, conn), (200, "three"))
        conn.close()
        self.assertGreater(self.dns.queries.get("metrics-alb.test", 0), 2, "names must be re-resolved")

    def test_both_addresses_are_used_and_a_failed_lookup_keeps_them(self):
        self.dns.records["metrics-alb.test"] = (["127.0.0.2", "127.0.0.3"], 1)
        ferry = self.start_ferry(CONFIG, POLICY, dns=self.dns.addr, upport=self.port)
        seen = {who(ferry.port)[1] for _ in range(10)}
        self.assertEqual(seen, {"two", "three"})
        self.dns.failing = True
        self.assertIsNotNone(ferry.wait_log(r"resolving metrics-alb\.test failed .*keeping", timeout=5))
        seen = {who(ferry.port)[1] for _ in range(10)}
        self.assertEqual(seen, {"two", "three"}, "a failed lookup dropped good addresses")

    def test_names_are_not_resolved_per_request(self):
        self.dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        ferry = self.start_ferry(CONFIG.replace("max_ttl = 1", "max_ttl = 60").replace("min_ttl = 0.2", "min_ttl = 30"),
                                 POLICY, dns=self.dns.addr, upport=self.port)
        before = self.dns.queries.get("metrics-alb.test", 0)
        for _ in range(50):
            self.assertEqual(who(ferry.port)[0], 200)
        self.assertEqual(self.dns.queries.get("metrics-alb.test", 0), before)

    def test_lookups_are_counted_by_outcome(self):
        self.dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        admin = free_port()
        ferry = self.start_ferry(CONFIG.replace("  policy =", '  admin = { address = "$admin" },\n  policy ='),
                                 POLICY, dns=self.dns.addr, upport=self.port, admin="127.0.0.1:%d" % admin)

        def lookups(outcome):
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=5) as resp:
                for line in resp.read().decode().splitlines():
                    if line.startswith('ferry_dns_lookups_total{outcome="%s"} ' % outcome):
                        return int(line.split()[-1])
            return 0
        self.assertTrue(wait_until(lambda: lookups("ok") >= 1, 5), "no re-resolution counted")
        self.assertEqual(lookups("failed"), 0)
        self.dns.failing = True
        self.assertTrue(wait_until(lambda: lookups("failed") >= 1, 5), "no failed lookup counted")

    def test_unresolvable_name_is_a_config_error(self):
        from .harness import ConfigDir
        d = ConfigDir(CONFIG, POLICY, dns=self.dns.addr, upport=self.port, listen="127.0.0.1:%d" % free_port())
        self.addCleanup(d.cleanup)
        rc, out = d.check()
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"upstreams\.alb\.servers\[1\]: cannot resolve 'metrics-alb\.test'")

    def test_reloads_succeed_while_re_resolutions_are_in_flight(self):
        # c-ares refuses to change its servers while a query is pending, and
        # with a short TTL one nearly always is: a reload that keeps the same
        # dns.servers must not try.
        import signal
        self.dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        self.dns.delay = 0.8
        ferry = self.start_ferry(CONFIG, POLICY, dns=self.dns.addr, upport=self.port)
        for n in range(2, 7):
            os.kill(ferry.pid, signal.SIGHUP)
            self.assertIsNotNone(ferry.wait_log(r"generation %d is live|refused" % n, timeout=5), ferry.log_tail())
            self.assertNotIn("refused", ferry.log_text(), ferry.log_tail())
            time.sleep(0.2)
        self.assertEqual(who(ferry.port), (200, "two"))

    def test_listener_that_cannot_bind_exits_cleanly_with_names_resolved(self):
        # The generation (its groups, their DNS entries) must outlive the
        # worker's teardown on this path: it used to be freed first, and ferry
        # died of SIGSEGV after "not starting".
        import socket
        from .harness import ConfigDir, run_ferry
        self.dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        d = ConfigDir(CONFIG, POLICY, dns=self.dns.addr, upport=self.port,
                      listen="127.0.0.1:%d" % taken.getsockname()[1])
        self.addCleanup(d.cleanup)
        rc, out = run_ferry(["run", "-c", d.conf_path])
        self.assertEqual(rc, 1, out)
        self.assertIn("address already in use", out)
        self.assertIn("not starting", out)


if __name__ == "__main__":
    unittest.main()
