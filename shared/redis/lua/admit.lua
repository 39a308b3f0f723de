-- Admission in one round trip: cached balance, rate limit, fund hold, enqueue.
-- KEYS: 1 rate-limit counter, 2 cached balance, 3 held total, 4 holds hash, 5 jobs stream
-- ARGV: 1 limit, 2 window ttl ms, 3 hold nUSD, 4 minimal fund nUSD, 5 request id,
--       6 hold expiry (epoch ms), 7 job meta, 8 job body, 9 stream maxlen
-- Returns {"ok", remaining} | {"rl", 0} | {"nobal", 0} | {"funds", available}
local balance = redis.call("GET", KEYS[2])
if not balance then
  return {"nobal", 0}
end
local limit = tonumber(ARGV[1])
local count = tonumber(redis.call("GET", KEYS[1]) or "0")
if count >= limit then
  return {"rl", 0}
end
local hold = tonumber(ARGV[3])
local available = tonumber(balance) - tonumber(redis.call("GET", KEYS[3]) or "0")
if available < tonumber(ARGV[4]) or available < hold then
  return {"funds", available}
end
count = redis.call("INCR", KEYS[1])
if count == 1 then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
if hold > 0 then
  redis.call("HSET", KEYS[4], ARGV[5], ARGV[3] .. ":" .. ARGV[6])
  redis.call("INCRBY", KEYS[3], hold)
end
redis.call("XADD", KEYS[5], "MAXLEN", "~", ARGV[9], "*", "m", ARGV[7], "b", ARGV[8])
return {"ok", limit - count}
