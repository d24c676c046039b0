-- Replays pre-signed deliveries written by bench/receiver.py.
-- `wrk ... -s bench/wrk_replay.lua URL -- PREFIX`: thread k reads PREFIX-k.tsv, its own
-- slice (path, webhook-id, webhook-timestamp, webhook-signature, body per line), so no
-- delivery id is sent twice. A thread that runs out starts its slice again and counts
-- a wrap: the harness treats a wrapped run as invalid (duplicates are cheaper).

local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local path = args[1] .. "-" .. tid .. ".tsv"
  reqs = {}
  for line in io.lines(path) do
    local p, id, ts, sig, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    reqs[#reqs + 1] = wrk.format("POST", p, {
      ["Content-Type"] = "application/json",
      ["webhook-id"] = id,
      ["webhook-timestamp"] = ts,
      ["webhook-signature"] = sig,
    }, body)
  end
  loaded = #reqs
  idx = 0
  wraps = 0
end

function request()
  idx = idx + 1
  if idx > loaded then
    idx = 1
    wraps = wraps + 1
  end
  return reqs[idx]
end

function done(summary, latency, requests)
  local loaded_total, wraps_total = 0, 0
  for _, t in ipairs(threads) do
    loaded_total = loaded_total + t:get("loaded")
    wraps_total = wraps_total + t:get("wraps")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "loaded": %d, "wraps": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes, loaded_total, wraps_total,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
