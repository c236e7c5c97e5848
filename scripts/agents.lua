-- Policy of the agent-facing https listener (examples/agents.lua).
--
-- Agents in other AWS accounts push metrics, logs and traces through
-- PrivateLink: their VPC endpoint -> our endpoint service's NLB (PROXY
-- protocol v2, which names the consumer's VPC endpoint) -> ferry, which
-- terminates TLS for *.observability.internal. A request is forwarded only
-- when all of these hold, in this order:
--
--   1. it came with PROXY protocol information naming a VPC endpoint on the
--      allowlist (scripts/agents_allowlist.lua). Otherwise 403: no PROXY
--      header, a LOCAL one (the load balancer's own health check, which
--      names no endpoint), or an endpoint that is not listed;
--   2. its Host is one of the three observability names. Otherwise 421,
--      and nothing is forwarded (ferry is not an open proxy);
--   3. on TLS, the server name the agent asked for (SNI) is that same host.
--      Otherwise 421 Misdirected Request, as nginx answers: a connection
--      opened for one name must not be used to reach another. An agent that
--      sent no SNI is not held to this.
--
-- The admitted endpoint's account is left in req.ctx.account, for a log hook.
local allowlist = require "agents_allowlist"
local metrics = require "ferry.metrics"

local M = {}

-- Host (lower-case, without port) -> upstream group.
M.routes = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"] = "logs",
  ["traces.observability.internal"] = "traces",
}

-- VPC endpoint id -> its allowlist entry { vpce =, account =, note = }. A
-- malformed or repeated id fails the load, so `ferry check` reports it and a
-- reload with it is refused (the running allowlist stays).
local function endpoint_set(list)
  local file = package.searchpath and package.searchpath("agents_allowlist", package.path) or "agents_allowlist.lua"
  local set = {}
  for i, e in ipairs(list) do
    local where = string.format("%s: entry %d", file, i)
    if type(e) ~= "table" or type(e.vpce) ~= "string" then
      error(where .. ': expected { vpce = "vpce-...", account = "...", note = "..." }', 0)
    end
    local hex = e.vpce:match("^vpce%-([0-9a-f]+)$")
    if not hex or (#hex ~= 17 and #hex ~= 8) then
      error(string.format("%s: '%s' is not a VPC endpoint id (vpce- and 17, or 8 for old ones, lower-case hex digits)", where, e.vpce), 0)
    end
    if set[e.vpce] then error(string.format("%s: %s is listed twice", where, e.vpce), 0) end
    set[e.vpce] = e
  end
  return set
end

M.allowed = endpoint_set(allowlist)

-- What route decided, in /metrics as ferry_policy_agent_decisions_total{decision, group}:
-- admitted, refused_allowlist (an endpoint not on the allowlist), refused_no_endpoint
-- (no PROXY header, a LOCAL one, no endpoint id), misdirected (host or SNI; group "none").
M.decisions = metrics.counter("agent_decisions", "routing decisions of the agents policy", { "decision", "group" })

local TEXT = { ["Content-Type"] = "text/plain" }

local function forbidden(req, why, decision)
  M.decisions:inc(decision or "refused_no_endpoint", "none")
  return req:respond(403, "ferry: forbidden: " .. why .. "\n", TEXT)
end

local function misdirected(req, why)
  M.decisions:inc("misdirected", "none")
  return req:respond(421, "ferry: " .. why .. "\n", TEXT)
end

function M.route(req)
  local p = req.proxy
  if not p then
    return forbidden(req, "no PROXY protocol header; agents connect through the VPC endpoint service")
  end
  if p["local"] then
    return forbidden(req, "load balancer health check (PROXY LOCAL) names no VPC endpoint")
  end
  if not p.vpce_id then return forbidden(req, "no VPC endpoint id in the PROXY header") end
  local entry = M.allowed[p.vpce_id]
  if not entry then
    return forbidden(req, "VPC endpoint " .. p.vpce_id .. " is not on the allowlist", "refused_allowlist")
  end

  local group = M.routes[req.host]
  if not group then return misdirected(req, "no route for host '" .. req.host .. "'") end
  local tls = req.tls
  if tls and tls.sni and tls.sni:lower() ~= req.host then
    return misdirected(req, "TLS server name '" .. tls.sni .. "' does not match host '" .. req.host .. "'")
  end

  req.ctx.account = entry.account
  M.decisions:inc("admitted", group)
  return group
end

return M
