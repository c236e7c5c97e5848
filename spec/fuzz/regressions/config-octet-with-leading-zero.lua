-- most settings, with non-default values
local up = { servers = { "10.0.0.1:80", { address = "[::1]:8080", weight = 3 } },
  balance = "hash",
  retry = { tries = 3, statuses = { 502, 503 }, backoff = 0.01, deadline = 2, budget = 0.5,
            min_retries = 1, replay_buffer = 4096 },
  health = { max_fails = 2, eject = 1, max_eject = 30, max_ejected = 0.3,
             check = { path = "/healthz?x=1", interval = 1, timeout = 0.5, rise = 1, fall = 2 } },
  timeouts = { connect = 1, read = 30, write = 30 },
  keepalive = { max_idle = 8, idle_timeout = 20, upstream_idle_timeout = 60 } }
return {
  listeners = {
    { name = "edge", type = "http", address = "0.0.0.0:8080", policy = "edge.lua",
      proxy_protocol = { trusted = { "09.0.0.0/8", "::1", "fd00::/8" } } },
    { name = "raw", type = "tcp", address = "[::]:8443" },
  },
  upstreams = { a = up, ["b-2.x_y"] = { servers = { "up.example:80" } } },
  policy = "../policies/default.lua",
  admin = { address = "127.0.0.1:9180" },
  dns = { servers = { "127.0.0.53:53" }, min_ttl = 1, max_ttl = 60, timeout = 2 },
  drain = { delay = 1, timeout = 5 },
  reload = { watch = true, debounce = 0.5 },
  limits = { max_request_line = 4096, max_header_bytes = 16384, max_headers = 500,
             keepalive_requests = 1000, max_connections = 500, stream_idle_timeout = 60,
             hook_timeout = 0.02, lua_memory = 8388608 },
  log = { level = "warn", access = false },
}
