-- Bring a delivery waiting for its retry forward to now.
--
-- ARGV (DeliveryQueue.attempt_now): prefix, now ms, delivery id. Returns scheduled, or why not:
-- unknown | held | due | in-flight | rate-limited | the delivery's status.
local p, now, did = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local sep = string.find(did, '-', 1, true)
if not sep then return 'unknown' end
local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
local raw = redis.call('HGET', p .. ':event:' .. eid .. ':deliveries', t)
if not raw then return 'unknown' end
if redis.call('ZSCORE', p .. ':parked:' .. t, did) then return 'held' end
local score = redis.call('ZSCORE', p .. ':due', did)
local st = cjson.decode(raw)
if not score then return st.status end
if redis.call('HEXISTS', p .. ':reserved', did) == 1 then return 'rate-limited' end
local nxt = tonumber(st.next_attempt_at)
if tonumber(score) <= now then return 'due' end
if nxt == nil or math.abs(tonumber(score) - nxt) > 1 then return 'in-flight' end
redis.call('ZADD', p .. ':due', now, did)
return 'scheduled'
