-- S8 peer "haproxy": the steps of bench/s8/policy.lua as an http-request
-- Lua action. HAProxy 2.6 does not expose PROXY protocol v2 TLVs, so the
-- allowlist is keyed on the PROXY header's source address (as in the
-- nginx+lua peer). The action leaves its verdict in txn.verdict (a status
-- to answer with, or the group); haproxy.cfg acts on it.
local allowed = {
  ["10.0.0.5"] = { account = "111122223333" },
  ["10.0.0.6"] = { account = "444455556666" },
  ["10.0.0.7"] = { account = "777788889999" },
}
local routes = {
  ["metrics.observability.internal"] = "metrics",
  ["logs.observability.internal"] = "logs",
  ["traces.observability.internal"] = "traces",
}
local shed = { metrics = false, logs = false, traces = false }
local region = "us-east-1"

core.register_action("s8", { "http-req" }, function(txn)
  local entry = allowed[txn.f:src()]
  if not entry then return txn:set_var("txn.verdict", "403") end
  local host = txn.f:req_hdr("host")
  local group = host and routes[host:lower():match("^[^:]*")]
  if not group then return txn:set_var("txn.verdict", "421") end
  if shed[group] then return txn:set_var("txn.verdict", "503") end
  txn.http:req_set_header("X-Ferry-Region", region)
  txn:set_var("txn.account", entry.account)
  txn:set_var("txn.verdict", group)
end)
