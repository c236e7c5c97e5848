-- ferry.core: the Lua half of the runtime inside a worker.
--
-- C calls the functions at the bottom of this file (load_policy, set_groups,
-- route) through lua_host.c. Requests reach Lua as handles: a small table
-- holding the request id, whose fields are read through the FFI on first use
-- (lib: fy_ffi_* in core/lua_api.c). No C pointer is ever stored in Lua.

local ffi = require "ffi"
-- Lua C functions for the accessors every request reaches (core/lua_api.c):
-- policy code is interpreted, and there they cost a fraction of an FFI call.
local native = require "ferry.native"

-- The FFI surface is declared once, in core/ffi.h; its declarations are
-- embedded as ferry.cdef. The codes, field numbers and hook bits below are
-- read from its enums by name.
local CDEF = require "ferry.cdef"
ffi.cdef(CDEF)
-- The functions come through a table of pointers C hands over (fy_ffi_api
-- in ffi.h), never through ffi.C: libferry exports none of them, so that a
-- host may load it with dlopen(RTLD_LOCAL). ffi.C still names the constants
-- of the enums, which need no symbol.
local C = ffi.cast("const fy_ffi_api *", require "ferry.api")
local K = ffi.C

-- Each constant of an enum of ffi.h whose names start with prefix:
-- { [lower-case rest of the name] = value }.
local function enum(prefix)
  local t = {}
  for rest in CDEF:gmatch("%f[%w_]" .. prefix .. "([%u_]+)%f[^%w_]") do t[rest:lower()] = K[prefix .. rest] end
  return t
end

