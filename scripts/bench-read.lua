-- wrk script for scripts/bench.sh: GETs random Observations by id (read, or vread of version 1
-- with BENCH_PATH_SUFFIX=/_history/1), with an optional bearer token, and prints the latency
-- distribution as one JSON line for the report.
--
--   BENCH_IDS=ids.txt BENCH_TOKEN=... wrk -t2 -c32 -d15s -s scripts/bench-read.lua http://host/fhir
local ids = {}
local base, suffix, token
local threads = 0

function setup(thread)
    threads = threads + 1
    thread:set("seed", threads)
end

function init(args)
    for line in io.lines(os.getenv("BENCH_IDS")) do
        if #line > 0 then ids[#ids + 1] = line end
    end
    suffix = os.getenv("BENCH_PATH_SUFFIX") or ""
    token = os.getenv("BENCH_TOKEN") or ""
    base = wrk.path:gsub("/$", "")
    -- A different sequence per thread, the same every run.
    math.randomseed(seed or 1)
end

function request()
    local headers = { ["Accept"] = "application/fhir+json" }
    if #token > 0 then headers["Authorization"] = "Bearer " .. token end
    local id = ids[math.random(#ids)]
    return wrk.format("GET", base .. "/Observation/" .. id .. suffix, headers)
end

function done(summary, latency, requests)
    local errors = summary.errors
    io.write(string.format(
        'WRK_JSON {"requests": %d, "seconds": %.3f, "non_2xx": %d, "socket_errors": %d, ' ..
        '"p50_ms": %.3f, "p99_ms": %.3f, "p999_ms": %.3f, "max_ms": %.3f}\n',
        summary.requests, summary.duration / 1e6, summary.errors.status,
        errors.connect + errors.read + errors.write + errors.timeout,
        latency:percentile(50) / 1000, latency:percentile(99) / 1000,
        latency:percentile(99.9) / 1000, latency.max / 1000))
end
