#!/usr/bin/python3
"""ferry's home layout on one machine: three regions in network namespaces.

    sudo python3 examples/topology/topology.py [--ferry build/ferry] [--results DIR]

builds eu-west-1 (the main region, with the observability cluster) and the
satellites us-east-1 and ap-southeast-1, each with an agent VPC, a private
hosted zone, an endpoint service NLB and a fleet of two ferry instances; runs
real agents (Prometheus in agent mode, the OpenTelemetry JavaScript SDK)
against real receivers (Prometheus with its remote-write receiver, an OTLP/HTTP
receiver) while it reloads, drains, kills and re-points parts of the layout;
then checks from the receivers that nothing was lost and writes report.md,
plot.png and summary.json. Everything it creates (namespaces, links, the
/etc/netns files of its namespaces, processes, a work directory) carries its
PID in the name and is removed on exit, also on failure or Ctrl-C.
README.md beside this file explains each part.
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PARTS = os.path.join(HERE, "parts.py")
sys.path.insert(0, HERE)
import parts  # noqa: E402  (the capture reader)

# name, short code, index (used in addresses), one-way delay to eu-west-1 in ms
REGIONS = [("eu-west-1", "eu", 1, 0), ("us-east-1", "us", 2, 35), ("ap-southeast-1", "ap", 3, 80)]
MAIN = "eu-west-1"
KINDS = ("metrics", "logs", "traces")
# The ALBs of the cluster: two nodes (addresses) each, and the two that
# replace the logs ALB's nodes when its addresses change.
ALB_NODES = {"metrics": [11, 12], "logs": [21, 22], "traces": [31, 32]}
LOGS_NEW = [23, 24]
ALL_NODES = [11, 12, 21, 22, 23, 24, 31, 32]
RECEIVER = {"metrics": "127.0.0.1:9090", "logs": "127.0.0.1:4318", "traces": "127.0.0.1:4318"}
DNS_TTL = 2  # the zone's TTL: 60 s in AWS, shortened so the test sees a change
SCRAPE_INTERVAL = 2

# The scenario: (seconds after the agents start, event id, what happens).
EVENTS = [
    (20, "shed", "us-east-1 policy reloaded: traces shed (503 + Retry-After)"),
    (26, "unshed", "us-east-1 policy reloaded: shedding off"),
    (40, "drain", "ap-southeast-1 ferry-a drained (SIGTERM, 4 s drain delay)"),
    (55, "alb-kill", "metrics ALB node .12 killed"),
    (70, "alb-back", "metrics ALB node .12 back"),
    (85, "dns-move", "logs ALB addresses changed in DNS (.21/.22 -> .23/.24)"),
]
# The reference hop: HAProxy, when the machine has it, at 198.19.R.13:8081 in
# each fleet's namespace, in front of the same next hop as the probe's direct
# path. The probe's requests through it are timed from the same capture as
# ferry's: what any proxy at that place pays on this machine.
REF_PORT = 8081
OLD_LOGS_RETIRE = 100  # the old logs ALB nodes stop (an ALB retires replaced nodes)
RUN_END = 110


def vpce_for(region):
    return "vpce-0" + hashlib.sha1(region.encode()).hexdigest()[:16]


def sh(*argv, check=True):
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(argv), r.stdout.strip()))
    return r


def log(*words):
    print("[topology %s]" % time.strftime("%H:%M:%S"), *words, flush=True)


class Layout:
    def __init__(self, ferry, work, agent_rate):
        self.ferry = os.path.abspath(ferry)
        self.work = work
        self.agent_rate = agent_rate
        pid = os.getpid()
        self.prefix = "fyt%d" % pid
        self.vprefix = "f%d" % pid
        self.procs = {}  # name -> (Popen, logfile)
        self.namespaces = []
        self.notes = []
        self.t0 = None
        self.event_times = {}
        self.delay_mode = "relay"
        self.reference = shutil.which("haproxy")

    # ---- namespaces and links ------------------------------------------

    def ns(self, region_code, role):
        return "%s-%s-%s" % (self.prefix, region_code, role)

    def add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def veth(self, a_ns, a_if, a_addr, b_ns, b_if, b_addr):
        sh("ip", "link", "add", a_if, "netns", a_ns, "type", "veth", "peer", "name", b_if, "netns", b_ns)
        for ns, ifn, addr in ((a_ns, a_if, a_addr), (b_ns, b_if, b_addr)):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", ifn)
            sh("ip", "-n", ns, "link", "set", ifn, "up")

    def build_network(self):
        cluster = self.ns("eu", "cluster")
        self.add_ns(cluster)
        for n in ALL_NODES:
            sh("ip", "-n", cluster, "addr", "add", "198.19.100.%d/32" % n, "dev", "lo")
        for region, code, r, delay in REGIONS:
            agent, edge = self.ns(code, "agent"), self.ns(code, "edge")
            self.add_ns(agent)
            self.add_ns(edge)
            # The agent VPC reaches only its VPC endpoint (and its resolver).
            self.veth(agent, self.vprefix + code + "a", "198.18.%d.10/24" % r,
                      edge, self.vprefix + code + "e", "198.18.%d.1/24" % r)
            for i in (11, 12, 13):
                sh("ip", "-n", edge, "addr", "add", "198.19.%d.%d/32" % (r, i), "dev", "lo")
            # The peering link (or, for the main region, the VPC's own route).
            peer_if, cl_if = self.vprefix + code + "p", self.vprefix + code + "c"
            self.veth(edge, peer_if, "198.18.%d.1/24" % (100 + r), cluster, cl_if, "198.18.%d.2/24" % (100 + r))
            sh("ip", "-n", edge, "route", "add", "198.19.100.0/24", "via", "198.18.%d.2" % (100 + r))
            if delay:
                for n in ALL_NODES:
                    sh("ip", "-n", edge, "addr", "add", "198.19.%d.%d/32" % (r, 100 + n), "dev", "lo")
                self.shape_link(edge, peer_if, cluster, cl_if, delay)
            os.makedirs("/etc/netns/" + agent, exist_ok=True)
            with open("/etc/netns/%s/resolv.conf" % agent, "w") as f:
                f.write("nameserver 198.18.%d.1\noptions timeout:1 attempts:3\n" % r)

    def shape_link(self, a_ns, a_if, b_ns, b_if, delay):
        """netem where the kernel has it; else tbf for bandwidth and the relay for delay."""
        ok = sh("ip", "netns", "exec", a_ns, "tc", "qdisc", "add", "dev", a_if, "root", "netem",
                "delay", "%dms" % delay, "rate", "1gbit", check=False).returncode == 0
        if ok:
            sh("ip", "netns", "exec", b_ns, "tc", "qdisc", "add", "dev", b_if, "root", "netem",
               "delay", "%dms" % delay, "rate", "1gbit")
            self.delay_mode = "netem"
            return
        for ns, ifn in ((a_ns, a_if), (b_ns, b_if)):
            r = sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", ifn, "root", "tbf",
                   "rate", "1gbit", "burst", "256kb", "latency", "50ms", check=False)
            if r.returncode != 0:
                self.note("tbf on %s failed: %s" % (ifn, r.stdout.strip()))

    def note(self, text):
        self.notes.append(text)
        log(text)

    # ---- processes ----------------------------------------------------

    def start(self, name, ns, argv, env=None, cwd=None):
        path = os.path.join(self.work, "logs", name + ".log")
        f = open(path, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        p = subprocess.Popen(["ip", "netns", "exec", ns] + argv, stdout=f, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=full_env, cwd=cwd, start_new_session=True)
        self.procs[name] = (p, path)
        return p

    def signal(self, name, sig):
        p, _ = self.procs[name]
        if p.poll() is None:
            os.kill(p.pid, sig)

    def wait_exit(self, name, timeout):
        p, _ = self.procs[name]
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop_all(self):
        # The agents first, the receivers last: what is in flight can land.
        for name, (p, _) in reversed(list(self.procs.items())):
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for name, (p, _) in self.procs.items():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()

    def teardown(self):
        self.stop_all()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree("/etc/netns/" + ns, ignore_errors=True)
        self.namespaces = []

    def in_ns(self, ns, *argv, timeout=30):
        return subprocess.run(["ip", "netns", "exec", ns] + list(argv), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def http(self, ns, url, data=None, timeout=10):
        argv = ["curl", "-sS", "--max-time", str(timeout), url]
        if data is not None:
            argv += ["-X", "POST", "--data-binary", data]
        r = self.in_ns(ns, *argv, timeout=timeout + 5)
        if r.returncode != 0:
            raise RuntimeError("%s: %s" % (url, r.stdout.strip()))
        return r.stdout

    def wait_http(self, ns, url, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.in_ns(ns, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "1", url)
            if r.stdout.strip() == "200":
                return
            time.sleep(0.3)
        raise RuntimeError("%s did not come up (%s)" % (what, url))

    # ---- the parts ----------------------------------------------------

    def zone(self, region, r, delay, logs_nodes):
        """The private hosted zone of a region, and the ALB names as its fleet resolves them."""
        z = {"%s.observability.internal" % k: ["198.18.%d.1" % r] for k in KINDS}
        nodes = dict(ALB_NODES, logs=logs_nodes)
        for k in KINDS:
            if delay:  # through the peering link's relay addresses
                z["%s.alb.%s.internal" % (k, MAIN)] = ["198.19.%d.%d" % (r, 100 + n) for n in nodes[k]]
            else:
                z["%s.alb.%s.internal" % (k, MAIN)] = ["198.19.100.%d" % n for n in nodes[k]]
        return z

    def write_zone(self, region, r, delay, logs_nodes):
        path = os.path.join(self.work, region, "zone.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.zone(region, r, delay, logs_nodes), f, indent=1)
        os.replace(tmp, path)

    def ferry_config(self, region, r, inst):
        ip = "198.19.%d.%d" % (r, 11 if inst == "a" else 12)
        groups = "\n".join(
            '    %s = group("%s.alb.%s.internal:80"),' % (k, k, MAIN) for k in KINDS)
        return """-- ferry-%(inst)s of the %(region)s fleet (generated by topology.py)
