-- Policy of the satellite region ap-southeast-1.
--
-- Agents of this region (in many accounts, through PrivateLink) send their
-- metrics, logs and traces here; this fleet forwards them across the
-- region boundary (Transit Gateway or VPC peering) to the observability
-- cluster's load balancers in eu-west-1. On top of the common dispatch it
-- tags each forwarded request with "X-Ferry-Region: ap-southeast-1" (replacing
-- any value an agent sent), so the cluster can tell which fleet a request
-- came through, e.g. to account for cross-region traffic per region.
--
-- It can also shed a kind of data: set e.g. shed.traces = true and reload
-- (`ferry reload`), and traces are answered here with 503 and Retry-After
-- instead of crossing the region boundary, while the link or the cluster is
-- saturated. Agents keep their batches and retry.
local common = require "common"

local M = {
  region = "ap-southeast-1",
  shed = { metrics = false, logs = false, traces = false },
  retry_after = 60, -- seconds, for shed requests
}

function M.route(req)
  local group = common.group_for(req)
  if not group then return common.misdirected(req) end
  if M.shed[group] then return common.shed(req, group, M.region, M.retry_after) end
  req.headers:set(common.REGION_HEADER, M.region)
  return common.admit(group)
end

return M
