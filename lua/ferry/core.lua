-- ferry.core: the Lua half of the runtime inside a worker.
--
-- C calls the functions at the bottom of this file (load_policy, set_groups,
-- route) through lua_host.c. Requests reach Lua as handles: a small table
-- holding the request id, whose fields are read through the FFI on first use
-- (lib: fy_ffi_* in core/lua_api.c). No C pointer is ever stored in Lua.

local ffi = require "ffi"
local C = ffi.C
-- Lua C functions for the accessors every request reaches (core/lua_api.c):
-- policy code is interpreted, and there they cost a fraction of an FFI call.
local native = require "ferry.native"

ffi.cdef [[
int fy_ffi_req_str(double id, int field, const char **out, size_t *len);
int fy_ffi_req_client_port(double id);
int fy_ffi_req_content_length(double id, double *out);
int fy_ffi_req_header_get(double id, const char *name, size_t nlen, int nth,
                          const char **out, size_t *len);
int fy_ffi_req_header_set(double id, int mode, const char *name, size_t nlen,
                          const char *val, size_t vlen);
int fy_ffi_req_respond_header(double id, const char *name, size_t nlen,
                              const char *val, size_t vlen);
int fy_ffi_req_respond(double id, int status, const char *body, size_t blen);
void fy_ffi_log(int level, const char *msg, size_t len);
typedef struct fy_ffi_server {
  const char *name; size_t name_len;
  const char *address; size_t address_len;
  int weight, active, in_service, fails;
  double latency_ms;
} fy_ffi_server;
int fy_ffi_group_server(double id, int group, int index, fy_ffi_server *out);
int fy_ffi_res_info(double id, int *status, double *bytes);
int fy_ffi_req_ctx(double id);
typedef struct fy_ffi_proxy {
  int version, local, source_port, destination_port;
  char source[46], destination[46];
  const char *vpce_id, *authority, *alpn;
} fy_ffi_proxy;
int fy_ffi_req_proxy(double id, fy_ffi_proxy *out);
typedef struct fy_ffi_tls {
  const char *sni, *version, *cipher, *alpn, *client_subject;
  int client_verified, resumed;
} fy_ffi_tls;
int fy_ffi_req_tls(double id, fy_ffi_tls *out);
typedef struct fy_ffi_stream {
  const char *sni, *alpn, *listener, *client_addr;
  int client_port, local_port, has_proxy;
} fy_ffi_stream;
int fy_ffi_stream_info(double id, fy_ffi_stream *out);
const char *fy_ffi_stream_vpce(double id);
int fy_ffi_res_header_get(double id, const char *name, size_t nlen, int nth,
                          const char **out, size_t *len);
int fy_ffi_res_header_set(double id, int mode, const char *name, size_t nlen,
                          const char *val, size_t vlen);
]]

local M = {}

local policies = {}    -- policy number -> hook table
local group_index = {} -- group name -> 0-based index in the generation
local RESPONDED = setmetatable({}, { __tostring = function() return "response" end })

local sptr = ffi.new("const char *[1]")
local slen = ffi.new("size_t[1]")
local dnum = ffi.new("double[1]")

local failures = {
  [-1] = "request is gone (a req handle is only valid during its hook)",
  [-2] = "not allowed here",
  [-3] = "invalid argument",
}

-- level: where the caller's caller is (3 for a method called by the policy).
local function check(rc, what, level)
  if rc < 0 then error(what .. ": " .. failures[rc], level or 3) end
  return rc
end

