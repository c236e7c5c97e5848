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
  -- hook_timeout: the instruction counts run ferry under callgrind, 50-100
  -- times slower than native, where a hook call that does a step of garbage
  -- collection can pass the default 50 ms. Natively no call comes near it.
  limits = { keepalive_timeout = 75, keepalive_requests = 10000, hook_timeout = 2 },
  log = { level = "warn", access = false },
}
