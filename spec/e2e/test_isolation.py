"""Fault isolation of hooks: an error, a runaway loop (also one that catches
its own errors) and memory exhaustion each fail only their request, are
counted, and leave the worker and other connections serving."""

import http.client
import json
import unittest

from .harness import E2ECase, free_port

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  limits = { hook_timeout = 0.1, lua_memory = 16 * 1024 * 1024 },
}
"""

POLICY = r"""
local M = {}
local hoard = {}
function M.route(req)
  local p = req.path
  if p == "/error" then error("deliberate failure") end
  if p == "/loop" then while true do end end
  if p == "/counting-loop" then  -- the kind of loop LuaJIT would compile into a trace
    local x = 0
    while true do x = x + 1 end
  end
  if p == "/jit-on" then jit.on(true, true) end
  if p == "/jit-on-loop" then  -- a policy that tries to turn the compiler back on gains nothing
    pcall(jit.on)
    pcall(jit.on, true, true)
    local x = 0
    for i = 1, math.huge do x = x + i % 7 end
  end
  if p == "/stubborn-loop" then
    while true do pcall(function() while true do end end) end
  end
  if p == "/big-string" then return ("x"):rep(64 * 1024 * 1024) end
  if p == "/hoard" then  -- memory kept across requests: the cap still holds
    for i = 1, 1e9 do hoard[#hoard + 1] = ("y"):rep(4096) .. i end
  end
  return "default"
end
return M
"""


class IsolationBase(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.admin = free_port()
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, up=cls.up.addr, admin="127.0.0.1:%d" % cls.admin)

    def get(self, conn, path):
        conn.request("GET", path, headers={"Host": "iso.test"})
        resp = conn.getresponse()
        resp.read()
        return resp.status

    def status(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        conn.request("GET", "/status", headers={"Host": "admin"})
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data


class IsolationTest(IsolationBase):
    def check_fails_alone(self, path, log_pattern):
        bystander = http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10)
        self.assertEqual(self.get(bystander, "/echo"), 200)
        victim = http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10)
        self.assertEqual(self.get(victim, path), 500)
        self.assertIsNotNone(self.ferry.wait_log(log_pattern, timeout=3), self.ferry.log_tail())
        # the connection opened before, and a new one, are both still served
        self.assertEqual(self.get(bystander, "/echo"), 200)
        fresh = http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10)
        self.assertEqual(self.get(fresh, "/echo"), 200)
        for c in (bystander, victim, fresh):
            c.close()
        self.assertTrue(self.ferry.alive())

    def test_error(self):
        before = self.status()["hook_errors"]
        self.check_fails_alone("/error", r"route: error: .*policy\.lua:\d+: deliberate failure")
        self.assertIn("stack traceback", self.ferry.log_text())
        self.assertEqual(self.status()["hook_errors"], before + 1)

    def test_runaway_loop(self):
        before = self.status()["hook_timeouts"]
        self.check_fails_alone("/loop", r"route: timeout: ran longer than its 100 ms budget")
        self.assertEqual(self.status()["hook_timeouts"], before + 1)

    def test_loop_the_jit_would_compile(self):
        # Policy code runs interpreted under the instruction-count hook, so a
        # hot numeric loop never becomes a compiled trace that skips the hook.
        for path in ("/counting-loop", "/jit-on-loop"):
            with self.subTest(path=path):
                before = self.status()["hook_timeouts"]
                self.check_fails_alone(path, r"route: timeout: ran longer than its 100 ms budget")
                self.assertEqual(self.status()["hook_timeouts"], before + 1)

    def test_jit_on_is_refused(self):
        before = self.status()["hook_errors"]
        self.check_fails_alone("/jit-on", r"route: error: .*policy\.lua:\d+: jit\.on: policy code runs interpreted")
        self.assertEqual(self.status()["hook_errors"], before + 1)

    def test_loop_that_catches_its_own_errors(self):
        before = self.status()["hook_timeouts"]
        self.check_fails_alone("/stubborn-loop", r"route: timeout")
        self.assertEqual(self.status()["hook_timeouts"], before + 1)

    def test_one_huge_allocation(self):
        before = self.status()["hook_nomem"]
        self.check_fails_alone("/big-string", r"route: out of memory")
        self.assertEqual(self.status()["hook_nomem"], before + 1)



class LeakingPolicyTest(IsolationBase):
    """A policy that keeps what it allocates fills its own state, never the process."""

    def test_memory_kept_across_requests_stays_capped(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10)
        for _ in range(3):
            self.assertEqual(self.get(conn, "/hoard"), 500)
        conn.close()
        self.assertIsNotNone(self.ferry.wait_log(r"route: (out of memory|timeout)"))
        self.assertLessEqual(self.status()["lua_memory"], 16 * 1024 * 1024)
        self.assertLess(self.ferry.rss_kb(), 64 * 1024, "the Lua cap did not bound the process")
        self.assertTrue(self.ferry.alive())


if __name__ == "__main__":
    unittest.main()


class MetricsTest(IsolationBase):
    def metrics(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=5)
        conn.request("GET", "/metrics", headers={"Host": "admin"})
        resp = conn.getresponse()
        body = resp.read().decode()
        conn.close()
        self.assertEqual(resp.status, 200)
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def test_metrics_count_answers_attempts_and_hook_failures(self):
        before = self.metrics()
        conn = http.client.HTTPConnection("127.0.0.1", self.ferry.port, timeout=10)
        statuses = [self.get(conn, "/echo") for _ in range(3)] + [self.get(conn, "/error")]
        conn.close()
        self.assertEqual(statuses, [200, 200, 200, 500])
        after = self.metrics()
        def delta(name):
            return after.get(name, 0) - before.get(name, 0)
        self.assertEqual(delta('ferry_responses_total{class="2xx"}'), 3)
        self.assertEqual(delta('ferry_responses_total{class="5xx"}'), 1)
        self.assertEqual(delta("ferry_upstream_attempts_total"), 3)
        self.assertEqual(delta('ferry_hook_failures{outcome="error"}'), 1)
        self.assertEqual(after['ferry_upstream_server_up{group="default",server="%s"}' % self.up.addr], 1)
        self.assertEqual(after["ferry_generation"], 1)
