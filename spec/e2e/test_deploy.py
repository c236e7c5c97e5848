"""What deploy/ ships: every metric the Grafana dashboard queries exists in
ferry's /metrics after traffic; the Kubernetes ConfigMaps' configs pass
`ferry check` and carry the repo's regional policies unchanged; the
Deployment's probes and termination timing fit the config's drain; the
container file builds with bootstrap on Debian 12, runs as non-root and
installs every library the binary links."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import urllib.request

import yaml

from .harness import (CLEAN_ENV, FERRY_BIN, REPO, E2ECase, HttpReader, connect, curl_many, free_port,
                      port_accepts, request_bytes, run_ferry, wait_until)
from .test_proxy_protocol import v2

DEPLOY = os.path.join(REPO, "deploy")
K8S = os.path.join(DEPLOY, "kubernetes")
REGIONS = ["eu-west-1", "us-east-1", "ap-southeast-1"]

CONFIG = """
return {
  listeners = {
    { name = "edge", type = "http", address = "$listen" },
    { name = "agents", type = "http", address = "127.0.0.1:$agents_port", policy = "$scripts/agents.lua",
      proxy_protocol = { trusted = { "127.0.0.0/8" } } },
  },
  upstreams = {
    metrics = { servers = { "$live" } },
    logs = { servers = { "$live" } },
    traces = { servers = { "127.0.0.1:$dead" } },
  },
  policy = "$scripts/regions/us-east-1.lua",
  admin = { address = "$admin" },
  log = { access = false },
}
"""


def metric_names(text):
    """Every sample name /metrics can hold: those written, and each family's (with a histogram's suffixes)."""
    names = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.match(r"[^{ ]+", line).group(0))
    return names


def dashboard_exprs():
    with open(os.path.join(DEPLOY, "grafana", "ferry.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash["templating"]["list"]:
        if isinstance(v.get("query"), dict):
            exprs.append(v["query"]["query"])
    return exprs


class DashboardTest(E2ECase):
    def test_every_queried_metric_exists(self):
        up = self.start_upstream("live")
        admin, agents = free_port(), free_port()
        ferry = self.start_ferry(CONFIG, live=up.addr, dead=free_port(), agents_port=agents,
                                 admin="127.0.0.1:%d" % admin, scripts=os.path.join(REPO, "scripts"))
        self.assertTrue(wait_until(lambda: port_accepts(agents), 5))
        for host, status in (("metrics.observability.internal", 200), ("traces.observability.internal", 502),
                             ("evil.example.com", 421)):
            results, rc, _ = curl_many([ferry.url("/echo")] * 3, host=host)
            self.assertEqual([r[0] for r in results], [status] * 3)
        sock = connect(agents)
        try:
            sock.sendall(v2(vpce="vpce-0123456789abcdef0")
                         + request_bytes("POST", "/echo", host="logs.observability.internal"))
            self.assertEqual(HttpReader(sock).read_response().status, 200)
        finally:
            sock.close()
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % admin, timeout=10) as resp:
            names = metric_names(resp.read().decode())
        exprs = dashboard_exprs()
        self.assertGreater(len(exprs), 20)
        used = set()
        for e in exprs:
            used.update(re.findall(r"\bferry_[a-zA-Z0-9_]+", e))
        missing = sorted(used - names)
        self.assertEqual(missing, [], "the dashboard queries metrics /metrics does not have")
        # The list: traffic, latency percentiles, retries and failures, health, reloads,
        # hook failures, policy decisions.
        for name in ("ferry_request_duration_seconds_bucket", "ferry_upstream_failures_total",
                     "ferry_upstream_retries_total", "ferry_upstream_server_up", "ferry_reloads_total",
                     "ferry_hook_failures", "ferry_policy_region_decisions_total"):
            self.assertIn(name, used)


def configmap(region):
    with open(os.path.join(K8S, "configmap-%s.yaml" % region)) as f:
        return yaml.safe_load(f)


class KubernetesTest(unittest.TestCase):
    def docs(self, name):
        with open(os.path.join(K8S, name)) as f:
            return list(yaml.safe_load_all(f))

    def test_configmaps_pass_ferry_check(self):
        for region in REGIONS:
            cm = configmap(region)
            self.assertEqual((cm["kind"], cm["metadata"]["name"]), ("ConfigMap", "ferry-config"))
            data = cm["data"]
            with open(os.path.join(REPO, "scripts", "regions", region + ".lua")) as f:
                self.assertEqual(data[region + ".lua"], f.read(), "%s: the policy differs from scripts/" % region)
            with open(os.path.join(REPO, "scripts", "regions", "common.lua")) as f:
                self.assertEqual(data["common.lua"], f.read(), "%s: common.lua differs from scripts/" % region)
            tmp = tempfile.mkdtemp(prefix="ferry-e2e-cm-")
            self.addCleanup(shutil.rmtree, tmp, True)
            for name, text in data.items():
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            # The upstream names resolve only inside the region: the config's documented override
            # points them at loopback, everything else is checked as shipped.
            env = dict(CLEAN_ENV, FERRY_UPSTREAM_METRICS="127.0.0.1:9", FERRY_UPSTREAM_LOGS="127.0.0.1:9",
                       FERRY_UPSTREAM_TRACES="127.0.0.1:9")
            done = subprocess.run([FERRY_BIN, "check", "-c", os.path.join(tmp, "ferry.lua")], env=env,
                                  capture_output=True, text=True, timeout=30)
            self.assertEqual(done.returncode, 0, "%s: %s" % (region, done.stdout + done.stderr))
            self.assertNotIn("warning", done.stdout + done.stderr)

    def test_deployment_fits_the_drain(self):
        dep = self.docs("deployment.yaml")[0]
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/health")
        self.assertIn("requests", c["resources"])
        self.assertEqual(c["volumeMounts"][0]["mountPath"], "/etc/ferry")
        self.assertNotIn("subPath", c["volumeMounts"][0], "a subPath mount never sees ConfigMap updates")
        self.assertEqual(pod["volumes"][0]["configMap"]["name"], "ferry-config")
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
        grace = pod["terminationGracePeriodSeconds"]
        live = c["livenessProbe"]
        for region in REGIONS:
            config = configmap(region)["data"]["ferry.lua"]
            m = re.search(r"drain = \{ delay = (\d+), timeout = (\d+) \}", config)
            self.assertTrue(m, region)
            delay, timeout = int(m.group(1)), int(m.group(2))
            self.assertGreater(grace, pre_stop + delay + timeout)
            self.assertGreater(live["periodSeconds"] * live["failureThreshold"], delay + timeout,
                               "liveness (/health is 503 while draining) would restart a draining pod")
            self.assertIn("watch = true", config)
        svc = self.docs("service.yaml")[0]
        attrs = svc["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-target-group-attributes"]
        dereg = int(re.search(r"deregistration_delay.timeout_seconds=(\d+)", attrs).group(1))
        self.assertGreaterEqual(dereg, pre_stop + delay + timeout)
        pdb = self.docs("pdb.yaml")[0]
        self.assertEqual(pdb["kind"], "PodDisruptionBudget")
        hpa = self.docs("hpa.yaml")[0]
        self.assertEqual(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu")
        self.assertEqual(hpa["spec"]["scaleTargetRef"]["name"], dep["metadata"]["name"])


class ContainerfileTest(unittest.TestCase):
    def test_builds_with_bootstrap_and_installs_what_ferry_links(self):
        with open(os.path.join(DEPLOY, "Containerfile")) as f:
            text = f.read()
        stages = re.findall(r"^FROM (\S+)", text, re.M)
        self.assertEqual(stages[0].split(" ")[0], "debian:12")
        self.assertTrue(stages[-1].startswith("debian:12"))
        self.assertIn("./bootstrap build", text)
        user = re.findall(r"^USER (\S+)", text, re.M)
        self.assertTrue(user and not user[-1].startswith(("0", "root")), user)
        runtime = text[text.rindex("FROM "):]
        if shutil.which("ldd") is None or shutil.which("dpkg") is None:
            self.skipTest("ldd or dpkg missing: cannot map the binary's libraries to packages")
        out = subprocess.run(["ldd", FERRY_BIN], capture_output=True, text=True, timeout=30).stdout
        base = {"libc6", "libgcc-s1", "libstdc++6"}  # in every Debian image
        for path in re.findall(r"=> (/\S+)", out):
            if "asan" in path or "ubsan" in path:
                continue
            owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True)
            if owner.returncode != 0:
                owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True)
            pkg = owner.stdout.split(":")[0]
            self.assertTrue(pkg, "no package owns %s" % path)
            if pkg not in base:
                self.assertRegex(runtime, r"\b%s\b" % re.escape(pkg), "%s (for %s) is not installed" % (pkg, path))


if __name__ == "__main__":
    unittest.main()