local function group(server)
  return {
    servers = { server },
    timeouts = { connect = 2, read = 30, write = 30 },
    keepalive = { max_idle = 16, idle_timeout = 50 },
    retry = { tries = 3, backoff = 0.05 },
    health = { max_fails = 3, eject = 5 },
  }
end

return {
  listeners = {
    { name = "edge", type = "http", address = "%(ip)s:8080",
      proxy_protocol = { trusted = { "198.18.0.0/15" } } },
  },
  upstreams = {
%(groups)s
  },
  policy = "topology.lua",
  admin = { address = "%(ip)s:9180" },
  dns = { servers = { "198.18.%(r)d.1:53" }, min_ttl = 1, max_ttl = 10, timeout = 2 },
  drain = { delay = 4, timeout = 10 },
  limits = { header_timeout = 10, keepalive_timeout = 75 },
  log = { level = "info", access = true },
}
""" % dict(inst=inst, region=region, ip=ip, groups=groups, r=r)

    def write_policy(self, region):
        d = os.path.join(self.work, region)
        for f in ("common.lua", region + ".lua"):
            shutil.copy(os.path.join(REPO, "scripts", "regions", f), d)
        with open(os.path.join(d, "topology.lua"), "w") as f:
            f.write("""-- The region's policy exactly as shipped (scripts/regions/%(region)s.lua),
