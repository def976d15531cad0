-- POST requests (path, body file, content type) from every connection, each naming the target model in
-- args[4]: one name, or "@FILE", a trace of names (one a line) the requests follow. Then args[5] is wrk's
-- thread count T and thread k takes entries k, k+T, k+2T, ...: the threads' requests interleave close to
-- the trace's order.
-- done() prints one JSON line with wrk's own counts and latency percentiles (µs).
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end

local req, trace, path, headers, body, step, at

function init(args)
  path = args[1]
  local f = assert(io.open(args[2], "rb"))
  body = f:read("*a")
  f:close()
  headers = { ["Content-Type"] = args[3] }
  local target = args[4] or ""
  if target:sub(1, 1) == "@" then
    trace = {}
    for line in io.lines(target:sub(2)) do
      trace[#trace + 1] = line
    end
    step = tonumber(args[5]) -- the thread count: each thread has a Lua state of its own
    at = id + 1
  else
    if target ~= "" then
      headers["X-Amzn-SageMaker-Target-Model"] = target
    end
    req = wrk.format("POST", path, headers, body)
  end
end

function request()
  if not trace then
    return req
  end
  headers["X-Amzn-SageMaker-Target-Model"] = trace[at]
  at = at + step
  if at > #trace then
    at = id + 1
  end
  return wrk.format("POST", path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
