"""A Supabase-like identity provider for tests: signing keys made here, a JWKS endpoint.

`SigningKey.generate("ES256" | "RS256", kid)` makes a key pair with `cryptography`;
`mint()` signs claims with it; `JwksApp` serves the public halves at
`/auth/v1/.well-known/jwks.json`, counting fetches and remembering the `apikey` header.
`JwksThread` runs that app on its own loop in a thread, for api processes to reach.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

JWKS_PATH = "/auth/v1/.well-known/jwks.json"
AUDIENCE = "authenticated"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: Any

    @classmethod
    def generate(cls, algorithm: str, kid: str) -> SigningKey:
        if algorithm == "ES256":
            return cls(kid, algorithm, ec.generate_private_key(ec.SECP256R1()))
        if algorithm == "RS256":
            return cls(kid, algorithm, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        raise ValueError(algorithm)

    def public_jwk(self) -> dict[str, Any]:
        algo = jwt.algorithms.ECAlgorithm if self.algorithm == "ES256" else jwt.algorithms.RSAAlgorithm
        jwk: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        jwk.update(kid=self.kid, alg=self.algorithm, use="sig")
        return jwk

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def mint(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        return jwt.encode(claims, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


def claims(
    issuer: str, sub: str = "user-1", *, exp_in_s: int = 3600, aud: str = AUDIENCE, **extra: Any
) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": aud, "iss": issuer, "iat": now, "exp": now + exp_in_s,
            "role": "authenticated", **extra}  # fmt: skip


@dataclass
class JwksState:
    keys: list[SigningKey] = field(default_factory=list)
    fetches: int = 0
    apikeys: list[str | None] = field(default_factory=list)
    status: int = 200


def jwks_app(state: JwksState) -> web.Application:
    async def jwks(request: web.Request) -> web.Response:
        state.fetches += 1
        state.apikeys.append(request.headers.get("apikey"))
        if state.status != 200:
            return web.Response(status=state.status, text="unavailable")
        return web.json_response({"keys": [k.public_jwk() for k in state.keys]})

    app = web.Application()
    app.router.add_get(JWKS_PATH, jwks)
    return app


class JwksThread:
    """The fake identity provider on 127.0.0.1:`port`, served from a background thread."""

    def __init__(self, state: JwksState, port: int) -> None:
        self.state = state
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(jwks_app(self.state), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
