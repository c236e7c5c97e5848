-- The config schema (lua/ferry/config.lua), on files written by the spec.
local config = require "ferry.config"

local function with_file(src, fn)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(src)
  f:close()
  local a, b = config.load(path)
  os.remove(path)
  return fn(a, b, path)
end

local minimal = [[
return {
  listeners = { { name = "edge", address = "127.0.0.1:8080" } },
  upstreams = { metrics = { servers = { "127.0.0.1:9101", "[::1]:9102" } } },
  policy = "p.lua",
}
]]

describe("config", function()
  it("fills in defaults", function()
    with_file(minimal, function(cfg, errs, path)
      assert.is_nil(errs)
      local g = cfg.upstreams[1]
      assert.equal("metrics", g.name)
      assert.equal(5, g.connect_timeout)
      assert.equal(32, g.max_idle)
      assert.is_true(g.idle_timeout < 60, "the pool idle timeout must stay below an ALB's 60 s")
      assert.equal("::1", g.servers[2].host)
      assert.equal(9102, g.servers[2].port)
      assert.equal(8192, cfg.limits.max_request_line)
      assert.equal("http", cfg.listeners[1].type)
      assert.equal(path:match("^(.*)/") .. "/p.lua", cfg.policies[1])
    end)
  end)

  it("names the key path, with a line, of an unknown key", function()
    with_file(minimal:gsub('policy = "p.lua",', 'policy = "p.lua",\n  upstream = {},'), function(cfg, errs, path)
      assert.is_nil(cfg)
      assert.equal(path .. ":5: upstream: unknown key", errs[1])
    end)
  end)

  it("reports wrong types and bad addresses with their key paths", function()
    local src = minimal:gsub('"127.0.0.1:9101"', '"nowhere"'):gsub('address = "127.0.0.1:8080"', 'address = 8080')
    with_file(src, function(cfg, errs)
      assert.is_nil(cfg)
      local all = table.concat(errs, "\n")
      assert.matches("listeners%[1%]%.address: expected a string, got number", all)
      assert.matches("upstreams%.metrics%.servers%[1%]: expected 'host:port'", all)
    end)
  end)

  it("reports a syntax error as file:line: message", function()
    with_file("return {\n  listeners = {\n", function(cfg, errs, path)
      assert.is_nil(cfg)
      assert.matches("^" .. path:gsub("%p", "%%%0") .. ":%d+: ", errs[1])
    end)
  end)

  it("refuses a config without a policy", function()
    with_file(minimal:gsub('policy = "p.lua",', ''), function(cfg, errs)
      assert.is_nil(cfg)
      assert.matches("no policy", errs[1])
    end)
  end)

  it("warns when timeouts are ordered so that they cause 502s or resets", function()
    local src = minimal:gsub('servers = { "127.0.0.1:9101", "%[::1%]:9102" }',
                             'servers = { "127.0.0.1:9101" }, keepalive = { idle_timeout = 60 }')
    src = src:gsub('policy = "p.lua",', 'policy = "p.lua",\n  limits = { keepalive_timeout = 350 },')
    with_file(src, function(cfg, errs)
      assert.is_nil(errs)
      local all = table.concat(cfg.warnings, "\n")
      assert.matches("warning: upstreams%.metrics%.keepalive%.idle_timeout: 60 s is not below the upstream's own 60 s", all)
      assert.matches("warning: limits%.keepalive_timeout: 350 s is not below the 350 s", all)
    end)
    with_file(minimal, function(cfg)
      assert.same({}, cfg.warnings, "the defaults are ordered safely")
    end)
  end)

  -- Found by fuzz_config (spec/fuzz/regressions/).
  it("refuses NaN where a number goes", function()
    with_file(minimal:gsub('policy = "p.lua",', 'policy = "p.lua",\n  limits = { header_timeout = 0/0 },'), function(cfg, errs)
      assert.is_nil(cfg)
      assert.matches("limits.header_timeout: expected a number, got NaN", errs[1], 1, true)
    end)
  end)

  it("refuses networks that only look like addresses", function()
    for _, net in ipairs({ "999.1.1.1", "09.0.0.0/8", ":::::", "1.2.3.4/33", "1::2::3", "12345::1", "1:2:3:4:5:6:7:8:9" }) do
      local src = minimal:gsub('address = "127.0.0.1:8080"', 'address = "127.0.0.1:8080", proxy_protocol = { trusted = { "' .. net .. '" } }')
      with_file(src, function(cfg, errs)
        assert.is_nil(cfg, net)
        assert.matches("expected an IPv4 or IPv6 network", errs[1], 1, true)
      end)
    end
    for _, net in ipairs({ "10.0.0.0/8", "::1", "::/0", "fe80::1:2/64", "::ffff:10.1.2.3/128", "1:2:3:4:5:6:7:8" }) do
      local src = minimal:gsub('address = "127.0.0.1:8080"', 'address = "127.0.0.1:8080", proxy_protocol = { trusted = { "' .. net .. '" } }')
      with_file(src, function(_, errs) assert.is_nil(errs, net) end)
    end
  end)

  it("names the file on every error line, one line each", function()
    with_file('error("boom", 0)', function(_, errs, path)
      assert.equal(path .. ": boom", errs[1])
    end)
    with_file('error({})', function(_, errs, path)
      assert.equal(path .. ": the config raised a table", errs[1])
    end)
    with_file('return { ["a\nb"] = 1 }', function(_, errs, path)
      for _, e in ipairs(errs) do
        assert.equal(path, e:sub(1, #path))
        assert.is_nil(e:find("\n"))
      end
    end)
  end)

  it("refuses NUL bytes in strings and odd listener names", function()
    with_file(minimal:gsub('name = "edge"', 'name = "e\\0dge"'), function(cfg, errs)
      assert.is_nil(cfg)
      assert.matches("listeners[1].name: must not contain a NUL byte", errs[1], 1, true)
    end)
    with_file(minimal:gsub('name = "edge"', 'name = "a/b"'), function(cfg, errs)
      assert.is_nil(cfg)
      assert.matches("listeners[1].name: expected 1 to 63 letters", errs[1], 1, true)
    end)
  end)

  it("refuses precompiled bytecode", function()
    with_file(string.dump(function() return {} end), function(cfg, errs, path)
      assert.is_nil(cfg)
      assert.equal(path .. ": precompiled bytecode is not accepted", errs[1])
    end)
  end)

  it("does not let the config rewrite the libraries the schema uses", function()
    with_file('string.format = nil; table.concat = nil\n' .. minimal, function(_, errs)
      assert.is_nil(errs)
      assert.equal("function", type(string.format))
    end)
  end)

  it("does not let the config reach the machine", function()
    with_file('os.execute("true")\nreturn {}', function(cfg, errs)
      assert.is_nil(cfg)
      assert.matches("attempt to call field 'execute'", errs[1])
    end)
  end)
end)
