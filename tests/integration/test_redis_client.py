"""The services' Redis client against a real server: its cheaper connection check still
keeps a connection that is out of step with its replies out of service, and its
hiredis command packing sends exactly what redis-py's own packer would."""

from __future__ import annotations

import asyncio
import os

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from shared.redis.client import CheckedPool, hiredis_packing, redis_client

URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


async def test_commands_reuse_one_healthy_connection() -> None:
    client = redis_client(URL)
    try:
        assert isinstance(client.connection_pool, CheckedPool)
        for i in range(20):
            assert await client.echo(f"m{i}") == f"m{i}".encode()
        assert len(client.connection_pool._available_connections) == 1
    finally:
        await client.aclose()


async def test_a_connection_with_unread_replies_is_replaced_not_reused() -> None:
    client = redis_client(URL)
    try:
        pool = client.connection_pool
        connection = await pool.get_connection()
        await connection.send_command("PING")  # its reply is never read
        await asyncio.sleep(0.05)  # ... but has arrived
        await pool.release(connection)
        # The stray +PONG must not be taken as the answer to the next command.
        assert await client.echo("next") == b"next"
    finally:
        await client.aclose()


async def test_a_connection_closed_by_the_server_is_reconnected() -> None:
    client = redis_client(URL)
    killer = redis_client(URL)
    try:
        victim = await client.client_id()
        await killer.execute_command("CLIENT", "KILL", "ID", victim)
        assert await client.echo("after") == b"after"
        assert await client.client_id() != victim
    finally:
        await client.aclose()
        await killer.aclose()


@pytest.mark.parametrize("decode", [False, True])
async def test_decoding_option_is_kept(decode: bool) -> None:
    client = redis_client(URL, decode_responses=decode)
    try:
        assert await client.echo("x") == ("x" if decode else b"x")
    finally:
        await client.aclose()


PACKING_CASES = [
    ("SET", "k", "v"),
    ("SET", b"k", 1),
    ("CLIENT SETNAME", "gw"),  # a command name with a space is split, as redis-py does
    (b"CONFIG GET", b"maxmemory"),
    ("X", 1.5, 0.1, 1e20, -3, 10**30, float("inf")),
    ("X", "é€", b"", "", b"\x00\xff"),
    ("X", memoryview(b"view"), b"y" * 10_000),
]


@pytest.mark.parametrize("args", PACKING_CASES)
def test_commands_are_packed_byte_for_byte_as_redis_py_packs_them(args: tuple) -> None:
    ours = hiredis_packing(Connection)()
    theirs = Connection()
    assert type(ours).__name__ == "HiredisConnection"
    assert b"".join(ours.pack_command(*args)) == b"".join(
        bytes(part) for part in theirs.pack_command(*args)
    )


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_values_redis_py_refuses_are_still_refused_with_its_error(bad: object) -> None:
    with pytest.raises(DataError, match="Invalid input of type"):
        hiredis_packing(Connection)().pack_command("SET", "k", bad)


def test_every_kind_of_url_gets_the_packing_connection() -> None:
    for url, base in (
        (URL, Connection),
        ("rediss://127.0.0.1:6379/0", SSLConnection),
        ("unix:///tmp/redis.sock", UnixDomainSocketConnection),
    ):
        pool_class = redis_client(url).connection_pool.connection_class
        assert issubclass(pool_class, base) and pool_class.__name__ == f"Hiredis{base.__name__}"
    # Another encoding than UTF-8 goes through redis-py's packer, which honours it.
    latin = hiredis_packing(Connection)(encoding="latin-1")
    assert b"".join(latin.pack_command("SET", "k", "é")).endswith(b"$1\r\n\xe9\r\n")


async def test_packed_commands_round_trip_through_a_real_server() -> None:
    client = redis_client(URL)
    try:
        await client.delete("gw:test:pack", "gw:test:pack:s")
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("gw:test:pack", "é€ and a space")
            pipe.xadd("gw:test:pack:s", {"f": b"\x00\xff", "n": 7})
            pipe.get("gw:test:pack")
            replies = await pipe.execute()
        assert replies[2] == "é€ and a space".encode()
        entries = await client.xrange("gw:test:pack:s")
        assert entries[0][1] == {b"f": b"\x00\xff", b"n": b"7"}
        assert await client.eval("return ARGV[1] .. ARGV[2]", 0, "a", 1.5) == b"a1.5"
    finally:
        await client.delete("gw:test:pack", "gw:test:pack:s")
        await client.aclose()
