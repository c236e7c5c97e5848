"""The policy contract (docs/policy.md): req:respond, errors in hooks, header
edits, request fields, req.ctx, stale handles, bad return values."""

import json
import re
import unittest

from .harness import (E2ECase, HttpReader, connect, curl, curl_many, exchange,
                      request_bytes)

CONFIG = """
return {
  listeners = { { name = "edge", type = "http", address = "$listen" } },
  upstreams = { default = { servers = { "$up" } } },
  policy = "$policy",
  log = { level = "info", access = true },
}
"""

# The test case is chosen by `case=NAME` in the query string so that every
# request still goes to the upstream's /echo.
POLICY = r"""
local M = {}
local kept  -- a request handle deliberately kept past its request

local function case_of(req)
  local q = req.query
  return q and q:match("case=([%w_]+)")
end

function M.route(req)
  local case = case_of(req)
  local h = req.headers
  if case == "deny" then
    return req:respond(403, "no\n", { ["x-a"] = "b" })
  elseif case == "boom" then
    error("policy exploded on purpose")
  elseif case == "unknown_group" then
    return "no-such-group"
  elseif case == "return_nil" then
    return nil
  elseif case == "return_number" then
    return 42
  elseif case == "edit" then
    h:set("X-Set", "from-policy")
    h:set("X-Multi", "one")
    h:remove("X-Drop")
    h:add("X-Added", "a1")
    h:add("X-Added", "a2")
  elseif case == "fields" then
    h:set("x-f-method", req.method)
    h:set("x-f-host", req.host)
    h:set("x-f-path", req.path)
    h:set("x-f-query", tostring(req.query))
    h:set("x-f-uri", req.uri)
    h:set("x-f-client", req.client_addr)
    h:set("x-f-port", tostring(req.client_port))
    h:set("x-f-listener", req.listener)
    h:set("x-f-id", tostring(req.id))
    h:set("x-f-get", tostring(h:get("X-CASE-Probe")))
    h:set("x-f-missing", tostring(h:get("x-not-sent")))
  elseif case == "ctx" then
    h:set("x-ctx-type", type(req.ctx))
    h:set("x-ctx-fresh", tostring(next(req.ctx) == nil))
    req.ctx.mark = "set"
    h:set("x-ctx-mark", tostring(req.ctx.mark))
  elseif case == "log" then
    require("ferry").log.warn("policy says", "hello", 42)
  elseif case == "bad_header" then
    local ok, err = pcall(h.set, h, "X-Bad", "a\r\nInjected: yes")
    h:set("x-bad-refused", ok and "no" or tostring(err))
  elseif case == "keep" then
    kept = req
  elseif case == "stale" then
    local ok, err = pcall(function() return kept.method end)
    h:set("x-stale", ok and "no error" or tostring(err))
  end
  h:set("x-query-type", type(req.query))
  return "default"
end

return M
"""


def echo_values(resp_json, name):
    name = name.lower()
    return [v for k, v in resp_json["headers"] if k.lower() == name]


class PolicyTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, POLICY, up=cls.up.addr)

    def setUp(self):
        self.up.clear()

    def get(self, path, **kw):
        return curl(self.ferry.url(path), host=kw.pop("host", "policy.test"), timeout=10, **kw)

    def assertServing(self):
        r = self.get("/echo?case=none")
        self.assertEqual((r.rc, r.status), (0, 200), r)

    def test_respond_answers_without_upstream(self):
        r = self.get("/echo?case=deny")
        self.assertEqual((r.rc, r.status), (0, 403), r)
        self.assertEqual(r.body, b"no\n")
        self.assertEqual(r.header("x-a"), "b")
        self.assertNothingReached(self.up, "after req:respond")

    def test_ferry_log_from_a_policy_carries_the_request_id(self):
        r = self.get("/echo?case=log")
        self.assertEqual((r.rc, r.status), (0, 200), r)
        m = self.ferry.wait_log(r"\[warn\] request \d+: policy says hello 42", timeout=3)
        self.assertIsNotNone(m, self.ferry.log_tail())

    def test_header_injection_from_a_policy_is_refused(self):
        r = self.get("/echo?case=bad_header")
        self.assertEqual((r.rc, r.status), (0, 200), r)
        info = r.json()
        self.assertRegex(echo_values(info, "x-bad-refused")[0], "invalid argument")
        self.assertEqual(echo_values(info, "injected"), [])
        self.assertEqual(echo_values(info, "x-bad"), [])

    def test_error_in_hook_gives_500_and_logs_traceback(self):
        r = self.get("/echo?case=boom")
        self.assertEqual((r.rc, r.status), (0, 500), r)
        self.assertNothingReached(self.up, "after the hook raised")
        m = self.ferry.wait_log(r"policy exploded on purpose", timeout=3)
        self.assertIsNotNone(m, "the error is not in the log:\n" + self.ferry.log_tail())
        log = self.ferry.log_text()
        self.assertRegex(log, r"policy\.lua:\d+", "the traceback must name the policy file")
        self.assertRegex(log, r"(?i)traceback", "no traceback in the log")
        self.assertServing()
        self.assertTrue(self.ferry.alive())

    def test_unknown_group_gives_500(self):
        r = self.get("/echo?case=unknown_group")
        self.assertEqual((r.rc, r.status), (0, 500), r)
        self.assertNothingReached(self.up)
        self.assertServing()

    def test_route_returning_neither_group_nor_response_gives_500(self):
        for case in ("return_nil", "return_number"):
            with self.subTest(case=case):
                self.up.clear()
                r = self.get("/echo?case=" + case)
                self.assertEqual((r.rc, r.status), (0, 500), r)
                self.assertNothingReached(self.up)
        self.assertServing()

    def test_header_edits_are_seen_by_upstream(self):
        r = self.get("/echo?case=edit", headers=[("X-Drop", "gone"), ("X-Multi", "a"),
                                                  ("X-Multi", "b"), ("X-Other", "kept")])
        self.assertEqual(r.status, 200, r)
        info = r.json()
        self.assertEqual(echo_values(info, "x-set"), ["from-policy"])
        self.assertEqual(echo_values(info, "x-multi"), ["one"], "set must replace every value")
        self.assertEqual(echo_values(info, "x-drop"), [])
        added = [p.strip() for v in echo_values(info, "x-added") for p in v.split(",")]
        self.assertEqual(added, ["a1", "a2"])
        self.assertEqual(echo_values(info, "x-other"), ["kept"])

    def test_request_fields(self):
        sock = connect(self.ferry.port, timeout=5)
        try:
            client_port = sock.getsockname()[1]
            sock.sendall(request_bytes("GET", "/echo?case=fields&x=1",
                                       host="Policy.TEST:8123",
                                       headers=[("x-case-probe", "probe-value")]))
            resp = HttpReader(sock, timeout=5).read_response()
        finally:
            sock.close()
        self.assertEqual(resp.status, 200, resp)
        info = resp.json()
        got = {k.lower()[4:]: v for k, v in info["headers"] if k.lower().startswith("x-f-")}
        self.assertEqual(got.get("method"), "GET")
        self.assertEqual(got.get("host"), "policy.test")
        self.assertEqual(got.get("path"), "/echo")
        self.assertEqual(got.get("query"), "case=fields&x=1")
        self.assertEqual(got.get("uri"), "/echo?case=fields&x=1")
        self.assertEqual(got.get("client"), "127.0.0.1")
        self.assertEqual(got.get("port"), str(client_port))
        self.assertEqual(got.get("listener"), "edge")
        self.assertEqual(got.get("get"), "probe-value", "headers:get must be case-insensitive")
        self.assertEqual(got.get("missing"), "nil")
        req_id = got.get("id", "")
        self.assertTrue(req_id and req_id != "nil", "req.id is empty")
        self.assertIsNotNone(self.ferry.wait_log(re.escape(req_id), timeout=3),
                             "req.id %r does not appear in the log" % req_id)

    def test_query_is_nil_without_query_string(self):
        (resp,) = exchange(self.ferry.port, request_bytes("GET", "/echo", host="policy.test"), 1)
        self.assertEqual(resp.status, 200, resp)
        self.assertEqual(echo_values(resp.json(), "x-query-type"), ["nil"])
        r = self.get("/echo?a=1")
        self.assertEqual(echo_values(r.json(), "x-query-type"), ["string"])

    def test_ctx_is_a_fresh_table_per_request(self):
        results, rc, err = curl_many([self.ferry.url("/echo?case=ctx")] * 2, host="policy.test")
        self.assertEqual(rc, 0, err)
        for status, _, body in results:
            self.assertEqual(status, 200)
            info = json.loads(body)
            self.assertEqual(echo_values(info, "x-ctx-type"), ["table"])
            self.assertEqual(echo_values(info, "x-ctx-fresh"), ["true"],
                             "req.ctx must start empty for every request")
            self.assertEqual(echo_values(info, "x-ctx-mark"), ["set"])

    def test_handle_kept_after_request_raises(self):
        # One client connection, so both requests run in the same worker's Lua state.
        results, rc, err = curl_many([self.ferry.url("/echo?case=keep"),
                                      self.ferry.url("/echo?case=stale")], host="policy.test")
        self.assertEqual(rc, 0, err)
        self.assertEqual([s for s, _, _ in results], [200, 200])
        info = json.loads(results[1][2])
        stale = echo_values(info, "x-stale")
        self.assertEqual(len(stale), 1, info["headers"])
        self.assertIn("request is gone", stale[0])


