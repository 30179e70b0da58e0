-- wrk script of bench/ingest.py: one invitation callback per request, each with its own invitee.
--
--   wrk -t1 -c64 -d11s --latency -s bench/ingest.lua URL -- METHOD BASE SEND_S RATE [REPEAT [COUNT]]
--
-- METHOD   GET (fields in the query string) or POST (a JSON body).
-- BASE     the first invitee number; request n gets +447 and BASE + n in 9 digits. Identical callbacks are
--          deduplicated by the gateway, so every request must differ.
-- SEND_S   seconds during which requests are sent, counted from the first connection. After
--          that, delay() holds every connection, so what is in flight completes before wrk's
--          -d ends (give -d a second more): wrk never abandons a request, and the gateway's
--          stored events can be compared exactly with the answers wrk counted.
-- RATE     0: each connection sends its next request as soon as the answer arrives
--          (saturation). R > 0: requests leave on a fixed schedule of R per second shared by
--          all connections (wrk's timers have 1 ms resolution, so sends are grouped per ms).
-- REPEAT   0 (the default): every request a new invitation, as above. K > 0: a replay flood,
--          request n repeats invitation BASE + 1 + (n - 1) mod K, so with K = 1 every request
--          of every connection is the same callback (bench/ingest.py sends each of the K once
--          before the run, so that every request of the run is a duplicate).
-- COUNT    1: count the answers that are 204 and those that are not (a response() function,
--          which costs wrk some CPU per answer; bench/ingest.py's duplicates rows and their
--          baseline rows both set it, so both pay it). 0 (the default): not counted (-1).
--
-- done() prints one line "BENCH_RESULT {json}" for bench/ingest.py. Single-threaded use (-t1)
-- is assumed by the schedule and the counters.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local INVITOR = "johnsnow"
local NETWORK = "mynetwork"
local HOLD_MS = 3600000 -- after SEND_S: longer than any run

-- Per thread (each wrk thread has its own Lua state): read by done() through thread:get().
method, base, send_ms, interval_ms, repeats = "POST", 0, 10000, 0, 0
answered_204, other_status = -1, -1 -- answers by status, with COUNT = 1
sent = 0            -- requests sent (wrk's one trial call of request() at start-up excluded)
made = 0            -- request() calls: the invitee counter
calls = 0           -- delay() calls before the deadline: one per connection, then one per answer
held = 0            -- delay() calls after it: connections parked until wrk stops
t0 = nil            -- the first delay() call (the first connection is up), ms
deadline = nil
next_slot = nil

function init(args)
  method = args[1] or "POST"
  base = tonumber(args[2] or "0")
  send_ms = tonumber(args[3] or "10") * 1000
  local rate = tonumber(args[4] or "0")
  interval_ms = rate > 0 and 1000 / rate or 0
  repeats = tonumber(args[5] or "0")
  if tonumber(args[6] or "0") > 0 then
    -- Defined here, not at the top, so that the rows that do not count pay nothing for it.
    answered_204, other_status = 0, 0
    response = function(status, headers, body)
      if status == 204 then
        answered_204 = answered_204 + 1
      else
        other_status = other_status + 1
      end
    end
  end
  if method ~= "GET" and method ~= "POST" then
    error("METHOD must be GET or POST, got " .. tostring(method))
  end
end

local post_headers = { ["Content-Type"] = "application/json" }

function request()
  made = made + 1
  if t0 ~= nil then -- wrk calls request() once before any connection, to check the script
    sent = sent + 1
  end
  local n = made
  if repeats > 0 then
    n = (made - 1) % repeats + 1
  end
  -- International form, as an address book holds it (+44 7... a UK mobile: a possible number),
  -- so each new invitation pays its E.164 parse as real traffic does; %2B in a query string.
  local digits = string.format("447%09d", base + n)
  local invitee = "+" .. digits
  if method == "GET" then
    return wrk.format("GET", wrk.path .. "?invitee=%2B" .. digits .. "&invitor=" .. INVITOR
      .. "&network_id=" .. NETWORK)
  end
  local body = '{"invitee":"' .. invitee .. '","invitor":"' .. INVITOR .. '","network_id":"'
    .. NETWORK .. '"}'
  return wrk.format("POST", wrk.path, post_headers, body)
end

function delay()
  local t = now_ms()
  if t0 == nil then
    t0 = t
    deadline = t + send_ms
  end
  if t >= deadline then
    held = held + 1
    return HOLD_MS
  end
  calls = calls + 1
  if interval_ms == 0 then
    return 0
  end
  -- A fixed schedule, not "wait after each answer": a slow answer does not push later sends
  -- back, as long as a connection is free when a slot comes.
  local slot = next_slot or t
  next_slot = slot + interval_ms
  local wait = slot - t
  if wait < 1 then
    return 0
  end
  return math.floor(wait)
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local sent_total, calls_total, held_total, window_ms = 0, 0, 0, 0
  local ok_total, other_total = 0, 0
  for _, thread in ipairs(threads) do
    sent_total = sent_total + thread:get("sent")
    calls_total = calls_total + thread:get("calls")
    held_total = held_total + thread:get("held")
    window_ms = math.max(window_ms, thread:get("send_ms"))
    ok_total = ok_total + thread:get("answered_204")
    other_total = other_total + thread:get("other_status")
  end
  local e = summary.errors
  local p = {}
  for _, q in ipairs({ 50, 90, 99, 99.9 }) do
    p[#p + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'BENCH_RESULT {"duration_us":%d,"requests":%d,"sent":%d,"delay_calls":%d,"held":%d,'
      .. '"answered_204":%d,"other_status":%d,"window_ms":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f,"percentiles":{%s}}}\n',
    summary.duration, summary.requests, sent_total, calls_total, held_total, ok_total, other_total,
    window_ms,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(p, ",")))
end
