"""TLS (docs/config.md: `tls` of an `https` listener, `tls` of an upstream
group; `req.tls` in the policy): termination on `https` listeners and TLS to
upstream groups.

On the client side: one certificate per SNI name (exact, then a one-label
wildcard, else the first certificate), TLS 1.2 only, ALPN http/1.1,
`req.tls` in the policy, client certificates (required and optional),
session resumption (tickets and the server cache), cipher restriction,
X-Forwarded-Proto https, garbage and stalled handshakes.
On the upstream side: verification against a CA and a server name (SNI),
client certificates, pooled connections keyed by TLS identity, session
resumption, PROXY protocol before TLS, active checks over TLS, metrics.
Config: `ferry check` naming the bad certificate, reloads that re-read
certificates or are refused and leave the old generation serving.

The PKI comes from certs.py (made once per process with the openssl CLI);
the TLS upstream is tls_upstream.py. Clients: `openssl s_client`, curl with
--cacert/--resolve, Python's ssl module, and raw ClientHello records.
"""

import http.client
import json
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import shutil
import threading
import time
import unittest

from .certs import pki
from .tls_upstream import bytes_pattern
from .harness import (CLEAN_ENV, CURL_BASE, LOCAL, SANITIZED, ConfigDir, E2ECase, HttpReader, Upstream,
                      _stop_process, connect, curl, free_port, pattern_sha256, port_accepts,
                      read_until_close, request_bytes, send_raw, sha256, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
TLS_UPSTREAM_PY = os.path.join(HERE, "tls_upstream.py")

METRICS = "metrics.observability.internal"
LOGS = "logs.observability.internal"
TRACES = "traces.observability.internal"
DEFAULT = "default.ferry.test"
ALB = "alb.main.internal"

# The first certificate is the default. metrics, logs and multi take their
# names from their SAN, nosan from its CN, the wildcard and alb from `names`
# (alb's own name, alb.main.internal, is then not served by it).
CERTIFICATES = """certificates = {
          { cert = "default.pem", key = "default.key" },
          { cert = "metrics.pem", key = "metrics.key" },
          { cert = "logs.pem", key = "logs.key" },
          { cert = "wild.pem", key = "wild.key", names = { "*.observability.internal" } },
          { cert = "multi.pem", key = "multi.key" },
          { cert = "nosan.pem", key = "nosan.key" },
          { cert = "alb.pem", key = "alb.key", names = { "alias.ferry.test" } },
          { cert = "chained.pem", key = "chained.key" },
        }"""
CERT_NAMES = ("default", "metrics", "logs", "wild", "multi", "nosan", "alb", "chained")

CONFIG = """
return {
  listeners = {
    { name = "agents", type = "https", address = "$listen",
      tls = {
        %s,
        $tls_extra
      } },
    { name = "plain", type = "http", address = "$plain" },
  },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  limits = { header_timeout = 2 },
  log = { level = "info", access = true },
}
""" % CERTIFICATES

# /tls answers with every req.tls field, one `key=value` a line; anything
# else goes to the upstream with the fields the policy saw in headers.
POLICY = r"""
local M = {}
local FIELDS = { "sni", "version", "cipher", "alpn", "client_subject", "client_verified", "resumed" }

local function describe(t)
  if t == nil then return "tls=nil\n" end
  local out = {}
  for _, k in ipairs(FIELDS) do out[#out + 1] = k .. "=" .. tostring(t[k]) end
  return table.concat(out, "\n") .. "\n"
end

function M.route(req)
  local t = req.tls
  if req.path == "/tls" then
    local p = req.proxy
    return req:respond(200, "listener=" .. req.listener .. "\nclient_addr=" .. req.client_addr ..
                            "\nvpce=" .. tostring(p and p.vpce_id) .. "\n" .. describe(t))
  end
  if t then
    req.headers:set("x-tls-sni", tostring(t.sni))
    req.headers:set("x-tls-version", tostring(t.version))
    req.headers:set("x-tls-subject", tostring(t.client_subject))
  end
  return "default"
end
return M
"""


def fields(body):
    """The `key=value` lines of a /tls answer as a dict."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def echo_headers(info):
    return {k.lower(): v for k, v in info["headers"]}


# ---------------------------------------------------------------------------
# clients


class SClient:
    """What `openssl s_client` printed, parsed."""

    def __init__(self, rc, out):
        self.rc = rc
        self.out = out

    def _find(self, pattern):
        m = re.search(pattern, self.out, re.M)
        return m.group(1) if m else None

    @property
    def negotiated(self):
        """(protocol, cipher) of a completed handshake, or None.

        s_client prints "Protocol  : TLSv1" even for a handshake that failed,
        so only the "New, <version>, Cipher is <cipher>" line counts."""
        m = re.search(r"^(?:New|Reused), (\S+), Cipher is (\S+)", self.out, re.M)
        if not m or m.group(2) == "(NONE)" or m.group(1) == "(NONE)":
            return None
        return m.group(1), m.group(2)

    @property
    def served(self):
        """A response to the request sent through s_client came back."""
        return re.search(r"^HTTP/1\.1 \d\d\d", self.out, re.M) is not None

    @property
    def subject(self):
        return self._find(r"^subject=(.*)$")

    @property
    def verify_code(self):
        code = self._find(r"Verify return code: (\d+)")
        return int(code) if code is not None else None

    @property
    def reused(self):
        return re.search(r"^Reused, ", self.out, re.M) is not None

    @property
    def alpn(self):
        return self._find(r"^ALPN protocol: (\S+)")

    @property
    def has_ticket(self):
        return "TLS session ticket lifetime hint" in self.out

    @property
    def server_pem(self):
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", self.out, re.S)
        return m.group(0) if m else None

    def __repr__(self):
        return "<s_client rc=%s negotiated=%s subject=%r>\n%s" % (
            self.rc, self.negotiated, self.subject, self.out[-2500:])


def s_client(port, servername=None, args=(), request=False, timeout=10):
    """Run `openssl s_client` against ferry; with request, send GET /tls through it and read the answer."""
    cmd = ["openssl", "s_client", "-connect", "%s:%d" % (LOCAL, port)]
    cmd += ["-servername", servername] if servername else ["-noservername"]
    cmd += list(args)
    stdin = b""
    if request:
        cmd.append("-ign_eof")  # keep reading after stdin ends, until ferry closes
        stdin = request_bytes("GET", "/tls", host=servername or METRICS, headers=[("Connection", "close")])
    try:
        done = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, env=CLEAN_ENV)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("openssl s_client did not finish within %ss: %r"
                             % (timeout, (e.output or b"")[-2000:]))
    return SClient(done.returncode, done.stdout.decode("utf-8", "replace"))


def san_names(pem):
    """The DNS names in a certificate's subjectAltName."""
    done = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], input=pem.encode(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10)
    return re.findall(r"DNS:([^,\s]+)", done.stdout.decode())


class CurlRun:
    def __init__(self, rc, results, stderr):
        self.rc = rc
        self.results = results  # [(status, num_connects, body)]
        self.stderr = stderr

    def __repr__(self):
        return "<curl rc=%s results=%r stderr=%r>" % (
            self.rc, [(s, c, b[:200]) for s, c, b in self.results], self.stderr[-600:])


