-- The eu-west-1 fleet, the main region, runnable on one machine:
--
--   ferry run -c examples/regions/eu-west-1.lua
--   curl http://127.0.0.1:8081/api/v1/push -H 'Host: metrics.observability.internal' -d x
--   curl http://127.0.0.1:8081/ -H 'Host: health.observability.internal'   # "ok", from ferry itself
--
-- Policy: scripts/regions/eu-west-1.lua. In the region the three groups are
-- the load balancers of the metrics, logs and traces clusters; here they
-- point at demo listeners of this same process
-- (examples/regions/demo_upstream.lua), so the example works with nothing
-- else running. Each region's example has its own ports, so the three can
-- run side by side.

local function group(port)
  return {
    servers = { "127.0.0.1:" .. port },
    timeouts = { connect = 5, read = 60, write = 60 },
    -- Below the 60 s idle timeout of an AWS ALB, so ferry never reuses a
    -- connection the load balancer is closing.
    keepalive = { max_idle = 32, idle_timeout = 50 },
  }
end

return {
  listeners = {
    { name = "edge", type = "http", address = "127.0.0.1:8081" },
    { name = "demo-metrics", address = "127.0.0.1:9111", policy = "demo_upstream.lua" },
    { name = "demo-logs", address = "127.0.0.1:9112", policy = "demo_upstream.lua" },
    { name = "demo-traces", address = "127.0.0.1:9113", policy = "demo_upstream.lua" },
  },
  upstreams = {
    metrics = group(9111),
    logs = group(9112),
    traces = group(9113),
  },
  policy = "../../scripts/regions/eu-west-1.lua",
  admin = { address = "127.0.0.1:9181" }, -- health, status and `ferry reload`
  limits = {
    header_timeout = 10,
    keepalive_timeout = 75,
  },
  log = { level = "info", access = true },
}
