-- Admission in one round trip: cached balance, key spend cap, rate limits, fund hold,
-- enqueue. Nothing is written unless every check passes.
--
-- Rate limits are GCRA (generic cell rate algorithm): one key per subject holds the
-- theoretical arrival time (TAT, µs). Each unit of cost pushes it `step` = 1 min / limit
-- further; a request fits while TAT - now stays within one minute's allowance
-- (`limit * step`). So a burst gets at most `limit` at once, then `limit` per minute
-- spread evenly: no window edge where two windows' allowances add up. Time is Redis's
-- own clock, the same for every api replica.
--
-- KEYS: 1 request TAT, 2 cached balance, 3 held total, 4 holds hash,
--       5 stream (jobs; the events stream for a response-cache hit),
--       6 token TAT, 7 the key's spend counter for this month
-- ARGV: 1 requests/min, 2 tokens/min (0: off), 3 token cost, 4 monthly spend limit nUSD
--       (-1: none), 5 hold nUSD, 6 minimal fund nUSD, 7 request id, 8 hold expiry (epoch
--       ms), 9 stream maxlen, 10.. stream entry field/value pairs
-- Returns {status, value, req remaining, req reset µs, req retry µs,
--          tok remaining, tok reset µs, tok retry µs}; status is one of
--   ok | nobal (fill the balance) | nospend (fill the spend counter) | rl | tpm
--   | funds (value: available nUSD) | spend (value: nUSD left under the cap)
local PERIOD_US = 60000000
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

-- Returns ok, remaining if taken, reset if taken, retry, new TAT, remaining untaken, reset untaken.
local function gcra(key, limit, cost)
  local step = math.ceil(PERIOD_US / limit)
  local burst = limit * step
  local tat = tonumber(redis.call("GET", key) or "0")
  if tat < now then
    tat = now
  end
  local untaken = math.floor((burst - (tat - now)) / step)
  local new_tat = tat + cost * step
  local over = new_tat - now - burst
  if over > 0 then
    return false, 0, tat - now, over, tat, untaken, tat - now
  end
  return true, math.floor((burst - (new_tat - now)) / step), new_tat - now, 0, new_tat, untaken, tat - now
end

local balance = redis.call("GET", KEYS[2])
if not balance then
  return {"nobal", 0, 0, 0, 0, 0, 0, 0}
end
local spend_limit = tonumber(ARGV[4])
local spent = 0
if spend_limit >= 0 then
  local raw = redis.call("GET", KEYS[7])
  if not raw then
    return {"nospend", 0, 0, 0, 0, 0, 0, 0}
  end
  spent = tonumber(raw)
end

local rpm = tonumber(ARGV[1])
local ok, remaining, reset, retry, tat, untaken, untaken_reset = gcra(KEYS[1], rpm, 1)
if not ok then
  return {"rl", 0, 0, reset, retry, 0, 0, 0}
end
local tpm = tonumber(ARGV[2])
local tok_ok, tok_remaining, tok_reset, tok_retry, tok_tat, tok_untaken, tok_untaken_reset =
  true, 0, 0, 0, 0, 0, 0
if tpm > 0 then
  tok_ok, tok_remaining, tok_reset, tok_retry, tok_tat, tok_untaken, tok_untaken_reset =
    gcra(KEYS[6], tpm, math.min(tonumber(ARGV[3]), tpm))
  if not tok_ok then
    return {"tpm", 0, untaken, untaken_reset, 0, 0, tok_reset, tok_retry}
  end
end

local hold = tonumber(ARGV[5])
local available = tonumber(balance) - tonumber(redis.call("GET", KEYS[3]) or "0")
if available < tonumber(ARGV[6]) or available < hold then
  return {"funds", available, untaken, untaken_reset, 0, tok_untaken, tok_untaken_reset, 0}
end
if spend_limit >= 0 and spent + hold > spend_limit then
  return {"spend", spend_limit - spent, untaken, untaken_reset, 0, tok_untaken, tok_untaken_reset, 0}
end

redis.call("SET", KEYS[1], string.format("%d", tat), "PX", math.ceil(reset / 1000) + 1)
if tpm > 0 then
  redis.call("SET", KEYS[6], string.format("%d", tok_tat), "PX", math.ceil(tok_reset / 1000) + 1)
end
if hold > 0 then
  redis.call("HSET", KEYS[4], ARGV[7], ARGV[5] .. ":" .. ARGV[8])
  redis.call("INCRBY", KEYS[3], hold)
end
local unpack = unpack or table.unpack
redis.call("XADD", KEYS[5], "MAXLEN", "~", ARGV[9], "*", unpack(ARGV, 10))
return {"ok", 0, remaining, reset, 0, tok_remaining, tok_reset, 0}
