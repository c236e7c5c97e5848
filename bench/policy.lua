-- ferry bench policy: route by Host to the three upstream groups; any other
-- host gets 421, like the nginx, nginx+lua and HAProxy peers. On the tcp
-- listener of S6 (ferry-tcp.lua) every connection goes to the bulk sink.
local M = {}

local groups = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"]    = "logs",
  ["traces.observability.internal"]  = "traces",
}

function M.route(req)
  local group = groups[req.host]
  if group then return group end
  return req:respond(421, "unknown host\n")
end

function M.route_stream(conn)
  return "sink"
end

return M
