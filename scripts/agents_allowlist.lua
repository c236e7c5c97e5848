-- The VPC endpoints allowed to push to the agents listener (scripts/agents.lua).
--
-- Agents in other AWS accounts reach the fleet through PrivateLink: each
-- consumer account creates an interface VPC endpoint to our endpoint service,
-- and the NLB's PROXY protocol v2 header names that endpoint (req.proxy.vpce_id).
-- Only the endpoints listed here are admitted; any other gets 403.
--
-- To admit an account: add its endpoint id (the consumer sees it in the VPC
-- console, or run `aws ec2 describe-vpc-endpoint-connections` in the
-- observability account), with the account and who asked for it, then
-- `ferry check` and `ferry reload`. A malformed or repeated id makes the
-- policy fail to load, so the reload is refused and the running allowlist
-- stays in force. To revoke access: remove the line and reload.
--
-- The entries below are the seed's cross-account allowlist (example ids).
return {
  { vpce = "vpce-0123456789abcdef0", account = "111122223333", note = "payments-prod, eu-west-1 (seed)" },
  { vpce = "vpce-0fedcba9876543210", account = "444455556666", note = "search-prod, eu-west-1" },
  { vpce = "vpce-00aa11bb22cc33dd4", account = "777788889999", note = "data-platform-staging, eu-west-1" },
}
