-- wrk script: POST /v1/chat/completions (OpenAI shape) with a Bearer key; done() prints one WRKJSON line.
-- env: BENCH_MODEL (default "fake"), BENCH_KEY (default "sk-bench-master"),
--      BENCH_IDEMPOTENCY=1: an Idempotency-Key unique per request ("bench-<BENCH_NONCE>-<thread>-<n>"),
--      BENCH_STREAM=1 (or run chat_stream.lua): ask for "stream": true.
local model = os.getenv("BENCH_MODEL") or "fake"
local key = os.getenv("BENCH_KEY") or "sk-bench-master"
local stream = BENCH_STREAM == true or os.getenv("BENCH_STREAM") == "1"
local idempotency = os.getenv("BENCH_IDEMPOTENCY") == "1"
-- The nonce keeps keys unique across wrk runs against the same server (counters restart at 1).
local nonce = os.getenv("BENCH_NONCE") or tostring(os.time())

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
wrk.body = '{"model":"' .. model .. '","messages":[{"role":"user","content":"Say hello."}],"max_tokens":16'
  .. (stream and ',"stream":true' or '') .. '}'

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  codes = {}
  counter = 0
  headers = {}
  for k, v in pairs(wrk.headers) do headers[k] = v end
end

-- Defined only when asked: a script without request() lets wrk send one pre-built request (faster).
if idempotency then
  function request()
    counter = counter + 1
    headers["Idempotency-Key"] = "bench-" .. nonce .. "-" .. thread_id .. "-" .. counter
    return wrk.format(nil, nil, headers, nil)
  end
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local agg = {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do agg[k] = (agg[k] or 0) + v end
  end
  local cs = {}
  for k, v in pairs(agg) do table.insert(cs, string.format('"%d":%d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"rps":%.1f,"p50_ms":%.3f,"p75_ms":%.3f,"p90_ms":%.3f,' ..
    '"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"codes":{%s}}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(75) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(cs, ",")))
end
