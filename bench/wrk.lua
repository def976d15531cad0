-- One fixed request (method, path, body file, content type, optional target model) for every
-- connection; done() prints one JSON line with wrk's own counts and latency percentiles (µs).
local req

function init(args)
  local f = assert(io.open(args[2], "rb"))
  local body = f:read("*a")
  f:close()
  local headers = { ["Content-Type"] = args[3] }
  if args[4] and args[4] ~= "" then
    headers["X-Amzn-SageMaker-Target-Model"] = args[4]
  end
  req = wrk.format("POST", args[1], headers, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