def curl_https(port, name, paths, cacert=None, args=(), headers=(), timeout=15):
    """One curl, several https://NAME:PORT/PATH URLs (one connection when it can)."""
    tmp = tempfile.mkdtemp(prefix="ferry-e2e-curl-")
    try:
        cmd = CURL_BASE + ["--max-time", str(timeout), "--resolve", "%s:%d:%s" % (name, port, LOCAL),
                           "-w", "%{http_code} %{num_connects}\\n"]
        if cacert:
            cmd += ["--cacert", cacert]
        for k, v in headers:
            cmd += ["-H", "%s: %s" % (k, v)]
        cmd += list(args)
        files = []
        for i, path in enumerate(paths):
            out = os.path.join(tmp, "b%d" % i)
            files.append(out)
            cmd += ["-o", out, "https://%s:%d%s" % (name, port, path)]
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout + 10, env=CLEAN_ENV)
        results = []
        for line, out in zip(done.stdout.decode().splitlines(), files):
            code, conns = line.split()
            body = b""
            if os.path.exists(out):
                with open(out, "rb") as f:
                    body = f.read()
            results.append((int(code), int(conns), body))
        return CurlRun(done.returncode, results, done.stderr.decode("utf-8", "replace"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tls_connect(port, servername, cafile=None, cert=None, key=None, timeout=5.0):
    """A Python ssl client connection (hostname checked when servername and cafile are given)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
        ctx.check_hostname = servername is not None
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection((LOCAL, port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=servername)
    except BaseException:
        raw.close()
        raise


def tls_get(sock, path, host, timeout=5.0):
    sock.sendall(request_bytes("GET", path, host=host))
    return HttpReader(sock, timeout).read_response()


# Raw ClientHello records: what a client of a given protocol version sends,
# independent of what the local OpenSSL is still willing to offer.
SUITES_OLD = [0xC009, 0xC00A, 0xC013, 0xC014, 0x002F, 0x0035]   # CBC-SHA: TLS 1.0/1.1 suites
SUITES_12 = [0xC02B, 0xC02C, 0xC02F, 0xC030] + SUITES_OLD        # + ECDHE GCM


def client_hello(version, suites, servername=None):
    exts = b""
    if servername:
        name = servername.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        exts += struct.pack("!HH", 0, len(entry) + 2) + struct.pack("!H", len(entry)) + entry
    groups = struct.pack("!HH", 0x0017, 0x001D)                       # secp256r1, x25519
    exts += struct.pack("!HHH", 10, len(groups) + 2, len(groups)) + groups
    exts += struct.pack("!HHB", 11, 2, 1) + b"\x00"                    # ec_point_formats: uncompressed
    if version >= 0x0303:
        algs = struct.pack("!HHH", 0x0403, 0x0503, 0x0401)             # ecdsa/rsa with SHA-256/384
        exts += struct.pack("!HHH", 13, len(algs) + 2, len(algs)) + algs
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def first_record(port, data, timeout=5.0):
    """Send data, return the first TLS record back as (type, bytes) or (None, b"") on close."""
    sock = connect(port, timeout)
    try:
        sock.sendall(data)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(buf) >= 5:
                need = 5 + struct.unpack("!H", bytes(buf[3:5]))[0]
                if len(buf) >= need:
                    return buf[0], bytes(buf[5:need])
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        return None, bytes(buf)
    finally:
        sock.close()


def server_hello_version(record):
    """The version in a ServerHello record, or None if the record is something else."""
    rtype, payload = record
    if rtype == 0x16 and len(payload) >= 6 and payload[0] == 0x02:
        return struct.unpack("!H", payload[4:6])[0]
    return None


# ---------------------------------------------------------------------------
# the TLS upstream


class TlsUpstream(Upstream):
    """A tls_upstream.py process; .events() reads its handshake log."""

    def __init__(self, name, cert, key, client_ca=None, proxy_protocol=False):
        super().__init__(name)
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.proxy_protocol = proxy_protocol

    probe_accept = False  # a bare TCP probe would only log a failed handshake

    def command(self):
        args = [sys.executable, TLS_UPSTREAM_PY, "--port", "0", "--name", self.name,
                "--host", self.host, "--cert", self.cert, "--key", self.key]
        if self.client_ca:
            args += ["--client-ca", self.client_ca]
        if self.proxy_protocol:
            args.append("--proxy-protocol")
        return args

    def events(self):
        out = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
        return out


class GarbageServer:
    """A thread answering every connection with a plain-HTTP 400 and a close."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((LOCAL, free_port()))
        self.listener.listen(16)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.addr = "%s:%d" % (LOCAL, self.port)
        self.accepted = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        while not self.stopping.is_set():
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            self.accepted += 1
            try:
                sock.settimeout(2)
                sock.recv(4096)
                sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            finally:
                sock.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()


class TlsCase(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.pki = pki()

    @classmethod
    def start_tls_upstream_cls(cls, name, cert, client_ca=None, proxy_protocol=False):
        up = TlsUpstream(name, cls.pki.path(cert + ".pem"), cls.pki.path(cert + ".key"),
                         client_ca and cls.pki.path(client_ca + ".pem"), proxy_protocol).start()
        cls.addClassCleanup(up.stop)
        return up

    @classmethod
    def start_https_ferry_cls(cls, tls_extra="", more_files=(), config=CONFIG, policy=POLICY, **subs):
        files = cls.pki.files(*CERT_NAMES)
        for name in more_files:
            files[name] = cls.pki.text(name)
        plain = free_port()
        ferry = cls.start_ferry_cls(config, policy, files=files, tls_extra=tls_extra,
                                    plain="%s:%d" % (LOCAL, plain), **subs)
        ferry.plain_port = plain
        if not wait_until(lambda: port_accepts(plain), 5):
            raise AssertionError("the plain listener does not accept on %d" % plain)
        return ferry

    @property
    def ca(self):
        return self.pki.path("ca.pem")

    @staticmethod
    def metrics(admin_port):
        """GET /metrics of the admin listener as {"name{labels}": value}."""
        conn = http.client.HTTPConnection(LOCAL, admin_port, timeout=5)
        try:
            conn.request("GET", "/metrics", headers={"Host": "admin"})
            resp = conn.getresponse()
            body = resp.read().decode()
        finally:
            conn.close()
        values = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def assertAlive(self, ferry):
        self.assertTrue(ferry.alive(), "ferry exited:\n%s" % ferry.log_tail())
        r = curl_https(ferry.port, METRICS, ["/tls"], cacert=self.ca)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.results[0][0], 200, r)

    def assertHandshakeFails(self, port, servername, args, what):
        """The handshake fails and no request gets through.

        s_client prints "New, TLSv1.2, Cipher is ..." once the ServerHello
        came, even when the handshake fails later (a refused client
        certificate), so the proof is its exit code and that the request
        sent through it got no answer."""
        sc = s_client(port, servername, args, request=True)
        self.assertNotEqual(sc.rc, 0, "%s: s_client succeeded: %r" % (what, sc))
        self.assertFalse(sc.served, "%s: a request was answered: %r" % (what, sc))
        return sc


# ---------------------------------------------------------------------------
# termination: certificates, protocol, the request


class HttpsListenerTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_https_ferry_cls(up=cls.up.addr)

    # -- which certificate for which name -----------------------------------------

    def served(self, servername):
        sc = s_client(self.ferry.port, servername,
                      ["-CAfile", self.ca] + (["-verify_hostname", servername] if servername else []))
        self.assertIsNotNone(sc.negotiated, "no handshake for SNI %r: %r" % (servername, sc))
        return sc

    def test_each_sni_name_gets_its_certificate(self):
        for name in (METRICS, LOGS):
            with self.subTest(sni=name):
                sc = self.served(name)
                self.assertEqual(sc.subject, "CN = %s" % name, sc)
                self.assertEqual(san_names(sc.server_pem), [name])
                self.assertEqual(sc.verify_code, 0, "chain or host name does not verify: %r" % sc)

    def test_wildcard_matches_one_label(self):
        sc = self.served(TRACES)
        self.assertEqual(sc.subject, "CN = *.observability.internal", sc)
        self.assertEqual(san_names(sc.server_pem), ["*.observability.internal"])
        self.assertEqual(sc.verify_code, 0, sc)
        # An exact name wins over the wildcard, which is listed after it but also matches.
        self.assertEqual(self.served(METRICS).subject, "CN = %s" % METRICS)
        # `*.b.c` is one label: neither two labels nor the bare parent match it.
        for name in ("a.traces.observability.internal", "observability.internal"):
            with self.subTest(sni=name):
                sc = s_client(self.ferry.port, name, ["-CAfile", self.ca])
                self.assertEqual(sc.subject, "CN = %s" % DEFAULT, sc)

    def test_every_san_name_cn_without_san_and_names_overriding(self):
        for name in ("api.ferry.test", "www.ferry.test"):
            with self.subTest(sni=name):
                sc = self.served(name)
                self.assertEqual(sc.subject, "CN = api.ferry.test", sc)
                self.assertEqual(sc.verify_code, 0, sc)
        sc = self.served("legacy.ferry.test")
        self.assertEqual(sc.subject, "CN = legacy.ferry.test", "a certificate without SAN serves its CN: %r" % sc)
        sc = s_client(self.ferry.port, "alias.ferry.test", ["-CAfile", self.ca])
        self.assertEqual(sc.subject, "CN = %s" % ALB, "`names` did not select the certificate: %r" % sc)
        sc = s_client(self.ferry.port, ALB, ["-CAfile", self.ca])
        self.assertEqual(sc.subject, "CN = %s" % DEFAULT, "`names` must replace the SAN names: %r" % sc)

    def test_the_chain_after_the_leaf_is_sent(self):
        sc = self.served("chain.ferry.test")
        self.assertEqual(sc.subject, "CN = chain.ferry.test", sc)
        self.assertRegex(sc.out, r"(?m)^ 1 s:CN = Ferry Intermediate CA", "no intermediate sent: %r" % sc)
        self.assertEqual(sc.verify_code, 0, "the chain does not verify up to the root: %r" % sc)

    def test_sni_is_case_insensitive(self):
        sc = s_client(self.ferry.port, "METRICS.Observability.Internal", ["-CAfile", self.ca])
        self.assertEqual(sc.subject, "CN = %s" % METRICS, sc)
        sc = s_client(self.ferry.port, "Traces.OBSERVABILITY.internal", ["-CAfile", self.ca])
        self.assertEqual(sc.subject, "CN = *.observability.internal", sc)

    def test_default_certificate_without_sni_and_for_unknown_names(self):
        sc = self.served(None)
        self.assertEqual(sc.subject, "CN = %s" % DEFAULT, sc)
        self.assertEqual(san_names(sc.server_pem), [DEFAULT])
        sc = s_client(self.ferry.port, "unknown.example", ["-CAfile", self.ca])
        self.assertIsNotNone(sc.negotiated, sc)
        self.assertEqual(sc.subject, "CN = %s" % DEFAULT, sc)
        sc = self.served(DEFAULT)
        self.assertEqual(sc.verify_code, 0, sc)

    # -- protocol versions --------------------------------------------------------

    def test_tls12_with_alpn_http11(self):
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-alpn", "h2,http/1.1"])
        self.assertEqual(sc.negotiated and sc.negotiated[0], "TLSv1.2", sc)
        self.assertEqual(sc.alpn, "http/1.1", sc)
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca])
        self.assertIsNotNone(sc.negotiated, sc)
        self.assertIsNone(sc.alpn, "ALPN without the client asking: %r" % sc)

    def test_tls10_and_tls11_are_refused(self):
        for flag in ("-tls1", "-tls1_1"):
            with self.subTest(client=flag):
                # Debian's OpenSSL offers neither at its default security level.
                sc = self.assertHandshakeFails(self.ferry.port, METRICS, [flag, "-cipher", "DEFAULT@SECLEVEL=0"],
                                               flag)
                self.assertIsNone(sc.negotiated, "a %s session: %r" % (flag, sc))
                self.assertNotIn("no protocols available", sc.out,
                                 "the local openssl did not even try %s: %r" % (flag, sc))

    def test_old_client_hellos_get_no_server_hello(self):
        # The same hello as TLS 1.2 is answered with a TLS 1.2 ServerHello: the probe works.
        record = first_record(self.ferry.port, client_hello(0x0303, SUITES_12, METRICS))
        self.assertEqual(server_hello_version(record), 0x0303, "no TLS 1.2 ServerHello: %r" % (record,))
        for version in (0x0301, 0x0302):
            with self.subTest(version=hex(version)):
                rtype, payload = first_record(self.ferry.port, client_hello(version, SUITES_OLD, METRICS))
                self.assertIsNone(server_hello_version((rtype, payload)),
                                  "ServerHello to a TLS %s hello" % hex(version))
                if rtype is not None:  # an alert, if anything: fatal protocol_version or handshake_failure
                    self.assertEqual(rtype, 0x15, "not an alert: %r" % ((rtype, payload),))
                    self.assertEqual(payload[0], 2, "alert not fatal: %r" % payload)
        self.assertAlive(self.ferry)

    def test_tls13_only_client_is_refused(self):
        sc = self.assertHandshakeFails(self.ferry.port, METRICS, ["-tls1_3"], "-tls1_3")
        self.assertIsNone(sc.negotiated, sc)
        # The same client allowed TLS 1.2 gets it: the refusal is about the version.
        sc = s_client(self.ferry.port, METRICS, ["-tls1_2"], request=True)
        self.assertTrue(sc.served, sc)

    # -- requests over https --------------------------------------------------------

    def test_request_over_https_keepalive(self):
        r = curl_https(self.ferry.port, METRICS, ["/tls", "/echo"], cacert=self.ca)
        self.assertEqual(r.rc, 0, r)
        (s1, c1, b1), (s2, c2, b2) = r.results
        self.assertEqual((s1, s2), (200, 200), r)
        self.assertEqual((c1, c2), (1, 0), "curl did not reuse the connection: %r" % r)
        tls = fields(b1)
        self.assertEqual(tls["listener"], "agents")
        self.assertEqual(tls["sni"], METRICS)
        self.assertEqual(tls["version"], "TLSv1.2")
        self.assertEqual(tls["alpn"], "http/1.1")
        self.assertRegex(tls["cipher"], r"^TLS-ECDHE-ECDSA-WITH-", "cipher named in mbedTLS's words")
        self.assertEqual(tls["client_subject"], "nil")
        self.assertEqual(tls["client_verified"], "false")
        self.assertEqual(tls["resumed"], "false")
        info = json.loads(b2)
        h = echo_headers(info)
        self.assertEqual(info["version"], "HTTP/1.1")
        self.assertEqual(h["host"], "%s:%d" % (METRICS, self.ferry.port))
        self.assertEqual(h["x-forwarded-proto"], "https")
        self.assertEqual(h["x-tls-sni"], METRICS)
        self.assertEqual(h["x-tls-version"], "TLSv1.2")

    def test_sni_and_host_are_separate(self):
        # No SNI: req.tls.sni is nil, the request is still served.
        sock = tls_connect(self.ferry.port, None, cafile=self.ca)
        try:
            r = tls_get(sock, "/tls", METRICS)
            self.assertEqual(r.status, 200)
            self.assertEqual(fields(r.body)["sni"], "nil")
            r = tls_get(sock, "/tls", LOGS)  # keep-alive on the same TLS connection
            self.assertEqual(r.status, 200)
        finally:
            sock.close()

    def test_pipelined_requests_in_one_tls_record(self):
        sock = tls_connect(self.ferry.port, METRICS, cafile=self.ca)
        try:
            sock.sendall(request_bytes("GET", "/echo?n=1", host=METRICS) + request_bytes("GET", "/tls", host=METRICS)
                         + request_bytes("GET", "/echo?n=3", host=METRICS))
            reader = HttpReader(sock, timeout=5)
            r1, r2, r3 = (reader.read_response() for _ in range(3))
        finally:
            sock.close()
        self.assertEqual((r1.status, r2.status, r3.status), (200, 200, 200))
        self.assertEqual(r1.json()["query"], "n=1")
        self.assertEqual(fields(r2.body)["sni"], METRICS)
        self.assertEqual(r3.json()["query"], "n=3")

    def test_concurrent_tls_clients(self):
        results, lock = [], threading.Lock()

        def worker(name):
            try:
                sock = tls_connect(self.ferry.port, name, cafile=self.ca)
                try:
                    for _ in range(5):
                        r = tls_get(sock, "/tls", name)
                        with lock:
                            results.append((r.status, fields(r.body).get("sni") == name))
                finally:
                    sock.close()
            except Exception as e:  # every failure is a finding
                with lock:
                    results.append(("error", repr(e)))

        names = [METRICS, LOGS, TRACES, "api.ferry.test"] * 6
        threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.assertEqual(results, [(200, True)] * (5 * len(names)))

    def test_bodies_both_ways(self):
        data = os.urandom(3 * 1024 * 1024 + 17)
        with tempfile.NamedTemporaryFile(prefix="ferry-e2e-tls-") as f:
            f.write(data)
            f.flush()
            r = curl_https(self.ferry.port, LOGS, ["/upload"], cacert=self.ca,
                           args=["--data-binary", "@" + f.name])
        self.assertEqual(r.rc, 0, r)
        self.assertEqual(r.results[0][0], 200, r)
        info = json.loads(r.results[0][2])
        self.assertEqual((info["body_len"], info["body_sha256"]), (len(data), sha256(data)))
        n = 8 * 1024 * 1024 + 5
        r = curl_https(self.ferry.port, LOGS, ["/bytes?n=%d" % n, "/bytes?n=%d&mode=chunked" % n],
                       cacert=self.ca)
        self.assertEqual(r.rc, 0, r)
        for status, _, body in r.results:
            self.assertEqual(status, 200)
            self.assertEqual((len(body), sha256(body)), (n, pattern_sha256(n)))

    def test_plain_listener_has_no_tls(self):
        r = curl("http://%s:%d/tls" % (LOCAL, self.ferry.plain_port), host=METRICS)
        self.assertEqual(r.status, 200, r)
        self.assertIn(b"tls=nil", r.body)
        r = curl("http://%s:%d/echo" % (LOCAL, self.ferry.plain_port), host=METRICS)
        self.assertEqual(echo_headers(r.json())["x-forwarded-proto"], "http")

    # -- session resumption ---------------------------------------------------------------

    def resume(self, args=()):
        tmp = tempfile.mkdtemp(prefix="ferry-e2e-sess-")
        try:
            sess = os.path.join(tmp, "sess.pem")
            first = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_out", sess] + list(args))
            self.assertIsNotNone(first.negotiated, first)
            self.assertFalse(first.reused, first)
            self.assertTrue(os.path.exists(sess), "s_client saved no session: %r" % first)
            second = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_in", sess] + list(args))
            return first, second
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_session_resumption_by_ticket(self):
        first, second = self.resume()
        self.assertTrue(first.has_ticket, "no session ticket with session_tickets on by default: %r" % first)
        self.assertTrue(second.reused, "the ticket was not taken: %r" % second)
        self.assertEqual(second.negotiated[0], "TLSv1.2")

    def test_session_resumption_by_session_cache(self):
        first, second = self.resume(["-no_ticket"])
        self.assertFalse(first.has_ticket, first)
        self.assertTrue(second.reused, "the session id was not resumed from the server cache: %r" % second)

    def test_policy_sees_a_resumed_session(self):
        # `Connection: close` makes curl open a second connection, which resumes the first's session.
        r = curl_https(self.ferry.port, METRICS, ["/tls", "/tls"], cacert=self.ca,
                       headers=[("Connection", "close")])
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([c for _, c, _ in r.results], [1, 1], r)
        self.assertEqual(fields(r.results[0][2])["resumed"], "false", r)
        self.assertEqual(fields(r.results[1][2])["resumed"], "true", r)

    # -- hostile clients ------------------------------------------------------------------------

    def test_plain_http_to_the_https_port_is_closed(self):
        self.up.clear()
        for data in (request_bytes("GET", "/echo", host=METRICS),
                     b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",   # a ClientHello that lies about its length
                     os.urandom(4096),
                     b"\x16\x03\x03\xff\xff" + os.urandom(300),     # a record longer than allowed, cut short
                     ):
            with self.subTest(data=data[:16]):
                reply = send_raw(self.ferry.port, data, timeout=6)
                self.assertTrue(reply.closed, "ferry kept the connection open: %r" % bytes(reply[:100]))
                self.assertFalse(reply.startswith(b"HTTP/1.1 2"), bytes(reply[:100]))
        self.assertEqual(self.up.journal()["requests"], [], "garbage reached the upstream")
        self.assertAlive(self.ferry)

    def test_many_bad_connections_then_service(self):
        for i in range(30):
            sock = connect(self.ferry.port, timeout=5)
            try:
                if i % 3 == 0:
                    sock.sendall(client_hello(0x0303, SUITES_12, METRICS)[:40])
                elif i % 3 == 1:
                    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                sock.close()  # reset, mid-handshake or before it
        self.assertAlive(self.ferry)

    def test_stalled_handshakes_are_closed(self):
        # header_timeout (2 s here) bounds the time to a request's headers
        # "from the connection's start": a TLS handshake is part of that time.
        idle = connect(self.ferry.port, timeout=8)
        partial = connect(self.ferry.port, timeout=8)
        try:
            partial.sendall(client_hello(0x0303, SUITES_12, METRICS)[:30])
            start = time.monotonic()
            _, idle_closed, _ = read_until_close(idle, 6.0)
            _, partial_closed, _ = read_until_close(partial, max(0.1, 6.0 - (time.monotonic() - start)))
        finally:
            idle.close()
            partial.close()
        self.assertEqual({"silent": idle_closed, "half a ClientHello": partial_closed},
                         {"silent": True, "half a ClientHello": True},
                         "connections stalled before the end of the handshake stayed open 6 s "
                         "(header_timeout = 2 s)")
        self.assertAlive(self.ferry)


