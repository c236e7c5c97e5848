"""A value of the wrong type under any key of the config schema
(lua/ferry/config.lua) is reported by `ferry check` as
`file:line: key.path: expected ...`, never as an internal error; and the
checks that run after the schema (timeout warnings, the groups) never see it.
The table below covers every typed key of the schema: the spec fails when a
key is added to the schema without a row here."""

import os
import re
import subprocess
import unittest

from .harness import REPO, ConfigDir, E2ECase, free_port, require_binary

# A config with every table of the schema present, so any key can be set.
BASE = """
local cfg = {
  listeners = { {
    name = "edge", type = "https", address = "127.0.0.1:$port", policy = "$policy",
    proxy_protocol = { trusted = { "10.0.0.0/8" } },
    tls = {
      certificates = { { cert = "c.pem", key = "k.pem", names = { "a.example.internal" } } },
      client_ca = "ca.pem", client_verify = "optional", session_tickets = true,
      ciphers = { "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" },
    },
  } },
  upstreams = {
    g = {
      servers = { "127.0.0.1:9101" },
      balance = "round_robin",
      retry = { tries = 2, statuses = { 502 }, backoff = 0, deadline = 0, budget = 0.2, min_retries = 3,
                replay_buffer = 1024 },
      health = { max_fails = 5, eject = 10, max_eject = 300, max_ejected = 0.5,
                 check = { path = "/", interval = 5, timeout = 2, rise = 2, fall = 3 } },
      timeouts = { connect = 5, read = 60, write = 60 },
      tls = { verify = true, ca = "ca.pem", server_name = "a.example.internal", cert = "c.pem", key = "k.pem",
              ciphers = { "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256" } },
      proxy_protocol = "v2",
      keepalive = { max_idle = 32, idle_timeout = 50, upstream_idle_timeout = 60 },
    },
  },
  policy = "$policy",
  limits = {},
  admin = { address = "127.0.0.1:9000" },
  dns = { servers = { "127.0.0.1:53" }, min_ttl = 5, max_ttl = 300, timeout = 5 },
  drain = { delay = 0, timeout = 10 },
  reload = { watch = false, debounce = 0.3 },
  log = { level = "info", access = { format = "text", buffer = 65536 } },
}
%s = %s
return cfg
"""

# A value of another type for each kind of the schema, and what the error says.
WRONG = {
    "string": ("5", "expected a string, got number"),
    "number": ('"lots"', "expected a number, got string"),
    "integer": ('"lots"', "expected an integer, got string"),
    "boolean": ('"yes"', "expected a boolean, got string"),
    "switch": ('"yes"', "expected a boolean or a table, got string"),
    "workers": ("true", 'expected an integer from 1 to 256 or "auto", got boolean'),
    "table": ("5", "expected a table, got number"),
    "list": ("5", "expected a list, got number"),
    "map": ("5", "expected a table of named entries, got number"),
    "server": ("5", "expected 'host:port' or { address = 'host:port', weight = N }, got number"),
}

# Every typed key: list items as [1], entries of a map as the group "g".
KEYS = {
    "listeners": "list", "listeners[1]": "table", "listeners[1].name": "string",
    "listeners[1].type": "string", "listeners[1].address": "string", "listeners[1].policy": "string",
    "listeners[1].proxy_protocol": "table", "listeners[1].proxy_protocol.trusted": "list",
    "listeners[1].proxy_protocol.trusted[1]": "string", "listeners[1].tls": "table",
    "listeners[1].tls.certificates": "list", "listeners[1].tls.certificates[1]": "table",
    "listeners[1].tls.certificates[1].cert": "string", "listeners[1].tls.certificates[1].key": "string",
    "listeners[1].tls.certificates[1].names": "list", "listeners[1].tls.certificates[1].names[1]": "string",
    "listeners[1].tls.client_ca": "string", "listeners[1].tls.client_verify": "string",
    "listeners[1].tls.session_tickets": "boolean", "listeners[1].tls.ciphers": "list",
    "listeners[1].tls.ciphers[1]": "string",
    "upstreams": "map", "upstreams.g": "table", "upstreams.g.servers": "list",
    "upstreams.g.servers[1]": "server", "upstreams.g.balance": "string",
    "upstreams.g.retry": "table", "upstreams.g.retry.tries": "integer", "upstreams.g.retry.statuses": "list",
    "upstreams.g.retry.statuses[1]": "integer", "upstreams.g.retry.backoff": "number",
    "upstreams.g.retry.deadline": "number", "upstreams.g.retry.budget": "number",
    "upstreams.g.retry.min_retries": "integer", "upstreams.g.retry.replay_buffer": "integer",
    "upstreams.g.health": "table", "upstreams.g.health.max_fails": "integer",
    "upstreams.g.health.eject": "number", "upstreams.g.health.max_eject": "number",
    "upstreams.g.health.max_ejected": "number", "upstreams.g.health.check": "table",
    "upstreams.g.health.check.path": "string", "upstreams.g.health.check.interval": "number",
    "upstreams.g.health.check.timeout": "number", "upstreams.g.health.check.rise": "integer",
    "upstreams.g.health.check.fall": "integer",
    "upstreams.g.timeouts": "table", "upstreams.g.timeouts.connect": "number",
    "upstreams.g.timeouts.read": "number", "upstreams.g.timeouts.write": "number",
    "upstreams.g.tls": "table", "upstreams.g.tls.verify": "boolean", "upstreams.g.tls.ca": "string",
    "upstreams.g.tls.server_name": "string", "upstreams.g.tls.cert": "string", "upstreams.g.tls.key": "string",
    "upstreams.g.tls.ciphers": "list", "upstreams.g.tls.ciphers[1]": "string",
    "upstreams.g.proxy_protocol": "string",
    "upstreams.g.keepalive": "table", "upstreams.g.keepalive.max_idle": "integer",
    "upstreams.g.keepalive.idle_timeout": "number", "upstreams.g.keepalive.upstream_idle_timeout": "number",
    "policy": "string", "workers": "workers",
    "limits": "table", "limits.max_request_line": "integer", "limits.max_header_bytes": "integer",
    "limits.max_headers": "integer", "limits.header_timeout": "number", "limits.body_timeout": "number",
    "limits.send_timeout": "number", "limits.keepalive_timeout": "number",
    "limits.client_lb_idle_timeout": "number", "limits.keepalive_requests": "integer",
    "limits.max_connections": "integer", "limits.stream_idle_timeout": "number",
    "limits.hook_timeout": "number", "limits.lua_memory": "integer",
    "admin": "table", "admin.address": "string",
    "dns": "table", "dns.servers": "list", "dns.servers[1]": "string", "dns.min_ttl": "number",
    "dns.max_ttl": "number", "dns.timeout": "number",
    "drain": "table", "drain.delay": "number", "drain.timeout": "number",
    "reload": "table", "reload.watch": "boolean", "reload.debounce": "number",
    "log": "table", "log.level": "string", "log.access": "switch",
    "log.access.format": "string", "log.access.file": "string", "log.access.buffer": "integer",
}

