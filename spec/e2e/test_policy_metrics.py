"""Policy counters (ferry.metrics, docs/policy.md "Metrics"): declared at load
time, incremented from route, shown in /metrics as ferry_policy_<name>_total
with the right values, kept across a reload that declares them again, gone
after one that does not; misuse is refused with file:line."""

import os
import signal
import unittest
import urllib.request

from .harness import E2ECase, check, curl_many, free_port, ConfigDir

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$metrics" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = false },
}
"""

POLICY = """
local metrics = require "ferry.metrics"
local decisions = metrics.counter("decisions", "what route decided", { "decision", "host" })
local calls = metrics.counter("route_calls_total", "route calls")
return {
  route = function(req)
    calls:inc()
    if req.host == "a.test" then
      decisions:inc("admitted", "a.test")
      return "metrics"
    end
    if req.host == "bad.test" then metrics.counter("late", "declared in a hook") end
    if req.host == "num.test" then decisions:inc("num", 7) end
    if req.host == "short.test" then decisions:inc("admitted") end
    decisions:inc("refused", req.host == "b.test" and "b.test" or "other")
    return req:respond(403, "no\\n")
  end,
}
"""

POLICY_WITHOUT = """
return { route = function(req) return "metrics" end }
"""


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
        return resp.read().decode()


def sample(text, line_start):
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


class PolicyMetricsTest(E2ECase):
    def send(self, host, n):
        results, rc, _ = curl_many([self.ferry.url("/echo")] * n, host=host)
        self.assertEqual(rc, 0)
        return [r[0] for r in results]

    def test_counts_survive_a_reload_that_declares_them(self):
        up = self.start_upstream("metrics")
        admin = free_port()
        self.ferry = self.start_ferry(CONFIG, POLICY, metrics=up.addr, admin="127.0.0.1:%d" % admin)
        self.assertEqual(self.send("a.test", 5), [200] * 5)
        self.assertEqual(self.send("b.test", 3), [403] * 3)
        text = scrape(admin)
        self.assertIn("# TYPE ferry_policy_decisions_total counter", text)
        self.assertIn("# HELP ferry_policy_decisions_total what route decided", text)
        admitted = 'ferry_policy_decisions_total{decision="admitted",host="a.test"}'
        refused = 'ferry_policy_decisions_total{decision="refused",host="b.test"}'
        self.assertEqual(sample(text, admitted), 5)
        self.assertEqual(sample(text, refused), 3)
        self.assertEqual(sample(text, "ferry_policy_route_calls_total"), 8)

        # A number is a label value like its text; a wrong number of values is refused
        # (a 500) after the series were counted before, and counts nothing.
        self.assertEqual(self.send("num.test", 4), [403] * 4)
        self.assertEqual(self.send("short.test", 2), [500] * 2)
        self.assertTrue(self.ferry.wait_log(r"1 label value given, the counter has 2"))
        self.assertEqual(self.send("a.test", 1), [200])
        text = scrape(admin)
        self.assertEqual(sample(text, 'ferry_policy_decisions_total{decision="num",host="7"}'), 4)
        self.assertEqual(sample(text, admitted), 6)
        self.assertEqual(sample(text, "ferry_policy_route_calls_total"), 15)

        # Declaring from a hook is refused: that request fails, the counters go on.
        self.assertEqual(self.send("bad.test", 1), [500])
        self.assertTrue(self.ferry.wait_log(r"counters are declared when the policy loads"))

        os.kill(self.ferry.pid, signal.SIGHUP)
        self.assertTrue(self.ferry.wait_log(r"generation 2 is live"))
        self.assertEqual(self.send("a.test", 2), [200] * 2)
        text = scrape(admin)
        self.assertEqual(sample(text, admitted), 8)
        self.assertEqual(sample(text, refused), 3)
        self.assertEqual(sample(text, "ferry_policy_route_calls_total"), 18)

        with open(self.ferry.policy_path, "w") as f:
            f.write(POLICY_WITHOUT)
        os.kill(self.ferry.pid, signal.SIGHUP)
        self.assertTrue(self.ferry.wait_log(r"generation 3 is live"))
        text = scrape(admin)
        self.assertNotIn("ferry_policy_", text, "a counter the live policy no longer declares is still shown")


class PolicyMetricsCheckTest(unittest.TestCase):
    def check_policy(self, policy):
        d = ConfigDir(CONFIG.replace("$listen", "127.0.0.1:1").replace("$metrics", "127.0.0.1:2")
                      .replace("$admin", "127.0.0.1:3"), policy)
        self.addCleanup(d.cleanup)
        return d.check()

    def test_bad_declarations_name_file_and_line(self):
        cases = [
            ('local m = require "ferry.metrics"\nm.counter("Bad-Name", "x")\n', "the name must match"),
            ('local m = require "ferry.metrics"\nm.counter("ok", "x", { "le-x" })\n', "is not a label name"),
            ('local m = require "ferry.metrics"\nm.counter("ok", "x", { "a" })\nm.counter("ok", "x", { "b" })\n',
             "is declared already with labels (a)"),
        ]
        for policy, message in cases:
            rc, out = self.check_policy(policy + "return { route = function(req) return 'metrics' end }\n")
            self.assertEqual(rc, 1, out)
            self.assertRegex(out, r"policy\.lua:\d+: ferry\.metrics\.counter: ", out)
            self.assertIn(message, out)


if __name__ == "__main__":
    unittest.main()
