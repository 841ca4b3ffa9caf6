"""Outages: health tells the truth, reads survive a Redis outage, no committed merge event is lost."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile

import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from services.common import deadlines
from services.common.cassandra import CassandraClient
from services.common.identifiers import IdentifierKey, IdentifierType
from services.common.server import open_stores
from services.identity.adapters.cassandra_store import SCHEMA_FILE, CassandraIdentityStore
from services.identity.adapters.redis_cache import RedisIdentityCache
from services.identity.graph import IdentityGraph, IdentityRules
from tests.integration.conftest import IdentityHarness, identity_settings, running_identity
from tests.support import private_redis, start_redis

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_status(harness: IdentityHarness, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(harness.channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return int(reply.status)


async def wait_for_status(harness: IdentityHarness, wanted: int, within_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if await health_status(harness) == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"health never became {wanted}")


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


async def test_health_follows_redis_and_reads_fall_back_to_cassandra(
    cassandra_admin: CassandraClient, run_id: str
) -> None:
    with private_redis() as (url, process, port):
        settings = identity_settings(run_id, redis_url=url)
        async with running_identity(settings) as harness:
            await wait_for_status(harness, SERVING)
            assert await health_status(harness, "rapport.identity.v1.IdentityService") == SERVING
            person = (await harness.call("Resolve", pb.ResolveRequest(identifier=cookie("outage-reader")))).person_id

            process.terminate()
            process.wait(10)
            await wait_for_status(harness, NOT_SERVING)
            # Cassandra is the truth: resolving still answers, from Cassandra.
            again = await harness.call("Resolve", pb.ResolveRequest(identifier=cookie("outage-reader")))
            assert again.person_id == person

            workdir = tempfile.mkdtemp(prefix="rapport-redis-")
            restarted = start_redis(shutil.which("redis-server") or "redis-server", port, workdir)
            try:
                await wait_for_status(harness, SERVING)
            finally:
                restarted.terminate()
                restarted.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)


async def test_a_merge_during_a_redis_outage_is_published_later(cassandra_admin: CassandraClient, run_id: str) -> None:
    with private_redis() as (url, process, port):
        settings = identity_settings(run_id, redis_url=url, lock_lease_s=1, outbox_interval_s=0.5)
        async with running_identity(settings) as harness:
            first = (await harness.call("Resolve", pb.ResolveRequest(identifier=cookie("outbox-a")))).person_id
            second = (await harness.call("Resolve", pb.ResolveRequest(identifier=cookie("outbox-b")))).person_id
            process.terminate()
            process.wait(10)
            reply = await harness.call("Link", pb.LinkRequest(identifiers=[cookie("outbox-a"), cookie("outbox-b")]))
            assert reply.person_id == first and list(reply.merged_person_ids) == [second]

            workdir = tempfile.mkdtemp(prefix="rapport-redis-")
            restarted = start_redis(shutil.which("redis-server") or "redis-server", port, workdir)
            try:
                redis = aioredis.Redis.from_url(url, decode_responses=True)
                stream = f"{settings.redis_prefix}identity:events"
                events: list[tuple[str, dict[str, str]]] = []
                for _ in range(150):  # the relay republishes events older than lease + 5 s
                    events = await redis.xrange(stream)
                    if events:
                        break
                    await asyncio.sleep(0.1)
                await redis.aclose()
                assert len(events) == 1
                fields = events[0][1]
                assert fields["kind"] == "merge" and fields["survivor"] == first
                assert json.loads(fields["merged"]) == [second]
            finally:
                restarted.terminate()
                restarted.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)


async def test_a_merge_finishes_when_its_caller_gives_up_after_the_commit_point(
    cassandra_admin: CassandraClient, run_id: str
) -> None:
    """The caller's deadline or disconnect cancels the handler; a merge past `merged_into` must
    still move every identifier, redirect the Redis cache and publish its event."""
    settings = identity_settings(run_id)
    cassandra, redis = await open_stores(settings, SCHEMA_FILE)
    store = CassandraIdentityStore(cassandra)
    cache = RedisIdentityCache(redis, settings.cache_ttl_s, settings.last_seen_every_s)
    graph = IdentityGraph(store, cache, IdentityRules())
    committed = asyncio.Event()
    commit = store.mark_merged

    async def commit_then_pause(loser: str, survivor: str, at_ms: int) -> bool:
        applied = await commit(loser, survivor, at_ms)
        committed.set()
        await asyncio.sleep(0.2)  # the caller gives up here, between the commit and the moves
        return applied

    store.mark_merged = commit_then_pause  # type: ignore[method-assign]
    older = IdentifierKey(IdentifierType.COOKIE, f"giveup-{run_id}-old")
    newer = IdentifierKey(IdentifierType.COOKIE, f"giveup-{run_id}-new")
    try:
        survivor = (await graph.resolve(older)).person_id
        loser = (await graph.resolve(newer)).person_id
        token = deadlines.set_deadline(5.0)
        try:
            link = asyncio.create_task(graph.link([older, newer]))
        finally:
            deadlines.reset_deadline(token)
        await asyncio.wait_for(committed.wait(), 10)
        link.cancel()
        with pytest.raises(asyncio.CancelledError):
            await link
        await graph.drain()

        assert await store.identifier_owner(newer.key) == survivor
        assert [key for key, _ in await store.person_identifiers(loser)] == []
        assert (await cache.lookup(newer.key)) is not None
        assert (await cache.lookup(newer.key)).person_id == survivor  # type: ignore[union-attr]
        events: list[tuple[str, dict[str, str]]] = await redis.redis.xrange(cache.stream_key)  # type: ignore[assignment]
        assert any(fields.get("survivor") == survivor and loser in fields.get("merged", "") for _, fields in events)
        assert await store.outbox() == []
    finally:
        await redis.close()
        await cassandra.close()
