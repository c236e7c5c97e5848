#!/usr/bin/python3
"""The AWS pieces of the topology, each a small process started in its namespace.

    parts.py dns    --listen IP:PORT --zone ZONE.json
        the private hosted zone (and the VPC resolver): A records from a JSON
        file {"name": [ips...]}, re-read when the file changes, with a short TTL
    parts.py nlb    --listen IP:PORT --target IP:PORT:ADMINPORT ... --vpce ID
        the endpoint service's Network Load Balancer: TCP, round robin over the
        healthy targets, PROXY protocol v2 with the VPC endpoint id TLV
        (type 0xEA, subtype 0x01), health checks on the target's admin /health
    parts.py relay  --map LISTEN=TARGET ... --delay-ms ONE_WAY
        the peering link's latency: a TCP relay that holds each chunk for the
        one-way delay in each direction (this kernel has no netem)
    parts.py alb    --listen IP:PORT --to IP:PORT
        one node of an Application Load Balancer in front of a receiver
    parts.py otlp   --listen IP:PORT
        an OTLP/HTTP receiver (JSON encoding) that decodes and counts every span
        and log record by agent region and sequence number (GET /stats)
    parts.py probe  --via IP:PORT --direct IP:PORT [--ref IP:PORT] --host NAME --pairs N
        rounds of requests through a ferry instance, straight to the same next
        hop and, with --ref, through a reference proxy in front of that hop
        (the query names each request: ?n= through ferry, ?d= direct, ?r= the
        reference)
    parts.py hops   --pcap FILE [--port N --tag n|r]
        the proxy's own share of each probe request, from a capture beside it

Standard library only. Each prints one line per event on stdout, which the
scenario reads for its report.
"""

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def say(*words):
    print("%.3f" % time.time(), *words, flush=True)


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


# ---- dns ---------------------------------------------------------------


class Zone:
    def __init__(self, path, ttl):
        self.path, self.ttl, self.mtime, self.records = path, ttl, None, {}

    def lookup(self, name):
        try:
            mtime = os.stat(self.path).st_mtime_ns
            if mtime != self.mtime:
                with open(self.path) as f:
                    self.records = {k.lower(): v for k, v in json.load(f).items()}
                self.mtime = mtime
                say("zone", json.dumps(self.records, sort_keys=True))
        except (OSError, ValueError) as e:
            say("zone-error", e)
        return self.records.get(name)


def dns_answer(zone, data):
    if len(data) < 17:
        return None
    qid, flags = struct.unpack("!HH", data[:4])
    labels, i = [], 12
    while i < len(data) and data[i] != 0:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace").lower())
        i += 1 + n
    if i + 5 > len(data):
        return None
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    question = data[12:i + 5]
    rd = flags & 0x0100
    ips = zone.lookup(".".join(labels))
    if ips is None:
        return struct.pack("!HHHHHH", qid, 0x8403 | rd, 1, 0, 0, 0) + question  # NXDOMAIN
    answers = b""
    if qtype == 1:
        for ip in ips:
            answers += struct.pack("!HHHIH", 0xC00C, 1, 1, zone.ttl, 4) + socket.inet_aton(ip)
    count = len(ips) if qtype == 1 else 0
    return struct.pack("!HHHHHH", qid, 0x8400 | rd, 1, count, 0, 0) + question + answers


def run_dns(args):
    zone = Zone(args.zone, args.ttl)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(hostport(args.listen))
    say("dns listening", args.listen)
    while True:
        data, peer = sock.recvfrom(4096)
        reply = dns_answer(zone, data)
        if reply:
            sock.sendto(reply, peer)


# ---- byte pumping shared by nlb, relay and alb ---------------------------


async def pump(reader, writer, delay=0.0):
    """Copy reader to writer; with a delay, each chunk leaves `delay` s after it came."""
    queue = asyncio.Queue()

    async def read():
        try:
            while True:
                chunk = await reader.read(65536)
                queue.put_nowait((time.monotonic() + delay, chunk))
                if not chunk:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((time.monotonic() + delay, None))

    async def write():
        try:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if chunk is None:  # reset: pass it on
                    writer.transport.abort()
                    return
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(read(), write())


async def splice(cr, cw, ur, uw, delay=0.0):
    try:
        await asyncio.gather(pump(cr, uw, delay), pump(ur, cw, delay))
    finally:
        for w in (cw, uw):
            w.close()


