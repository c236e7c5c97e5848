-- ferry: the module policies require. It exposes the parts of the runtime
-- that a policy may use directly; the request API comes with `req`.
local core = require "ferry.core"

return {
  log = core.log,
  metrics = require "ferry.metrics",
}
