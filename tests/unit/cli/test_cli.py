"""The `gateway` console script, called as `main([...])` against real migrated databases."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from services import cli
from shared.redis import keys


def sqlite_path(url: str) -> str:
    return url.split(":///", 1)[1]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean environment: no .env from the checkout, no Redis unless a test sets one."""
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_VAR_DIR", str(tmp_path / "var"))
    return monkeypatch


@pytest.fixture
def db(env: pytest.MonkeyPatch, sqlite_url: str) -> str:
    env.setenv("DATABASE_URL", sqlite_url)
    return sqlite_path(sqlite_url)


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def new_user(capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code, out, _ = run(capsys, "users", "create", *extra)
    assert code == 0
    return out.strip()


class TestHelp:
    @pytest.mark.parametrize(
        "argv",
        [
            [],
            ["run"],
            ["migrate"],
            ["users"],
            ["users", "create"],
            ["users", "list"],
            ["keys"],
            ["keys", "create"],
            ["keys", "list"],
            ["keys", "revoke"],
            ["wallet"],
            ["wallet", "credit"],
            ["wallet", "show"],
            ["fake-providers"],
        ],
    )
    def test_every_command_has_help(
        self, argv: list[str], capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, "--help"])
        assert exit_info.value.code == 0
        assert "usage: gateway" in capsys.readouterr().out

    def test_missing_command_is_a_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([])
        assert exit_info.value.code == 2


