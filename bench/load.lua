-- wrk script: rotates the bench keys and the On-Behalf-Of users.
-- usage: wrk ... -s bench/load.lua -- KEYS_FILE METHOD PATH [BODY [USERS]]
--   USERS  empty or absent: five users, 1001 to 1005, in turn (bench/gen.py's dialog)
--          "rotate": 100,000 users, 104000 + (n * 7919) % 100000 for the n-th key (from 1) (the external
--          gateway benchmark's GET load)
--          a number: that user on every request (the external benchmark's PUT acts as the
--          dialog's owner, so a gateway that judges the dialog rules allows it)
-- Requests are formatted once in init(); request() only picks the next one, so the script adds
-- almost nothing to wrk's own cost. done() prints one RESULT line that bench/run, bench/ab,
-- bench/profile and deploy/build-pgo parse (fields are only ever added at the end).
local reqs = {}
local n = 0
local i = 0

function init(args)
  local keys, method, path, body, users_arg = args[1], args[2], args[3], args[4], args[5]
  assert(keys and method and path, "usage: -- KEYS_FILE METHOD PATH [BODY [USERS]]")
  if body == "" then body = nil end
  local five = { "1001", "1002", "1003", "1004", "1005" }
  local function user(k)
    if users_arg == nil or users_arg == "" then return five[((k - 1) % #five) + 1] end
    if users_arg == "rotate" then return tostring(104000 + (k * 7919) % 100000) end
    assert(users_arg:match("^%d+$"), "USERS must be empty, rotate or a user id")
    return users_arg
  end
  for line in io.lines(keys) do
    if line ~= "" then
      n = n + 1
      local headers = {
        ["Authorization"] = "ApiKey " .. line,
        ["On-Behalf-Of"] = user(n),
      }
      if body then headers["Content-Type"] = "application/json" end
      reqs[n] = wrk.format(method, path, headers, body)
    end
  end
  assert(n > 0, "no keys in " .. keys)
end

function request()
  i = (i % n) + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f "
      .. "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d p999_us=%d bytes=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout, latency:percentile(99.9), summary.bytes))
end
