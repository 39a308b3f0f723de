-- Cache a balance read from the database, unless a settlement or credit happened since
-- the read began (the version moved): a stale high balance must never be cached.
-- KEYS: 1 cached balance, 2 balance version.  ARGV: 1 balance nUSD, 2 version seen, 3 ttl s
if (redis.call("GET", KEYS[2]) or "0") == ARGV[2] then
  redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[3])
  return 1
end
return 0
