"""Supabase session tokens (JWTs), verified locally with pyjwt.

Two kinds of signing keys, each pinned to its own algorithms:

- the legacy shared secret (`SUPABASE_JWT_SECRET`): HS256 only;
- the project's asymmetric keys, published at `SUPABASE_URL/auth/v1/.well-known/jwks.json`:
  ES256 for EC P-256 keys, RS256 for RSA keys.

The algorithm a token names must be the one pinned to the key it names; a public key
is never handed to an HMAC verifier (the classic "HS256 signed with the public key"
confusion), symmetric keys published in the JWKS are ignored, and `none` is never
accepted. Claims checked: signature, `exp` (with a small leeway), `aud` =
`authenticated`, `sub` present, and `iss` = `SUPABASE_URL/auth/v1` when a URL is set.

The JWKS is fetched with aiohttp (never blocking the loop), cached for
`CACHE_TTL_SECONDS`, and refetched early when a token names an unknown `kid` (key
rotation); such refetches are at most one per `min_refresh_s`, so a flood of tokens with
random `kid`s cannot make the gateway hammer the identity provider.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import structlog

from shared.errors import Unauthorized

log = structlog.get_logger("api.jwt")

AUDIENCE = "authenticated"
LEEWAY_S = 30
JWKS_PATH = "/auth/v1/.well-known/jwks.json"
JWKS_TIMEOUT_S = 5.0
DEFAULT_MIN_REFRESH_S = 30.0
# Three base64url segments, the header starting `{"` (eyJ); API keys never contain dots.
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Key type (and curve) -> the only algorithm such a key may verify.
_PINNED = {("EC", "P-256"): "ES256", ("RSA", None): "RS256"}


def looks_like_jwt(credential: str) -> bool:
    return _JWT_SHAPE.fullmatch(credential) is not None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for."""

    subject: str
    email: str | None


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any
    algorithm: str


def _pinned_algorithm(jwk: Mapping[str, Any]) -> str | None:
    kty = jwk.get("kty")
    algorithm = _PINNED.get((str(kty), jwk.get("crv") if kty == "EC" else None))
    if algorithm is None:
        return None
    declared = jwk.get("alg")
    if declared is not None and declared != algorithm:
        return None  # a key that says it is for something else is not used at all
    return algorithm


def parse_jwks(document: Mapping[str, Any]) -> dict[str, _Key]:
    """The usable signing keys of a JWKS document, by `kid`."""
    found: dict[str, _Key] = {}
    for jwk in document.get("keys") or ():
        if not isinstance(jwk, Mapping) or not jwk.get("kid"):
            continue
        if jwk.get("use", "sig") != "sig":
            continue
        algorithm = _pinned_algorithm(jwk)
        if algorithm is None:
            continue
        try:
            parsed = jwt.PyJWK(dict(jwk), algorithm=algorithm)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            log.warning("jwks_key_unusable", kid=str(jwk.get("kid")))
            continue
        found[str(jwk["kid"])] = _Key(parsed.key, algorithm)
    return found


class JwtVerifier:
    """Verifies Supabase JWTs; one per api process.

    :param supabase_url: the project URL (JWKS and issuer); "" for secret-only setups.
    :param jwt_secret: the legacy HS256 secret; "" when the project has none.
    :param anon_key: sent as the `apikey` header on JWKS fetches, when set.
    :param cache_ttl_s: how long a fetched JWKS is used before it is fetched again.
    :param min_refresh_s: least time between fetches caused by unknown `kid`s.
    """

    def __init__(
        self,
        *,
        supabase_url: str = "",
        jwt_secret: str = "",
        anon_key: str = "",
        cache_ttl_s: float = 300.0,
        min_refresh_s: float = DEFAULT_MIN_REFRESH_S,
        http: aiohttp.ClientSession | None = None,
    ) -> None:
        self._url = supabase_url.rstrip("/")
        self._issuer = f"{self._url}/auth/v1" if self._url else None
        self._secret = jwt_secret.encode() if jwt_secret else None
        self._anon_key = anon_key
        self._ttl_s = max(cache_ttl_s, 1.0)
        self._min_refresh_s = min_refresh_s
        self._http = http
        self._owns_http = http is None
        self._keys: dict[str, _Key] = {}
        self._fetched_at = float("-inf")  # last successful fetch (monotonic)
        self._attempted_at = float("-inf")  # last fetch attempt, successful or not
        self._fetching: asyncio.Task[None] | None = None
        self.jwks_fetches = 0
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def enabled(self) -> bool:
        return bool(self._url or self._secret)

    async def close(self) -> None:
        if self._fetching is not None and not self._fetching.done():
            self._fetching.cancel()
        if self._http is not None and self._owns_http:
            await self._http.close()

    async def verify(self, token: str) -> Identity:
        """The identity a valid token carries; `Unauthorized` for anything else."""
        if not self.enabled:
            raise Unauthorized("Session tokens are not accepted by this gateway; use an API key.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid authentication token.") from None
        algorithm = header.get("alg")
        if algorithm == "HS256":
            if self._secret is None:
                raise Unauthorized("Invalid authentication token: HS256 is not accepted.")
            key: Any = self._secret
        elif algorithm in ("ES256", "RS256") and self._url:
            found = await self._key_for(header.get("kid"))
            if found is None:
                raise Unauthorized("Invalid authentication token: unknown signing key.")
            if found.algorithm != algorithm:
                raise Unauthorized("Invalid authentication token: algorithm does not match its key.")
            key = found.key
        else:
            raise Unauthorized("Invalid authentication token: unsupported algorithm.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=AUDIENCE,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "sub", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Invalid authentication token: expired.") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("Invalid authentication token: wrong audience.") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("Invalid authentication token: wrong issuer.") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized("Invalid authentication token: bad signature.") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("Invalid authentication token.") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise Unauthorized("Invalid authentication token: no subject.")
        email = claims.get("email")
        return Identity(subject, email if isinstance(email, str) and email else None)

    async def _key_for(self, kid: object) -> _Key | None:
        if not isinstance(kid, str) or not kid:
            return None
        now = time.monotonic()
        stale = now - self._fetched_at >= self._ttl_s
        found = self._keys.get(kid)
        if found is not None and not stale:
            self.cache_hits += 1
            return found
        self.cache_misses += 1
        log.debug("jwks_cache_miss", stale=stale)
        # Whether the set is stale or the kid unknown (rotation, or a forged token), fetch
        # only if no fetch was tried lately; meanwhile the keys we have keep serving.
        if now - self._attempted_at >= self._min_refresh_s:
            await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        # Concurrent callers share one fetch.
        if self._fetching is None or self._fetching.done():
            self._fetching = asyncio.create_task(self._fetch())
        await asyncio.shield(self._fetching)

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        self.jwks_fetches += 1
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=JWKS_TIMEOUT_S))
        headers = {"apikey": self._anon_key} if self._anon_key else {}
        try:
            async with self._http.get(self._url + JWKS_PATH, headers=headers) as resp:
                if resp.status != 200:
                    log.warning("jwks_fetch_failed", status=resp.status)
                    return
                document = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Keep the keys we have: a blip at the identity provider must not log everyone out.
            log.warning("jwks_fetch_failed", error=type(exc).__name__)
            return
        if not isinstance(document, Mapping):
            log.warning("jwks_fetch_failed", error="not a JSON object")
            return
        self._keys = parse_jwks(document)
        self._fetched_at = time.monotonic()
        log.info("jwks_fetched", keys=len(self._keys))
