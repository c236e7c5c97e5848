-- ferry.metrics (docs/policy.md "Metrics from a policy"): the same checks and
-- values under `ferry test` (kept by the C core) and under a plain busted.
local t = require "ferry.testing"
local metrics = require "ferry.metrics"

describe("ferry.metrics (" .. t.backend .. " backend)", function()
  local hits = metrics.counter("spec_hits", "hits seen by the spec", { "kind", "code" })
  local plain = metrics.counter("spec_plain_total", "no labels")

  before_each(function() t.reset_metrics() end)

  it("counts each label set apart, and t.metric reads them", function()
    hits:inc("a", "200")
    hits:inc("a", 200) -- a number is its text
    hits:inc("b", "500")
    plain:inc()
    assert.equal(2, t.metric("spec_hits", "a", "200"))
    assert.equal(1, t.metric("spec_hits", "b", "500"))
    assert.equal(0, t.metric("spec_hits", "c", "200"))
    assert.equal(1, t.metric("spec_plain_total"))
    t.reset_metrics()
    assert.equal(0, t.metric("spec_hits", "a", "200"))
  end)

  it("gives the same counter for the same declaration, and refuses other labels", function()
    assert.equal(hits, metrics.counter("spec_hits", "hits seen by the spec", { "kind", "code" }))
    assert.has_error(function() metrics.counter("spec_hits", "x", { "kind" }) end,
                     "ferry.metrics.counter: 'spec_hits' is declared already with labels (kind,code)")
  end)

  it("refuses bad names, labels and values", function()
    assert.has_error(function() metrics.counter("Spec-Bad", "x") end)
    assert.has_error(function() metrics.counter("spec_bad", "x", { "1abc" }) end)
    assert.has_error(function() metrics.counter("spec_bad", "x", { "overflow" }) end)
    assert.has_error(function() metrics.counter("spec_bad", "x", { "__name" }) end)
    assert.has_error(function() metrics.counter("spec_bad", 42) end)
    assert.has_error(function() hits:inc("a") end,
                     "counter spec_hits:inc: 1 label value given, the counter has 2 (kind, code)")
    assert.has_error(function() hits:inc("a", {}) end)
    assert.has_error(function() hits:inc("a", string.rep("x", 129)) end)
    assert.has_error(function() t.metric("spec_nope") end)
  end)
end)
