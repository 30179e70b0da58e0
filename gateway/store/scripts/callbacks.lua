-- The callbacks inspector's lists (gateway/store/callbacks.py), shared by ingest.lua (callbacks
-- the ingest took, pushed in the same call as their accept) and callbacks_write.lua (rejected
-- ones, and spooled ones, from each web process' writer). Each list keeps the newest `cap`
-- entries received within `window` ms, newest first, and lives `window` ms after its last push.
-- An entry is a JSON array whose first item is the ms it was received (`Entry` in callbacks.py).
local function callbacks_key(p, list, network)
  if list == 'r' then return p .. ':callbacks:rejected:' .. network end
  if list == 'u' then return p .. ':callbacks:unroutable' end
  return p .. ':callbacks:net:' .. network
end

local function callbacks_push(p, list, network, entries, cap, now, window)
  local key = callbacks_key(p, list, network)
  for j = 1, #entries, 1000 do
    redis.call('LPUSH', key, unpack(entries, j, math.min(j + 999, #entries)))
  end
  redis.call('LTRIM', key, 0, cap - 1)
  -- Entries past the window, from the oldest end: a few per push (the next push takes the rest).
  local cutoff = now - window
  for _ = 1, 100 do
    local last = redis.call('LINDEX', key, -1)
    local at = last and tonumber(string.match(last, '^%[%s*(%d+)'))
    if not at or at >= cutoff then break end
    redis.call('RPOP', key)
  end
  redis.call('PEXPIRE', key, window)
  -- Which networks have lists (an operator's listing of every network reads them).
  if list ~= 'u' then redis.call('ZADD', p .. ':callbacks:networks', now, network) end
end

-- What became of a callback the ingest took, closing its entry (the ingest's status text): the
-- outcome, and for a duplicate the first event's id, for a suppressed one the reason.
local function callbacks_outcome(status)
  local kind, detail = string.match(status, '^([a-z]+):?(.*)$')
  if kind == 'duplicate' then
    return ',"duplicate",' .. (detail ~= '' and cjson.encode(detail) or 'null') .. ']'
  elseif kind == 'suppressed' then
    -- 'suppressed:KIND:REASON' (the rule that fired, then why): the reason is what a reader needs
    local reason = string.match(detail, '^[a-z]+:(.*)$') or detail
    return ',"suppressed",' .. cjson.encode(reason) .. ']'
  end
  return ',"accepted"]'  -- accepted, or exists (stored by an earlier try of the batch)
end