-- plus a log hook that records, for the scenario's checks, the VPC endpoint
-- id ferry got from the NLB's PROXY v2 header.
local ferry = require "ferry"
local M = require "%(region)s"

function M.log(req, res)
  local p = req.proxy
  ferry.log.info("topology vpce=" .. tostring(p and p.vpce_id) .. " region=%(region)s host="
                 .. req.host .. " status=" .. tostring(res.status))
end

return M
""" % dict(region=region))

    def set_shed(self, region, traces):
        """The reload step's change: the mechanism the region policy has (shed.traces)."""
        path = os.path.join(self.work, region, region + ".lua")
        with open(path) as f:
            src = f.read()
        new = re.sub(r"traces = (true|false) }", "traces = %s }" % ("true" if traces else "false"), src)
        new = re.sub(r"retry_after = \d+", "retry_after = 1", new)
        if new == src and traces:
            raise RuntimeError("%s: no shed table to change" % path)
        with open(path, "w") as f:
            f.write(new)

    def prom_agent_config(self, region, scrape=True):
        scrape_cfg = """scrape_configs:
  - job_name: prometheus
    static_configs: [{ targets: ["127.0.0.1:9090"] }]
  - job_name: app
    static_configs: [{ targets: ["127.0.0.1:9464"] }]
""" if scrape else "scrape_configs: []\n"
        return """global:
  scrape_interval: %ds
  external_labels: { agent_region: %s }
%sremote_write:
  - url: http://metrics.observability.internal/api/v1/write
    queue_config: { batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 2s, capacity: 2500, max_samples_per_send: 500 }
""" % (SCRAPE_INTERVAL, region, scrape_cfg)

    def start_all(self):
        os.makedirs(os.path.join(self.work, "logs"), exist_ok=True)
        if not self.reference:
            self.note("no haproxy on this machine: the reference hop beside ferry is not measured "
                      "(./bootstrap deps bench installs it)")
        cluster = self.ns("eu", "cluster")
        c = os.path.join(self.work, "cluster")
        os.makedirs(c, exist_ok=True)
        with open(os.path.join(c, "receiver.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 15s\n")
        self.start("receiver-prometheus", cluster,
                   ["prometheus", "--config.file=" + os.path.join(c, "receiver.yml"),
                    "--storage.tsdb.path=" + os.path.join(c, "tsdb"), "--web.listen-address=127.0.0.1:9090",
                    "--web.enable-remote-write-receiver", "--log.level=warn"])
        self.start("receiver-otlp", cluster, [sys.executable, PARTS, "otlp", "--listen", "127.0.0.1:4318"])
        for kind, nodes in dict(ALB_NODES, logs=ALB_NODES["logs"] + LOGS_NEW).items():
            for n in nodes:
                self.start_alb(kind, n)
        for region, code, r, delay in REGIONS:
            d = os.path.join(self.work, region)
            os.makedirs(d, exist_ok=True)
            edge = self.ns(code, "edge")
            self.write_zone(region, r, delay, ALB_NODES["logs"])
            self.start("%s-dns" % code, edge, [sys.executable, PARTS, "dns", "--listen", "198.18.%d.1:53" % r,
                                               "--zone", os.path.join(d, "zone.json"), "--ttl", str(DNS_TTL)])
            if delay:
                one_way = 0 if self.delay_mode == "netem" else delay
                maps = []
                for n in ALL_NODES:
                    maps += ["--map", "198.19.%d.%d:80=198.19.100.%d:80" % (r, 100 + n, n)]
                self.start("%s-relay" % code, edge, [sys.executable, PARTS, "relay", "--delay-ms", str(one_way)] + maps)
        self.wait_http(cluster, "http://127.0.0.1:9090/-/ready", "receiver prometheus", 30)
        self.wait_http(cluster, "http://127.0.0.1:4318/probe", "otlp receiver")
        time.sleep(0.5)  # the dns stubs bind
        for region, code, r, delay in REGIONS:
            d = os.path.join(self.work, region)
            edge = self.ns(code, "edge")
            self.write_policy(region)
            for inst in ("a", "b"):
                cfg = os.path.join(d, "ferry-%s.lua" % inst)
                with open(cfg, "w") as f:
                    f.write(self.ferry_config(region, r, inst))
                self.start("%s-ferry-%s" % (code, inst), edge, [self.ferry, "run", "-c", cfg])
            for inst, i in (("a", 11), ("b", 12)):
                self.wait_http(edge, "http://198.19.%d.%d:9180/health" % (r, i), "%s ferry-%s" % (region, inst))
            if self.reference:
                self.start_reference(code, r, delay, d)
            self.start("%s-nlb" % code, edge,
                       [sys.executable, PARTS, "nlb", "--listen", "198.18.%d.1:80" % r, "--vpce", vpce_for(region),
                        "--target", "198.19.%d.11:8080:9180" % r, "--target", "198.19.%d.12:8080:9180" % r])
        time.sleep(1)
        for region, code, r, delay in REGIONS:
            d = os.path.join(self.work, region)
            agent = self.ns(code, "agent")
            with open(os.path.join(d, "agent-prometheus.yml"), "w") as f:
                f.write(self.prom_agent_config(region))
            self.start("%s-agent-node" % code, agent, ["node", os.path.join(HERE, "agent.js")],
                       env={"REGION": region, "RATE": str(self.agent_rate),
                            "STATS_FILE": os.path.join(d, "agent-stats.json")}, cwd=HERE)
            self.start("%s-agent-prometheus" % code, agent,
                       ["prometheus", "--enable-feature=agent",
                        "--config.file=" + os.path.join(d, "agent-prometheus.yml"),
                        "--storage.agent.path=" + os.path.join(d, "agent-wal"),
                        "--web.listen-address=127.0.0.1:9090", "--web.enable-lifecycle", "--log.level=warn"])
        for region, code, r, delay in REGIONS:
            self.wait_http(self.ns(code, "agent"), "http://127.0.0.1:9090/-/ready", region + " prometheus agent", 30)
        self.t0 = time.time()
        self.loadavg = {"start": os.getloadavg()[0]}

    def next_hop(self, r, delay):
        """The traces ALB node .31, as the fleet reaches it (through the relay for a satellite)."""
        return "198.19.%d.%d:80" % (r, 131) if delay else "198.19.100.31:80"

    def start_reference(self, code, r, delay, d):
        cfg = os.path.join(d, "reference-haproxy.cfg")
        with open(cfg, "w") as f:
            f.write("""# The reference hop (generated by topology.py): HAProxy where ferry sits,
# in front of the probe's next hop, with the same PROXY v2 header and keep-alive.
global
  log stderr format raw local0 err
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend edge
  bind 198.19.%(r)d.13:%(port)d accept-proxy
  default_backend next_hop
backend next_hop
  server traces %(hop)s
""" % dict(r=r, port=REF_PORT, hop=self.next_hop(r, delay)))
        self.start("%s-reference" % code, self.ns(code, "edge"), [self.reference, "-db", "-f", cfg])

    def start_alb(self, kind, n):
        self.start("alb-%s-%d" % (kind, n), self.ns("eu", "cluster"),
                   [sys.executable, PARTS, "alb", "--listen", "198.19.100.%d:80" % n, "--to", RECEIVER[kind]])

    # ---- the scenario -------------------------------------------------

    def at(self, t):
        wait = self.t0 + t - time.time()
        if wait > 0:
            time.sleep(wait)

    def reload(self, code, region):
        d = os.path.join(self.work, region)
        for inst in ("a", "b"):
            r = self.in_ns(self.ns(code, "edge"), self.ferry, "reload", "-c", os.path.join(d, "ferry-%s.lua" % inst))
            if r.returncode != 0:
                raise RuntimeError("ferry reload %s ferry-%s: %s" % (region, inst, r.stdout.strip()))

    def probe(self, code, r, delay, inst_ip, out):
        try:
            self.probe_once(code, r, delay, inst_ip, out)
        finally:
            self.signal("%s-capture" % code, signal.SIGINT)  # tcpdump writes out and exits

    def probe_once(self, code, r, delay, inst_ip, out):
        ref = ["--ref", "198.19.%d.13:%d" % (r, REF_PORT)] if self.reference else []
        res = self.in_ns(self.ns(code, "edge"), sys.executable, PARTS, "probe", "--via", inst_ip + ":8080",
                         "--direct", self.next_hop(r, delay), "--host", "traces.observability.internal",
                         "--pairs", "100" if delay else "200", "--gap", "0.02", *ref, timeout=150)
        try:
            out[code] = json.loads(res.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            out[code] = {"error": res.stdout[-500:]}

    def run_scenario(self):
        probes = {}
        threads = []
        for region, code, r, delay in REGIONS:
            # ap-southeast-1's probe uses ferry-b: ferry-a is drained mid-run.
            ip = "198.19.%d.%d" % (r, 12 if code == "ap" else 11)
            th = threading.Thread(target=self.probe, args=(code, r, delay, ip, probes), daemon=True)
            threads.append(th)
        # A capture in each fleet's namespace, beside ferry, for ferry's own
        # share of each probe request (parts.py hops).
        for region, code, r, delay in REGIONS:
            self.start("%s-capture" % code, self.ns(code, "edge"),
                       ["tcpdump", "-i", "any", "-U", "-Z", "root", "-s", "400", "-w",
                        os.path.join(self.work, region, "probe.pcap"),
                        "tcp port 8080 or tcp port %d or (tcp port 80 and net 198.19.0.0/16)" % REF_PORT])
        self.at(2)
        for th in threads:
            th.start()
        for t, ev, text in EVENTS:
            self.at(t)
            self.event_times[ev] = time.time()
            log(ev, "-", text)
            if ev == "shed":
                self.set_shed("us-east-1", True)
                self.reload("us", "us-east-1")
            elif ev == "unshed":
                self.set_shed("us-east-1", False)
                self.reload("us", "us-east-1")
            elif ev == "drain":
                self.signal("ap-ferry-a", signal.SIGTERM)
            elif ev == "alb-kill":
                self.signal("alb-metrics-12", signal.SIGKILL)
            elif ev == "alb-back":
                self.wait_exit("alb-metrics-12", 5)
                self.start_alb("metrics", 12)
            elif ev == "dns-move":
                for region, code, r, delay in REGIONS:
                    self.write_zone(region, r, delay, LOGS_NEW)
        self.at(OLD_LOGS_RETIRE)
        self.event_times["logs-retire"] = time.time()
        for n in ALB_NODES["logs"]:
            self.signal("alb-logs-%d" % n, signal.SIGTERM)
        self.at(RUN_END)
        self.event_times["end"] = time.time()
        self.loadavg["end"] = os.getloadavg()[0]
        for th in threads:
            th.join(60)
        self.drain_exit = self.wait_exit("ap-ferry-a", 1)
        return probes

    def finish_agents(self):
        """Stop producing, then let every agent send what it holds."""
        self.freeze_time = time.time()
        for region, code, r, delay in REGIONS:
            self.signal("%s-agent-node" % code, signal.SIGTERM)
            d = os.path.join(self.work, region)
            with open(os.path.join(d, "agent-prometheus.yml"), "w") as f:
                f.write(self.prom_agent_config(region, scrape=False))
            self.http(self.ns(code, "agent"), "http://127.0.0.1:9090/-/reload", data="")
        for region, code, r, delay in REGIONS:
            self.wait_exit("%s-agent-node" % code, 60)
        # Removed targets get staleness markers after about two intervals;
        # then the queues empty and the counters stop moving.
        deadline = time.time() + 40
        last = None
        while time.time() < deadline:
            time.sleep(2)
            now = [self.agent_counters(code) for _, code, _, _ in REGIONS]
            if now == last and all(c["pending"] == 0 for c in now):
                return now
            last = now
        self.note("agent queues did not settle within 40 s")
        return last

    def agent_counters(self, code):
        text = self.http(self.ns(code, "agent"), "http://127.0.0.1:9090/metrics")
        sums = {}
        for line in text.splitlines():
            m = re.match(r"(prometheus_remote_storage_samples_\w+)(\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m:
                sums[m.group(1)] = sums.get(m.group(1), 0) + float(m.group(3))
        g = lambda k: int(sums.get("prometheus_remote_storage_samples_" + k, 0))
        return {"attempted": g("total"), "retried": g("retried_total"), "failed": g("failed_total"),
                "dropped": g("dropped_total"), "pending": g("pending"), "in": g("in_total")}

    def receiver_query(self, q):
        cluster = self.ns("eu", "cluster")
        url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote(q)
        doc = json.loads(self.http(cluster, url))
        return doc["data"]["result"]


# ---- reading what happened ------------------------------------------------

ACCESS = re.compile(r'^(\S+) \[info\] access (\S+) "(\S+) http://([^/"]+)(\S*)" (\d+) (\d+) (\S+) (\S+) (\d+)ms id=(\d+)')
HOOK = re.compile(r"topology vpce=(\S+) region=(\S+) host=(\S+) status=(\d+)")


def parse_ts(s):
    t = time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    return time.mktime(t) - time.timezone + float("0." + s[20:23])


def read_ferry_logs(layout):
    out = {}
    for region, code, r, delay in REGIONS:
        for inst in ("a", "b"):
            name = "%s-ferry-%s" % (code, inst)
            reqs, vpces, errors = [], {}, []
            with open(layout.procs[name][1], errors="replace") as f:
                for line in f:
                    m = ACCESS.match(line)
                    if m:
                        if m.group(5).startswith(("/probe", "/health")):
                            continue  # the latency probe and health checks are not agent traffic
                        reqs.append({"t": parse_ts(m.group(1)), "host": m.group(4), "status": int(m.group(6)),
                                     "group": m.group(8), "ms": int(m.group(10))})
                        continue
                    h = HOOK.search(line)
                    if h:
                        key = (h.group(1), h.group(2))
                        vpces[key] = vpces.get(key, 0) + 1
                    elif "[error]" in line:
                        errors.append(line.strip())
            out[name] = {"region": region, "requests": reqs, "vpces": vpces, "errors": errors[:20]}
    return out


def nlb_events(layout, code):
    events, conns = [], {}
    with open(layout.procs["%s-nlb" % code][1]) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in ("target-unhealthy", "target-healthy"):
                events.append((float(parts[0]), parts[1], parts[2]))
            elif len(parts) >= 5 and parts[1] == "conn":
                conns.setdefault(parts[4], []).append(float(parts[0]))
    return events, conns


def alb_conns(layout, name):
    """When the ALB node took each connection."""
    with open(layout.procs[name][1]) as f:
        return [float(line.split()[0]) for line in f if " conn " in line]


def hop_stats(hops):
    return {"requests": len(hops), "p50": pct(hops, 50), "p90": pct(hops, 90), "p99": pct(hops, 99), "max": max(hops)}


def hop_text(h):
    return "p50 %.3f ms, p90 %.3f ms, p99 %.3f ms, max %.3f ms over %d probe requests" % (
        h["p50"], h["p90"], h["p99"], h["max"], h["requests"])


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100.0 * (len(v) - 1))))]