# The schema's own list of its keys, read from lua/ferry/config.lua.
SCHEMA_KEYS = r"""
package.path = arg[1] .. "/lua/?.lua;" .. package.path
local function walk(spec, path)
  if path ~= "" then print(path .. "\t" .. spec.type) end
  if spec.type == "table" or (spec.type == "switch" and spec.fields) then
    local names = {}
    for k in pairs(spec.fields) do names[#names + 1] = k end
    table.sort(names)
    for _, k in ipairs(names) do walk(spec.fields[k], path == "" and k or path .. "." .. k) end
  elseif spec.type == "list" then
    walk(spec.item, path .. "[1]")
  elseif spec.type == "map" then
    walk(spec.item, path .. ".g")
  end
end
walk(require("ferry.config").schema, "")
"""


def lua_path(key):
    """listeners[1].tls.ciphers[1] -> cfg.listeners[1].tls.ciphers[1] (every part a Lua name or index)."""
    return "cfg" + re.sub(r"(^|\.)([a-z_]+)", lambda m: "." + m.group(2), key)


class ConfigTypesTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        require_binary()

    def test_the_table_covers_every_key_of_the_schema(self):
        out = subprocess.run(["luajit", "-", REPO], input=SCHEMA_KEYS, capture_output=True,
                             text=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        schema = dict(line.split("\t") for line in out.stdout.splitlines())
        self.assertEqual(schema, KEYS)

    def test_the_base_config_passes_the_schema(self):
        # With no key changed, the only complaints are about the files it names, not a key's type.
        d = self.make(BASE % ("cfg.log.level", '"info"'))
        rc, out = d.check()
        self.assertNotIn("expected", out)

    def make(self, conf):
        d = ConfigDir(conf, "return { route = function() return 'g' end }\n", port=free_port())
        self.addCleanup(d.cleanup)
        return d

    def test_a_wrong_type_under_every_key_is_file_line_key_path_expected(self):
        for key, kind in sorted(KEYS.items()):
            value, message = WRONG[kind]
            with self.subTest(key=key, value=value):
                d = self.make(BASE % (lua_path(key), value))
                rc, out = d.check()
                self.assertEqual(rc, 1, out)
                want = re.compile(r"^%s:\d+: %s: %s$" % (re.escape(d.conf_path), re.escape(key), re.escape(message)))
                lines = out.strip().splitlines()
                self.assertEqual(len(lines), 1, out)
                self.assertRegex(lines[0], want)

    def test_wrong_types_beside_settings_that_warn_are_reported_alone(self):
        # The timeout-ordering warnings compare keepalive and limits values:
        # they must not run on a value the schema refused.
        for extra in ('cfg.upstreams.g.keepalive = { max_idle = "lots", idle_timeout = 70 }',
                      'cfg.upstreams.g.keepalive = { max_idle = 1, idle_timeout = "x" }',
                      'cfg.limits = { keepalive_timeout = "long", client_lb_idle_timeout = 10 }',
                      'cfg.upstreams.g.timeouts = 5', 'cfg.upstreams.g.retry = true',
                      'cfg.upstreams.g.health = "on"', 'cfg.upstreams.g.keepalive = 1'):
            with self.subTest(extra=extra):
                d = self.make(BASE % ("cfg.log.level", '"info"\n' + extra))
                rc, out = d.check()
                self.assertEqual(rc, 1, out)
                self.assertNotIn("attempt to", out)
                self.assertNotIn("config.lua", out)
                for line in out.strip().splitlines():
                    self.assertRegex(line, r"^%s:\d+: [\w.\[\]]+: expected " % re.escape(d.conf_path))


if __name__ == "__main__":
    unittest.main()
