-- ferry.testing itself, under `ferry test`: requests are real fy_req records
-- and hooks run through ferry.core's own functions and handles, so the
-- results below are what a request gets in production.
local t = require "ferry.testing"

local function policy(route, hooks)
  local p = hooks or {}
  p.route = route
  return p
end

local function plain(s) return (s:gsub("%p", "%%%0")) end

describe("ferry.testing (" .. t.backend .. " backend)", function()
  describe("t.request", function()
    it("builds every field of req", function()
      local req = t.request { method = "POST", host = "Metrics.Observability.Internal:8080", path = "/api/v1/push?x=1",
                              client_addr = "10.1.2.3", client_port = 51000, listener = "agents", id = 42 }
      local seen
      t.route(policy(function(r)
        seen = { method = r.method, host = r.host, path = r.path, query = r.query, uri = r.uri,
                 client_addr = r.client_addr, client_port = r.client_port, listener = r.listener, id = r.id,
                 ctx = type(r.ctx) }
        return "metrics"
      end), req)
      assert.same({ method = "POST", host = "metrics.observability.internal", path = "/api/v1/push", query = "x=1",
                    uri = "/api/v1/push?x=1", client_addr = "10.1.2.3", client_port = 51000, listener = "agents",
                    id = 42, ctx = "table" }, seen)
      -- the spec's own view reads the same request
      assert.equal("metrics.observability.internal", req.host)
      assert.equal("x=1", req.query)
      assert.equal(42, req.id)
    end)

    it("has defaults", function()
      local req = t.request {}
      assert.equal("GET", req.method)
      assert.equal("", req.host)
      assert.equal("/", req.path)
      assert.is_nil(req.query)
      assert.equal("127.0.0.1", req.client_addr)
      assert.equal(40000, req.client_port)
      assert.equal("edge", req.listener)
      assert.is_number(req.id)
    end)

    it("normalises the host as ferry does", function()
      local cases = {
        ["METRICS.observability.internal"] = "metrics.observability.internal",
        ["logs.observability.internal:8080"] = "logs.observability.internal",
        ["foo:"] = "foo",
        ["[::1]:8080"] = "[::1]",
        ["[FE80::1]"] = "[fe80::1]",
        ["10.0.0.1:80"] = "10.0.0.1",
      }
      for host, want in pairs(cases) do assert.equal(want, t.request { host = host }.host, host) end
    end)

    it("takes the host of an absolute-form target over the Host header", function()
      local req = t.request { target = "http://Traces.Observability.Internal:4318/v1/traces?a=b",
                              headers = { Host = "other.example" } }
      assert.equal("traces.observability.internal", req.host)
      assert.equal("/v1/traces", req.path)
      assert.equal("a=b", req.query)
      assert.equal("http://Traces.Observability.Internal:4318/v1/traces?a=b", req.uri)
      assert.equal("other.example", req.headers:get("host"))
    end)

    it("refuses what ferry answers with 400 before any hook", function()
      local bad = {
        { host = "a b" }, { host = "foo:x" }, { host = "[::1]x" }, { host = "[::1" },
        { host = "a.example", headers = { HOST = "b.example" } },
        { headers = { ["Bad Name"] = "x" } },
        { headers = { ["X-Evil"] = "a\r\nInjected: 1" } },
        { path = "no-slash" }, { target = "ftp://x/" }, { target = "http://user@host/" }, { path = "/a b" },
        { method = "G E T" },
        { host = "a.example", headers = { Connection = "keep-alive, Host" } },
      }
      for _, opts in ipairs(bad) do
        assert.has_error(function() t.request(opts) end)
        local ok, err = pcall(t.request, opts)
        assert.is_false(ok)
        assert.matches("ferry answers 400 before any hook runs", err, 1, true)
      end
    end)

    it("reads the head with ferry's own request reader: its status and reason when it refuses", function()
      local cases = {
        { { host = "a", headers = { ["Content-Length"] = "5", ["Transfer-Encoding"] = "chunked" } },
          "ferry answers 400 before any hook runs: Content-Length can't be present with Transfer-Encoding" },
        { { host = "a", headers = { ["Transfer-Encoding"] = "gzip, chunked" } },
          "ferry answers 501 before any hook runs" },
        { { host = "a", headers = { Expect = "something-else" } }, "ferry answers 417 before any hook runs" },
        { { headers = { ["Transfer-Encoding"] = "chunked" } }, "ferry answers 400 before any hook runs" },
        { { host = "a", path = "/" .. string.rep("a", 9000) }, "ferry answers 414 before any hook runs" },
      }
      for _, case in ipairs(cases) do
        local ok, err = pcall(t.request, case[1])
        assert.is_false(ok)
        assert.matches(case[2], err, 1, true)
      end
    end)

    it("hides hop-by-hop headers and those named in Connection, as ferry does before route", function()
      local req = t.request { host = "a", headers = {
        Connection = "keep-alive, X-Private", ["X-Private"] = "secret", ["Keep-Alive"] = "timeout=5",
        ["Transfer-Encoding"] = "chunked", TE = "trailers", ["X-Kept"] = "yes" } }
      for _, n in ipairs { "connection", "x-private", "keep-alive", "content-length", "transfer-encoding", "te" } do
        assert.is_nil(req.headers:get(n), n)
      end
      assert.equal("yes", req.headers:get("x-kept"))
      assert.same({ { "Host", "a" }, { "X-Kept", "yes" } }, t.headers(req))
    end)

    it("gives req.proxy as ferry does, the header's source being the client address", function()
      local req = t.request { listener = "nlb", proxy = { vpce_id = "vpce-0123456789abcdef0", source = "10.1.2.3",
                                                          source_port = 5555, destination = "10.0.0.1",
                                                          destination_port = 443, authority = "a.example" } }
      local seen
      t.route(policy(function(r) seen = { proxy = r.proxy, client = r.client_addr .. ":" .. r.client_port } return "g" end), req)
      assert.same({ proxy = { version = 2, ["local"] = false, source = "10.1.2.3", source_port = 5555,
                              destination = "10.0.0.1", destination_port = 443, vpce_id = "vpce-0123456789abcdef0",
                              authority = "a.example" },
                    client = "10.1.2.3:5555" }, seen)
      -- defaults: the source is client_addr, and the reverse
      local p = t.request { client_addr = "10.9.9.9", proxy = { version = 1 } }.proxy
      assert.same({ version = 1, ["local"] = false, source = "10.9.9.9", source_port = 40000,
                    destination = "127.0.0.1", destination_port = 80 }, p)
      assert.equal("10.4.4.4", t.request { proxy = { source = "10.4.4.4" } }.client_addr)
      assert.equal("::1", t.request { proxy = { source = "2001:db8::1" } }.proxy.destination)
      -- an ALPN or authority that is not short printable text is left out, as ferry does
      assert.is_nil(t.request { proxy = { alpn = "h2 x" } }.proxy.alpn)
      assert.is_nil(t.request {}.proxy)
    end)

    it("gives a LOCAL header (a health check) as ferry does: no addresses, the socket's client address", function()
      local req = t.request { client_addr = "10.0.0.7", proxy = { ["local"] = true } }
      assert.same({ version = 2, ["local"] = true }, req.proxy)
      assert.equal("10.0.0.7", req.client_addr)
    end)

    it("refuses PROXY information that ferry cannot produce", function()
      local bad = {
        { { ["local"] = true, vpce_id = "vpce-1" }, "ferry reads nothing but the command of a LOCAL header" },
        { { ["local"] = true, version = 1 }, "LOCAL is a PROXY protocol v2 command" },
        { { version = 1, vpce_id = "vpce-1" }, "a v1 header has no TLVs" },
        { { vpce_id = "" }, "proxy: ferry closes a connection whose PROXY header is like this" },
        { { vpce_id = "vpce 1" }, "proxy: ferry closes a connection whose PROXY header is like this" },
        { { vpce_id = string.rep("v", 64) }, "proxy: ferry closes a connection whose PROXY header is like this" },
        { { vpce = "vpce-1" }, "proxy.vpce: unknown key" },
        { { source = "nowhere" }, "proxy.source 'nowhere' is not an IP address" },
        { { source = "10.0.0.1", destination = "::1" }, "of one family" },
        { { destination_port = 0 }, "proxy.destination_port must be an integer from 1 to 65535" },
        { { version = 3 }, "proxy.version must be 1 or 2" },
      }
      for _, c in ipairs(bad) do
        local ok, err = pcall(t.request, { proxy = c[1] })
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
      local ok, err = pcall(t.request, { client_addr = "10.0.0.1", proxy = { source = "10.0.0.2" } })
      assert.is_false(ok)
      assert.matches("proxy.source and client_addr differ", err, 1, true)
    end)

    it("gives req.tls as an https listener does, nil without tls", function()
      local req = t.request { host = "metrics.observability.internal", tls = { sni = "metrics.observability.internal" } }
      local seen
      t.route(policy(function(r) seen = r.tls return "g" end), req)
      assert.same({ sni = "metrics.observability.internal", version = "TLSv1.2",
                    cipher = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256", client_verified = false, resumed = false }, seen)
      assert.same({ version = "TLSv1.2", cipher = "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256", client_verified = false,
                    resumed = false, alpn = "http/1.1", client_subject = "CN=agent-1, O=Acme" },
                  t.request { tls = { alpn = "http/1.1", client_subject = "CN=agent-1, O=Acme" } }.tls)
      assert.is_true(t.request { tls = { client_subject = "CN=a", client_verified = true, resumed = true } }.tls.client_verified)
      assert.is_nil(t.request {}.tls)
      -- the server name as ferry keeps it: lower-case; none if empty
      assert.equal("logs.observability.internal", t.request { tls = { sni = "Logs.Observability.Internal" } }.tls.sni)
      assert.is_nil(t.request { tls = { sni = "" } }.tls.sni)
      for _, c in ipairs {
        { { snii = "a" }, "tls.snii: unknown key" },
        { { sni = 1 }, "tls.sni must be a string" },
        { { resumed = "yes" }, "tls.resumed must be a boolean" },
        { { client_verified = true }, "tls.client_verified without tls.client_subject" },
        { "a", "tls must be a table" },
      } do
        local ok, err = pcall(t.request, { tls = c[1] })
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
    end)

    it("gives each hook its own req.proxy and req.tls, gone with the hook", function()
      local req = t.request { proxy = { vpce_id = "vpce-1" }, tls = { sni = "a" } }
      local kept
      local p = policy(function(r)
        r.proxy.vpce_id, r.tls.sni = "changed", "changed"
        return "g"
      end, { retry = function(r) kept = r return r.proxy.vpce_id == "vpce-1" and r.tls.sni == "a" end })
      t.route(p, req)
      assert.is_true(t.retry(p, req, 1, t.failure("reset")))
      t.retry(policy(nil, { retry = function(r) kept = r end }), req, 1, t.failure("reset"))
      for _, k in ipairs { "proxy", "tls" } do
        local ok, err = pcall(function() return kept[k] end)
        assert.is_false(ok)
        assert.matches("req." .. k .. ": request is gone", err, 1, true)
      end
    end)

    it("accepts several values of one header, in order", function()
      local req = t.request { headers = { { "X-Forwarded-For", "1.1.1.1" }, { "x-forwarded-for", "2.2.2.2" },
                                          ["X-Tag"] = { "a", "b" } } }
      assert.same({ "1.1.1.1", "2.2.2.2" }, req.headers:get_all("X-FORWARDED-FOR"))
      assert.same({ "a", "b" }, req.headers:get_all("x-tag"))
      assert.same({}, req.headers:get_all("x-none"))
    end)
  end)

  describe("req.headers", function()
    local function edit(fn, opts)
      local req = t.request(opts or { host = "a", headers = { { "X-A", "1" }, { "x-a", "2" }, { "X-B", "3" } } })
      local d = t.route(policy(function(r) fn(r); return "g" end), req)
      return d, req
    end

    it("is case-insensitive, and set replaces every value", function()
      local d, req = edit(function(r) r.headers:set("x-A", "9") end)
      assert.same({ group = "g" }, d)
      assert.same({ "9" }, req.headers:get_all("X-A"))
      assert.same({ { "Host", "a" }, { "X-B", "3" }, { "x-A", "9" } }, t.headers(req))
    end)

    it("adds and removes", function()
      local _, req = edit(function(r)
        r.headers:add("X-B", 4)
        r.headers:remove("X-A")
      end)
      assert.same({ "3", "4" }, req.headers:get_all("x-b"))
      assert.is_nil(req.headers:get("x-a"))
    end)

    it("raises ferry's messages on misuse", function()
      local cases = {
        { function(r) r.headers:set("Bad Name", "x") end, "headers:set: invalid argument" },
        { function(r) r.headers:add("X-A", "a\nb") end, "headers:add: invalid argument" },
        { function(r) r.headers:set("X-A", "a\0b") end, "headers:set: invalid argument" },
        { function(r) r.headers:remove("") end, "headers:remove: invalid argument" },
        { function(r) r.headers:set("X-A", {}) end, "headers:set: header value must be a string" },
        { function(r) r.headers:get(1) end, "headers:get: header name must be a string" },
      }
      for _, c in ipairs(cases) do
        local d = edit(c[1])
        assert.matches(plain(c[2]), d.error)
      end
    end)

    it("raises, as ferry does, for a get of a name that is not a token", function()
      local d = edit(function(r) return r.headers:get("Bad Name") end)
      assert.matches("headers:get: invalid argument", d.error)
    end)

    it("reports a bad header edit at the policy's line", function()
      local d = edit(function(r) r.headers:set("X-Ok", "a\r\nb") end)
      assert.matches("testing_spec.lua:%d+: headers:set: invalid argument", d.error)
    end)

    it("gives content_length, nil for a chunked body", function()
      local d = t.route({ route = function(r) return r.content_length == 42 and "g" or "h" end },
                        t.request { method = "POST", host = "a.example", headers = { ["Content-Length"] = "42" } })
      assert.same({ group = "g" }, d)
      d = t.route({ route = function(r) return r.content_length == nil and "g" or "h" end },
                  t.request { method = "POST", host = "a.example", headers = { ["Transfer-Encoding"] = "chunked" } })
      assert.same({ group = "g" }, d)
    end)
  end)

  describe("t.route", function()
    local req_a = function() return t.request { host = "a.example" } end

    it("returns the group, checked against the config's groups when given", function()
      local p = policy(function() return "metrics" end)
      assert.same({ group = "metrics" }, t.route(p, req_a()))
      assert.same({ group = "metrics" }, t.route(p, req_a(), { "logs", "metrics" }))
      assert.same({ error = "route returned unknown upstream group 'metrics'" }, t.route(p, req_a(), { "logs" }))
    end)

    it("returns the balancing key route gives with the group", function()
      assert.same({ group = "metrics", key = "10.1.2.3" },
                  t.route(policy(function(r) return "metrics", r.client_addr end), t.request { client_addr = "10.1.2.3" }))
      assert.same({ group = "metrics", key = "7" }, t.route(policy(function() return "metrics", 7 end), req_a()))
    end)

    it("returns a response made with req:respond, without hop-by-hop headers", function()
      local d = t.route(policy(function(r)
        return r:respond(429, "slow down\n", { ["Retry-After"] = 5, Connection = "close", ["Content-Length"] = "1" })
      end), req_a())
      assert.same({ status = 429, body = "slow down\n", headers = { ["Retry-After"] = "5" } }, d)
    end)

    it("treats a respond() whose result is not returned as ferry does", function()
      local d = t.route(policy(function(r) r:respond(403, "no") end), req_a())
      assert.equal("route must return an upstream group name or req:respond(...), got nil", d.error)
    end)

    it("returns the error, with a traceback, when route raises", function()
      local d = t.route(policy(function() error("boom") end), req_a())
      assert.matches("boom", d.error)
      assert.matches("stack traceback", d.error)
    end)

    it("raises ferry's messages for a bad respond", function()
      local cases = {
        { function(r) return r:respond(199) end, "req:respond: status must be an integer from 200 to 599" },
        { function(r) return r:respond(600) end, "req:respond: status must be an integer from 200 to 599" },
        { function(r) return r:respond(200.5) end, "req:respond: status must be an integer from 200 to 599" },
        { function(r) return r:respond(200, 5) end, "req:respond: body must be a string" },
        { function(r) return r:respond(200, "", "x") end, "req:respond: headers must be a table" },
        { function(r) return r:respond(200, "", { ["Bad Name"] = "x" }) end, "req:respond: header Bad Name: invalid argument" },
        { function(r) return r:respond(200, "", { X = "a\r\nb" }) end, "req:respond: header X: invalid argument" },
        { function(r) r:respond(200); return r:respond(201) end, "req:respond: the request was already answered" },
      }
      for _, c in ipairs(cases) do
        assert.matches(plain(c[2]), t.route(policy(c[1]), req_a()).error)
      end
    end)

    it("makes a handle kept after its hook fail with 'request is gone'", function()
      local kept
      t.route(policy(function(r) kept = r; return "g" end), req_a())
      local ok, err = pcall(function() return kept.path end)
      assert.is_false(ok)
      assert.matches("req.path: request is gone", err, 1, true)
    end)

    it("shares req.ctx between the hooks of one request", function()
      local p = policy(function(r) r.ctx.seen = r.host; return "g" end,
                       { retry = function(r) return r.ctx.seen == "a.example" end })
      local req = req_a()
      t.route(p, req)
      assert.is_true(t.retry(p, req, 1, t.failure("reset")))
      assert.equal("a.example", req.ctx.seen)
    end)
  end)

  describe("t.failure and t.retry", function()
    it("describes failures as ferry passes them to retry", function()
      assert.same({ kind = "connect_refused" }, t.failure("connect_refused"))
      assert.same({ kind = "timeout", server = "10.0.0.1:80" }, t.failure("timeout", { server = "10.0.0.1:80" }))
      assert.same({ kind = "status", status = 503 }, t.failure { status = 503 })
      assert.has_error(function() t.failure("meteor") end)
      assert.has_error(function() t.failure { status = 42 } end)
    end)

    it("runs the retry hook", function()
      local p = policy(function() return "g" end, {
        retry = function(req, attempt, failure)
          if req.method ~= "GET" and failure.kind ~= "connect_refused" then return false end
          return attempt < 3
        end,
      })
      local get, post = t.request { host = "a" }, t.request { method = "POST", host = "a" }
      assert.is_true(t.retry(p, get, 1, t.failure("timeout")))
      assert.is_false(t.retry(p, get, 3, t.failure("timeout")))
      assert.is_false(t.retry(p, post, 1, t.failure("reset")))
      assert.is_true(t.retry(p, post, 1, t.failure("connect_refused")))
    end)

    it("takes any true value for yes; false without a retry hook; nil and the message when it raises", function()
      local req = t.request {}
      local route = function() return "g" end
      assert.is_false(t.retry(policy(route), req, 1, t.failure("reset")))
      assert.is_true(t.retry(policy(route, { retry = function() return 1 end }), req, 1, t.failure("reset")))
      assert.is_false(t.retry(policy(route, { retry = function() end }), req, 1, t.failure("reset")))
      local ok, err = t.retry(policy(route, { retry = function() error("nope") end }), req, 1, t.failure("reset"))
      assert.is_nil(ok)
      assert.matches("nope", err)
    end)
  end)

  describe("t.select and t.draw", function()
    local servers = { "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80" }

    it("counts the picks of select", function()
      local n = 0
      local p = policy(function() return "g" end, {
        select = function(req, group, attempt)
          assert(attempt == 1 and req.host == "a" and group.name == "metrics")
          n = n + 1
          return group.servers[(n - 1) % #group.servers + 1]
        end,
      })
      local counts = t.draw(p, t.request { host = "a" }, { name = "metrics", servers = servers }, 300)
      assert.same({ ["10.0.0.1:80"] = 100, ["10.0.0.2:80"] = 100, ["10.0.0.3:80"] = 100 }, counts)
    end)

    it("gives select the group as ferry does", function()
      local seen
      local p = policy(function() return "g" end, { select = function(_, group) seen = group end })
      t.select(p, t.request {}, { name = "logs", servers = { "10.0.0.1:80",
                                                             { name = "alb-b:80", address = "10.0.0.2:80", healthy = false } } })
      assert.same({ name = "logs", servers = {
        { name = "10.0.0.1:80", address = "10.0.0.1:80", weight = 1, active = 0, healthy = true, fails = 0,
          latency_ms = 0, _index = 0 },
        { name = "alb-b:80", address = "10.0.0.2:80", weight = 1, active = 0, healthy = false, fails = 0,
          latency_ms = 0, _index = 1 },
      } }, seen)
    end)

    it("takes a request factory, an address, or nil for the balancer", function()
      local p = policy(function() return "g" end, {
        select = function(req, group) -- by client address: the same client, the same server
          local last = tonumber(req.client_addr:match("(%d+)$"))
          if last == 9 then return nil end
          return group.servers[last % #group.servers + 1].address
        end,
      })
      local counts = t.draw(p, function(i) return t.request { client_addr = "192.0.2." .. (i % 2) } end, servers, 10)
      assert.same({ ["10.0.0.1:80"] = 5, ["10.0.0.2:80"] = 5, ["10.0.0.3:80"] = 0 }, counts)
      assert.equal("10.0.0.2:80", t.select(p, t.request { client_addr = "192.0.2.1" }, servers))
      assert.equal(t.BALANCER, t.select(p, t.request { client_addr = "192.0.2.9" }, servers))
      counts = t.draw(p, t.request { client_addr = "192.0.2.9" }, servers, 3)
      assert.equal(3, counts[t.BALANCER])
    end)

    it("reports a pick outside the group with ferry's messages", function()
      local p = policy(function() return "g" end, { select = function() return "10.9.9.9:80" end })
      local name, err = t.select(p, t.request {}, { name = "logs", servers = servers })
      assert.is_nil(name)
      assert.equal("select returned '10.9.9.9:80', which is not an address of group logs", err)
      assert.has_error(function() t.draw(p, t.request {}, servers, 5) end)
      p = policy(function() return "g" end, { select = function() return { name = "10.0.0.1:80" } end })
      name, err = t.select(p, t.request {}, servers)
      assert.is_nil(name)
      assert.equal("select must return a server of the group (or nil), got table", err)
    end)
  end)

  describe("t.response", function()
    local route = function() return "g" end
    local upstream = { status = 200, headers = { { "Content-Type", "text/plain" }, { "Server", "nginx" },
                                                 { "X-Tag", "a" }, { "x-tag", "b" } } }

    it("returns the response as ferry relays it, with the hook's edits", function()
      local p = policy(route, { response = function(_, res)
        res.headers:set("x-TAG", "c")     -- replaces every value
        res.headers:add("Cache-Control", "no-store")
        res.headers:add("cache-control", 60)
        res.headers:remove("SERVER")
      end })
      assert.same({ status = 200, headers = { { "Content-Type", "text/plain" }, { "x-TAG", "c" },
                                              { "Cache-Control", "no-store" }, { "cache-control", "60" } } },
                  t.response(p, t.request { host = "a" }, upstream))
    end)

    it("gives the hook the upstream's status and headers, hop-by-hop ones included; relays without them", function()
      local seen
      local p = policy(route, { response = function(req, res)
        seen = { status = res.status, cl = res.headers:get("content-length"), conn = res.headers:get("Connection"),
                 private = res.headers:get("X-Private"), all = res.headers:get_all("X-Many"),
                 none = res.headers:get("X-None"), host = req.host }
        res.headers:set("X-Added", "1")
      end })
      local d = t.response(p, t.request { host = "a.example" }, {
        status = 404, headers = { { "Connection", "close, X-Private" }, { "X-Private", "p" }, { "Content-Length", "9" },
                                  { "Keep-Alive", "timeout=5" }, { "X-Many", "1" }, { "X-Many", "2" } } })
      assert.same({ status = 404, cl = "9", conn = "close, X-Private", private = "p", all = { "1", "2" },
                    host = "a.example" }, seen)
      assert.same({ status = 404, headers = { { "X-Many", "1" }, { "X-Many", "2" }, { "X-Added", "1" } } }, d)
    end)

    it("takes headers as a map too, and returns the response as given without a response hook", function()
      local d = t.response(policy(route), t.request {}, { headers = { ["X-B"] = "2", ["X-A"] = { "1", "3" } } })
      assert.same({ status = 200, headers = { { "X-A", "1" }, { "X-A", "3" }, { "X-B", "2" } } }, d)
      assert.same({ status = 200, headers = {} }, t.response(policy(route), t.request {}))
      assert.same({ status = 503, headers = { { "Retry-After", "5" } } },
                  t.response(policy(route), t.request {}, { status = 503, headers = { { "Retry-After", 5 } } }))
    end)

    it("returns the error, with a traceback, when the hook raises", function()
      local d = t.response(policy(route, { response = function() error("boom") end }), t.request {}, upstream)
      assert.is_nil(d.status)
      assert.matches("boom", d.error)
      assert.matches("stack traceback", d.error)
    end)

    it("raises ferry's messages on misuse of res", function()
      local cases = {
        { function(_, res) res.headers:set("Content-Length", "1") end, "res.headers:set: invalid argument" },
        { function(_, res) res.headers:remove("Transfer-Encoding") end, "res.headers:remove: invalid argument" },
        { function(_, res) res.headers:add("Bad Name", "x") end, "res.headers:add: invalid argument" },
        { function(_, res) res.headers:set("X-A", "a\r\nb") end, "res.headers:set: invalid argument" },
        { function(_, res) res.headers:set("X-A", {}) end, "res.headers:set: header value must be a string" },
        { function(_, res) res.headers:get(1) end, "res.headers:get: header name must be a string" },
        { function(_, res) res.headers:get("a b") end, "res.headers:get: invalid argument" },
        { function(req) req:respond(403) end, "req:respond: only route(req) may answer a request" },
      }
      for _, c in ipairs(cases) do
        assert.matches(plain(c[2]), t.response(policy(route, { response = c[1] }), t.request {}, upstream).error)
      end
      local d = t.response(policy(route, { response = function(_, res) res.headers:set("Connection", "x") end }),
                           t.request {}, upstream)
      assert.matches("testing_spec.lua:%d+: res.headers:set: invalid argument", d.error)
    end)

    it("makes handles kept after the hook raised fail with 'request is gone'", function()
      local kept_req, kept_res
      local d = t.response(policy(route, { response = function(req, res)
        kept_req, kept_res = req, res
        res.headers:get("Server") -- res.headers is now cached in the handle
        error("late")
      end }), t.request {}, upstream)
      assert.matches("late", d.error)
      for what, f in pairs {
        ["res.status"] = function() return kept_res.status end,
        ["res.headers:get"] = function() return kept_res.headers:get("Server") end,
        ["res.headers:set"] = function() kept_res.headers:set("X-A", "1") end,
        ["req.path"] = function() return kept_req.path end,
      } do
        local ok, err = pcall(f)
        assert.is_false(ok)
        assert.matches(what .. ": request is gone", err, 1, true)
      end
    end)

    it("refuses a res handle used outside the response and log hooks", function()
      local kept
      local req = t.request {}
      t.response(policy(route, { response = function(_, res) kept = res end }), req, upstream)
      local d = t.route(policy(function() return kept.status end), req)
      assert.matches("res.status: not allowed here", d.error, 1, true)
    end)

    it("refuses a response ferry would not take from an upstream, and bad arguments", function()
      local p = policy(route)
      for _, c in ipairs {
        { { headers = { ["Bad Name"] = "x" } }, "header name 'Bad Name' is not a token" },
        { { headers = { { "X-A", "a\0b" } } }, "the value of header 'X-A' has a control character" },
        { { status = 101 }, "res.status must be an integer from 200 to 999" },
        { { status = "200" }, "res.status must be an integer from 200 to 999" },
        { { body = "x" }, "res.body: unknown key (status, headers)" },
        { { bytes = 5 }, "res.bytes: unknown key (status, headers)" },
        { { headers = { { "X-A" } } }, "a header is a name and a value" },
        { "x", "res must be a table" },
      } do
        local ok, err = pcall(t.response, p, t.request {}, c[1])
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
      local ok, err = pcall(t.response, p, {}, upstream)
      assert.is_false(ok)
      assert.matches("t.response: req must be a request made by t.request", err, 1, true)
      ok, err = pcall(t.response, p, t.request {}, { headers = { { "X-A", "a\nb" } } })
      assert.is_false(ok)
      assert.matches("ferry refuses such an upstream response before any hook runs", err, 1, true)
    end)
  end)

  describe("t.log", function()
    local route = function() return "g" end

    it("gives the hook status, bytes and the relayed headers, and returns true", function()
      local seen
      local p = policy(route, { log = function(req, res)
        seen = { status = res.status, bytes = res.bytes, type = res.headers:get("content-type"),
                 cl = res.headers:get("Content-Length"), all = res.headers:get_all("X-Tag"), path = req.path }
      end })
      assert.is_true(t.log(p, t.request { path = "/push" }, {
        status = 502, bytes = 1234, headers = { ["Content-Type"] = "text/plain", ["Content-Length"] = "10",
                                                ["X-Tag"] = { "a", "b" } } }))
      -- Content-Length is the head's framing: ferry has relayed the head, without it
      assert.same({ status = 502, bytes = 1234, type = "text/plain", all = { "a", "b" }, path = "/push" }, seen)
      assert.is_true(t.log(policy(route, { log = function(_, res) seen = { res.status, res.bytes } end }), t.request {}))
      assert.same({ 200, 0 }, seen)
    end)

    it("returns true without a log hook", function()
      assert.is_true(t.log(policy(route), t.request {}, { status = 200 }))
    end)

    it("refuses request header edits in the response and log hooks: the request went upstream", function()
      for _, c in ipairs {
        { function(req) req.headers:set("X-A", "1") end, "headers:set: not allowed here" },
        { function(req) req.headers:add("X-A", "1") end, "headers:add: not allowed here" },
        { function(req) req.headers:remove("X-A") end, "headers:remove: not allowed here" },
      } do
        local req = t.request { headers = { ["X-A"] = "0" } }
        local d = t.response(policy(route, { response = c[1] }), req, {})
        assert.matches(plain(c[2]), d.error)
        assert.matches("testing_spec.lua:%d+: ", d.error)
        local ok, err = t.log(policy(route, { log = c[1] }), req, {})
        assert.is_nil(ok)
        assert.matches(plain(c[2]), err)
        assert.same({ { "X-A", "0" } }, t.headers(req))
      end
      local seen
      t.response(policy(route, { response = function(req) seen = req.headers:get("X-A") end }),
                 t.request { headers = { ["X-A"] = "0" } }, {})
      assert.equal("0", seen)
    end)

    it("makes res.headers read-only, as ferry does", function()
      for _, c in ipairs {
        { function(_, res) res.headers:set("X-A", "1") end, "res.headers:set: not allowed here" },
        { function(_, res) res.headers:add("X-A", "1") end, "res.headers:add: not allowed here" },
        { function(_, res) res.headers:remove("X-A") end, "res.headers:remove: not allowed here" },
        { function(req) req:respond(500) end, "req:respond: only route(req) may answer a request" },
      } do
        local ok, err = t.log(policy(route, { log = c[1] }), t.request {}, { headers = { ["X-A"] = "0" } })
        assert.is_nil(ok)
        assert.matches(plain(c[2]), err)
        assert.matches("testing_spec.lua:%d+: ", err)
      end
    end)

    it("returns nil and the message, with a traceback, when the hook raises; a kept res is gone", function()
      local kept
      local ok, err = t.log(policy(route, { log = function(_, res) kept = res; error("log failed") end }),
                            t.request {}, { status = 200 })
      assert.is_nil(ok)
      assert.matches("log failed", err)
      assert.matches("stack traceback", err)
      local ok2, err2 = pcall(function() return kept.bytes end)
      assert.is_false(ok2)
      assert.matches("res.bytes: request is gone", err2, 1, true)
    end)

    it("shares req.ctx between route, response and log", function()
      local p = policy(function(r) r.ctx.t0 = "route" return "g" end, {
        response = function(r, res) r.ctx.status = res.status end,
        log = function(r, res) r.ctx.line = r.ctx.t0 .. " " .. r.ctx.status .. " " .. res.bytes end,
      })
      local req = t.request {}
      t.route(p, req)
      t.response(p, req, { status = 201 })
      assert.is_true(t.log(p, req, { status = 201, bytes = 77 }))
      assert.equal("route 201 77", req.ctx.line)
    end)

    it("refuses bad arguments", function()
      for _, c in ipairs {
        { { bytes = -1 }, "res.bytes must be a whole number" },
        { { bytes = 1.5 }, "res.bytes must be a whole number" },
        { { body = "" }, "res.body: unknown key (status, bytes, headers)" },
        { { headers = { ["a b"] = "1" } }, "t.log: ferry refuses such an upstream response" },
      } do
        local ok, err = pcall(t.log, policy(route), t.request {}, c[1])
        assert.is_false(ok)
        assert.matches(c[2], err, 1, true)
      end
    end)
  end)

  describe("t.load_policy", function()
    local function with_policy(src, fn)
      local path = os.tmpname()
      local f = assert(io.open(path, "w"))
      f:write(src)
      f:close()
      local ok, res = pcall(t.load_policy, path)
      os.remove(path)
      fn(ok, res, path)
    end

    it("refuses what ferry refuses, with ferry's message", function()
      with_policy("return 1", function(ok, err, path)
        assert.is_false(ok)
        assert.equal(path .. ": a policy must return a table of hooks, got number", err)
      end)
      with_policy("return { route = function() end, retry = true }", function(ok, err, path)
        assert.is_false(ok)
        assert.equal(path .. ": hook 'retry' must be a function, got boolean", err)
      end)
      with_policy("return {}", function(ok, err, path)
        assert.is_false(ok)
        assert.equal(path .. ": the policy has neither a route(req) nor a route_stream(conn) hook", err)
      end)
      with_policy("return {", function(ok, err, path)
        assert.is_false(ok)
        assert.matches("^" .. plain(path) .. ":1: ", err)
      end)
    end)
  end)
end)
