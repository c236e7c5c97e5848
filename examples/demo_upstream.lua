-- A stand-in for the observability cluster's load balancers, so the shipped
-- example proxies a request with nothing else running: each demo listener
-- answers from Lua and says what reached it.
local M = {}

function M.route(req)
  local body = string.format("%s answered %s %s (Host: %s, X-Forwarded-For: %s)\n",
    req.listener, req.method, req.uri, req.headers:get("host") or "-",
    req.headers:get("x-forwarded-for") or "-")
  return req:respond(200, body, { ["Content-Type"] = "text/plain" })
end

return M
