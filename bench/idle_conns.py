#!/usr/bin/env python3
"""Hold N idle HTTP/1.1 keep-alive connections open to a proxy.

    idle_conns.py HOST PORT COUNT HOSTHEADER [MAX_HOLD_SECONDS]

Opens the connections one after another; on each it sends one GET and reads
the whole response, so the proxy has served exactly one request on it and the
connection is now idle in keep-alive. Then it prints "ready OPENED FAILED" and
waits for commands on stdin:

    check   prints "alive N": how many of the connections the proxy still
            keeps open (a closed one reads as EOF)
    (EOF)   closes everything and exits

It never holds the connections longer than MAX_HOLD_SECONDS (default 120).
Standard library only; used by bench/run for the RSS-per-idle-connection
measurement.
"""
import os
import resource
import select
import socket
import sys
import threading


def read_response(sock):
    """Read one HTTP/1.1 response (Content-Length or chunked); return status."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before headers")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers:
        need = int(headers[b"content-length"])
        while len(rest) < need:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside body")
            rest += chunk
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        while not rest.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed inside chunked body")
            rest += chunk
    return status


def alive(socks):
    n = 0
    for s in socks:
        try:
            r, _, _ = select.select([s], [], [], 0)
            if r and s.recv(1, socket.MSG_PEEK) == b"":
                continue
            n += 1
        except OSError:
            pass
    return n


def main():
    host, port, count, host_header = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    max_hold = float(sys.argv[5]) if len(sys.argv) > 5 else 120.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = count + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    # Bound the whole run: exit on our own if nobody closes stdin.
    timer = threading.Timer(max_hold, lambda: os._exit(3))
    timer.daemon = True
    timer.start()

    request = ("GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: ferry-bench-idle\r\n\r\n"
               % host_header).encode()
    socks, failed, statuses = [], 0, {}
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        try:
            s.connect((host, port))
            s.sendall(request)
            st = read_response(s)
            statuses[st] = statuses.get(st, 0) + 1
            socks.append(s)
        except (OSError, ValueError, IndexError, ConnectionError):
            failed += 1
            s.close()
    status_text = ",".join("%d:%d" % kv for kv in sorted(statuses.items()))
    print("ready %d %d %s" % (len(socks), failed, status_text or "-"), flush=True)

    for line in sys.stdin:
        if line.strip() == "check":
            print("alive %d" % alive(socks), flush=True)
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
