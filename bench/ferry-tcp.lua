-- ferry bench config for S6: one tcp listener, bytes passed through with
-- splice(2) to the bulk sink. bench/run renders this file into its temporary
-- run directory, replacing the @NAME@ placeholders. The policy's
-- route_stream(conn) sends every connection to the group "sink". The
-- equivalent peer configs: conf/haproxy-tcp.cfg, conf/nginx-stream.conf.
return {
  workers = 1, -- one worker per measured run (the 2-worker rows render 2)
  listeners = {
    { name = "bench-tcp", type = "tcp", address = "127.0.0.1:@PORT@" },
  },
  upstreams = {
    sink = {
      servers  = { "127.0.0.1:@SINK@" },
      timeouts = { connect = 5, read = 300, write = 300 },
    },
  },
  policy = "@BENCH_DIR@/policy.lua",
  limits = { stream_idle_timeout = 300 },
  log = { level = "warn", access = false },
}
