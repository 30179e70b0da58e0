-- Delete KEYS[1] if it still holds ARGV[1] (TokenCache.drop: another worker may have replaced it).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
