-- Lift a hold of the prefix guard before it ends: the prefix takes invitations again, and the
-- hold stays listed, marked lifted, until a worker's ticker has told its end (hold_news.lua).
--
-- ARGV (gateway/store/holds.py, `lift`): prefix, now ms, the hold's key ('hold:DIGEST'), who.
-- Returns the hold's JSON as lifted, or false when there is no such hold, or it has ended.
local p, now, hk, by = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local raw = redis.call('HGET', p .. ':holds', hk)
if not raw then return false end
local h = cjson.decode(raw)
if h.lifted or h.ends <= now then return false end
redis.call('DEL', p .. ':' .. hk)
h.lifted = by
h.ended = now
raw = cjson.encode(h)
redis.call('HSET', p .. ':holds', hk, raw)
return raw
