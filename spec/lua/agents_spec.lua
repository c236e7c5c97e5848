-- The agents listener's policy (scripts/agents.lua, examples/agents.lua):
-- PrivateLink endpoints on the allowlist only, then Host, then SNI.
local t = require "ferry.testing"

describe("agents policy", function()
  local policy = t.load_policy("scripts/agents.lua")
  local allowlist = require "agents_allowlist"
  local groups = { "logs", "metrics", "traces" }
  local ALLOWED = "vpce-0123456789abcdef0" -- the seed's first entry

  -- An agent's request as the agents listener sees it: through an allowed
  -- VPC endpoint, over TLS with the Host as server name. opts override
  -- (proxy = false, tls = false: none).
  local function agent(opts)
    local o = { method = "POST", host = "metrics.observability.internal", path = "/api/v1/push",
                listener = "agents", proxy = { vpce_id = ALLOWED, source = "10.20.30.40" } }
    o.tls = { sni = opts.host or o.host }
    for k, v in pairs(opts) do o[k] = v end
    if o.no_host_header then o.host = nil end
    if o.proxy == false then o.proxy = nil end
    if o.tls == false then o.tls = nil end
    return t.request(o)
  end

  local function route(opts) return t.route(policy, agent(opts), groups) end

  local function assert_refused(status, pattern, d)
    assert.is_nil(d.group)
    assert.is_nil(d.error)
    assert.equal(status, d.status)
    assert.equal("text/plain", d.headers["Content-Type"])
    assert.matches(pattern, d.body, 1, true)
  end

  it("counts admitted and refused requests in ferry_policy_agent_decisions_total", function()
    t.reset_metrics()
    route { host = "metrics.observability.internal" }
    route { proxy = { vpce_id = "vpce-00000000000000000" } }
    route { proxy = false }
    route { host = "evil.example.com" }
    assert.equal(1, t.metric("agent_decisions", "admitted", "metrics"))
    assert.equal(1, t.metric("agent_decisions", "refused_allowlist", "none"))
    assert.equal(1, t.metric("agent_decisions", "refused_no_endpoint", "none"))
    assert.equal(1, t.metric("agent_decisions", "misdirected", "none"))
  end)

  describe("an allowlisted VPC endpoint", function()
    it("reaches the group of its Host", function()
      assert.same({ group = "metrics" }, route { host = "metrics.observability.internal" })
      assert.same({ group = "logs" }, route { host = "logs.observability.internal" })
      assert.same({ group = "traces" }, route { host = "traces.observability.internal" })
    end)

    it("is any entry of the allowlist, whose account is left in req.ctx", function()
      assert.is_true(#allowlist > 0)
      for _, e in ipairs(allowlist) do
        local req = agent { proxy = { vpce_id = e.vpce } }
        assert.same({ group = "metrics" }, t.route(policy, req, groups), e.vpce)
        assert.equal(e.account, req.ctx.account)
      end
    end)

    it("ignores case and port in the Host header and in the server name", function()
      assert.same({ group = "logs" }, route { host = "LOGS.Observability.Internal:8443",
                                              tls = { sni = "Logs.Observability.Internal" } })
    end)

    it("is not held to SNI when the agent sent none, or without TLS", function()
      assert.same({ group = "traces" }, route { host = "traces.observability.internal", tls = {} })
      assert.same({ group = "traces" }, route { host = "traces.observability.internal", tls = false })
    end)
  end)

  describe("answers 403", function()
    it("to an endpoint that is not on the allowlist", function()
      assert_refused(403, "VPC endpoint vpce-0badbadbadbadbad0 is not on the allowlist",
                     route { proxy = { vpce_id = "vpce-0badbadbadbadbad0" } })
    end)

    it("to a connection without PROXY protocol information", function()
      assert_refused(403, "no PROXY protocol header", route { proxy = false })
    end)

    it("to a load balancer health check (a PROXY LOCAL header)", function()
      assert_refused(403, "health check", route { proxy = { ["local"] = true } })
    end)

    it("to a PROXY header that names no VPC endpoint", function()
      assert_refused(403, "no VPC endpoint id", route { proxy = { source = "10.20.30.40" } })
      assert_refused(403, "no VPC endpoint id", route { proxy = { version = 1, source = "10.20.30.40" } })
    end)

    it("before it looks at the host, so an outsider learns nothing of the routes", function()
      assert_refused(403, "is not on the allowlist",
                     route { host = "evil.example.com", proxy = { vpce_id = "vpce-0badbadbadbadbad0" } })
    end)
  end)

  describe("answers 421", function()
    it("to an unknown host, and forwards nothing", function()
      for _, host in ipairs { "evil.example.com", "grafana.observability.internal",
                              "metrics.observability.internal.evil.com" } do
        assert_refused(421, "no route for host '" .. host .. "'", route { host = host })
      end
      assert_refused(421, "no route for host ''", route { no_host_header = true, tls = {} })
    end)

    it("when the TLS server name is not the Host (a connection opened for another name)", function()
      assert_refused(421, "TLS server name 'metrics.observability.internal' does not match host 'logs.observability.internal'",
                     route { host = "logs.observability.internal", tls = { sni = "metrics.observability.internal" } })
      assert_refused(421, "does not match",
                     route { host = "traces.observability.internal", tls = { sni = "other.example.com" } })
    end)
  end)

  describe("allowlist", function()
    it("names a well-formed endpoint, its account and a note on every entry", function()
      local seen = {}
      for i, e in ipairs(allowlist) do
        assert.matches("^vpce%-" .. ("%x"):rep(17) .. "$", e.vpce, nil, false, "entry " .. i)
        assert.matches("^%d%d%d%d%d%d%d%d%d%d%d%d$", e.account, nil, false, "entry " .. i)
        assert.is_string(e.note)
        assert.is_nil(seen[e.vpce], "listed twice: " .. e.vpce)
        seen[e.vpce] = true
      end
    end)

    it("that is malformed makes the policy fail to load (a reload is refused)", function()
      local saved = package.loaded.agents_allowlist
      finally(function() package.loaded.agents_allowlist = saved end)
      local cases = {
        { { { vpce = "vpce-0123" } }, "entry 1: 'vpce-0123' is not a VPC endpoint id" },
        { { { vpce = "VPCE-0123456789ABCDEF0" } }, "is not a VPC endpoint id" },
        { { { vpce = ALLOWED }, { vpce = ALLOWED } }, "entry 2: " .. ALLOWED .. " is listed twice" },
        { { "vpce-0123456789abcdef0" }, "entry 1: expected { vpce =" },
      }
      for _, c in ipairs(cases) do
        package.loaded.agents_allowlist = c[1]
        local ok, err = pcall(t.load_policy, "scripts/agents.lua")
        assert.is_false(ok)
        assert.matches("^scripts/agents_allowlist%.lua: entry %d: ", err)
        assert.matches(c[2], err, 1, true)
      end
    end)
  end)
end)
