-- Erasure, step one: the events of one page of a retention index that hold a number.
--
-- ARGV (gateway/store/erasure.py, `find_events`): prefix, network ('': the global index, every
--   network), ZSCAN cursor, page size, then each digit string that spells the number.
-- An event holds it when the digits of its invitee, of the invitee's E.164 form or of its
-- invitor are one of them (a SIP username may be the number; the JSON's field order is
-- InvitationEvent.to_json's).
-- Returns [next cursor ('0': done), then the ids of the events that hold it].
local p, net, cursor, count = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local wanted = {}
for i = 5, #ARGV do wanted[ARGV[i]] = true end
local index = p .. ':events'
if net ~= '' then index = p .. ':events:net:' .. net end
local page = redis.call('ZSCAN', index, cursor, 'COUNT', count)
local out = {page[1]}
local items = page[2]
for i = 1, #items, 2 do
  local id = items[i]
  local ev = redis.call('GET', p .. ':event:' .. id)
  if ev then
    local invitee = string.match(ev, '"invitee":"([^"]*)"') or ''
    local e164 = string.match(ev, '"invitee_e164":"([^"]*)"') or ''
    local invitor = string.match(ev, '"invitor":"(.-)","network_id":') or ''
    if wanted[string.gsub(invitee, '%D', '')] or wanted[string.gsub(e164, '%D', '')]
        or wanted[string.gsub(invitor, '%D', '')] then
      out[#out + 1] = id
    end
  end
end
return out
