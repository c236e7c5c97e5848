-- ferry.config: loads a configuration file and checks it against the schema.
--
-- The file is a Lua chunk run in a sandbox; it returns a table. check() walks
-- that table with the schema below and returns a normalised copy (defaults
-- filled in, paths resolved against the config file's directory, upstream
-- groups as a sorted list) or the list of errors, each "file: key.path:
-- message". The C side reads only the normalised copy, so every rule about
-- what a config may say lives here, in one place.

local M = {}

local function dirname(path)
  return path:match("^(.*)/[^/]*$") or "."
end

local function resolve(base, path)
  if path:sub(1, 1) == "/" then return path end
  return base .. "/" .. path
end

-- host:port, where host is a name, an IPv4 address or [IPv6].
local function split_hostport(s)
  local host, port = s:match("^%[([%x:.]+)%]:(%d+)$")
  if not host then host, port = s:match("^([%w%.%-_]+):(%d+)$") end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then return nil end
  return host, port
end

local function check_hostport(v)
  if split_hostport(v) then return true end
  return false, "expected 'host:port' (IPv6 as '[addr]:port'), got '" .. v .. "'"
end

local function is_ipv4(s)
  local a, b, c, d = s:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return false end
  for _, o in ipairs({ a, b, c, d }) do -- no leading zeros: inet_pton refuses them (octal in some parsers)
    if #o > 3 or tonumber(o) > 255 or (#o > 1 and o:sub(1, 1) == "0") then return false end
  end
  return true
end

