-- Let one parked delivery through an automatically paused target, once per probe interval.
--
-- ARGV (DeliveryQueue.probe): prefix, target, now ms, interval ms. Returns the delivery id or nil.
local p, t, now, interval = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local hk = p .. ':target:' .. t
local st = redis.call('HMGET', hk, 'state', 'manual')
if st[1] ~= 'paused' or st[2] == '1' then return false end
if not redis.call('SET', p .. ':probe-at:' .. t, now, 'NX', 'PX', interval) then return false end
local one = redis.call('ZPOPMIN', p .. ':parked:' .. t)
if not one[1] then return false end
redis.call('HSET', p .. ':probes', one[1], now)
redis.call('ZADD', p .. ':due', now, one[1])
return one[1]
