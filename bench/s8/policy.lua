-- S8: the shipped policies, composed as a satellite region's agent-facing
-- fleet runs them. bench/run renders this file into its run directory
-- (@ROOT@ is the source tree), so `require` finds the scripts/ modules:
--   1. scripts/agents.lua: the PROXY protocol v2 header must name a VPC
--      endpoint of scripts/agents_allowlist.lua (else 403), the Host must be
--      one of the three observability names (else 421); the endpoint's
--      account goes to req.ctx.account;
--   2. scripts/regions/us-east-1.lua: shedding (503 + Retry-After for a
--      shed kind), X-Ferry-Region set on what is forwarded, the group.
-- The nginx+lua and HAProxy+Lua peers run the same steps (bench/s8/).
package.path = "@ROOT@/scripts/?.lua;@ROOT@/scripts/regions/?.lua;" .. package.path
local agents = require "agents"
local region = require "us-east-1"

local M = {}

function M.route(req)
  local admitted = agents.route(req)
  if type(admitted) ~= "string" then return admitted end -- 403 or 421 already answered
  return region.route(req)
end

return M
