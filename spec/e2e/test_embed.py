"""ferry as a library (docs/embedding.md): `cmake --install` into a temporary
prefix, then programs built against the installed header and libraries with
nothing but pkg-config: the example host (examples/embed/host.c), which runs
ferry on its own loop with a Lua module of its own written in C, and a host
that dlopens libferry.so with RTLD_LOCAL and exports no symbols. Each serves
real requests; the registered module's answer is in the response. And
libferry.so exports nothing but the ferry_* API."""

import http.client
import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest

from .harness import CLEAN_ENV, LOCAL, REPO, free_port, port_accepts, wait_until

BUILD = os.environ.get("FERRY_BUILD_DIR", os.path.join(REPO, "build"))
SANITIZE = os.environ.get("FERRY_SANITIZE_FLAGS", "").split()
CC = os.environ.get("CC", "cc")

CONFIG = """
return {
  listeners = { { name = "tenants", address = "127.0.0.1:%d", policy = "%s" } },
  drain = { delay = 0, timeout = 5 },
  log = { level = "info" },
}
"""

DLOPEN_POLICY = """
local tenants = require "dlhost.tenants"
return { route = function(req)
  return req:respond(200, "dlopen tenant " .. tostring(tenants.lookup(req.host)) .. "\\n")
end }
"""


def get(port, host="acme.example", path="/"):
    conn = http.client.HTTPConnection(LOCAL, port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


class InstalledLibrary(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="ferry-embed-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.prefix = os.path.join(cls.tmp, "prefix")
        subprocess.run(["cmake", "--install", BUILD, "--prefix", cls.prefix], check=True,
                       stdout=subprocess.DEVNULL, timeout=120)
        cls.env = dict(CLEAN_ENV, PKG_CONFIG_PATH=os.path.join(cls.prefix, "lib", "pkgconfig"))
        cls.libdir = os.path.join(cls.prefix, "lib")

    def pkg_config(self, *args):
        out = subprocess.run(["pkg-config", *args], env=self.env, check=True, capture_output=True, text=True)
        return out.stdout.split()

    def compile(self, src, out, *flags):
        cmd = [CC, "-std=gnu11", "-Wall", "-Werror", *SANITIZE, src, "-o", out, *flags]
        subprocess.run(cmd, check=True, timeout=120, env=self.env)
        return out

    def spawn(self, *argv):
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=CLEAN_ENV, cwd=self.tmp)
        self.addCleanup(lambda: proc.poll() is not None or (proc.kill(), proc.wait()))
        return proc

    def stop(self, proc):
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        self.assertEqual(proc.returncode, 0, out)
        return out

    def test_installed_files(self):
        for rel in ("include/ferry.h", "lib/libferry.a", "lib/libferry.so", "lib/libferry.so.0",
                    "lib/pkgconfig/ferry.pc", "bin/ferry"):
            self.assertTrue(os.path.exists(os.path.join(self.prefix, rel)), rel)
        soname = subprocess.run(["readelf", "-d", os.path.join(self.libdir, "libferry.so")],
                                capture_output=True, text=True, check=True).stdout
        self.assertIn("Library soname: [libferry.so.0]", soname)
        version = subprocess.run([os.path.join(self.prefix, "bin", "ferry"), "version"], capture_output=True,
                                 text=True, check=True).stdout
        self.assertTrue(version.startswith("ferry 0."), version)

    def test_exports_only_the_api(self):
        out = subprocess.run(["nm", "-D", "--defined-only", os.path.join(self.libdir, "libferry.so")],
                             capture_output=True, text=True, check=True).stdout
        names = [line.split()[-1] for line in out.splitlines() if line.strip()]
        self.assertIn("ferry_start", names)
        self.assertEqual([n for n in names if not n.startswith("ferry_")], [])

    def test_example_host_built_with_pkg_config(self):
        host = self.compile(os.path.join(REPO, "examples", "embed", "host.c"), os.path.join(self.tmp, "host"),
                            *self.pkg_config("--cflags", "--libs", "ferry", "luajit"),
                            "-Wl,-rpath," + self.libdir)
        port, metrics_port = free_port(), free_port()
        conf_dir = os.path.join(self.tmp, "example")
        os.makedirs(conf_dir, exist_ok=True)
        shutil.copy(os.path.join(REPO, "examples", "embed", "tenants_policy.lua"), conf_dir)
        conf = os.path.join(conf_dir, "ferry.lua")
        with open(conf, "w") as f:
            f.write(CONFIG % (port, "tenants_policy.lua"))
        proc = self.spawn(host, conf, str(metrics_port))
        self.assertTrue(wait_until(lambda: port_accepts(port) or proc.poll() is not None, 15))
        self.assertIsNone(proc.poll())
        status, body = get(port)
        self.assertEqual(status, 200)
        self.assertEqual(body, "tenant acme (plan gold, host example-host)\n")
        status, body = get(port, host="nobody.example")
        self.assertEqual(status, 404)
        # The host's own listener serves ferry's metrics text and a line of its own.
        self.assertTrue(wait_until(lambda: port_accepts(metrics_port), 5))
        status, text = get(metrics_port)
        self.assertEqual(status, 200)
        self.assertRegex(text, r'ferry_responses_total\{class="2xx"\} 1\n')
        self.assertIn("ferry_workers 1\n", text)
        self.assertRegex(text, r"host_ticks_total \d+\n")
        # SIGHUP: the host reloads; the module is there in the new generation.
        proc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: get(metrics_port)[1].find("ferry_generation 2\n") >= 0, 10))
        status, body = get(port)
        self.assertEqual((status, body), (200, "tenant acme (plan gold, host example-host)\n"))
        out = self.stop(proc)
        self.assertIn("host: generation 2 is live", out)
        self.assertRegex(out, r"host: ferry stopped after \d+ ticks")

    def test_dlopen_rtld_local(self):
        host = self.compile(os.path.join(REPO, "spec", "e2e", "dlopen_host.c"), os.path.join(self.tmp, "dlhost"),
                            *self.pkg_config("--cflags", "ferry"), *self.pkg_config("--libs", "libuv"), "-ldl")
        nm = subprocess.run(["nm", "-D", "--defined-only", host], capture_output=True, text=True).stdout
        self.assertNotRegex(nm, r"\bfy_", "the host exports ferry's symbols")
        port = free_port()
        conf_dir = os.path.join(self.tmp, "dl")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "policy.lua"), "w") as f:
            f.write(DLOPEN_POLICY)
        conf = os.path.join(conf_dir, "config.lua")
        with open(conf, "w") as f:
            f.write(CONFIG % (port, "policy.lua"))
        proc = self.spawn(host, os.path.join(self.libdir, "libferry.so"), conf, conf_dir)
        self.assertTrue(wait_until(lambda: port_accepts(port) or proc.poll() is not None, 15))
        self.assertIsNone(proc.poll())
        self.assertEqual(get(port), (200, "dlopen tenant acme\n"))
        self.assertEqual(get(port, host="other.example"), (200, "dlopen tenant nil\n"))
        out = self.stop(proc)
        self.assertIn("dlopen host: stopped", out)
        self.assertNotRegex(out, re.compile("ERROR: (AddressSanitizer|LeakSanitizer)"))


if __name__ == "__main__":
    unittest.main()
