"""Shared plumbing for ferry's end-to-end tests.

The tests drive the real `ferry` binary: each test (or test class) writes an
inline Lua config and policy into a temporary directory, starts
`ferry run -c CONF`, points it at one or more scripted upstream processes
(`upstream.py`) and talks to it with curl or with raw sockets.  Everything
listens on 127.0.0.1, every wait has a deadline, every loop a bound, and every
process started here is stopped by its own PID.

Environment:
    FERRY_BIN           binary to test (default: <repo>/build/ferry)
    FERRY_E2E_KEEP=1    keep temp dirs (config, policy, ferry.log) and print them
    FERRY_STOP_TIMEOUT  seconds to wait after SIGTERM before SIGKILL (default 3)
"""

import hashlib
import json
import os
import random
import re
import selectors
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import unittest

from . import upstream as _upstream

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
UPSTREAM_PY = os.path.join(HERE, "upstream.py")
FERRY_BIN = os.environ.get("FERRY_BIN", os.path.join(REPO, "build", "ferry"))
KEEP = os.environ.get("FERRY_E2E_KEEP") == "1"
STOP_TIMEOUT = float(os.environ.get("FERRY_STOP_TIMEOUT", "3"))
START_TIMEOUT = 10.0
LOCAL = "127.0.0.1"

pattern_chunks = _upstream.pattern_chunks
pattern_bytes = _upstream.pattern_bytes
pattern_sha256 = _upstream.pattern_sha256

MiB = 1 << 20

# Child processes must never go through a proxy configured in the environment.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}


def sha256(data):
    return hashlib.sha256(data).hexdigest()


_rng = random.Random(os.getpid() ^ int(time.time() * 1000))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Chosen below the kernel's ephemeral range (32768-60999 by default): a
    port from bind(0) lies in that range, where any outgoing connection of
    a concurrent test (curl, a client socket) may take it before ferry binds
    it. Random per process, so parallel test files rarely meet."""
    for _ in range(200):
        port = _rng.randint(10000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOCAL, port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def port_accepts(port, timeout=0.2, host=LOCAL):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(predicate, timeout, interval=0.05):
    """Poll predicate until it is truthy or timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
    return predicate()


def require_binary():
    if not (os.path.isfile(FERRY_BIN) and os.access(FERRY_BIN, os.X_OK)):
        raise AssertionError("ferry binary not found at %s: build it with "
                             "`./bootstrap build` or set FERRY_BIN" % FERRY_BIN)


def _stop_process(proc, term_timeout=STOP_TIMEOUT):
    """SIGTERM the process by its PID, SIGKILL it after term_timeout.

    Returns the exit status (negative for a signal, -9 when SIGKILL was needed).
    """
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    try:
        os.kill(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        pass
    sys.stderr.write("[e2e] pid %d still running %.1fs after SIGTERM: SIGKILL\n"
                     % (proc.pid, term_timeout))
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def _proc_status_kb(pid, key):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------
# ferry


# In a sanitizer build (FERRY_SANITIZED=1, set by ctest) a report in ferry's
# log fails the test that started it, even when every assertion held.
SANITIZED = os.environ.get("FERRY_SANITIZED") == "1"
SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)[^\n]*|runtime error:[^\n]*"
                              r"|WARNING: ThreadSanitizer[^\n]*")


class FerryStartError(AssertionError):
    pass