# ---- nlb ---------------------------------------------------------------

PP2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src, dst, vpce):
    tlv_value = b"\x01" + vpce.encode()
    tlv = struct.pack("!BH", 0xEA, len(tlv_value)) + tlv_value
    addrs = socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) + struct.pack("!HH", src[1], dst[1])
    return PP2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs) + len(tlv)) + addrs + tlv


class Target:
    def __init__(self, spec):
        host, port, admin = spec.rsplit(":", 2)
        self.host, self.port, self.admin = host, int(port), int(admin)
        self.healthy, self.oks, self.fails, self.conns = True, 0, 0, 0

    def name(self):
        return "%s:%d" % (self.host, self.port)


async def health_once(t):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(t.host, t.admin), 1)
        w.write(b"GET /health HTTP/1.0\r\nHost: health\r\n\r\n")
        line = await asyncio.wait_for(r.readline(), 1)
        w.close()
        return line.split()[1:2] == [b"200"]
    except (OSError, asyncio.TimeoutError, IndexError):
        return False


async def health_loop(targets, interval, threshold):
    while True:
        for t in targets:
            ok = await health_once(t)
            t.oks, t.fails = (t.oks + 1, 0) if ok else (0, t.fails + 1)
            if t.healthy and t.fails >= threshold:
                t.healthy = False
                say("target-unhealthy", t.name())
            elif not t.healthy and t.oks >= threshold:
                t.healthy = True
                say("target-healthy", t.name())
        await asyncio.sleep(interval)


def run_nlb(args):
    targets = [Target(s) for s in args.target]
    rr = [0]

    async def handle(cr, cw):
        healthy = [t for t in targets if t.healthy] or targets  # all unhealthy: fail open, as an NLB does
        t = healthy[rr[0] % len(healthy)]
        rr[0] += 1
        peer, local = cw.get_extra_info("peername"), cw.get_extra_info("sockname")
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(t.host, t.port), 2)
        except (OSError, asyncio.TimeoutError) as e:
            say("connect-failed", t.name(), e)
            cw.transport.abort()
            return
        say("conn", "%s:%d" % peer, "->", t.name())
        uw.write(proxy_v2(peer, local, args.vpce))
        t.conns += 1
        try:
            await splice(cr, cw, ur, uw)
        finally:
            t.conns -= 1

    async def main():
        server = await asyncio.start_server(handle, *hostport(args.listen), reuse_address=True)
        say("nlb listening", args.listen, "targets", " ".join(t.name() for t in targets))
        asyncio.ensure_future(health_loop(targets, args.interval, args.threshold))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---- relay and alb -------------------------------------------------------


def run_forwarders(pairs, delay, tag):
    async def serve(listen, target):
        async def handle(cr, cw):
            try:
                ur, uw = await asyncio.wait_for(asyncio.open_connection(*hostport(target)), 2)
            except (OSError, asyncio.TimeoutError) as e:
                say("connect-failed", listen, target, e)
                cw.transport.abort()
                return
            say("conn", listen, "->", target)
            await splice(cr, cw, ur, uw, delay)

        return await asyncio.start_server(handle, *hostport(listen), reuse_address=True)

    async def main():
        servers = [await serve(listen, target) for listen, target in pairs]
        say(tag, "listening", " ".join("%s=%s" % p for p in pairs), "delay_ms", delay * 1000)
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


# ---- otlp receiver -------------------------------------------------------


def attr_value(v):
    for k in ("intValue", "stringValue", "doubleValue", "boolValue"):
        if k in v:
            return v[k]
    return None


def attrs(lst):
    return {a["key"]: attr_value(a.get("value", {})) for a in lst or []}


