-- Erasure, step two: remove events and everything of theirs, atomically per call. A delivery
-- still waiting is cancelled (it leaves every queue; one in flight is not recorded when it
-- ends: complete.lua writes nothing for a delivery whose event is gone).
--
-- ARGV (gateway/store/erasure.py, `forget_events`): prefix, then 4 per event: id, network, the
-- dedupe keys of its invitation's created and accepted events (key names: gateway/store/keys.py).
-- Returns [events removed, deliveries cancelled, dead letters removed, keys deleted].
local p = ARGV[1]
local events, cancelled, dead, keys = 0, 0, 0, 0
local waiting = {pending = true, retrying = true, suppressed = true}
for i = 2, #ARGV - 3, 4 do
  local id, net = ARGV[i], ARGV[i + 1]
  local ek = p .. ':event:' .. id
  local states = redis.call('HGETALL', ek .. ':deliveries')
  for j = 1, #states, 2 do
    local t, did = states[j], id .. '-' .. states[j]
    local status = string.match(states[j + 1], '"status":%s*"(%a+)"')
    if waiting[status] then cancelled = cancelled + 1 end
    dead = dead + redis.call('ZREM', p .. ':dead', did)
    redis.call('ZREM', p .. ':due', did)
    redis.call('ZREM', p .. ':parked:' .. t, did)
    redis.call('ZREM', p .. ':inflight:' .. t, did)
    redis.call('ZREM', p .. ':suppressed', did)
    redis.call('ZREM', p .. ':deadlines', did)
    redis.call('HDEL', p .. ':reserved', did)
    redis.call('HDEL', p .. ':probes', did)
  end
  events = events + redis.call('DEL', ek)
  keys = keys + redis.call('DEL', ek .. ':deliveries', ek .. ':attempts',
    p .. ':dedupe:' .. ARGV[i + 2], p .. ':dedupe:' .. ARGV[i + 3])
  redis.call('ZREM', p .. ':events', id)
  redis.call('ZREM', p .. ':events:net:' .. net, id)
end
return {events, cancelled, dead, keys + events}
