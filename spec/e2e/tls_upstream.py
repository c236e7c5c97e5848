#!/usr/bin/env python3
"""A TLS upstream for ferry's end-to-end specs (Python's ssl module).

    tls_upstream.py --cert alb.pem --key alb.key [--client-ca client-ca.pem] \
                    [--proxy-protocol] [--port 0] [--host 127.0.0.1] [--name alb]

Prints `LISTENING <port>` once it accepts. Every connection is handshaken in a
thread of its own, then served as HTTP/1.1 with keep-alive. Any request is
answered 200 with a JSON echo:

    {"name", "method", "path", "host", "sni" (the name in the ClientHello, or
     null), "tls_version", "alpn", "client_subject" ("CN=agent-1,O=Acme" or
     null), "session_reused", "x_forwarded_proto", "headers", "body_len",
     "body_sha256", "conn_id", "conn_requests"}

except GET .../bytes?n=N, answered with N bytes of bytes_pattern(N).

With --client-ca, a client certificate issued by that CA is required. With
--proxy-protocol, every connection must start with a PROXY protocol header
(v1 or v2) before the ClientHello; the echo then has "proxy": {"version",
"source", "source_port"}.

Handshake outcomes are written to stderr, one JSON object a line
({"event": "handshake", "ok": true|false, "sni", "error", "conn_id"}), so a
test can read what happened even when no request got through.
"""

import argparse
import json
import socket
import ssl
import struct
import sys
import threading

try:  # a module of spec.e2e, or a script run from its own directory
    from . import upstream
except ImportError:
    import upstream

HANDSHAKE_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0

_log_lock = threading.Lock()
_BLOCK = bytes(range(251)) * 256


def bytes_pattern(n):
    """The body of /bytes?n=N: bytes 0..250 over and over."""
    reps = n // len(_BLOCK) + 1
    return (_BLOCK * reps)[:n]


def log_event(**fields):
    with _log_lock:
        sys.stderr.write(json.dumps(fields) + "\n")
        sys.stderr.flush()


PP2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("eof in the PROXY header")
        data += chunk
    return data


def read_proxy_header(sock):
    """Read a PROXY protocol v1 or v2 header, and not a byte more."""
    start = recv_exact(sock, 12)
    if start == PP2_SIGNATURE:
        ver_cmd, fam, length = struct.unpack("!BBH", recv_exact(sock, 4))
        body = recv_exact(sock, length)
        info = {"version": 2, "source": None, "source_port": None}
        if ver_cmd == 0x21 and fam == 0x11:
            info["source"] = socket.inet_ntoa(body[0:4])
            info["source_port"] = struct.unpack("!H", body[8:10])[0]
        return info
    if not start.startswith(b"PROXY "):
        raise ConnectionError("no PROXY header: %r" % start)
    line = start
    while not line.endswith(b"\r\n"):
        if len(line) > 107:
            raise ConnectionError("PROXY v1 line too long")
        line += recv_exact(sock, 1)
    parts = line.decode("latin-1").split()
    info = {"version": 1, "source": None, "source_port": None}
    if len(parts) == 6:
        info["source"], info["source_port"] = parts[2], int(parts[4])
    return info


def subject_text(cert):
    """getpeercert()'s subject as `CN=agent-1,O=Acme` (in certificate order)."""
    if not cert:
        return None
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    parts = []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            parts.append("%s=%s" % (short.get(key, key), value))
    return ",".join(parts)


class Conn(upstream.Connection):
    """upstream.py's connection (its request reading and body digests) behind a TLS handshake."""

    def __init__(self, server, raw, conn_id):
        super().__init__(server, None, conn_id)  # the socket is the TLS one, once handshaken
        self.raw = raw
        self.sni = None
        self.proxy = None

    # -- serving ---------------------------------------------------------------

    def handshake(self):
        self.raw.settimeout(HANDSHAKE_TIMEOUT)
        if self.server.proxy_protocol:
            try:
                self.proxy = read_proxy_header(self.raw)
            except (OSError, ConnectionError, ValueError) as e:
                log_event(event="proxy", ok=False, conn_id=self.conn_id, error=str(e))
                return False
        # The SNI callback runs in this thread, during wrap_socket.
        self.server.local.sni = None
        try:
            self.sock = self.server.context.wrap_socket(self.raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log_event(event="handshake", ok=False, conn_id=self.conn_id,
                      sni=self.server.local.sni, error=str(e))
            return False
        self.sni = self.server.local.sni
        log_event(event="handshake", ok=True, conn_id=self.conn_id,
                  sni=self.sni, version=self.sock.version(),
                  client_subject=subject_text(self.sock.getpeercert()))
        self.sock.settimeout(IDLE_TIMEOUT)
        return True

    def serve(self):
        try:
            if not self.handshake():
                return
            while True:
                head = self.read_head()
                if head is None:
                    break
                self.count += 1
                req = upstream.Request(head)
                length, digest = self.read_body(req)
                close = req.wants_close()
                info = {
                    "name": self.server.name,
                    "method": req.method,
                    "path": req.path,
                    "host": req.header("host"),
                    "sni": self.sni,
                    "tls_version": self.sock.version(),
                    "alpn": self.sock.selected_alpn_protocol(),
                    "client_subject": subject_text(self.sock.getpeercert()),
                    "session_reused": self.sock.session_reused,
                    "proxy": self.proxy,
                    "x_forwarded_proto": req.header("x-forwarded-proto"),
                    "headers": req.headers,
                    "body_len": length,
                    "body_sha256": digest,
                    "conn_id": self.conn_id,
                    "conn_requests": self.count,
                }
                ctype = "application/json"
                if info["path"].endswith("/bytes"):
                    n = req.arg_int("n", 0, high=1 << 28)
                    body, ctype = bytes_pattern(n), "application/octet-stream"
                else:
                    body = (json.dumps(info) + "\n").encode()
                head_out = ["HTTP/1.1 200 OK", "X-Upstream: %s" % self.server.name,
                            "Content-Type: %s" % ctype, "Content-Length: %d" % len(body)]
                if close:
                    head_out.append("Connection: close")
                self.sock.sendall(("\r\n".join(head_out) + "\r\n\r\n").encode("latin-1") + body)
                if close:
                    break
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            try:
                (self.sock or self.raw).close()
            except OSError:
                pass


class Server:
    def __init__(self, args):
        self.name = args.name
        self.proxy_protocol = args.proxy_protocol
        self.local = threading.local()  # .sni: the name in this thread's ClientHello
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])
        if args.client_ca:
            ctx.load_verify_locations(args.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.sni_callback = self.on_sni
        self.context = ctx
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((args.host, args.port))
        self.listener.listen(128)
        self.next_id = 0

    def on_sni(self, sslsock, server_name, ctx):
        self.local.sni = server_name
        return None

    def run(self):
        print("LISTENING %d" % self.listener.getsockname()[1], flush=True)
        while True:
            raw, _ = self.listener.accept()
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.next_id += 1
            threading.Thread(target=Conn(self, raw, self.next_id).serve, daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address to bind")
    parser.add_argument("--name", default="tls-upstream")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", default=None, help="require client certificates from this CA")
    parser.add_argument("--proxy-protocol", action="store_true", help="expect a PROXY header first")
    args = parser.parse_args()
    try:
        Server(args).run()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