def evaluate(layout, probes, counters):
    checks = []  # (name, ok, detail, timed)

    def check(name, ok, detail, timed=False):
        checks.append((name, bool(ok), detail, timed))

    flogs = read_ferry_logs(layout)
    otlp = json.loads(layout.http(layout.ns("eu", "cluster"), "http://127.0.0.1:4318/stats"))
    summary = {"regions": {}, "events": {k: v - layout.t0 for k, v in layout.event_times.items()},
               "delay_mode": layout.delay_mode, "notes": layout.notes, "loadavg": layout.loadavg,
               "cpus": os.cpu_count()}
    for (region, code, r, delay), c in zip(REGIONS, counters):
        rs = {}
        summary["regions"][region] = rs
        # Metrics: what the agent sent (each batch once, retries not counted
        # again) against the samples the receiver holds for it. Removing the
        # scrape targets at the end wrote one staleness marker per series;
        # the receiver keeps those but queries do not count them.
        sent = c["attempted"] - c["retried"] - c["failed"]
        got = sum(len(m["values"]) for m in layout.receiver_query('{agent_region="%s"}[1h]' % region))
        series = layout.receiver_query('count({agent_region="%s"} @ %.3f)' % (region, layout.freeze_time - 1))
        series = int(float(series[0]["value"][1])) if series else 0
        rs["samples"] = dict(c, sent=sent, received=got, series=series)
        check("%s: every sample the agent sent arrived" % region, sent - series <= got <= sent and sent > 0,
              "sent %d (attempted %d, retried %d, failed %d, dropped %d), received %d (queries skip staleness markers: at most one per series, %d)"
              % (sent, c["attempted"], c["retried"], c["failed"], c["dropped"], got, series))
        check("%s: prometheus agent saw no unretried error" % region, c["failed"] == 0 and c["dropped"] == 0,
              "failed %d, dropped %d" % (c["failed"], c["dropped"]))
        # Spans and log records.
        try:
            with open(os.path.join(layout.work, region, "agent-stats.json")) as f:
                ast = json.load(f)
        except (OSError, ValueError):
            ast = None
        check("%s: otel agent flushed and wrote its counters" % region, ast is not None, "")
        for kind in ("spans", "logs"):
            k = otlp["kinds"].get(kind, {}).get(region, {"unique": 0, "duplicates": 0, "missing": [], "total": 0})
            created = ast[kind]["created"] if ast else -1
            rs[kind] = {"created": created, "received_unique": k["unique"], "duplicates": k["duplicates"],
                        "agent": ast[kind] if ast else None}
            check("%s: every %s arrived" % (region, kind[:-1]),
                  created > 0 and k["unique"] == created and not k["missing"],
                  "created %d, received %d distinct, missing %s" % (created, k["unique"], k["missing"][:5]))
            failed = ast[kind]["failed_attempts"] if ast else 0
            check("%s: no %s twice beyond retries" % (region, kind[:-1]), k["duplicates"] <= failed,
                  "%d duplicates, %d failed export attempts" % (k["duplicates"], failed))
            check("%s: no unretried %s export error" % (region, kind[:-1]), ast and ast[kind]["lost"] == 0,
                  "lost %s; %s" % (ast[kind]["lost"] if ast else "?", (ast or {}).get("errors", [])[:2]))
        # Own fleet: every request ferry logged in this region came with this
        # region's endpoint id (the probe's own id aside), and the other
        # regions' ids never appear here.
        seen = {}
        for inst in ("a", "b"):
            for (vpce, _), n in flogs["%s-ferry-%s" % (code, inst)]["vpces"].items():
                seen[vpce] = seen.get(vpce, 0) + n
        own = seen.get(vpce_for(region), 0)
        foreign = {v: n for v, n in seen.items() if v not in (vpce_for(region), "vpce-0probe0000000000")}
        rs["vpce"] = {"own": vpce_for(region), "seen": seen}
        check("%s: agents' traffic went through their own region's fleet" % region, own > 0 and not foreign,
              "%d requests with %s, foreign ids %s" % (own, vpce_for(region), foreign or "none"))
        via = sum(n for key, n in otlp["requests"].items() if key.split()[1] == region
                  and key.split()[2] == (region if region != MAIN else "-"))
        allreq = sum(n for key, n in otlp["requests"].items() if key.split()[1] == region)
        check("%s: the cluster saw the fleet's X-Ferry-Region" % region, via == allreq and allreq > 0,
              "%d of %d OTLP requests tagged %s" % (via, allreq, region if region != MAIN else "(none: main)"))
        # Latency ferry adds, beside the emulated link: from the capture, the
        # time each probe request spent inside ferry (both ways).
        pcap = os.path.join(layout.work, region, "probe.pcap")
        try:
            hops = parts.ferry_hops(pcap, 8080)
            ref_hops = parts.ferry_hops(pcap, REF_PORT, "r") if layout.reference else []
        except (OSError, ValueError) as e:
            hops = ref_hops = []
            layout.note("%s: no capture: %s" % (region, e))
        p = probes.get(code, {})
        if hops:
            rs["hop"] = hop_stats(hops)
            check("%s: ferry adds < 1 ms per hop at p99" % region, rs["hop"]["p99"] < 1.0,
                  "inside ferry, request and response together: %s" % hop_text(rs["hop"]), timed=True)
        else:
            check("%s: the capture saw the probe's requests through ferry" % region, False, "")
        if ref_hops:
            rs["reference_hop"] = hop_stats(ref_hops)
            check("%s: the reference proxy (HAProxy) at the same place adds < 1 ms per hop at p99" % region,
                  rs["reference_hop"]["p99"] < 1.0, "inside HAProxy, request and response together: %s"
                  % hop_text(rs["reference_hop"]), timed=True)
        if "via_ms" in p and p["via_ms"]:
            diffs = [a - b for a, b in zip(p["via_ms"], p["direct_ms"])]
            rs["probe"] = {"pairs": len(diffs), "via_p50": pct(p["via_ms"], 50), "via_p99": pct(p["via_ms"], 99),
                           "direct_p50": pct(p["direct_ms"], 50), "direct_p99": pct(p["direct_ms"], 99),
                           "added_p50": pct(diffs, 50), "added_p99": pct(p["via_ms"], 99) - pct(p["direct_ms"], 99)}
        else:
            check("%s: latency probe ran" % region, False, str(p)[:200])
        # Status classes ferry gave this region's agents.
        st = {}
        for inst in ("a", "b"):
            for q in flogs["%s-ferry-%s" % (code, inst)]["requests"]:
                st[q["status"]] = st.get(q["status"], 0) + 1
        rs["statuses"] = st
        rs["requests_per_instance"] = {inst: len(flogs["%s-ferry-%s" % (code, inst)]["requests"]) for inst in "ab"}
    # Event-specific observations.
    ev = layout.event_times
    us = [q for i in "ab" for q in flogs["us-ferry-%s" % i]["requests"]]
    shed = [q for q in us if q["status"] == 503 and q["group"] == "-" and ev["shed"] <= q["t"] <= ev["unshed"] + 2]
    after = [q for q in us if q["host"].startswith("traces") and q["status"] == 200 and q["t"] > ev["unshed"] + 1]
    check("reload: us-east-1 shed traces, then forwarded them again", shed and after,
          "%d traces answered 503 by the policy while shedding, %d forwarded after" % (len(shed), len(after)))
    events, conns = nlb_events(layout, "ap")
    down = [t for t, what, target in events if what == "target-unhealthy" and target.startswith("198.19.3.11")]
    late = [t for t in conns.get("198.19.3.11:8080", []) if down and t > down[0]]
    check("drain: the NLB took ap-southeast-1 ferry-a out and sent it nothing new",
          down and not late and layout.drain_exit == 0,
          "unhealthy %.1f s after SIGTERM, %d new connections after, ferry exit status %s"
          % ((down[0] - ev["drain"]) if down else -1, len(late), layout.drain_exit))
    ap_b_after = [t for t in conns.get("198.19.3.12:8080", []) if t > ev["drain"]]
    check("drain: agents moved to ap-southeast-1 ferry-b", ap_b_after, "%d new connections" % len(ap_b_after))
    new_logs = sum(len(alb_conns(layout, "alb-logs-%d" % n)) for n in LOGS_NEW)
    settled = ev["dns-move"] + DNS_TTL + 3  # the TTL, ferry's min_ttl and a margin
    old_late = sum(1 for n in ALB_NODES["logs"] for t in alb_conns(layout, "alb-logs-%d" % n) if t > settled)
    check("dns: ferry followed the logs ALB's new addresses", new_logs > 0 and old_late == 0,
          "%d connections to the new nodes, %d to the old ones later than %d s after the change"
          % (new_logs, old_late, DNS_TTL + 3))
    m502 = sum(1 for i in "ab" for code in ("eu", "us", "ap") if "%s-ferry-%s" % (code, i) in flogs
               for q in flogs["%s-ferry-%s" % (code, i)]["requests"]
               if q["group"] == "metrics" and q["status"] >= 500)
    summary["metrics_5xx_during_alb_kill"] = m502
    summary["checks"] = [{"name": n, "ok": ok, "detail": d, "timed": t} for n, ok, d, t in checks]
    return summary, flogs


