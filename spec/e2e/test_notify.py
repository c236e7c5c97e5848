"""systemd readiness notifications (docs/operations.md "systemd"): ferry sends
READY=1 once it serves, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around
every reload, a refused one included, and STOPPING=1 when a drain starts, as
datagrams on the socket named by NOTIFY_SOCKET (a path or an abstract name).
The unit file in deploy/ passes `systemd-analyze verify`."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from .harness import CLEAN_ENV, FERRY_BIN, REPO, E2ECase, Ferry, free_port

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { metrics = { servers = { "$metrics" } } },
  policy = "$policy",
  admin = { address = "$admin" },
  log = { access = false },
}
"""

POLICY = """
return { route = function(req) return "metrics" end }
"""


class NotifySocket:
    """A datagram socket standing in for the service manager's."""

    def __init__(self, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dir = tempfile.mkdtemp(prefix="ferry-e2e-notify-")
        if abstract:
            name = "ferry-e2e-notify-%d-%d" % (os.getpid(), time.monotonic_ns())
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = os.path.join(self.dir, "notify")
            self.sock.bind(path)
            self.env = path

    def next(self, timeout=10):
        """The next message as a dict of its assignments (fails after timeout)."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def nothing_pending(self):
        self.sock.settimeout(0.2)
        try:
            return self.sock.recv(4096) is None
        except socket.timeout:
            return True

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class NotifyTest(E2ECase):
    def start_with(self, notify):
        up = self.start_upstream("metrics")
        ferry = Ferry(CONFIG, POLICY, metrics=up.addr, admin="127.0.0.1:%d" % free_port())
        ferry.env = {"NOTIFY_SOCKET": notify.env}
        self.addCleanup(ferry.stop)
        ferry.start()
        self.ferry_for_logs = ferry
        return ferry

    def test_start_reload_refused_reload_stop(self):
        notify = NotifySocket()
        self.addCleanup(notify.close)
        ferry = self.start_with(notify)
        self.assertEqual(notify.next().get("READY"), "1")

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        os.kill(ferry.pid, signal.SIGHUP)
        msg = notify.next()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.assertEqual(msg.get("RELOADING"), "1", msg)
        self.assertTrue(before <= int(msg["MONOTONIC_USEC"]) <= after, (before, msg, after))
        self.assertEqual(notify.next().get("READY"), "1")
        self.assertTrue(ferry.wait_log(r"generation 2 is live"))

        with open(ferry.policy_path, "w") as f:
            f.write("return { route = function(req) oops }\n")
        os.kill(ferry.pid, signal.SIGHUP)
        msg = notify.next()
        self.assertEqual(msg.get("RELOADING"), "1", msg)
        self.assertEqual(notify.next().get("READY"), "1", "no READY=1 after a refused reload")
        self.assertTrue(ferry.wait_log(r"reload refused"))

        os.kill(ferry.pid, signal.SIGTERM)
        self.assertEqual(notify.next().get("STOPPING"), "1")
        # It exits by itself (a second SIGTERM after the drain would meet no handler).
        self.assertEqual(ferry.proc.wait(timeout=20), 0)
        self.assertTrue(notify.nothing_pending())

    def test_abstract_socket(self):
        notify = NotifySocket(abstract=True)
        self.addCleanup(notify.close)
        self.start_with(notify)
        self.assertEqual(notify.next().get("READY"), "1")


class UnitFileTest(unittest.TestCase):
    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.skipTest("systemd-analyze is not installed (Debian package systemd)")
        with open(os.path.join(REPO, "deploy", "ferry.service")) as f:
            unit = f.read()
        self.assertIn("Type=notify", unit)
        tmp = tempfile.mkdtemp(prefix="ferry-e2e-unit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        # verify checks that ExecStart's binary exists: point the unit at the one under test.
        path = os.path.join(tmp, "ferry.service")
        with open(path, "w") as f:
            f.write(unit.replace("/usr/local/bin/ferry", os.path.abspath(FERRY_BIN)))
        done = subprocess.run([tool, "verify", "--man=no", path], capture_output=True, text=True,
                              timeout=60, env=CLEAN_ENV)
        out = done.stdout + done.stderr
        if done.returncode != 0 and "Failed to" in out and "ferry.service" not in out:
            self.skipTest("systemd-analyze cannot run here: %s" % out.strip()[:300])
        self.assertEqual(done.returncode, 0, out)
        self.assertNotIn("ferry.service:", out, "verify reported problems with the unit:\n" + out)


if __name__ == "__main__":
    unittest.main()
