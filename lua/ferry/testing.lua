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
--   t.metric(name, values...)         the count of a policy counter's series (ferry.metrics), 0 if none
--   t.reset_metrics()                 every policy counter back to no series (e.g. in before_each)
-- (route may also return a balancing key: { group = "metrics", key = "..." }).
--
-- One implementation: this module runs inside `ferry test`, where
-- ferry.testbed (core/test_cmd.c) builds each request as a real fy_req with
-- the C code that parses requests from the wire (a PROXY header a spec
-- describes is written out and read by ferry's parser), and every hook runs
-- through ferry.core's own functions (route_with, select_with, retry_with,
-- notify_with: the ones ferry run uses), with ferry.core's handles over the
-- fy_ffi_* calls, in that hook's phase. What is left here is the spec's side:
-- turning the tables a spec gives into requests, responses and groups, and
-- ferry.core's answers back into tables.
--
-- As at run time, a hook gets fresh handles (req, and res) that are valid
-- only while the hook runs (a handle kept after it raises "request is
-- gone"). What t.request returns is the spec's own view of the request: it
-- reads the same request at any time, so a spec can look at headers a hook
-- edited.

local M = {}

local pack = function(...) return { n = select("#", ...), ... } end

-- ferry.testbed is built into the ferry binary: the specs run under `ferry test`.
local has_testbed, testbed = pcall(require, "ferry.testbed")
if not has_testbed then
  error("ferry.testing runs inside ferry, where policies meet ferry's own C code: run the specs with "
        .. "`ferry test` (not a plain busted)", 0)
end
local core = require "ferry.core"

M.backend = "ferry" -- the one there is

-- Requests -------------------------------------------------------------------

local states = setmetatable({}, { __mode = "k" }) -- spec view -> { ud = testbed request, id = }

-- The request made current (fy_hook_current.req) and its hook (fy_hook_current.hook); saved and
-- put back around each use, so a spec's view can be read even from inside
-- a hook.
local active, active_hook
local function enter(st, hook)
  local prev, prev_hook = active, active_hook
  active, active_hook = st, hook
  testbed.enter(st.ud, hook)
  return prev, prev_hook
end
local function restore(prev, prev_hook)
  active, active_hook = prev, prev_hook
  if prev then testbed.enter(prev.ud, prev_hook) else testbed.leave() end
end

-- Calls fn(...) with st the request whose hook (phase) is running; returns what fn returns.
local function in_phase(st, hook, fn, ...)
  local prev, prev_hook = enter(st, hook)
  local r = pack(pcall(fn, ...))
  restore(prev, prev_hook)
  if not r[1] then error(r[2], 0) end
  return unpack(r, 2, r.n)
end

local function handle(st) return setmetatable({ _id = st.id }, core.req_mt) end

-- The spec's view: each access reads the request through a fresh ferry.core handle.
local function through(st, f, ...)
  return in_phase(st, "route", function(...) return f(handle(st), ...) end, ...)
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
    if k == "respond" then
      return function(_, ...) return through(st, function(h, ...) return h:respond(...) end, ...) end
    end
    return through(st, function(h) return h[k] end)
  end,
  __tostring = function(self) return "ferry test request " .. string.format("%d", states[self].id) end,
}

local next_id = 0

local function state_of(req, who)
  local st = states[req]
  if not st then error(who .. ": req must be a request made by t.request", 3) end
  return st
end

