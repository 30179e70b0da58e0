-- Record as expired the deliveries whose expire_after deadline has passed (`{p}:deadlines`, set
-- at ingest), at that moment rather than at their next try. A delivery that is done, suppressed or
-- being sent right now is left alone: a finished one's deadline is dropped, one in flight is
-- looked at again shortly (the engine records it expired itself if its attempt ends in a wait).
--
-- In flight: due later than now (a lease), but not at the time its state says it waits for (a
-- retry's next_attempt_at), nor at a rate slot reserved for it or its target's throttle end (the
-- claim reschedules those without a lease). As attempt_now.lua tells them apart.
--
-- ARGV (DeliveryQueue.expire_due): prefix, now ms, retention s, now as ISO 8601, at most how many,
--   then per target with an expire_after: its name, expire_after s.
-- Returns, flat, per delivery recorded expired: its id, the reason.
local p, now, ttl, at, most = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local expire = {}
for i = 6, #ARGV - 1, 2 do expire[ARGV[i]] = ARGV[i + 1] end
local dk, due = p .. ':deadlines', p .. ':due'
local final = {delivered = true, failed = true, expired = true, skipped = true, suppressed = true}
local out = {}
for _, did in ipairs(redis.call('ZRANGEBYSCORE', dk, '-inf', now, 'LIMIT', 0, most)) do
  redis.call('ZREM', dk, did)
  local sep = string.find(did, '-', 1, true)
  local eid, t = string.sub(did, 1, (sep or 1) - 1), string.sub(did, (sep or 0) + 1)
  local ek = p .. ':event:' .. eid
  local raw = sep and expire[t] and redis.call('HGET', ek .. ':deliveries', t)
  if raw then
    local st = cjson.decode(raw)
    local pk = p .. ':parked:' .. t
    local score = tonumber(redis.call('ZSCORE', due, did) or '')
    local parked = not score and redis.call('ZSCORE', pk, did)
    local waits = parked or (score and score <= now)
    if score and not waits then
      local nxt = tonumber(st.next_attempt_at)
      waits = (nxt ~= nil and math.abs(score - nxt) <= 1)
        or tonumber(redis.call('HGET', p .. ':reserved', did) or '') == score
        or tonumber(redis.call('GET', p .. ':throttle:' .. t) or '') == score
    end
    if final[st.status] or not (score or parked) then
      -- done, held back at ingest, or nowhere to be sent from: nothing to record
    elseif not waits then
      redis.call('ZADD', dk, now + 2000, did)  -- in flight: look again in two seconds
    else
      redis.call('ZREM', due, did)
      redis.call('ZREM', pk, did)
      redis.call('HDEL', p .. ':reserved', did)
      redis.call('HDEL', p .. ':probes', did)
      local why = 'not delivered within expire_after=' .. expire[t] .. ' s'
      local n = (tonumber(st.attempts) or 0) + 1
      st.status = 'expired'
      st.attempts = n
      st.last_status_code = cjson.null
      st.last_error = why
      st.updated_at = now
      st.next_attempt_at = cjson.null
      st.waiting = cjson.null
      redis.call('HSET', ek .. ':deliveries', t, cjson.encode(st))
      redis.call('EXPIRE', ek .. ':deliveries', ttl)
      redis.call('RPUSH', ek .. ':attempts', cjson.encode({target = t, attempt = n, at_ms = now,
        outcome = 'expired', status_code = cjson.null, latency_ms = cjson.null, error = why,
        response = cjson.null, at = at}))
      redis.call('EXPIRE', ek .. ':attempts', ttl)
      redis.call('ZADD', p .. ':dead', now, did)
      out[#out + 1] = did
      out[#out + 1] = why
    end
  end
end
return out
