-- The agent-facing https listener, runnable on one machine:
--
--   ferry run -c examples/agents.lua
--
-- Agents in other AWS accounts reach it through PrivateLink: their VPC
-- endpoint -> our endpoint service's NLB, which sends PROXY protocol v2
-- naming the consumer's VPC endpoint -> ferry, which terminates TLS for
-- *.observability.internal. The policy (scripts/agents.lua) admits only the
-- endpoints of scripts/agents_allowlist.lua (403 for any other, for a
-- connection without PROXY information and for the NLB's LOCAL health
-- checks), routes by Host (421 for an unknown one) and answers 421 when the
-- TLS server name is not the Host.
--
-- Here the NLB is played by a client on 127.0.0.1 that sends the PROXY
-- header itself, as an allowlisted endpoint:
--
--   python3 examples/agent_push.py --vpce vpce-0123456789abcdef0 metrics.observability.internal
--   # 200: demo-metrics answered POST /api/v1/push ...
--   python3 examples/agent_push.py --vpce vpce-0badbadbadbadbad0 metrics.observability.internal
--   # 403: VPC endpoint vpce-0badbadbadbadbad0 is not on the allowlist
--
-- curl can send only a v1 header, which has no endpoint id, so it gets 403:
--
--   curl --haproxy-protocol --cacert examples/certs/ca.pem \
--        --resolve metrics.observability.internal:8443:127.0.0.1 \
--        https://metrics.observability.internal:8443/api/v1/push -d x
--
-- The certificate is a demo one (examples/certs/README.md). In a region the
-- three groups are the load balancers of the metrics, logs and traces
-- clusters; here they point at demo listeners of this same process
-- (examples/demo_upstream.lua), on ports of their own so that this example
-- runs beside the others. Behind a real NLB, health-check the traffic port
-- with TCP (an HTTP check would get 403 from the policy), or use the admin
-- listener's /health.

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
    { name = "agents", type = "https", address = "127.0.0.1:8443",
      tls = {
        certificates = {
          { cert = "certs/observability.internal.pem", key = "certs/observability.internal.key" },
        },
      },
      -- Only the NLB may connect, and it must send a PROXY header: in a VPC,
      -- the NLB's subnets (its private addresses) instead of loopback.
      proxy_protocol = { trusted = { "127.0.0.0/8" } },
    },
    { name = "demo-metrics", address = "127.0.0.1:9141", policy = "demo_upstream.lua" },
    { name = "demo-logs", address = "127.0.0.1:9142", policy = "demo_upstream.lua" },
    { name = "demo-traces", address = "127.0.0.1:9143", policy = "demo_upstream.lua" },
  },
  upstreams = {
    metrics = group(9141),
    logs = group(9142),
    traces = group(9143),
  },
  policy = "../scripts/agents.lua",
  admin = { address = "127.0.0.1:9184" }, -- health, status and `ferry reload`
  limits = {
    header_timeout = 10,
    keepalive_timeout = 75,
  },
  log = { level = "info", access = true },
}