-- PROXY protocol information (t.request's proxy) --------------------------

local function is_v6(addr) return type(addr) == "string" and addr:find(":", 1, true) ~= nil end

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

-- The PROXY header opts.proxy describes, its defaults filled in, for
-- ferry.testbed to write out and parse. Errors name the line of t.request's caller.
local function make_proxy(opts)
  local p = opts.proxy
  if p == nil then return nil end
  if type(p) ~= "table" then error("t.request: proxy must be a table, e.g. { vpce_id = 'vpce-...' }", 3) end
  for k in pairs(p) do
    if not PROXY_KNOWN[k] then
      error("t.request: proxy." .. tostring(k) .. ": unknown key (" .. table.concat(PROXY_KEYS, ", ") .. ")", 3)
    end
  end
  local version = p.version or 2
  if version ~= 1 and version ~= 2 then error("t.request: proxy.version must be 1 or 2", 3) end
  if p["local"] ~= nil and type(p["local"]) ~= "boolean" then error("t.request: proxy.local must be a boolean", 3) end
  for _, k in ipairs { "source", "destination", "vpce_id", "authority", "alpn" } do
    if p[k] ~= nil and type(p[k]) ~= "string" then error("t.request: proxy." .. k .. " must be a string", 3) end
  end
  if p["local"] then
    if version ~= 2 then error("t.request: proxy.local: LOCAL is a PROXY protocol v2 command", 3) end
    for _, k in ipairs(PROXY_KEYS) do
      if k ~= "version" and k ~= "local" and p[k] ~= nil then
        error("t.request: proxy." .. k .. ": ferry reads nothing but the command of a LOCAL header "
              .. "(a load balancer's health check): req.proxy is { version = 2, local = true }", 3)
      end
    end
    return { version = 2, ["local"] = true }
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
  return {
    version = version, source = source,
    source_port = proxy_port(p.source_port or opts.client_port or 40000, "proxy.source_port"),
    destination = p.destination or (is_v6(source) and "::1" or "127.0.0.1"),
    destination_port = proxy_port(p.destination_port or 80, "proxy.destination_port"),
    vpce_id = p.vpce_id, authority = p.authority, alpn = p.alpn,
  }
end

-- TLS information (t.request's tls), as an https listener gives it --------

local TLS_STRINGS = { sni = true, version = true, cipher = true, alpn = true, client_subject = true }
local TLS_BOOLEANS = { client_verified = true, resumed = true }

-- The TLS session opts.tls describes, its defaults filled in, for ferry.testbed.
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
    sni = x.sni, version = x.version or "TLSv1.2", cipher = x.cipher or "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256",
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
Host headers...) raises "ferry answers 400 before any hook runs: ..." (or the
other status ferry refuses it with): ferry's own request reader reads it. ]]
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
  local proxy, tls = make_proxy(opts), make_tls(opts.tls)
  if opts.id == nil then next_id = next_id + 1 end
  local id = opts.id or next_id
  local ud, err = testbed.new {
    method = opts.method, target = target, headers = list, client_addr = opts.client_addr,
    client_port = opts.client_port, listener = opts.listener, id = id, proxy = proxy, tls = tls,
  }
  if not ud then error("t.request: " .. err, 2) end
  local st = { ud = ud, id = testbed.id(ud) }
  core.release(st.id) -- a new request: no req.ctx yet, even if an earlier one had this id
  local view = setmetatable({}, view_mt)
  states[view] = st
  return view
end

-- t.headers(req) -> the request's headers as they are now, {{name, value}, ...}
-- in order: what the client sent, less the hop-by-hop ones, with the edits of
-- the hooks that ran. (ferry then writes Host, X-Forwarded-For and
-- X-Forwarded-Proto itself when it forwards the request.)
function M.headers(req)
  return testbed.headers(state_of(req, "t.headers").ud)
end

-- Hooks ----------------------------------------------------------------------

local function header_map(list)
  local out = {}
  for _, h in ipairs(list or {}) do out[h[1]] = h[2] end
  return out
end

-- t.route(policy, req, groups) -> decision table (see the top of this file).
-- groups, when given, lists the config's upstream group names: a name outside
-- it is an error, as at run time; without it any name is a group. As at run
-- time the decision is what route returns: req:respond() answers only when
-- its result is returned. A second value returned with a group name is the
-- balancing key: { group =, key = }.
function M.route(policy, req, groups)
  local st = state_of(req, "t.route")
  core.set_groups(groups or {}, groups == nil)
  local g, err, key = in_phase(st, "route", core.route_with, policy, st.id)
  if g == core.NO_ANSWER then
    local status, body, headers = testbed.response(st.ud)
    return { status = status, body = body, headers = header_map(headers) }
  end
  if g == core.FAILED then return { error = err } end
  return { group = core.group_name(g), key = key }
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
    error("t.failure: unknown kind '" .. tostring(kind) .. "' (connect_refused, connect_timeout, tls_handshake, "
          .. "reset, timeout, bad_response or { status = n })", 2)
  end
  for k, v in pairs(fields or {}) do out[k] = v end
  return out
end

-- t.retry(policy, req, attempt, failure) -> true or false: whether ferry
-- would try again (a true value returned by retry(req, attempt, failure));
-- false when the policy has no retry hook. nil and the message (with
-- traceback) when the hook raised: ferry logs it and does not retry.
function M.retry(policy, req, attempt, failure)
  local st = state_of(req, "t.retry")
  if policy.retry == nil then return false end
  local rc, err = in_phase(st, "retry", core.retry_with, policy, st.id, attempt, failure)
  if rc == core.FAILED then return nil, err end
  return rc == 1
end

-- What select(req, group, attempt) returning nil means: the configured balancer picks.
M.BALANCER = "(balancer)"

-- The group a spec describes: a list of servers or { name = ..., servers = { ... } };
-- a server is "host:port" (its name and address) or a table of the fields of
-- ferry's view (address defaults to name; weight 1, active 0, healthy true,
-- fails 0, latency_ms 0). ferry.core builds the view the hook gets from it,
-- as it does from a generation's group.
local SERVER_KEYS = { name = "string", address = "string", weight = "number", active = "number",
                      healthy = "boolean", fails = "number", latency_ms = "number" }
