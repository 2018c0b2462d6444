-- wrk script of benchmarks/bench_serving.py: POST /predict with distinct transactions read from a JSON-lines
-- file, in file order (increasing timestamps), never one repeated; each thread takes every n-th line of its slice
-- and stops when its lines run out. The API key comes from $BENCH_API_KEY (not the command line).
-- wrk -s wrk_traffic.lua URL -- FILE FIRST COUNT THREADS

local threads_made = 0

function setup(thread)
  thread:set("id", threads_made)
  threads_made = threads_made + 1
end

function init(args)
  local path, first, count, n = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
  bodies, pos = {}, 0
  local i = 0
  for line in io.lines(path) do
    if i >= first + count then break end
    if i >= first and (i - first) % n == id then bodies[#bodies + 1] = line end
    i = i + 1
  end
  headers = { ["Content-Type"] = "application/json" }
  local key = os.getenv("BENCH_API_KEY")
  if key ~= nil and key ~= "" then headers["x-api-key"] = key end
end

function request()
  pos = pos + 1
  if pos > #bodies then
    wrk.thread:stop()
    pos = #bodies
  end
  return wrk.format("POST", "/predict", headers, bodies[pos])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "status_errors": %d, "socket_errors": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
