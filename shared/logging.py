"""structlog, configured once per process: JSON lines in production, console on a TTY.

Context (request id, service) is bound with `structlog.contextvars` and merged first, so
every line of a request carries its id across api, worker and billing.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

# Never let these reach a log line, whatever a caller binds.
_SECRET_KEYS = frozenset({"api_key", "authorization", "token", "password", "secret", "key"})


def _redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for name in _SECRET_KEYS.intersection(event_dict):
        event_dict[name] = "[redacted]"
    return event_dict


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(level: str = "info", fmt: str = "auto", *, service: str = "") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library: keep them quiet and on stderr.
    logging.basicConfig(level=max(_LEVELS.get(level, 20), logging.WARNING), stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
