-- The FFI surface (core/ffi.h): ferry.core binds the header's own text and
-- checks the struct layouts C compiled when it loads.
local ffi = require "ffi"
local core = require "ferry.core"

describe("the FFI surface", function()
  it("is core/ffi.h's declarations, as built into this binary", function()
    local f = assert(io.open("core/ffi.h", "r"))
    local header = f:read("*a")
    f:close()
    local region = header:match("(/%* FY_FFI_CDEF_BEGIN %*/.-)/%* FY_FFI_CDEF_END %*/")
    assert.is_string(region)
    assert.equal(region, require "ferry.cdef")
  end)

  it("has the layouts C compiled, every struct and field", function()
    local entries = core.c_layout()
    local types = {}
    for _, e in ipairs(entries) do types[e.type] = true end
    assert.same({ fy_ffi_proxy = true, fy_ffi_tls = true, fy_ffi_server = true, fy_ffi_stream = true,
                  fy_ffi_layout = true, fy_ffi_api = true }, types)
    assert.is_nil(core.layout_difference(entries))
    for _, e in ipairs(entries) do
      if e.field then assert.equal(ffi.offsetof(e.type, e.field), e.offset, e.type .. "." .. e.field) end
    end
  end)

  it("reaches the C functions through the pointer table, not through exported symbols", function()
    local api = ffi.cast("const fy_ffi_api *", require "ferry.api")
    local n = ffi.new("int[1]")
    assert.is_true(api.fy_ffi_abi_layout(n) ~= nil)
    assert.is_true(n[0] > 0)
    -- libferry exports only ferry_*: a lookup by name finds nothing.
    assert.is_false(pcall(function() return ffi.C.fy_ffi_abi_layout end))
  end)

  it("would refuse to load on a difference", function()
    local entries = core.c_layout()
    entries[#entries + 1] = { type = "fy_ffi_proxy", field = "alpn", offset = 1, size = 8 }
    assert.matches("fy_ffi_proxy.alpn: offset 1 in C, %d+ in the cdef", core.layout_difference(entries))
    assert.equal("fy_ffi_tls: size 1 in C, " .. ffi.sizeof("fy_ffi_tls") .. " in the cdef",
                 core.layout_difference { { type = "fy_ffi_tls", size = 1 } })
    assert.equal("fy_ffi_tls.nope: offset 0 in C, absent in the cdef",
                 core.layout_difference { { type = "fy_ffi_tls", field = "nope", offset = 0, size = 4 } })
  end)
end)