# ---------------------------------------------------------------------------
# client certificates


class ClientCertRequiredTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_https_ferry_cls(up=cls.up.addr, tls_extra='client_ca = "client-ca.pem",',
                                              more_files=["client-ca.pem"])

    def cert_args(self, name):
        return ["--cert", self.pki.path(name + ".pem"), "--key", self.pki.path(name + ".key")]

    def test_the_right_certificate_is_accepted(self):
        r = curl_https(self.ferry.port, METRICS, ["/tls", "/echo"], cacert=self.ca, args=self.cert_args("agent"))
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([s for s, _, _ in r.results], [200, 200], r)
        tls = fields(r.results[0][2])
        self.assertIn("CN=agent-1", tls["client_subject"])
        self.assertIn("O=Acme", tls["client_subject"])
        self.assertEqual(tls["client_verified"], "true")
        h = echo_headers(json.loads(r.results[1][2]))
        self.assertIn("CN=agent-1", h["x-tls-subject"])

    def test_no_certificate_is_refused(self):
        self.up.clear()
        r = curl_https(self.ferry.port, METRICS, ["/echo"], cacert=self.ca)
        self.assertNotEqual(r.rc, 0, r)
        self.assertNotEqual(r.results and r.results[0][0], 200, r)
        self.assertHandshakeFails(self.ferry.port, METRICS, ["-CAfile", self.ca], "no client certificate")
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-cert", self.pki.path("agent.pem"),
                                                 "-key", self.pki.path("agent.key")], request=True)
        self.assertTrue(sc.served, "the same s_client with a certificate: %r" % sc)
        self.assertEqual(self.up.journal()["requests"], [])

    def test_a_certificate_from_another_ca_is_refused(self):
        self.up.clear()
        r = curl_https(self.ferry.port, METRICS, ["/echo"], cacert=self.ca, args=self.cert_args("wrong-agent"))
        self.assertNotEqual(r.rc, 0, r)
        self.assertEqual(self.up.journal()["requests"], [])
        r = curl_https(self.ferry.port, METRICS, ["/tls"], cacert=self.ca, args=self.cert_args("agent"))
        self.assertEqual(r.results[0][0], 200, r)

    def test_the_server_asks_for_the_right_ca(self):
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-cert", self.pki.path("agent.pem"),
                                                 "-key", self.pki.path("agent.key")])
        self.assertIsNotNone(sc.negotiated, sc)
        self.assertRegex(sc.out, r"Acceptable client certificate CA names\s*\n\s*CN\s*=\s*Agents CA", sc)


class ClientCertOptionalTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_https_ferry_cls(
            up=cls.up.addr, tls_extra='client_ca = "%s", client_verify = "optional",'
                                      % pki().path("client-ca.pem"))

    def test_without_a_certificate_is_accepted_unverified(self):
        r = curl_https(self.ferry.port, METRICS, ["/tls"], cacert=self.ca)
        self.assertEqual(r.rc, 0, r)
        tls = fields(r.results[0][2])
        self.assertEqual(tls["client_verified"], "false")
        self.assertEqual(tls["client_subject"], "nil")

    def test_with_the_right_certificate_is_verified(self):
        r = curl_https(self.ferry.port, METRICS, ["/tls"], cacert=self.ca,
                       args=["--cert", self.pki.path("agent.pem"), "--key", self.pki.path("agent.key")])
        self.assertEqual(r.rc, 0, r)
        tls = fields(r.results[0][2])
        self.assertEqual(tls["client_verified"], "true")
        self.assertIn("CN=agent-1", tls["client_subject"])


class TlsOptionsTest(TlsCase):
    """`ciphers` restricts the suites; `session_tickets = false` still resumes from the cache."""

    CIPHER = "TLS-ECDHE-ECDSA-WITH-AES-256-GCM-SHA384"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_https_ferry_cls(
            up=cls.up.addr, tls_extra='ciphers = { "%s" }, session_tickets = false,' % cls.CIPHER)

    def test_only_the_listed_cipher(self):
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca])
        self.assertEqual(sc.negotiated, ("TLSv1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"), sc)
        self.assertHandshakeFails(self.ferry.port, METRICS, ["-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"],
                                  "a cipher not in the list")
        r = curl_https(self.ferry.port, METRICS, ["/tls"], cacert=self.ca)
        self.assertEqual(fields(r.results[0][2])["cipher"], self.CIPHER, r)

    def test_no_tickets_but_the_cache_resumes(self):
        tmp = tempfile.mkdtemp(prefix="ferry-e2e-sess-")
        try:
            sess = os.path.join(tmp, "sess.pem")
            first = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_out", sess])
            self.assertIsNotNone(first.negotiated, first)
            self.assertFalse(first.has_ticket, "a ticket with session_tickets = false: %r" % first)
            second = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_in", sess])
            self.assertTrue(second.reused, second)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# TLS to upstreams


