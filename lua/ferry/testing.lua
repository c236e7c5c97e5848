-- ferry.testing: helpers for busted specs of policies (reference: docs/testing.md).
--
--   t.request{...}                    a request, as ferry would hand it to a hook
--   t.route(policy, req, groups)      runs route(req); returns the decision as a table:
--       { group = "metrics" }                             forwarded to a group
--       { status = 421, body = "...", headers = {...} }   answered with req:respond()
--       { error = "message with traceback" }              ferry would answer 500
--   t.load_policy(path)               loads a policy file the way ferry does
--   t.headers(req)                    the request's headers now, {{name, value}, ...}
--   t.failure(kind), t.retry(policy, req, attempt, failure)   for retry hooks
--   t.select(policy, req, group, attempt), t.draw(policy, req, group, n)  for select hooks
--   t.response(policy, req, res)      runs response(req, res) on the upstream's response
--       res = { status = 200, headers = { { "Name", "value" }, ... } or { Name = "value" } };
--       returns { status = 200, headers = { { name, value }, ... } } as ferry relays it
--       (the hook's edits in, hop-by-hop headers out), or { error = "..." } (ferry: 500)
--   t.log(policy, req, res)           runs log(req, res), res = { status =, bytes =, headers = }
--       read-only as in ferry; returns true, or nil and the message
-- (route may also return a balancing key: { group = "metrics", key = "..." }).
--
-- Two backends, one behaviour. Inside `ferry test` (the ferry.testbed module
-- is there) a request is a real fy_req built by the C code that parses
-- requests from the wire, and hooks get ferry.core's own request handle: the
-- same fy_ffi_* calls, checks and error messages as in production; the
-- response and log hooks get ferry.core's res handle over the response put
-- where proxy.c keeps it, in that hook's phase. Under a
-- plain `luajit /usr/bin/busted` the same rules run from Lua copies of that C
-- code (core/http.c, core/lua_api.c) and of ferry.core's handles; the spec
-- spec/lua/testing_spec.lua holds both to the same results.
--
-- As at run time, a hook gets fresh handles (req, and res) that are valid
-- only while the hook runs (a handle kept after it raises "request is
-- gone"). res.headers can be edited in response only (in log, an edit raises
-- "not allowed here"), and req:respond only in route. What
-- t.request returns is the spec's own view of the request: it reads the same
-- request at any time, so a spec can look at headers a hook edited.

local M = {}

local traceback = debug.traceback
local pack = function(...) return { n = select("#", ...), ... } end

local function copy(t)
  if t == nil then return nil end
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- The rules of core/http.c, in Lua -----------------------------------------

local HOP_BY_HOP = {
  ["connection"] = true, ["keep-alive"] = true, ["proxy-connection"] = true, ["te"] = true,
  ["trailer"] = true, ["transfer-encoding"] = true, ["upgrade"] = true,
  ["proxy-authenticate"] = true, ["proxy-authorization"] = true, ["content-length"] = true,
}

local function name_ok(s) -- fy_http_name_ok: a token
  return type(s) == "string" and s:find("^[%w!#$%%&'*+%-.^_`|~]+$") ~= nil
end

local function value_ok(s) -- fy_http_value_ok: no control character but tab
  return type(s) == "string" and not s:find("[%z\1-\8\10-\31\127]")
end

local function is_hop_by_hop(name) return HOP_BY_HOP[name:lower()] == true end

-- fy_http_host_normalize: lower-case, port removed, [v6] kept; nil when malformed.
local function host_normalize(s)
  local len, e = #s, #s
  if len > 0 and s:sub(1, 1) == "[" then
    local close = s:find("]", 1, true)
    if not close then return nil end
    e = close
    if e < len and s:sub(e + 1, e + 1) ~= ":" then return nil end
  else
    local colon = s:find(":", 1, true)
    if colon then e = colon - 1 end
  end
  if e < len and s:find("%D", e + 2) then return nil end -- the port must be digits
  if e + 1 > 256 then return nil end
  local host = s:sub(1, e)
  if host:find("[^%w%-%._%[%]:]") then return nil end
  return host:lower()
end

-- fy_http_target_parse: origin-form, absolute-form (http, https) or "*".
local function target_parse(t)
  if t == "*" then return { path = "*" } end
  local p, authority = 1, nil
  if #t > 0 and t:sub(1, 1) ~= "/" then
    local l = t:lower()
    local skip
    if l:sub(1, 7) == "http://" then skip = 7 elseif l:sub(1, 8) == "https://" then skip = 8 else return nil end
    local a = skip + 1
    p = t:find("[/?]", a) or #t + 1
    if p == a or t:sub(a, p - 1):find("@", 1, true) then return nil end -- no userinfo
    authority = t:sub(a, p - 1)
  end
  if p > #t then return { authority = authority, path = "/" } end
  if t:sub(p, p) == "?" and authority then return { authority = authority, path = "/", query = t:sub(p + 1) } end
  if t:sub(p, p) ~= "/" then return nil end
  local q = t:find("?", p, true)
  return { authority = authority, path = t:sub(p, (q or #t + 1) - 1), query = q and t:sub(q + 1) or nil }
end

-- fy_http_strip_hop_by_hop on a list of {name, value}: drops the headers that
-- Connection names, then the hop-by-hop ones (what conn.c does once the head
-- is in). Second result: whether Connection named Host (ferry answers 400).
local function strip_hop_by_hop(list)
  local drop = {}
  for _, h in ipairs(list) do
    if h[1]:lower() == "connection" then
      for tok in h[2]:gmatch("[^,%s]+") do drop[tok:lower()] = true end
    end
  end
  local out = {}
  for _, h in ipairs(list) do
    local n = h[1]:lower()
    if not drop[n] and not HOP_BY_HOP[n] then out[#out + 1] = h end
  end
  return out, drop.host == true
end

local function ip_ok(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a then
    for _, x in ipairs { a, b, c, d } do
      if #x > 3 or tonumber(x) > 255 then return false end
    end
    return true
  end
  return s:find(":", 1, true) ~= nil and s:find("^[%x:%.]+$") ~= nil and #s <= 45
end

M._rules = { name_ok = name_ok, value_ok = value_ok, is_hop_by_hop = is_hop_by_hop,
             host_normalize = host_normalize, target_parse = target_parse }

-- Backend "lua": core/lua_api.c and ferry.core's handle, in Lua ----------------

local function lua_backend()
  local B = { name = "lua" }
  local EGONE, EPHASE, EINVAL = -1, -2, -3
  local current -- the request whose hook is running (fy_hook_current.req)
  local current_hook = "route" -- which hook it is (w->hook): "route", "response" or "log"

  local function refused(fmt, ...)
    return nil, "ferry answers 400 before any hook runs: " .. string.format(fmt, ...)
  end

  -- As ferry.testbed.new (core/test_cmd.c).
  function B.new(spec)
    local st = { id = spec.id or 1 }
    if type(st.id) ~= "number" or st.id < 1 or st.id % 1 ~= 0 then
      error("testbed.new: id must be a positive integer", 3)
    end
    local method = spec.method or "GET"
    if not name_ok(method) or #method >= 32 then return refused("method '%s' is not a token", tostring(method)) end
    st.method = method
    local target = spec.target or "/"
    if #target == 0 or target:find("[%z\1-\32\127]") then return refused("request target '%s'", target) end
    st.url = target
    st.target = target_parse(target)
    if not st.target then
      return refused("request target '%s' is not origin-form, absolute-form or '*'", target)
    end
    local list = {}
    for i, h in ipairs(spec.headers or {}) do
      local n, v = h[1], h[2]
      if type(v) == "number" then v = tostring(v) end
      if type(n) ~= "string" or type(v) ~= "string" then
        error("testbed.new: headers[" .. i .. "] must be {name, value}", 3)
      end
      if not name_ok(n) then return refused("header name '%s' is not a token", n) end
      if not value_ok(v) then return refused("the value of header '%s' has a control character", n) end
      list[#list + 1] = { n, v }
    end
    local host_hdr
    for _, h in ipairs(list) do
      if h[1]:lower() == "host" then
        if host_hdr then return refused("more than one Host header") end
        host_hdr = h[2]
      end
    end
    local src = st.target.authority or host_hdr
    st.host = ""
    if src then
      st.host = host_normalize(src)
      if not st.host then return refused("Host '%s' is malformed", src) end
    end
    st.client_addr = spec.client_addr or "127.0.0.1"
    if not ip_ok(st.client_addr) then
      error("testbed.new: client_addr '" .. st.client_addr .. "' is not an IP address", 3)
    end
    st.client_port = spec.client_port or 40000
    if type(st.client_port) ~= "number" or st.client_port % 1 ~= 0 or st.client_port < 1 or st.client_port > 65535 then
      error("testbed.new: client_port must be an integer from 1 to 65535", 3)
    end
    st.listener = spec.listener or "edge"
    if #st.listener >= 64 then error("testbed.new: listener name too long", 3) end
    for _, h in ipairs(list) do
      if h[1]:lower() == "content-length" then st.content_length = tonumber(h[2]) end
      if h[1]:lower() == "transfer-encoding" then st.chunked = true end
    end
    if st.chunked then st.content_length = nil end
    local named_host
    st.headers, named_host = strip_hop_by_hop(list)
    if named_host then return refused("a Connection header names %s", "Host") end
    st.respond_headers = {}
    -- the upstream's response (conn.rheaders, conn.ustatus) and what was sent (req.status, req.bytes_out)
    st.rheaders, st.ustatus, st.status, st.bytes_out = {}, 0, 0, 0
    return st
  end

  -- As testbed.set_response: the response as proxy.c has it when the
  -- response hook runs, or (with bytes) when the log hook runs.
  function B.set_response(st, status, headers, bytes)
    local list = {}
    for _, h in ipairs(headers) do
      if not name_ok(h[1]) then return nil, string.format("header name '%s' is not a token", h[1]) end
      if not value_ok(h[2]) then
        return nil, string.format("the value of header '%s' has a control character", h[1])
      end
      list[#list + 1] = { h[1], h[2] }
    end
    st.rheaders, st.ustatus = list, status
    st.status, st.bytes_out = bytes and status or 0, bytes or 0
    return true
  end
  function B.strip_response(st) st.rheaders = strip_hop_by_hop(st.rheaders) end
  function B.response_head(st)
    local out = {}
    for i, h in ipairs(st.rheaders) do out[i] = { h[1], h[2] } end
    return st.ustatus, out
  end

  function B.enter(st, hook) current, current_hook = st, hook or "route" end
  function B.leave() current = nil end
  function B.headers(st)
    local out = {}
    for i, h in ipairs(st.headers) do out[i] = { h[1], h[2] } end
    return out
  end
  function B.response(st)
    if not st.respond_status then return nil end
    local hs = {}
    for i, h in ipairs(st.respond_headers) do hs[i] = { h[1], h[2] } end
    return st.respond_status, st.respond_body, hs
  end

  -- core/lua_api.c
  local FIELDS = { [0] = "method", "host", "path", "query", "uri", "client_addr", "listener" }
  local function ffi_req(id) return current and current.id == id and current or nil end

  local function req_str(id, field)
    local r = ffi_req(id)
    if not r then return EGONE end
    local k = FIELDS[field]
    if k == "path" then return 1, r.target.path end
    if k == "query" then return r.target.query and 1 or 0, r.target.query end
    if k == "uri" then return 1, r.url end
    if k then return 1, r[k] end
    return EINVAL
  end
  local function req_client_port(id)
    local r = ffi_req(id)
    return r and r.client_port or EGONE
  end
  -- fy_headers_find, fy_headers_remove and fy_headers_add on a list of {name, value}
  local function list_get(list, name, nth)
    local lname = name:lower()
    for _, h in ipairs(list) do
      if h[1]:lower() == lname then
        if nth == 0 then return 1, h[2] end
        nth = nth - 1
      end
    end
    return 0
  end
  local function list_set(list, mode, name, val) -- mode 0 set, 1 add, 2 remove; returns the new list
    if mode ~= 1 then
      local keep, lname = {}, name:lower()
      for _, h in ipairs(list) do
        if h[1]:lower() ~= lname then keep[#keep + 1] = h end
      end
      list = keep
    end
    if mode ~= 2 then list[#list + 1] = { name, val } end
    return list
  end
  local function header_get(id, name, nth)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not name_ok(name) then return EINVAL end
    return list_get(r.headers, name, nth)
  end
  local function header_set(id, mode, name, val)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not name_ok(name) or (mode ~= 2 and not value_ok(val)) then return EINVAL end
    r.headers = list_set(r.headers, mode, name, val)
    return 0
  end

  -- the response, for the response and log hooks (fy_ffi_res_*)
  local function res_phase(edit) return current_hook == "response" or (not edit and current_hook == "log") end
  local function res_info(id)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not res_phase(false) then return EPHASE end
    return 0, r.status ~= 0 and r.status or r.ustatus, r.bytes_out
  end
  local function res_header_get(id, name, nth)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not res_phase(false) then return EPHASE end
    if not name_ok(name) then return EINVAL end
    return list_get(r.rheaders, name, nth)
  end
  local function res_header_set(id, mode, name, val)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not res_phase(true) then return EPHASE end
    if not name_ok(name) or (mode ~= 2 and not value_ok(val)) then return EINVAL end
    if is_hop_by_hop(name) then return EINVAL end -- framing is ferry's
    r.rheaders = list_set(r.rheaders, mode, name, val)
    return 0
  end
  local function respond_header(id, name, val)
    local r = ffi_req(id)
    if not r then return EGONE end
    if not name_ok(name) or not value_ok(val) then return EINVAL end
    if is_hop_by_hop(name) then return 0 end
    r.respond_headers[#r.respond_headers + 1] = { name, val }
    return 0
  end
  local function respond(id, status, body)
    local r = ffi_req(id)
    if not r then return EGONE end
    if current_hook ~= "route" then return EINVAL - 1 end -- only route may answer
    if r.respond_status then return EPHASE end
    if status < 200 or status > 599 then return EINVAL end
    r.respond_status, r.respond_body = status, body
    return 0
  end

  -- lua/ferry/core.lua's handle, over the functions above
  local RESPONDED = setmetatable({}, { __tostring = function() return "response" end })
  local failures = {
    [-1] = "request is gone (a req handle is only valid during its hook)",
    [-2] = "not allowed here",
    [-3] = "invalid argument",
  }
  local function check(rc, what, level)
    if rc < 0 then error(what .. ": " .. failures[rc], level or 3) end
    return rc
  end
  local FIELD_NO = { method = 0, host = 1, path = 2, query = 3, uri = 4, client_addr = 5, listener = 6 }

  local function header_name(name, what)
    if type(name) ~= "string" then error(what .. ": header name must be a string", 3) end
    return name
  end
  -- ferry.core's headers_class: a view over one header list, get and set
  -- being its pair of functions above, prefix naming it in error messages.
  local function headers_class(get, set, prefix)
    local m = {}
    local what = { get = prefix .. ":get", get_all = prefix .. ":get_all", set = prefix .. ":set",
                   add = prefix .. ":add", remove = prefix .. ":remove" }
    function m:get(name)
      header_name(name, what.get)
      local rc, v = get(self._id, name, 0)
      check(rc, what.get)
      if rc == 0 then return nil end
      return v
    end
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
      check(set(self._id, mode, name, value), op, 4)
    end
    function m:set(name, value) edit(self, 0, name, value, what.set) end
    function m:add(name, value) edit(self, 1, name, value, what.add) end
    function m:remove(name) edit(self, 2, name, nil, what.remove) end
    return { __index = m }
  end
  local headers_mt = headers_class(header_get, header_set, "headers")
  local res_headers_mt = headers_class(res_header_get, res_header_set, "res.headers")

  -- ferry.core's res handle
  local res_mt = {}
  function res_mt.__index(self, k)
    if k == "status" or k == "bytes" then
      local rc, status, bytes = res_info(self._id)
      check(rc, "res." .. k)
      if k == "status" then return status end
      return bytes
    end
    if k == "headers" then
      local h = setmetatable({ _id = self._id }, res_headers_mt)
      rawset(self, k, h)
      return h
    end
    return nil
  end

  local req_methods = {}
  function req_methods:respond(status, body, headers)
    if type(status) ~= "number" or status % 1 ~= 0 or status < 200 or status > 599 then
      error("req:respond: status must be an integer from 200 to 599", 2)
    end
    if body == nil then body = "" end
    if type(body) ~= "string" then error("req:respond: body must be a string", 2) end
    if headers ~= nil and type(headers) ~= "table" then error("req:respond: headers must be a table", 2) end
    local rc = respond(self._id, status, body)
    if rc == -2 then error("req:respond: the request was already answered", 2) end
    if rc == -4 then error("req:respond: only route(req) may answer a request", 2) end
    check(rc, "req:respond")
    for k, v in pairs(headers or {}) do
      k, v = tostring(k), tostring(v)
      check(respond_header(self._id, k, v), "req:respond: header " .. k)
    end
    return RESPONDED
  end

  local req_mt = {}
  function req_mt.__index(self, k)
    local f = FIELD_NO[k]
    if f then
      local rc, s = req_str(self._id, f)
      check(rc, "req." .. k)
      local v = rc == 1 and s or nil
      rawset(self, k, v)
      return v
    end
    if k == "client_port" then
      local v = check(req_client_port(self._id), "req.client_port")
      rawset(self, k, v)
      return v
    end
    if k == "content_length" then
      local r = ffi_req(self._id)
      check(r and 0 or EGONE, "req.content_length")
      rawset(self, k, r.content_length)
      return r.content_length
    end
    if k == "headers" then
      local h = setmetatable({ _id = self._id }, headers_mt)
      rawset(self, k, h)
      return h
    end
    if k == "ctx" then
      local t = {}
      rawset(self, k, t)
      return t
    end
    if k == "proxy" or k == "tls" then -- a fresh table per handle, as ferry.core builds one
      local r = ffi_req(self._id)
      check(r and 0 or EGONE, "req." .. k)
      local v = copy(r[k])
      if v ~= nil then rawset(self, k, v) end
      return v
    end
    if k == "id" then return self._id end
    return req_methods[k]
  end
  function req_mt.__tostring(self) return "ferry request " .. string.format("%d", self._id) end

  B.RESPONDED = RESPONDED
  function B.handle(st) return setmetatable({ _id = st.id, ctx = st.ctx }, req_mt) end
  function B.res_handle(st) return setmetatable({ _id = st.id }, res_mt) end
  return B
end

-- Backend "ferry": the runtime's own request, inside `ferry test` -------------

local function ferry_backend(testbed)
  local core = require "ferry.core"
  local B = { name = "ferry", RESPONDED = core.RESPONDED }
  function B.new(spec)
    local ud, err = testbed.new(spec)
    if not ud then return nil, err end
    return { ud = ud, id = testbed.id(ud) }
  end
  function B.enter(st, hook) testbed.enter(st.ud, hook) end
  function B.leave() testbed.leave() end
  function B.headers(st) return testbed.headers(st.ud) end
  function B.response(st) return testbed.response(st.ud) end
  function B.set_response(st, status, headers, bytes) return testbed.set_response(st.ud, status, headers, bytes) end
  function B.strip_response(st) testbed.strip_response(st.ud) end
  function B.response_head(st) return testbed.response_head(st.ud) end
  function B.res_handle(st) return setmetatable({ _id = st.id }, core.res_mt) end -- as ferry.core's notify
  -- The testbed's request has no connection behind it, so the PROXY and TLS
  -- information a spec gives (t.request's proxy and tls) is handed out here,
  -- in the shape ferry.core gives it; every other field is ferry.core's own,
  -- and so are req.proxy and req.tls of a request made without them.
  local ffi = require "ffi"
  local core_index = core.req_mt.__index
  local handle_state = setmetatable({}, { __mode = "k" })
  local handle_mt = { __tostring = core.req_mt.__tostring }
  function handle_mt.__index(self, k)
    local st = handle_state[self]
    if (k == "proxy" or k == "tls") and st and st[k] ~= nil then
      if ffi.C.fy_ffi_req_client_port(self._id) < 0 then -- gone: ferry.core's check and message
        error("req." .. k .. ": request is gone (a req handle is only valid during its hook)", 2)
      end
      local v = copy(st[k])
      rawset(self, k, v)
      return v
    end
    return core_index(self, k)
  end
  function B.handle(st)
    local h = setmetatable({ _id = st.id, ctx = st.ctx }, handle_mt)
    handle_state[h] = st
    return h
  end
  return B
end

local has_testbed, testbed = pcall(require, "ferry.testbed")
local B = has_testbed and ferry_backend(testbed) or lua_backend()

-- "ferry" inside `ferry test`, "lua" under a plain busted.
M.backend = B.name
if has_testbed then
  M._rules.c = { name_ok = testbed.name_ok, value_ok = testbed.value_ok, is_hop_by_hop = testbed.is_hop_by_hop,
                 host_normalize = testbed.host_normalize }
end

-- Requests -------------------------------------------------------------------

local states = setmetatable({}, { __mode = "k" }) -- spec view -> request state

-- The request made current (fy_hook_current.req) and its hook (fy_hook_current.hook); saved and
-- put back around each use, so a spec's view can be read even from inside
-- a hook.
local active, active_hook
local function enter(st, hook)
  local prev, prev_hook = active, active_hook
  active, active_hook = st, hook
  B.enter(st, hook)
  return prev, prev_hook
end
local function restore(prev, prev_hook)
  active, active_hook = prev, prev_hook
  if prev then B.enter(prev, prev_hook) else B.leave() end
end

-- Runs fn(handle, ...) as ferry runs a hook: a fresh handle, valid only
-- during the call, under xpcall with a traceback. Returns pack(xpcall(...)).
-- hook is the phase, "route" (the default), "response" or "log".
local function run_hook_as(hook, req, fn, ...)
  local st = states[req]
  if not st then return pack(xpcall(fn, traceback, req, ...)) end -- a table the spec made itself
  local h = B.handle(st)
  local prev, prev_hook = enter(st, hook)
  local r = pack(xpcall(fn, traceback, h, ...))
  restore(prev, prev_hook)
  return r
end
local function run_hook(req, fn, ...) return run_hook_as("route", req, fn, ...) end

-- The spec's view: each access reads the request through a fresh handle.
local function through(st, f, ...)
  local prev, prev_hook = enter(st, "route")
  local r = pack(pcall(f, B.handle(st), ...))
  restore(prev, prev_hook)
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

local view_headers_mt = {
  __index = function(self, method)
    return function(_, ...)
      return through(self._st, function(h, ...) return h.headers[method](h.headers, ...) end, ...)
    end
  end,
}

local view_mt = {
  __index = function(self, k)
    local st = states[self]
    if k == "headers" then return setmetatable({ _st = st }, view_headers_mt) end
    if k == "ctx" then return st.ctx end
    if k == "respond" then
      return function(_, ...) return through(st, function(h, ...) return h:respond(...) end, ...) end
    end
    return through(st, function(h) return h[k] end)
  end,
  __tostring = function(self) return "ferry test request " .. string.format("%d", states[self].id) end,
}

local next_id = 0

-- PROXY protocol information (t.request's proxy) --------------------------

-- What core/proxy_protocol.c keeps of a TLV: 1 to size-1 printable ASCII
-- bytes without spaces.
local function tlv_text(s, size)
  return type(s) == "string" and #s >= 1 and #s < size and not s:find("[^\33-\126]")
end

local function is_v6(addr) return addr:find(":", 1, true) ~= nil end

local PROXY_KEYS = { "version", "local", "source", "source_port", "destination", "destination_port",
                     "vpce_id", "authority", "alpn" }
local PROXY_KNOWN = {}
for _, k in ipairs(PROXY_KEYS) do PROXY_KNOWN[k] = true end

local function proxy_port(v, what)
  if v ~= nil and (type(v) ~= "number" or v % 1 ~= 0 or v < 1 or v > 65535) then
    error("t.request: " .. what .. " must be an integer from 1 to 65535", 4)
  end
  return v
end

-- The proxy table as ferry.core gives it for opts.proxy, and the client
-- address and port ferry then uses (a PROXY header's source replaces the
-- socket's, except in a LOCAL header). Errors name the line of t.request's caller.
local function make_proxy(opts)
  local p = opts.proxy
  if p == nil then return nil, opts.client_addr, opts.client_port end
  if type(p) ~= "table" then error("t.request: proxy must be a table, e.g. { vpce_id = 'vpce-...' }", 3) end
  for k in pairs(p) do
    if not PROXY_KNOWN[k] then
      error("t.request: proxy." .. tostring(k) .. ": unknown key (" .. table.concat(PROXY_KEYS, ", ") .. ")", 3)
    end
  end
  local version = p.version or 2
  if version ~= 1 and version ~= 2 then error("t.request: proxy.version must be 1 or 2", 3) end
  if p["local"] ~= nil and type(p["local"]) ~= "boolean" then error("t.request: proxy.local must be a boolean", 3) end
  if p["local"] then
    if version ~= 2 then error("t.request: proxy.local: LOCAL is a PROXY protocol v2 command", 3) end
    for _, k in ipairs(PROXY_KEYS) do
      if k ~= "version" and k ~= "local" and p[k] ~= nil then
        error("t.request: proxy." .. k .. ": ferry reads nothing but the command of a LOCAL header "
              .. "(a load balancer's health check): req.proxy is { version = 2, local = true }", 3)
      end
    end
    return { version = 2, ["local"] = true }, opts.client_addr, opts.client_port
  end
  if version == 1 then
    for _, k in ipairs { "vpce_id", "authority", "alpn" } do
      if p[k] ~= nil then error("t.request: proxy." .. k .. ": a v1 header has no TLVs", 3) end
    end
  end
  -- ferry takes the client's address from the header: client_addr is proxy.source.
  for _, pair in ipairs { { "source", "client_addr" }, { "source_port", "client_port" } } do
    local a, b = p[pair[1]], opts[pair[2]]
    if a ~= nil and b ~= nil and a ~= b then
      error("t.request: proxy." .. pair[1] .. " and " .. pair[2] .. " differ, but ferry takes the client's "
            .. "address from the PROXY header: give one of them", 3)
    end
  end
  local source = p.source or opts.client_addr or "127.0.0.1"
  local source_port = proxy_port(p.source_port or opts.client_port or 40000, "proxy.source_port")
  local destination = p.destination or (is_v6(source) and "::1" or "127.0.0.1")
  for what, addr in pairs { source = source, destination = destination } do
    if type(addr) ~= "string" or not ip_ok(addr) then
      error("t.request: proxy." .. what .. " '" .. tostring(addr) .. "' is not an IP address", 3)
    end
  end
  if is_v6(source) ~= is_v6(destination) then
    error("t.request: proxy.source and proxy.destination: one header's addresses are of one family", 3)
  end
  if p.vpce_id ~= nil and not tlv_text(p.vpce_id, 64) then
    error("t.request: proxy.vpce_id: ferry closes a connection whose PROXY header has this endpoint id "
          .. "(1 to 63 printable characters, no spaces)", 3)
  end
  return {
    version = version, ["local"] = false, source = source, source_port = source_port,
    destination = destination, destination_port = proxy_port(p.destination_port or 80, "proxy.destination_port"),
    vpce_id = p.vpce_id,
    -- as ferry, drops an authority or ALPN that is not short printable text
    authority = tlv_text(p.authority, 256) and p.authority or nil,
    alpn = tlv_text(p.alpn, 64) and p.alpn or nil,
  }, source, source_port
end

-- TLS information (t.request's tls), as an https listener gives it --------

local TLS_STRINGS = { sni = true, version = true, cipher = true, alpn = true, client_subject = true }
local TLS_BOOLEANS = { client_verified = true, resumed = true }

local function make_tls(x)
  if x == nil then return nil end
  if type(x) ~= "table" then error("t.request: tls must be a table, e.g. { sni = 'metrics.observability.internal' }", 3) end
  for k, v in pairs(x) do
    if TLS_STRINGS[k] then
      if type(v) ~= "string" then error("t.request: tls." .. k .. " must be a string", 3) end
    elseif TLS_BOOLEANS[k] then
      if type(v) ~= "boolean" then error("t.request: tls." .. k .. " must be a boolean", 3) end
    else
      error("t.request: tls." .. tostring(k) .. ": unknown key (sni, version, cipher, alpn, client_subject, "
            .. "client_verified, resumed)", 3)
    end
  end
  if x.client_verified and not x.client_subject then
    error("t.request: tls.client_verified without tls.client_subject: a verified client certificate has a subject", 3)
  end
  return {
    -- as core/tls.c: lower-cased, and none unless 1 to 255 bytes
    sni = x.sni and #x.sni >= 1 and #x.sni < 256 and x.sni:lower() or nil, version = x.version or "TLSv1.2", cipher = x.cipher or "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
    alpn = x.alpn, client_subject = x.client_subject, client_verified = x.client_verified or false,
    resumed = x.resumed or false,
  }
end

-- Appends the headers of a spec's table to list: a list { { name, value }, ... }
-- (kept in order), then the name = value (or name = { values }) entries,
-- sorted by name for a stable order. Returns list.
local function header_list(hs, list)
  hs = hs or {}
  for _, h in ipairs(hs) do list[#list + 1] = { h[1], h[2] } end
  local names = {}
  for k in pairs(hs) do
    if type(k) == "string" then names[#names + 1] = k end
  end
  table.sort(names) -- a stable order for tables keyed by name
  for _, k in ipairs(names) do
    local v = hs[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do list[#list + 1] = { k, x } end
    else
      list[#list + 1] = { k, v }
    end
  end
  return list
end

--[[ t.request{...} -> a request. Every field is optional:
  method = "GET", path = "/" (may carry "?query"), query = "a=b" (appended to path),
  target = "http://host/path" (the request target as sent; instead of path/query),
  host = "metrics.observability.internal" (sent as the Host header),
  no_host_header = true (no Host header: req.host is "" unless target is absolute-form),
  headers = { ["X-Name"] = "v", ["X-Many"] = { "a", "b" } } or { { "X-Name", "v" }, ... },
  client_addr = "127.0.0.1", client_port = 40000, listener = "edge", id = <a new number>,
  proxy = { vpce_id = "vpce-...", source = "10.1.2.3", ... } or { ["local"] = true }
    (req.proxy: the PROXY protocol header of a listener with proxy_protocol),
  tls = { sni = "metrics.observability.internal", ... } (req.tls: an https listener's TLS)
A request ferry would refuse before any hook (bad header, malformed Host, two
Host headers...) raises "ferry answers 400 before any hook runs: ...". ]]
function M.request(opts)
  opts = opts or {}
  local list = {}
  if opts.host ~= nil and not opts.no_host_header then list[1] = { "Host", opts.host } end
  if opts.host ~= nil and opts.no_host_header then
    error("t.request: host and no_host_header: a request without a Host header gets its host from an "
          .. "absolute-form target, e.g. target = 'http://host/path'", 2)
  end
  header_list(opts.headers, list)
  local target = opts.target
  if target == nil then
    target = opts.path or "/"
    if opts.query then target = target .. "?" .. opts.query end
  end
  local proxy, client_addr, client_port = make_proxy(opts)
  local tls = make_tls(opts.tls)
  if opts.id == nil then next_id = next_id + 1 end
  local st, err = B.new {
    method = opts.method, target = target, headers = list, client_addr = client_addr,
    client_port = client_port, listener = opts.listener, id = opts.id or next_id,
  }
  if not st then error("t.request: " .. err, 2) end
  st.ctx, st.proxy, st.tls = {}, proxy, tls
  local view = setmetatable({}, view_mt)
  states[view] = st
  return view
end

-- t.headers(req) -> the request's headers as they are now, {{name, value}, ...}
-- in order: what the client sent, less the hop-by-hop ones, with the edits of
-- the hooks that ran. (ferry then writes Host, X-Forwarded-For and
-- X-Forwarded-Proto itself when it forwards the request.)
function M.headers(req)
  local st = assert(states[req], "t.headers: not a request made by t.request")
  return B.headers(st)
end

-- Hooks ----------------------------------------------------------------------

local function known(groups, name)
  if not groups then return true end
  for _, g in ipairs(groups) do
    if g == name then return true end
  end
  return false
end

local function header_map(list)
  local out = {}
  for _, h in ipairs(list or {}) do out[h[1]] = h[2] end
  return out
end

-- t.route(policy, req, groups) -> decision table (see the top of this file).
-- groups, when given, lists the config's upstream group names: a name outside
-- it is an error, as at run time. As at run time the decision is what route
-- returns: req:respond() answers only when its result is returned. A second
-- value returned with a group name is the balancing key: { group =, key = }.
function M.route(policy, req, groups)
  local r = run_hook(req, policy.route)
  if not r[1] then return { error = tostring(r[2]) } end
  local res, key = r[2], r[3]
  if res == B.RESPONDED then
    local st = states[req]
    if not st then return { error = "t.route: a response from a request not made by t.request" } end
    local status, body, headers = B.response(st)
    return { status = status, body = body, headers = header_map(headers) }
  end
  if type(res) == "string" then
    if known(groups, res) then
      if key ~= nil then return { group = res, key = tostring(key) } end
      return { group = res }
    end
    return { error = "route returned unknown upstream group '" .. res .. "'" }
  end
  return { error = "route must return an upstream group name or req:respond(...), got " .. type(res) }
end

-- t.failure(kind [, fields]) -> the failure table a retry hook gets:
-- { kind = kind, status = n or nil, server = name or nil }.
--   "connect_refused", "connect_timeout", "tls_handshake", "reset", "timeout", "bad_response"
--                                            kind as given, no status
--   { status = 503 }                         kind = "status", status = 503
-- fields (or the other keys of the table form) add or override keys, e.g.
-- t.failure("timeout", { server = "10.0.0.1:80" }).
local KINDS = { connect_refused = true, connect_timeout = true, reset = true, timeout = true,
                bad_response = true, tls_handshake = true }

function M.failure(kind, fields)
  local out
  if type(kind) == "table" then
    if type(kind.status) ~= "number" or kind.status < 100 or kind.status > 599 or kind.status % 1 ~= 0 then
      error("t.failure: a status failure needs status = 100..599", 2)
    end
    out = { kind = "status", status = kind.status }
    fields = fields or kind
  elseif KINDS[kind] then
    out = { kind = kind }
  else
    error("t.failure: unknown kind '" .. tostring(kind) .. "' (connect_refused, connect_timeout, tls_handshake, reset, timeout, bad_response or { status = n })", 2)
  end
  for k, v in pairs(fields or {}) do out[k] = v end
  return out
end

-- t.retry(policy, req, attempt, failure) -> true or false: whether ferry
-- would try again (a true value returned by retry(req, attempt, failure));
-- false when the policy has no retry hook. nil and the message (with
-- traceback) when the hook raised: ferry logs it and does not retry.
function M.retry(policy, req, attempt, failure)
  if policy.retry == nil then return false end
  local r = run_hook(req, policy.retry, attempt, failure)
  if not r[1] then return nil, tostring(r[2]) end
  return r[2] and true or false
end

-- What select(req, group, attempt) returning nil means: the configured balancer picks.
M.BALANCER = "(balancer)"

-- The group a select hook gets, as ferry builds it:
--   { name = "metrics", servers = { { name = "alb-a:80", address = "10.0.0.1:80", weight = 1,
--       active = 0, healthy = true, fails = 0, latency_ms = 0 }, ... } }
-- group is a list of servers or { name = ..., servers = { ... } }; a server is
-- "host:port" (its name and address) or a table of the fields above (address
-- defaults to name, the others to the values shown).
local function make_group(group)
  if type(group) ~= "table" then error("a group is a list of servers or { name =, servers = }", 3) end
  local list = group.servers or group
  local g = { name = group.name or "group", servers = {} }
  for i, s in ipairs(list) do
    local server = { weight = 1, active = 0, healthy = true, fails = 0, latency_ms = 0, _index = i - 1 }
    if type(s) == "string" then
      server.name = s
    else
      for k, v in pairs(s) do server[k] = v end
    end
    server.address = server.address or server.name
    g.servers[i] = server
  end
  if #g.servers == 0 then error("a group needs at least one server", 3) end
  return g
end

-- As ferry.core.select: a server table of the group, a string that is the
-- address of one, or nil for the balancer. Returns its name, M.BALANCER, or
-- nil and ferry's message.
local function select_once(policy, req, g, attempt)
  if type(policy.select) ~= "function" then return nil, "the policy has no select hook" end
  local r = run_hook(req, policy.select, g, attempt)
  if not r[1] then return nil, tostring(r[2]) end
  local res = r[2]
  if res == nil then return M.BALANCER end
  if type(res) == "table" and res._index then
    local s = g.servers[res._index + 1]
    if s then return s.name end
  end
  if type(res) == "string" then
    for _, s in ipairs(g.servers) do
      if s.address == res then return s.name end
    end
    return nil, "select returned '" .. res .. "', which is not an address of group " .. g.name
  end
  return nil, "select must return a server of the group (or nil), got " .. type(res)
end

-- t.select(policy, req, group, attempt) -> the chosen server's name, M.BALANCER,
-- or nil and a message.
function M.select(policy, req, group, attempt)
  return select_once(policy, req, make_group(group), attempt or 1)
end

-- t.draw(policy, req_or_factory, group, n) -> { [server name] = count, ... }
-- Calls select(req, group, 1) n times (req_or_factory(i) gives the request
-- of draw i when it is a function) and counts the picks; every server of the
-- group is in the result, 0 when never picked, and nil answers count under
-- M.BALANCER. Raises if a draw fails.
function M.draw(policy, req, group, n)
  local g = make_group(group)
  local counts = {}
  for _, s in ipairs(g.servers) do counts[s.name] = 0 end
  for i = 1, n or 1000 do
    local r = type(req) == "function" and req(i) or req
    local name, err = select_once(policy, r, g, 1)
    if not name then error("t.draw: draw " .. i .. ": " .. err, 2) end
    counts[name] = (counts[name] or 0) + 1
  end
  return counts
end

-- The response and log hooks -----------------------------------------------

local function state_of(req, who)
  local st = states[req]
  if not st then error(who .. ": req must be a request made by t.request", 3) end
  return st
end

-- The response a spec gives (res of t.response and t.log) -> status, a list
-- {{name, value}, ...}, and for t.log the bytes sent. Errors name the line of
-- the caller of t.response / t.log.
local function response_spec(res, who)
  local log = who == "t.log"
  if res == nil then res = {} end
  if type(res) ~= "table" then
    error(who .. ": res must be a table, e.g. { status = 200, headers = { { 'Content-Type', 'text/plain' } } }", 3)
  end
  for k in pairs(res) do
    if k ~= "status" and k ~= "headers" and not (log and k == "bytes") then
      error(who .. ": res." .. tostring(k) .. ": unknown key (" .. (log and "status, bytes, headers" or "status, headers")
            .. ")", 3)
    end
  end
  local status = res.status == nil and 200 or res.status
  if type(status) ~= "number" or status % 1 ~= 0 or status < 200 or status > 999 then
    error(who .. ": res.status must be an integer from 200 to 999 (no hook sees a 1xx response)", 3)
  end
  local bytes
  if log then
    bytes = res.bytes == nil and 0 or res.bytes
    if type(bytes) ~= "number" or bytes % 1 ~= 0 or bytes < 0 or bytes >= 2 ^ 53 then
      error(who .. ": res.bytes must be a whole number", 3)
    end
  end
  if res.headers ~= nil and type(res.headers) ~= "table" then
    error(who .. ": res.headers must be a table: { { name, value }, ... } or { [name] = value }", 3)
  end
  local list = header_list(res.headers, {})
  for _, h in ipairs(list) do
    if type(h[2]) == "number" then h[2] = tostring(h[2]) end
    if type(h[1]) ~= "string" or type(h[2]) ~= "string" then
      error(who .. ": res.headers: " .. tostring(h[1]) .. ": a header is a name and a value, both strings", 3)
    end
  end
  return status, list, bytes
end

-- Puts the response where ferry keeps it for the hook; raises, naming the
-- caller's line, when ferry would not take such a response from an upstream.
local function set_response(st, who, status, list, bytes)
  local ok, why = B.set_response(st, status, list, bytes)
  if not ok then
    error(who .. ": ferry refuses such an upstream response before any hook runs (a bad_response failure: "
          .. "a retry, or 502): " .. why, 3)
  end
end

-- t.response(policy, req, res) -> the response as ferry relays it after the
-- response hook: { status = N, headers = { { name, value }, ... } }, without
-- the hop-by-hop headers (ferry writes its own framing), or { error = message
-- with traceback } when the hook raised (ferry answers 500 instead). res is
-- the upstream's response: { status = 200, headers = { { name, value }, ... }
-- or { [name] = value } }. Without a response hook, the response as given.
function M.response(policy, req, res)
  local st = state_of(req, "t.response")
  local status, list = response_spec(res, "t.response")
  set_response(st, "t.response", status, list)
  if type(policy.response) == "function" then
    local r = run_hook_as("response", req, policy.response, B.res_handle(st))
    if not r[1] then return { error = tostring(r[2]) } end
  end
  B.strip_response(st) -- what ferry does as it writes the head
  local s, hs = B.response_head(st)
  return { status = s, headers = hs }
end

-- t.log(policy, req, res) -> true, or nil and the message (with traceback)
-- when the log hook raised (ferry logs it). res is what the exchange was:
-- { status = what the client got, bytes = bytes sent to it, headers = the
-- upstream's }, read-only in the hook as in ferry; the hop-by-hop headers are
-- gone, as ferry relayed the head before. true without a log hook.
function M.log(policy, req, res)
  local st = state_of(req, "t.log")
  local status, list, bytes = response_spec(res, "t.log")
  set_response(st, "t.log", status, list, bytes)
  B.strip_response(st)
  if type(policy.log) ~= "function" then return true end
  local r = run_hook_as("log", req, policy.log, B.res_handle(st))
  if not r[1] then return nil, tostring(r[2]) end
  return true
end

-- Policies -------------------------------------------------------------------

local HOOKS = { route = true, select = true, retry = true, response = true, log = true, route_stream = true }

-- t.load_policy(path) -> the policy's table, loaded as ferry.core.load_policy
-- does (the policy's directory is added to package.path, so it can require
-- modules next to it); raises with ferry's message when ferry would refuse it.
function M.load_policy(path)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local entry = dir .. "/?.lua;" .. dir .. "/?/init.lua;"
  if not package.path:find(entry, 1, true) then package.path = entry .. package.path end
  local chunk, err = loadfile(path)
  if not chunk then error(err, 2) end
  local ok, mod = pcall(chunk)
  if not ok then error(tostring(mod), 2) end
  if type(mod) ~= "table" then
    error(path .. ": a policy must return a table of hooks, got " .. type(mod), 2)
  end
  for name, v in pairs(mod) do
    if HOOKS[name] and type(v) ~= "function" then
      error(path .. ": hook '" .. tostring(name) .. "' must be a function, got " .. type(v), 2)
    end
  end
  if type(mod.route) ~= "function" then error(path .. ": the policy has no route(req) hook", 2) end
  return mod
end

return M
