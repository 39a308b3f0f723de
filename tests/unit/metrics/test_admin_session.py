"""The dashboard's session cookie: signed with the admin token, expiring, tamper-evident."""

from __future__ import annotations

from services.api import admin_session

TOKEN = "admin-token-for-tests"


def test_issued_value_verifies_until_it_expires() -> None:
    value = admin_session.issue(TOKEN, now=1_000, ttl_s=60)
    assert TOKEN not in value
    assert admin_session.verify(TOKEN, value, now=1_059)
    assert not admin_session.verify(TOKEN, value, now=1_060)


def test_forged_or_foreign_values_fail() -> None:
    value = admin_session.issue(TOKEN, now=1_000, ttl_s=60)
    expires, _, signature = value.partition(".")
    assert not admin_session.verify("another-token", value, now=1_000)  # token rotated
    assert not admin_session.verify(TOKEN, f"{int(expires) + 3600}.{signature}", now=1_000)
    assert not admin_session.verify(TOKEN, f"{expires}.{'0' * 64}", now=1_000)
    for junk in ("", ".", "abc.def", f"{expires}", "9" * 40 + ".x"):
        assert not admin_session.verify(TOKEN, junk, now=1_000)
    assert not admin_session.verify("", value, now=1_000)  # admin disabled


def test_token_matches_in_constant_time_and_never_when_unset() -> None:
    assert admin_session.token_matches(TOKEN, TOKEN)
    assert not admin_session.token_matches(TOKEN, TOKEN + "x")
    assert not admin_session.token_matches("", "")
