-- Hand claimed deliveries back, due now (a worker stopping before it could send them).
--
-- ARGV (DeliveryQueue.release): prefix, now ms, then the delivery ids. Returns how many.
local p, now = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
  local did = ARGV[i]
  local sep = string.find(did, '-', 1, true)
  redis.call('ZADD', p .. ':due', now, did)
  if sep then redis.call('ZREM', p .. ':inflight:' .. string.sub(did, sep + 1), did) end
end
return #ARGV - 2
