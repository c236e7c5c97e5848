"""Prometheus exposition (`GET /metrics`, docs/operations.md "Metrics"): after
traffic the text passes `promtool check metrics`, and the latency histograms
and per-server counters agree with the requests that were sent."""

import re
import shutil
import subprocess
import time
import unittest
import urllib.request

from .harness import CLEAN_ENV, E2ECase, curl_many, free_port

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = {
    metrics = { servers = { "$metrics" } },
    dead = { servers = { "127.0.0.1:$dead" }, retry = { tries = 2, backoff = 0 } },
  },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = false },
}
"""

POLICY = """
local seen = require("ferry.metrics").counter("hosts_seen", "requests by host kind", { "kind" })
return {
  route = function(req)
    seen:inc(req.host == "a.test" and "known" or "other")
    if req.host == "a.test" then return "metrics" end
    if req.host == "dead.test" then return "dead" end
    return req:respond(421, "unknown host\\n")
  end,
}
"""

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """[(name, {label: value}, float)] of every sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, "not a sample line: %r" % line
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def value(samples, name, **labels):
    """Sum of the samples called name whose labels include the given ones."""
    return sum(v for n, l, v in samples
               if n == name and all(l.get(k) == str(w) for k, w in labels.items()))


def scrape(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as resp:
        return resp.read().decode()


class MetricsTest(E2ECase):
    OK, REFUSED, DEAD = 30, 7, 3

    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("metrics")
        cls.admin = free_port()
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, metrics=cls.up.addr, dead=free_port(),
                                        admin="127.0.0.1:%d" % cls.admin)
        start = time.monotonic()
        for host, n, status in (("a.test", cls.OK, 200), ("other.test", cls.REFUSED, 421),
                                ("dead.test", cls.DEAD, 502)):
            results, rc, _ = curl_many([cls.ferry.url("/echo")] * n, host=host)
            assert rc == 0 and [r[0] for r in results] == [status] * n, (host, rc, results)
        cls.elapsed = time.monotonic() - start
        cls.text = scrape(cls.admin)
        cls.samples = parse(cls.text)

    def test_promtool_accepts_the_exposition(self):
        tool = shutil.which("promtool")
        if tool is None:
            self.fail("promtool is not installed (Debian package prometheus, in bootstrap's apt line)")
        done = subprocess.run([tool, "check", "metrics"], input=self.text, capture_output=True,
                              text=True, timeout=60, env=CLEAN_ENV)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertEqual((done.stdout + done.stderr).strip(), "", "promtool lint findings")

    def test_request_histogram_counts_every_request(self):
        s = self.samples
        name = "ferry_request_duration_seconds"
        self.assertEqual(value(s, name + "_count", listener="edge", group="metrics", **{"class": "2xx"}),
                         self.OK)
        self.assertEqual(value(s, name + "_count", listener="edge", group="none", **{"class": "4xx"}),
                         self.REFUSED)
        self.assertEqual(value(s, name + "_count", listener="edge", group="dead", **{"class": "5xx"}),
                         self.DEAD)
        self.assertEqual(value(s, name + "_count"), self.OK + self.REFUSED + self.DEAD)
        # Buckets are cumulative and end at the count; the sum lies within the traffic's wall time.
        for group, count in (("metrics", self.OK), ("none", self.REFUSED), ("dead", self.DEAD)):
            buckets = [(float(l["le"]), v) for n, l, v in s if n == name + "_bucket" and l["group"] == group]
            self.assertEqual(len(buckets), 17)
            counts = [v for _, v in sorted(buckets)]
            self.assertEqual(counts, sorted(counts), "buckets not cumulative")
            self.assertEqual(counts[-1], count)
            total = value(s, name + "_sum", group=group)
            self.assertTrue(0 < total <= self.elapsed, (group, total, self.elapsed))

    def test_upstream_histograms_and_server_counters(self):
        s = self.samples
        server = self.up.addr
        self.assertEqual(value(s, "ferry_upstream_header_duration_seconds_count", group="metrics"), self.OK)
        connects = value(s, "ferry_upstream_connect_duration_seconds_count", group="metrics")
        self.assertTrue(1 <= connects <= self.OK, connects)  # pooled connections are not connects
        self.assertEqual(value(s, "ferry_upstream_connect_duration_seconds_count", group="dead"), 0)
        self.assertEqual(value(s, "ferry_upstream_responses_total", group="metrics", server=server,
                               **{"class": "2xx"}), self.OK)
        self.assertEqual(value(s, "ferry_upstream_server_attempts_total", group="metrics", server=server),
                         self.OK)
        self.assertEqual(value(s, "ferry_upstream_server_attempts_total", group="dead"), 2 * self.DEAD)
        self.assertEqual(value(s, "ferry_hook_duration_seconds_count", hook="route"),
                         self.OK + self.REFUSED + self.DEAD)
        self.assertEqual(value(s, "ferry_policy_hosts_seen_total", kind="known"), self.OK)
        self.assertEqual(value(s, "ferry_policy_hosts_seen_total", kind="other"), self.REFUSED + self.DEAD)
        for n, labels, _ in s:
            if "server" in labels:
                self.assertRegex(labels["server"], r"^127\.0\.0\.1:\d+$", "servers are labelled by address")


if __name__ == "__main__":
    unittest.main()
