-- ferry.metrics: counters a policy declares and increments (docs/policy.md "Metrics").
--
--   local decisions = require("ferry.metrics").counter("decisions", "what route decided",
--                                                      { "decision", "group" })
--   ... in a hook: decisions:inc("admitted", "metrics")
--
-- counter() is called when the policy loads (module level); :inc() from any
-- hook. Values are kept by ferry's C core per worker (core/policy_metrics.c),
-- so they survive a reload that declares the counter again, and /metrics
-- shows them as ferry_policy_<name>_total. The C functions are declared in
-- core/ffi.h, which ferry.core hands to the FFI; like ferry.core, this
-- calls them through the pointer table fy_ffi_api, not ffi.C.
local ffi = require "ffi"
require "ferry.core"

local C = ffi.cast("const fy_ffi_api *", require "ferry.api")

local M = {}

local MAX_LABELS, MAX_VALUE = 8, 128

local declared = {} -- name -> counter, in this Lua state (one generation)
local msgbuf = ffi.new("char[256]")
local dnum = ffi.new("double[1]")

-- Label values as C gets them: NUL-ended strings back to back.
local function encode(what, labels, ...)
  local n = select("#", ...)
  if n ~= #labels then
    error(string.format("%s: %d label value%s given, the counter has %d (%s)", what, n, n == 1 and "" or "s",
                        #labels, table.concat(labels, ", ")), 3)
  end
  local parts = {}
  for i = 1, n do
    local v = select(i, ...)
    if type(v) == "number" then v = tostring(v) end
    if type(v) ~= "string" then error(what .. ": label " .. labels[i] .. " must be a string, got " .. type(v), 3) end
    if #v > MAX_VALUE or v:find("\0", 1, true) then
      error(what .. ": label " .. labels[i] .. ": at most " .. MAX_VALUE .. " bytes, no NUL", 3)
    end
    parts[i] = v .. "\0"
  end
  return table.concat(parts), n
end

local counter_mt = { __index = {} }

-- The counters of series already counted, by label values (nested tables, one
-- level per label), so a hook's :inc is table lookups and an add: C renders
-- and finds a series once per Lua state. Only string values are kept (a
-- number may be NaN, no table key), and at most CACHED label sets per
-- counter (C keeps 200 apart, then one overflow series), as a policy may
-- count by values it was sent.
local CACHED = 256
local ONE = ffi.new("uint64_t", 1)

local function cached(self, n, ...)
  local t = self._slots
  for i = 1, n do
    t = t[(select(i, ...))]
    if t == nil then return nil end
  end
  return t
end

local function keep(self, slot, n, ...)
  if self._ncached >= CACHED then return end
  local t = self._slots
  for i = 1, n do
    local v = select(i, ...)
    if type(v) ~= "string" then return end
    if i == n then
      t[v] = slot
    else
      local next_t = t[v]
      if next_t == nil then
        next_t = {}
        t[v] = next_t
      end
      t = next_t
    end
  end
  if n == 0 then self._slot0 = slot end
  self._ncached = self._ncached + 1
end

function counter_mt.__index:inc(...)
  local n = self._n
  if select("#", ...) == n then
    local slot
    if n == 0 then
      slot = self._slot0
    else
      slot = cached(self, n, ...)
    end
    if slot then
      slot[0] = slot[0] + ONE
      return
    end
  end
  local values, nv = encode(self._what, self.labels, ...)
  local slot = C.fy_ffi_metric_slot(self._id, values, #values, nv)
  if slot ~= nil then
    keep(self, slot, nv, ...)
    slot[0] = slot[0] + ONE
  elseif C.fy_ffi_metric_inc(self._id, values, #values, nv, 1) < 0 then
    error(self._what .. ": not allowed here (counters count from hooks, not while the policy loads)", 2)
  end
end

local function check_name(name, pattern, what)
  if type(name) ~= "string" or not name:find(pattern) or #name > 64 then
    error(what, 3)
  end
end

-- counter(name, help, labels) -> a counter with :inc(values...)
function M.counter(name, help, labels)
  check_name(name, "^[a-z_][a-z0-9_]*$",
             "ferry.metrics.counter: the name must match [a-z_][a-z0-9_]* (at most 64 bytes), got " .. tostring(name))
  if type(help) ~= "string" then error("ferry.metrics.counter: help must be a string", 2) end
  labels = labels or {}
  if type(labels) ~= "table" or #labels > MAX_LABELS then
    error("ferry.metrics.counter: labels must be a list of at most " .. MAX_LABELS .. " names", 2)
  end
  for _, l in ipairs(labels) do
    local what = "ferry.metrics.counter: '" .. tostring(l) ..
                 "' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __..., not overflow)"
    check_name(l, "^[a-zA-Z_][a-zA-Z0-9_]*$", what)
    if l:sub(1, 2) == "__" or l == "overflow" then error(what, 2) end
  end
  local joined = table.concat(labels, ",")
  local prev = declared[name]
  if prev then
    if prev._joined ~= joined then
      error("ferry.metrics.counter: '" .. name .. "' is declared already with labels (" .. prev._joined .. ")", 2)
    end
    return prev
  end
  local c = setmetatable({ name = name, help = help, labels = labels, _joined = joined,
                           _what = "counter " .. name .. ":inc", _n = #labels, _slots = {}, _ncached = 0 },
                         counter_mt)
  local id = C.fy_ffi_metric_declare(name, help, joined, msgbuf, 256)
  if id < 0 then error("ferry.metrics.counter: " .. ffi.string(msgbuf), 2) end
  c._id = id
  declared[name] = c
  return c
end

-- value(name, values...) -> the count of one series (0 if it never counted); for specs.
function M.value(name, ...)
  local c = declared[name]
  if not c then error("ferry.metrics.value: no counter '" .. tostring(name) .. "' is declared", 2) end
  local values, n = encode("ferry.metrics.value", c.labels, ...)
  C.fy_ffi_metric_value(name, values, #values, n, dnum)
  return dnum[0]
end

-- reset(): every counter back to no series; for specs (refused where ferry serves).
function M.reset()
  if C.fy_ffi_metric_reset() < 0 then error("ferry.metrics.reset: only under ferry test", 2) end
end

return M