class Ferry:
    """A `ferry run` process with its own temp dir, config and policy.

    `config` is Lua source with string.Template placeholders: `$listen`
    (127.0.0.1:PORT), `$port`, `$policy` (absolute path of the policy file),
    `$dir` (the temp dir) and any keyword given here (e.g. metrics="127.0.0.1:9").
    Write `$$` for a literal dollar.  `policy` is written verbatim to policy.lua;
    `files` maps extra file names to contents.
    """

    def __init__(self, config, policy=None, files=None, **subs):
        self.config_template = config
        self.policy = policy
        self.files = dict(files or {})
        self.subs = subs
        self.dir = tempfile.mkdtemp(prefix="ferry-e2e-")
        self.conf_path = os.path.join(self.dir, "ferry.lua")
        self.policy_path = os.path.join(self.dir, "policy.lua")
        self.log_path = os.path.join(self.dir, "ferry.log")
        self.proc = None
        self.port = None
        self.returncode = None
        self.env = {}  # extra environment for the ferry process

    def render(self, port):
        values = dict(listen="%s:%d" % (LOCAL, port), port=str(port),
                      policy=self.policy_path, dir=self.dir)
        values.update({k: str(v) for k, v in self.subs.items()})
        return string.Template(self.config_template).substitute(values)

    def write_files(self, port):
        with open(self.conf_path, "w") as f:
            f.write(self.render(port))
        if self.policy is not None:
            with open(self.policy_path, "w") as f:
                f.write(self.policy)
        for name, text in self.files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)

    def start(self, timeout=START_TIMEOUT):
        require_binary()
        for _ in range(3):
            self.port = free_port()
            self.write_files(self.port)
            if self._launch(timeout):
                return self
            if not re.search(r"in use|EADDRINUSE", self.log_text(), re.I):
                break
        raise FerryStartError("ferry did not start listening on %d (exit %s); log:\n%s"
                              % (self.port, self.returncode, self.log_tail()))

    def other_ports(self):
        """The admin listener's port, if the config has one: ferry opens it last."""
        with open(self.conf_path) as f:
            m = re.search(r'admin\s*=\s*\{\s*address\s*=\s*"127\.0\.0\.1:(\d+)"', f.read())
        return [int(m.group(1))] if m else []

    def _launch(self, timeout):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([FERRY_BIN, "run", "-c", self.conf_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=self.dir, env=dict(CLEAN_ENV, **self.env))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                return False
            if port_accepts(self.port) and all(port_accepts(p) for p in self.other_ports()):
                return True
            time.sleep(0.05)
        self.returncode = _stop_process(self.proc)
        return False

    def stop(self):
        if self.proc is not None:
            self.returncode = _stop_process(self.proc)
            if self.returncode == -signal.SIGKILL:
                sys.stderr.write("[e2e] ferry needed SIGKILL; its log ends with:\n%s\n"
                                 % self.log_tail(8))
        report = SANITIZER_REPORT.search(self.log_text()) if os.path.exists(self.log_path) else None
        if report:
            text = self.log_text()
            sys.stderr.write("[e2e] sanitizer report in ferry's log:\n%s\n" % text[report.start():][:4000])
        if KEEP:
            sys.stderr.write("[e2e] ferry files kept in %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        self.proc = None
        if report:
            raise AssertionError("ferry's log has a sanitizer report: %s" % report.group(0))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path="/"):
        return "http://%s:%d%s" % (LOCAL, self.port, path)

    def peak_rss_kb(self):
        """VmHWM of the ferry process (all threads), in kB."""
        return _proc_status_kb(self.proc.pid, "VmHWM")

    def rss_kb(self):
        return _proc_status_kb(self.proc.pid, "VmRSS")

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def wait_log(self, pattern, timeout=3.0, flags=re.I):
        """Wait until the log matches pattern; return the match or None."""
        return wait_until(lambda: re.search(pattern, self.log_text(), flags), timeout)


def run_ferry(args, timeout=20, cwd=None):
    """Run `ferry ARGS...`; return (exit code, stdout + stderr)."""
    require_binary()
    try:
        done = subprocess.run([FERRY_BIN] + list(args), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=cwd, env=CLEAN_ENV)
    except subprocess.TimeoutExpired as e:
        out = (e.output or b"").decode("utf-8", "replace")
        raise AssertionError("ferry %s did not finish within %ss; output:\n%s"
                             % (" ".join(args), timeout, out))
    return done.returncode, done.stdout.decode("utf-8", "replace")


def check(conf, cwd=None, timeout=20):
    """`ferry check -c CONF`: (exit code, stdout + stderr)."""
    return run_ferry(["check", "-c", conf], timeout=timeout, cwd=cwd)


class ConfigDir:
    """A temp dir holding a config (ferry.lua), a policy (policy.lua) and extras."""

    def __init__(self, config, policy=None, files=None, **subs):
        self.dir = tempfile.mkdtemp(prefix="ferry-e2e-check-")
        self.conf_path = os.path.join(self.dir, "ferry.lua")
        self.policy_path = os.path.join(self.dir, "policy.lua")
        values = dict(policy=self.policy_path, dir=self.dir)
        values.update({k: str(v) for k, v in subs.items()})
        with open(self.conf_path, "w") as f:
            f.write(string.Template(config).substitute(values))
        if policy is not None:
            with open(self.policy_path, "w") as f:
                f.write(policy)
        for name, text in (files or {}).items():
            path = os.path.join(self.dir, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(text)

    def path(self, name):
        return os.path.join(self.dir, name)

    def check(self, cwd=None):
        return check(self.conf_path, cwd=cwd)

    def cleanup(self):
        if KEEP:
            sys.stderr.write("[e2e] check files kept in %s\n" % self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------
# upstream


class Upstream:
    """An `upstream.py` process on a free port of 127.0.0.1 (or another loopback address)."""

    def __init__(self, name="upstream", host=LOCAL, port=0):
        self.name = name
        self.host = host
        self.want_port = port
        self.proc = None
        self.port = None
        self.dir = tempfile.mkdtemp(prefix="ferry-e2e-up-")
        self.log_path = os.path.join(self.dir, "upstream.log")

    @property
    def addr(self):
        return "%s:%d" % (self.host, self.port)

    # After LISTENING, also wait until a TCP connect gets through (subclasses
    # whose peers must speak first, such as a TLS upstream, turn it off).
    probe_accept = True

    def command(self):
        return [sys.executable, UPSTREAM_PY, "--port", str(self.want_port), "--name", self.name,
                "--host", self.host]

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, timeout=10.0):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, env=CLEAN_ENV)
        line = b""
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in line and time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    byte = os.read(self.proc.stdout.fileno(), 64)
                    if not byte:
                        break
                    line += byte
        finally:
            sel.close()
        m = re.match(rb"LISTENING (\d+)", line)
        if not m:
            _stop_process(self.proc)
            raise AssertionError("upstream %s did not start: %r\n%s" % (self.name, line, self.log_text()))
        self.port = int(m.group(1))
        if self.probe_accept and not wait_until(lambda: port_accepts(self.port, host=self.host), timeout):
            _stop_process(self.proc)
            raise AssertionError("upstream %s does not accept on %d" % (self.name, self.port))
        return self

    def stop(self):
        _stop_process(self.proc, term_timeout=2)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _get(self, path):
        sock = socket.create_connection((LOCAL, self.port), timeout=5)
        try:
            sock.sendall(("GET %s HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n"
                          % path).encode())
            return HttpReader(sock, timeout=5).read_response()
        finally:
            sock.close()

    def journal(self):
        """{"requests": [{"line", "head", "conn"}...], "partial": [...], "connections": N}"""
        return json.loads(self._get("/_log").body)

    def request_lines(self):
        return [r["line"] for r in self.journal()["requests"]]

    def clear(self):
        self._get("/_clear")


# ---------------------------------------------------------------------------
# raw sockets


class RawReply(bytes):
    """Bytes read from a raw connection, with how the connection ended.

    closed: the peer closed (EOF or reset) before the timeout
    reset:  the connection was reset
    elapsed: seconds from the end of sending to the end of reading
    """

    closed = False
    reset = False
    elapsed = 0.0

    @property
    def status(self):
        return status_of(self)


def status_of(data):
    m = re.match(rb"HTTP/1\.[01] (\d{3})[ \r]", data)
    return int(m.group(1)) if m else None


def connect(port, timeout=5.0, rcvbuf=None):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((LOCAL, port))
    return sock


def read_until_close(sock, timeout, limit=64 * MiB):
    """Read until EOF/reset or timeout; return (data, closed, reset)."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    closed = reset = False
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except (ConnectionResetError, BrokenPipeError):
            closed = reset = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return bytes(data), closed, reset


def send_raw(port, data, timeout=5.0):
    """Send data on a new connection; return a RawReply with all that came back."""
    sock = connect(port, timeout)
    try:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        start = time.monotonic()
        got, closed, reset = read_until_close(sock, timeout)
    finally:
        sock.close()
    reply = RawReply(got)
    reply.closed, reply.reset, reply.elapsed = closed, reset, time.monotonic() - start
    return reply


class Response:
    def __init__(self, version, status, reason, headers, body=b"", interim=()):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # [(name, value)] in received order
        self.body = body
        self.interim = list(interim)  # statuses of 1xx responses before this one

    def header(self, name):
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def header_names(self):
        return [k.lower() for k, _ in self.headers]

    def tokens(self, name):
        return [t.strip().lower() for v in self.header_all(name) for t in v.split(",") if t.strip()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r body=%d bytes>" % (self.status, self.reason,
                                                      self.headers, len(self.body))


class ProtocolError(AssertionError):
    pass


class HttpReader:
    """Reads HTTP/1.1 responses, one at a time, from a connected socket."""

    def __init__(self, sock, timeout=5.0):
        self.sock = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("response not complete within %ss" % self.timeout)
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(262144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _take_until(self, sep, deadline, limit=1 << 20):
        while True:
            i = self.buf.find(sep)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[: i + len(sep)]
                return out
            if len(self.buf) > limit:
                raise ProtocolError("no %r within %d bytes" % (sep, limit))
            if not self._fill(deadline):
                raise ProtocolError("connection closed before %r; have %r"
                                    % (sep, bytes(self.buf[:200])))

    def _take(self, n, deadline, sink):
        while n > 0:
            if not self.buf and not self._fill(deadline):
                raise ProtocolError("connection closed with %d body bytes missing" % n)
            part = bytes(self.buf[:n])
            del self.buf[: len(part)]
            sink(part)
            n -= len(part)

    def read_head(self, deadline):
        head = self._take_until(b"\r\n\r\n", deadline).decode("latin-1")
        lines = head.split("\r\n")
        m = re.match(r"(HTTP/1\.[01]) (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise ProtocolError("bad status line %r" % lines[0])
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError("bad header line %r" % line)
            headers.append((name, value.strip(" \t")))
        return Response(m.group(1), int(m.group(2)), m.group(3) or "", headers)

    def read_response(self, method="GET", sink=None):
        """Read one final response (1xx are collected in .interim).

        With sink, body bytes are passed to sink(bytes) instead of kept in .body.
        """
        deadline = time.monotonic() + self.timeout
        interim = []
        for _ in range(10):
            resp = self.read_head(deadline)
            if resp.status >= 200 or resp.status == 101:
                break
            interim.append(resp.status)
        else:
            raise ProtocolError("too many 1xx responses")
        resp.interim = interim
        kept = []
        sink = sink or kept.append
        if method == "HEAD" or resp.status in (204, 304) or resp.status < 200:
            pass
        elif "chunked" in resp.tokens("transfer-encoding"):
            for _ in range(1 << 24):
                line = self._take_until(b"\r\n", deadline)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._take_until(b"\r\n", deadline):
                        pass
                    break
                self._take(size, deadline, sink)
                if self._take_until(b"\r\n", deadline) != b"":
                    raise ProtocolError("chunk data not followed by CRLF")
        elif resp.header("content-length") is not None:
            self._take(int(resp.header("content-length")), deadline, sink)
        else:
            while True:
                if self.buf:
                    sink(bytes(self.buf))
                    self.buf.clear()
                if not self._fill(deadline):
                    break
        resp.body = b"".join(kept)
        return resp

    def closed_within(self, timeout):
        """True if the peer closes (with nothing more to read) within timeout."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            if self.buf:
                return False
            try:
                self._fill(deadline)
            except socket.timeout:
                return False
        return not self.buf


def exchange(port, data, count, methods=None, timeout=5.0):
    """Send data in one write and read `count` responses from the same connection."""
    sock = connect(port, timeout)
    try:
        sock.sendall(data)
        reader = HttpReader(sock, timeout)
        methods = methods or ["GET"] * count
        return [reader.read_response(methods[i]) for i in range(count)]
    finally:
        sock.close()


def request_bytes(method, target, host="example.internal", headers=(), body=b"",
                  version="HTTP/1.1"):
    lines = ["%s %s %s" % (method, target, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines += ["%s: %s" % (k, v) for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append("Content-Length: %d" % len(body))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---------------------------------------------------------------------------
# curl


class CurlResult:
    def __init__(self, rc, status, headers, body, stderr, elapsed, all_heads):
        self.rc = rc
        self.status = status
        self.headers = headers
        self.body = body
        self.stderr = stderr
        self.elapsed = elapsed
        self.all_heads = all_heads  # status codes of every head received (1xx too)

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<curl rc=%s status=%s body=%d bytes stderr=%r>" % (
            self.rc, self.status, len(self.body), self.stderr.strip()[-300:])


CURL_BASE = ["curl", "-q", "--http1.1", "-sS", "--noproxy", "*"]


def _parse_curl_heads(text):
    heads = []
    for block in re.split(r"\r?\n\r?\n", text):
        lines = [l for l in block.splitlines() if l]
        if not lines:
            continue
        m = re.match(r"HTTP/[\d.]+ (\d{3})", lines[0])
        if not m:
            continue
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        heads.append((int(m.group(1)), headers))
    return heads


def curl(url, host=None, method=None, headers=(), data=None, data_file=None,
         timeout=20, extra=()):
    """Run curl for one URL; return a CurlResult (status/headers of the final head)."""
    tmp = tempfile.mkdtemp(prefix="ferry-e2e-curl-")
    try:
        hfile, bfile = os.path.join(tmp, "h"), os.path.join(tmp, "b")
        # With --head curl writes the headers to the output too: drop them.
        args = CURL_BASE + ["--max-time", str(timeout), "-D", hfile,
                            "-o", os.devnull if method == "HEAD" else bfile]
        if host is not None:
            args += ["-H", "Host: %s" % host]
        for k, v in headers:
            args += ["-H", "%s: %s" % (k, v) if v != "" else "%s:" % k]
        if data is not None:
            dfile = os.path.join(tmp, "d")
            with open(dfile, "wb") as f:
                f.write(data)
            data_file = dfile
        if data_file is not None:
            args += ["--data-binary", "@" + data_file]
        if method == "HEAD":
            args += ["-I"]
        elif method:
            args += ["-X", method]
        args += list(extra) + [url]
        start = time.monotonic()
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout + 10, env=CLEAN_ENV)
        elapsed = time.monotonic() - start
        heads = []
        if os.path.exists(hfile):
            with open(hfile, "rb") as f:
                heads = _parse_curl_heads(f.read().decode("latin-1"))
        body = b""
        if os.path.exists(bfile):
            with open(bfile, "rb") as f:
                body = f.read()
        status, hdrs = heads[-1] if heads else (None, [])
        return CurlResult(done.returncode, status, hdrs, body,
                          done.stderr.decode("utf-8", "replace"), elapsed,
                          [s for s, _ in heads])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def curl_many(urls, host=None, timeout=20, headers=()):
    """One curl process, several URLs (curl reuses its connection between them).

    Returns [(status, num_connects, body)] and the curl exit code.
    """
    tmp = tempfile.mkdtemp(prefix="ferry-e2e-curl-")
    try:
        args = CURL_BASE + ["--max-time", str(timeout), "-w", "%{http_code} %{num_connects}\\n"]
        if host is not None:
            args += ["-H", "Host: %s" % host]
        for k, v in headers:
            args += ["-H", "%s: %s" % (k, v)]
        files = []
        for i, url in enumerate(urls):
            path = os.path.join(tmp, "b%d" % i)
            files.append(path)
            args += ["-o", path, url]
        done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout + 10, env=CLEAN_ENV)
        out = []
        for line, path in zip(done.stdout.decode().splitlines(), files):
            code, conns = line.split()
            body = b""
            if os.path.exists(path):
                with open(path, "rb") as f:
                    body = f.read()
            out.append((int(code), int(conns), body))
        return out, done.returncode, done.stderr.decode("utf-8", "replace")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def curl_download_sha(url, host=None, timeout=60):
    """Stream a download through curl; return (rc, status, nbytes, sha256, stderr)."""
    tmp = tempfile.mkdtemp(prefix="ferry-e2e-curl-")
    try:
        hfile = os.path.join(tmp, "h")
        args = CURL_BASE + ["--max-time", str(timeout), "-D", hfile]
        if host is not None:
            args += ["-H", "Host: %s" % host]
        args.append(url)
        errfile = os.path.join(tmp, "err")
        with open(errfile, "wb") as err:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=err, env=CLEAN_ENV)
        digest = hashlib.sha256()
        n = 0
        try:
            while True:
                block = proc.stdout.read(1 << 20)
                if not block:
                    break
                digest.update(block)
                n += len(block)
            rc = proc.wait(timeout=timeout + 10)
        finally:
            proc.stdout.close()
            if proc.poll() is None:
                _stop_process(proc, 1)
        with open(hfile, "rb") as f:
            heads = _parse_curl_heads(f.read().decode("latin-1"))
        with open(errfile, "rb") as f:
            stderr = f.read().decode("utf-8", "replace")
        return rc, (heads[-1][0] if heads else None), n, digest.hexdigest(), stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_pattern_file(path, n):
    with open(path, "wb") as f:
        for block in pattern_chunks(n):
            f.write(block)
    return path


