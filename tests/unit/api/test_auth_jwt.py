"""Supabase JWT verification: accepted and rejected tokens, JWKS caching and refresh."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import AsyncIterator

import jwt
import orjson
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from services.api.jwt_auth import JwtVerifier, looks_like_jwt, parse_jwks
from shared.errors import Unauthorized
from tests.fakes.jwks import JwksState, SigningKey, claims, jwks_app

SECRET = "legacy-supabase-jwt-secret-with-32-chars"


@pytest.fixture(scope="module")
def es_key() -> SigningKey:
    return SigningKey.generate("ES256", "es-1")


@pytest.fixture(scope="module")
def rs_key() -> SigningKey:
    return SigningKey.generate("RS256", "rs-1")


@pytest_asyncio.fixture
async def idp(es_key: SigningKey, rs_key: SigningKey) -> AsyncIterator[tuple[TestServer, JwksState]]:
    state = JwksState(keys=[es_key, rs_key])
    server = TestServer(jwks_app(state))
    await server.start_server()
    yield server, state
    await server.close()


def base_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest_asyncio.fixture
async def verifier(idp: tuple[TestServer, JwksState]) -> AsyncIterator[JwtVerifier]:
    v = JwtVerifier(
        supabase_url=base_url(idp[0]), jwt_secret=SECRET, anon_key="anon-123", cache_ttl_s=300
    )
    yield v
    await v.close()


def issuer(server: TestServer) -> str:
    return base_url(server) + "/auth/v1"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestAccepted:
    async def test_es256_and_rs256_from_jwks(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], es_key: SigningKey,
        rs_key: SigningKey,
    ) -> None:  # fmt: skip
        server, state = idp
        es = await verifier.verify(es_key.mint(claims(issuer(server), "sub-es", email="a@b.c")))
        rs = await verifier.verify(rs_key.mint(claims(issuer(server), "sub-rs")))
        assert (es.subject, es.email) == ("sub-es", "a@b.c")
        assert (rs.subject, rs.email) == ("sub-rs", None)
        assert state.fetches == 1  # the JWKS was fetched once and then served from cache
        assert state.apikeys == ["anon-123"]
        assert verifier.cache_hits == 1 and verifier.cache_misses == 1

    async def test_hs256_with_the_legacy_secret(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState]
    ) -> None:
        token = jwt.encode(claims(issuer(idp[0]), "sub-hs"), SECRET, algorithm="HS256")
        assert (await verifier.verify(token)).subject == "sub-hs"
        assert idp[1].fetches == 0  # no JWKS needed

    async def test_small_clock_skew_is_tolerated(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], es_key: SigningKey
    ) -> None:
        token = es_key.mint(claims(issuer(idp[0]), exp_in_s=-5))
        assert (await verifier.verify(token)).subject == "user-1"


class TestRejected:
    @pytest.mark.parametrize(
        ("change", "reason"),
        [
            ({"exp_in_s": -120}, "expired"),
            ({"aud": "anon"}, "wrong audience"),
        ],
    )
    async def test_bad_claims(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], es_key: SigningKey,
        change: dict[str, object], reason: str,
    ) -> None:  # fmt: skip
        token = es_key.mint(claims(issuer(idp[0]), **change))  # type: ignore[arg-type]
        with pytest.raises(Unauthorized, match=reason):
            await verifier.verify(token)

    async def test_wrong_issuer(
        self, verifier: JwtVerifier, es_key: SigningKey
    ) -> None:
        with pytest.raises(Unauthorized, match="wrong issuer"):
            await verifier.verify(es_key.mint(claims("https://evil.example/auth/v1")))

    async def test_no_subject(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], es_key: SigningKey
    ) -> None:
        token_claims = claims(issuer(idp[0]))
        del token_claims["sub"]
        with pytest.raises(Unauthorized):
            await verifier.verify(es_key.mint(token_claims))

    async def test_wrong_signature(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState]
    ) -> None:
        impostor = SigningKey.generate("ES256", "es-1")  # same kid, another key
        with pytest.raises(Unauthorized, match="bad signature"):
            await verifier.verify(impostor.mint(claims(issuer(idp[0]))))
        forged = jwt.encode(claims(issuer(idp[0])), "not-the-secret-but-long-enough!!", algorithm="HS256")
        with pytest.raises(Unauthorized, match="bad signature"):
            await verifier.verify(forged)

    async def test_alg_none(self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState]) -> None:
        header = _b64(orjson.dumps({"alg": "none", "typ": "JWT", "kid": "es-1"}))
        payload = _b64(orjson.dumps(claims(issuer(idp[0]))))
        for token in (f"{header}.{payload}.", f"{header}.{payload}.c2ln"):
            with pytest.raises(Unauthorized, match="unsupported algorithm"):
                await verifier.verify(token)

    @pytest.mark.parametrize("with_secret", [True, False])
    async def test_hs256_signed_with_the_public_key(
        self, idp: tuple[TestServer, JwksState], es_key: SigningKey, rs_key: SigningKey,
        with_secret: bool,
    ) -> None:  # fmt: skip
        verifier = JwtVerifier(
            supabase_url=base_url(idp[0]), jwt_secret=SECRET if with_secret else ""
        )
        try:
            for key in (es_key, rs_key):
                # pyjwt refuses to sign HS256 with a PEM; build the confused token by hand.
                header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}))
                payload = _b64(orjson.dumps(claims(issuer(idp[0]))))
                mac = hmac.new(key.public_pem(), f"{header}.{payload}".encode(), hashlib.sha256)
                token = f"{header}.{payload}.{_b64(mac.digest())}"
                with pytest.raises(Unauthorized):
                    await verifier.verify(token)
        finally:
            await verifier.close()

    async def test_algorithm_must_match_the_key(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], rs_key: SigningKey
    ) -> None:
        # An RS256 token that names the EC key's kid.
        token = rs_key.mint(claims(issuer(idp[0])), kid="es-1")
        with pytest.raises(Unauthorized, match="does not match"):
            await verifier.verify(token)

    async def test_not_configured(self) -> None:
        verifier = JwtVerifier()
        with pytest.raises(Unauthorized, match="not accepted"):
            await verifier.verify("eyJhbGciOiJIUzI1NiJ9.e30.c2ln")


class TestJwksRefresh:
    async def test_random_kid_flood_fetches_at_most_once(
        self, verifier: JwtVerifier, idp: tuple[TestServer, JwksState], es_key: SigningKey
    ) -> None:
        server, state = idp
        await verifier.verify(es_key.mint(claims(issuer(server))))
        assert state.fetches == 1
        tokens = [es_key.mint(claims(issuer(server)), kid=f"random-{i}") for i in range(200)]
        results = await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)
        assert all(isinstance(r, Unauthorized) for r in results)
        # One refetch for the first unknown kid at most, then none within min_refresh_s.
        assert state.fetches <= 2
        assert verifier.jwks_fetches == state.fetches

    async def test_rotation_picks_up_a_new_kid(
        self, idp: tuple[TestServer, JwksState], es_key: SigningKey
    ) -> None:
        server, state = idp
        verifier = JwtVerifier(supabase_url=base_url(server), min_refresh_s=0.0)
        try:
            await verifier.verify(es_key.mint(claims(issuer(server))))
            rotated = SigningKey.generate("ES256", "es-2")
            state.keys.append(rotated)
            assert (await verifier.verify(rotated.mint(claims(issuer(server), "new")))).subject == "new"
            assert state.fetches == 2
        finally:
            await verifier.close()

    async def test_keys_survive_an_unreachable_jwks(
        self, idp: tuple[TestServer, JwksState], es_key: SigningKey
    ) -> None:
        server, state = idp
        verifier = JwtVerifier(supabase_url=base_url(server), cache_ttl_s=1, min_refresh_s=0.0)
        try:
            await verifier.verify(es_key.mint(claims(issuer(server))))
            state.status = 503
            verifier._fetched_at = time.monotonic() - 10  # the cached set is now stale
            assert (await verifier.verify(es_key.mint(claims(issuer(server))))).subject == "user-1"
            assert state.fetches == 2
        finally:
            await verifier.close()


def test_shapes() -> None:
    assert looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig")
    assert not looks_like_jwt("gw-" + "a" * 48)
    assert not looks_like_jwt("eyJ.only-two")


def test_jwks_ignores_symmetric_and_mislabelled_keys(es_key: SigningKey) -> None:
    good = es_key.public_jwk()
    document = {
        "keys": [
            good,
            {"kty": "oct", "kid": "sym", "k": _b64(b"secret")},
            {**good, "kid": "liar", "alg": "HS256"},
            {**good, "kid": "enc", "use": "enc"},
        ]
    }
    assert set(parse_jwks(document)) == {"es-1"}
