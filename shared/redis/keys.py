"""Every Redis name the gateway uses. No key is written inline anywhere else.

    gw:jobs                 stream   api -> workers (consumer group `workers`)
    gw:events               stream   workers -> billing (consumer group `billing`)
    gw:reply:{process}      pub/sub  worker -> the one api process waiting for the answer
    gw:cancel               pub/sub  api -> all workers: a client went away
    gw:rl:{subject}:{win}   string   request counter of one rate-limit window
    gw:bal:{user}           string   cached settled balance (nUSD), with TTL
    gw:balver:{user}        string   bumped by every settlement/credit; guards cache fills
    gw:held:{user}          string   total nUSD held by in-flight requests
    gw:holds:{user}         hash     request id -> "amount:expires_ms" of each hold
    gw:workers              zset     worker id -> last heartbeat (ms)
"""

from __future__ import annotations

JOBS_STREAM = "gw:jobs"
JOBS_GROUP = "workers"
EVENTS_STREAM = "gw:events"
EVENTS_GROUP = "billing"
CANCEL_CHANNEL = "gw:cancel"
WORKERS_HEARTBEAT = "gw:workers"

# Streams are capped approximately; billing acks long before this many events pile up.
JOBS_STREAM_MAXLEN = 100_000
EVENTS_STREAM_MAXLEN = 1_000_000


def reply_channel(process_id: str) -> str:
    return f"gw:reply:{process_id}"


def rate_limit(subject: str, window: int) -> str:
    return f"gw:rl:{subject}:{window}"


def balance(user_id: str) -> str:
    return f"gw:bal:{user_id}"


def balance_version(user_id: str) -> str:
    return f"gw:balver:{user_id}"


def held_total(user_id: str) -> str:
    return f"gw:held:{user_id}"


def holds(user_id: str) -> str:
    return f"gw:holds:{user_id}"
