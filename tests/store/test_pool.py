"""The lean connection pool on a real redis-server: what redis-py's probe read guarded
against (a connection handed out with a reply still unread) cannot happen."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError

from otpd.store.redis.pool import LeanPool


async def test_a_command_cancelled_midway_leaves_no_reply_for_the_next_caller(
    redis_url: str,
) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.set("lean:k", "mine")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                # the server answers after the caller gave up: that reply must not be read
                # as the answer of the next command on the same (only) connection
                await client.blpop(["lean:empty"], timeout=0.2)
        await asyncio.sleep(0.3)
        assert await client.get("lean:k") == "mine"
        assert await client.echo("next") == "next"
    finally:
        await client.aclose(close_connection_pool=True)


async def test_connections_are_reused_and_never_more_than_the_pool_size(redis_url: str) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=2)
    client = aioredis.Redis(connection_pool=pool)
    try:
        for _ in range(20):
            await client.ping()
        assert len(pool._in_use_connections) == 0
        assert len(pool._available_connections) == 1  # one connection served all 20
        held = [await pool.get_connection(), await pool.get_connection()]
        with pytest.raises(MaxConnectionsError):
            await pool.get_connection()
        for conn in held:
            await pool.release(conn)
        assert await client.ping()
    finally:
        await client.aclose(close_connection_pool=True)


async def test_a_connection_the_server_closed_is_connected_again(redis_url: str) -> None:
    pool = LeanPool.from_url(redis_url, max_connections=1, decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    try:
        await client.client_setname("lean-victim")
        await client.ping()
        other = aioredis.Redis.from_url(redis_url)
        try:
            killed = await other.client_kill_filter(_type="normal", skipme=True)
            assert killed >= 1
        finally:
            await other.aclose()
        with pytest.raises(RedisConnectionError):  # the dead connection fails once
            await client.ping()
        assert await client.ping()  # closed by redis-py, connected again by the pool
    finally:
        await client.aclose(close_connection_pool=True)