-- The layouts of the structs of ffi.h as LuaJIT sees them, against what the
-- C compiler made (a list of { type =, field =, offset =, size = }, field nil
-- for a struct's size): the first difference, or nil.
local function layout_difference(entries)
  for _, e in ipairs(entries) do
    local ok, got = pcall(function()
      if e.field then return ffi.offsetof(e.type, e.field) end
      return ffi.sizeof(e.type)
    end)
    local want = e.field and e.offset or e.size
    if not ok or got ~= want then
      return string.format("%s%s: %s %s in C, %s in the cdef", e.type, e.field and ("." .. e.field) or "",
                           e.field and "offset" or "size", tostring(want), ok and got and tostring(got) or "absent")
    end
  end
  return nil
end

local function c_layout()
  local n = ffi.new("int[1]")
  local p = C.fy_ffi_abi_layout(n)
  local out = {}
  for i = 0, n[0] - 1 do
    local e = p[i]
    out[i + 1] = { type = ffi.string(e.type), field = e.field ~= nil and ffi.string(e.field) or nil,
                   offset = tonumber(e.offset), size = tonumber(e.size) }
  end
  return out
end

do
  local diff = layout_difference(c_layout())
  if diff then error("ferry.core: the FFI structs differ between C and LuaJIT (" .. diff .. ")", 0) end
end

local M = {}

local policies = {}    -- policy number -> hook table
local group_index = {} -- group name -> 0-based index in the generation
local group_names = {} -- 0-based index in the generation -> group name
local RESPONDED = setmetatable({}, { __tostring = function() return "response" end })

local dnum = ffi.new("double[1]")

local NO_ANSWER, FAILED = K.FY_HOOK_NO_ANSWER, K.FY_HOOK_FAILED -- what the hooks below return to C
M.NO_ANSWER, M.FAILED = NO_ANSWER, FAILED

local failures = {
  [K.FY_FFI_EGONE] = "request is gone (a req handle is only valid during its hook)",
  [K.FY_FFI_EPHASE] = "not allowed here",
  [K.FY_FFI_EINVAL] = "invalid argument",
  [K.FY_FFI_EROUTE] = "only route(req) may do this",
}

-- level: where the caller's caller is (3 for a method called by the policy).
local function check(rc, what, level)
  if rc < 0 then error(what .. ": " .. failures[rc], level or 3) end
  return rc
end

local FIELDS = enum("FY_FFI_FIELD_") -- { method = FY_FFI_FIELD_METHOD, ... }
local HDR = enum("FY_FFI_HDR_")      -- { set =, add =, remove = }

-- headers: req.headers and res.headers ---------------------------------------

local function header_name(name, what)
  if type(name) ~= "string" then error(what .. ": header name must be a string", 3) end
  return name
end

-- A headers view over one C header list: get and set are its ferry.native
-- pair, prefix names it in error messages ("headers", "res.headers").
local function headers_class(get, set, prefix)
  local m = {}
  local what = { get = prefix .. ":get", get_all = prefix .. ":get_all", set = prefix .. ":set",
                 add = prefix .. ":add", remove = prefix .. ":remove" }

  function m:get(name)
    header_name(name, what.get)
    local rc, v = get(self._id, name, 0)
    if rc < 0 then check(rc, what.get) end
    return v
  end

  -- Every value of a header, in order (a list, possibly empty).
  function m:get_all(name)
    header_name(name, what.get_all)
    local out, n = {}, 0
    while true do
      local rc, v = get(self._id, name, n)
      if check(rc, what.get_all) ~= 1 then break end
      n = n + 1
      out[n] = v
    end
    return out
  end

  local function edit(self, mode, name, value, op)
    header_name(name, op)
    if mode ~= HDR.remove then
      if type(value) == "number" then value = tostring(value) end
      if type(value) ~= "string" then error(op .. ": header value must be a string", 3) end
    else
      value = ""
    end
    local rc = set(self._id, mode, name, value)
    if rc < 0 then check(rc, op, 4) end
  end

  function m:set(name, value) edit(self, HDR.set, name, value, what.set) end
  function m:add(name, value) edit(self, HDR.add, name, value, what.add) end
  function m:remove(name) edit(self, HDR.remove, name, nil, what.remove) end
  return { __index = m }
end

local headers_mt = headers_class(native.req_header_get, native.req_header_set, "headers")
local res_headers_mt -- after the cdef of the res functions, below

-- req -------------------------------------------------------------------

local req_methods = {}

function req_methods:respond(status, body, headers)
  if type(status) ~= "number" or status % 1 ~= 0 or status < 200 or status > 599 then
    error("req:respond: status must be an integer from 200 to 599", 2)
  end
  if body == nil then body = "" end
  if type(body) ~= "string" then error("req:respond: body must be a string", 2) end
  if headers ~= nil and type(headers) ~= "table" then error("req:respond: headers must be a table", 2) end
  local rc = C.fy_ffi_req_respond(self._id, status, body, #body)
  if rc == K.FY_FFI_EPHASE then error("req:respond: the request was already answered", 2) end
  if rc == K.FY_FFI_EROUTE then error("req:respond: only route(req) may answer a request", 2) end
  check(rc, "req:respond")
  for k, v in pairs(headers or {}) do
    k, v = tostring(k), tostring(v)
    check(C.fy_ffi_req_respond_header(self._id, k, #k, v, #v), "req:respond: header " .. k)
  end
  return RESPONDED
end

-- A value for the access log: kind 0 string, 1 number (as JSON text), 2 true, 3 false.
local function log_value(v)
  local t = type(v)
  if t == "string" then return 0, v end
  if t == "boolean" then return v and 2 or 3, "" end
  if t == "number" and v == v and v ~= math.huge and v ~= -math.huge then
    if v % 1 == 0 and v > -2^53 and v < 2^53 then return 1, string.format("%d", v) end
    return 1, string.format("%.17g", v)
  end
  error("req:log_field: the value must be a string, a finite number or a boolean, got " .. t, 3)
end
M.log_value = log_value

-- req:log_field(name, value): adds a field to this request's access log line
-- (under "fields" in JSON, fields={...} in text); a second call replaces it.
function req_methods:log_field(name, value)
  if type(name) ~= "string" or not name:find("^[%a_][%w_]*$") or #name > 64 then
    error("req:log_field: the name must match [a-zA-Z_][a-zA-Z0-9_]* (at most 64 bytes)", 2)
  end
  local kind, text = log_value(value)
  local rc = C.fy_ffi_req_log_field(self._id, name, #name, kind, text, #text)
  if rc == -3 then error("req:log_field: the request's fields would exceed 4096 bytes", 2) end
  check(rc, "req:log_field")
end

local req_mt = {}
local ctxs = {} -- request id -> its ctx table, shared by every hook of the request

-- The request ended: its ctx goes.
function M.release(id)
  ctxs[id] = nil
  return 0
end

function req_mt.__index(self, k)
  local f = FIELDS[k]
  if f then
    local rc, v = native.str(self._id, f)
    if rc < 0 then check(rc, "req." .. k) end
    rawset(self, k, v) -- fixed for the request's life
    return v
  end
  if k == "client_port" then
    local v = check(C.fy_ffi_req_client_port(self._id), "req.client_port")
    rawset(self, k, v)
    return v
  end
  if k == "content_length" then
    local rc = check(C.fy_ffi_req_content_length(self._id, dnum), "req.content_length")
    local v = rc == 1 and dnum[0] or nil
    rawset(self, k, v)
    return v
  end
  if k == "headers" then
    local h = setmetatable({ _id = self._id }, headers_mt)
    rawset(self, k, h)
    return h
  end
  if k == "ctx" then
    local id = self._id
    local t = ctxs[id]
    if not t then
      check(native.ctx(id), "req.ctx") -- C calls release(id) when the request ends
      t = {}
      ctxs[id] = t
    end
    rawset(self, k, t)
    return t
  end
  if k == "proxy" then
    local rc, v = native.proxy(self._id) -- absent fields are nil
    check(rc, "req.proxy")
    if v then rawset(self, k, v) end
    return v
  end
  if k == "tls" then
    local rc, v = native.tls(self._id)
    check(rc, "req.tls")
    rawset(self, k, v or false)
    return v
  end
  if k == "id" then return self._id end
  return req_methods[k]
end

function req_mt.__tostring(self) return "ferry request " .. string.format("%d", self._id) end

M.req_mt = req_mt
M.RESPONDED = RESPONDED
M.layout_difference, M.c_layout = layout_difference, c_layout -- for the specs

-- called from C ----------------------------------------------------------

local traceback = debug.traceback
local HOOKS = { route = true, select = true, retry = true, response = true, log = true, route_stream = true }

-- Policy code runs interpreted: LuaJIT's compiled code never checks hooks,
-- so a runaway loop in a compiled trace could not be stopped by the budget.
-- The runtime's own modules (preloaded) keep the JIT.
-- jit.on is refused: a policy that turned the compiler back on for its own
-- functions (jit.on(true, true)) would get loops compiled past the budget.
-- The runtime never calls it; jit.off and the rest of the jit module stay.
jit.on = function() -- luacheck: ignore 122 (the policy's jit module, on purpose)
  error("jit.on: policy code runs interpreted, so that limits.hook_timeout can stop a runaway loop", 2)
end
-- Modules are loaded as source only: LuaJIT does not verify bytecode, and a
-- crafted bytecode file can crash the process.
package.loaders[2] = function(name)
  local path, why = package.searchpath(name, package.path)
  if not path then return why end
  local chunk, err = loadfile(path, "t")
  if not chunk then error(err:find("wrong mode", 1, true) and (path .. ": precompiled bytecode is not accepted") or err, 0) end
  jit.off(chunk, true)
  return chunk
end

local function add_package_dir(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local entry = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
  if not package.path:find(entry, 1, true) then package.path = entry .. package.path end
end

-- Compiles and runs a policy file; returns its hook table or nil and "file:line: message".
-- where ("config-file:line: key.path") names the config key that gave the path:
-- a file that cannot be read is the config's error, reported there.
function M.compile_policy(path, where)
  add_package_dir(path)
  local f, why = io.open(path, "r")
  if not f then return nil, (where and where .. ": " or "") .. "cannot open " .. why end
  f:close()
  local chunk, err = loadfile(path, "t")
  if not chunk then
    return nil, err:find("wrong mode", 1, true) and (path .. ": precompiled bytecode is not accepted") or err
  end
  jit.off(chunk, true)
  local ok, mod = pcall(chunk)
  if not ok then return nil, tostring(mod) end
  if type(mod) ~= "table" then
    return nil, path .. ": a policy must return a table of hooks, got " .. type(mod)
  end
  for name, v in pairs(mod) do
    if HOOKS[name] and type(v) ~= "function" then
      return nil, path .. ": hook '" .. tostring(name) .. "' must be a function, got " .. type(v)
    end
  end
  if type(mod.route) ~= "function" and type(mod.route_stream) ~= "function" then
    return nil, path .. ": the policy has neither a route(req) nor a route_stream(conn) hook"
  end
  return mod
end

-- As compile_policy, keeping the policy: its number, or nil and the message.
function M.load_policy(path, where)
  local mod, err = M.compile_policy(path, where)
  if not mod then return nil, err end
  policies[#policies + 1] = mod
  return #policies
end

-- names: the generation's group names, in order. With open (ferry.testing
-- given no list of groups) every name a hook returns is a group, numbered
-- as it first comes.
function M.set_groups(names, open)
  group_index, group_names = {}, {}
  for i, name in ipairs(names) do
    group_index[name] = i - 1
    group_names[i - 1] = name
  end
  if open then
    local n = #names
    setmetatable(group_index, { __index = function(t, name)
      if type(name) ~= "string" then return nil end
      t[name], group_names[n], n = n, name, n + 1
      return t[name]
    end })
  end
  return true
end

function M.group_name(g) return group_names[g] end

-- route(req) of hook table mod on request id: a group index and, optionally,
-- a key for "hash" balancing; NO_ANSWER when it answered; FAILED and why.
local function route_with(mod, id, host)
  local req = setmetatable({ _id = id, host = host }, req_mt)
  local ok, res, key = xpcall(mod.route, traceback, req)
  if not ok then return FAILED, tostring(res) end
  if res == RESPONDED then return NO_ANSWER end
  local g = group_index[res]
  if g then
    if key ~= nil then key = tostring(key) end
    return g, nil, key
  end
  if type(res) == "string" then return FAILED, "route returned unknown upstream group '" .. res .. "'" end
  return FAILED, "route must return an upstream group name or req:respond(...), got " .. type(res)
end
M.route_with = route_with

-- host: the request's, handed over with the call (one field read fewer per request).
function M.route(policy, id, host) return route_with(policies[policy], id, host) end

local HAS = enum("FY_HOOK_HAS_") -- { select = FY_HOOK_HAS_SELECT, ... }

function M.hooks(policy)
  local p, mask = policies[policy], 0
  for name, bit in pairs(HAS) do
    if type(p[name]) == "function" then mask = mask + bit end
  end
  return mask
end

-- res: the upstream's response, in the response and log hooks -------------

res_headers_mt = headers_class(native.res_header_get, native.res_header_set, "res.headers")

local istatus = ffi.new("int[1]")
local res_mt = {}
function res_mt.__index(self, k)
  if k == "status" or k == "bytes" then
    check(C.fy_ffi_res_info(self._id, istatus, dnum), "res." .. k)
    return k == "status" and istatus[0] or dnum[0]
  end
  if k == "headers" then
    local h = setmetatable({ _id = self._id }, res_headers_mt)
    rawset(self, k, h)
    return h
  end
  return nil
end

-- response(req, res) or log(req, res) of hook table mod on request id: 0, or FAILED and the error.
local function notify_with(mod, hook, id)
  local req = setmetatable({ _id = id }, req_mt)
  local res = setmetatable({ _id = id }, res_mt)
  local ok, err = xpcall(mod[hook], traceback, req, res)
  if not ok then return FAILED, tostring(err) end
  return 0
end
M.notify_with = notify_with

M.response = function(policy, id) return notify_with(policies[policy], "response", id) end
M.log_hook = function(policy, id) return notify_with(policies[policy], "log", id) end
M.res_mt = res_mt

local server_info = ffi.new("fy_ffi_server")

-- The view of a group that select() gets, named name: fill(i, s) fills the
-- fy_ffi_server s with server i (0-based) and says whether there is one.
local function group_view_of(name, fill)
  local servers = {}
  local i = 0
  while fill(i, server_info) do
    local s = server_info
    servers[i + 1] = {
      name = ffi.string(s.name, s.name_len), address = ffi.string(s.address, s.address_len),
      weight = s.weight, active = s.active, healthy = s.in_service == 1, fails = s.fails,
      latency_ms = s.latency_ms, _index = i,
    }
    i = i + 1
  end
  return { name = name, servers = servers }
end
M.group_view_of = group_view_of

-- The view of group g of the generation: built only for policies that have select.
local function group_view(id, g)
  return group_view_of(group_names[g], function(i, s) return C.fy_ffi_group_server(id, g, i, s) == 1 end)
end

-- select(req, group, attempt) of hook table mod, group being a view: the
-- index of the server it returned (one of group.servers, or its address),
-- NO_ANSWER for nil (the balancer picks), or FAILED and why the answer is refused.
local function select_with(mod, id, group, attempt)
  local req = setmetatable({ _id = id }, req_mt)
  local ok, res = xpcall(mod.select, traceback, req, group, attempt)
  if not ok then return FAILED, tostring(res) end
  if res == nil then return NO_ANSWER end
  if type(res) == "table" and res._index then return res._index end
  if type(res) == "string" then
    for _, s in ipairs(group.servers) do
      if s.address == res then return s._index end
    end
    return FAILED, "select returned '" .. res .. "', which is not an address of group " .. group.name
  end
  return FAILED, "select must return a server of the group (or nil), got " .. type(res)
end
M.select_with = select_with

function M.select(policy, id, g, attempt) return select_with(policies[policy], id, group_view(id, g), attempt) end

-- retry(req, attempt, failure) of hook table mod: 1 to try again, 0 not, FAILED and the error.
local function retry_with(mod, id, attempt, failure)
  local req = setmetatable({ _id = id }, req_mt)
  local ok, res = xpcall(mod.retry, traceback, req, attempt, failure)
  if not ok then return FAILED, tostring(res) end
  return res and 1 or 0
end
M.retry_with = retry_with

-- retry(req, attempt, failure) says whether to try again after a failed attempt.
function M.retry(policy, id, attempt, kind, status, server)
  return retry_with(policies[policy], id, attempt, { kind = kind, status = status ~= 0 and status or nil, server = server })
end

-- route_stream(conn) for tcp listeners: a group name, or nil to close -------

local stream_info = ffi.new("fy_ffi_stream")

function M.route_stream(policy, id)
  if C.fy_ffi_stream_info(id, stream_info) ~= 0 then return FAILED, "the connection is gone" end
  local i = stream_info
  local function text(ptr) local t = ffi.string(ptr) return t ~= "" and t or nil end
  local conn = {
    id = id, sni = text(i.sni), alpn = text(i.alpn), listener = ffi.string(i.listener),
    client_addr = ffi.string(i.client_addr), client_port = i.client_port, local_port = i.local_port,
    proxy = i.has_proxy == 1 and { vpce_id = text(C.fy_ffi_stream_vpce(id)) } or nil,
  }
  local ok, res = xpcall(policies[policy].route_stream, traceback, conn)
  if not ok then return FAILED, tostring(res) end
  if res == nil then return NO_ANSWER end
  local g = group_index[res]
  if g then return g end
  return FAILED, "route_stream returned " .. (type(res) == "string" and "unknown upstream group '" .. res .. "'"
                                          or type(res) .. ", expected a group name or nil")
end

-- ferry.log, for policies -------------------------------------------------

local function logger(level)
  return function(...)
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do parts[i] = tostring((select(i, ...))) end
    local msg = table.concat(parts, " ")
    C.fy_ffi_log(level, msg, #msg)
  end
end

M.log = { debug = logger(0), info = logger(1), warn = logger(2), error = logger(3) }

return M
