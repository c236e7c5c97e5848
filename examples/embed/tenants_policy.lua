-- The example host's policy: it answers every request itself with what the
-- host's own Lua module (myhost.tenants, written in C in host.c and
-- registered through ferry_register_cmodule) says about the request's Host.
local tenants = require "myhost.tenants"

local M = {}

function M.route(req)
  local name, plan = tenants.lookup(req.host or "")
  if not name then return req:respond(404, "no tenant for " .. tostring(req.host) .. "\n") end
  return req:respond(200, "tenant " .. name .. " (plan " .. plan .. ", host " .. tenants.host_name() .. ")\n",
                     { ["Content-Type"] = "text/plain" })
end

return M
