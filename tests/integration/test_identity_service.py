"""IdentityService over real gRPC, real Redis and a real Cassandra node."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable

import grpc
import pytest
import redis.asyncio as aioredis

from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from services.common.cassandra import CassandraClient
from tests.integration.conftest import IdentityHarness
from tests.support import ADMIN_KEY, REDIS_URL, STOREFRONT_KEY, bearer, error_details

pytestmark = pytest.mark.integration

COOKIE = common.IDENTIFIER_TYPE_COOKIE
DEVICE = common.IDENTIFIER_TYPE_DEVICE
CUSTOMER = common.IDENTIFIER_TYPE_CUSTOMER_ID
EMAIL = common.IDENTIFIER_TYPE_EMAIL_SHA256
APP = common.IDENTIFIER_TYPE_APP_INSTALL


def ident(kind: int, value: str) -> common.Identifier:
    return common.Identifier(type=kind, value=value)  # type: ignore[arg-type]


async def resolve(identity: IdentityHarness, kind: int, value: str) -> pb.ResolveResponse:
    return await identity.call("Resolve", pb.ResolveRequest(identifier=ident(kind, value)))


async def link(identity: IdentityHarness, *identifiers: common.Identifier) -> pb.LinkResponse:
    return await identity.call("Link", pb.LinkRequest(identifiers=list(identifiers)))


async def test_first_sight_creates_a_person_and_resolve_is_idempotent(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    cookie = unique("cookie")
    first = await resolve(identity, COOKIE, cookie)
    again = await resolve(identity, COOKIE, cookie)
    assert first.created and not again.created
    assert first.person_id == again.person_id and len(first.person_id) == 32


async def test_concurrent_first_sights_agree_on_one_person(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    cookie = unique("cookie")
    replies = await asyncio.gather(*(resolve(identity, COOKIE, cookie) for _ in range(20)))
    assert len({reply.person_id for reply in replies}) == 1
    assert sum(reply.created for reply in replies) == 1


async def test_lookup_finds_the_person_and_never_creates_one(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    unknown, phone, customer = unique("never"), unique("lphone"), unique("lcust")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("Lookup", pb.LookupRequest(identifier=ident(COOKIE, unknown)))
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.NOT_FOUND
    assert (details.reason, details.domain) == ("IDENTIFIER_NOT_FOUND", "rapport.identity")
    assert unknown not in raised.value.details()
    assert (await resolve(identity, COOKIE, unknown)).created  # the look-up made no one

    phone_person = (await resolve(identity, COOKIE, phone)).person_id
    found = await identity.call("Lookup", pb.LookupRequest(identifier=ident(COOKIE, phone)), key=STOREFRONT_KEY)
    assert found.person_id == phone_person and found.identifier.value == phone
    survivor = (await link(identity, ident(COOKIE, phone), ident(CUSTOMER, customer))).person_id
    assert survivor != phone_person  # the customer id's holder survives
    after_merge = await identity.call("Lookup", pb.LookupRequest(identifier=ident(COOKIE, phone)))
    assert after_merge.person_id == survivor

    raw_email = f"{unique('ljane')}@Example.org"
    with pytest.raises(grpc.aio.AioRpcError):
        await identity.call("Lookup", pb.LookupRequest(identifier=ident(EMAIL, raw_email)))
    by_email = await resolve(identity, EMAIL, raw_email)
    hashed = await identity.call("Lookup", pb.LookupRequest(identifier=ident(EMAIL, f"  {raw_email.upper()} ")))
    assert hashed.person_id == by_email.person_id and hashed.identifier.value == by_email.identifier.value

    await identity.call("Forget", pb.ForgetRequest(person_id=survivor))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("Lookup", pb.LookupRequest(identifier=ident(CUSTOMER, customer)))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_batch_resolve_keeps_request_order(identity: IdentityHarness, unique: Callable[[str], str]) -> None:
    values = [unique("b") for _ in range(30)]
    reply = await identity.call("BatchResolve", pb.BatchResolveRequest(identifiers=[ident(COOKIE, v) for v in values]))
    assert [r.identifier.value for r in reply.resolutions] == values
    assert reply.resolutions[3].person_id == (await resolve(identity, COOKIE, values[3])).person_id


async def test_login_links_the_phone_and_the_laptop(identity: IdentityHarness, unique: Callable[[str], str]) -> None:
    phone, laptop, customer = unique("phone"), unique("laptop"), unique("cust")
    phone_person = (await resolve(identity, COOKIE, phone)).person_id
    laptop_person = (await resolve(identity, COOKIE, laptop)).person_id
    login = await link(identity, ident(COOKIE, laptop), ident(CUSTOMER, customer))
    customer_person = login.person_id  # the holder of the CUSTOMER_ID survives, even if younger
    assert list(login.merged_person_ids) == [laptop_person] and customer_person != laptop_person
    reply = await link(identity, ident(COOKIE, phone), ident(CUSTOMER, customer))
    assert list(reply.merged_person_ids) == [phone_person]
    assert reply.person_id == customer_person
    for kind, value in ((COOKIE, phone), (COOKIE, laptop), (CUSTOMER, customer)):
        assert (await resolve(identity, kind, value)).person_id == customer_person
    person = (await identity.call("GetPerson", pb.GetPersonRequest(person_id=phone_person))).person
    assert person.person_id == customer_person
    assert {i.identifier.value for i in person.identifiers} == {phone, laptop, customer}
    assert [(m.kind, m.from_person_id, m.to_person_id) for m in person.merges] == [
        (pb.MERGE_KIND_LINK, laptop_person, customer_person),
        (pb.MERGE_KIND_LINK, phone_person, customer_person),
    ]


async def test_without_customer_the_oldest_person_survives(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    older, newer = unique("old"), unique("new")
    older_person = (await resolve(identity, COOKIE, older)).person_id
    await asyncio.sleep(0.01)
    await resolve(identity, APP, newer)
    reply = await link(identity, ident(APP, newer), ident(COOKIE, older))
    assert reply.person_id == older_person


async def test_two_customer_ids_never_merge(identity: IdentityHarness, unique: Callable[[str], str]) -> None:
    alice_cookie, alice, bob_cookie, bob = unique("ac"), unique("alice"), unique("bc"), unique("bob")
    alice_person = (await link(identity, ident(COOKIE, alice_cookie), ident(CUSTOMER, alice))).person_id
    bob_person = (await link(identity, ident(COOKIE, bob_cookie), ident(CUSTOMER, bob))).person_id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await link(identity, ident(COOKIE, alice_cookie), ident(COOKIE, bob_cookie))
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION
    assert (details.reason, details.domain) == ("CONFLICTING_CUSTOMER_IDS", "rapport.identity")
    # Merging nothing: both persons are intact.
    assert (await resolve(identity, COOKIE, alice_cookie)).person_id == alice_person
    assert (await resolve(identity, COOKIE, bob_cookie)).person_id == bob_person
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await link(identity, ident(CUSTOMER, alice), ident(CUSTOMER, bob))
    assert error_details(raised.value).reason == "CONFLICTING_CUSTOMER_IDS"


async def test_a_family_tablet_stops_linking_after_three_customers(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    tablet = unique("tablet")
    customers = [unique(f"member{i}") for i in range(5)]
    first = await link(identity, ident(DEVICE, tablet), ident(CUSTOMER, customers[0]))
    assert not first.skipped_identifiers
    for customer in customers[1:3]:  # 2nd and 3rd customer: the tablet belongs to the 1st
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await link(identity, ident(DEVICE, tablet), ident(CUSTOMER, customer))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fourth = await link(identity, ident(DEVICE, tablet), ident(CUSTOMER, customers[3]), ident(COOKIE, unique("c4")))
    assert [s.value for s in fourth.skipped_identifiers] == [tablet]
    assert (await resolve(identity, DEVICE, tablet)).person_id == first.person_id
    assert fourth.person_id != first.person_id


async def test_raw_email_is_hashed_before_storage(
    identity: IdentityHarness, cassandra_admin: CassandraClient, unique: Callable[[str], str]
) -> None:
    local_part = unique("jane")
    raw = f"  {local_part.upper()}@Example.org "
    reply = await resolve(identity, EMAIL, raw)
    digest = hashlib.sha256(f"{local_part}@example.org".encode()).hexdigest()
    assert reply.identifier.value == digest
    keyspace = identity.settings.cassandra_keyspace
    rows = cassandra_admin.session.execute(f"SELECT identifier FROM {keyspace}.identifier_person")
    stored = " ".join(row["identifier"] for row in rows)
    assert digest in stored and local_part not in stored
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = [key async for key in redis.scan_iter(match=f"{identity.settings.redis_prefix}*")]
    await redis.aclose()
    assert not any(local_part in key for key in keys)


async def test_unlink_moves_an_identifier_to_a_new_person(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    shared, mine = unique("shared"), unique("mine")
    person = (await link(identity, ident(COOKIE, shared), ident(CUSTOMER, mine))).person_id
    reply = await identity.call("Unlink", pb.UnlinkRequest(identifier=ident(COOKIE, shared)))
    assert reply.previous_person_id == person and reply.new_person_id != person
    assert (await resolve(identity, COOKIE, shared)).person_id == reply.new_person_id
    assert (await resolve(identity, CUSTOMER, mine)).person_id == person
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("Unlink", pb.UnlinkRequest(identifier=ident(COOKIE, shared)))
    assert error_details(raised.value).reason == "ONLY_IDENTIFIER"


async def test_forget_leaves_nothing_in_cassandra_or_redis(
    identity: IdentityHarness, cassandra_admin: CassandraClient, unique: Callable[[str], str]
) -> None:
    phone, laptop, customer, tablet = unique("fphone"), unique("flaptop"), unique("fcust"), unique("ftab")
    phone_person = (await resolve(identity, COOKIE, phone)).person_id
    await link(identity, ident(COOKIE, laptop), ident(CUSTOMER, customer), ident(DEVICE, tablet))
    survivor = (await link(identity, ident(COOKIE, phone), ident(CUSTOMER, customer))).person_id
    reply = await identity.call(
        "Forget", pb.ForgetRequest(person_id=phone_person)
    )  # a merged-away id: the whole person
    assert set(reply.erased_person_ids) >= {survivor, phone_person}
    assert reply.erased_identifier_count == 4

    needles = {phone, laptop, customer, tablet, survivor, *reply.erased_person_ids}
    keyspace = identity.settings.cassandra_keyspace
    for table in (
        "identifier_person",
        "person",
        "person_identifier",
        "merged_from",
        "merge_log",
        "person_lock",
        "device_customer",
        "customer_device",
        "event_outbox",
    ):
        for row in cassandra_admin.session.execute(f"SELECT * FROM {keyspace}.{table}"):
            text = repr(row)
            assert not any(needle in text for needle in needles), f"{table} still holds {row}"
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    prefix = identity.settings.redis_prefix
    keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
    assert not any(needle in key for key in keys for needle in needles)
    values = [await redis.get(key) for key in keys if await redis.type(key) == "string"]
    assert not any(value and needle in value for value in values for needle in needles)
    events = await redis.xrange(f"{prefix}identity:events")
    assert not any(needle in repr(fields) for _, fields in events for needle in needles)
    await redis.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("GetPerson", pb.GetPersonRequest(person_id=survivor))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # The identifiers are free again: a new sight makes a new person.
    assert (await resolve(identity, COOKIE, phone)).created


async def test_merges_are_streamed_in_order(identity: IdentityHarness, unique: Callable[[str], str]) -> None:
    stream = identity.stub.WatchMerges(pb.WatchMergesRequest(), metadata=bearer(ADMIN_KEY))
    reader = stream.__aiter__()
    first_event = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0.3)  # let the watcher subscribe before the merge
    a, b, c = unique("wa"), unique("wb"), unique("wc")
    person_a = (await resolve(identity, COOKIE, a)).person_id
    person_b = (await resolve(identity, COOKIE, b)).person_id
    merged = await link(identity, ident(COOKIE, a), ident(COOKIE, b))
    event = await asyncio.wait_for(first_event, 10)
    assert event.persons_merged.survivor_person_id == merged.person_id == person_a
    assert list(event.persons_merged.merged_person_ids) == [person_b]
    await identity.call("Link", pb.LinkRequest(identifiers=[ident(COOKIE, a), ident(COOKIE, c)]))
    second = await asyncio.wait_for(reader.__anext__(), 10)
    assert second.event_id > event.event_id
    stream.cancel()


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        ("Resolve", pb.ResolveRequest(identifier=common.Identifier(type=COOKIE, value="")), "identifier.value"),
        ("Resolve", pb.ResolveRequest(identifier=common.Identifier(type=0, value="x")), "identifier.type"),  # type: ignore[arg-type]
        ("Resolve", pb.ResolveRequest(identifier=common.Identifier(type=42, value="x")), "identifier.type"),  # type: ignore[arg-type]
        (
            "Resolve",
            pb.ResolveRequest(identifier=common.Identifier(type=COOKIE, value="x" * 1_000_000)),
            "identifier.value",
        ),
        (
            "Link",
            pb.LinkRequest(identifiers=[common.Identifier(type=COOKIE, value=f"c{i}") for i in range(10_000)]),
            "identifiers",
        ),
        ("Link", pb.LinkRequest(identifiers=[common.Identifier(type=COOKIE, value="only-one")]), "identifiers"),
        (
            "Link",
            pb.LinkRequest(
                identifiers=[common.Identifier(type=COOKIE, value="ok"), common.Identifier(type=COOKIE, value=" ")]
            ),
            "identifiers[1].value",
        ),
        ("Lookup", pb.LookupRequest(identifier=common.Identifier(type=COOKIE, value="")), "identifier.value"),
        ("Lookup", pb.LookupRequest(), "identifier.type"),
        ("BatchResolve", pb.BatchResolveRequest(), "identifiers"),
        ("GetPerson", pb.GetPersonRequest(person_id="../../etc/passwd"), "person_id"),
        ("Forget", pb.ForgetRequest(person_id=""), "person_id"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    identity: IdentityHarness, method: str, request_message: object, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call(method, request_message)
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [violation[0] for violation in details.field_violations]
    assert (await resolve(identity, COOKIE, "still-up")).person_id  # the service stays up


async def test_auth_missing_wrong_and_out_of_scope(identity: IdentityHarness) -> None:
    request = pb.ResolveRequest(identifier=ident(COOKIE, "auth-check"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.stub.Resolve(request, timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("Resolve", request, key="not-a-real-key-at-all")
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    person = (await identity.call("Resolve", request, key=STOREFRONT_KEY)).person_id
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call("Forget", pb.ForgetRequest(person_id=person), key=STOREFRONT_KEY)
    details = error_details(raised.value)
    assert details.code == grpc.StatusCode.PERMISSION_DENIED and details.reason == "MISSING_SCOPE"
    assert (await identity.call("Resolve", request)).person_id == person  # not forgotten


async def test_a_tiny_deadline_is_deadline_exceeded_not_a_crash(
    identity: IdentityHarness, unique: Callable[[str], str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await identity.call(
            "Link",
            pb.LinkRequest(identifiers=[ident(COOKIE, unique("d1")), ident(COOKIE, unique("d2"))]),
            timeout=0.001,
        )
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await resolve(identity, COOKIE, unique("after"))).created


async def test_metrics_count_rpcs_by_method_and_code(identity: IdentityHarness) -> None:
    import urllib.request

    await resolve(identity, COOKIE, "metrics-probe")
    port = identity.running.metrics_port
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    assert (
        'rapport_rpc_total{code="OK",method="/rapport.identity.v1.IdentityService/Resolve",service="identity"}' in body
    )
    assert "rapport_rpc_duration_seconds_bucket" in body
    # A first sight claims the identifier with an LWT, and caches it in Redis.
    assert 'rapport_cassandra_query_duration_seconds_count{lwt="yes",statement="INSERT"}' in body
    assert "rapport_redis_command_duration_seconds_count{" in body