class OtlpStats:
    def __init__(self):
        self.lock = threading.Lock()
        # kind -> region -> {seq: count}
        self.seen = {"spans": {}, "logs": {}}
        self.requests = {}  # "kind region via-header" -> count
        self.timeline = []  # (time, kind, region, n)

    def add(self, kind, body, via):
        n = 0
        with self.lock:
            for rs in body.get("resource" + ("Spans" if kind == "spans" else "Logs"), []):
                region = attrs(rs.get("resource", {}).get("attributes")).get("agent.region", "?")
                per = self.seen[kind].setdefault(region, {})
                scopes = rs.get("scopeSpans" if kind == "spans" else "scopeLogs", [])
                for sc in scopes:
                    for item in sc.get("spans" if kind == "spans" else "logRecords", []):
                        seq = int(attrs(item.get("attributes")).get("seq", -1))
                        per[seq] = per.get(seq, 0) + 1
                        n += 1
                key = "%s %s %s" % (kind, region, via or "-")
                self.requests[key] = self.requests.get(key, 0) + 1
                self.timeline.append((round(time.time(), 3), kind, region, n))
        return n

    def summary(self):
        with self.lock:
            out = {"requests": dict(self.requests), "kinds": {}}
            for kind, regions in self.seen.items():
                out["kinds"][kind] = {}
                for region, per in regions.items():
                    seqs = sorted(per)
                    top = seqs[-1] if seqs else -1
                    out["kinds"][kind][region] = {
                        "unique": len(per),
                        "total": sum(per.values()),
                        "duplicates": sum(c - 1 for c in per.values()),
                        "max_seq": top,
                        "missing": [s for s in range(top + 1) if s not in per][:50],
                    }
            return out


def run_otlp(args):
    stats = OtlpStats()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def reply(self, status, body, ctype="application/json"):
            # Head and body in one write: two small writes meet Nagle and a
            # delayed ACK, 40 ms that would be the receiver's, not the path's.
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n" + body)
            self.flush_headers()

        def do_GET(self):
            if self.path.startswith("/probe"):
                return self.reply(200, b"ok " + self.path[6:].encode() + b"\n", "text/plain")
            if self.path == "/stats":
                return self.reply(200, json.dumps(stats.summary()).encode())
            self.reply(404, b"{}")

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_POST(self):
            body = self.read_body()
            kind = {"/v1/traces": "spans", "/v1/logs": "logs"}.get(self.path)
            if kind is None:
                return self.reply(404, b"{}")
            try:
                doc = json.loads(body)
            except ValueError:
                return self.reply(400, b'{"error":"not OTLP JSON"}')
            stats.add(kind, doc, self.headers.get("X-Ferry-Region"))
            self.reply(200, b"{}")

    server = ThreadingHTTPServer(hostport(args.listen), Handler)
    server.daemon_threads = True
    say("otlp listening", args.listen)
    server.serve_forever()


# ---- probe ---------------------------------------------------------------


