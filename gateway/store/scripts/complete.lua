-- Record a group of finished attempts: each one's attempt and state, where its delivery goes
-- next (due again, parked, dead or done), the target's throttle and health; a paused target
-- whose probe succeeded is resumed (resume.lua is loaded before this).
--
-- ARGV (gateway/store/queue.py, `encode_completions`; the layout is written there once): prefix,
--   now ms, retention s, then per record its kind and fields:
--   'f', then 13 in the order of `Completion`'s fields ('' for absent): delivery id, target,
--     event id, the target's concurrency cap, its pause rule (failures, ms), attempt JSON, state
--     JSON, due ms, park ('1'), dead ('1'), throttle_until ms, health (ok | fail | gone);
--   'd' (delivered at its first attempt), then 4: delivery id, the target's concurrency cap,
--     attempt JSON, state JSON; target and event id from the delivery id (EVENTID-TARGET), the
--     health ok, the rest absent.
-- Returns the targets' changes of state, flat: target, paused | resumed | disabled, reason.
local p, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local due, held = p .. ':due', p .. ':held'
local changes = {}
-- Within this call: keys that already had their EXPIRE (an event's attempts and deliveries, for
-- its several targets: the same TTL again changes nothing; a deliveries hash found gone stays
-- false), and targets an OK has been applied to (a second OK changes nothing, until a failure of
-- the same target in between).
local renewed, ok_done = {}, {}
local i, n = 4, #ARGV
while i <= n do
  -- Plain locals, not a table per record: this runs for every delivery.
  local did, t, eid, cap, attempt, state_json, due_at, park, dead, throttle_until, health, rule
  if ARGV[i] == 'd' then
    did, cap, attempt, state_json = ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
    local sep = string.find(did, '-', 1, true)
    eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
    due_at, park, dead, health = '', '', '', 'ok'
    i = i + 5
  else
    did, t, eid, cap = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
    rule = i + 5  -- the pause rule: failures, ms (read only for a failure)
    attempt, state_json, due_at = ARGV[i + 7], ARGV[i + 8], ARGV[i + 9]
    park, dead, throttle_until, health = ARGV[i + 10], ARGV[i + 11], tonumber(ARGV[i + 12]), ARGV[i + 13]
    i = i + 14
  end
  local ek = p .. ':event:' .. eid
  -- The deliveries hash is gone only when its event was erased (gateway forget) or outlived:
  -- EXPIRE, which renews it otherwise, then answers 0 and nothing of the record is written, so
  -- a request in flight during an erasure does not bring its records back (no command more).
  local dk, alive = ek .. ':deliveries', true
  if state_json ~= '' then
    alive = renewed[dk]
    if alive == nil then
      alive = redis.call('EXPIRE', dk, ttl) == 1
      renewed[dk] = alive
    end
  end
  if not alive then
    redis.call('ZREM', due, did)
  else
    if attempt ~= '' then
      local k = ek .. ':attempts'
      redis.call('RPUSH', k, attempt)
      if not renewed[k] then
        redis.call('EXPIRE', k, ttl)
        renewed[k] = true
      end
    end
    if state_json ~= '' then redis.call('HSET', dk, t, state_json) end
    if due_at ~= '' then
      redis.call('ZADD', due, due_at, did)
    elseif park ~= '' then
      redis.call('ZREM', due, did)
      redis.call('ZADD', p .. ':parked:' .. t, now, did)
    else
      redis.call('ZREM', due, did)
    end
    if dead ~= '' then redis.call('ZADD', p .. ':dead', now, did) end
  end
  if throttle_until then
    redis.call('SET', p .. ':throttle:' .. t, throttle_until, 'PX', math.max(1, throttle_until - now))
  end
  if cap > 0 then
    redis.call('ZREM', p .. ':inflight:' .. t, did)
    if redis.call('SISMEMBER', held, t) == 0 then
      local one = redis.call('ZPOPMIN', p .. ':parked:' .. t)
      if one[1] then redis.call('ZADD', due, now, one[1]) end
    end
  end
  if health == 'ok' and ok_done[t] then
    health = ''
  end
  if health ~= '' then
    local hk = p .. ':target:' .. t
    local st = redis.call('HMGET', hk, 'state', 'failures', 'manual', 'first_failure_at')
    local state = st[1] or 'active'
    if health == 'ok' then
      ok_done[t] = true
      if state == 'paused' and st[3] ~= '1' then
        resume(p, t, now)
        changes[#changes + 1] = t
        changes[#changes + 1] = 'resumed'
        changes[#changes + 1] = 'a probe succeeded'
      elseif st[2] and st[2] ~= '0' then
        redis.call('HSET', hk, 'failures', 0)
      end
    elseif health == 'fail' then
      ok_done[t] = nil
      local pause_failures, pause_ms = tonumber(ARGV[rule]), tonumber(ARGV[rule + 1])
      local f = redis.call('HINCRBY', hk, 'failures', 1)
      local first = tonumber(st[4] or now)
      if f == 1 then
        first = now
        redis.call('HSET', hk, 'first_failure_at', now)
      end
      if state == 'active' and pause_failures > 0 and f >= pause_failures and now - first >= pause_ms then
        local why = f .. ' consecutive failures in ' .. math.floor((now - first) / 1000) .. ' s'
        redis.call('SADD', held, t)
        redis.call('HSET', hk, 'state', 'paused', 'manual', '0', 'since', now, 'reason', why)
        changes[#changes + 1] = t
        changes[#changes + 1] = 'paused'
        changes[#changes + 1] = why
      end
    elseif health == 'gone' then
      ok_done[t] = nil
      if state ~= 'disabled' then
        redis.call('SADD', held, t)
        redis.call('HSET', hk, 'state', 'disabled', 'manual', '0', 'since', now, 'reason', '410 Gone')
        changes[#changes + 1] = t
        changes[#changes + 1] = 'disabled'
        changes[#changes + 1] = 'the target answered 410 Gone'
      end
    end
  end
end
return changes
