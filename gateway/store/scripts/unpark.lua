-- Move parked deliveries of a target that is not held back to due, up to its free slots.
--
-- ARGV (DeliveryQueue.unpark): prefix, target, now ms, concurrency cap (0: none). Returns how many.
local p, t, now, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('SISMEMBER', p .. ':held', t) == 1 then return 0 end
local ik, pk = p .. ':inflight:' .. t, p .. ':parked:' .. t
redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
local free = redis.call('ZCARD', pk)
if cap > 0 then free = math.min(free, cap - redis.call('ZCARD', ik)) end
local moved = 0
while moved < free do
  local one = redis.call('ZPOPMIN', pk)
  if not one[1] then break end
  redis.call('ZADD', p .. ':due', now, one[1])
  moved = moved + 1
end
return moved