# ---------------------------------------------------------------------------
# test base


ROUTING_POLICY = r"""
local M = {}

local groups = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"] = "logs",
  ["traces.observability.internal"] = "traces",
}

function M.route(req)
  req.headers:set("x-policy-host", req.host)
  local group = groups[req.host]
  if group then return group end
  return req:respond(421, "unknown host\n")
end

return M
"""

# Every request goes to the single group "default", whatever its Host.
CATCH_ALL_POLICY = r"""
local M = {}
function M.route(req)
  return "default"
end
return M
"""


class E2ECase(unittest.TestCase):
    """Base class: start helpers that register their own cleanup."""

    ferry_for_logs = None

    @classmethod
    def start_upstream_cls(cls, name):
        up = Upstream(name).start()
        cls.addClassCleanup(up.stop)
        return up

    @classmethod
    def start_ferry_cls(cls, config, policy=None, **kw):
        ferry = Ferry(config, policy, **kw)
        cls.addClassCleanup(ferry.stop)
        ferry.start()
        cls.ferry_for_logs = ferry
        return ferry

    def start_upstream(self, name):
        up = Upstream(name).start()
        self.addCleanup(up.stop)
        return up

    def start_ferry(self, config, policy=None, **kw):
        ferry = Ferry(config, policy, **kw)
        self.addCleanup(ferry.stop)
        ferry.start()
        self.ferry_for_logs = ferry
        return ferry

    def _failed(self):
        outcome = getattr(self, "_outcome", None)
        result = getattr(outcome, "result", None)
        if result is None:
            return False
        return any(test is self for test, _ in list(result.errors) + list(result.failures))

    def tearDown(self):
        ferry = self.ferry_for_logs
        if ferry is not None and ferry.proc is not None and self._failed():
            sys.stderr.write("\n---- ferry log tail (%s) ----\n%s\n----\n"
                             % (self.id(), ferry.log_tail(30)))

    # assertions

    def assertNothingReached(self, up, what=""):
        journal = up.journal()
        self.assertEqual(journal["requests"], [],
                         "upstream %s received requests it must not see %s" % (up.name, what))
        self.assertEqual(journal["partial"], [],
                         "upstream %s received partial bytes %s" % (up.name, what))

    def assertStatusLine(self, reply, status):
        self.assertIsNotNone(reply.status if isinstance(reply, RawReply) else None,
                             "no HTTP status line in reply %r" % bytes(reply[:300]))
        self.assertEqual(reply.status, status, "reply was %r" % bytes(reply[:300]))
