-- test_api.c's second runtime: a policy of its own on a listener of its own.
local M = {}

function M.route(req)
  return req:respond(200, "runtime b\n")
end

return M
