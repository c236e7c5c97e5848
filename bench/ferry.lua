-- ferry bench config: one listener, three upstream groups, keep-alive to the
-- upstreams. bench/run renders this file into its temporary run directory,
-- replacing the @NAME@ placeholders (ports, paths); everything else is used
-- as written. The equivalent peer configs are in bench/conf/.
return {
  workers = 1, -- one worker per measured run (the 2-worker rows render 2)
  listeners = {
    { name = "bench", type = "http", address = "127.0.0.1:@PORT@" },
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
  policy = "@BENCH_DIR@/policy.lua",
  limits = { keepalive_timeout = 75, keepalive_requests = 10000 },
  -- No access log: none of the peers writes one during the runs either.
  log = { level = "warn", access = false },
}
