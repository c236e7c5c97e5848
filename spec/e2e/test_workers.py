"""Worker threads (docs/config.md "workers"): four workers on this machine
share the connections of many clients, reload as one, ask the DNS and probe
each server once for the process, share what they learn of a failing
server, and drain together on SIGTERM."""

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import unittest

from .dnsserver import DNSServer
from .harness import CLEAN_ENV, FERRY_BIN, ConfigDir, E2ECase, Upstream, free_port, wait_until
from .test_reload import Load, policy_for, write_atomic

CONFIG = """
return {
  workers = 4,
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = {
    alpha = { servers = { "$alpha" } },
    beta = { servers = { "$beta" } },
  },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { level = "info", access = false },
}
"""


def admin_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def metric_values(text, name):
    """{labels: value} of one metric family in Prometheus text."""
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            key, _, value = line.rpartition(" ")
            out[key[len(name):]] = float(value)
    return out


def ask(port, conn=None, host="switch.test"):
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/echo", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("X-Upstream")
    finally:
        if own:
            conn.close()


class WorkersCase(E2ECase):
    def setUp(self):
        self.alpha = self.start_upstream("alpha")
        self.beta = self.start_upstream("beta")
        self.admin_port = free_port()
        self.ferry = self.start_ferry(CONFIG, policy_for("alpha"), alpha=self.alpha.addr,
                                      beta=self.beta.addr, admin="127.0.0.1:%d" % self.admin_port)

    def status(self):
        code, body = admin_get(self.admin_port, "/status")
        self.assertEqual(code, 200, body)
        return json.loads(body)

    def ferry_reload(self):
        done = subprocess.run([FERRY_BIN, "reload", "-c", self.ferry.conf_path], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=60, env=CLEAN_ENV)
        return done.returncode, done.stdout + done.stderr


class SpreadTest(WorkersCase):
    def test_connections_of_many_clients_are_served_by_several_workers(self):
        conns = [http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10) for _ in range(32)]
        try:
            for c in conns:
                self.assertEqual(ask(self.ferry.port, c), (200, "alpha"))
            status = self.status()
            workers = status["workers"]
            self.assertEqual(len(workers), 4)
            self.assertEqual(sum(w["connections"] for w in workers), 32, workers)
            busy = [w for w in workers if w["connections"] > 0]
            self.assertGreater(len(busy), 1, "one worker took every connection: %r" % workers)
            for w in workers:  # its thread's CPU time over its age: it has run, and never all the time
                self.assertTrue(0 < w["busy"] < 1, workers)
            self.assertEqual(status["connections"], 32)
            code, text = admin_get(self.admin_port, "/metrics")
            self.assertEqual(code, 200)
            per_worker = metric_values(text, "ferry_worker_client_connections")
            self.assertEqual(len(per_worker), 4, per_worker)
            self.assertGreater(sum(1 for v in per_worker.values() if v > 0), 1, per_worker)
            self.assertEqual(metric_values(text, "ferry_client_connections"), {"": 32.0})
            self.assertEqual(metric_values(text, "ferry_responses_total")['{class="2xx"}'], 32.0)
            self.assertEqual(metric_values(text, "ferry_workers"), {"": 4.0})
        finally:
            for c in conns:
                c.close()


class ReloadAllTest(WorkersCase):
    def test_twenty_reloads_under_load_switch_every_worker(self):
        with Load(self.ferry.port, threads=8) as load:
            time.sleep(0.3)
            for i in range(1, 21):
                target = "beta" if i % 2 else "alpha"
                write_atomic(self.ferry.policy_path, policy_for(target))
                if i % 2:
                    rc, out = self.ferry_reload()
                    self.assertEqual(rc, 0, out)
                    self.assertIn("generation %d is live" % (i + 1), out)
                else:
                    os.kill(self.ferry.pid, signal.SIGHUP)
                    self.assertTrue(wait_until(lambda: self.status()["generation"] == i + 1, 20),
                                    self.ferry.log_tail())
                # Once the reload has answered, no connection opened after it meets the old generation.
                answers = {ask(self.ferry.port) for _ in range(12)}
                self.assertEqual(answers, {(200, target)}, "after reload %d" % i)
                self.assertEqual({w["generation"] for w in self.status()["workers"]}, {i + 1})
        self.assertEqual(load.failures, [], "requests failed during reloads")
        self.assertGreater(load.ok, 100, "the load was too light to prove anything")
        sys.stderr.write("\n  %d requests from 8 clients during 20 reloads on 4 workers, 0 failed\n" % load.ok)

    def test_a_reload_that_fails_to_build_leaves_every_worker_on_the_old_generation(self):
        write_atomic(self.ferry.policy_path, "error('this policy refuses to load')\n")
        rc, out = self.ferry_reload()
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"policy\.lua:1: ")
        status = self.status()
        self.assertEqual(status["generation"], 1)
        self.assertEqual({w["generation"] for w in status["workers"]}, {1})
        self.assertEqual(status["reload_failures"], 1)
        self.assertEqual({ask(self.ferry.port) for _ in range(12)}, {(200, "alpha")})

    def test_changing_the_number_of_workers_is_refused(self):
        with open(self.ferry.conf_path) as f:
            text = f.read()
        write_atomic(self.ferry.conf_path, text.replace("workers = 4", "workers = 2"))
        rc, out = self.ferry_reload()
        self.assertEqual(rc, 1, out)
        self.assertIn("workers: 2 workers instead of 4; changing the number of workers needs a restart", out)
        self.assertEqual(self.status()["generation"], 1)


