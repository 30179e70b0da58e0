-- resume(p, t, now): a target is active again, its parked deliveries due (at their old time if
-- that is earlier). Loaded in front of complete.lua and resume_target.lua (gateway/store/lua.py).
local function resume(p, t, now)
  local due = p .. ':due'
  redis.call('SREM', p .. ':held', t)
  redis.call('HSET', p .. ':target:' .. t, 'state', 'active', 'failures', 0, 'manual', '0',
    'since', now, 'reason', '')
  local pk = p .. ':parked:' .. t
  if redis.call('EXISTS', pk) == 1 then
    redis.call('ZUNIONSTORE', due, 2, due, pk, 'WEIGHTS', 1, 0, 'AGGREGATE', 'MIN')
    redis.call('DEL', pk)
  end
end