# One worker: these check pooled upstream connections and resumed sessions, which each
# worker keeps for itself (as nginx's workers do).
UPSTREAM_CONFIG = """
return {
  workers = 1,
  listeners = {
    { name = "edge", type = "http", address = "$listen" },
    { name = "agents", type = "https", address = "$https",
      tls = { certificates = { { cert = "metrics.pem", key = "metrics.key" } } } },
  },
  upstreams = {
    good = { servers = { "$alb" }, tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    wrongca = { servers = { "$alb" }, tls = { ca = "wrong-ca.pem", server_name = "alb.main.internal" } },
    wrongname = { servers = { "$alb" }, tls = { ca = "ca.pem", server_name = "metrics.main.internal" } },
    insecure = { servers = { "$alb" }, tls = { verify = false } },
    fresh = { servers = { "$alb" }, keepalive = { max_idle = 0 },
              tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    mtls = { servers = { "$alb_mtls" },
             tls = { ca = "ca.pem", server_name = "alb.main.internal",
                     cert = "ferry-client.pem", key = "ferry-client.key" } },
    nocert = { servers = { "$alb_mtls" }, tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    silent = { servers = { "$plainup" }, timeouts = { connect = 1 },
               tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    garbage = { servers = { "$garbage" }, tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    pp = { servers = { "$alb_pp" }, proxy_protocol = "v2",
           tls = { ca = "ca.pem", server_name = "alb.main.internal" } },
    checked_ok = { servers = { "$alb2" }, tls = { ca = "ca.pem", server_name = "alb.main.internal" },
                   health = { check = { path = "/health", interval = 0.1, timeout = 1, rise = 1, fall = 1 } } },
    checked_bad = { servers = { "$alb2" }, tls = { ca = "wrong-ca.pem", server_name = "alb.main.internal" },
                    health = { check = { path = "/health", interval = 0.1, timeout = 1, rise = 1, fall = 1 } } },
  },
  policy = "$policy",
  admin = { address = "$admin" },
  limits = { header_timeout = 2 },
}
"""

UPSTREAM_POLICY = r"""
return {
  route = function(req)
    return req.path:match("^/(%w+)/") or req:respond(404, "no group\n")
  end,
}
"""


class UpstreamTlsTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        p = cls.pki
        cls.alb = cls.start_tls_upstream_cls("alb", "alb")
        cls.alb_mtls = cls.start_tls_upstream_cls("alb-mtls", "alb", client_ca="client-ca")
        cls.alb_pp = cls.start_tls_upstream_cls("alb-pp", "alb", proxy_protocol=True)
        cls.alb2 = cls.start_tls_upstream_cls("alb2", "alb")  # for the active checks only
        cls.plainup = cls.start_upstream_cls("plain")  # reads a ClientHello as a request head that never ends
        cls.garbage = GarbageServer().start()
        cls.addClassCleanup(cls.garbage.stop)
        files = p.files("metrics", "ferry-client")
        files["ca.pem"] = p.text("ca.pem")
        files["wrong-ca.pem"] = p.text("wrong-ca.pem")
        cls.https_port = free_port()
        cls.ferry = cls.start_ferry_cls(UPSTREAM_CONFIG, UPSTREAM_POLICY, files=files,
                                        alb=cls.alb.addr, alb_mtls=cls.alb_mtls.addr,
                                        plainup=cls.plainup.addr, garbage=cls.garbage.addr,
                                        alb_pp=cls.alb_pp.addr, alb2=cls.alb2.addr,
                                        admin="%s:%d" % (LOCAL, free_port()),
                                        https="%s:%d" % (LOCAL, cls.https_port))
        if not wait_until(lambda: port_accepts(cls.https_port), 5):
            raise AssertionError("the https listener does not accept")

    def get(self, path, body=None):
        return curl("http://%s:%d%s" % (LOCAL, self.ferry.port, path), host="api.test", data=body)

    def test_verified_upstream_gets_sni_and_keeps_the_connection(self):
        r1 = self.get("/good/one")
        self.assertEqual(r1.status, 200, "%r\n%s" % (r1, self.ferry.log_tail()))
        info1 = r1.json()
        self.assertEqual(info1["sni"], ALB)
        self.assertEqual(info1["tls_version"], "TLSv1.2")
        self.assertEqual(info1["host"], "api.test")
        self.assertEqual(info1["x_forwarded_proto"], "http")
        self.assertIsNone(info1["client_subject"])
        data = os.urandom(200000)
        r2 = self.get("/good/two", body=data)
        self.assertEqual(r2.status, 200, r2)
        info2 = r2.json()
        self.assertEqual((info2["body_len"], info2["body_sha256"]), (len(data), sha256(data)))
        self.assertEqual(info2["conn_id"], info1["conn_id"], "the pooled TLS connection was not reused")

    def failed_handshakes(self):
        """Handshakes that failed after a ClientHello naming alb.main.internal (so: not plain HTTP)."""
        return len([e for e in self.alb.events() if not e.get("ok") and e.get("sni") == ALB])

    def test_wrong_ca_is_502(self):
        before = self.failed_handshakes()
        r = self.get("/wrongca/x")
        self.assertEqual(r.status, 502, r)
        # The TCP connect worked: it is the handshake that failed (and was retried, as a connect failure).
        self.assertTrue(wait_until(lambda: self.failed_handshakes() > before, 3),
                        "the upstream saw no failed handshake: %s" % self.alb.log_text()[-1000:])

    def test_wrong_server_name_is_502_even_with_a_pooled_connection(self):
        # A connection pooled for "good" (same address, other TLS identity) must not serve "wrongname".
        self.assertEqual(self.get("/good/warm").status, 200)
        r = self.get("/wrongname/x")
        self.assertEqual(r.status, 502, "%r: a connection verified for another name was used" % r)
        self.assertIn("metrics.main.internal", [e.get("sni") for e in self.alb.events()],
                      "ferry did not send the configured server_name")
        self.assertEqual(self.get("/good/again").status, 200)

    def test_new_upstream_connections_resume_the_session(self):
        # max_idle = 0: every request has a connection (and a handshake) of its own.
        first = self.get("/fresh/1").json()
        second = self.get("/fresh/2").json()
        self.assertNotEqual(first["conn_id"], second["conn_id"])
        self.assertTrue(second["session_reused"], "ferry did not offer the upstream's last session")

    def test_verify_off_accepts_any_certificate(self):
        r = self.get("/insecure/x")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json()["tls_version"], "TLSv1.2")

    def test_client_certificate_to_the_upstream(self):
        r = self.get("/mtls/x")
        self.assertEqual(r.status, 200, "%r\n%s" % (r, self.alb_mtls.log_text()[-1000:]))
        self.assertEqual(r.json()["client_subject"], "CN=ferry-proxy,O=Ferry")
        self.assertEqual(r.json()["sni"], ALB)
        r = self.get("/nocert/x")
        self.assertEqual(r.status, 502, r)

    def test_large_bodies_through_the_upstream_tls(self):
        data = os.urandom(4 * 1024 * 1024 + 3)
        r = self.get("/good/upload", body=data)
        self.assertEqual(r.status, 200, r)
        self.assertEqual((r.json()["body_len"], r.json()["body_sha256"]), (len(data), sha256(data)))
        n = 8 * 1024 * 1024 + 11
        self.assertEqual(self.get_bytes(n), (200, n, sha256(bytes_pattern(n))))

    def get_bytes(self, n):
        sock = connect(self.ferry.port, timeout=10)
        try:
            sock.sendall(request_bytes("GET", "/good/bytes?n=%d" % n, host="api.test"))
            r = HttpReader(sock, timeout=20).read_response()
            return r.status, len(r.body), sha256(r.body)
        finally:
            sock.close()

    def test_concurrent_requests_to_a_tls_upstream(self):
        results, lock = [], threading.Lock()

        def worker():
            sock = connect(self.ferry.port, timeout=10)
            try:
                reader = HttpReader(sock, timeout=10)
                for i in range(5):
                    sock.sendall(request_bytes("GET", "/good/c%d" % i, host="api.test"))
                    r = reader.read_response()
                    with lock:
                        results.append((r.status, r.json()["sni"] if r.status == 200 else r.body[:100]))
            except Exception as e:  # every failure is a finding
                with lock:
                    results.append(("error", repr(e)))
            finally:
                sock.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        self.assertEqual(results, [(200, ALB)] * 80)

    def test_a_server_answering_plain_http_is_502(self):
        r = self.get("/garbage/x")
        self.assertEqual(r.status, 502, r)
        self.assertGreaterEqual(self.garbage.accepted, 1)
        self.assertTrue(self.ferry.alive())
        self.assertEqual(self.get("/good/after").status, 200)

    def test_a_handshake_that_never_ends_is_bounded_by_the_connect_timeout(self):
        start = time.monotonic()
        r = self.get("/silent/x")
        took = time.monotonic() - start
        self.assertIn(r.status, (502, 504), r)
        self.assertLess(took, 4.5, "two tries with timeouts.connect = 1 took %.1fs" % took)
        self.assertEqual(self.plainup.journal()["requests"], [])

    def test_proxy_protocol_header_goes_before_the_handshake(self):
        r = self.get("/pp/x")
        self.assertEqual(r.status, 200, "%r\n%s" % (r, self.alb_pp.log_text()[-1000:]))
        info = r.json()
        self.assertEqual(info["sni"], ALB)
        self.assertEqual((info["proxy"]["version"], info["proxy"]["source"]), (2, LOCAL))

    def test_active_checks_verify_the_certificate(self):
        server_up = 'ferry_upstream_server_up{group="%s",server="%s"}'
        admin = self.ferry.other_ports()[0]
        down = wait_until(lambda: self.metrics(admin).get(server_up % ("checked_bad", self.alb2.addr)) == 0, 5)
        self.assertTrue(down, "a server whose certificate does not verify stays in service: %r"
                        % {k: v for k, v in self.metrics(admin).items() if "server_up" in k})
        self.assertEqual(self.metrics(admin)[server_up % ("checked_ok", self.alb2.addr)], 1)
        self.assertTrue(any(e.get("ok") for e in self.alb2.events()), "no check completed a handshake")

    def test_handshake_metrics(self):
        admin = self.ferry.other_ports()[0]
        before = self.metrics(admin)

        def delta(name):
            return self.metrics(admin).get(name, 0) - before.get(name, 0)

        tls = 'ferry_tls_handshakes_total{side="%s",result="%s"}'
        self.assertEqual(self.get("/wrongca/m").status, 502)
        self.assertGreaterEqual(delta(tls % ("upstream", "failed")), 1)
        self.assertGreaterEqual(delta('ferry_upstream_failures_total{kind="tls_handshake"}'), 1)
        self.assertEqual(self.get("/fresh/m1").status, 200)
        self.assertEqual(self.get("/fresh/m2").status, 200)
        self.assertGreaterEqual(delta(tls % ("upstream", "resumed")), 1)
        r = curl_https(self.https_port, METRICS, ["/good/m", "/good/m"], cacert=self.ca,
                       headers=[("Connection", "close")])
        self.assertEqual([s for s, _, _ in r.results], [200, 200], r)
        self.assertEqual(delta(tls % ("client", "new")), 1)
        self.assertEqual(delta(tls % ("client", "resumed")), 1)
        send_raw(self.https_port, b"GET / HTTP/1.1\r\n\r\n", timeout=3)
        self.assertTrue(wait_until(lambda: delta(tls % ("client", "failed")) >= 1, 3))

    def test_https_in_front_and_behind(self):
        r = curl_https(self.https_port, METRICS, ["/good/a", "/good/b"], cacert=self.ca)
        self.assertEqual(r.rc, 0, r)
        self.assertEqual([s for s, _, _ in r.results], [200, 200], r)
        info = json.loads(r.results[1][2])
        self.assertEqual(info["x_forwarded_proto"], "https")
        self.assertEqual(info["sni"], ALB)


# ---------------------------------------------------------------------------
# PROXY protocol in front of TLS (an NLB with proxy protocol v2 before ferry)