DNS_CONFIG = """
return {
  workers = 4,
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = {
    alb = { servers = { "metrics-alb.test:$upport" } },
    checked = { servers = { "$checked" }, health = { check = { path = "/echo", interval = 0.2 } } },
  },
  policy = "$policy",
  admin = { address = "$admin" },
  dns = { servers = { "$dns" }, min_ttl = 0.2, max_ttl = 1, timeout = 2 },
  log = { access = false },
}
"""


class SharedServicesTest(E2ECase):
    def test_one_dns_query_per_ttl_and_one_probe_per_interval_for_the_process(self):
        dns = DNSServer()
        self.addCleanup(dns.stop)
        upport = free_port()
        alb = Upstream("alb", host="127.0.0.2", port=upport).start()
        self.addCleanup(alb.stop)
        checked = self.start_upstream("checked")
        dns.records["metrics-alb.test"] = (["127.0.0.2"], 1)
        admin_port = free_port()
        ferry = self.start_ferry(DNS_CONFIG, 'return { route = function(req) return "alb" end }',
                                 dns=dns.addr, upport=upport, checked=checked.addr,
                                 admin="127.0.0.1:%d" % admin_port)
        # The first resolution: what one lookup of the name costs (A, and AAAA).
        per_lookup = dns.queries.get("metrics-alb.test", 0)
        self.assertGreater(per_lookup, 0)
        for _ in range(16):
            self.assertEqual(ask(ferry.port, host="m.test"), (200, "alb"))
        dns.queries.clear()
        checked.clear()
        start = time.monotonic()
        time.sleep(3)
        elapsed = time.monotonic() - start
        queries = dns.queries.get("metrics-alb.test", 0)
        probes = sum(1 for r in checked.journal()["requests"] if r["line"].startswith("GET /echo"))
        sys.stderr.write("\n  4 workers, %.1f s: %d DNS queries (%d per lookup, TTL 1 s), "
                         "%d probes (interval 0.2 s)\n" % (elapsed, queries, per_lookup, probes))
        # Once per process: at most one lookup per TTL and one probe per interval, plus one of slack.
        self.assertGreater(queries, 0, "the name was not re-resolved")
        self.assertLessEqual(queries, (int(elapsed / 1.0) + 1) * per_lookup)
        self.assertGreater(probes, 0, "no health probe ran")
        self.assertLessEqual(probes, int(elapsed / 0.2) + 1)
        # The re-resolved answer reached every worker: connections on any of them still work.
        self.assertEqual({ask(ferry.port, host="m.test") for _ in range(16)}, {(200, "alb")})


