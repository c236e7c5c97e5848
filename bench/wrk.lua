-- wrk script for bench/run. Configured from the environment:
--   BENCH_METHOD      GET (default) or POST
--   BENCH_PATH        request path (default "/")
--   BENCH_BODY_BYTES  size of the request body for POST (default 0)
--   BENCH_COUNT_STATUS=1  count every response whose status is not 2xx
--                     (wrk alone only counts status >= 400)
-- Host and Connection headers are given with -H on wrk's command line.
-- done() prints one line "BENCH_RESULT {json}" that bench/run parses.

local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/"
local body_bytes = tonumber(os.getenv("BENCH_BODY_BYTES") or "0") or 0
local count_status = os.getenv("BENCH_COUNT_STATUS") == "1"

wrk.method = method
wrk.path = path
if body_bytes > 0 then
  -- A fixed, printable payload; wrk adds Content-Length itself.
  local line = "ferry-bench-payload-0123456789abcdefghijklmnopqrstuvwxyz\n"
  local reps = math.floor(body_bytes / #line) + 1
  wrk.body = string.sub(string.rep(line, reps), 1, body_bytes)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function init(args)
  non2xx = 0
  responses = 0
end

if count_status then
  function response(status, headers, body)
    responses = responses + 1
    if status < 200 or status > 299 then
      non2xx = non2xx + 1
    end
  end
end

function done(summary, latency, requests)
  local non2xx_total, seen = 0, 0
  for _, t in ipairs(threads) do
    non2xx_total = non2xx_total + (t:get("non2xx") or 0)
    seen = seen + (t:get("responses") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"non2xx":%s,"counted":%d,' ..
    '"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    count_status and tostring(non2xx_total) or "null", seen,
    latency.mean, latency.max,
    latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
