-- Make a failed, expired, skipped or suppressed delivery (a delivered one with force) due again.
--
-- ARGV (DeliveryQueue.replay): prefix, now ms, retention s, delivery id, force ('1' or '0').
-- Returns replayed, or why not: unknown | pending | held | delivered | the delivery's status.
local p, now, ttl, did, force = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local sep = string.find(did, '-', 1, true)
if not sep then return 'unknown' end
local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
local dk = p .. ':event:' .. eid .. ':deliveries'
local raw = redis.call('HGET', dk, t)
if not raw or redis.call('EXISTS', p .. ':event:' .. eid) == 0 then return 'unknown' end
if redis.call('ZSCORE', p .. ':due', did) then return 'pending' end
if redis.call('ZSCORE', p .. ':parked:' .. t, did) then return 'held' end
local st = cjson.decode(raw)
-- suppressed: held back by an abuse limit at ingest; a replay releases it
local final = {failed = true, expired = true, skipped = true, suppressed = true}
if st.status == 'delivered' and force ~= '1' then return 'delivered' end
if not final[st.status] and st.status ~= 'delivered' then return st.status end
st.status = 'pending'
st.retries = 0
st.throttles = 0
st.replays = (tonumber(st.replays) or 0) + 1
st.next_attempt_at = now
st.waiting = cjson.null
st.updated_at = now
redis.call('HSET', dk, t, cjson.encode(st))
redis.call('EXPIRE', dk, ttl)
redis.call('ZADD', p .. ':due', now, did)
redis.call('ZREM', p .. ':dead', did)
redis.call('ZREM', p .. ':suppressed', did)
return 'replayed'
