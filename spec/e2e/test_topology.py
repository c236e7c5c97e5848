"""The layout ferry was built for, end to end (examples/topology/): three regions
in network namespaces, real agents (Prometheus in agent mode, the
OpenTelemetry JavaScript SDK), NLB and ALB stand-ins, real receivers. While it
runs, us-east-1's policy is reloaded to shed traces and back, an
ap-southeast-1 instance is drained, a metrics ALB node is killed and brought
back, and the logs ALB's addresses change in DNS; then the receivers must
hold every sample, span and log record the agents sent, each agent's traffic
must have gone through its own region's fleet, and no agent may have seen an
error it did not retry successfully.

Needs root and `ip netns` (it creates and removes its own namespaces), the
Debian `prometheus` and `tcpdump` packages and the npm packages of examples/topology/ (both
installed by ./bootstrap); skipped with the reason otherwise. The latency
ferry adds is measured and printed, not asserted (timings are the bench's
business); examples/topology/README.md shows a run's report.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPOLOGY = os.path.join(REPO, "examples", "topology")
PYTHON = "/usr/bin/python3"  # Debian's, with python3-matplotlib for the plot


def missing():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None or subprocess.run(["ip", "netns", "list"], capture_output=True).returncode != 0:
        return "no `ip netns` here"
    if os.environ.get("FERRY_SANITIZED"):
        return "runs once, on the normal build (the layout is 6 ferry instances and 4 Prometheus servers on 2 cores)"
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (./bootstrap installs it)"
    if shutil.which("prometheus") is None:
        return "the Debian prometheus package is not installed (./bootstrap installs it)"
    if shutil.which("node") is None or not os.path.isdir(os.path.join(TOPOLOGY, "node_modules", "@opentelemetry")):
        return "node or examples/topology/node_modules is missing (./bootstrap runs npm ci there)"
    if not os.path.exists(PYTHON):
        return "no " + PYTHON
    return None


@unittest.skipIf(missing(), missing())
class TopologyTest(unittest.TestCase):
    def test_three_regions_lose_nothing_through_reload_drain_failure_and_dns_change(self):
        ferry = os.environ.get("FERRY_BIN", os.path.join(REPO, "build", "ferry"))
        results = tempfile.mkdtemp(prefix="ferry-topology-results-")
        try:
            run = subprocess.run([PYTHON, os.path.join(TOPOLOGY, "topology.py"), "--ferry", ferry,
                                  "--results", results], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, timeout=230)
            sys.stdout.write(run.stdout[-6000:])
            path = os.path.join(results, "summary.json")
            self.assertTrue(os.path.exists(path), "the scenario wrote no summary:\n" + run.stdout[-3000:])
            with open(path) as f:
                summary = json.load(f)
            functional = [c for c in summary["checks"] if not c["timed"]]
            self.assertGreater(len(functional), 30)
            failed = ["%s: %s" % (c["name"], c["detail"]) for c in functional if not c["ok"]]
            self.assertEqual([], failed)
            for region, rs in summary["regions"].items():
                self.assertGreater(rs["samples"]["sent"], 1000, region)
                self.assertGreater(rs["spans"]["created"], 500, region)
            for c in summary["checks"]:
                if c["timed"]:
                    print("reported:", c["name"], "-", c["detail"])
            self.assertEqual(0, run.returncode, run.stdout[-3000:])
        finally:
            shutil.rmtree(results, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
