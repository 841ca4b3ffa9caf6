"""The profile service on real Redis, real Cassandra and a real identity service: tracking,
idempotency, late events, rebuild from the log, bad input, cross-device merges, CRM, GDPR."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.profile.v1 import profile_service_pb2 as pb
from services.common.cassandra import CassandraClient
from services.common.clock import now_ms
from services.common.redis import RedisClient
from services.profile import reader as profile_reader
from services.profile.adapters.cassandra_log import unpack_events
from services.profile.reader import ProfileReader
from tests.integration.conftest import ProfileHarness, profile_settings, running_profile
from tests.support import ADMIN_KEY, REDIS_URL, STOREFRONT_KEY, bearer, error_details, private_redis, start_redis

pytestmark = pytest.mark.integration

E = event_pb2.EventType
MINUTE_MS = 60_000


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


def customer(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_CUSTOMER_ID, value=value)


def product(pid: str, price: float, path: tuple[str, ...] = ("Women", "Knitwear", "Cashmere sweaters")) -> Any:
    return event_pb2.ProductRef(
        product_id=pid,
        title=f"Product {pid}",
        category_path=list(path),
        brand="Maison Laine",
        price=event_pb2.Money(currency_code="EUR", amount=price),
    )


def event(kind: int, who: common.Identifier, at_ms: int, event_id: str | None = None, **fields: Any) -> Any:
    message = event_pb2.Event(
        event_id=event_id or uuid.uuid4().hex,
        type=kind,  # type: ignore[arg-type]
        identifier=who,
        **fields,
    )
    message.event_time.FromMilliseconds(at_ms)
    return message


def by_cookie(value: str) -> pb.PersonSelector:
    return pb.PersonSelector(identifier=cookie(value))


async def track(profile: ProfileHarness, *events: Any) -> Any:
    reply = await profile.call("TrackBatch", pb.TrackBatchRequest(events=list(events)))
    assert reply.rejected_count == 0, [r.status.message for r in reply.results if r.status.code]
    return reply


async def live_state(profile: ProfileHarness, person_id: str) -> dict[str, Any]:
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        data = await redis.hget(f"{profile.settings.redis_prefix}profile:state:{person_id}", "data")
    finally:
        await redis.aclose()
    assert data, "no live state in Redis"
    return dict(json.loads(data))


async def test_a_visit_shows_in_the_profile(profile: ProfileHarness, unique: Callable[[str], str]) -> None:
    phone = unique("visit")
    start = now_ms() - 10 * MINUTE_MS
    context = event_pb2.EventContext(
        device_type="mobile", referrer="https://www.google.com/", country="FR", city="Lyon", page_url="https://shop/"
    )
    reply = await track(
        profile,
        event(E.EVENT_TYPE_PAGE_VIEW, cookie(phone), start, context=context),
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(phone), start + 1000, product=product("P1", 180)),
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(phone), start + 2000, product=product("P2", 190)),
        event(E.EVENT_TYPE_SEARCH, cookie(phone), start + 3000, search_query="cashmere"),
        event(E.EVENT_TYPE_ADD_TO_CART, cookie(phone), start + 4000, product=product("P1", 180), quantity=2),
    )
    assert reply.accepted_count == 5 and len({result.person_id for result in reply.results}) == 1
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(phone), timeline_page_size=10))
    p = got.profile
    assert p.person_id == reply.results[0].person_id
    assert p.visits.visit_count == 1 and p.visits.first_visit
    session = p.current_session
    assert session.page_count == 4 and list(session.searches) == ["cashmere"]
    assert session.traffic_source == pb.TRAFFIC_SOURCE_ORGANIC_SEARCH
    assert [(c.key, c.count) for c in session.products] == [("P1", 1), ("P2", 1)]
    assert session.categories[0].label == "Cashmere sweaters"
    assert [(line.product.product_id, line.quantity) for line in p.cart.lines] == [("P1", 2)]
    assert p.cart.value.amount == 360 and not p.cart.abandoned
    assert p.category_affinities[0].key == "Women > Knitwear > Cashmere sweaters"
    assert p.geo.country == "FR" and p.device.device_type == "mobile"
    assert [e.type for e in got.timeline] == [
        E.EVENT_TYPE_ADD_TO_CART,
        E.EVENT_TYPE_SEARCH,
        E.EVENT_TYPE_PRODUCT_VIEW,
        E.EVENT_TYPE_PRODUCT_VIEW,
        E.EVENT_TYPE_PAGE_VIEW,
    ]
    assert [i.value for i in got.identifiers] == [phone]
    # Each applied event is on the profile event stream once, for decision and messaging.
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        stream: list[tuple[str, dict[str, str]]] = await redis.xrange(  # type: ignore[assignment]
            f"{profile.settings.redis_prefix}profile:events"
        )
    finally:
        await redis.aclose()
    published = [json.loads(fields["e"]) for _, fields in stream]
    mine = [entry for entry in published if entry["person"] == p.person_id]
    assert sorted(entry["type"] for entry in mine) == sorted(
        ["PAGE_VIEW", "PRODUCT_VIEW", "PRODUCT_VIEW", "SEARCH", "ADD_TO_CART"]
    )


async def test_an_event_sent_twice_is_applied_once(
    profile: ProfileHarness, unique: Callable[[str], str], cassandra_admin: CassandraClient
) -> None:
    visitor = unique("twice")
    once = event(E.EVENT_TYPE_ADD_TO_CART, cookie(visitor), now_ms() - 5000, product=product("P9", 50), quantity=1)
    first = await profile.call("Track", pb.TrackRequest(event=once))
    again = await profile.call("Track", pb.TrackRequest(event=once))
    in_batch = await track(profile, once, once)
    assert not first.duplicate and again.duplicate and all(r.duplicate for r in in_batch.results)
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(visitor)))
    assert got.profile.event_count == 1 and got.profile.cart.lines[0].quantity == 1
    chunks = cassandra_admin.session.execute(
        f"SELECT events FROM {profile.settings.cassandra_keyspace}.event_chunk WHERE person_id = %s AND day = %s",
        [first.person_id, once.event_time.ToMilliseconds() // 86_400_000],
    ).all()
    logged = [event.event_id for chunk in chunks for event in unpack_events(chunk["events"])]
    assert set(logged) == {once.event_id}  # the same row rewritten, or a copy readers drop


async def test_a_late_event_lands_at_its_time_and_the_state_is_refolded(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    visitor = unique("late")
    start = now_ms() - 3 * 3_600_000
    early = event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start, product=product("A", 100))
    later = event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start + 2 * 3_600_000, product=product("B", 100))
    late = event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start + 60 * MINUTE_MS, product=product("C", 100))
    person = (await track(profile, early, later)).results[0].person_id
    assert (await live_state(profile, person))["visits"] == 2
    await track(profile, late)  # a mobile batch arriving after the fact: three visits, 1 hour apart
    state = await live_state(profile, person)
    assert state["visits"] == 3 and state["session"]["prods"] == {"B": 1}
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(visitor), timeline_page_size=10))
    assert [e.event_id for e in got.timeline] == [later.event_id, late.event_id, early.event_id]


async def test_a_flushed_live_state_is_rebuilt_identically_from_cassandra(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    visitor = unique("rebuild")
    start = now_ms() - 5 * 86_400_000
    events = []
    for visit in range(3):  # three visits on different days, a purchase, a cart left behind
        at = start + visit * 86_400_000
        events += [
            event(E.EVENT_TYPE_CATEGORY_VIEW, cookie(visitor), at, product=product("", 0)),
            event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), at + 1000, product=product(f"P{visit}", 120 + visit)),
            event(E.EVENT_TYPE_REVIEW_READ, cookie(visitor), at + 2000, product=product(f"P{visit}", 120 + visit)),
            event(E.EVENT_TYPE_ADD_TO_CART, cookie(visitor), at + 3000, product=product(f"P{visit}", 120 + visit)),
        ]
    order = event_pb2.Order(
        order_id=unique("order"),
        lines=[event_pb2.OrderLine(product=product("P0", 120), quantity=1)],
        total=event_pb2.Money(currency_code="EUR", amount=120),
    )
    events.append(event(E.EVENT_TYPE_PURCHASE, cookie(visitor), start + 4000, order=order))
    person = ""
    for chunk in (events[:5], events[5:9], events[9:]):
        person = (await track(profile, *chunk)).results[0].person_id
    before = await live_state(profile, person)
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await redis.delete(f"{profile.settings.redis_prefix}profile:state:{person}")
    finally:
        await redis.aclose()
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(visitor)))
    assert got.profile.purchases.order_count == 1 and got.profile.visits.visit_count == 3
    assert await live_state(profile, person) == before


async def test_bad_events_are_reported_one_by_one_and_the_good_ones_land(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    visitor = unique("bad")
    at = now_ms() - 1000
    good = event(E.EVENT_TYPE_PAGE_VIEW, cookie(visitor), at)
    negative_price = event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), at, product=product("X", -5))
    no_id = event(E.EVENT_TYPE_PAGE_VIEW, cookie(visitor), at, event_id=" ")
    unknown_type = event(77, cookie(visitor), at)
    future = event(E.EVENT_TYPE_PAGE_VIEW, cookie(visitor), now_ms() + 86_400_000)
    no_identifier = event_pb2.Event(event_id="x", type=E.EVENT_TYPE_PAGE_VIEW)
    no_identifier.event_time.FromMilliseconds(at)
    huge = event(E.EVENT_TYPE_SEARCH, cookie(visitor), at, search_query="q" * 1_000_000)
    reply = await profile.call(
        "TrackBatch",
        pb.TrackBatchRequest(events=[good, negative_price, no_id, unknown_type, future, no_identifier, huge]),
    )
    assert reply.accepted_count == 1 and reply.rejected_count == 6
    assert reply.results[0].status.code == 0 and reply.results[0].person_id
    expected_fields = [
        "events[1].product.price.amount",
        "events[2].event_id",
        "events[3].type",
        "events[4].event_time",
        "events[5].identifier",
        "events[6]",
    ]
    for result, field in zip(reply.results[1:], expected_fields, strict=True):
        assert result.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert field in result.status.message, result.status.message
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await profile.call("TrackBatch", pb.TrackBatchRequest(events=[]))
    assert error_details(empty.value).field_violations[0][0] == "events"
    with pytest.raises(grpc.aio.AioRpcError) as too_many:
        await profile.call("TrackBatch", pb.TrackBatchRequest(events=[good] * 1001))
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as selector:
        await profile.call("GetProfile", pb.GetProfileRequest(person=pb.PersonSelector(person_id="nope")))
    assert error_details(selector.value).field_violations[0][0] == "person.person_id"
    with pytest.raises(grpc.aio.AioRpcError) as token:
        await profile.call(
            "GetProfile",
            pb.GetProfileRequest(person=by_cookie(visitor), timeline_page_size=5, timeline_page_token="%%%"),
        )
    assert error_details(token.value).field_violations[0][0] == "timeline_page_token"
    with pytest.raises(grpc.aio.AioRpcError) as scope:
        await profile.call("ForgetPerson", pb.ForgetPersonRequest(person=by_cookie(visitor)), key=STOREFRONT_KEY)
    assert scope.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_timeline_pages_through_every_event_newest_first(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    visitor = unique("pages")
    start = now_ms() - 3 * 86_400_000
    events = [event(E.EVENT_TYPE_PAGE_VIEW, cookie(visitor), start + i * 7_200_000) for i in range(25)]
    await track(profile, *events)
    seen: list[str] = []
    token = ""
    while True:
        page = await profile.call(
            "GetProfile",
            pb.GetProfileRequest(person=by_cookie(visitor), timeline_page_size=7, timeline_page_token=token),
        )
        seen += [e.event_id for e in page.timeline]
        token = page.next_timeline_page_token
        if not token:
            break
    assert seen == [e.event_id for e in reversed(events)]


async def test_browsing_on_a_phone_shows_up_on_the_laptop_after_login(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    phone, laptop, account = unique("phone"), unique("laptop"), unique("account")
    start = now_ms() - 20 * MINUTE_MS
    await track(
        profile,
        event(E.EVENT_TYPE_CATEGORY_VIEW, cookie(phone), start, product=product("", 0, ("Men", "Shoes"))),
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(phone), start + 1000, product=product("SHOE1", 95, ("Men", "Shoes"))),
        event(E.EVENT_TYPE_ADD_TO_CART, cookie(phone), start + 2000, product=product("SHOE1", 95, ("Men", "Shoes"))),
    )
    await profile.identity.call("Link", identity_pb.LinkRequest(identifiers=[cookie(phone), customer(account)]))
    await track(profile, event(E.EVENT_TYPE_PAGE_VIEW, cookie(laptop), start + 5 * MINUTE_MS))
    laptop_person = (
        await profile.identity.call("Link", identity_pb.LinkRequest(identifiers=[cookie(laptop), customer(account)]))
    ).person_id
    deadline = time.monotonic() + 1.0
    while True:
        got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(laptop)))
        carted = [line.product.product_id for line in got.profile.cart.lines]
        if (carted == ["SHOE1"] and got.profile.event_count == 4) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert got.profile.person_id == laptop_person
    assert carted == ["SHOE1"], "the phone's cart did not reach the laptop within one second"
    assert got.profile.event_count == 4, "the laptop's own page view was lost in the merge"
    assert any(a.key == "Men > Shoes" for a in got.profile.category_affinities)
    phone_view = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(phone)))
    assert phone_view.profile.person_id == laptop_person


async def test_crm_attributes_are_kept_and_survive_a_rebuild(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    account = unique("crm")
    person = (
        await profile.call(
            "SetAttributes",
            pb.SetAttributesRequest(
                person=pb.PersonSelector(identifier=customer(account)),
                attributes={"loyalty_card": "LC-1234", "vip_tier": "gold"},
            ),
        )
    ).person_id
    imported = await profile.call(
        "ImportCrm",
        pb.ImportCrmRequest(
            records=[
                pb.CrmRecord(identifier=customer(account), attributes={"birthday": "1990-04-01"}),
                pb.CrmRecord(identifier=customer(""), attributes={"x": "y"}),
                pb.CrmRecord(identifier=customer(unique("crm2")), attributes={"Bad Name": "y"}),
            ]
        ),
    )
    assert imported.imported_count == 1 and [s.code for s in imported.statuses] == [0, 3, 3]
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=pb.PersonSelector(person_id=person)))
    assert dict(got.profile.attributes) == {"loyalty_card": "LC-1234", "vip_tier": "gold", "birthday": "1990-04-01"}
    assert got.profile.vip_tier == "GOLD"
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        await redis.delete(f"{profile.settings.redis_prefix}profile:state:{person}")
    finally:
        await redis.aclose()
    again = await profile.call("GetProfile", pb.GetProfileRequest(person=pb.PersonSelector(person_id=person)))
    assert dict(again.profile.attributes) == dict(got.profile.attributes)


async def test_describe_speaks_english_and_french(profile: ProfileHarness, unique: Callable[[str], str]) -> None:
    visitor = unique("describe")
    start = now_ms() - 3 * 86_400_000
    await track(
        profile,
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start, product=product("S1", 200)),
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), now_ms() - 60_000, product=product("S1", 200)),
        event(E.EVENT_TYPE_REVIEW_READ, cookie(visitor), now_ms() - 50_000, product=product("S1", 200)),
        event(E.EVENT_TYPE_REVIEW_READ, cookie(visitor), now_ms() - 40_000, product=product("S1", 200)),
    )
    english = await profile.call("Describe", pb.DescribeRequest(person=by_cookie(visitor), language="en"))
    french = await profile.call("Describe", pb.DescribeRequest(person=by_cookie(visitor), language="fr"))
    assert english.sentences[0] == "2nd visit" and french.sentences[0] == "2e visite"
    assert "review_sensitive" in [trait.name for trait in english.traits]
    assert english.summary == "; ".join(english.sentences)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await profile.call("Describe", pb.DescribeRequest(person=by_cookie(visitor), language="de"))
    assert error_details(unknown.value).field_violations[0][0] == "language"


async def test_export_then_forget_leaves_nothing_behind(
    profile: ProfileHarness, unique: Callable[[str], str], cassandra_admin: CassandraClient
) -> None:
    phone, account = unique("gdpr-phone"), unique("gdpr-account")
    start = now_ms() - 2 * 86_400_000
    events = [
        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(phone), start + i * 3_600_000, product=product(f"G{i}", 30))
        for i in range(6)
    ]
    await track(profile, *events)
    person = (
        await profile.identity.call("Link", identity_pb.LinkRequest(identifiers=[cookie(phone), customer(account)]))
    ).person_id
    await profile.call(
        "SetAttributes",
        pb.SetAttributesRequest(person=pb.PersonSelector(person_id=person), attributes={"loyalty_card": "LC-9"}),
    )
    export = profile.stub.ExportPerson(pb.ExportPersonRequest(person=by_cookie(phone)), metadata=bearer(ADMIN_KEY))
    parts = [part async for part in export]
    assert parts[0].profile.person_id == person
    assert sorted(i.value for i in parts[0].identifiers) == sorted([phone, account])
    assert [e.event_id for part in parts for e in part.events] == [e.event_id for e in events]

    erased = await profile.call("ForgetPerson", pb.ForgetPersonRequest(person=by_cookie(phone)))
    assert person in erased.erased_person_ids and erased.erased_event_count == 6
    keyspace = profile.settings.cassandra_keyspace
    session = cassandra_admin.session
    for person_id in erased.erased_person_ids:
        assert not session.execute(f"SELECT * FROM {keyspace}.person_day WHERE person_id = %s", [person_id]).all()
        assert not session.execute(f"SELECT * FROM {keyspace}.person_attribute WHERE person_id = %s", [person_id]).all()
        for day in range(start // 86_400_000 - 1, now_ms() // 86_400_000 + 1):
            assert not session.execute(
                f"SELECT * FROM {keyspace}.event_chunk WHERE person_id = %s AND day = %s", [person_id, day]
            ).all()
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        prefix = profile.settings.redis_prefix
        for person_id in erased.erased_person_ids:
            assert not await redis.exists(f"{prefix}profile:state:{person_id}")
        stream: list[tuple[str, dict[str, str]]] = await redis.xrange(f"{prefix}profile:events")  # type: ignore[assignment]
        assert not [entry for _, entry in stream if json.loads(entry["e"])["person"] in erased.erased_person_ids]
    finally:
        await redis.aclose()
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await profile.identity.call("GetPerson", identity_pb.GetPersonRequest(person_id=person))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_restarted_empty_redis_gives_back_the_same_live_state(
    profile: ProfileHarness, unique: Callable[[str], str], run_id: str
) -> None:
    """Redis restarted without persistence: every live state is gone, the next read refolds it."""
    with private_redis() as (url, process, port):
        settings = profile_settings(
            run_id, profile.identity.address, redis_url=url, cassandra_keyspace=profile.settings.cassandra_keyspace
        )
        async with running_profile(settings, profile.identity) as own:
            visitor = unique("restart")
            start = now_ms() - 2 * 86_400_000
            person = (
                (
                    await track(
                        own,
                        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start, product=product("R1", 80)),
                        event(E.EVENT_TYPE_ADD_TO_CART, cookie(visitor), start + 1000, product=product("R1", 80)),
                        event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), now_ms() - 60_000, product=product("R2", 90)),
                    )
                )
                .results[0]
                .person_id
            )
            redis = aioredis.Redis.from_url(url, decode_responses=True)
            key = f"{settings.redis_prefix}profile:state:{person}"
            before = json.loads(await redis.hget(key, "data") or "{}")
            await redis.aclose()
            process.terminate()
            process.wait(10)
            workdir = tempfile.mkdtemp(prefix="rapport-redis-")
            restarted = start_redis(shutil.which("redis-server") or "redis-server", port, workdir)
            redis = aioredis.Redis.from_url(url, decode_responses=True)
            try:
                assert not await redis.exists(key)
                got = await own.call("GetProfile", pb.GetProfileRequest(person=by_cookie(visitor)))
                assert got.profile.visits.visit_count == 2 and got.profile.cart.lines[0].product.product_id == "R1"
                assert json.loads(await redis.hget(key, "data") or "{}") == before
            finally:
                await redis.aclose()
                restarted.terminate()
                restarted.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)


async def test_reading_an_unknown_identifier_is_not_found_and_creates_nobody(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    stranger = unique("stranger")
    for method, request in (
        ("GetProfile", pb.GetProfileRequest(person=by_cookie(stranger))),
        ("Describe", pb.DescribeRequest(person=by_cookie(stranger))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await profile.call(method, request)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND, method
    with pytest.raises(grpc.aio.AioRpcError) as still_unknown:
        await profile.identity.call("Lookup", identity_pb.LookupRequest(identifier=cookie(stranger)))
    assert still_unknown.value.code() == grpc.StatusCode.NOT_FOUND
    # Once the visitor has been seen, the same read finds them.
    await track(profile, event(event_pb2.EVENT_TYPE_PAGE_VIEW, cookie(stranger), now_ms()))
    got = await profile.call("GetProfile", pb.GetProfileRequest(person=by_cookie(stranger)))
    assert got.profile.event_count == 1


async def test_a_merge_publishes_the_survivors_events_a_batch_logged_but_had_not_applied(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    """A merge's rebuild can fold in events of the survivor that a TrackBatch has logged and not
    yet applied; that batch then finds them held and publishes nothing. The merge must publish
    them (else the triggers never see them), and not the merged-away person's, which were
    published under that person already."""
    from services.common.identity_client import IdentityClient
    from services.common.person_changes import PersonChangeStream
    from services.common.server import open_stores
    from services.profile.adapters.cassandra_log import SCHEMA_FILE, CassandraProfileStore, LoggedEvent
    from services.profile.adapters.redis_state import RedisProfileState
    from services.profile.domain.folding import FoldRules
    from services.profile.profiles import ProfileRules, Profiles

    start = now_ms() - 60_000
    survivor = (
        (await track(profile, event(event_pb2.EVENT_TYPE_PAGE_VIEW, customer(unique("s")), start))).results[0].person_id
    )
    loser_view = event(event_pb2.EVENT_TYPE_PAGE_VIEW, cookie(unique("l")), start + 1000)
    loser = (await track(profile, loser_view)).results[0].person_id
    in_flight = event(event_pb2.EVENT_TYPE_SIGN_UP, customer(unique("s2")), start + 2000)
    settings = profile.settings
    cassandra, redis_client = await open_stores(settings, SCHEMA_FILE)
    identity = IdentityClient(settings.identity_address, settings.identity_api_key)
    try:
        log = CassandraProfileStore(cassandra, settings.write_concurrency, settings.write_group_rows)
        profiles = Profiles(
            log,
            RedisProfileState(redis_client, settings.state_ttl_days * 86_400),
            identity,
            ProfileRules(FoldRules(), cart_abandoned_after_ms=3_600_000),
            PersonChangeStream(redis_client),
        )
        # The batch's first step (the durable log) is done; its second (the live state) is not.
        await log.append([LoggedEvent(survivor, start + 2000, in_flight.event_id, in_flight.SerializeToString())])
        await profiles.absorb(survivor, [loser])
    finally:
        await identity.close()
        await redis_client.close()
        await cassandra.close()
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        stream: list[tuple[str, dict[str, str]]] = await redis.xrange(f"{settings.redis_prefix}profile:events")  # type: ignore[assignment]
    finally:
        await redis.aclose()
    entries = [json.loads(fields["e"]) for _, fields in stream]
    assert [(e["person"], e["type"]) for e in entries if e["id"] == in_flight.event_id] == [(survivor, "SIGN_UP")]
    assert [e["person"] for e in entries if e["id"] == loser_view.event_id] == [loser]


async def test_a_reader_decodes_a_state_again_only_when_it_changed(
    profile: ProfileHarness, unique: Callable[[str], str]
) -> None:
    """Decision and messaging read profiles through ProfileReader, which hands an unchanged state
    out again as the same decoded object (decision keys its visitor facts on it)."""
    visitor = unique("reader")
    start = now_ms() - 10 * MINUTE_MS
    reply = await track(profile, event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start, product=product("P1", 180)))
    person_id = reply.results[0].person_id
    redis = RedisClient(REDIS_URL, profile.settings.redis_prefix)
    reader = ProfileReader(redis, f"127.0.0.1:{profile.running.port}", ADMIN_KEY)
    try:
        first = await reader.read(person_id)
        assert first is not None and first.state.session is not None
        assert first.state.session.product_sequence == ["P1"]
        assert await reader.read(person_id) is first

        await track(profile, event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), start + 1000, product=product("P2", 90)))
        changed = await reader.read(person_id)
        assert changed is not first and changed is not None and changed.state.session is not None
        assert changed.state.session.product_sequence == ["P1", "P2"]

        reader.forget([person_id])  # an erasure or merge announced: nothing of it is kept
        assert await reader.read(person_id) is not changed

        await profile.call("ForgetPerson", pb.ForgetPersonRequest(person=by_cookie(visitor)))
        assert await reader.read(person_id) is None
    finally:
        await reader.close()
        await redis.close()


async def test_a_reader_keeps_no_profile_long_after_reading_it_even_when_idle(
    profile: ProfileHarness, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profile_reader, "DECODED_REUSE_S", 0.1)
    visitor = unique("idle-reader")
    reply = await track(
        profile, event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(visitor), now_ms(), product=product("P1", 180))
    )
    redis = RedisClient(REDIS_URL, profile.settings.redis_prefix)
    reader = ProfileReader(redis, f"127.0.0.1:{profile.running.port}", ADMIN_KEY)
    try:
        assert await reader.read(reply.results[0].person_id) is not None
        assert reader.profiles_kept == 1

        await asyncio.sleep(0.35)  # no read meanwhile

        assert reader.profiles_kept == 0
    finally:
        await reader.close()
        await redis.close()


async def test_profiles_decoded_together_are_not_all_decoded_again_together(
    profile: ProfileHarness, unique: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each profile's reuse ends at its own point of the last 40% of DECODED_REUSE_S: a crowd of
    profiles first read at once (a replica's start) does not come back as one spike of decoding."""
    monkeypatch.setattr(profile_reader, "DECODED_REUSE_S", 1.0)
    visitors = [unique(f"crowd-{index}") for index in range(40)]
    reply = await track(
        profile, *(event(E.EVENT_TYPE_PRODUCT_VIEW, cookie(v), now_ms(), product=product("P1", 180)) for v in visitors)
    )
    people = [result.person_id for result in reply.results]
    redis = RedisClient(REDIS_URL, profile.settings.redis_prefix)
    reader = ProfileReader(redis, f"127.0.0.1:{profile.running.port}", ADMIN_KEY)
    try:
        first = [await reader.read(person) for person in people]
        await asyncio.sleep(0.45)
        early = [await reader.read(person) for person in people]
        await asyncio.sleep(0.35)  # 0.8 s: half of the reuse times (0.6 to 1.0 s) are over
        middle = [await reader.read(person) for person in people]
    finally:
        await reader.close()
        await redis.close()

    assert all(again is before for again, before in zip(early, first, strict=True))  # none ends before 0.6 s
    decoded_again = sum(again is not before for again, before in zip(middle, first, strict=True))
    assert 5 <= decoded_again <= 35, decoded_again
