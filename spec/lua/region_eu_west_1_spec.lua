-- The main region's policy (scripts/regions/eu-west-1.lua).
local t = require "ferry.testing"

describe("eu-west-1 policy", function()
  local policy = t.load_policy("scripts/regions/eu-west-1.lua")
  local groups = { "logs", "metrics", "traces" }

  local function route(opts) return t.route(policy, t.request(opts), groups) end

  it("sends each observability name to its group", function()
    assert.same({ group = "metrics" }, route { method = "POST", host = "metrics.observability.internal" })
    assert.same({ group = "logs" }, route { method = "POST", host = "logs.observability.internal" })
    assert.same({ group = "traces" }, route { method = "POST", host = "traces.observability.internal" })
  end)

  it("ignores case and port in the Host header, and uses an absolute-form target's host", function()
    assert.same({ group = "logs" }, route { host = "LOGS.Observability.Internal:443" })
    assert.same({ group = "traces" }, route { target = "http://traces.observability.internal/v1/traces" })
  end)

  it("answers health.observability.internal itself with 200 ok", function()
    for _, m in ipairs { "GET", "HEAD" } do
      local d = route { method = m, host = "health.observability.internal:8080", path = "/anything" }
      assert.equal(200, d.status)
      assert.equal("ok\n", d.body)
      assert.equal("no-store", d.headers["Cache-Control"])
    end
  end)

  it("answers an unknown host with 421 and never forwards it", function()
    for _, host in ipairs { "evil.example.com", "metrics.observability.internal.evil.com",
                            "xmetrics.observability.internal", "health.observability.internal.evil.com" } do
      local d = route { host = host }
      assert.is_nil(d.group)
      assert.equal(421, d.status)
      assert.matches(host, d.body, 1, true)
    end
    assert.equal(421, route { no_host_header = true }.status)
  end)

  it("counts its decisions in ferry_policy_region_decisions_total", function()
    t.reset_metrics()
    route { method = "POST", host = "logs.observability.internal" }
    route { host = "health.observability.internal" }
    route { host = "evil.example.com" }
    route { host = "evil.example.com" }
    assert.equal(1, t.metric("region_decisions", "admitted", "logs"))
    assert.equal(1, t.metric("region_decisions", "answered", "none"))
    assert.equal(2, t.metric("region_decisions", "misdirected", "none"))
    assert.equal(0, t.metric("region_decisions", "shed", "logs"))
  end)

  it("does not pass on an X-Ferry-Region sent by an agent", function()
    local req = t.request { host = "metrics.observability.internal",
                            headers = { ["x-ferry-region"] = "us-east-1", ["X-Scope-OrgID"] = "team-a" } }
    assert.same({ group = "metrics" }, t.route(policy, req, groups))
    assert.is_nil(req.headers:get("X-Ferry-Region"))
    assert.equal("team-a", req.headers:get("x-scope-orgid"))
  end)
end)
