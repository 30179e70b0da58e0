-- Claim up to LIMIT due deliveries for a worker, applying the targets' policies: a held target's
-- deliveries are parked (but one marked as its probe), a target at its concurrency cap parks the
-- rest, a throttled or rate-limited one's are rescheduled; each claimed one is leased.
--
-- An accepted delivery to a target that orders the two events waits for its created sibling
-- (gateway/ordering.py).
--
-- ARGV (DeliveryQueue.claim): prefix, now ms, lease ms, limit, the policies JSON ({target:
--   {concurrency, interval, order, order_label}}, Config.policies), the configuration version
--   they come from ('': any).
-- Returns [next due ms (-1: none; now: claim again), config version, then 4 per delivery: id,
-- event JSON, state JSON, flags (space-separated: 'probe', 'after:...' or 'bound:...' of
-- gateway/ordering.py; '' mostly)], or ['stale', config version].
local p, now, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pol = cjson.decode(ARGV[5])
local version = redis.call('GET', p .. ':config:version') or '0'
if ARGV[6] ~= '' and ARGV[6] ~= version then
  -- The policies were built from another configuration version: claim nothing, reload, ask again.
  return {'stale', version}
end
local due, held = p .. ':due', p .. ':held'
local WAITING = 'waiting for its invitation_created delivery '
-- "Created" before "accepted": the accepted delivery `did` (its event names its created sibling
-- `cid`) waits while the created delivery to the same target is pending or retrying, up to the
-- bound; then, or once that one settled, it goes, flagged if it waited or the bound let it go.
-- Returns go, flags, and its state (read here, so not again below).
local function created_first(did, eid, t, tp, cid, flag)
  local cdid = cid .. '-' .. t
  local cst = redis.call('HGET', p .. ':event:' .. cid .. ':deliveries', t)
  local status = cst and string.match(cst, '"status":%s*"(%a+)"') or 'gone'
  local dk = p .. ':event:' .. eid .. ':deliveries'
  local deadline = ulid_ms(cid) + tp.order
  if (status == 'pending' or status == 'retrying') and now >= deadline then
    return true, flag .. ' bound:' .. status .. ':' .. cdid, redis.call('HGET', dk, t)
  elseif status == 'pending' or status == 'retrying' then
    -- Looked at again a second after the created one's next attempt; in a second while that one
    -- is due or in flight; in 30 s while it is parked (its target's cap) or waits nowhere. Never
    -- past the bound.
    local nxt = tonumber(string.match(cst, '"next_attempt_at":%s*(%d+)') or '0')
    local at = now + 1000
    if nxt > now then
      at = nxt + 1000
    elseif not redis.call('ZSCORE', due, cdid) then
      at = now + 30000
    end
    at = math.min(at, deadline)
    redis.call('ZADD', due, at, did)
    local raw = redis.call('HGET', dk, t)
    if raw then
      local st = cjson.decode(raw)
      st.waiting = WAITING .. cdid .. ' to be delivered or fail for good (at most '
        .. (tp.order_label or '?') .. ')'
      st.next_attempt_at = at
      redis.call('HSET', dk, t, cjson.encode(st))
    end
    -- a probe of a paused target spent on a delivery that waits: the next one comes sooner
    if flag == 'probe' then redis.call('DEL', p .. ':probe-at:' .. t) end
    return false, flag
  end
  local raw = redis.call('HGET', dk, t)
  if raw and string.find(raw, '"waiting":"' .. WAITING, 1, true) then
    flag = flag .. ' after:' .. status .. ':' .. cdid
  end
  return true, flag, raw
end
local out = {'-1', version}
local n = 0
-- Per target, read once per call: whether it is held and until when it is throttled (this script
-- changes neither; complete.lua and the operators' commands do).
local is_held, throttled = {}, {}
for _, did in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, limit * 4)) do
  if n >= limit then break end
  local sep = string.find(did, '-', 1, true)
  if not sep then
    redis.call('ZREM', due, did)
  else
    local eid, t = string.sub(did, 1, sep - 1), string.sub(did, sep + 1)
    local tp = pol[t]
    local go, flag = true, ''
    local ev, st  -- the event's JSON and the delivery's state, when read before the checks end
    if tp then
      local ik = p .. ':inflight:' .. t
      if is_held[t] == nil then is_held[t] = redis.call('SISMEMBER', held, t) == 1 end
      if is_held[t] then
        if redis.call('HDEL', p .. ':probes', did) == 1 then
          flag = 'probe'
        else
          redis.call('ZREM', due, did)
          redis.call('ZADD', p .. ':parked:' .. t, now, did)
          go = false
        end
      end
      if go and tp.order then
        -- (the GET the claim makes anyway, made first for a target that orders its events)
        ev = redis.call('GET', p .. ':event:' .. eid) or ''
        local cid = string.match(ev, ',"created_id":"(%w+)"}$')
        if cid then go, flag, st = created_first(did, eid, t, tp, cid, flag) end
      end
      if go and tp.concurrency > 0 then
        redis.call('ZREMRANGEBYSCORE', ik, '-inf', now)
        if redis.call('ZCARD', ik) >= tp.concurrency then
          redis.call('ZREM', due, did)
          redis.call('ZADD', p .. ':parked:' .. t, now, did)
          go = false
        end
      end
      if go then
        if throttled[t] == nil then throttled[t] = tonumber(redis.call('GET', p .. ':throttle:' .. t) or '0') end
        local hold = throttled[t]
        if hold > now then
          redis.call('ZADD', due, hold, did)
          go = false
        elseif tp.interval > 0 and redis.call('HDEL', p .. ':reserved', did) == 0 then
          local rk = p .. ':rate:' .. t
          local slot = math.max(tonumber(redis.call('GET', rk) or '0'), now)
          redis.call('SET', rk, string.format('%.3f', slot + tp.interval),
            'PX', math.floor(slot + tp.interval - now) + 1000)
          if slot > now then
            redis.call('ZADD', due, math.ceil(slot), did)
            redis.call('HSET', p .. ':reserved', did, math.ceil(slot))
            go = false
          end
        end
      end
      if go and tp.concurrency > 0 then
        redis.call('ZADD', ik, now + lease, did)
      end
    end
    if go then
      redis.call('ZADD', due, now + lease, did)
      local ek = p .. ':event:' .. eid
      out[#out + 1] = did
      out[#out + 1] = ev or redis.call('GET', ek) or ''
      out[#out + 1] = st or redis.call('HGET', ek .. ':deliveries', t) or ''
      out[#out + 1] = flag
      n = n + 1
    end
  end
end
local nxt = redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if nxt[2] then out[1] = nxt[2] end
-- More is due than this claim looked at (it looks at limit * 4; every one it looked at left the
-- due range: claimed, parked or rescheduled): due now, so the caller claims again.
if redis.call('ZCOUNT', due, '-inf', now) > 0 then out[1] = ARGV[2] end
return out
