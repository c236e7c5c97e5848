"""Readiness (`GET /ready` on the admin listener, docs/operations.md): ready
once a generation serves and every group has an address, not ready from the
moment a drain starts, while `/health` keeps its own meaning."""

import os
import signal
import time
import unittest

from .harness import E2ECase, curl, free_port, wait_until

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$metrics" } }, logs = { servers = { "$metrics" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  drain = { delay = 1, timeout = 5 },
  log = { access = false },
}
"""

POLICY = """
return { route = function(req) return "metrics" end }
"""


class ReadyTest(E2ECase):
    def test_ready_then_draining(self):
        up = self.start_upstream("metrics")
        admin = free_port()
        ferry = self.start_ferry(CONFIG, POLICY, metrics=up.addr, admin="127.0.0.1:%d" % admin)
        base = "http://127.0.0.1:%d" % admin
        ready = curl(base + "/ready", timeout=5)
        self.assertEqual((ready.status, ready.body), (200, b"ready\n"), ready)
        head = curl(base + "/ready", method="HEAD", timeout=5)
        self.assertEqual(head.status, 200, head)
        os.kill(ferry.pid, signal.SIGTERM)
        # During drain.delay the instance still serves but must get no new traffic.
        self.assertTrue(wait_until(lambda: curl(base + "/ready", timeout=5).status == 503, 0.9),
                        "/ready did not turn 503 after SIGTERM")
        ready = curl(base + "/ready", timeout=5)
        self.assertEqual((ready.status, ready.body), (503, b"draining\n"), ready)
        self.assertEqual(curl(base + "/health", timeout=5).status, 503)
        self.assertEqual(curl(ferry.url("/echo"), host="a.test", timeout=5).status, 200,
                         "ferry stopped serving before drain.delay ended")


if __name__ == "__main__":
    unittest.main()
