-- What a worker's ticker tells the alert target about the guard's holds, each once across all
-- workers: holds not told yet, and holds that ended (their time ran out, or they were lifted),
-- which leave the list.
--
-- ARGV (gateway/store/holds.py, `news`): prefix, now ms.
-- Returns, flat: 'held' | 'ended', the hold's key, its JSON.
local p, now = ARGV[1], tonumber(ARGV[2])
local hk = p .. ':holds'
local all = redis.call('HGETALL', hk)
local out = {}
for i = 1, #all, 2 do
  local field, h = all[i], cjson.decode(all[i + 1])
  local told = h.told
  if not told then
    h.told = true
    out[#out + 1] = 'held'
    out[#out + 1] = field
    out[#out + 1] = cjson.encode(h)
  end
  if h.lifted or h.ends <= now then
    if not h.ended then h.ended = h.ends end
    redis.call('HDEL', hk, field)
    out[#out + 1] = 'ended'
    out[#out + 1] = field
    out[#out + 1] = cjson.encode(h)
  elseif not told then
    redis.call('HSET', hk, field, cjson.encode(h))
  end
end
return out