if __name__ == "__main__":
    unittest.main()


HOOKS_POLICY = r"""
local ferry = require "ferry"
return {
  route = function(req)
    req.ctx.started = "yes"
    return "default"
  end,
  response = function(req, res)
    if req.path == "/status" and req.query == "code=418" then error("response hook failed on purpose") end
    res.headers:set("X-Policy", "status " .. res.status .. " ctx " .. tostring(req.ctx.started))
    res.headers:remove("X-Upstream")
    local ok, err = pcall(res.headers.set, res.headers, "Content-Length", "1")
    res.headers:set("X-Framing-Refused", tostring(not ok))
    -- The request went upstream before this hook: editing its headers is refused.
    local ok1, e1 = pcall(req.headers.set, req.headers, "X-Late", "1")
    local ok2, e2 = pcall(req.headers.add, req.headers, "X-Late", "1")
    local ok3, e3 = pcall(req.headers.remove, req.headers, "X-Late")
    res.headers:set("X-Req-Edit", tostring(ok1) .. tostring(ok2) .. tostring(ok3) .. " " .. tostring(e1))
    res.headers:set("X-Req-Read", tostring(req.headers:get("host")))
  end,
  log = function(req, res)
    ferry.log.info("log hook:", req.method, req.path, res.status, res.bytes,
                   res.headers:get("x-policy") or "-")
    local ok, err = pcall(req.headers.remove, req.headers, "Host")
    ferry.log.info("log hook req edit:", ok, err)
  end,
}
"""


class ResponseAndLogHooksTest(E2ECase):
    @classmethod
    def setUpClass(cls):
        cls.up = cls.start_upstream_cls("default")
        cls.ferry = cls.start_ferry_cls(CONFIG, HOOKS_POLICY, up=cls.up.addr)

    def test_response_hook_edits_headers(self):
        r = curl(self.ferry.url("/echo"), host="hooks.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertEqual(r.header("x-policy"), "status 200 ctx yes")
        self.assertIsNone(r.header("x-upstream"))
        self.assertEqual(r.header("x-framing-refused"), "true")
        self.assertEqual(len(r.body), int(r.header("content-length")))

    def test_request_header_edits_after_the_request_went_upstream_are_refused(self):
        r = curl(self.ferry.url("/echo"), host="hooks.test", timeout=10)
        self.assertEqual((r.rc, r.status), (0, 200), r)
        self.assertRegex(r.header("x-req-edit"), r"^falsefalsefalse (\S+:\d+: )?headers:set: not allowed here$")
        self.assertEqual(r.header("x-req-read"), "hooks.test")
        m = self.ferry.wait_log(r"log hook req edit: false (\S+:\d+: )?headers:remove: not allowed here", timeout=3)
        self.assertIsNotNone(m, self.ferry.log_tail())

    def test_log_hook_sees_the_exchange(self):
        r = curl(self.ferry.url("/status?code=201"), host="hooks.test", timeout=10)
        self.assertEqual(r.status, 201)
        m = self.ferry.wait_log(r"log hook: GET /status 201 (\d+) status 201 ctx yes", timeout=3)
        self.assertIsNotNone(m, self.ferry.log_tail())
        self.assertGreater(int(m.group(1)), 0)

    def test_failing_response_hook_gives_500(self):
        r = curl(self.ferry.url("/status?code=418"), host="hooks.test", timeout=10)
        self.assertEqual(r.status, 500)
        self.assertIsNotNone(self.ferry.wait_log(r"response: error: .*response hook failed on purpose"))
        r = curl(self.ferry.url("/echo"), host="hooks.test", timeout=10)
        self.assertEqual(r.status, 200)
