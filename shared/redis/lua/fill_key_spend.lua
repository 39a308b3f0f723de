-- Cache one key's spend this month, read from the database's usage rows, unless a
-- settlement happened since the read began (the owner's balance version moved): the
-- counter must never miss a settled cost.
-- KEYS: 1 spend counter, 2 owner's balance version.  ARGV: 1 nUSD, 2 version seen, 3 ttl s
if (redis.call("GET", KEYS[2]) or "0") == ARGV[2] then
  redis.call("SET", KEYS[1], ARGV[1], "EX", ARGV[3])
  return 1
end
return 0
