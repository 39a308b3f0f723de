"""Together AI: OpenAI's chat completions with Together's differences (wire-format doc §4).

`POST /together/v1/chat/completions`, Bearer auth. What differs from `openai.py`:

- `finish_reason` is `eos` instead of `stop` when the last user message says `[[fake:eos]]`;
- a stream's chunks all carry `"usage": null` except the finish chunk, which carries the
  usage whether or not `stream_options.include_usage` was asked for (no `choices: []` chunk);
- non-streamed `tool_calls[]` items carry their `index`;
- errors use Together's `ErrorData` shape (OpenAI-like, 429 typed `dynamic_request_limited`);
- every answer carries `x-ratelimit-*` / `x-tokenlimit-*` headers; a 429 shows the request
  budget spent, with `x-ratelimit-reset` (and `retry-after`) set to the retry hint.
"""

from __future__ import annotations

import orjson

from services.fake_provider.behaviour import Finish, Plan
from services.fake_provider.wires import seconds
from services.fake_provider.wires.openai import OpenAIWire

REQUEST_LIMIT = 600
TOKEN_LIMIT = 180_000

# Together's (type, code, message) per status (doc §4.4).
_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Input validation error."),
    401: (
        "invalid_request_error",
        "invalid_api_key",
        (
            "Invalid API key provided. You can find your API key at "
            "https://api.together.xyz/settings/api-keys."
        ),
    ),
    402: ("invalid_request_error", "payment_required", "Credit limit exceeded."),
    403: (
        "invalid_request_error",
        None,
        "Input tokens + max_tokens exceed the model's context length.",
    ),
    404: ("invalid_request_error", "model_not_found", "Unable to access model."),
    429: (
        "dynamic_request_limited",
        None,
        "You are sending requests above your dynamic rate limit. Please slow down.",
    ),
    500: ("server_error", None, "Internal server error."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Request timed out."),
    529: ("server_error", None, "Unknown server error."),
}


class TogetherWire(OpenAIWire):
    name = "together"
    with_usage_on_finish = True
    indexed_tool_calls = True

    def finish_reason(self, plan: Plan) -> str:
        if plan.finish is Finish.STOP and plan.step.eos:
            return "eos"
        return plan.finish

    def headers(self, status: int, retry_after_s: float | None) -> dict[str, str]:
        if status == 429:
            wait = seconds(retry_after_s if retry_after_s is not None else 1.0)
            return {
                "retry-after": wait,
                "x-ratelimit-limit": str(REQUEST_LIMIT),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": wait,
                "x-tokenlimit-limit": str(TOKEN_LIMIT),
                "x-tokenlimit-remaining": "0",
            }
        headers = {
            "x-ratelimit-limit": str(REQUEST_LIMIT),
            "x-ratelimit-remaining": str(REQUEST_LIMIT - 1),
            "x-ratelimit-reset": "1",
            "x-tokenlimit-limit": str(TOKEN_LIMIT),
            "x-tokenlimit-remaining": str(TOKEN_LIMIT - 1),
        }
        if retry_after_s is not None:
            headers["retry-after"] = seconds(retry_after_s)
        return headers

    def error_body(
        self, status: int, *, message: str | None, code: str | None, param: str | None
    ) -> bytes:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        err_type, default_code, default_message = _ERRORS.get(
            status, (default_type, None, f"HTTP {status}.")
        )
        if code == "dynamic_token_limited":
            err_type = code
        return orjson.dumps(
            {
                "error": {
                    "message": message or default_message,
                    "type": err_type,
                    "param": param,
                    "code": code if code is not None else default_code,
                }
            }
        )
