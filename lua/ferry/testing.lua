-- ferry.testing: helpers for busted specs of policies.
--
-- request{...} builds a request handle with the same API a hook gets at run
-- time (fields, headers:get/get_all/set/add/remove, ctx, respond), backed by
-- plain Lua data; route(policy, req) runs the policy's route hook the way
-- ferry does and returns the decision as a table:
--
--   { group = "metrics" }                          forwarded to a group
--   { status = 421, body = "...", headers = {...} } answered by the policy
--
-- Edits made through req.headers are visible afterwards in req._headers.

local M = {}

local RESPONDED = setmetatable({}, { __tostring = function() return "response" end })

local function lower(s) return s:lower() end

local headers_methods = {}
local headers_mt = { __index = headers_methods }

local function check_name(name, what)
  if type(name) ~= "string" or not name:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
    error(what .. ": invalid argument", 3)
  end
end

local function check_value(value, what)
  if type(value) == "number" then value = tostring(value) end
  if type(value) ~= "string" or value:find("[%z\1-\8\10-\31\127]") then
    error(what .. ": invalid argument", 3)
  end
  return value
end

function headers_methods:get(name)
  check_name(name, "headers:get")
  for _, h in ipairs(self._list) do
    if lower(h[1]) == lower(name) then return h[2] end
  end
  return nil
end

function headers_methods:get_all(name)
  check_name(name, "headers:get_all")
  local out = {}
  for _, h in ipairs(self._list) do
    if lower(h[1]) == lower(name) then out[#out + 1] = h[2] end
  end
  return out
end

function headers_methods:remove(name)
  check_name(name, "headers:remove")
  local keep = {}
  for _, h in ipairs(self._list) do
    if lower(h[1]) ~= lower(name) then keep[#keep + 1] = h end
  end
  self._list = keep
end

function headers_methods:add(name, value)
  check_name(name, "headers:add")
  value = check_value(value, "headers:add")
  self._list[#self._list + 1] = { name, value }
end

function headers_methods:set(name, value)
  check_name(name, "headers:set")
  value = check_value(value, "headers:set")
  self:remove(name)
  self._list[#self._list + 1] = { name, value }
end

local req_methods = {}
local req_mt = { __index = req_methods }

function req_methods:respond(status, body, headers)
  if type(status) ~= "number" or status % 1 ~= 0 or status < 200 or status > 599 then
    error("req:respond: status must be an integer from 200 to 599", 2)
  end
  if body == nil then body = "" end
  if type(body) ~= "string" then error("req:respond: body must be a string", 2) end
  if headers ~= nil and type(headers) ~= "table" then error("req:respond: headers must be a table", 2) end
  if self._response then error("req:respond: the request was already answered", 2) end
  self._response = { status = status, body = body, headers = headers or {} }
  return RESPONDED
end

-- Host as ferry presents it: lower-case, without the port.
local function normalise_host(host)
  host = lower(host or "")
  if host:sub(1, 1) == "[" then return host:match("^(%[[^%]]*%])") or host end
  return (host:gsub(":%d*$", ""))
end

function M.request(opts)
  opts = opts or {}
  local list = {}
  for k, v in pairs(opts.headers or {}) do
    if type(k) == "number" then list[#list + 1] = { v[1], v[2] } else list[#list + 1] = { k, v } end
  end
  local host = opts.host
  if host == nil then
    for _, h in ipairs(list) do if lower(h[1]) == "host" then host = h[2] end end
  elseif not opts.no_host_header then
    table.insert(list, 1, { "Host", host })
  end
  local path = opts.path or "/"
  local p, q = path:match("^([^?]*)%?(.*)$")
  local req = setmetatable({
    method = opts.method or "GET",
    host = normalise_host(host),
    path = p or path,
    query = opts.query or q,
    uri = path,
    client_addr = opts.client_addr or "127.0.0.1",
    client_port = opts.client_port or 40000,
    listener = opts.listener or "edge",
    id = opts.id or 1,
    ctx = {},
    headers = setmetatable({ _list = list }, headers_mt),
  }, req_mt)
  return req
end

-- Runs policy.route(req) as ferry does. groups, when given, is the list of
-- upstream group names of the config: a name outside it is an error, as at
-- run time.
function M.route(policy, req, groups)
  local ok, res = xpcall(policy.route, debug.traceback, req)
  if not ok then return { error = res } end
  if res == RESPONDED or req._response then
    local r = req._response
    return { status = r.status, body = r.body, headers = r.headers }
  end
  if type(res) ~= "string" then
    return { error = "route must return an upstream group name or req:respond(...), got " .. type(res) }
  end
  if groups then
    local known = false
    for _, g in ipairs(groups) do known = known or g == res end
    if not known then return { error = "route returned unknown upstream group '" .. res .. "'" } end
  end
  return { group = res }
end

-- Loads a policy file the way ferry does (a fresh module each time).
function M.load_policy(path)
  local chunk = assert(loadfile(path))
  local policy = chunk()
  assert(type(policy) == "table" and type(policy.route) == "function",
         path .. ": a policy must return a table with a route(req) hook")
  return policy
end

return M
