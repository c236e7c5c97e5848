-- ferry bench config for S5 (TLS termination): ferry.lua with the listener
-- made an https one. The certificate is an EC P-256 self-signed one made by
-- bench/run with the openssl CLI in its run directory; TLS 1.2 and
-- ECDHE-ECDSA-AES128-GCM-SHA256 only, as in conf/nginx-https.conf,
-- conf/nginx-lua-https.conf and conf/haproxy-https.cfg. Session tickets and
-- the session cache are ferry's defaults (on); S5H makes wrk offer no session,
-- so each of its connections is a full handshake anyway. The ECDHE group is
-- the server's choice from what wrk offers (P-256 only, see bench/README.md).
return {
  workers = 1, -- one worker per measured run (the 2-worker rows render 2)
  listeners = {
    { name = "bench-tls", type = "https", address = "127.0.0.1:@PORT@",
      tls = {
        certificates = { { cert = "@CERT@", key = "@KEY@" } },
        ciphers = { "TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256" },
      },
    },
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
  log = { level = "warn", access = false },
}
