"""The dashboard's HTML: server-rendered tables and an inline SVG chart, no script at all.

Every figure comes from the same report dicts the admin JSON API returns
(`shared/stats_report.py`), so the page and `/admin/stats/*` always agree. Everything
that came from the database or a client is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from shared.money import format_usd

_TEMPLATE = Template((Path(__file__).with_name("templates") / "dashboard.html").read_text())
CSS = (Path(__file__).with_name("static") / "dashboard.css").read_bytes()

TITLE = "LLM gateway: operations"
NAV = (
    '<nav><a href="/admin/dashboard?hours=1">1 h</a><a href="/admin/dashboard?hours=24">24 h</a>'
    '<a href="/admin/dashboard?hours=168">7 days</a>'
    '<form method="post" action="/admin/dashboard/logout"><button type="submit">Log out</button>'
    "</form></nav>"
)


@dataclass(frozen=True, slots=True)
class DashboardData:
    hours: int
    start: datetime
    end: datetime
    health: Mapping[str, Any]
    providers: Mapping[str, Any]
    users: Mapping[str, Any]
    models: Mapping[str, Any]
    traffic: Mapping[str, Any]
    errors: Mapping[str, Any]
    # (provider, model) -> circuit breaker state, read live from Redis.
    circuits: Mapping[tuple[str, str], str] = field(default_factory=dict)


def page(body: str, *, nav: bool = True) -> str:
    return _TEMPLATE.substitute(title=escape(TITLE), nav=NAV if nav else "", body=body)


def login_page(error: str = "") -> str:
    message = f'<p class="error" role="alert">{escape(error)}</p>' if error else ""
    body = (
        '<div class="login"><h2>Operator sign-in</h2>'
        '<p class="muted">Enter the gateway\'s ADMIN_TOKEN. The browser keeps a signed '
        "session cookie, never the token.</p>"
        f"{message}"
        '<form method="post" action="/admin/dashboard/login">'
        '<label for="token">Admin token</label>'
        '<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>'
        '<button type="submit">Sign in</button></form></div>'
    )
    return page(body, nav=False)


def dashboard_page(data: DashboardData) -> str:
    parts = [
        _overview(data),
        _section("Requests and spend over time", _traffic_chart(data)),
        _section("Provider health", _providers_table(data.providers["providers"], data.circuits)),
        '<div class="grid2">',
        _section("Top users by spend", _spend_table(data.users, "user")),
        _section("Spend by model", _spend_table(data.models, "model")),
        "</div>",
        _section("Recent errors and fallbacks", _errors_table(data.errors["errors"])),
    ]
    return page("\n".join(parts))


# --- pieces -----------------------------------------------------------------------------


def _section(title: str, content: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{content}</section>"


def num(value: Any) -> str:
    """A figure as shown: "–" when unknown, at most two decimals, no thousands separator."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".") if not value.is_integer() else str(int(value))
    return str(value)


def percent(rate: float | None) -> str:
    return "–" if rate is None else num(round(rate * 100, 2)) + "%"


def _rate_class(rate: float | None) -> str:
    if rate is None or rate >= 0.99:
        return ""
    return "rate-bad" if rate < 0.9 else "rate-warn"


def _card(label: str, value: str, css: str = "", test_id: str = "") -> str:
    attr = f' data-id="{escape(test_id)}"' if test_id else ""
    return (
        f'<div class="card"{attr}><div class="value {css}">{escape(value)}</div>'
        f'<div class="label">{escape(label)}</div></div>'
    )


def _overview(data: DashboardData) -> str:
    health = data.health
    status = str(health.get("status", "unknown"))
    workers = health.get("workers") or {}
    jobs = health.get("jobs") or {}
    billing = health.get("billing") or {}
    points = data.traffic["points"]
    requests = sum(p["requests"] for p in points)
    errors = sum(p["errors"] for p in points)
    spend_nusd = sum(p["cost_nusd"] for p in points)
    window = f"{_fmt_time(data.start)} → {_fmt_time(data.end)} UTC (last {data.hours} h)"
    cards = [
        _card("gateway", status, f"status-{escape(status)}", "status"),
        _card("live workers", num(workers.get("live")), test_id="workers"),
        _card("jobs waiting", num(jobs.get("backlog")), test_id="jobs-backlog"),
        _card("events unsettled", num(billing.get("unsettled")), test_id="unsettled"),
        _card("requests", num(requests), test_id="requests"),
        _card("errors", num(errors), "status-unavailable" if errors else "", "errors"),
        _card("spend (USD)", format_usd(spend_nusd), test_id="spend"),
    ]
    return f'<p class="muted">{escape(window)}</p><div class="cards">{"".join(cards)}</div>'


