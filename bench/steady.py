"""bench/run steady: figures that hold on a noisy machine.

Two measures per scenario and peer, both independent of how busy the other
core is:

  * instructions per request: the proxy runs under valgrind's callgrind; a
    warm-up of `warm` requests (connections opened, pools filled, caches
    made) is followed by `callgrind_control --zero`, then `count` requests,
    then `callgrind_control --dump`; the dump's total Ir / count is the
    figure. The load client is closed-loop with a fixed number of
    connections; the count is deterministic to well under 1 % (each row is
    measured twice and the spread is reported).
  * CPU per request at a fixed rate: the proxy runs natively on its core;
    bench/load.c sends `rate` requests per second (open loop, well below
    saturation) for `seconds`; the CPU time the scheduler counts for the
    proxy's threads (schedstat, ns) over the run, divided by the requests
    answered; beside it the proxy's sleeps (voluntary context switches) and,
    from one more run under `perf stat`, its system calls per request.

S8 is the shipped regional policy (bench/s8/) behind a PROXY protocol v2
listener; the load client sends the v2 header with the AWS VPC endpoint TLV.

Results go to bench/results/steady.md and steady.json.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

RUN = None  # the bench/run module, set by main()

# conns: closed-loop connections (callgrind) and open-loop connections (rate)
STEADY = {
    "S1": dict(desc="small GET, keep-alive", method="GET", path="/", body=0, close=False,
               conns=50, warm=1000, count=4000, rate=4000, seconds=3),
    "S2": dict(desc="POST 4 KiB, keep-alive", method="POST", path="/v1/ingest", body=4096, close=False,
               conns=50, warm=1000, count=4000, rate=4000, seconds=3),
    "S4": dict(desc="small GET, a new connection per request", method="GET", path="/", body=0, close=True,
               conns=20, warm=500, count=2000, rate=2000, seconds=3),
    "S7": dict(desc="small GET, keep-alive, 1,000 connections", method="GET", path="/", body=0, close=False,
               conns=1000, warm=3000, count=20000, rate=4000, seconds=3),
    "S8": dict(desc="regional policy (allowlist, shedding, header), PROXY v2, keep-alive", method="GET",
               path="/", body=0, close=False, conns=50, warm=1000, count=4000, rate=4000, seconds=3,
               vpce="vpce-0123456789abcdef0"),
}
STEADY_ORDER = ["S1", "S2", "S4", "S7", "S8"]
STEADY_PEERS = ["ferry", "nginx", "nginx-lua", "haproxy"]
# S8 needs a Lua policy: plain nginx has none.
S8_TEMPLATES = {"ferry": "s8/ferry.lua", "nginx-lua": "s8/nginx-lua.conf", "haproxy": "s8/haproxy.cfg"}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def build_load(run_dir):
    exe = os.path.join(run_dir, "load")
    if not os.path.exists(exe):
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(RUN.BENCH, "load.c")], check=True)
    return exe


def load_argv(exe, port, sc, mode, conns=None):
    n = conns or sc["conns"]
    if mode == "count":
        argv = [exe, "count", "127.0.0.1", str(port), str(n), str(sc["_n"])]
    else:
        argv = [exe, "rate", "127.0.0.1", str(port), str(n), str(sc["rate"]), str(sc["seconds"])]
    argv += ["-m", sc["method"], "-p", sc["path"], "-H", RUN.HOST]
    if sc["body"]:
        argv += ["-b", str(sc["body"])]
    if sc["close"]:
        argv += ["-k"]
    if sc.get("vpce"):
        argv += ["-V", sc["vpce"]]
    return argv


def run_load(exe, port, sc, mode, n=None, timeout=120):
    sc = dict(sc, _n=n or 0)
    argv = ["taskset", "-c", RUN.LOAD_CPU] + load_argv(exe, port, sc, mode)
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = {"error": (r.stderr or r.stdout).strip()[-300:]}
    res["ok"] = r.returncode == 0
    return res


def make_peer(name, run_dir, scen):
    p = RUN.Peer(name, run_dir)
    p.configure({"kind": "http"})
    if scen == "S8":
        tmpl = S8_TEMPLATES[name]
        p.template = lambda: os.path.join(RUN.BENCH, tmpl)
        if name == "ferry":
            RUN.render(os.path.join(RUN.BENCH, "s8", "policy.lua"), os.path.join(run_dir, "s8-policy.lua"),
                       run_dir, p.port, {"@ROOT@": RUN.ROOT})
    return p


def ready_check(p, sc, exe):
    """A single request through the peer answers 2xx."""
    r = run_load(exe, p.port, dict(sc, conns=1), "count", n=1, timeout=20)
    return None if r.get("ok") else "check failed: %s" % r


def start_native(p, sc, exe):
    if p.name == "direct":
        return None
    if sc.get("vpce"):
        # the harness's ready() speaks plain HTTP; a PROXY listener needs the load client
        p.ready = lambda: ready_check(p, dict(sc, conns=1), exe)
    return p.start()


def callgrind_argv(p, out):
    argv = p.argv()
    if p.name in ("nginx", "nginx-lua"):
        i = argv.index("daemon off;")
        argv[i] = "daemon off; master_process off;"
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + argv


def callgrind_total(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    return None


def measure_instructions(p, sc, exe, run_dir, tag):
    """Ir per request over sc['count'] requests after sc['warm'] warm-up ones."""
    out = os.path.join(run_dir, "callgrind.%s.%s.%s" % (p.name, tag, "%p"))
    with open(p.log_path, "ab") as f:
        f.write(("==== %s under callgrind %s\n" % (p.name, tag)).encode())
        p.log_offset = f.tell()
    proc = RUN.spawn(callgrind_argv(p, out), RUN.PROXY_CPU, p.log_path)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if proc.poll() is not None:
                return {"error": "exited under valgrind: " + p.stderr_tail(5)}
            if RUN.port_in_use(p.port) and ready_check(p, sc, exe) is None:
                break
            time.sleep(0.5)
        else:
            return {"error": "not serving under valgrind after 60 s"}
        warm = run_load(exe, p.port, sc, "count", n=sc["warm"], timeout=300)
        if not warm.get("ok"):
            return {"error": "warm-up failed: %s" % warm}
        pid = proc.pid
        subprocess.run(["callgrind_control", "--zero", str(pid)], capture_output=True, timeout=60)
        res = run_load(exe, p.port, sc, "count", n=sc["count"], timeout=600)
        before = set(os.listdir(run_dir))
        subprocess.run(["callgrind_control", "--dump=measured", str(pid)], capture_output=True, timeout=60)
        dumps = [f for f in os.listdir(run_dir)
                 if f.startswith("callgrind.%s.%s." % (p.name, tag)) and f not in before]
        total = callgrind_total(os.path.join(run_dir, dumps[0])) if len(dumps) == 1 else None
        keep = os.environ.get("BENCH_KEEP_CALLGRIND")  # a directory for callgrind_annotate
        if keep and len(dumps) == 1:
            os.makedirs(keep, exist_ok=True)
            shutil.copy(os.path.join(run_dir, dumps[0]), os.path.join(keep, "callgrind.%s.%s" % (p.name, tag)))
        if not res.get("ok") or total is None:
            return {"error": "measured run failed: %s" % res}
        return {"ir": total, "requests": res["done"], "ir_per_req": total / res["done"]}
    finally:
        RUN.stop_process(proc)
        RUN.forget(proc)
        for f in os.listdir(run_dir):
            if f.startswith("callgrind.%s.%s." % (p.name, tag)):
                os.unlink(os.path.join(run_dir, f))


def task_stats(pids):
    """CPU time in ns (the scheduler's own count, /proc/PID/task/*/schedstat,
    not clock ticks) and voluntary context switches (times a thread went to
    sleep) summed over the threads of pids."""
    ns = sleeps = 0
    for p in pids:
        try:
            tasks = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tasks:
            d = "/proc/%d/task/%s/" % (p, t)
            try:
                with open(d + "schedstat") as f:
                    ns += int(f.read().split()[0])
                with open(d + "status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            sleeps += int(line.split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return ns, sleeps


PERF = {}  # "ok": whether `perf stat` can count syscalls here (checked once)


def perf_counts_syscalls():
    if "ok" not in PERF:
        ok = False
        if shutil.which("perf"):
            r = subprocess.run(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
                               capture_output=True, text=True, timeout=30)
            ok = r.returncode == 0 and "raw_syscalls:sys_enter" in r.stderr and "not supported" not in r.stderr
        PERF["ok"] = ok
    return PERF["ok"]


def warmed_run(p, sc, exe, measure):
    """Starts p natively, sends 1 s of warm-up at the scenario's rate, then
    returns measure(pids of the proxy's processes), which runs the measured
    load; p is stopped after. {"error": why} when p did not start."""
    err = start_native(p, sc, exe)
    if err:
        return {"error": err}
    try:
        run_load(exe, p.port, dict(sc, seconds=1), "rate", timeout=30)
        return measure(RUN.tree(p.pid()))
    finally:
        p.stop()


def count_syscalls(p, sc, exe):
    """System calls per request: one more open-loop run at the same rate with
    `perf stat -e raw_syscalls:sys_enter` attached to the proxy's processes
    (a count, not a sample: it does not move with the machine's load). Kept
    apart from the CPU runs, whose figures it would perturb."""
    if not perf_counts_syscalls():
        return None

    def measure(pids):
        perf = subprocess.Popen(["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p",
                                 ",".join(str(x) for x in pids)], stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # attached before the first request
        res = run_load(exe, p.port, sc, "rate", timeout=sc["seconds"] + 30)
        perf.send_signal(2)
        _, errtxt = perf.communicate(timeout=30)
        if not res.get("done"):
            return None
        for line in errtxt.splitlines():
            f = line.split(",")
            if len(f) > 2 and f[2].startswith("raw_syscalls:sys_enter") and f[0].isdigit():
                return int(f[0]) / res["done"]
        return None
    r = warmed_run(p, sc, exe, measure)
    return r if isinstance(r, float) else None


ROUNDS = max(1, int(os.environ.get("BENCH_STEADY_ROUNDS", "3")))


def measure_rates(peers, sc, exe):
    """ROUNDS runs of every peer, each on a fresh process, interleaved: round
    k runs each peer once, starting at a different peer each round, so a
    change in what else the machine does lands on every peer alike.
    {name: [run, ...]} in round order."""
    runs = {name: [] for name, _ in peers}
    for k in range(ROUNDS):
        order = peers[k % len(peers):] + peers[:k % len(peers)]
        for name, p in order:
            log("steady: CPU at %d req/s: round %d/%d: %s" % (sc["rate"], k + 1, ROUNDS, name))
            runs[name].append(measure_rate_once(p, sc, exe))
    return runs


def paired_ratios(rows):
    """ferry's CPU per request over the best peer's in the same round, per round."""
    ferry = ((rows.get("ferry") or {}).get("rate") or {}).get("by_round") or []
    out = []
    for k, f in enumerate(ferry):
        best = [r["rate"]["by_round"][k] for n, r in rows.items()
                if n != "ferry" and (r.get("rate") or {}).get("by_round") and len(r["rate"]["by_round"]) > k
                and r["rate"]["by_round"][k] is not None]
        if f is not None and best:
            out.append(f / min(best))
    return sorted(out)


def summarize_rate(runs):
    """The median of the runs (by CPU per request); every run is kept."""
    by_round = [r["cpu_us_per_req"] if r.get("ok") and "cpu_us_per_req" in r else None for r in runs]
    good = sorted((r for r in runs if r.get("ok") and "cpu_us_per_req" in r), key=lambda r: r["cpu_us_per_req"])
    if not good:  # every round had errors or unanswered requests: shown, flagged
        return dict(runs[0], flag="every round failed", by_round=by_round)
    med = dict(good[len(good) // 2])
    med["rounds"] = [round(r["cpu_us_per_req"], 1) for r in good]
    med["failed_rounds"] = len(runs) - len(good)
    med["all_rounds"] = runs
    med["by_round"] = by_round
    return med


def measure_rate_once(p, sc, exe):
    def measure(pids):
        up = RUN.tree(RUN.UPSTREAM.pid)
        ns0, sl0 = task_stats(pids)
        u0, _ = task_stats(up)
        w0 = time.monotonic()
        res = run_load(exe, p.port, sc, "rate", timeout=sc["seconds"] + 30)
        wall = time.monotonic() - w0
        ns1, sl1 = task_stats(pids)
        u1, _ = task_stats(up)
        if not res.get("done"):
            return {"error": "rate run failed: %s" % res}
        n = res["done"]
        return {"requests": n, "late": res.get("late"), "errors": res.get("errors"),
                "non2xx": res.get("non2xx"), "ok": res.get("ok"), "cpu_s": (ns1 - ns0) / 1e9,
                "cpu_us_per_req": (ns1 - ns0) / 1e3 / n,
                "sleeps_per_req": (sl1 - sl0) / n,
                "proxy_busy": 100.0 * (ns1 - ns0) / 1e9 / wall if wall > 0 else None,
                "load_core_busy": (100.0 * (res.get("cpu_s", 0) + (u1 - u0) / 1e9) / wall
                                   if wall > 0 and "cpu_s" in res else None)}
    return warmed_run(p, sc, exe, measure)


def fmt(v, spec):
    return "—" if v is None else spec % v


def main(argv):
    global RUN
    import argparse
    ap = argparse.ArgumentParser(prog="bench/run steady")
    ap.add_argument("scenarios", nargs="*", help=" ".join(STEADY_ORDER))
    ap.add_argument("--peers", default=",".join(STEADY_PEERS))
    ap.add_argument("--no-callgrind", action="store_true", help="CPU at a fixed rate only")
    ap.add_argument("--no-rate", action="store_true", help="instructions only")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    chosen = [s.upper() for s in args.scenarios] or STEADY_ORDER
    for s in chosen:
        if s not in STEADY:
            ap.error("unknown steady scenario %s (have %s)" % (s, " ".join(STEADY_ORDER)))
    peers = [n for n in STEADY_PEERS if n in args.peers.split(",")]

    import atexit
    import signal
    import tempfile
    RUN.ensure_tools()
    if not shutil.which("valgrind") and not args.no_callgrind:
        sys.exit("bench: valgrind missing (./bootstrap deps bench)")
    atexit.register(RUN.cleanup)
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, RUN.on_signal)
    run_dir = tempfile.mkdtemp(prefix="ferry-steady.")
    os.chmod(run_dir, 0o755)
    if os.environ.get("BENCH_KEEP_RUNDIR") != "1":
        atexit.register(lambda: shutil.rmtree(run_dir, ignore_errors=True))
    exe = build_load(run_dir)
    RUN.UPSTREAM = RUN.start_upstreams(run_dir)
    info = RUN.machine_info()
    date = datetime.datetime.now(datetime.timezone.utc)
    raw = {"machine": info, "date": date.isoformat(), "scenarios": {}}
    versions = {}
    for scen in chosen:
        sc = STEADY[scen]
        raw["scenarios"][scen] = rows = {}
        measured = []  # (name, peer) of the peers that run this scenario
        for name in peers:
            if scen == "S8" and name not in S8_TEMPLATES:
                rows[name] = {"skip": "no Lua policy (the nginx+lua row is nginx with it)"}
                continue
            p = make_peer(name, run_dir, scen)
            if p.unavailable:
                rows[name] = {"skip": p.unavailable}
                continue
            versions.setdefault(name, p.version())
            row = rows[name] = {}
            if not args.no_callgrind:
                log("steady: %s %s: instructions (callgrind, 2 runs)" % (scen, name))
                a = measure_instructions(p, sc, exe, run_dir, scen + ".a")
                b = measure_instructions(p, sc, exe, run_dir, scen + ".b") if "error" not in a else a
                row["callgrind"] = [a, b]
                if "error" not in a and "error" not in b:
                    row["ir_per_req"] = (a["ir_per_req"] + b["ir_per_req"]) / 2
                    row["ir_spread_pct"] = 100.0 * abs(a["ir_per_req"] - b["ir_per_req"]) / row["ir_per_req"]
                else:
                    row["error"] = a.get("error") or b.get("error")
            measured.append((name, p))
        if not args.no_rate and measured:
            for name, runs in measure_rates(measured, sc, exe).items():
                rows[name]["rate"] = summarize_rate(runs)
            for name, p in measured:
                log("steady: %s %s: system calls per request (perf stat)" % (scen, name))
                rows[name]["syscalls_per_req"] = count_syscalls(p, sc, exe)
        for name, _ in measured:
            log("steady: %s %s: %s" % (scen, name, json.dumps(
                {k: v for k, v in rows[name].items() if k != "callgrind"}, default=str)))
    lines = report(raw, chosen, peers, versions, info, date)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        os.makedirs(RUN.RESULTS, exist_ok=True)
        with open(os.path.join(RUN.RESULTS, "steady.md"), "w") as f:
            f.write(text + "\n")
        with open(os.path.join(RUN.RESULTS, "steady.json"), "w") as f:
            json.dump(dict(raw, versions=versions), f, indent=1, default=str)
            f.write("\n")
        log("bench: wrote %s" % os.path.join(RUN.RESULTS, "steady.md"))


def best_peer(rows, key):
    best = None
    for name, r in rows.items():
        if name == "ferry":
            continue
        v = key(r)
        if v is not None and (best is None or v < best[1]):
            best = (name, v)
    return best


def report(raw, chosen, peers, versions, info, date):
    L = ["# ferry steady measures — %s" % date.strftime("%Y-%m-%d %H:%M UTC"), ""]
    L.append("- machine: %s CPUs (nproc), %s, %s GiB RAM, Linux %s" % (
        info.get("nproc"), info.get("cpu"), info.get("mem_gib"), info.get("kernel")))
    L.append("- instructions per request: the proxy under `valgrind --tool=callgrind` on core %s, "
             "counters zeroed after the warm-up, then a fixed number of requests from `bench/load.c` "
             "(closed loop, fixed connections); Ir = instructions executed by the proxy's process "
             "(user space: the proxy and its libraries; the kernel's work for its syscalls is not counted). "
             "Each row is measured twice; 'spread' is the difference of the two." % RUN.PROXY_CPU)
    L.append("- CPU per request: the proxy natively on core %s, `bench/load.c rate` (open loop) on core %s; "
             "the CPU time the scheduler counted for the proxy's threads (/proc/PID/task/*/schedstat, in ns) "
             "over the run / requests answered; the median of %d runs, each on a fresh process, the peers "
             "interleaved (round k runs every peer once; all runs in the JSON). 'paired' is ferry's CPU over "
             "the best peer's within each round, median and range over the rounds. "
             "This figure includes the kernel's work for the proxy (system calls, loopback TCP, wake-ups) and "
             "moves with what else runs on the machine; the instruction counts do not. "
             "'sleeps/req': the proxy's voluntary context switches per request (each one a wake-up later); "
             "'syscalls/req': system calls per request, counted by `perf stat -e raw_syscalls:sys_enter` in "
             "one more run at the same rate (a count: it does not move with the machine's load); "
             "'proxy busy': the proxy's CPU time over the run's wall time; 'load core': the CPU time of "
             "the load client (its whole run) and the upstream on core %s over the same wall time, to show "
             "neither side is saturated." % (
                 RUN.PROXY_CPU, RUN.LOAD_CPU, ROUNDS, RUN.LOAD_CPU))
    L.append("- versions: " + "; ".join("%s: %s" % kv for kv in versions.items()))
    L.append("")
    L.append("| scenario | peer | instructions/req | spread | ÷ best peer | CPU/req at fixed rate | ÷ best peer "
             "| syscalls/req | sleeps/req | rate | late | errors | non-2xx | proxy busy | load core |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for scen in chosen:
        rows = raw["scenarios"][scen]
        sc = STEADY[scen]
        bi = best_peer(rows, lambda r: r.get("ir_per_req"))
        bc = best_peer(rows, lambda r: (r.get("rate") or {}).get("cpu_us_per_req"))
        for name in peers:
            r = rows.get(name, {})
            if "skip" in r:
                L.append("| %s | %s | %s |  |  |  |  |  |  |  |  |  |  |  |  |" % (scen, name, r["skip"]))
                continue
            ir = r.get("ir_per_req")
            rt = r.get("rate") or {}
            cpu = rt.get("cpu_us_per_req")
            ri = "%.2f×" % (ir / bi[1]) if (ir and bi and name == "ferry") else ""
            rc = "%.2f×" % (cpu / bc[1]) if (cpu and bc and name == "ferry") else ""
            irtxt = "{:,.0f}".format(ir) if ir else (r.get("error") or "—")[:80]
            cputxt = fmt(cpu, "%.1f µs") if cpu else (rt.get("error") or "—")[:80]
            if rt.get("flag"):
                cputxt += " ⚠ " + rt["flag"]
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                scen, name, irtxt, fmt(r.get("ir_spread_pct"), "%.2f %%"), ri, cputxt, rc,
                fmt(r.get("syscalls_per_req"), "%.2f"), fmt(rt.get("sleeps_per_req"), "%.2f"),
                "%d/s" % sc["rate"], fmt(rt.get("late"), "%d"), fmt(rt.get("errors"), "%d"),
                fmt(rt.get("non2xx"), "%d"), fmt(rt.get("proxy_busy"), "%.0f%%"),
                fmt(rt.get("load_core_busy"), "%.0f%%")))
    L.append("")
    L.append("Targets (issue: ≤ 0.9× the best peer's): ")
    for scen in chosen:
        rows = raw["scenarios"][scen]
        f = rows.get("ferry", {})
        bi = best_peer(rows, lambda r: r.get("ir_per_req"))
        bc = best_peer(rows, lambda r: (r.get("rate") or {}).get("cpu_us_per_req"))
        parts = []
        if f.get("ir_per_req") and bi:
            x = f["ir_per_req"] / bi[1]
            parts.append("instructions %.2f× %s: %s" % (x, bi[0], "met" if x <= 0.9 else "missed"))
        fc = (f.get("rate") or {}).get("cpu_us_per_req")
        if fc and bc:
            x = fc / bc[1]
            pr = paired_ratios(rows)
            paired = (" (paired by round: median %.2f×, %.2f–%.2f×)" % (pr[len(pr) // 2], pr[0], pr[-1])
                      if pr else "")
            parts.append("CPU %.2f× %s%s: %s" % (x, bc[0], paired, "met" if x <= 0.9 else "missed"))
        L.append("- %s (%s): %s" % (scen, STEADY[scen]["desc"], "; ".join(parts) or "—"))
    return L
