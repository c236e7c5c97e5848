-- Shared by the per-region policies (scripts/regions/<region>.lua), which
-- load it with `require "common"`: ferry puts a policy's own directory on
-- package.path, and so does ferry.testing's load_policy.
--
-- Every region receives the same three names from its agents (a private
-- hosted zone resolves them to the region's ferry fleet) and forwards each to
-- the group of the same kind; the groups point at the load balancers of the
-- observability cluster in the main region.
local metrics = require "ferry.metrics"

local M = {}

-- What each region's route decided, in /metrics as
-- ferry_policy_region_decisions_total{decision, group}: admitted (forwarded
-- to group), shed (answered 503 for group), misdirected (421, group "none"),
-- answered (the policy's own answer, e.g. eu-west-1's health name).
M.decisions = metrics.counter("region_decisions", "routing decisions of the regional policy",
                              { "decision", "group" })

-- Host (lower-case, without port) -> upstream group.
M.routes = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"] = "logs",
  ["traces.observability.internal"] = "traces",
}

-- The header that tells the cluster which satellite fleet forwarded a request.
-- Only ferry may set it: every region replaces or removes what an agent sent.
M.REGION_HEADER = "X-Ferry-Region"

-- A request forwarded to group.
function M.admit(group)
  M.decisions:inc("admitted", group)
  return group
end

-- The group for the request's host, or nil.
function M.group_for(req)
  return M.routes[req.host]
end

-- Any other host is answered here and never forwarded (ferry is not an open
-- proxy). 421 Misdirected Request: the name does not belong to this server.
function M.misdirected(req)
  M.decisions:inc("misdirected", "none")
  return req:respond(421, "ferry: no route for host '" .. req.host .. "'\n",
                     { ["Content-Type"] = "text/plain" })
end

-- 503 with Retry-After for a kind of data a satellite is shedding: agents
-- keep their batches and send them again later.
function M.shed(req, group, region, retry_after)
  M.decisions:inc("shed", group)
  return req:respond(503, "ferry: " .. group .. " from " .. region .. " is paused, retry later\n",
                     { ["Content-Type"] = "text/plain", ["Retry-After"] = retry_after })
end

return M