def plot(layout, flogs, summary, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    end = layout.event_times["end"] - layout.t0
    for region, code, r, delay in REGIONS:
        reqs = [q for i in "ab" for q in flogs["%s-ferry-%s" % (code, i)]["requests"]]
        ts = [q["t"] - layout.t0 for q in reqs]
        secs = list(range(0, int(end) + 1))
        rate = [0] * len(secs)
        for t in ts:
            if 0 <= t < len(secs):
                rate[int(t)] += 1
        smooth = [sum(rate[max(0, i - 4):i + 1]) / float(min(5, i + 1)) for i in range(len(rate))]
        ax1.plot(secs, smooth, label=region, lw=1)
        win = 5
        xs, p99 = [], []
        for s in range(0, int(end), win):
            v = [q["ms"] for q in reqs if s <= q["t"] - layout.t0 < s + win]
            if v:
                xs.append(s + win / 2.0)
                p99.append(pct(v, 99))
        ax2.plot(xs, p99, marker=".", label=region, lw=1)
    labels = {"shed": "2 reload: shed traces", "unshed": "2 reload: unshed", "drain": "3 drain ap ferry-a",
              "alb-kill": "4 metrics ALB node killed", "alb-back": "4 ALB node back", "dns-move": "5 logs ALB moved",
              "logs-retire": "old logs nodes gone"}
    for ev, t in layout.event_times.items():
        if ev in labels:
            for ax in (ax1, ax2):
                ax.axvline(t - layout.t0, color="grey", ls="--", lw=0.8)
            ax1.text(t - layout.t0, ax1.get_ylim()[1] * 0.98, " " + labels[ev], rotation=90, va="top",
                     fontsize=7, color="dimgrey")
    ax1.set_ylabel("requests/s through ferry (5 s mean)")
    ax2.set_ylabel("p99 request time (ms, 5 s)")
    ax2.set_xlabel("seconds since the agents started")
    ax2.set_yscale("log")
    ax2.legend(loc="lower left", fontsize=8)
    ax1.set_title("Three regions: agents -> NLB -> ferry fleet -> peering -> ALBs -> receivers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(summary, path):
    ok = all(c["ok"] for c in summary["checks"] if not c["timed"])
    L = ["# Topology scenario: %s" % ("all checks passed" if ok else "FAILED"), ""]
    L.append("Peering delay emulated with: %s (about 70 ms round trip us-east-1 <-> eu-west-1, "
             "160 ms ap-southeast-1 <-> eu-west-1). Load average %.1f at the start, %.1f at the end, on %d cores "
             "(every process of the layout, and whatever else the machine runs)."
             % (summary["delay_mode"], summary["loadavg"]["start"], summary["loadavg"]["end"], summary["cpus"]))
    L += ["", "## Events (seconds after the agents started)", ""]
    for t, ev, text in EVENTS:
        L.append("- %.1f s: %s" % (summary["events"].get(ev, t), text))
    L.append("- %.1f s: the replaced logs ALB nodes stop" % summary["events"].get("logs-retire", 0))
    L += ["", "## Per region", "", "| region | requests (ferry-a / ferry-b) | statuses | samples sent / received "
          "| spans created / received | logs created / received | time inside ferry, p50 / p99 "
          "| the same inside HAProxy beside it | probe p99 via ferry / straight |",
          "|---|---|---|---|---|---|---|---|---|"]
    for region, rs in summary["regions"].items():
        pr = rs.get("probe", {})
        L.append("| %s | %d / %d | %s | %d / %d | %d / %d | %d / %d | %s | %s | %s |" % (
            region, rs["requests_per_instance"]["a"], rs["requests_per_instance"]["b"],
            ", ".join("%s: %d" % kv for kv in sorted(rs["statuses"].items())),
            rs["samples"]["sent"], rs["samples"]["received"],
            rs["spans"]["created"], rs["spans"]["received_unique"], rs["logs"]["created"],
            rs["logs"]["received_unique"],
            ("%.2f / %.2f ms" % (rs["hop"]["p50"], rs["hop"]["p99"])) if "hop" in rs else "-",
            ("%.2f / %.2f ms" % (rs["reference_hop"]["p50"], rs["reference_hop"]["p99"]))
            if "reference_hop" in rs else "-",
            "%.1f / %.1f ms" % (pr["via_p99"], pr["direct_p99"]) if pr else "-"))
    L += ["", "## Checks", ""]
    for c in summary["checks"]:
        L.append("- %s %s%s: %s" % ("PASS" if c["ok"] else "FAIL", c["name"],
                                    " (timing, reported)" if c["timed"] else "", c["detail"]))
    for n in summary["notes"]:
        L.append("- note: " + n)
    L += ["", "![requests/s and p99 per region](plot.png)", ""]
    with open(path, "w") as f:
        f.write("\n".join(L))


def cleanup_stale():
    """Remove what an earlier run of this script left behind after a SIGKILL."""
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        m = re.match(r"(fyt(\d+)-\S+)", line)
        if m and not os.path.exists("/proc/%s" % m.group(2)):
            sh("ip", "netns", "del", m.group(1), check=False)
            shutil.rmtree("/etc/netns/" + m.group(1), ignore_errors=True)


def run(ferry, results, agent_rate=10, keep_work=False):
    """Build, run, check and tear down. Returns the summary dict."""
    work = tempfile.mkdtemp(prefix="ferry-topology-%d-" % os.getpid())
    layout = Layout(ferry, work, agent_rate)

    def on_signal(sig, frame):
        raise KeyboardInterrupt("signal %d" % sig)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        cleanup_stale()
        log("building namespaces", layout.prefix + "-*", "work", work)
        layout.build_network()
        layout.start_all()
        log("layout up; agents pushing")
        probes = layout.run_scenario()
        log("stopping agents, waiting for their queues")
        counters = layout.finish_agents()
        summary, flogs = evaluate(layout, probes, counters)
        os.makedirs(results, exist_ok=True)
        with open(os.path.join(results, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
        try:
            plot(layout, flogs, summary, os.path.join(results, "plot.png"))
        except ImportError as e:
            layout.note("no plot: %s" % e)
        report(summary, os.path.join(results, "report.md"))
        return summary
    finally:
        layout.teardown()
        for s, h in old.items():
            signal.signal(s, h)
        if keep_work:
            log("work directory kept:", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description="ferry's three-region layout in network namespaces")
    ap.add_argument("--ferry", default=os.path.join(REPO, "build", "ferry"))
    ap.add_argument("--results", default=os.path.join(os.getcwd(), "topology-results"))
    ap.add_argument("--rate", type=int, default=10, help="spans and log records per second per agent")
    ap.add_argument("--keep-work", action="store_true", help="keep the logs and data of the run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("topology.py: run as root (it creates network namespaces)")
    summary = run(args.ferry, args.results, args.rate, args.keep_work)
    for c in summary["checks"]:
        print("%s %s: %s" % (("PASS" if c["ok"] else "FAIL") + (" (reported)" if c["timed"] else ""),
                             c["name"], c["detail"]))
    print("report:", os.path.join(args.results, "report.md"))
    # Timings are reported, not gated: on a shared machine they measure the
    # neighbours as much as ferry (the bench is where speed is proven).
    sys.exit(0 if all(c["ok"] for c in summary["checks"] if not c["timed"]) else 1)


if __name__ == "__main__":
    main()
