"""`ferry check`, `ferry version`, and `ferry run` refusing a bad config
(docs/config.md: errors name the file and the key path; syntax errors are
`file:line: message`)."""

import os
import re
import subprocess
import time
import unittest

from .harness import (CLEAN_ENV, FERRY_BIN, ConfigDir, E2ECase, free_port,
                      port_accepts, require_binary, run_ferry)

POLICY = r"""
local M = {}
function M.route(req)
  return "metrics"
end
return M
"""


def config(upstream_extra="", top_extra="", policy='"policy.lua"', listeners=None):
    listeners = listeners or '{ { name = "edge", type = "http", address = "127.0.0.1:$port" } }'
    return """
return {
  listeners = %s,
  upstreams = {
    metrics = {
      servers   = { "127.0.0.1:9101", "127.0.0.1:9104" },
      timeouts  = { connect = 5, read = 60, write = 60 },
      keepalive = { max_idle = 32, idle_timeout = 50 },
      %s
    },
  },
  policy = %s,
  limits = { header_timeout = 10 },
  log = { level = "info", access = true },
  %s
}
""" % (listeners, upstream_extra, policy, top_extra)


class ConfigTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        require_binary()

    def make(self, conf, policy=POLICY, files=None, **subs):
        subs.setdefault("port", free_port())
        d = ConfigDir(conf, policy, files, **subs)
        self.addCleanup(d.cleanup)
        return d

    def assertCheckFails(self, d, *needles):
        rc, out = d.check()
        self.assertEqual(rc, 1, "ferry check must exit 1 on an invalid config; output:\n" + out)
        for needle in needles:
            if hasattr(needle, "search"):
                self.assertRegex(out, needle)
            else:
                self.assertIn(needle, out)
        return out

    # -- version -------------------------------------------------------------

    def test_version_lists_ferry_and_libraries(self):
        rc, out = run_ferry(["version"], timeout=10)
        self.assertEqual(rc, 0, out)
        # Every library the binary links.
        for name in ("ferry", "libuv", "luajit", "llhttp", "c-ares", "mbed tls"):
            with self.subTest(library=name):
                self.assertRegex(out, r"(?im)\b%s\b[^\n\d]{0,30}\d+\.\d+" % name,
                                 "no version for %s in:\n%s" % (name, out))

    # -- valid ------------------------------------------------------------------

    def test_check_valid_config(self):
        d = self.make(config())
        # Relative paths resolve against the config's directory, not the cwd.
        rc, out = d.check(cwd="/")
        self.assertEqual(rc, 0, out)

    def test_check_minimal_config(self):
        d = self.make("""
return {
  listeners = { { address = "127.0.0.1:$port" } },
  upstreams = { metrics = { servers = { "127.0.0.1:9101" } } },
  policy = "$policy",
}
""")
        rc, out = d.check()
        self.assertEqual(rc, 0, out)

    # -- invalid config -----------------------------------------------------------

    def test_unknown_key_names_file_and_key_path(self):
        d = self.make(config().replace("connect = 5", "conect = 5"))
        self.assertCheckFails(d, "ferry.lua", "upstreams.metrics.timeouts.conect")

    def test_unknown_top_level_key(self):
        d = self.make(config(top_extra="listners = {},"))
        self.assertCheckFails(d, "ferry.lua", "listners")

    def test_wrong_type_names_key_path(self):
        d = self.make(config().replace("read = 60", 'read = "sixty"'))
        self.assertCheckFails(d, "ferry.lua", "upstreams.metrics.timeouts.read")

    def test_out_of_range_value_names_key_path(self):
        d = self.make(config().replace("max_idle = 32", "max_idle = -1"))
        self.assertCheckFails(d, "ferry.lua", "upstreams.metrics.keepalive.max_idle")

    def test_missing_required_servers(self):
        conf = config().replace('servers   = { "127.0.0.1:9101", "127.0.0.1:9104" },', "")
        d = self.make(conf)
        self.assertCheckFails(d, "upstreams.metrics.servers")

    def test_every_error_is_reported(self):
        conf = (config(top_extra="bogus_top = 1,")
                .replace("connect = 5", "conect = 5")
                .replace("header_timeout = 10", 'header_timeout = "ten"'))
        d = self.make(conf)
        self.assertCheckFails(d, "bogus_top", "upstreams.metrics.timeouts.conect",
                              "limits.header_timeout")

    def test_config_syntax_error_is_file_line_message(self):
        conf = config()
        lines = conf.split("\n")
        lines.insert(4, "  this is not lua")
        d = self.make("\n".join(lines))
        self.assertCheckFails(d, re.compile(r"ferry\.lua:5:"))

    def test_a_config_that_never_ends_is_stopped(self):
        # The config is a program: a loop that never ends is an error, not a hung check or reload.
        conf = config().replace("return {", "local n = 0\nwhile true do n = n + 1 end\nreturn {", 1)
        d = self.make(conf)
        start = time.monotonic()
        self.assertCheckFails(d, re.compile(r"ferry\.lua: the config ran for more than 2 s, stopped at line \d+"))
        self.assertLess(time.monotonic() - start, 10)

    def test_config_is_sandboxed(self):
        for code in ('io.open("$dir/pwned", "w"):write("x")',
                     'os.execute("touch $dir/pwned")',
                     'require("os")'):
            with self.subTest(code=code):
                conf = config().replace("return {", code + "\nreturn {", 1)
                d = self.make(conf)
                rc, out = d.check()
                self.assertNotEqual(rc, 0, "the config escaped its sandbox:\n" + out)
                self.assertFalse(os.path.exists(d.path("pwned")))

    # -- invalid policy -------------------------------------------------------------

    def test_missing_policy_file_is_named(self):
        # As every config error: the config's file:line and the key that names the file.
        d = self.make(config(policy='"nope/missing_policy.lua"'))
        out = self.assertCheckFails(d, "nope/missing_policy.lua")
        self.assertRegex(out, r"(?m)^%s:\d+: policy: cannot open %s: No such file or directory$"
                         % (re.escape(d.conf_path), re.escape(d.path("nope/missing_policy.lua"))))
        listener = '{ { name = "edge", address = "127.0.0.1:$port", policy = "gone.lua" } }'
        d = self.make(config(listeners=listener))
        out = self.assertCheckFails(d)
        self.assertRegex(out, r"(?m)^%s:\d+: listeners\[1\]\.policy: cannot open %s: "
                         % (re.escape(d.conf_path), re.escape(d.path("gone.lua"))))

    def test_policy_syntax_error_is_file_line_message(self):
        bad = "local M = {}\nfunction M.route(req)\n  return = 'x'\nend\nreturn M\n"
        d = self.make(config(), policy=bad)
        self.assertCheckFails(d, re.compile(r"policy\.lua:3:"))

    def test_policy_raising_while_loading_is_file_line_message(self):
        bad = "local M = {}\nerror('refusing to load')\nreturn M\n"
        d = self.make(config(), policy=bad)
        self.assertCheckFails(d, re.compile(r"policy\.lua:2:"), "refusing to load")

    def test_policy_without_route_is_refused(self):
        d = self.make(config(), policy="return {}\n")
        self.assertCheckFails(d, "route")

    # -- ferry run ------------------------------------------------------------------

    def test_run_refuses_bad_config(self):
        port = free_port()
        d = self.make(config().replace("connect = 5", "conect = 5"), port=port)
        proc = subprocess.Popen([FERRY_BIN, "run", "-c", d.conf_path], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=CLEAN_ENV)
        listened = False
        try:
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                listened = listened or port_accepts(port, timeout=0.1)
                time.sleep(0.05)
            running = proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.kill()
            out, _ = proc.communicate(timeout=10)
        out = out.decode("utf-8", "replace")
        self.assertFalse(running, "ferry run kept running with an invalid config")
        self.assertNotEqual(proc.returncode, 0, out)
        self.assertFalse(listened, "ferry run listened before refusing the config")
        self.assertIn("upstreams.metrics.timeouts.conect", out)


if __name__ == "__main__":
    unittest.main()
