"""The pipelined hot-path Redis connection (services/common/redis.py) against the real Redis: many
callers sharing one socket get their own replies, errors come back where they belong, and a
connection Redis drops is replaced without the caller seeing it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.common.redis import PipelinedConnection, RedisClient, pack_command
from tests.support import REDIS_URL


@pytest.fixture
async def client() -> AsyncIterator[RedisClient]:
    redis = RedisClient(REDIS_URL, prefix=f"test:{uuid.uuid4().hex[:8]}:")
    yield redis
    keys = [key async for key in redis.redis.scan_iter(match=f"{redis.prefix}*")]
    if keys:
        await redis.redis.delete(*keys)
    await redis.close()


async def test_concurrent_callers_on_one_socket_each_get_their_own_reply(client: RedisClient) -> None:
    keys = [f"{client.prefix}k{index}" for index in range(200)]
    await client.redis.mset({key: f"value-{index}" for index, key in enumerate(keys)})

    replies = await asyncio.gather(*(client.pipelined.execute("GET", key) for key in keys))

    assert replies == [f"value-{index}" for index in range(200)]
    assert client.pipelined.connections_opened == 1


async def test_hmget_replies_decoded_and_missing_fields_none(client: RedisClient) -> None:
    key = f"{client.prefix}state"
    await client.redis.hset(key, mapping={"rev": "3", "data": "cachemire é"})

    assert await client.pipelined.execute("HMGET", key, "rev", "data", "attrs") == ["3", "cachemire é", None]


async def test_an_error_reply_raises_for_its_command_only(client: RedisClient) -> None:
    text_key = f"{client.prefix}text"
    await client.redis.set(text_key, "not a list")

    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await client.pipelined.execute("LPUSH", text_key, "x")
    assert await client.pipelined.execute("GET", text_key) == "not a list"


async def test_a_batch_returns_error_replies_in_place_and_applies_the_rest(client: RedisClient) -> None:
    text_key, list_key = f"{client.prefix}text", f"{client.prefix}list"
    await client.redis.set(text_key, "not a list")

    replies = await client.pipelined.execute_many(
        [("LPUSH", list_key, "a", "b"), ("LPUSH", text_key, "x"), ("LTRIM", list_key, 0, 0)]
    )

    assert replies[0] == 2 and isinstance(replies[1], ResponseError) and replies[2] == "OK"
    assert await client.redis.lrange(list_key, 0, -1) == ["b"]


async def test_a_caller_that_gives_up_leaves_the_next_reply_to_the_next_caller(client: RedisClient) -> None:
    key = f"{client.prefix}slow"
    await client.redis.set(key, "after the wait")
    # BLPOP on an empty list holds its reply for 0.3 s; the caller gives up after 0.05 s.
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.pipelined.execute("BLPOP", f"{client.prefix}empty", "0.3")

    assert await client.pipelined.execute("GET", key) == "after the wait"


async def test_a_connection_redis_closed_is_replaced_and_the_command_retried(client: RedisClient) -> None:
    key = f"{client.prefix}survivor"
    await client.redis.set(key, "still here")
    assert await client.pipelined.execute("GET", key) == "still here"
    connection_id = await client.pipelined.execute("CLIENT", "ID")

    assert await client.redis.client_kill_filter(_id=connection_id) == 1
    await asyncio.sleep(0.05)  # the close reaches the client

    assert await client.pipelined.execute("GET", key) == "still here"
    assert client.pipelined.connections_opened == 2


async def test_an_unreachable_redis_is_a_connection_error() -> None:
    unreachable = PipelinedConnection("redis://127.0.0.1:1/0", RedisClient(REDIS_URL, "unused:").metrics)

    with pytest.raises(RedisConnectionError):
        await unreachable.execute("PING")


async def test_a_command_in_flight_when_redis_drops_the_connection_is_sent_again(client: RedisClient) -> None:
    connection_id = await client.pipelined.execute("CLIENT", "ID")
    waiting = asyncio.create_task(client.pipelined.execute("BLPOP", f"{client.prefix}empty", "0.3"))
    await asyncio.sleep(0.05)  # the BLPOP is waiting in Redis

    assert await client.redis.client_kill_filter(_id=connection_id) == 1

    assert await waiting is None  # its timeout, on the new connection: no error reached the caller
    assert client.pipelined.connections_opened == 2


async def test_a_refused_password_is_a_connection_error() -> None:
    # The test Redis has no password: AUTH is refused, as a wrong one would be.
    refused = PipelinedConnection(
        REDIS_URL.replace("redis://", "redis://:wrong@"), RedisClient(REDIS_URL, "x:").metrics
    )

    with pytest.raises(RedisConnectionError, match="refused AUTH"):
        await refused.execute("PING")


async def test_the_database_of_the_url_is_selected(client: RedisClient) -> None:
    key = f"{client.prefix}in-db-3"
    other_db = PipelinedConnection(REDIS_URL.rsplit("/", 1)[0] + "/3", client.metrics)
    try:
        assert await other_db.execute("SET", key, "three") == "OK"
        assert await client.pipelined.execute("GET", key) is None
        assert await other_db.execute("GET", key) == "three"
    finally:
        await other_db.execute("DEL", key)
        other_db.close()


async def test_coalesced_commands_of_one_turn_leave_in_one_write_and_in_order(client: RedisClient) -> None:
    pipelined = PipelinedConnection(REDIS_URL, client.metrics, coalesce_writes=True)
    await pipelined.open()
    protocol = pipelined._protocol  # the socket's writes are what is counted
    assert protocol is not None and protocol.transport is not None
    transport = protocol.transport
    writes: list[bytes] = []
    write = transport.write

    def counted(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        write(data)

    transport.write = counted  # type: ignore[method-assign]
    key = f"{client.prefix}turn"
    try:
        setting = asyncio.ensure_future(pipelined.execute("SET", key, "set in this turn"))
        await asyncio.sleep(0)  # the SET is sent, not yet written
        # A write that cannot wait goes at once, after what the turn sent before it.
        now = pipelined.write_now(pack_command(("GET", key)), "GET")
        later = [asyncio.ensure_future(pipelined.execute("INCR", key + ":n")) for _ in range(20)]
        assert await setting == "OK" and await now == "set in this turn"
        assert await asyncio.gather(*later) == list(range(1, 21))
    finally:
        transport.write = write  # type: ignore[method-assign]
        pipelined.close()
    assert len(writes) == 2  # the SET with the GET, then the twenty INCRs together
    assert writes[0].index(b"SET") < writes[0].index(b"GET")