local FIELDS = { method = 0, host = 1, path = 2, query = 3, uri = 4, client_addr = 5, listener = 6 }

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
    if mode ~= 2 then
      if type(value) == "number" then value = tostring(value) end
      if type(value) ~= "string" then error(op .. ": header value must be a string", 3) end
    else
      value = ""
    end
    local rc = set(self._id, mode, name, value)
    if rc < 0 then check(rc, op, 4) end
  end

  function m:set(name, value) edit(self, 0, name, value, what.set) end
  function m:add(name, value) edit(self, 1, name, value, what.add) end
  function m:remove(name) edit(self, 2, name, nil, what.remove) end
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
  if rc == -2 then error("req:respond: the request was already answered", 2) end
  if rc == -4 then error("req:respond: only route(req) may answer a request", 2) end
  check(rc, "req:respond")
  for k, v in pairs(headers or {}) do
    k, v = tostring(k), tostring(v)
    check(C.fy_ffi_req_respond_header(self._id, k, #k, v, #v), "req:respond: header " .. k)
  end
  return RESPONDED
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

-- called from C ----------------------------------------------------------

local traceback = debug.traceback
local HOOKS = { route = true, select = true, retry = true, response = true, log = true, route_stream = true }

-- Policy code runs interpreted: LuaJIT's compiled code never checks hooks,
-- so a runaway loop in a compiled trace could not be stopped by the budget.
-- The runtime's own modules (preloaded) keep the JIT.
-- jit.on is refused: a policy that turned the compiler back on for its own
-- functions (jit.on(true, true)) would get loops compiled past the budget.
-- The runtime never calls it; jit.off and the rest of the jit module stay.
jit.on = function()
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

-- Compiles and runs a policy file; returns its number or nil and "file:line: message".
function M.load_policy(path)
  add_package_dir(path)
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
  policies[#policies + 1] = mod
  return #policies
end

function M.set_groups(names)
  group_index, group_names = {}, {}
  for i, name in ipairs(names) do
    group_index[name] = i - 1
    group_names[i - 1] = name
  end
  return true
end

-- route(req) returns a group name and, optionally, a key for "hash" balancing.
function M.route(policy, id, host)
  local req = setmetatable({ _id = id, host = host }, req_mt)
  local ok, res, key = xpcall(policies[policy].route, traceback, req)
  if not ok then return -2, tostring(res) end
  if res == RESPONDED then return -1 end
  local g = group_index[res]
  if g then
    if key ~= nil then key = tostring(key) end
    return g, nil, key
  end
  if type(res) == "string" then return -2, "route returned unknown upstream group '" .. res .. "'" end
  return -2, "route must return an upstream group name or req:respond(...), got " .. type(res)
end

local HAS = { select = 1, retry = 2, response = 4, log = 8, route = 16, route_stream = 32 }

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

local function notify(hook)
  return function(policy, id)
    local req = setmetatable({ _id = id }, req_mt)
    local res = setmetatable({ _id = id }, res_mt)
    local ok, err = xpcall(policies[policy][hook], traceback, req, res)
    if not ok then return -2, tostring(err) end
    return 0
  end
end

M.response = notify("response")
M.log_hook = notify("log")
M.res_mt = res_mt

local group_names = {}
local server_info = ffi.new("fy_ffi_server")

-- The view of a group that select() gets: a table built only for policies that have select.
local function group_view(id, g)
  local servers = {}
  local i = 0
  while C.fy_ffi_group_server(id, g, i, server_info) == 1 do
    local s = server_info
    servers[i + 1] = {
      name = ffi.string(s.name, s.name_len), address = ffi.string(s.address, s.address_len),
      weight = s.weight, active = s.active, healthy = s.in_service == 1, fails = s.fails,
      latency_ms = s.latency_ms, _index = i,
    }
    i = i + 1
  end
  return { name = group_names[g], servers = servers }
end

-- select(req, group, attempt) returns one of group.servers (or its address), or nil for the balancer.
function M.select(policy, id, g, attempt)
  local req = setmetatable({ _id = id }, req_mt)
  local group = group_view(id, g)
  local ok, res = xpcall(policies[policy].select, traceback, req, group, attempt)
  if not ok then return -2, tostring(res) end
  if res == nil then return -1 end
  if type(res) == "table" and res._index then return res._index end
  if type(res) == "string" then
    for _, s in ipairs(group.servers) do
      if s.address == res then return s._index end
    end
    return -2, "select returned '" .. res .. "', which is not an address of group " .. group.name
  end
  return -2, "select must return a server of the group (or nil), got " .. type(res)
end

-- retry(req, attempt, failure) says whether to try again after a failed attempt.
function M.retry(policy, id, attempt, kind, status, server)
  local req = setmetatable({ _id = id }, req_mt)
  local failure = { kind = kind, status = status ~= 0 and status or nil, server = server }
  local ok, res = xpcall(policies[policy].retry, traceback, req, attempt, failure)
  if not ok then return -2, tostring(res) end
  return res and 1 or 0
end

-- route_stream(conn) for tcp listeners: a group name, or nil to close -------

local stream_info = ffi.new("fy_ffi_stream")

function M.route_stream(policy, id)
  if C.fy_ffi_stream_info(id, stream_info) ~= 0 then return -2, "the connection is gone" end
  local i = stream_info
  local function text(ptr) local t = ffi.string(ptr) return t ~= "" and t or nil end
  local conn = {
    id = id, sni = text(i.sni), alpn = text(i.alpn), listener = ffi.string(i.listener),
    client_addr = ffi.string(i.client_addr), client_port = i.client_port, local_port = i.local_port,
    proxy = i.has_proxy == 1 and { vpce_id = text(C.fy_ffi_stream_vpce(id)) } or nil,
  }
  local ok, res = xpcall(policies[policy].route_stream, traceback, conn)
  if not ok then return -2, tostring(res) end
  if res == nil then return -1 end
  local g = group_index[res]
  if g then return g end
  return -2, "route_stream returned " .. (type(res) == "string" and "unknown upstream group '" .. res .. "'"
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
