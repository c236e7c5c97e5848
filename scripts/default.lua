-- The default policy: dispatch the three observability names to their
-- upstream groups. Any other host is answered here with 421 and never
-- forwarded, so ferry cannot be used as an open proxy.
local M = {}

M.routes = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"] = "logs",
  ["traces.observability.internal"] = "traces",
}

function M.route(req)
  local group = M.routes[req.host]
  if group then return group end
  return req:respond(421, "ferry: no route for host '" .. req.host .. "'\n",
                     { ["Content-Type"] = "text/plain" })
end

return M
