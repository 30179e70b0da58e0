-- ulid_ms(id): the millisecond an event id (a ULID) was made, from its first 10 characters
-- (Crockford base32). Loaded in front of ingest.lua and claim.lua (gateway/store/lua.py).
local B32
local function ulid_ms(u)
  if not B32 then
    B32 = {}
    for k = 1, 32 do B32[string.byte('0123456789ABCDEFGHJKMNPQRSTVWXYZ', k)] = k - 1 end
  end
  local t = 0
  for k = 1, 10 do t = t * 32 + (B32[string.byte(u, k)] or 0) end
  return t
end
