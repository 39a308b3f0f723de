-- The state of a subject's rate limits without taking from them (for answers that were
-- refused before admission, so their headers still say where the client stands).
-- KEYS: 1 request TAT, 2 token TAT.  ARGV: 1 requests/min, 2 tokens/min (0: off)
-- Returns {req remaining, req reset µs, tok remaining, tok reset µs}
local PERIOD_US = 60000000
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local function peek(key, limit)
  local step = math.ceil(PERIOD_US / limit)
  local tat = tonumber(redis.call("GET", key) or "0")
  if tat < now then
    tat = now
  end
  return math.floor((limit * step - (tat - now)) / step), tat - now
end
local remaining, reset = peek(KEYS[1], tonumber(ARGV[1]))
local tok_remaining, tok_reset = 0, 0
if tonumber(ARGV[2]) > 0 then
  tok_remaining, tok_reset = peek(KEYS[2], tonumber(ARGV[2]))
end
return {remaining, reset, tok_remaining, tok_reset}
