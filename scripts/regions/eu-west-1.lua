-- Policy of the main region, eu-west-1, where the observability cluster runs.
--
-- Agents of this region reach the cluster through this fleet like those of
-- any region, so it dispatches the three observability names to their
-- groups. As the main region it also:
--   * answers health.observability.internal itself with 200 "ok", so agents
--     and cross-region monitors can check the path up to ferry without
--     touching the cluster;
--   * removes X-Ferry-Region from what it forwards: that header is set by the
--     satellite fleets only, so at the cluster its absence means "main
--     region" and no agent can pretend to come from elsewhere.
local common = require "common"

local M = { region = "eu-west-1" }

M.HEALTH_HOST = "health.observability.internal"

function M.route(req)
  if req.host == M.HEALTH_HOST then
    common.decisions:inc("answered", "none")
    return req:respond(200, "ok\n", { ["Content-Type"] = "text/plain", ["Cache-Control"] = "no-store" })
  end
  local group = common.group_for(req)
  if not group then return common.misdirected(req) end
  req.headers:remove(common.REGION_HEADER)
  return common.admit(group)
end

return M
