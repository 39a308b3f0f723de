-- Settlement: drop the request's hold and apply its debit to the cached balance.
-- Idempotent: a second call for the same request finds no hold and changes nothing.
-- KEYS: 1 holds hash, 2 held total, 3 cached balance, 4 balance version, 5 key spend (opt.)
-- ARGV: 1 request id, 2 debit nUSD
-- Returns the amount that was held, or -1 when no hold was found.
local entry = redis.call("HGET", KEYS[1], ARGV[1])
if not entry then
  return -1
end
local amount = tonumber(string.match(entry, "^(%-?%d+)"))
redis.call("HDEL", KEYS[1], ARGV[1])
local held = redis.call("DECRBY", KEYS[2], amount)
if held < 0 then
  redis.call("SET", KEYS[2], 0)
end
if redis.call("EXISTS", KEYS[3]) == 1 then
  redis.call("DECRBY", KEYS[3], ARGV[2])
end
-- KEYS[5], optional: the API key's spend counter for this month (kept only while cached).
if KEYS[5] and redis.call("EXISTS", KEYS[5]) == 1 then
  redis.call("INCRBY", KEYS[5], ARGV[2])
end
redis.call("INCR", KEYS[4])
return amount
