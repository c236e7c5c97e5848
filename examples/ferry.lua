-- The shipped example: what `ferry run` serves when no -c is given.
--
-- One agent-facing listener on 127.0.0.1:8080 routes by Host header with the
-- default policy to three upstream groups. So that the example works on its
-- own, the groups point at three small demo listeners of this same process
-- (examples/demo_upstream.lua); in a real region they are the load balancers
-- of the metrics, logs and traces clusters.
--
--   curl -H 'Host: metrics.observability.internal' http://127.0.0.1:8080/api/v1/push

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
    { name = "edge", type = "http", address = "127.0.0.1:8080" },
    { name = "demo-metrics", address = "127.0.0.1:9101", policy = "demo_upstream.lua" },
    { name = "demo-logs", address = "127.0.0.1:9102", policy = "demo_upstream.lua" },
    { name = "demo-traces", address = "127.0.0.1:9103", policy = "demo_upstream.lua" },
  },
  upstreams = {
    metrics = group(9101),
    logs = group(9102),
    traces = group(9103),
  },
  policy = "../scripts/default.lua",
  -- Health, status and `ferry reload`; keep it on loopback.
  admin = { address = "127.0.0.1:9180" },
  limits = {
    header_timeout = 10,
    keepalive_timeout = 75,
  },
  log = { level = "info", access = true },
}
