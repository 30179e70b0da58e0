-- Record a group of finished attempts: each one's attempt and state, where its delivery goes
-- next (due again, parked, dead or done), the target's throttle and health; a paused target
-- whose probe succeeded is resumed (resume.lua is loaded before this).
--
-- ARGV (gateway/store/queue.py, `encode_completions`; the layout is written there once): prefix,
--   now ms, retention s, then 13 per record, in the order of `Completion`'s fields ('' for
--   absent): delivery id, target, event id, the target's concurrency cap, its pause rule
--   (failures, ms), attempt JSON, state JSON, due ms, park ('1'), dead ('1'), throttle_until ms,
--   health (ok | fail | gone).
-- Returns the targets' changes of state, flat: target, paused | resumed | disabled, reason.
local p, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local due, held = p .. ':due', p .. ':held'
local changes = {}
local function opt(v) if v == '' then return nil end return v end
for i = 4, #ARGV - 12, 13 do
  local r = {did = ARGV[i], t = ARGV[i + 1], eid = ARGV[i + 2], cap = tonumber(ARGV[i + 3]),
    pause_failures = tonumber(ARGV[i + 4]), pause_ms = tonumber(ARGV[i + 5]),
    attempt = opt(ARGV[i + 6]), state = opt(ARGV[i + 7]), due = opt(ARGV[i + 8]),
    park = opt(ARGV[i + 9]), dead = opt(ARGV[i + 10]),
    throttle_until = tonumber(opt(ARGV[i + 11]) or ''), health = opt(ARGV[i + 12])}
  local ek = p .. ':event:' .. r.eid
  -- The deliveries hash is gone only when its event was erased (gateway forget) or outlived:
  -- EXPIRE, which renews it otherwise, then answers 0 and nothing of the record is written, so
  -- a request in flight during an erasure does not bring its records back (no command more).
  if r.state and redis.call('EXPIRE', ek .. ':deliveries', ttl) == 0 then
    redis.call('ZREM', due, r.did)
  else
    if r.attempt then
      redis.call('RPUSH', ek .. ':attempts', r.attempt)
      redis.call('EXPIRE', ek .. ':attempts', ttl)
    end
    if r.state then redis.call('HSET', ek .. ':deliveries', r.t, r.state) end
    if r.due then
      redis.call('ZADD', due, r.due, r.did)
    elseif r.park then
      redis.call('ZREM', due, r.did)
      redis.call('ZADD', p .. ':parked:' .. r.t, now, r.did)
    else
      redis.call('ZREM', due, r.did)
    end
    if r.dead then redis.call('ZADD', p .. ':dead', now, r.did) end
  end
  if r.throttle_until then
    redis.call('SET', p .. ':throttle:' .. r.t, r.throttle_until, 'PX', math.max(1, r.throttle_until - now))
  end
  if r.cap > 0 then
    redis.call('ZREM', p .. ':inflight:' .. r.t, r.did)
    if redis.call('SISMEMBER', held, r.t) == 0 then
      local one = redis.call('ZPOPMIN', p .. ':parked:' .. r.t)
      if one[1] then redis.call('ZADD', due, now, one[1]) end
    end
  end
  if r.health then
    local hk = p .. ':target:' .. r.t
    local st = redis.call('HMGET', hk, 'state', 'failures', 'manual', 'first_failure_at')
    local state = st[1] or 'active'
    if r.health == 'ok' then
      if state == 'paused' and st[3] ~= '1' then
        resume(p, r.t, now)
        changes[#changes + 1] = r.t
        changes[#changes + 1] = 'resumed'
        changes[#changes + 1] = 'a probe succeeded'
      elseif st[2] and st[2] ~= '0' then
        redis.call('HSET', hk, 'failures', 0)
      end
    elseif r.health == 'fail' then
      local f = redis.call('HINCRBY', hk, 'failures', 1)
      local first = tonumber(st[4] or now)
      if f == 1 then
        first = now
        redis.call('HSET', hk, 'first_failure_at', now)
      end
      if state == 'active' and r.pause_failures > 0 and f >= r.pause_failures and now - first >= r.pause_ms then
        local why = f .. ' consecutive failures in ' .. math.floor((now - first) / 1000) .. ' s'
        redis.call('SADD', held, r.t)
        redis.call('HSET', hk, 'state', 'paused', 'manual', '0', 'since', now, 'reason', why)
        changes[#changes + 1] = r.t
        changes[#changes + 1] = 'paused'
        changes[#changes + 1] = why
      end
    elseif r.health == 'gone' and state ~= 'disabled' then
      redis.call('SADD', held, r.t)
      redis.call('HSET', hk, 'state', 'disabled', 'manual', '0', 'since', now, 'reason', '410 Gone')
      changes[#changes + 1] = r.t
      changes[#changes + 1] = 'disabled'
      changes[#changes + 1] = 'the target answered 410 Gone'
    end
  end
end
return changes