def test_run_delegates_to_the_runner(
    env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import services.runner

    calls: list[str] = []

    def fake_run_service(name: str) -> int:
        calls.append(name)
        return 0

    env.setattr(services.runner, "run_service", fake_run_service)
    assert run(capsys, "run", "billing")[0] == 0
    assert calls == ["billing"]


class TestMigrate:
    def test_migrates_a_fresh_sqlite_file(
        self, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        path = tmp_path / "fresh" / "gw.db"
        env.setenv("DATABASE_URL", f"sqlite:///{path}")
        code, out, _ = run(capsys, "migrate")
        assert code == 0 and str(path) in out and "head" in out
        assert run(capsys, "users", "list")[0] == 0

    def test_never_prints_the_password(
        self, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        env.setenv("DATABASE_URL", "postgresql://admin:s3cr3t-pw@127.0.0.1:1/gw")
        code, out, err = run(capsys, "migrate")
        assert code == 1
        assert "s3cr3t-pw" not in out + err
        assert "admin:***@127.0.0.1:1/gw" in out

    def test_admin_commands_need_a_migrated_schema(
        self, env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        env.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'empty.db'}")
        code, _, err = run(capsys, "users", "list")
        assert code == 1
        assert "run `gateway migrate` first" in err


class TestUsersAndKeys:
    def test_users_create_and_list(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        user_id = new_user(capsys, "--email", "ada@example.com", "--name", "Ada")
        assert user_id.startswith("usr_")
        code, out, _ = run(capsys, "users", "list")
        assert code == 0 and user_id in out and "ada@example.com" in out
        with sqlite3.connect(db) as conn:
            assert conn.execute("select balance_nusd from wallets").fetchall() == [(0,)]

    def test_key_lifecycle(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        user_id = new_user(capsys)
        code, out, err = run(
            capsys, "keys", "create", "--user", user_id, "--name", "ci", "--expires-days", "30"
        )
        assert code == 0
        key = out.strip()
        assert key.startswith("gw-") and len(key) == 51
        assert "will not be shown again" in err
        with sqlite3.connect(db) as conn:
            key_id, stored_hash, expires = conn.execute(
                "select id, key_hash, expires_at from api_keys"
            ).fetchone()
        assert key not in stored_hash and expires is not None

        code, out, _ = run(capsys, "keys", "list", "--user", user_id)
        assert code == 0 and key_id in out and "active" in out and key not in out
        assert key[:7] in out

        code, out, _ = run(capsys, "keys", "revoke", key_id)
        assert code == 0 and key_id in out
        assert "revoked" in run(capsys, "keys", "list", "--user", user_id)[1]
        code, _, err = run(capsys, "keys", "revoke", "key_missing")
        assert code == 1 and "no such key" in err

    def test_keys_for_an_unknown_user(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, err = run(capsys, "keys", "create", "--user", "usr_nobody")
        assert code == 1 and out == "" and "no such user" in err


class TestWallet:
    def test_credit_is_idempotent_and_invalidates_the_cache(
        self,
        db: str,
        env: pytest.MonkeyPatch,
        redis_url: str,
        sync_redis: redis_sync.Redis,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        env.setenv("REDIS_URL", redis_url)
        user_id = new_user(capsys)
        sync_redis.set(keys.balance(user_id), 123)

        code, out, err = run(
            capsys,
            "wallet",
            "credit",
            "--user",
            user_id,
            "--amount",
            "10.5",
            "--idempotency-key",
            "inv-1",
        )
        assert code == 0, err
        assert "balance: 10.500000000 USD" in out
        assert sync_redis.get(keys.balance(user_id)) is None
        assert sync_redis.get(keys.balance_version(user_id)) == b"1"

        code, out, _ = run(
            capsys,
            "wallet",
            "credit",
            "--user",
            user_id,
            "--amount",
            "10.5",
            "--idempotency-key",
            "inv-1",
        )
        assert code == 0 and "nothing changed" in out and "balance: 10.500000000 USD" in out
        with sqlite3.connect(db) as conn:
            assert conn.execute(
                "select count(*), sum(amount_nusd) from ledger_transactions"
            ).fetchone() == (1, 10_500_000_000)
            assert conn.execute("select balance_nusd from wallets").fetchone() == (10_500_000_000,)

        code, _, err = run(
            capsys,
            "wallet",
            "credit",
            "--user",
            user_id,
            "--amount",
            "3",
            "--idempotency-key",
            "inv-1",
        )
        assert code == 1 and "already used" in err

    def test_credit_without_redis_says_so(
        self, db: str, env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        user_id = new_user(capsys)
        code, out, err = run(capsys, "wallet", "credit", "--user", user_id, "--amount", "1")
        assert code == 0 and "balance: 1.000000000 USD" in out
        assert "not invalidated" in err

        env.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
        code, out, err = run(capsys, "wallet", "credit", "--user", user_id, "--amount", "2")
        assert code == 0 and "balance: 3.000000000 USD" in out
        assert "did not answer" in err and "not invalidated" in err

    @pytest.mark.parametrize("amount", ["abc", "0", "-5", "0.0000000001", "NaN", "Infinity"])
    def test_credit_rejects_bad_amounts(
        self, amount: str, db: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        user_id = new_user(capsys)
        code, _, err = run(capsys, "wallet", "credit", "--user", user_id, "--amount", amount)
        assert code == 1 and "error:" in err
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from ledger_transactions").fetchone() == (0,)

    def test_credit_unknown_user(self, db: str, capsys: pytest.CaptureFixture[str]) -> None:
        code, _, err = run(capsys, "wallet", "credit", "--user", "usr_nobody", "--amount", "1")
        assert code == 1 and "no such user" in err

    def test_show(
        self,
        db: str,
        env: pytest.MonkeyPatch,
        redis_url: str,
        sync_redis: redis_sync.Redis,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        env.setenv("REDIS_URL", redis_url)
        user_id = new_user(capsys)
        run(capsys, "wallet", "credit", "--user", user_id, "--amount", "2", "--reason", "welcome")
        sync_redis.set(keys.held_total(user_id), 250_000_000)

        code, out, _ = run(capsys, "wallet", "show", "--user", user_id)
        assert code == 0
        assert "balance: 2.000000000 USD" in out
        assert "held:    0.250000000 USD" in out
        assert "welcome" in out and "credit" in out

        code, _, err = run(capsys, "wallet", "show", "--user", "usr_nobody")
        assert code == 1 and "no such user" in err


def test_against_postgresql(
    env: pytest.MonkeyPatch, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env.setenv("DATABASE_URL", pg_url)
    assert run(capsys, "migrate")[0] == 0
    user_id = new_user(capsys)
    code, out, _ = run(capsys, "wallet", "credit", "--user", user_id, "--amount", "0.000000001")
    assert code == 0 and "balance: 0.000000001 USD" in out
    code, out, _ = run(capsys, "wallet", "show", "--user", user_id)
    assert code == 0 and "0.000000001" in out
