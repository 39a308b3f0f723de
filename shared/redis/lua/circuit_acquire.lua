-- May this worker call a provider whose circuit is not closed?
-- Open and cooled down: one worker wins the probe lock and moves the circuit to
-- half-open; everyone else keeps skipping until the probe succeeds or fails.
-- KEYS: 1 circuit hash, 2 probe lock.  ARGV: 1 now ms, 2 cooldown ms, 3 probe lock ms
-- Returns 1 (call it) or 0 (skip it).
local state = redis.call("HGET", KEYS[1], "state") or "closed"
if state == "closed" then
  return 1
end
if state == "open" then
  local opened = tonumber(redis.call("HGET", KEYS[1], "opened_ms") or "0")
  if tonumber(ARGV[1]) - opened < tonumber(ARGV[2]) then
    return 0
  end
end
-- open and cooled down, or half-open with no live probe (the prober died)
if redis.call("SET", KEYS[2], "1", "NX", "PX", ARGV[3]) then
  redis.call("HSET", KEYS[1], "state", "half_open")
  return 1
end
return 0
