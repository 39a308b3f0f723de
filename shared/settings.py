"""One typed settings object, read once from the environment (and `.env`) and passed down."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Self

from shared.money import usd_to_nusd

DEFAULT_VAR_DIR = Path("var")


def read_dotenv(path: Path) -> dict[str, str]:
    """Parse a minimal `.env` file: KEY=VALUE lines, `#` comments, optional quotes."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    return int(raw) if raw else default


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return float(raw) if raw else default


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class Settings:
    port: int = 3000
    host: str = "0.0.0.0"
    database_url: str = ""
    redis_url: str = ""
    var_dir: Path = DEFAULT_VAR_DIR
    catalog_path: str = ""
    # Provider credentials and endpoints, keyed by lower-case provider name.
    provider_keys: Mapping[str, str] = field(default_factory=dict)
    provider_base_urls: Mapping[str, str] = field(default_factory=dict)
    minimal_fund_nusd: int = usd_to_nusd(Decimal("0.01"))
    ntfy_error_url: str = ""
    cache_ttl_s: int = 300
    balance_cache_ttl_s: int = 60
    rate_limit_requests_per_minute: int = 60
    admin_token: str = ""
    supabase_url: str = ""
    supabase_anon_key: str = ""
    supabase_service_role_key: str = ""
    supabase_jwt_secret: str = ""
    # Access (issue 6): keyed hashing of API keys, CORS, token rate limit, response cache.
    api_key_hash_secret: str = ""
    cors_allow_origins: tuple[str, ...] = ()
    rate_limit_tokens_per_minute: int = 0  # 0: off
    auth_unknown_key_lookups_per_s: int = 50
    response_cache_price_fraction: Decimal = Decimal(0)
    response_cache_ttl_s: int = 3600
    response_cache_max_ttl_s: int = 86_400
    max_body_bytes: int = 8 * 1024 * 1024
    request_timeout_s: float = 300.0
    worker_concurrency: int = 512
    # Jobs pending this long on a silent worker are reclaimed (XAUTOCLAIM) by another.
    worker_claim_idle_ms: int = 30_000
    worker_metrics_port: int = 9101
    billing_metrics_port: int = 9102
    # Events settled per transaction, and how long a thin batch may wait to fill: a batch
    # costs ~3 ms of billing CPU however small, so bigger batches cost less per request.
    billing_batch_size: int = 500
    billing_fill_wait_ms: int = 100
    upstream_connect_timeout_s: float = 10.0
    upstream_first_byte_timeout_s: float = 60.0
    upstream_idle_timeout_s: float = 60.0
    # Image URLs the worker fetches for providers that need bytes: public hosts only,
    # unless the operator's images live on private networks (never cloud metadata).
    media_allow_private_networks: bool = False
    # Routing (issue 4): retries on one provider, circuit breakers.
    provider_max_retries: int = 1
    circuit_failure_threshold: int = 5
    circuit_cooldown_s: float = 30.0
    log_level: str = "info"
    log_format: str = "auto"  # auto | json | console
    log_prompts: bool = False
    # Identifies this process's reply channel; unique per API process.
    process_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    demo_mode: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: Path | None = None) -> Self:
        """Build settings from `env` (default: `os.environ` over `.env` in the working directory)."""
        if env is None:
            merged = read_dotenv(dotenv or Path(".env"))
            merged.update(os.environ)
            env = merged
        keys = {
            name.removeprefix("API_KEY_").lower(): value
            for name, value in env.items()
            if name.startswith("API_KEY_") and value
        }
        base_urls = {
            name.removeprefix("BASE_URL_").lower(): value.rstrip("/")
            for name, value in env.items()
            if name.startswith("BASE_URL_") and value
        }
        var_dir = Path(env.get("GATEWAY_VAR_DIR") or DEFAULT_VAR_DIR)
        return cls(
            port=_int(env, "PORT", 3000),
            host=env.get("HOST", "0.0.0.0"),
            database_url=env.get("DATABASE_URL", ""),
            redis_url=env.get("REDIS_URL", ""),
            var_dir=var_dir,
            catalog_path=env.get("CATALOG_PATH", ""),
            provider_keys=keys,
            provider_base_urls=base_urls,
            minimal_fund_nusd=usd_to_nusd(Decimal(env.get("MINIMAL_FUND") or "0.01")),
            ntfy_error_url=env.get("NTFY_ERROR_URL", ""),
            cache_ttl_s=_int(env, "CACHE_TTL_SECONDS", 300),
            balance_cache_ttl_s=_int(env, "BALANCE_CACHE_TTL_SECONDS", 60),
            rate_limit_requests_per_minute=_int(env, "RATE_LIMIT_REQUESTS_PER_MINUTE", 60),
            admin_token=env.get("ADMIN_TOKEN", ""),
            supabase_url=env.get("SUPABASE_URL", "").rstrip("/"),
            supabase_anon_key=env.get("SUPABASE_ANON_KEY", ""),
            supabase_service_role_key=env.get("SUPABASE_SERVICE_ROLE_KEY", ""),
            supabase_jwt_secret=env.get("SUPABASE_JWT_SECRET", ""),
            api_key_hash_secret=env.get("API_KEY_HASH_SECRET", ""),
            cors_allow_origins=tuple(
                o.strip().rstrip("/") for o in env.get("CORS_ALLOW_ORIGINS", "").split(",") if o.strip()
            ),
            rate_limit_tokens_per_minute=_int(env, "RATE_LIMIT_TOKENS_PER_MINUTE", 0),
            auth_unknown_key_lookups_per_s=_int(env, "AUTH_UNKNOWN_KEY_LOOKUPS_PER_SECOND", 50),
            response_cache_price_fraction=Decimal(env.get("RESPONSE_CACHE_PRICE_FRACTION") or "0"),
            response_cache_ttl_s=_int(env, "RESPONSE_CACHE_TTL_SECONDS", 3600),
            response_cache_max_ttl_s=_int(env, "RESPONSE_CACHE_MAX_TTL_SECONDS", 86_400),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 8 * 1024 * 1024),
            request_timeout_s=_float(env, "REQUEST_TIMEOUT_SECONDS", 300.0),
            worker_concurrency=_int(env, "WORKER_CONCURRENCY", 512),
            worker_claim_idle_ms=_int(env, "WORKER_CLAIM_IDLE_MS", 30_000),
            worker_metrics_port=_int(env, "WORKER_METRICS_PORT", 9101),
            billing_metrics_port=_int(env, "BILLING_METRICS_PORT", 9102),
            billing_batch_size=max(_int(env, "BILLING_BATCH_SIZE", 500), 1),
            billing_fill_wait_ms=max(_int(env, "BILLING_FILL_WAIT_MS", 100), 0),
            upstream_connect_timeout_s=_float(env, "UPSTREAM_CONNECT_TIMEOUT_SECONDS", 10.0),
            upstream_first_byte_timeout_s=_float(env, "UPSTREAM_FIRST_BYTE_TIMEOUT_SECONDS", 60.0),
            upstream_idle_timeout_s=_float(env, "UPSTREAM_IDLE_TIMEOUT_SECONDS", 60.0),
            media_allow_private_networks=_bool(env, "MEDIA_ALLOW_PRIVATE_NETWORKS", False),
            provider_max_retries=_int(env, "PROVIDER_MAX_RETRIES", 1),
            circuit_failure_threshold=_int(env, "CIRCUIT_FAILURE_THRESHOLD", 5),
            circuit_cooldown_s=_float(env, "CIRCUIT_COOLDOWN_SECONDS", 30.0),
            log_level=env.get("LOG_LEVEL", "info").lower(),
            log_format=env.get("LOG_FORMAT", "auto").lower(),
            log_prompts=_bool(env, "LOG_PROMPTS", False),
            demo_mode=_bool(env, "GATEWAY_DEMO", False),
        )

    @property
    def effective_database_url(self) -> str:
        """The configured database, or the embedded SQLite file under `var/`."""
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite+aiosqlite:///{(self.var_dir / 'gateway.db').resolve()}"

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def normalise_database_url(url: str) -> str:
    """Accept the usual `postgres://` / `postgresql://` / `sqlite://` forms; use the async drivers."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url.removeprefix(prefix)
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    return url
