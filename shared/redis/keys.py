"""Every Redis name the gateway uses. No key is written inline anywhere else.

    gw:jobs                 stream   api -> workers (consumer group `workers`)
    gw:events               stream   workers -> billing (consumer group `billing`)
    gw:reply:{process}      pub/sub  worker -> the one api process waiting for the answer
    gw:cancel               pub/sub  api -> all workers: a client went away
    gw:cancelled:{request}  string   the same, kept until the job's deadline: for a worker
                                     that was not subscribed when it was published
    gw:rl:{subject}:{win}   string   request counter of one rate-limit window
    gw:bal:{user}           string   cached settled balance (nUSD), with TTL
    gw:balver:{user}        string   bumped by every settlement/credit; guards cache fills
    gw:held:{user}          string   total nUSD held by in-flight requests
    gw:holds:{user}         hash     request id -> "amount:expires_ms" of each hold
    gw:workers              zset     worker id -> last heartbeat (ms)
    gw:keys:events          pub/sub  api keys revoked/changed: every api process evicts them
    gw:gcra:{subject}       string   rate limit (GCRA): theoretical arrival time, µs
    gw:gcra:tok:{subject}   string   token rate limit (GCRA): theoretical arrival time, µs
    gw:kspend:{key}:{YYYYMM} string  nUSD settled this month through one API key
    gw:rcache:{digest}      string   cached non-streaming answer (opt-in response cache)
    gw:pstats:{prov}:{model} list    recent attempt samples of one provider's model
    gw:circuit:{prov}:{model} hash   circuit breaker: state, failures, opened_ms
    gw:probe:{prov}:{model} string   held by the one worker probing a half-open circuit
"""

from __future__ import annotations

JOBS_STREAM = "gw:jobs"
JOBS_GROUP = "workers"
EVENTS_STREAM = "gw:events"
EVENTS_GROUP = "billing"
# Events billing could not decode or settle at all, kept for an operator to look at.
EVENTS_DEAD_LETTER_STREAM = "gw:events:dead"
CANCEL_CHANNEL = "gw:cancel"
WORKERS_HEARTBEAT = "gw:workers"
KEY_EVENTS_CHANNEL = "gw:keys:events"
# arq jobs (alerts, reconciliation, stale holds): run by the billing service.
ARQ_QUEUE = "gw:arq:queue"

# Streams are capped approximately; billing acks long before this many events pile up.
JOBS_STREAM_MAXLEN = 100_000
EVENTS_STREAM_MAXLEN = 1_000_000


def reply_channel(process_id: str) -> str:
    return f"gw:reply:{process_id}"


def cancel_mark(request_id: str) -> str:
    return f"gw:cancelled:{request_id}"


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


def provider_stats(provider: str, model: str) -> str:
    return f"gw:pstats:{provider}:{model}"


def circuit(provider: str, model: str) -> str:
    return f"gw:circuit:{provider}:{model}"


def circuit_probe(provider: str, model: str) -> str:
    return f"gw:probe:{provider}:{model}"


def rate_tat(subject: str) -> str:
    return f"gw:gcra:{subject}"


def token_rate_tat(subject: str) -> str:
    return f"gw:gcra:tok:{subject}"


def key_spend(key_id: str, month: str) -> str:
    """`month` is the UTC month as YYYYMM."""
    return f"gw:kspend:{key_id}:{month}"


def response_cache(digest: str) -> str:
    return f"gw:rcache:{digest}"
