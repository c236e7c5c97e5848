-- luacheck settings (ctest: lint_luacheck). No globals: every module,
-- policy and spec keeps its names local; a policy reaches ferry through
-- require "ferry".
std = "luajit"
max_line_length = 150 -- the longest lines are tables of messages and test vectors
codes = true

files["spec/lua"] = { std = "+busted" }
