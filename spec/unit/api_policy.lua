-- test_api.c's policy: answers with what the host's registered module says.
local tenants = require "testhost.tenants"

local M = {}

function M.route(req)
  local name = tenants.lookup(req.host)
  if not name then return req:respond(404, "no tenant\n") end
  return req:respond(200, "tenant " .. name .. " from the host\n")
end

return M
