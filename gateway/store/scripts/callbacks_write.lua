-- The callbacks inspector's writer (gateway/store/callbacks.py, `encode_write`): entries of
-- rejected (and spooled) callbacks, batched by each web process. Needs callbacks.lua.
-- ARGV: prefix, now ms, cap, window ms, then per list: its kind ('n' taken, 'r' rejected, 'u'
-- unroutable), its network ('' for 'u'), how many entries, the entries (complete JSON objects).
local p, now, cap, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local i = 5
while i <= #ARGV do
  local list, network, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local entries = {}
  for j = 1, count do entries[j] = ARGV[i + 2 + j] end
  callbacks_push(p, list, network, entries, cap, now, window)
  i = i + 3 + count
end
return 1
