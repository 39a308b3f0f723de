-- Settlement: drop requests' holds and apply their debits to the cached balances.
-- Idempotent: a second call for the same request finds no hold and changes nothing.
-- One call settles many requests (billing's batches): one command instead of one each.
-- KEYS, per request in order: holds hash, held total, cached balance, balance version,
--   then the API key's spend counter for this month when the request names a key.
-- ARGV, per request: request id, debit nUSD, 1 when a key spend counter follows else 0.
-- Returns, per request, the amount that was held, or -1 when no hold was found.
local results = {}
local k = 1
for i = 1, #ARGV, 3 do
  local holds, held_total, balance, version = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local spend = nil
  if ARGV[i + 2] == "1" then
    spend = KEYS[k + 4]
    k = k + 5
  else
    k = k + 4
  end
  local request_id, debit = ARGV[i], ARGV[i + 1]
  local entry = redis.call("HGET", holds, request_id)
  if not entry then
    results[#results + 1] = -1
  else
    local amount = tonumber(string.match(entry, "^(%-?%d+)"))
    redis.call("HDEL", holds, request_id)
    if redis.call("DECRBY", held_total, amount) < 0 then
      redis.call("SET", held_total, 0)
    end
    if redis.call("EXISTS", balance) == 1 then
      redis.call("DECRBY", balance, debit)
    end
    -- The key's spend counter is kept only while cached; a missing one is refilled.
    if spend and redis.call("EXISTS", spend) == 1 then
      redis.call("INCRBY", spend, debit)
    end
    redis.call("INCR", version)
    results[#results + 1] = amount
  end
end
return results
