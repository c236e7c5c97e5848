-- The shipped default policy (scripts/default.lua).
local t = require "ferry.testing"

describe("default policy", function()
  local policy = t.load_policy("scripts/default.lua")
  local groups = { "logs", "metrics", "traces" }

  local function route(opts) return t.route(policy, t.request(opts), groups) end

  it("sends each observability name to its group", function()
    assert.same({ group = "metrics" }, route { host = "metrics.observability.internal" })
    assert.same({ group = "logs" }, route { host = "logs.observability.internal" })
    assert.same({ group = "traces" }, route { host = "traces.observability.internal" })
  end)

  it("ignores case and port in the Host header", function()
    assert.same({ group = "metrics" }, route { host = "METRICS.Observability.Internal:8080" })
  end)

  it("answers an unknown host with 421 and never forwards it", function()
    local d = route { host = "evil.example.com", path = "/x" }
    assert.is_nil(d.group)
    assert.equal(421, d.status)
    assert.matches("evil.example.com", d.body)
  end)

  it("answers a request without a host with 421", function()
    local d = route { no_host_header = true }
    assert.equal(421, d.status)
  end)

  it("does not treat a look-alike suffix as a known name", function()
    assert.equal(421, route { host = "metrics.observability.internal.evil.com" }.status)
    assert.equal(421, route { host = "xmetrics.observability.internal" }.status)
  end)

  it("routes on host only, whatever the method or path", function()
    for _, m in ipairs { "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS" } do
      assert.same({ group = "logs" }, route { method = m, host = "logs.observability.internal", path = "/a/b?c=d" })
    end
  end)
end)

describe("demo upstream policy", function()
  local policy = t.load_policy("examples/demo_upstream.lua")

  it("answers 200 and says who answered", function()
    local req = t.request { host = "metrics.observability.internal", path = "/push", listener = "demo-metrics",
                            headers = { ["X-Forwarded-For"] = "10.1.2.3" } }
    local d = t.route(policy, req)
    assert.equal(200, d.status)
    assert.matches("demo%-metrics answered GET /push", d.body)
    assert.matches("10.1.2.3", d.body)
  end)
end)
