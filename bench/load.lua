-- wrk script: rotates the 1,000 bench keys and a few On-Behalf-Of users.
-- usage: wrk ... -s bench/load.lua -- KEYS_FILE METHOD PATH [BODY]
-- Requests are formatted once in init(); request() only picks the next one, so the script adds
-- almost nothing to wrk's own cost. done() prints one RESULT line that bench/run parses.
local reqs = {}
local n = 0
local i = 0

function init(args)
  local keys, method, path, body = args[1], args[2], args[3], args[4]
  if body == "" then body = nil end
  local users = { "1001", "1002", "1003", "1004", "1005" }
  local k = 0
  for line in io.lines(keys) do
    local headers = {
      ["Authorization"] = "ApiKey " .. line,
      ["On-Behalf-Of"] = users[(k % #users) + 1],
    }
    if body then headers["Content-Type"] = "application/json" end
    n = n + 1
    reqs[n] = wrk.format(method, path, headers, body)
    k = k + 1
  end
end

function request()
  i = (i % n) + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