class Resetter:
    """A listener that closes every connection with an RST at once, counting them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()

    def stop(self):
        self.stopping = True
        self.thread.join(timeout=5)
        self.sock.close()


EJECT_CONFIG = """
return {
  workers = 4,
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { pool = { servers = { "$bad", "$good" }, retry = { tries = 2, backoff = 0 },
                         health = { max_fails = 2, eject = 60, max_ejected = 0.5 } } },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = false },
}
"""


class SharedEjectionTest(E2ECase):
    def test_a_server_ejected_through_one_worker_gets_nothing_from_the_others(self):
        bad = Resetter()
        self.addCleanup(bad.stop)
        good = self.start_upstream("good")
        admin_port = free_port()
        ferry = self.start_ferry(EJECT_CONFIG, 'return { route = function(req) return "pool" end }',
                                 bad=bad.addr, good=good.addr, admin="127.0.0.1:%d" % admin_port)
        # One keep-alive connection: one worker sees every failure until it ejects the server.
        conn = http.client.HTTPConnection("127.0.0.1", ferry.port, timeout=10)
        for _ in range(8):
            self.assertEqual(ask(ferry.port, conn, host="m.test"), (200, "good"))
            if ferry.wait_log(r"ejected for", timeout=0.05):
                break
        conn.close()
        self.assertIsNotNone(ferry.wait_log(r"%s ejected for" % bad.addr, timeout=5), ferry.log_tail())
        before = bad.accepted
        # New connections land on every worker; none of them may try the ejected server.
        for _ in range(40):
            self.assertEqual(ask(ferry.port, host="m.test"), (200, "good"))
        self.assertEqual(bad.accepted, before, "another worker still sent traffic to the ejected server")
        code, body = admin_get(admin_port, "/status")
        served = [w for w in json.loads(body)["workers"] if w["requests"] > 0]
        self.assertGreater(len(served), 1, "the requests did not reach several workers")
        code, text = admin_get(admin_port, "/metrics")
        up = metric_values(text, "ferry_upstream_server_up")
        self.assertEqual(up['{group="pool",server="%s"}' % bad.addr], 0.0, up)


DRAIN_CONFIG = """
return {
  workers = 4,
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { alpha = { servers = { "$alpha" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  drain = { timeout = 10 },
  log = { access = false },
}
"""


class DrainTest(E2ECase):
    def test_sigterm_drains_every_worker_and_exits_0_losing_nothing(self):
        alpha = self.start_upstream("alpha")
        ferry = self.start_ferry(DRAIN_CONFIG, 'return { route = function(req) return "alpha" end }',
                                 alpha=alpha.addr, admin="127.0.0.1:%d" % free_port())
        results = []
        lock = threading.Lock()

        def slow():
            conn = http.client.HTTPConnection("127.0.0.1", ferry.port, timeout=20)
            try:
                conn.request("GET", "/slow?delay=1", headers={"Host": "m.test"})
                resp = conn.getresponse()
                out = (resp.status, resp.read())
            except Exception as e:  # every failure is a finding
                out = repr(e)
            finally:
                conn.close()
            with lock:
                results.append(out)

        threads = [threading.Thread(target=slow) for _ in range(16)]
        for t in threads:
            t.start()
        self.assertTrue(wait_until(
            lambda: sum(1 for r in alpha.request_lines() if "/slow" in r) == 16, 10),
            "the requests never all arrived")
        os.kill(ferry.pid, signal.SIGTERM)
        rc = ferry.proc.wait(timeout=20)
        for t in threads:
            t.join(20)
        self.assertEqual(results, [(200, b"slow\n")] * 16, "in-flight requests were lost in the drain")
        self.assertEqual(rc, 0, ferry.log_tail())
        self.assertIsNotNone(ferry.wait_log(r"stopped", timeout=1))


AUTO_CONFIG = """
return {
  $workers
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { alpha = { servers = { "$alpha" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = false },
}
"""


class WorkersConfigTest(E2ECase):
    def test_auto_is_the_cpus_this_process_may_run_on(self):
        alpha = self.start_upstream("alpha")
        saved = os.sched_getaffinity(0)
        one = {min(saved)}
        os.sched_setaffinity(0, one)  # inherited by the ferry started now
        try:
            admin_port = free_port()
            self.start_ferry(AUTO_CONFIG, 'return { route = function(req) return "alpha" end }',
                             workers="", alpha=alpha.addr, admin="127.0.0.1:%d" % admin_port)
        finally:
            os.sched_setaffinity(0, saved)
        code, body = admin_get(admin_port, "/status")
        self.assertEqual(len(json.loads(body)["workers"]), 1, body)

    def test_a_port_another_process_shares_with_reuseport_is_refused(self):
        other = socket.socket()
        self.addCleanup(other.close)
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        d = ConfigDir(AUTO_CONFIG, "return { route = function(req) return 'alpha' end }",
                      workers="workers = 2,", listen="127.0.0.1:%d" % port, alpha="127.0.0.1:2",
                      admin="127.0.0.1:%d" % free_port())
        self.addCleanup(d.cleanup)
        done = subprocess.run([FERRY_BIN, "run", "-c", d.conf_path], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=30, env=CLEAN_ENV)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn("listener edge: cannot listen on 127.0.0.1:%d" % port, done.stderr)

    def test_bad_values_are_refused_with_file_and_line(self):
        for value, message in (("0", "workers: expected an integer from 1 to 256 or \"auto\""),
                               ("1.5", "workers: expected an integer from 1 to 256 or \"auto\""),
                               ('"many"', "workers: expected an integer from 1 to 256 or \"auto\"")):
            d = ConfigDir(AUTO_CONFIG, "return { route = function(req) return 'alpha' end }",
                          workers="workers = %s," % value, listen="127.0.0.1:1", alpha="127.0.0.1:2",
                          admin="127.0.0.1:3")
            self.addCleanup(d.cleanup)
            rc, out = d.check()
            self.assertEqual(rc, 1, out)
            self.assertIn("ferry.lua:3: " + message, out)


if __name__ == "__main__":
    unittest.main()
