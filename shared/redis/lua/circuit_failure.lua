-- A technical failure of one provider's model. Opens the circuit after `threshold`
-- consecutive failures, or at once when a half-open probe fails.
-- KEYS: 1 circuit hash, 2 probe lock.  ARGV: 1 threshold, 2 now ms
-- Returns 1 when this failure opened the circuit, else 0.
local state = redis.call("HGET", KEYS[1], "state") or "closed"
local failures = redis.call("HINCRBY", KEYS[1], "failures", 1)
redis.call("EXPIRE", KEYS[1], 86400)
if state == "half_open" or (state == "closed" and failures >= tonumber(ARGV[1])) then
  redis.call("HSET", KEYS[1], "state", "open", "opened_ms", ARGV[2])
  redis.call("DEL", KEYS[2])
  return 1
end
return 0
