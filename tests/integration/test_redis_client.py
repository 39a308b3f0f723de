"""The services' Redis client against a real server: its cheaper connection check still
keeps a connection that is out of step with its replies out of service."""

from __future__ import annotations

import asyncio
import os

import pytest

from shared.redis.client import CheckedPool, redis_client

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
