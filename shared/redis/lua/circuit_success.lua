-- A success closes the circuit and clears the failure count.
-- KEYS: 1 circuit hash, 2 probe lock.  Returns 1 when the circuit was not closed before.
local state = redis.call("HGET", KEYS[1], "state") or "closed"
redis.call("HSET", KEYS[1], "state", "closed", "failures", 0)
redis.call("EXPIRE", KEYS[1], 86400)
redis.call("DEL", KEYS[2])
if state ~= "closed" then
  return 1
end
return 0
