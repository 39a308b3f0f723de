-- Remove holds that will never be released by settlement, then recompute the held total
-- from what remains (which also repairs a total that drifted).
-- KEYS: 1 holds hash, 2 held total, 3 cached balance, 4 balance version
-- ARGV: 1 mode: "expired" (ARGV[2] = now, epoch ms) or "ids" (ARGV[2..] = request ids)
-- Returns {removed request ids..., held total} as a flat list; the last item is the total.
-- Holds are "amount:expires_ms[:...]"; fields after the expiry are left alone.
local removed = {}
if ARGV[1] == "ids" then
  for i = 2, #ARGV do
    if redis.call("HDEL", KEYS[1], ARGV[i]) == 1 then
      table.insert(removed, ARGV[i])
    end
  end
else
  local now = tonumber(ARGV[2])
  local all = redis.call("HGETALL", KEYS[1])
  for i = 1, #all, 2 do
    local expires = tonumber(string.match(all[i + 1], "^%-?%d+:(%d+)"))
    if expires and expires < now then
      redis.call("HDEL", KEYS[1], all[i])
      table.insert(removed, all[i])
    end
  end
end
local total = 0
for _, value in ipairs(redis.call("HVALS", KEYS[1])) do
  total = total + (tonumber(string.match(value, "^(%-?%d+)")) or 0)
end
if total > 0 then
  redis.call("SET", KEYS[2], total)
else
  redis.call("DEL", KEYS[2])
end
if #removed > 0 then
  -- A settled request's debit may never have reached the cached balance: reread it.
  redis.call("INCR", KEYS[4])
  redis.call("DEL", KEYS[3])
end
table.insert(removed, tostring(total))
return removed