-- RFC 4291 text: eight groups of 1-4 hex digits, one "::" for a run of
-- zero groups, the last two groups possibly written as an IPv4 address.
local function is_ipv6(s)
  local groups = 8
  local v4 = s:match(":(%d+%.%d+%.%d+%.%d+)$")
  if v4 then
    if not is_ipv4(v4) then return false end
    s = s:sub(1, #s - #v4) .. "0"
    groups = 7
  end
  local head, tail = s:match("^(.-)::(.*)$")
  local parts = {}
  local function split(x)
    if x == "" then return true end
    for g in (x .. ":"):gmatch("(.-):") do
      if not g:match("^%x%x?%x?%x?$") then return false end
      parts[#parts + 1] = g
    end
    return true
  end
  if head then
    if tail:find("::", 1, true) or not split(head) or not split(tail) then return false end
    return #parts < groups
  end
  return split(s) and #parts == groups
end

-- A network: "10.0.0.0/8", "::1/128", or a bare address (all its bits).
local function check_cidr(v)
  local addr, bits = v:match("^([%x:.]+)/(%d+)$")
  addr = addr or v
  local max = is_ipv4(addr) and 32 or (is_ipv6(addr) and 128)
  if not max or (bits and tonumber(bits) > max) then
    return false, "expected an IPv4 or IPv6 network like '10.0.0.0/8', got '" .. v .. "'"
  end
  return true
end

-- A server: "host:port", or { address = "host:port", weight = N }.
local function check_server(v)
  if type(v) == "string" then return check_hostport(v) end
  for k in pairs(v) do
    if k ~= "address" and k ~= "weight" then return false, "unknown key '" .. tostring(k) .. "'" end
  end
  if type(v.address) ~= "string" then return false, "address: expected 'host:port'" end
  local ok, msg = check_hostport(v.address)
  if not ok then return false, "address: " .. msg end
  local w = v.weight
  if w ~= nil and (type(w) ~= "number" or w % 1 ~= 0 or w < 1 or w > 1000) then
    return false, "weight: expected an integer from 1 to 1000"
  end
  return true
end

-- A DNS name a certificate is for: "a.b.c", or "*.b.c" (one label).
local function check_tls_name(v)
  local rest = v:match("^%*%.(.+)$") or v
  if #v <= 253 and rest:match("^[%w%-]+[%w%-%.]*$") and not rest:find("..", 1, true) and rest:sub(-1) ~= "." then
    return true
  end
  return false, "expected a DNS name like 'metrics.example.internal' or '*.example.internal', got '" .. v .. "'"
end

-- Debian's bundle of the system's trusted CAs (package ca-certificates).
local SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"

local seconds = function(default) return { type = "number", min = 0.001, max = 86400, default = default } end
local bytes = function(default, min) return { type = "integer", min = min or 1, max = 1073741824, default = default } end

local schema = {
  type = "table",
  fields = {
    listeners = {
      type = "list", required = true, nonempty = true,
      item = {
        type = "table",
        fields = {
          name = { type = "string", check = function(v)
            return #v >= 1 and #v <= 63 and v:match("^[%w_%-%.]+$") ~= nil,
              "expected 1 to 63 letters, digits, '_', '-' or '.', got '" .. v .. "'"
          end },
          type = { type = "string", enum = { "http", "https", "tcp" }, default = "http" },
          address = { type = "string", required = true, check = check_hostport },
          policy = { type = "string" },
          proxy_protocol = { type = "table", fields = {
            trusted = { type = "list", required = true, nonempty = true,
                        item = { type = "string", check = check_cidr } },
          } },
          tls = { type = "table", fields = {
            certificates = { type = "list", required = true, nonempty = true, item = { type = "table", fields = {
              cert = { type = "string", required = true },
              key = { type = "string", required = true },
              names = { type = "list", item = { type = "string", check = check_tls_name } },
            } } },
            client_ca = { type = "string" },
            client_verify = { type = "string", enum = { "required", "optional" } },
            session_tickets = { type = "boolean", default = true },
            ciphers = { type = "list", nonempty = true, item = { type = "string" } },
          } },
        },
      },
    },
    upstreams = {
      type = "map",
      item = {
        type = "table",
        fields = {
          servers = { type = "list", required = true, nonempty = true,
                      item = { type = "server", check = check_server } },
          balance = { type = "string", enum = { "round_robin", "least_conn", "p2c", "hash" },
                      default = "round_robin" },
          retry = { type = "table", default = {}, fields = {
            tries = { type = "integer", min = 1, max = 10, default = 2 },
            statuses = { type = "list", default = { 502, 503, 504 }, check = function(v) return #v <= 16, "at most 16 statuses" end,
                         item = { type = "integer", min = 500, max = 599 } },
            backoff = { type = "number", min = 0, max = 10, default = 0.025 },
            deadline = { type = "number", min = 0, max = 3600, default = 0 },
            budget = { type = "number", min = 0, max = 1, default = 0.2 },
            min_retries = { type = "integer", min = 0, max = 100000, default = 3 },
            replay_buffer = bytes(1024 * 1024, 0),
          } },
          health = { type = "table", default = {}, fields = {
            max_fails = { type = "integer", min = 0, max = 1000, default = 5 },
            eject = { type = "number", min = 0.001, max = 3600, default = 10 },
            max_eject = { type = "number", min = 0.001, max = 86400, default = 300 },
            max_ejected = { type = "number", min = 0, max = 1, default = 0.5 },
            check = { type = "table", fields = {
              path = { type = "string", check = function(v)
                return v:match("^/[%w%-%._~!$&'()*+,;=:@/?%%]*$") ~= nil, "expected a path starting with '/'"
              end },
              interval = { type = "number", min = 0.05, max = 3600, default = 5 },
              timeout = { type = "number", min = 0.01, max = 600, default = 2 },
              rise = { type = "integer", min = 1, max = 100, default = 2 },
              fall = { type = "integer", min = 1, max = 100, default = 3 },
            } },
          } },
          timeouts = { type = "table", default = {}, fields = {
            connect = seconds(5), read = seconds(60), write = seconds(60),
          } },
          tls = { type = "table", fields = {
            verify = { type = "boolean", default = true },
            ca = { type = "string", default = SYSTEM_CA },
            server_name = { type = "string", check = check_tls_name },
            cert = { type = "string" },
            key = { type = "string" },
            ciphers = { type = "list", nonempty = true, item = { type = "string" } },
          } },
          proxy_protocol = { type = "string", enum = { "v1", "v2" } },
          keepalive = { type = "table", default = {}, fields = {
            max_idle = { type = "integer", min = 0, max = 100000, default = 32 },
            idle_timeout = seconds(50),
            -- How long the upstream itself keeps an idle connection (an AWS ALB: 60 s).
            upstream_idle_timeout = { type = "number", min = 0.001, max = 86400, default = 60 },
          } },
        },
      },
    },
    policy = { type = "string" },
    -- Worker threads; "auto": the CPUs this process may use (affinity and cgroup cpu.max).
    workers = { type = "workers", default = "auto", check = function(v)
      if v ~= "auto" and (v < 1 or v > 256) then return false, "expected an integer from 1 to 256 or \"auto\"" end
      return true
    end },
    limits = { type = "table", default = {}, fields = {
      max_request_line = bytes(8192, 64),
      max_header_bytes = bytes(32768, 256),
      max_headers = { type = "integer", min = 1, max = 10000, default = 100 },
      header_timeout = seconds(10),
      body_timeout = seconds(60),
      send_timeout = seconds(60),
      keepalive_timeout = seconds(75),
      -- How long the load balancer in front keeps an idle client connection (an AWS NLB: 350 s).
      client_lb_idle_timeout = { type = "number", min = 0.001, max = 86400, default = 350 },
      keepalive_requests = { type = "integer", min = 1, max = 1e9, default = 10000 },
      max_connections = { type = "integer", min = 1, max = 1e7, default = 10000 },
      stream_idle_timeout = seconds(300),
      hook_timeout = { type = "number", min = 0.001, max = 60, default = 0.05 },
      lua_memory = bytes(64 * 1024 * 1024, 1024 * 1024),
    } },
    admin = { type = "table", fields = {
      address = { type = "string", required = true, check = check_hostport },
    } },
    dns = { type = "table", default = {}, fields = {
      servers = { type = "list", item = { type = "string", check = check_hostport } },
      min_ttl = { type = "number", min = 0.1, max = 86400, default = 5 },
      max_ttl = { type = "number", min = 0.1, max = 86400, default = 300 },
      timeout = seconds(5),
    } },
    drain = { type = "table", default = {}, fields = {
      delay = { type = "number", min = 0, max = 3600, default = 0 },
      timeout = seconds(10),
    } },
    reload = { type = "table", default = {}, fields = {
      watch = { type = "boolean", default = false },
      debounce = { type = "number", min = 0.01, max = 60, default = 0.3 },
    } },
    log = { type = "table", default = {}, fields = {
      level = { type = "string", enum = { "debug", "info", "warn", "error" }, default = "info" },
      -- true (the defaults below), false (none), or a table.
      access = { type = "switch", default = true, fields = {
        format = { type = "string", enum = { "text", "json" }, default = "text" },
        file = { type = "string", check = function(v)
          if v == "" then return false, "must not be empty (leave it out for stderr)" end
          return true
        end },
        buffer = bytes(1024 * 1024, 64 * 1024),
      } },
    } },
  },
}

local function path_join(path, key)
  if type(key) == "number" then return path .. "[" .. key .. "]" end
  if path == "" then return key end
  return path .. "." .. key
end

local function is_list(t)
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

local check_value

local function check_fields(spec, value, path, errs)
  local out = {}
  for k in pairs(value) do
    if type(k) ~= "string" or not spec.fields[k] then
      errs[#errs + 1] = path_join(path, tostring(k)) .. ": unknown key"
    end
  end
  for k, fspec in pairs(spec.fields) do
    out[k] = check_value(fspec, value[k], path_join(path, k), errs)
  end
  return out
end

local kinds = {
  string = function(v) return type(v) == "string" end,
  number = function(v) return type(v) == "number" end,
  integer = function(v) return type(v) == "number" and v % 1 == 0 end,
  boolean = function(v) return type(v) == "boolean" end,
  server = function(v) return type(v) == "string" or type(v) == "table" end,
  table = function(v) return type(v) == "table" end,
  switch = function(v) return type(v) == "boolean" or type(v) == "table" end,
  list = function(v) return type(v) == "table" and is_list(v) end,
  map = function(v) return type(v) == "table" end,
  workers = function(v) return v == "auto" or (type(v) == "number" and v % 1 == 0) end,
}

local kind_names = {
  list = "a list", map = "a table of named entries", table = "a table", switch = "a boolean or a table",
  integer = "an integer", string = "a string", number = "a number", boolean = "a boolean",
  server = "'host:port' or { address = 'host:port', weight = N }",
  workers = "an integer from 1 to 256 or \"auto\"",
}

check_value = function(spec, value, path, errs)
  if value ~= value then -- NaN: every comparison with it is false, so no range would catch it
    errs[#errs + 1] = path .. ": expected a number, got NaN"
    return nil
  end
  if value == nil then
    if spec.required then errs[#errs + 1] = path .. ": required" end
    value = spec.default
    if value == nil then return nil end
  end
  if not kinds[spec.type](value) then
    errs[#errs + 1] = path .. ": expected " .. kind_names[spec.type] .. ", got " .. type(value)
    return nil
  end
  if type(value) == "string" and value:find("%z") then -- C would read a shorter string
    errs[#errs + 1] = path .. ": must not contain a NUL byte"
    return nil
  end
  if spec.min and value < spec.min then
    errs[#errs + 1] = path .. ": must be at least " .. spec.min
  elseif spec.max and value > spec.max then
    errs[#errs + 1] = path .. ": must be at most " .. spec.max
  end
  if spec.enum then
    local ok = false
    for _, e in ipairs(spec.enum) do ok = ok or e == value end
    if not ok then
      errs[#errs + 1] = path .. ": '" .. tostring(value) .. "' is not one of " .. table.concat(spec.enum, ", ")
    end
  end
  if spec.check then
    local ok, msg = spec.check(value)
    if not ok then errs[#errs + 1] = path .. ": " .. msg end
  end
  if spec.type == "table" then return check_fields(spec, value, path, errs) end
  if spec.type == "switch" then -- off, on with the defaults, or on with these settings
    if value == false then return false end
    return check_fields(spec, value == true and {} or value, path, errs)
  end
  if spec.type == "list" then
    if spec.nonempty and #value == 0 then errs[#errs + 1] = path .. ": must not be empty" end
    local out = {}
    for i, v in ipairs(value) do out[i] = check_value(spec.item, v, path_join(path, i), errs) end
    return out
  end
  if spec.type == "map" then
    local out = {}
    for k, v in pairs(value) do
      if type(k) ~= "string" or not k:match("^[%w_%-%.]+$") then
        errs[#errs + 1] = path_join(path, tostring(k)) .. ": names may use letters, digits, '_', '-', '.'"
      else
        out[k] = check_value(spec.item, v, path_join(path, k), errs)
      end
    end
    return out
  end
  return value
end

-- Settings that are valid but will cause errors in production.
local function warn_timeouts(cfg, warnings)
  local l = cfg.limits
  if l.keepalive_timeout >= l.client_lb_idle_timeout then
    warnings[#warnings + 1] = string.format("limits.keepalive_timeout: %g s is not below the %g s idle timeout of "
      .. "the load balancer in front (limits.client_lb_idle_timeout); it may reuse a connection ferry is closing "
      .. "and agents see resets", l.keepalive_timeout, l.client_lb_idle_timeout)
  end
  local names = {}
  for name in pairs(cfg.upstreams or {}) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local k = cfg.upstreams[name].keepalive
    if k.max_idle > 0 and k.idle_timeout >= k.upstream_idle_timeout then
      warnings[#warnings + 1] = string.format("upstreams.%s.keepalive.idle_timeout: %g s is not below the "
        .. "upstream's own %g s (keepalive.upstream_idle_timeout); ferry would reuse connections the upstream "
        .. "is closing, and requests fail with 502", name, k.idle_timeout, k.upstream_idle_timeout)
    end
  end
end

-- An https listener's tls table, with paths resolved; nil for other listeners.
local function listener_tls(l, base, where, errs)
  if l.type ~= "https" then
    if l.tls then
      errs[#errs + 1] = where .. ".tls: only an https listener has a tls table"
        .. (l.type == "tcp" and " (a tcp listener passes TLS through untouched)" or "")
    end
    return nil
  end
  local t = l.tls
  if not t then
    errs[#errs + 1] = where .. ".tls: required for an https listener (tls.certificates)"
    return nil
  end
  if t.client_verify and not t.client_ca then
    errs[#errs + 1] = where .. ".tls.client_verify: needs tls.client_ca, the CA that signs client certificates"
  end
  local certs = {}
  for i, c in ipairs(t.certificates or {}) do
    certs[i] = { cert = resolve(base, c.cert), key = resolve(base, c.key), names = c.names }
  end
  return { certs = certs, client_ca = t.client_ca and resolve(base, t.client_ca),
           client_optional = t.client_verify == "optional", session_tickets = t.session_tickets,
           ciphers = t.ciphers }
end

-- An upstream group's tls table, with paths resolved; nil without TLS.
local function group_tls(g, servers, base, where, errs)
  local t = g.tls
  if not t then return nil end
  if (t.cert == nil) ~= (t.key == nil) then
    errs[#errs + 1] = where .. ".tls." .. (t.cert and "key" or "cert") .. ": cert and key go together (a client certificate)"
  end
  if t.verify and not t.server_name then
    for i, s in ipairs(servers) do
      if s.host:match("^%d+%.%d+%.%d+%.%d+$") or s.host:find(":", 1, true) then
        errs[#errs + 1] = where .. ".tls.server_name: required when tls.verify is on and a server is an IP address"
          .. " (servers[" .. i .. "] = '" .. s.name .. "'): the name to send as SNI and to check the certificate against"
        break
      end
    end
  end
  return { verify = t.verify, ca = resolve(base, t.ca), server_name = t.server_name,
           cert = t.cert and resolve(base, t.cert), key = t.key and resolve(base, t.key), ciphers = t.ciphers }
end

-- Cross-field rules and normalisation into the shape config.c reads.
local function normalise(cfg, base, errs)
  local out = { workers = cfg.workers == "auto" and 0 or cfg.workers, limits = cfg.limits, log = cfg.log,
                reload = cfg.reload, drain = cfg.drain, listeners = {}, upstreams = {},
                policies = {}, policy_keys = {}, dns = { min_ttl = cfg.dns.min_ttl, max_ttl = cfg.dns.max_ttl, timeout = cfg.dns.timeout } }
  if cfg.log.access then
    local a = cfg.log.access
    out.log = { level = cfg.log.level, access = { format = a.format, buffer = a.buffer,
                                                  file = a.file and resolve(base, a.file) } }
  end
  if cfg.dns.servers then out.dns.servers = table.concat(cfg.dns.servers, ",") end
  if cfg.dns.min_ttl > cfg.dns.max_ttl then errs[#errs + 1] = "dns.min_ttl: must not exceed dns.max_ttl" end
  if cfg.admin then
    local host, port = split_hostport(cfg.admin.address or "")
    out.admin = { host = host or "", port = port or 0 }
  end
  local policy_index = {}
  local function policy(path, where)
    if not path then
      errs[#errs + 1] = where .. ": no policy (set the top-level 'policy' or this listener's)"
      return 0
    end
    local full = resolve(base, path)
    if not policy_index[full] then
      out.policies[#out.policies + 1] = full
      out.policy_keys[#out.policies] = where -- the key naming the file, for the loader's errors
      policy_index[full] = #out.policies
    end
    return policy_index[full]
  end
  local names = {}
  for i, l in ipairs(cfg.listeners or {}) do
    local name = l.name or ("listener" .. i)
    if names[name] then errs[#errs + 1] = path_join(path_join("listeners", i), "name") .. ": duplicate name '" .. name .. "'" end
    names[name] = true
    local host, port = split_hostport(l.address or "")
    local where = path_join("listeners", i)
    out.listeners[i] = { name = name, type = l.type, host = host or "", port = port or 0,
                         policy = policy(l.policy or cfg.policy,
                                         l.policy and path_join(where, "policy") or cfg.policy and "policy" or where),
                         proxy_trusted = l.proxy_protocol and l.proxy_protocol.trusted or nil,
                         tls = listener_tls(l, base, where, errs) }
  end
  local gnames = {}
  for name in pairs(cfg.upstreams or {}) do gnames[#gnames + 1] = name end
  table.sort(gnames)
  for _, name in ipairs(gnames) do
    local g = cfg.upstreams[name]
    local servers = {}
    for i, s in ipairs(g.servers or {}) do
      local address = type(s) == "table" and s.address or s
      local host, port = split_hostport(address or "")
      servers[i] = { host = host or "", port = port or 0, name = address or "",
                     weight = type(s) == "table" and s.weight or 1 }
    end
    local r, h = g.retry, g.health
    local tls = group_tls(g, servers, base, path_join("upstreams", name), errs)
    out.upstreams[#out.upstreams + 1] = {
      tls = tls, proxy_protocol = g.proxy_protocol == "v1" and 1 or g.proxy_protocol == "v2" and 2 or 0,
      name = name, servers = servers, balance = g.balance,
      connect_timeout = g.timeouts.connect, read_timeout = g.timeouts.read,
      write_timeout = g.timeouts.write,
      max_idle = g.keepalive.max_idle, idle_timeout = g.keepalive.idle_timeout,
      tries = r.tries, statuses = r.statuses, backoff = r.backoff, deadline = r.deadline,
      budget = r.budget, min_retries = r.min_retries, replay_buffer = r.replay_buffer,
      max_fails = h.max_fails, eject = h.eject, max_eject = h.max_eject, max_ejected = h.max_ejected,
      check_interval = h.check and h.check.interval or 0, check_timeout = h.check and h.check.timeout or 1,
      check_rise = h.check and h.check.rise or 1, check_fall = h.check and h.check.fall or 1,
      check_path = h.check and h.check.path or nil,
    }
  end
  if #out.policies == 0 and cfg.policy then policy(cfg.policy, "policy") end
  return out
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return c
end

-- Copies of the libraries: a config that rewrites string.format must not
-- rewrite it for the schema code that checks that same config.
local function sandbox()
  return {
    assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
    select = select, tonumber = tonumber, tostring = tostring, type = type, unpack = unpack,
    math = copy(math), string = copy(string), table = copy(table),
    os = { getenv = os.getenv },
  }
end

-- One line per error, always naming the file: control characters (a newline
-- in a key or in a message the config raised itself) are escaped.
local function one_line(s)
  return (s:gsub("%c", function(c) return string.format("\\%d", c:byte()) end))
end

local function with_path(file, msg)
  msg = one_line(msg)
  if msg:sub(1, #file + 1) == file .. ":" then return msg end
  return file .. ": " .. msg
end

-- Best effort at a line number for a key path: find each named component of
-- the path in turn, each at or after the line of the one before it.
local texts = {} -- name -> the config text M.load was given instead of a file
local function locate(file, path)
  local lines = {}
  if texts[file] then
    for line in (texts[file] .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = line end
  else
    local f = io.open(file, "r")
    if not f then return nil end
    for line in f:lines() do lines[#lines + 1] = line end
    f:close()
  end
  local at = 1
  for comp in path:gmatch("[%w_%-]+") do
    if not comp:match("^%d+$") then
      local found
      for i = at, #lines do
        local l = lines[i]
        if l:find("%f[%w_]" .. comp:gsub("%-", "%%-") .. "%s*=") or l:find('%["' .. comp:gsub("%-", "%%-") .. '"%]') then
          found = i
          break
        end
      end
      if not found then return at > 1 and at or nil end
      at = found
    end
  end
  return at
end

-- Returns the normalised config, or nil and a list of error lines. With
-- text, the config is that string, named file in its errors, and relative
-- paths in it are relative to base (the embedding API's config strings).
function M.load(file, text, base)
  -- Source only: LuaJIT does not verify bytecode, and crafted bytecode crashes it.
  local chunk, err
  if text then
    texts[file] = text
    chunk, err = load(text, "=" .. file, "t")
  else
    chunk, err = loadfile(file, "t")
  end
  if not chunk then
    return nil, { with_path(file, err:find("wrong mode", 1, true) and "precompiled bytecode is not accepted" or err) }
  end
  setfenv(chunk, sandbox())
  local ok, cfg = pcall(chunk)
  if not ok then
    return nil, { with_path(file, type(cfg) == "string" and cfg or ("the config raised a " .. type(cfg))) }
  end
  if type(cfg) ~= "table" then
    return nil, { file .. ": the config must return a table, got " .. type(cfg) }
  end
  local errs = {}
  local checked = check_value(schema, cfg, "", errs)
  -- A value of the wrong type comes out of the schema as nil: the cross-field
  -- rules and the warnings below only ever see a config that passed it.
  if #errs > 0 then checked = nil end

  local out = checked and normalise(checked, base or dirname(file), errs)
  if out then
    -- "file:line: key.path" of each policy, which the loader's errors start with.
    for i, key in ipairs(out.policy_keys) do out.policy_keys[i] = M.locate_error(file, key .. ":"):sub(1, -2) end
    out.warnings = {}
    warn_timeouts(checked, out.warnings)
    for i, w in ipairs(out.warnings) do
      local line = locate(file, w:match("^([^:]*):") or "")
      out.warnings[i] = file .. ":" .. (line and (line .. ":") or "") .. " warning: " .. w
    end
  end
  if #errs > 0 then
    for i, e in ipairs(errs) do errs[i] = M.locate_error(file, e) end
    return nil, errs
  end
  return out
end

-- "key.path: message" -> "file:line: key.path: message" (the line where the key is written).
function M.locate_error(file, e)
  e = one_line(e)
  local line = locate(file, e:match("^([^:]*):") or "")
  return file .. ":" .. (line and (line .. ":") or "") .. " " .. e
end

M.split_hostport = split_hostport
M.schema = schema -- read by the specs that hold every key to its error message
return M
