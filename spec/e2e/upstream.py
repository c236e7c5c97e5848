#!/usr/bin/env python3
"""Scripted upstream server for ferry's end-to-end tests.

One process serves every test: the request path chooses the behaviour, so a
test only has to start it once and point an upstream group at it.  It is a
plain threaded HTTP/1.1 server on raw sockets with keep-alive, written against
the standard library only, and it never buffers a whole body: uploads are
hashed as they arrive and downloads are generated as they are sent.

Behaviours (the query string is the argument list):

    /echo                      200, JSON describing the request it received
    /bytes?n=N&mode=M          N pattern bytes; M = cl | chunked | close
    /upload[?delay=S]          reads the body (CL or chunked), returns length
                               and sha256; waits S seconds before reading
    /status?code=N[&close=1]   that status; 1xx/204/304 carry no body; close=1
                               answers with Connection: close and closes
    /abort?after=K[&mode=M]    announces more than K bytes, sends K, closes
    /slow?delay=S[&phase=P]    waits S seconds before the headers (P=head,
                               default) or between headers and body (P=body)
    /reset                     closes the connection with an RST, no answer
    /hop                       answers with hop-by-hop headers a proxy strips
    /_log                      JSON: every request head (and body) received so far
    /_clear                    forgets the log

A HEAD request gets the headers the GET would get and no body.  The upstream
answers `Expect: 100-continue` with an interim 100 before reading the body.

Start it as `upstream.py --port 0 --name NAME`: it prints `LISTENING <port>`
on stdout once it accepts connections.  The pattern helpers at the top are
imported by the harness to compute the expected digests.
"""

import argparse
import hashlib
import http
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse

CHUNK = 65536
_BASE = random.Random(0xF3223).randbytes(CHUNK)
MAX_HEAD = 1 << 20
MAX_N = 1 << 31
BODY_KEPT = 65536
CONTROL_PATHS = ("/_log", "/_clear")


def pattern_chunks(n, size=CHUNK):
    """Yield n bytes of the deterministic test pattern in blocks of CHUNK.

    Every block starts with its own index, so a lost, repeated or reordered
    block changes the digest even though the rest of the block repeats.
    """
    index = 0
    left = n
    while left > 0:
        block = struct.pack(">Q", index) + _BASE[8:]
        if left < CHUNK:
            block = block[:left]
        yield block
        left -= len(block)
        index += 1


def pattern_bytes(n):
    return b"".join(pattern_chunks(n))


_SHA_CACHE = {}


def pattern_sha256(n):
    if n not in _SHA_CACHE:
        digest = hashlib.sha256()
        for block in pattern_chunks(n):
            digest.update(block)
        _SHA_CACHE[n] = digest.hexdigest()
    return _SHA_CACHE[n]


