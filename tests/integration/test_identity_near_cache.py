"""The per-replica near cache never outlives a merge, an unlink or an erasure made elsewhere.

Two replicas share Redis and Cassandra; replica B has an identifier's answer in its near cache
(30 s lifetime); replica A then changes who owns it. B must answer the new owner at once, which
only the pub/sub invalidation can make happen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from services.common.cassandra import CassandraClient
from tests.integration.conftest import IdentityHarness, identity_settings, running_identity

pytestmark = pytest.mark.integration

EVICTED_WITHIN_S = 0.5


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


def customer(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_CUSTOMER_ID, value=value)


@pytest.fixture
async def replicas(
    cassandra_admin: CassandraClient, run_id: str
) -> AsyncIterator[tuple[IdentityHarness, IdentityHarness]]:
    settings = identity_settings(run_id, near_cache_ttl_ms=30_000)
    async with running_identity(settings) as first, running_identity(settings) as second:
        await asyncio.sleep(0.3)  # both near caches switch on once subscribed
        yield first, second


async def resolve(harness: IdentityHarness, identifier: common.Identifier) -> str:
    return str((await harness.call("Resolve", pb.ResolveRequest(identifier=identifier))).person_id)


async def eventually(harness: IdentityHarness, identifier: common.Identifier, wanted: Callable[[str], bool]) -> str:
    answer = ""
    for _ in range(int(EVICTED_WITHIN_S / 0.05)):
        answer = await resolve(harness, identifier)
        if wanted(answer):
            return answer
        await asyncio.sleep(0.05)
    return answer


async def test_a_merge_on_one_replica_evicts_the_other_replicas_answer(
    replicas: tuple[IdentityHarness, IdentityHarness], unique: Callable[[str], str]
) -> None:
    a, b = replicas
    phone_cookie, login = cookie(unique("near-phone")), customer(unique("near-cust"))
    anonymous = await resolve(b, phone_cookie)
    assert await resolve(b, phone_cookie) == anonymous  # now served from B's near cache
    known = await resolve(a, login)
    linked = await a.call("Link", pb.LinkRequest(identifiers=[phone_cookie, login]))
    assert linked.person_id == known and list(linked.merged_person_ids) == [anonymous]
    assert await eventually(b, phone_cookie, lambda person: person == known) == known


async def test_an_unlink_on_one_replica_evicts_the_other_replicas_answer(
    replicas: tuple[IdentityHarness, IdentityHarness], unique: Callable[[str], str]
) -> None:
    a, b = replicas
    shared, other = cookie(unique("near-shared")), cookie(unique("near-other"))
    person = (await a.call("Link", pb.LinkRequest(identifiers=[shared, other]))).person_id
    assert await resolve(b, shared) == person
    moved = await a.call("Unlink", pb.UnlinkRequest(identifier=shared))
    assert moved.new_person_id != person
    assert await eventually(b, shared, lambda answer: answer != person) == moved.new_person_id


async def test_an_erasure_on_one_replica_evicts_the_other_replicas_answer(
    replicas: tuple[IdentityHarness, IdentityHarness], unique: Callable[[str], str]
) -> None:
    a, b = replicas
    forgotten = cookie(unique("near-forget"))
    person = await resolve(b, forgotten)
    assert await resolve(b, forgotten) == person
    await a.call("Forget", pb.ForgetRequest(person_id=person))
    assert await eventually(b, forgotten, lambda answer: answer != person) != person