class HttpConn:
    """One keep-alive connection, optionally opened with a PROXY v2 header."""

    def __init__(self, addr, vpce=None):
        self.sock = socket.create_connection(hostport(addr), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if vpce:
            self.sock.sendall(proxy_v2(self.sock.getsockname(), self.sock.getpeername(), vpce))
        self.buf = b""

    def get(self, host, path):
        self.sock.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)).encode())
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = int(head.split()[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(self.buf) < length:
            self.buf += self.recv()
        self.buf = self.buf[length:]
        return status

    def recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data


def run_probe(args):
    # Each round sends one request on every path, in an order that rotates,
    # so that no path always follows a pause. The query names the request in
    # a capture: "n" through ferry, "d" straight to the next hop, "r" through
    # the reference proxy.
    paths = [("n", HttpConn(args.via, vpce="vpce-0probe0000000000")), ("d", HttpConn(args.direct))]
    if args.ref:
        paths.append(("r", HttpConn(args.ref, vpce="vpce-0probe0000000000")))
    times = {tag: [] for tag, _ in paths}
    for i in range(args.pairs):
        k = i % len(paths)
        took = {}
        for tag, conn in paths[k:] + paths[:k]:
            t0 = time.perf_counter()
            status = conn.get(args.host, "/probe?%s=%d" % (tag, i))
            took[tag] = (time.perf_counter() - t0) * 1000 if status == 200 else None
        if all(v is not None for v in took.values()):
            for tag, v in took.items():
                times[tag].append(v)
        time.sleep(args.gap)
    out = {"via_ms": times["n"], "direct_ms": times["d"]}
    if args.ref:
        out["ref_ms"] = times["r"]
    print(json.dumps(out))


# ---- hops: a proxy's own time, from a packet capture beside it -----------


def pcap_segments(path):
    """(time, src, sport, dst, dport, payload) of each TCP segment with data in a
    tcpdump capture of `-i any` (Linux cooked v1 or v2)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(end + "I", data[20:24])[0]
    skip = {113: 16, 276: 20}.get(linktype)
    if skip is None:
        raise ValueError("unexpected link type %d" % linktype)
    out, i = [], 24
    while i + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(end + "IIII", data[i:i + 16])
        pkt = data[i + 16:i + 16 + incl]
        i += 16 + incl
        ip = pkt[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack("!HH", tcp[:4])
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            t = sec + frac / (1e9 if nano else 1e6)
            out.append((t, socket.inet_ntoa(ip[12:16]), sport, socket.inet_ntoa(ip[16:20]), dport, payload))
    return out


def ferry_hops(path, port, tag="n"):
    """Per probe request through the proxy on `port` (ferry: tag "n"; the
    reference proxy: "r"): the time from its request arriving to the proxy
    sending it on, plus the time from the upstream's answer arriving to the
    proxy sending it back, in ms. What lies between (the link, the relay, the
    ALB, the receiver) is not the proxy's."""
    import re
    t1, t2, t3, t4, upconn = {}, {}, {}, {}, {}
    num = re.compile(rb"[?]" + tag.encode() + rb"=(\d+)")
    answer = re.compile(rb"ok [?]?" + tag.encode() + rb"=(\d+)")
    segs = pcap_segments(path)
    for t, src, sport, dst, dport, pl in segs:
        m = num.search(pl[:300])
        if not m:
            continue
        n = int(m.group(1))
        if pl.startswith(b"GET /probe?" + tag.encode() + b"="):
            if dport == port:
                t1.setdefault(n, t)
            elif n not in t2 or t < t2[n]:
                t2[n], upconn[n] = t, (src, sport)  # the first copy out is the proxy's own
    for t, src, sport, dst, dport, pl in segs:
        m = answer.search(pl)
        if not m:
            continue
        n = int(m.group(1))
        if sport == port:
            t4[n] = min(t4.get(n, t), t)
        elif upconn.get(n) == (dst, dport):
            t3[n] = min(t3.get(n, t), t)
    return [((t2[n] - t1[n]) + (t4[n] - t3[n])) * 1000 for n in t1 if n in t2 and n in t3 and n in t4]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dns")
    d.add_argument("--listen", required=True)
    d.add_argument("--zone", required=True)
    d.add_argument("--ttl", type=int, default=2)
    n = sub.add_parser("nlb")
    n.add_argument("--listen", required=True)
    n.add_argument("--target", action="append", required=True, help="IP:PORT:ADMINPORT")
    n.add_argument("--vpce", required=True)
    n.add_argument("--interval", type=float, default=1.0)
    n.add_argument("--threshold", type=int, default=2)
    r = sub.add_parser("relay")
    r.add_argument("--map", action="append", required=True, help="LISTEN=TARGET")
    r.add_argument("--delay-ms", type=float, required=True, help="one way")
    a = sub.add_parser("alb")
    a.add_argument("--listen", required=True)
    a.add_argument("--to", required=True)
    o = sub.add_parser("otlp")
    o.add_argument("--listen", required=True)
    pr = sub.add_parser("probe")
    pr.add_argument("--via", required=True)
    pr.add_argument("--direct", required=True)
    pr.add_argument("--ref", help="IP:PORT of a reference proxy in front of the same next hop")
    pr.add_argument("--host", required=True)
    pr.add_argument("--pairs", type=int, default=100)
    pr.add_argument("--gap", type=float, default=0.02)
    h = sub.add_parser("hops")
    h.add_argument("--pcap", required=True)
    h.add_argument("--port", type=int, default=8080)
    h.add_argument("--tag", default="n", help="n: through ferry, r: through the reference proxy")
    args = p.parse_args()
    if args.cmd == "dns":
        run_dns(args)
    elif args.cmd == "nlb":
        run_nlb(args)
    elif args.cmd == "relay":
        run_forwarders([tuple(m.split("=", 1)) for m in args.map], args.delay_ms / 1000.0, "relay")
    elif args.cmd == "alb":
        run_forwarders([(args.listen, args.to)], 0.0, "alb")
    elif args.cmd == "otlp":
        run_otlp(args)
    elif args.cmd == "probe":
        run_probe(args)
    elif args.cmd == "hops":
        print(json.dumps(ferry_hops(args.pcap, args.port, args.tag)))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