def _fmt_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _table(headers: Sequence[tuple[str, bool]], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="empty">{escape(empty)}</p>'
    head = "".join(f'<th class="num">{escape(h)}</th>' if n else f"<th>{escape(h)}</th>" for h, n in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(value: str, css: str = "", num_cell: bool = False) -> str:
    classes = " ".join(c for c in (css, "num" if num_cell else "") if c)
    return f'<td class="{classes}">{escape(value)}</td>' if classes else f"<td>{escape(value)}</td>"


def _providers_table(
    rows: Sequence[Mapping[str, Any]], circuits: Mapping[tuple[str, str], str]
) -> str:
    headers = [
        ("provider", False), ("model", False), ("circuit", False), ("calls", True), ("success", True),
        ("technical errors", True), ("business errors", True), ("requests served", True),
        ("latency p50 ms", True), ("p90", True), ("p99", True),
        ("TTFT p50 ms", True), ("p90", True), ("p99", True), ("tokens/s p50", True),
    ]  # fmt: skip
    out = []
    for row in rows:
        key = f"{row['provider'] or '-'}/{row['model'] or '-'}"
        lat, ttft = row["latency_ms"], row["ttft_ms"]
        rate = row["success_rate"]
        circuit = circuits.get((row["provider"], row["model"]), "–")
        cells = [
            _td(row["provider"] or "(none)", "provider"),
            _td(row["model"] or "(none)", "model"),
            _td(circuit, f"circuit circuit-{circuit}"),
            _td(num(row["attempts"]), "attempts", True),
            _td(percent(rate), f"success {_rate_class(rate)}".strip(), True),
            _td(num(row["technical_errors"]), "technical", True),
            _td(num(row["business_errors"]), "business", True),
            _td(num(row["requests"]), "requests", True),
            _td(num(lat["p50"]), "latency-p50", True),
            _td(num(lat["p90"]), "latency-p90", True),
            _td(num(lat["p99"]), "latency-p99", True),
            _td(num(ttft["p50"]), "ttft-p50", True),
            _td(num(ttft["p90"]), "ttft-p90", True),
            _td(num(ttft["p99"]), "ttft-p99", True),
            _td(num(row["tokens_per_second"]["p50"]), "tps-p50", True),
        ]
        out.append(f'<tr data-key="{escape(key)}">{"".join(cells)}</tr>')
    return _table(headers, out, "No provider was called in this range.")


def _spend_table(report: Mapping[str, Any], group: str) -> str:
    headers = [(group, False)]
    if group == "user":
        headers.append(("email / name", False))
    headers += [("requests", True), ("spend (USD)", True), ("tokens in", True), ("tokens out", True)]
    out = []
    for row in report["rows"]:
        cells = [_td(str(row[group]), group)]
        if group == "user":
            cells.append(_td(row.get("label") or "–", "label"))
        cells += [
            _td(num(row["requests"]), "requests", True),
            _td(row["cost_usd"], "cost", True),
            _td(num(row["prompt_tokens"]), "prompt-tokens", True),
            _td(num(row["completion_tokens"]), "completion-tokens", True),
        ]
        out.append(f'<tr data-key="{escape(str(row[group]))}">{"".join(cells)}</tr>')
    return _table(headers, out, "No spend in this range.")


def _attempts(attempts: Sequence[Mapping[str, Any]]) -> str:
    steps = []
    for attempt in attempts:
        status = attempt.get("status")
        outcome = attempt.get("outcome") or "?"
        what = outcome if outcome == "ok" else f"{outcome} {status if status is not None else attempt.get('error_code') or ''}".strip()
        steps.append(f"{attempt.get('provider') or '?'} {what}")
    return " → ".join(steps) or "–"


def _errors_table(rows: Sequence[Mapping[str, Any]]) -> str:
    headers = [
        ("when (UTC)", False), ("request id", False), ("user", False), ("model", False),
        ("provider", False), ("status", True), ("error", False), ("attempts", False),
    ]  # fmt: skip
    out = []
    for row in rows:
        error = " / ".join(str(x) for x in (row["error_class"], row["error_code"]) if x) or "–"
        cells = [
            _td(row["at"].replace("T", " ")[:19], "at"),
            _td(row["request_id"], "request-id"),
            _td(row["user_id"], "user"),
            _td(row["model"], "model"),
            _td(row["provider"] or "–", "provider"),
            _td(num(row["http_status"]), "http-status", True),
            _td(error, "error-code"),
            _td(_attempts(row["attempts"]), "attempt-chain"),
        ]
        out.append(f'<tr data-key="{escape(row["request_id"])}">{"".join(cells)}</tr>')
    return _table(headers, out, "No errors or fallbacks in this range.")


# --- chart ------------------------------------------------------------------------------

_W, _H = 960, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 80, 16, 28


def _buckets(start: datetime, end: datetime, bucket: str) -> list[str]:
    step = timedelta(hours=1) if bucket == "hour" else timedelta(days=1)
    fmt = "%Y-%m-%dT%H:00" if bucket == "hour" else "%Y-%m-%d"
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        moment = moment.replace(hour=0)
    keys = []
    while moment < end:
        keys.append(moment.strftime(fmt))
        moment += step
    return keys


def _traffic_chart(data: DashboardData) -> str:
    report = data.traffic
    by_bucket = {p["bucket"]: p for p in report["points"]}
    keys = _buckets(data.start, data.end, report["bucket"])
    points = [by_bucket.get(k, {"bucket": k, "requests": 0, "errors": 0, "cost_nusd": 0}) for k in keys]
    if not points:
        return '<p class="empty">No traffic.</p>'
    max_requests = max(max(p["requests"] for p in points), 1)
    max_cost = max(max(p["cost_nusd"] for p in points), 1)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    step = plot_w / len(points)
    bar_w = max(step * 0.8, 1.0)
    shapes: list[str] = []
    line: list[str] = []
    for i, p in enumerate(points):
        x = _LEFT + i * step + (step - bar_w) / 2
        ok_h = (p["requests"] - p["errors"]) / max_requests * plot_h
        err_h = p["errors"] / max_requests * plot_h
        tip = f"{p['bucket']}: {p['requests']} requests, {p['errors']} errors, ${format_usd(p['cost_nusd'])}"
        base = _TOP + plot_h
        shapes.append(
            f'<g><title>{escape(tip)}</title>'
            f'<rect x="{x:.1f}" y="{base - ok_h - err_h:.1f}" width="{bar_w:.1f}" height="{ok_h:.1f}" fill="#3b6fd4"/>'
            f'<rect x="{x:.1f}" y="{base - err_h:.1f}" width="{bar_w:.1f}" height="{err_h:.1f}" fill="#c62828"/></g>'
        )
        cy = base - p["cost_nusd"] / max_cost * plot_h
        line.append(f"{_LEFT + i * step + step / 2:.1f},{cy:.1f}")
    labels = [
        f'<text x="{_LEFT - 6}" y="{_TOP + 10}" text-anchor="end" font-size="11">{max_requests}</text>',
        f'<text x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
        f'<text x="{_W - _RIGHT + 6}" y="{_TOP + 10}" font-size="11" fill="#b26a00">${escape(format_usd(max_cost))}</text>',
        f'<text x="{_LEFT}" y="{_H - 8}" font-size="11">{escape(points[0]["bucket"])}</text>',
        f'<text x="{_W - _RIGHT}" y="{_H - 8}" text-anchor="end" font-size="11">{escape(points[-1]["bucket"])}</text>',
    ]
    axes = (
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" y2="{_TOP + plot_h}" stroke="#98a2b3"/>'
        f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + plot_h}" stroke="#98a2b3"/>'
    )
    polyline = f'<polyline points="{" ".join(line)}" fill="none" stroke="#b26a00" stroke-width="2"/>'
    svg = (
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="Requests and spend per {escape(report["bucket"])}" '
        f'xmlns="http://www.w3.org/2000/svg">{axes}{"".join(shapes)}{polyline}{"".join(labels)}</svg>'
    )
    legend = (
        '<div class="legend"><span><i class="swatch sw-req"></i>requests</span>'
        '<span><i class="swatch sw-err"></i>errors</span>'
        '<span><i class="swatch sw-cost"></i>spend (right axis)</span></div>'
    )
    return f'<div class="chart">{svg}{legend}</div>'
