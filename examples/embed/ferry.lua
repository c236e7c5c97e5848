-- The config the example host (host.c) embeds: one listener whose policy
-- asks the host's module myhost.tenants who the caller is.
--
--   build/examples/embed/host examples/embed/ferry.lua 8099
--   curl -H 'Host: acme.example' http://127.0.0.1:8090/
return {
  listeners = {
    { name = "tenants", address = "127.0.0.1:8090", policy = "tenants_policy.lua" },
  },
  log = { level = "info" },
}
