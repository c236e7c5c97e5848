"""Hostile clients: a slowloris crowd trickling header bytes while a normal
client is still served promptly, a connection limit that sheds load
with a clear answer instead of falling over, and a crowd that uses up the
process's file descriptors."""

import os
import resource
import socket
import sys
import time
import unittest

from .harness import E2ECase, ROUTING_POLICY, curl, wait_until

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$up" } }, logs = { servers = { "$up" } }, traces = { servers = { "$up" } } },
  policy = "$policy",
  limits = { header_timeout = 3, max_connections = $maxconn },
  log = { access = false },
}
"""

METRICS = "metrics.observability.internal"


class HostileTest(E2ECase):
    def setUp(self):
        self.up = self.start_upstream("metrics")

    def open_many(self, port, n):
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.addCleanup(s.close)
            socks.append(s)
        return socks

    def test_slowloris_crowd_does_not_starve_a_normal_client(self):
        ferry = self.start_ferry(CONFIG, ROUTING_POLICY, up=self.up.addr, maxconn=10000)
        socks = self.open_many(ferry.port, 300)
        head = b"GET /echo HTTP/1.1\r\nHost: " + METRICS.encode() + b"\r\nX-Slow: "
        worst = 0.0
        deadline = time.monotonic() + 2.5  # bounded: 5 rounds of one byte per connection
        i = 0
        while time.monotonic() < deadline and i < 5:
            for s in socks:
                try:
                    s.send(head[i:i + 1])
                except OSError:
                    pass
            start = time.monotonic()
            r = curl(ferry.url("/echo"), host=METRICS, timeout=5)
            worst = max(worst, time.monotonic() - start)
            self.assertEqual(r.status, 200, r)
            i += 1
            time.sleep(0.3)
        sys.stderr.write("\n  300 slowloris connections: a normal request took at most %.0f ms\n" % (worst * 1000))
        self.assertLess(worst, 1.0)
        # The crowd is cut off by the header deadline, with 408.
        self.assertTrue(wait_until(lambda: self.all_closed(socks), timeout=8), "slow clients were never cut off")

    @staticmethod
    def all_closed(socks):
        for s in socks:
            s.settimeout(0.01)
            try:
                data = s.recv(4096)
            except socket.timeout:
                return False
            except OSError:
                continue
            if data and not data.startswith(b"HTTP/1.1 408"):
                return False
        return True

    def test_connection_limit_sheds_with_503(self):
        # limits.max_connections counts per worker (as nginx's worker_connections): one worker here.
        ferry = self.start_ferry(CONFIG.replace("  policy =", "  workers = 1,\n  policy =", 1), ROUTING_POLICY,
                                 up=self.up.addr, maxconn=20)
        self.open_many(ferry.port, 20)
        time.sleep(0.2)
        r = curl(ferry.url("/echo"), host=METRICS, timeout=5)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.header("connection"), "close")
        self.assertIsNotNone(ferry.wait_log(r"limits\.max_connections"))
        self.assertTrue(ferry.alive())

    def test_running_out_of_descriptors_pauses_accepting_then_recovers(self):
        ferry = self.start_ferry(CONFIG.replace("  policy =", "  workers = 1,\n  policy =", 1), ROUTING_POLICY,
                                 up=self.up.addr, maxconn=1000)
        pid = ferry.pid
        used = len(os.listdir("/proc/%d/fd" % pid))
        old = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 8, old[1]))
        crowd = self.open_many(ferry.port, 24)  # the kernel completes the handshakes; ferry runs out
        self.assertIsNotNone(ferry.wait_log(r"accept: Too many open files", timeout=5))

        # Paused, not spinning on a listening socket that stays readable.
        def cpu_s():
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = cpu_s()
        time.sleep(1.0)
        self.assertLess(cpu_s() - before, 0.5, "ferry kept retrying accept while out of descriptors")

        for s in crowd:  # descriptors come free under the same limit: accepting resumes
            s.close()
        ok = wait_until(lambda: curl(ferry.url("/echo"), host=METRICS, timeout=5).status == 200, 10)
        self.assertTrue(ok, ferry.log_tail())
        self.assertTrue(ferry.alive())


if __name__ == "__main__":
    unittest.main()
