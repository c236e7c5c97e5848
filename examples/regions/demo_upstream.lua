-- A stand-in for the observability cluster's load balancers in the region
-- examples (like examples/demo_upstream.lua, plus the region tag): each demo
-- listener answers from Lua and says what reached it, including the
-- X-Ferry-Region header a satellite fleet adds.
local M = {}

function M.route(req)
  local body = string.format("%s answered %s %s (Host: %s, X-Forwarded-For: %s, X-Ferry-Region: %s)\n",
    req.listener, req.method, req.uri, req.headers:get("host") or "-",
    req.headers:get("x-forwarded-for") or "-", req.headers:get("x-ferry-region") or "-")
  return req:respond(200, body, { ["Content-Type"] = "text/plain" })
end

return M