class Journal:
    """Everything the upstream received, for tests that must prove absence.

    Each request entry also gets the body as read ("body", latin-1, the first
    BODY_KEPT bytes; "body_len", all of it; "body_complete", false when the
    connection ended inside it) once a behaviour has read it.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.partial = []
        self.accepted = 0
        self.control = 0

    def snapshot(self):
        with self.lock:
            return {
                "requests": list(self.requests),
                "partial": list(self.partial),
                # Connections that carried anything but a control request
                # (or nothing at all): an open proxy would show up here.
                "connections": self.accepted - self.control,
            }

    def clear(self):
        with self.lock:
            self.requests.clear()
            self.partial.clear()
            self.accepted = self.control = 0


class KeptDigest:
    """A sha256 that also keeps the first BODY_KEPT bytes for the journal."""

    def __init__(self):
        self.sha = hashlib.sha256()
        self.kept = bytearray()
        self.length = 0

    def update(self, data):
        self.sha.update(data)
        self.length += len(data)
        if len(self.kept) < BODY_KEPT:
            self.kept += data[:BODY_KEPT - len(self.kept)]

    def hexdigest(self):
        return self.sha.hexdigest()


class Request:
    def __init__(self, head):
        text = head.decode("latin-1")
        lines = text.split("\r\n")
        self.line = lines[0]
        parts = self.line.split(" ")
        if len(parts) != 3:
            raise ValueError("bad request line %r" % self.line)
        self.method, self.target, self.version = parts
        self.headers = []
        for raw in lines[1:]:
            if not raw:
                continue
            name, sep, value = raw.partition(":")
            if not sep:
                raise ValueError("bad header line %r" % raw)
            self.headers.append([name, value.strip(" \t")])
        target = self.target
        if "://" in target:
            target = "/" + target.split("://", 1)[1].partition("/")[2]
        path, _, query = target.partition("?")
        self.path = path
        self.query = query
        self.args = dict(urllib.parse.parse_qsl(query))

    def header(self, name):
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def header_tokens(self, name):
        name = name.lower()
        tokens = []
        for key, value in self.headers:
            if key.lower() == name:
                tokens += [t.strip().lower() for t in value.split(",") if t.strip()]
        return tokens

    def wants_close(self):
        tokens = self.header_tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" not in tokens
        return "close" in tokens

    def arg_int(self, key, default, low=0, high=MAX_N):
        try:
            value = int(self.args.get(key, default))
        except ValueError:
            value = default
        return max(low, min(high, value))

    def arg_float(self, key, default, high=60.0):
        try:
            value = float(self.args.get(key, default))
        except ValueError:
            value = default
        return max(0.0, min(high, value))


class Connection:
    """One accepted connection: reads requests in turn and answers them."""

    def __init__(self, server, sock, conn_id):
        self.server = server
        self.sock = sock
        self.conn_id = conn_id
        self.buf = bytearray()
        self.count = 0
        self.entry = None  # the journal entry of the request being served

    # -- reading -----------------------------------------------------------

    def fill(self):
        data = self.sock.recv(CHUNK)
        if not data:
            return False
        self.buf += data
        return True

    def read_head(self):
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > MAX_HEAD or not self.fill():
                return None

    def read_line(self):
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > MAX_HEAD or not self.fill():
                raise ConnectionError("eof in chunked framing")

    def recv_some(self, limit):
        if self.buf:
            data = bytes(self.buf[:limit])
            del self.buf[:limit]
            return data
        data = self.sock.recv(min(limit, 4 * CHUNK))
        if not data:
            raise ConnectionError("eof in body")
        return data

    def read_exact(self, n, digest):
        left = n
        while left > 0:
            data = self.recv_some(left)
            digest.update(data)
            left -= len(data)

    def read_body(self, req):
        """Consume the request body; return (length, sha256 hex)."""
        digest = KeptDigest()
        complete = False
        try:
            result = self._read_body(req, digest)
            complete = True
            return result
        finally:
            if self.entry is not None:
                with self.server.journal.lock:
                    self.entry["body"] = bytes(digest.kept).decode("latin-1")
                    self.entry["body_len"] = digest.length
                    self.entry["body_complete"] = complete

    def _read_body(self, req, digest):
        if "chunked" in req.header_tokens("transfer-encoding"):
            total = 0
            while True:
                line = self.read_line()
                size = int(line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    while self.read_line():
                        pass
                    break
                self.read_exact(size, digest)
                total += size
                if self.read_line() != b"":
                    raise ConnectionError("chunk not followed by CRLF")
            return total, digest.hexdigest()
        length = req.header("content-length")
        n = int(length) if length and length.isdigit() else 0
        self.read_exact(n, digest)
        return n, digest.hexdigest()

    # -- writing -----------------------------------------------------------

    def send_head(self, status, headers):
        reason = http.HTTPStatus(status).phrase if status in http.HTTPStatus._value2member_map_ else "Other"
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        lines.append("X-Upstream: %s" % self.server.name)
        lines += ["%s: %s" % (k, v) for k, v in headers]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def respond(self, req, status, body=b"", headers=(), ctype="text/plain"):
        headers = list(headers)
        no_body = status < 200 or status in (204, 304)
        if not no_body:
            headers += [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        close = req.wants_close() or req.arg_int("close", 0, 0, 1) == 1
        if close:
            headers.append(("Connection", "close"))
        self.send_head(status, headers)
        if body and not no_body and req.method != "HEAD":
            self.sock.sendall(body)
        return not close

    def maybe_continue(self, req):
        if req.version == "HTTP/1.1" and "100-continue" in req.header_tokens("expect"):
            self.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")

    # -- behaviours ----------------------------------------------------------

    def do_echo(self, req):
        self.maybe_continue(req)
        length, digest = self.read_body(req)
        info = {
            "name": self.server.name,
            "method": req.method,
            "target": req.target,
            "path": req.path,
            "query": req.query,
            "version": req.version,
            "headers": req.headers,
            "body_len": length,
            "body_sha256": digest,
            "conn_id": self.conn_id,
            "conn_requests": self.count,
        }
        body = (json.dumps(info) + "\n").encode()
        return self.respond(req, 200, body, ctype="application/json")

    def do_upload(self, req):
        delay = req.arg_float("delay", 0)
        if delay:
            time.sleep(delay)
        self.maybe_continue(req)
        length, digest = self.read_body(req)
        body = (json.dumps({"name": self.server.name, "body_len": length,
                            "body_sha256": digest}) + "\n").encode()
        return self.respond(req, 200, body, ctype="application/json")

    def do_bytes(self, req):
        self.read_body(req)
        n = req.arg_int("n", 0)
        mode = req.args.get("mode", "cl")
        head_only = req.method == "HEAD"
        headers = [("Content-Type", "application/octet-stream")]
        if mode == "chunked":
            headers.append(("Transfer-Encoding", "chunked"))
        elif mode == "close":
            headers.append(("Connection", "close"))
        else:
            headers.append(("Content-Length", str(n)))
        close = mode == "close" or req.wants_close() or req.arg_int("close", 0, 0, 1) == 1
        if close and mode != "close":
            headers.append(("Connection", "close"))
        self.send_head(200, headers)
        if head_only:
            return not close
        for block in pattern_chunks(n):
            if mode == "chunked":
                self.sock.sendall(b"%x\r\n" % len(block) + block + b"\r\n")
            else:
                self.sock.sendall(block)
        if mode == "chunked":
            self.sock.sendall(b"0\r\n\r\n")
        if mode == "close":
            self.sock.shutdown(socket.SHUT_WR)
        return not close

    def do_status(self, req):
        self.read_body(req)
        code = req.arg_int("code", 200, 100, 599)
        headers = []
        if code == 304:
            headers.append(("ETag", '"e2e"'))
        return self.respond(req, code, b"status %d\n" % code, headers)

    def do_abort(self, req):
        self.read_body(req)
        after = req.arg_int("after", 1000)
        mode = req.args.get("mode", "cl")
        if mode == "chunked":
            self.send_head(200, [("Transfer-Encoding", "chunked")])
            if after:
                self.sock.sendall(b"%x\r\n" % after + pattern_bytes(after) + b"\r\n")
        else:
            self.send_head(200, [("Content-Length", str(2 * after + 1000))])
            self.sock.sendall(pattern_bytes(after))
        time.sleep(0.05)
        self.sock.shutdown(socket.SHUT_RDWR)
        return False

    def do_slow(self, req):
        self.read_body(req)
        delay = req.arg_float("delay", 1.0)
        body = b"slow\n"
        if req.args.get("phase") == "body":
            self.send_head(200, [("Content-Length", str(len(body)))])
            time.sleep(delay)
            self.sock.sendall(body)
            return not req.wants_close()
        time.sleep(delay)
        return self.respond(req, 200, body)

    def do_reset(self, req):
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return False

    def do_hop(self, req):
        self.read_body(req)
        headers = [
            ("Connection", "X-Private, Keep-Alive"),
            ("X-Private", "secret"),
            ("Keep-Alive", "timeout=5, max=100"),
            ("Proxy-Connection", "keep-alive"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "e2e/1"),
            ("X-End-To-End", "kept"),
            ("Transfer-Encoding", "chunked"),
        ]
        self.send_head(200, headers)
        if req.method != "HEAD":
            self.sock.sendall(b"9\r\nhop body\n\r\n0\r\n\r\n")
        return not req.wants_close()

    def do_log(self, req):
        self.read_body(req)
        body = (json.dumps(self.server.journal.snapshot()) + "\n").encode()
        return self.respond(req, 200, body, ctype="application/json")

    def do_clear(self, req):
        self.read_body(req)
        self.server.journal.clear()
        return self.respond(req, 200, b"cleared\n")

    def do_unknown(self, req):
        self.read_body(req)
        return self.respond(req, 404, b"no such behaviour\n")

    ROUTES = {
        "/echo": do_echo,
        "/upload": do_upload,
        "/bytes": do_bytes,
        "/status": do_status,
        "/abort": do_abort,
        "/slow": do_slow,
        "/reset": do_reset,
        "/hop": do_hop,
        "/_log": do_log,
        "/_clear": do_clear,
    }

    # -- main loop -------------------------------------------------------------

    def serve(self):
        journal = self.server.journal
        try:
            while True:
                head = self.read_head()
                if head is None:
                    break
                self.count += 1
                try:
                    req = Request(head)
                except ValueError:
                    with journal.lock:
                        journal.requests.append({"line": head.split(b"\r\n")[0].decode("latin-1"),
                                                 "head": head.decode("latin-1"),
                                                 "conn": self.conn_id, "bad": True})
                    self.sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    break
                self.entry = None
                with journal.lock:
                    if req.path in CONTROL_PATHS:
                        if self.count == 1:
                            journal.control += 1
                    else:
                        self.entry = {"line": req.line, "head": head.decode("latin-1"), "conn": self.conn_id}
                        journal.requests.append(self.entry)
                handler = self.ROUTES.get(req.path, Connection.do_unknown)
                if not handler(self, req):
                    break
        except (OSError, ValueError):
            pass
        finally:
            if self.buf:
                with journal.lock:
                    journal.partial.append({"conn": self.conn_id,
                                            "data": bytes(self.buf[:4096]).decode("latin-1")})
            try:
                self.sock.close()
            except OSError:
                pass


class Server:
    def __init__(self, name, port, host="127.0.0.1"):
        self.name = name
        self.journal = Journal()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(256)
        self.next_id = 0

    def run(self):
        print("LISTENING %d" % self.listener.getsockname()[1], flush=True)
        while True:
            sock, _ = self.listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.next_id += 1
            with self.journal.lock:
                self.journal.accepted += 1
            conn = Connection(self, sock, self.next_id)
            threading.Thread(target=conn.serve, daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to bind")
    args = parser.parse_args()
    try:
        Server(args.name, args.port, args.host).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
