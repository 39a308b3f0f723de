-- A technical failure of one provider's model. Opens the circuit after `threshold`
-- consecutive failures -- but only when the provider's recent attempts (its statistics
-- samples) are mostly failures too, so a few requests that fail everywhere (a poisoned
-- prompt) cannot open the circuit of a healthy provider. A failed half-open probe
-- reopens it at once.
-- KEYS: 1 circuit hash, 2 probe lock, 3 statistics samples list
-- ARGV: 1 threshold, 2 now ms, 3 samples to look at, 4 failure share needed (0..1)
-- Returns 1 when this failure opened the circuit, else 0.
local state = redis.call("HGET", KEYS[1], "state") or "closed"
local failures = redis.call("HINCRBY", KEYS[1], "failures", 1)
redis.call("EXPIRE", KEYS[1], 86400)
local open = state == "half_open"
if state == "closed" and failures >= tonumber(ARGV[1]) then
  local recent = redis.call("LRANGE", KEYS[3], 0, tonumber(ARGV[3]) - 1)
  if #recent < tonumber(ARGV[1]) then
    open = true  -- too little history to judge: trust the consecutive count
  else
    local failed = 0
    for _, sample in ipairs(recent) do
      if string.match(sample, "^%d+,0,") then
        failed = failed + 1
      end
    end
    open = failed >= tonumber(ARGV[4]) * #recent
  end
end
if open then
  redis.call("HSET", KEYS[1], "state", "open", "opened_ms", ARGV[2])
  redis.call("DEL", KEYS[2])
  return 1
end
return 0
