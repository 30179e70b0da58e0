-- The accept step: store a batch of events and their deliveries in one call.
--
-- ARGV (encoded by gateway/store/ingest.py, `encode`; the layout is written there once):
--   prefix, now ms, retention s, dedupe window ms (0: off), the pending delivery state JSON,
--   wake TTL s (0: leave the wake flag alone), the targets' expire_after ('name=ms,...': each
--   new waiting delivery to one gets a deadline in {p}:deadlines), the callbacks inspector's cap
--   (0: off) and window ms, then 11 per item, in the order of `IngestItem`'s fields: kind ('n' a
--   new event, 'a' deliveries to add to a stored one), id, the event's JSON (stored as it is),
--   network, received ms, targets (comma-separated), dedupe key, limits JSON or ''
--   (`limit_fields`), the inspector's entry of the callback, unclosed, or '' (callbacks.lua,
--   loaded before this), the dedupe key's TTL ms if longer than the window (0: the window), the
--   created sibling's dedupe key ('' : none looked for).
-- Returns [config version, 1 if a drain job must be queued, status per item (accepted |
-- duplicate:ID OF THE FIRST | exists | suppressed:KIND:REASON), then 'held:NETWORK:REASON' per
-- prefix just held]. Key names: gateway/store/keys.py.
--
-- Limits slide (`limit_fields` says how): a limit of N > 1 is a sorted set of the invitations it
-- let through by time, trimmed to its window at each one it lets through (so N entries at most),
-- and a limit of 1 a key holding the time of the one it let through, expiring a window after it.
local p, now, ttl, win, state = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local wake_ttl = tonumber(ARGV[6])
local expire = {}
for t, ms in string.gmatch(ARGV[7], '([^,=]+)=(%d+)') do expire[t] = tonumber(ms) end
-- [callbacks inspector] the bounds of its lists, and the batch's entries by network
local callbacks_cap, callbacks_window, inspected = tonumber(ARGV[8]), tonumber(ARGV[9]), {}
local out = {'0', 0}
local holds = {}
-- Sorted-set entries are gathered and written once per key at the end (a command per batch,
-- not per event): most of the script's cost is per command, not per entry.
local dues, evs, nets, sup = {}, {}, {}, {}
local function add_all(cmd, key, flag, args)
  -- unpack is bounded by Lua's C stack (8,000): a drain of 500 events x 100 targets is not
  for j = 1, #args, 1000 do
    local last = math.min(j + 999, #args)
    if flag then
      redis.call(cmd, key, flag, unpack(args, j, last))
    else
      redis.call(cmd, key, unpack(args, j, last))
    end
  end
end
-- "Created" before "accepted" (gateway/ordering.py). A created event's dedupe key may outlive
-- the window so that its accepted sibling finds it; a repeat past the window is then a new
-- invitation (ulid_ms: ulid.lua, loaded before this) and takes the key over.
local dup  -- the first event of the invitation a duplicate repeats (set by repeats)
local made  -- the dedupe key repeats just wrote for a new key (undone if the event was stored)
local function repeats(dk, id, ms, keep, ek)
  if redis.call('SET', dk, id, 'NX', 'PX', keep) then
    made = dk
    return false
  end
  dup = redis.call('GET', dk) or ''
  -- (the same id: this very event, from a run cut short before it was stored)
  if dup == id then return false end
  if keep > win and math.abs(tonumber(ms) - ulid_ms(dup)) >= win then
    -- a stored event run again (a spool drain) never takes the key from a later invitation
    if redis.call('EXISTS', ek) == 1 then return true end
    redis.call('SET', dk, id, 'PX', keep)
    return false
  end
  return true
end
local indexed = {}
local function index(ms, id, n)
  -- the event's entries in the global index and its network's, written after the loop
  indexed[id] = true
  evs[#evs + 1] = ms
  evs[#evs + 1] = id
  local byn = nets[n]
  if not byn then
    byn = {}
    nets[n] = byn
  end
  byn[#byn + 1] = ms
  byn[#byn + 1] = id
end
for i = 10, #ARGV - 10, 11 do
  local kind, id, event, n, ms = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local targets, dedupe, limits, entry = ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  local keep, ckey = math.max(win, tonumber(ARGV[i + 9])), ARGV[i + 10]
  local ek = p .. ':event:' .. id
  made = nil
  if ckey ~= '' then
    -- an accepted event names its invitation's created one (never a later one), last in its JSON
    local cid = redis.call('GET', p .. ':dedupe:' .. ckey)
    if cid and ulid_ms(cid) <= tonumber(ms) then
      event = string.sub(event, 1, -2) .. ',"created_id":"' .. cid .. '"}'
    end
  end
  local status = 'accepted'
  if kind == 'a' then
    -- targets added by a configuration change during the accept: deliveries only
    for t in string.gmatch(targets, '[^,]+') do
      if redis.call('HSETNX', ek .. ':deliveries', t, state) == 1 then
        dues[#dues + 1] = ms
        dues[#dues + 1] = id .. '-' .. t
      end
    end
    redis.call('EXPIRE', ek .. ':deliveries', ttl)
  elseif keep > 0 and dedupe ~= '' and repeats(p .. ':dedupe:' .. dedupe, id, ms, keep, ek)
    and redis.call('EXISTS', ek) == 0 then
    -- A duplicate, told before its event is written: nothing of it is stored, nothing deleted.
    -- (An event stored before whose invitation another event took meanwhile is not one: below.)
    status = 'duplicate:' .. dup
    redis.call('HINCRBY', p .. ':counters', 'duplicates', 1)
  elseif not redis.call('SET', ek, event, 'NX', 'EX', ttl) then
    -- Stored before: a spool drain, or a batch sent again after a timeout. A script stopped by
    -- an error keeps the writes it made, so the event may lack its deliveries or entries:
    -- complete them (deliveries still pending, or missing, are due; no others), never twice.
    -- (Deliveries are added only when the event has none at all: one with some, suppressed ones
    -- say, gets no new ones here.)
    status = 'exists'
    -- stored before: a dedupe key made just now for it (its own had expired) is not kept
    if made then redis.call('DEL', made) end
    local dk = ek .. ':deliveries'
    local none = redis.call('EXISTS', dk) == 0
    for t in string.gmatch(targets, '[^,]+') do
      local cur = not none and redis.call('HGET', dk, t)
      if none then
        redis.call('HSET', dk, t, state)
      end
      if none or cur == state then
        dues[#dues + 1] = ms
        dues[#dues + 1] = id .. '-' .. t
      end
    end
    if none and targets ~= '' then redis.call('EXPIRE', dk, ttl) end
    if not indexed[id] and not redis.call('ZSCORE', p .. ':events', id) then index(ms, id, n) end
  else
    -- abuse limits: a suppressed invitation is kept, visible and releasable, never delivered
    local why, kind
    if limits ~= '' then
      local it = cjson.decode(limits)
      why, kind = it.sup, it.k or 'allowlist'
      if not why and it.g then
        why = redis.call('GET', p .. ':' .. it.g.h)  -- its prefix is held (false: not)
        if why then kind = 'guard' end
      end
      if not why and it.lim then
        for _, l in ipairs(it.lim) do
          local lk = p .. ':' .. l[1]
          local over
          if l[2] == 1 then
            -- (the time it let one through, not the key's TTL: `now` is the callers' clock)
            over = (tonumber(redis.call('GET', lk)) or 0) > now - l[3]
          else
            -- those it let through less than a window ago (now - window excluded)
            over = redis.call('ZCOUNT', lk, '(' .. (now - l[3]), '+inf') >= l[2]
          end
          if over then
            why, kind = l[4], l[5]
            break
          end
        end
      end
      if not why and it.lim then
        for _, l in ipairs(it.lim) do
          local lk = p .. ':' .. l[1]
          if l[2] == 1 then
            redis.call('SET', lk, string.format('%d', now), 'PX', l[3])
          else
            redis.call('ZADD', lk, now, id)
            redis.call('ZREMRANGEBYSCORE', lk, '-inf', now - l[3])
            redis.call('PEXPIRE', lk, l[3])
          end
        end
      end
      if not why and it.g then
        -- created and accepted over the sliding window: this fixed window's counts and the
        -- previous one's, weighed by the share of it still inside the sliding window
        local g = it.g
        local made = redis.call('INCR', p .. ':' .. g.c)
        if made == 1 then redis.call('PEXPIRE', p .. ':' .. g.c, g.ttl) end
        local before = redis.call('MGET', p .. ':' .. g.cp, p .. ':' .. g.a, p .. ':' .. g.ap)
        -- (rounded: 4.9997 of them is 5)
        made = math.floor(made + g.w * (tonumber(before[1]) or 0) + 0.5)
        local took = math.floor((tonumber(before[2]) or 0) + g.w * (tonumber(before[3]) or 0) + 0.5)
        if made >= g.min and took / made <= g.ratio then
          local reason = g.why .. ': ' .. made .. ' invitations, ' .. took .. ' accepted'
          if redis.call('SET', p .. ':' .. g.h, reason, 'NX', 'EX', g.hold) then
            -- listed (gateway holds list), and told to the alert target by a worker's ticker
            redis.call('HSET', p .. ':holds', g.h, cjson.encode({network = n, prefix = g.p,
              reason = reason, since = now, ends = now + g.hold * 1000}))
            holds[#holds + 1] = 'held:' .. n .. ':' .. reason
          end
        end
      end
      if it.ga then
        local ak = p .. ':' .. it.ga[1]
        if redis.call('INCR', ak) == 1 then redis.call('PEXPIRE', ak, it.ga[2]) end
      end
    end
    local st, into = state, dues
    if why then
      status = 'suppressed:' .. kind .. ':' .. why
      redis.call('HINCRBY', p .. ':counters', 'suppressed', 1)
      st = cjson.encode({status = 'suppressed', attempts = 0, retries = 0, throttles = 0,
        replays = 0, updated_at = now, waiting = why, suppressed_by = kind})
      into = sup
    end
    if targets ~= '' then
      local fields = {}
      for t in string.gmatch(targets, '[^,]+') do
        fields[#fields + 1] = t
        fields[#fields + 1] = st
        into[#into + 1] = ms
        into[#into + 1] = id .. '-' .. t
      end
      add_all('HSET', ek .. ':deliveries', nil, fields)
      redis.call('EXPIRE', ek .. ':deliveries', ttl)
    end
    index(ms, id, n)
  end
  out[#out + 1] = status
  -- [callbacks inspector] the callback as received, closed with what became of it
  if entry ~= '' and callbacks_cap > 0 then
    local byn = inspected[n]
    if not byn then
      byn = {}
      inspected[n] = byn
    end
    byn[#byn + 1] = entry .. callbacks_outcome(status)
  end
end
-- [callbacks inspector] one LPUSH and one LTRIM per network of the batch
for n, entries in pairs(inspected) do
  callbacks_push(p, 'n', n, entries, callbacks_cap, now, callbacks_window)
end
local cutoff = now - ttl * 1000
for n, byn in pairs(nets) do
  local nk = p .. ':events:net:' .. n
  add_all('ZADD', nk, nil, byn)
  redis.call('ZREMRANGEBYSCORE', nk, '-inf', cutoff)
  redis.call('EXPIRE', nk, ttl)
end
if #evs > 0 then
  add_all('ZADD', p .. ':events', nil, evs)
  redis.call('EXPIRE', p .. ':events', ttl)
end
if #sup > 0 then
  add_all('ZADD', p .. ':suppressed', nil, sup)
end
-- The two global indexes lose what is past retention at most every 10 s, not at every batch:
-- at a few callbacks per batch, the batch's fixed commands cost Redis more than its events.
if #evs > 0 and redis.call('SET', p .. ':trimmed', '1', 'NX', 'EX', 10) then
  redis.call('ZREMRANGEBYSCORE', p .. ':events', '-inf', cutoff)
  redis.call('ZREMRANGEBYSCORE', p .. ':suppressed', '-inf', cutoff)
end
if #dues > 0 then
  if next(expire) then
    -- each waiting delivery to a target with expire_after: its deadline (received + expire_after)
    local deadlines = {}
    for j = 1, #dues, 2 do
      local did = dues[j + 1]
      local ms = expire[string.sub(did, string.find(did, '-', 1, true) + 1)]
      if ms then
        deadlines[#deadlines + 1] = dues[j] + ms
        deadlines[#deadlines + 1] = did
      end
    end
    if #deadlines > 0 then add_all('ZADD', p .. ':deadlines', 'NX', deadlines) end
  end
  add_all('ZADD', p .. ':due', 'NX', dues)
  if wake_ttl > 0 and redis.call('SET', p .. ':wake', '1', 'NX', 'EX', wake_ttl) then out[2] = 1 end
end
out[1] = redis.call('GET', p .. ':config:version') or '0'
for _, h in ipairs(holds) do out[#out + 1] = h end
return out
