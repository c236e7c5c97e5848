-- S8 ferry config: bench/ferry.lua with a PROXY protocol v2 listener (the
-- load client plays the AWS NLB) and the composed regional policy.
return {
  listeners = {
    { name = "bench", type = "http", address = "127.0.0.1:@PORT@",
      proxy_protocol = { trusted = { "127.0.0.1/32" } } },
  },
  upstreams = {
    metrics = {
      servers   = { "127.0.0.1:@UP_METRICS@" },
      timeouts  = { connect = 5, read = 60, write = 60 },
      keepalive = { max_idle = 1024, idle_timeout = 50 },
    },
    logs = {
      servers   = { "127.0.0.1:@UP_LOGS@" },
      timeouts  = { connect = 5, read = 60, write = 60 },
      keepalive = { max_idle = 1024, idle_timeout = 50 },
    },
    traces = {
      servers   = { "127.0.0.1:@UP_TRACES@" },
      timeouts  = { connect = 5, read = 60, write = 60 },
      keepalive = { max_idle = 1024, idle_timeout = 50 },
    },
  },
  policy = "@RUN@/s8-policy.lua",
  limits = { keepalive_timeout = 75, keepalive_requests = 10000 },
  log = { level = "warn", access = false },
}
