"""structlog, configured once per process: JSON lines in production, console on a TTY.

Context (request id, service) is bound with `structlog.contextvars` and merged first, so
every line of a request carries its id across api, worker and billing. Standard-library
loggers (aiohttp, asyncio, sqlalchemy) go through the same processors, so a log file
is JSON lines throughout.

What never reaches a log line, whatever a caller passes:
- secrets by field name (`api_key`, `authorization`, `token`, ...);
- anything that looks like a credential inside a string value (a gateway key
  `gw-...`, a provider key `sk-...`, a JWT, a `Bearer ...` header);
- prompt and completion text (`prompt_text`, `completion_text`, `messages` fields),
  unless `LOG_PROMPTS=true`, and then only on debug lines (`LOG_LEVEL=debug`).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

_SECRET_KEYS = frozenset(
    {
        "api_key",
        "authorization",
        "token",
        "admin_token",
        "password",
        "secret",
        "key",
        "cookie",
        "jwt",
    }
)
# Fields that carry what users sent or were sent back. Only `log_prompts` lets them through.
TEXT_KEYS = frozenset({"prompt_text", "completion_text", "messages"})

_CREDENTIAL = re.compile(
    r"gw-[A-Za-z0-9_\-]{16,}"  # gateway API keys
    r"|sk-[A-Za-z0-9_\-]{16,}"  # OpenAI-style provider keys
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"  # JWTs
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"  # bearer credentials of any kind
)
REDACTED = "[redacted]"


def _redact(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for name in _SECRET_KEYS.intersection(event_dict):
        event_dict[name] = REDACTED
    return event_dict


def _scrub_credentials(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for name, value in event_dict.items():
        if isinstance(value, str) and _CREDENTIAL.search(value):
            event_dict[name] = _CREDENTIAL.sub(REDACTED, value)
    return event_dict


def _text_guard(log_prompts: bool) -> Any:
    def guard(_logger: Any, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        present = TEXT_KEYS.intersection(event_dict)
        if not present:
            return event_dict
        if log_prompts and method == "debug":
            event_dict["log_prompts"] = True  # marks the line as carrying user text
            return event_dict
        for name in present:
            del event_dict[name]
        return event_dict

    return guard


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(
    level: str = "info", fmt: str = "auto", *, service: str = "", log_prompts: bool = False
) -> None:
    """Configure structlog and the standard library's root logger for this process.

    :param level: debug | info | warning | error | critical.
    :param fmt: json | console | auto (console on a TTY, else JSON).
    :param service: bound to every line (api, worker, billing).
    :param log_prompts: let prompt/completion text through on debug lines (LOG_PROMPTS).
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    )
    pre_render: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
        _text_guard(log_prompts),
        structlog.processors.format_exc_info,
        _scrub_credentials,
    ]
    structlog.configure(
        processors=[*pre_render, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    # Libraries that log through the standard library: quieter, but rendered the same way.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *pre_render],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(_LEVELS.get(level, 20), logging.WARNING))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
