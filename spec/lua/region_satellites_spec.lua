-- The satellite regions' policies (scripts/regions/us-east-1.lua and
-- ap-southeast-1.lua): the same behaviour, each with its own region name.
local t = require "ferry.testing"

for _, region in ipairs { "us-east-1", "ap-southeast-1" } do
local other = region == "us-east-1" and "ap-southeast-1" or "us-east-1"

describe(region .. " policy", function()
  local groups = { "logs", "metrics", "traces" }
  local policy

  before_each(function()
    policy = t.load_policy("scripts/regions/" .. region .. ".lua")
    t.reset_metrics()
  end)

  local function route(opts) return t.route(policy, t.request(opts), groups) end

  it("sends each observability name to its group", function()
    assert.same({ group = "metrics" }, route { method = "POST", host = "metrics.observability.internal" })
    assert.same({ group = "logs" }, route { method = "POST", host = "logs.observability.internal" })
    assert.same({ group = "traces" }, route { method = "POST", host = "traces.observability.internal:4318" })
  end)

  it("tags what it forwards with X-Ferry-Region: " .. region .. ", replacing an agent's value", function()
    for _, host in ipairs { "metrics.observability.internal", "logs.observability.internal", "traces.observability.internal" } do
      local req = t.request { method = "POST", host = host, headers = { ["X-Ferry-Region"] = { "eu-west-1", other } } }
      assert.is_string(t.route(policy, req, groups).group)
      assert.same({ region }, req.headers:get_all("x-ferry-region"))
    end
  end)

  it("answers an unknown host with 421, untagged", function()
    for _, host in ipairs { "evil.example.com", "health.observability.internal", "traces.observability.internal.evil.com" } do
      local req = t.request { host = host }
      local d = t.route(policy, req, groups)
      assert.is_nil(d.group)
      assert.equal(421, d.status)
      assert.matches(host, d.body, 1, true)
      assert.is_nil(req.headers:get("x-ferry-region"))
    end
    assert.equal(421, route { no_host_header = true }.status)
  end)

  it("sheds a kind of data with 503 and Retry-After when told to", function()
    policy.shed.traces = true
    local d = route { method = "POST", host = "traces.observability.internal", path = "/v1/traces" }
    assert.equal(503, d.status)
    assert.equal("60", d.headers["Retry-After"])
    assert.matches("traces from " .. region .. " is paused", d.body, 1, true)
    -- the other kinds still flow
    assert.same({ group = "metrics" }, route { method = "POST", host = "metrics.observability.internal" })
    assert.same({ group = "logs" }, route { method = "POST", host = "logs.observability.internal" })
  end)

  it("counts its decisions in ferry_policy_region_decisions_total", function()
    route { method = "POST", host = "metrics.observability.internal" }
    route { method = "POST", host = "metrics.observability.internal" }
    route { host = "evil.example.com" }
    policy.shed.traces = true
    route { method = "POST", host = "traces.observability.internal" }
    assert.equal(2, t.metric("region_decisions", "admitted", "metrics"))
    assert.equal(0, t.metric("region_decisions", "admitted", "logs"))
    assert.equal(1, t.metric("region_decisions", "misdirected", "none"))
    assert.equal(1, t.metric("region_decisions", "shed", "traces"))
    assert.equal(0, t.metric("region_decisions", "admitted", "traces"))
  end)

  it("sheds nothing by default", function()
    for kind, on in pairs(policy.shed) do assert.is_false(on, kind) end
  end)
end)
end