local function make_group(group)
  if type(group) ~= "table" then error("a group is a list of servers or { name =, servers = }", 3) end
  local list = group.servers or group
  local g = { name = group.name or "group", servers = {} }
  for i, s in ipairs(list) do
    local server = { weight = 1, active = 0, healthy = true, fails = 0, latency_ms = 0 }
    if type(s) == "string" then
      server.name = s
    else
      for k, v in pairs(s) do
        if type(v) ~= SERVER_KEYS[k] then error("a group's server: " .. tostring(k) .. ": unknown key or wrong type", 3) end
        server[k] = v
      end
    end
    if type(server.name) ~= "string" then error("a group's server needs a name", 3) end
    server.address = server.address or server.name
    g.servers[i] = server
  end
  if #g.servers == 0 then error("a group needs at least one server", 3) end
  return g
end

-- The view ferry.core builds of group g (a made group).
local function group_view(g)
  return core.group_view_of(g.name, function(i, out)
    local s = g.servers[i + 1]
    if not s then return false end
    out.name, out.name_len, out.address, out.address_len = s.name, #s.name, s.address, #s.address
    out.weight, out.active, out.in_service, out.fails = s.weight, s.active, s.healthy and 1 or 0, s.fails
    out.latency_ms = s.latency_ms
    return true
  end)
end

-- select(req, group, attempt) through ferry.core: the chosen server's name,
-- M.BALANCER, or nil and ferry's message.
local function select_once(policy, req, g, attempt)
  if type(policy.select) ~= "function" then return nil, "the policy has no select hook" end
  local st = state_of(req, "t.select")
  local i, err = in_phase(st, "select", core.select_with, policy, st.id, group_view(g), attempt)
  if i == core.NO_ANSWER then return M.BALANCER end
  if i == core.FAILED then return nil, err end
  return g.servers[i + 1].name
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
  local ok, why = testbed.set_response(st.ud, status, list, bytes)
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
    local rc, err = in_phase(st, "response", core.notify_with, policy, "response", st.id)
    if rc == core.FAILED then return { error = err } end
  end
  testbed.strip_response(st.ud) -- what ferry does as it writes the head
  local s, hs = testbed.response_head(st.ud)
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
  testbed.strip_response(st.ud)
  if type(policy.log) ~= "function" then return true end
  local rc, err = in_phase(st, "log", core.notify_with, policy, "log", st.id)
  if rc == core.FAILED then return nil, err end
  return true
end

-- Policy counters (ferry.metrics): the C core's values under `ferry test`, ferry.metrics' own otherwise.

function M.metric(name, ...) return require("ferry.metrics").value(name, ...) end
function M.reset_metrics() require("ferry.metrics").reset() end

-- Policies -------------------------------------------------------------------

-- t.load_policy(path) -> the policy's table, loaded by ferry.core as ferry
-- loads it (the policy's directory is added to package.path, so it can
-- require modules next to it); raises with ferry's message when ferry would
-- refuse it.
function M.load_policy(path)
  local mod, err = core.compile_policy(path)
  if not mod then error(err, 2) end
  return mod
end

return M