class BioClient:
    """A TLS client driven through memory BIOs over a plain socket, so a test
    can send bytes of its own (a PROXY header) in the same write as the
    ClientHello."""

    def __init__(self, sock, servername, cafile):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname=servername)
        self.sock = sock

    def _pump_in(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.inc.write_eof()
            return False
        self.inc.write(chunk)
        return True

    def handshake(self, prefix=b"", timeout=5.0):
        deadline = time.monotonic() + timeout
        for _ in range(100):
            try:
                self.obj.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            data, prefix = prefix + self.out.read(), b""
            if data:
                self.sock.sendall(data)
            if done:
                return
            if not self._pump_in(deadline):
                raise ConnectionError("closed during the handshake")
        raise AssertionError("handshake did not finish")

    def exchange(self, data, timeout=5.0):
        """Send data; return everything until ferry closes (ask with Connection: close)."""
        deadline = time.monotonic() + timeout
        self.obj.write(data)
        self.sock.sendall(self.out.read())
        got = b""
        while time.monotonic() < deadline:
            try:
                chunk = self.obj.read(65536)
                if not chunk:  # close_notify
                    break
                got += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not self._pump_in(deadline):
                try:
                    got += self.obj.read(65536)
                except ssl.SSLError:
                    pass
                break
        return got


PP_CONFIG = """
return {
  listeners = {
    { name = "nlb", type = "https", address = "$listen",
      tls = { certificates = { { cert = "metrics.pem", key = "metrics.key" } } },
      proxy_protocol = { trusted = { "127.0.0.0/8" } } },
  },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  limits = { header_timeout = 2 },
}
"""


class ProxyProtocolHttpsTest(TlsCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(PP_CONFIG, POLICY, files=pki().files("metrics"), up=cls.up.addr)

    def ask(self, prefix, one_write):
        sock = connect(self.ferry.port, timeout=5)
        try:
            client = BioClient(sock, METRICS, self.ca)
            if one_write:
                client.handshake(prefix)
            else:
                sock.sendall(prefix)
                time.sleep(0.05)
                client.handshake()
            reply = client.exchange(request_bytes("GET", "/tls", host=METRICS,
                                                  headers=[("Connection", "close")]))
        finally:
            sock.close()
        self.assertTrue(reply.startswith(b"HTTP/1.1 200"), reply[:300])
        return fields(reply.split(b"\r\n\r\n", 1)[1])

    def test_v2_header_and_client_hello_in_one_write(self):
        f = self.ask(pp_v2("10.1.2.3", "vpce-0123456789abcdef0"), one_write=True)
        self.assertEqual((f["client_addr"], f["vpce"], f["sni"], f["version"]),
                         ("10.1.2.3", "vpce-0123456789abcdef0", METRICS, "TLSv1.2"))

    def test_v1_header_then_the_handshake(self):
        f = self.ask(b"PROXY TCP4 10.9.8.7 10.0.0.1 40000 443\r\n", one_write=False)
        self.assertEqual((f["client_addr"], f["vpce"], f["sni"]), ("10.9.8.7", "nil", METRICS))

    def test_a_client_hello_without_the_header_is_closed(self):
        sc = self.assertHandshakeFails(self.ferry.port, METRICS, ["-CAfile", self.ca], "no PROXY header")
        self.assertIsNone(sc.negotiated, sc)
        self.assertTrue(self.ferry.alive())


def pp_v2(src, vpce, dst="10.0.0.1", sport=5555, dport=443):
    """A PROXY protocol v2 header (TCP over IPv4) with the AWS VPC endpoint TLV."""
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    value = b"\x01" + vpce.encode()
    body += struct.pack("!BH", 0xEA, len(value)) + value
    return b"\r\n\r\n\x00\r\nQUIT\n" + b"\x21\x11" + struct.pack("!H", len(body)) + body


# ---------------------------------------------------------------------------
# config checks and reloads


CHECK_CONFIG = """
return {
  listeners = {
    { name = "agents", type = "https", address = "127.0.0.1:$port",
      tls = { $tls } },
  },
  upstreams = { alb = { servers = { "127.0.0.1:9443" }, $up_tls } },
  policy = "$policy",
}
"""

GOOD_TLS = ('certificates = { { cert = "certs/metrics.pem", key = "certs/metrics.key" }, '
            '{ cert = "certs/logs.pem", key = "certs/logs.key" } }')
GOOD_UP_TLS = 'tls = { ca = "certs/ca.pem", server_name = "alb.main.internal" }'


class TlsConfigTest(TlsCase):
    def make(self, tls=GOOD_TLS, up_tls=GOOD_UP_TLS):
        p = self.pki
        files = {"certs/" + k: v for k, v in p.files("metrics", "logs", "agent").items()}
        for name in ("ca.pem", "client-ca.pem", "garbage.pem", "stray.key"):
            files["certs/" + name] = p.text(name)
        d = ConfigDir(CHECK_CONFIG, "return { route = function(req) return 'alb' end }\n", files,
                      port=free_port(), tls=tls, up_tls=up_tls)
        self.addCleanup(d.cleanup)
        return d

    def assertCheckFails(self, d, *needles):
        rc, out = d.check()
        self.assertEqual(rc, 1, "ferry check must exit 1; output:\n" + out)
        for needle in needles:
            # file:line: key.path: message
            self.assertRegex(out, r"ferry\.lua:\d+: " + re.escape(needle))
        return out

    def test_a_valid_https_config_passes(self):
        rc, out = self.make().check(cwd="/")  # relative to the config's directory
        self.assertEqual(rc, 0, out)
        rc, out = self.make(GOOD_TLS + ', client_ca = "certs/client-ca.pem", client_verify = "optional", '
                            'session_tickets = false').check()
        self.assertEqual(rc, 0, out)
        rc, out = self.make(up_tls='tls = { ca = "certs/ca.pem", server_name = "alb.main.internal", '
                                   'cert = "certs/agent.pem", key = "certs/agent.key" }').check()
        self.assertEqual(rc, 0, out)

    def test_missing_certificate_file(self):
        d = self.make('certificates = { { cert = "certs/nope.pem", key = "certs/metrics.key" } }')
        out = self.assertCheckFails(d, "listeners[1].tls.certificates[1]")
        self.assertRegex(out, r"listeners\[1\]\.tls\.certificates\[1\]\.cert")

    def test_unparsable_certificate(self):
        d = self.make('certificates = { { cert = "certs/garbage.pem", key = "certs/metrics.key" } }')
        self.assertCheckFails(d, "listeners[1].tls.certificates[1]")

    def test_missing_key_file(self):
        d = self.make('certificates = { { cert = "certs/metrics.pem", key = "certs/nope.key" } }')
        out = self.assertCheckFails(d, "listeners[1].tls.certificates[1]")
        self.assertRegex(out, r"listeners\[1\]\.tls\.certificates\[1\]\.key")

    def test_key_not_matching_its_certificate(self):
        d = self.make('certificates = { { cert = "certs/metrics.pem", key = "certs/metrics.key" }, '
                      '{ cert = "certs/logs.pem", key = "certs/stray.key" } }')
        self.assertCheckFails(d, "listeners[1].tls.certificates[2]")

    def test_https_listener_needs_certificates(self):
        self.assertCheckFails(self.make("certificates = {}"), "listeners[1].tls.certificates")
        no_tls = CHECK_CONFIG.replace("\n      tls = { $tls } }", " }")
        self.assertNotIn("$tls", no_tls)
        d = ConfigDir(no_tls, "return { route = function(req) return 'alb' end }\n",
                      port=free_port(), up_tls="")
        self.addCleanup(d.cleanup)
        self.assertCheckFails(d, "listeners[1].tls")

    def test_unknown_cipher(self):
        self.assertCheckFails(self.make(GOOD_TLS + ', ciphers = { "TLS-NO-SUCH-SUITE" }'), "listeners[1].tls.ciphers")

    def test_tls_on_an_http_listener_is_refused(self):
        conf = CHECK_CONFIG.replace('type = "https"', 'type = "http"')
        self.assertNotEqual(conf, CHECK_CONFIG)
        d = ConfigDir(conf, "return { route = function(req) return 'alb' end }\n",
                      {"certs/" + k: v for k, v in self.pki.files("metrics", "logs").items()},
                      port=free_port(), tls=GOOD_TLS, up_tls="")
        self.addCleanup(d.cleanup)
        self.assertCheckFails(d, "listeners[1].tls")

    def test_bad_client_ca_and_verify_mode(self):
        self.assertCheckFails(self.make(GOOD_TLS + ', client_ca = "certs/nope.pem"'),
                              "listeners[1].tls.client_ca")
        self.assertCheckFails(self.make(GOOD_TLS + ', client_ca = "certs/client-ca.pem", '
                                        'client_verify = "sometimes"'), "listeners[1].tls.client_verify")

    def test_bad_upstream_tls(self):
        self.assertCheckFails(self.make(up_tls='tls = { ca = "certs/nope.pem", server_name = "alb.main.internal" }'),
                              "upstreams.alb.tls.ca")
        # verify on (the default) with an IP literal server needs a server_name
        self.assertCheckFails(self.make(up_tls='tls = { ca = "certs/ca.pem" }'), "upstreams.alb.tls.server_name")
        self.assertCheckFails(self.make(up_tls='tls = { ca = "certs/ca.pem", server_name = "alb.main.internal", '
                                               'cert = "certs/agent.pem", key = "certs/stray.key" }'),
                              "upstreams.alb.tls")


class TlsReloadTest(TlsCase):
    def setUp(self):
        self.up = self.start_upstream("default")
        files = self.pki.files(*CERT_NAMES)
        self.ferry = self.start_ferry(CONFIG, POLICY, files=files, tls_extra="",
                                      plain="%s:%d" % (LOCAL, free_port()), up=self.up.addr)

    def write(self, name, text):
        path = os.path.join(self.ferry.dir, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def metrics_subject(self):
        sc = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-verify_hostname", METRICS])
        self.assertIsNotNone(sc.negotiated, sc)
        self.assertEqual(sc.verify_code, 0, sc)
        return sc.subject

    def test_broken_key_leaves_the_old_generation_serving(self):
        self.assertEqual(self.metrics_subject(), "CN = %s" % METRICS)
        self.write("metrics.key", "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
        os.kill(self.ferry.pid, signal.SIGHUP)
        m = self.ferry.wait_log(r"reload refused, generation 1 keeps serving", timeout=10)
        self.assertIsNotNone(m, self.ferry.log_tail())
        self.assertIn("listeners[1].tls.certificates[2]", self.ferry.log_text())
        self.assertEqual(self.metrics_subject(), "CN = %s" % METRICS)
        self.assertAlive(self.ferry)

    def test_a_session_ticket_survives_a_reload(self):
        tmp = tempfile.mkdtemp(prefix="ferry-e2e-sess-")
        try:
            sess = os.path.join(tmp, "sess.pem")
            first = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_out", sess])
            self.assertTrue(first.has_ticket, first)
            os.kill(self.ferry.pid, signal.SIGHUP)
            self.assertIsNotNone(self.ferry.wait_log(r"generation 2 is live", timeout=10), self.ferry.log_tail())
            second = s_client(self.ferry.port, METRICS, ["-CAfile", self.ca, "-sess_in", sess])
            self.assertTrue(second.reused, "ticket keys did not survive the reload: %r" % second)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def test_new_certificate_on_new_connections(self):
        before = tls_connect(self.ferry.port, METRICS, cafile=self.ca)
        try:
            self.assertEqual(tls_get(before, "/tls", METRICS).status, 200)
            old_subject = dict(x[0] for x in before.getpeercert()["subject"])
            self.assertNotIn("organizationName", old_subject)
            self.write("metrics.key", self.pki.text("metrics-rotated.key"))
            self.write("metrics.pem", self.pki.text("metrics-rotated.pem"))
            os.kill(self.ferry.pid, signal.SIGHUP)
            m = self.ferry.wait_log(r"generation 2 is live", timeout=10)
            self.assertIsNotNone(m, self.ferry.log_tail())
            self.assertEqual(self.metrics_subject(), "CN = %s, O = Rotated" % METRICS)
            # A connection made before the reload carries on.
            r = tls_get(before, "/tls", METRICS)
            self.assertEqual(r.status, 200)
            self.assertEqual(fields(r.body)["sni"], METRICS)
        finally:
            before.close()
        # Other names keep their certificates.
        sc = s_client(self.ferry.port, LOGS, ["-CAfile", self.ca])
        self.assertEqual(sc.subject, "CN = %s" % LOGS, sc)


CA_RELOAD_CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { good = { servers = { "$alb" }, retry = { tries = 1 },
                         tls = { ca = "ca.pem", server_name = "alb.main.internal" } } },
  policy = "$policy",
}
"""


class UpstreamCaReloadTest(TlsCase):
    def test_a_rewritten_ca_file_retires_pooled_connections(self):
        # Same path, other contents: connections verified under the old CA must not be reused.
        alb = TlsUpstream("alb", self.pki.path("alb.pem"), self.pki.path("alb.key"), None, False).start()
        self.addCleanup(alb.stop)
        files = {"ca.pem": self.pki.text("ca.pem")}
        ferry = self.start_ferry(CA_RELOAD_CONFIG, UPSTREAM_POLICY, files=files, alb=alb.addr)
        url = "http://%s:%d/good/x" % (LOCAL, ferry.port)
        r = curl(url, host="api.test")
        self.assertEqual(r.status, 200, "%r\n%s" % (r, ferry.log_tail()))
        with open(os.path.join(ferry.dir, "ca.pem"), "w") as f:
            f.write(self.pki.text("wrong-ca.pem"))
        os.kill(ferry.pid, signal.SIGHUP)
        self.assertIsNotNone(ferry.wait_log(r"generation 2 is live", timeout=10), ferry.log_tail())
        r = curl(url, host="api.test")
        self.assertEqual(r.status, 502, "a connection verified under the old CA was reused: %r" % r)


LEAK_CONFIG = CONFIG.replace("  limits = {", '  admin = { address = "$admin" },\n  limits = {', 1)


class TlsReloadMemoryTest(TlsCase):
    def test_reloads_free_old_certificates(self):
        up = self.start_upstream("default")
        admin = free_port()
        ferry = self.start_ferry(LEAK_CONFIG, POLICY, files=self.pki.files(*CERT_NAMES), tls_extra="",
                                 plain="%s:%d" % (LOCAL, free_port()), up=up.addr,
                                 admin="%s:%d" % (LOCAL, admin))
        conn = http.client.HTTPConnection(LOCAL, admin, timeout=10)
        self.addCleanup(conn.close)

        def reload():
            conn.request("POST", "/reload", headers={"Host": "admin"})
            resp = conn.getresponse()
            body = resp.read()
            self.assertEqual(resp.status, 200, body)

        def handshake():
            sock = tls_connect(ferry.port, METRICS, cafile=self.ca)
            try:
                self.assertEqual(tls_get(sock, "/tls", METRICS).status, 200)
            finally:
                sock.close()

        for _ in range(30):  # warm up: allocator arenas, the session cache
            reload()
            handshake()
        before = ferry.rss_kb()
        start = time.monotonic()
        for i in range(200):
            reload()
            if i % 10 == 0:
                handshake()
        took = time.monotonic() - start
        handshake()
        after = ferry.rss_kb()
        sys.stderr.write("\n  200 reloads of %d certificates: RSS %d kB -> %d kB, %.1f ms a reload\n"
                         % (len(CERT_NAMES), before, after, took * 1000 / 200))
        if not SANITIZED:  # ASan quarantines freed memory; its leak check runs at exit instead
            self.assertLess(after - before, 3072, "RSS grew by %d kB over 200 reloads" % (after - before))

if __name__ == "__main__":
    unittest.main()
