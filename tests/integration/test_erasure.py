"""Erasure everywhere: profile's ForgetPerson erases profile and identity, and announces it on
the person-changes stream; messaging (contact, consent, deliveries, queued work, cap counters,
retargeting members) and decision (latest decisions) erase theirs when they read it, also after
being down during the call. A merge moves the merged person's latest decisions to the survivor.

Identity is the session's; profile, decision and messaging are this module's own, on their own
Redis prefix and keyspaces, so that they can be stopped and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from services.common.cassandra import CassandraClient
from tests.integration.conftest import (
    DecisionHarness,
    IdentityHarness,
    MessagingHarness,
    ProfileHarness,
    decision_settings,
    messaging_settings,
    profile_settings,
    running_decision,
    running_messaging,
    running_profile,
)
from tests.support import REDIS_URL, SmtpReceiver, wait_for

pytestmark = pytest.mark.integration
E = event_pb2.EventType
HOUR_MS = 3_600_000


@dataclass
class Stack:
    """Profile, decision and messaging of this module; decision and messaging can be stopped."""

    profile: ProfileHarness
    decision_settings: Any
    messaging_settings: Any
    redis: aioredis.Redis
    cassandra: CassandraClient
    decision: DecisionHarness | None = None
    messaging: MessagingHarness | None = None
    _running: dict[str, contextlib.AsyncExitStack] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        return str(self.profile.settings.redis_prefix)

    async def start(self, name: str) -> None:
        exits = contextlib.AsyncExitStack()
        if name == "decision":
            self.decision = await exits.enter_async_context(running_decision(self.decision_settings))
            # Restarted on the same port: messaging keeps the address it was given.
            self.decision_settings = dataclasses.replace(self.decision_settings, port=self.decision.running.port)
        else:
            self.messaging = await exits.enter_async_context(running_messaging(self.messaging_settings))
        self._running[name] = exits

    async def stop(self, name: str) -> None:
        await self._running.pop(name).aclose()
        if name == "decision":
            self.decision = None
        else:
            self.messaging = None

    async def stop_all(self) -> None:
        for name in list(self._running):
            await self.stop(name)

    def cql(self, statement: str, *values: Any) -> list[Any]:
        keyspace = self.messaging_settings.cassandra_keyspace
        return list(self.cassandra.session.execute(statement.format(keyspace=keyspace), list(values)).all())


@pytest.fixture(scope="module")
async def stack(
    identity: IdentityHarness, cassandra_admin: CassandraClient, smtp: SmtpReceiver, run_id: str
) -> AsyncIterator[Stack]:
    prefix = f"test-erasure:{run_id}:"
    profile_config = profile_settings(
        run_id, identity.address, cassandra_keyspace=f"it_erasure_profile_{run_id}", redis_prefix=prefix
    )
    cassandra_admin.created_keyspaces.append(profile_config.cassandra_keyspace)  # type: ignore[attr-defined]
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    async with running_profile(profile_config, identity) as profile:
        profile_address = f"127.0.0.1:{profile.running.port}"
        decision_config = decision_settings(run_id, identity.address, profile_address, redis_prefix=prefix)
        stack = Stack(profile, decision_config, None, redis, cassandra_admin)
        await stack.start("decision")
        assert stack.decision is not None
        stack.messaging_settings = messaging_settings(
            run_id,
            identity.address,
            profile_address,
            f"127.0.0.1:{stack.decision.running.port}",
            smtp.port,
            cassandra_keyspace=f"it_erasure_messaging_{run_id}",
            redis_prefix=prefix,
        )
        cassandra_admin.created_keyspaces.append(stack.messaging_settings.cassandra_keyspace)  # type: ignore[attr-defined]
        await stack.start("messaging")
        assert stack.messaging is not None
        for kind, delay_s, channels in (
            (pb.TRIGGER_KIND_WELCOME, 0, [pb.CHANNEL_EMAIL]),
            (pb.TRIGGER_KIND_WIN_BACK, 30 * 86_400, [pb.CHANNEL_RETARGETING]),  # visits schedule one
            (pb.TRIGGER_KIND_NEW_ARRIVALS, 0, [pb.CHANNEL_EMAIL]),
        ):
            rule = pb.Rule(kind=kind, enabled=True, delay_seconds=delay_s, channels=channels)
            await stack.messaging.call("UpdateRule", pb.UpdateRuleRequest(rule=rule))
        await stack.decision.call(
            "ImportCatalog",
            decision_pb.ImportCatalogRequest(
                products=[
                    decision_pb.CatalogProduct(
                        product_id=f"ERASE-SKU{i}",
                        title=f"Wool scarf {i}",
                        category_path=["Women", "Scarves"],
                        price=event_pb2.Money(currency_code="EUR", amount=30.0 + i),
                        stock=10,
                    )
                    for i in range(4)
                ]
            ),
        )
        try:
            yield stack
        finally:
            await stack.stop_all()
            await redis.aclose()


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


def customer(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_CUSTOMER_ID, value=value)


def product_view(identifier: common.Identifier, product_id: str) -> event_pb2.Event:
    at = Timestamp()
    at.FromMilliseconds(int(time.time() * 1000))
    return event_pb2.Event(
        event_id=uuid.uuid4().hex,
        type=E.EVENT_TYPE_PRODUCT_VIEW,
        event_time=at,
        identifier=identifier,
        product=event_pb2.ProductRef(
            product_id=product_id,
            title="Wool scarf",
            category_path=["Women", "Scarves"],
            price=event_pb2.Money(currency_code="EUR", amount=30.0),
        ),
    )


def by_id(person_id: str) -> pb.PersonSelector:
    return pb.PersonSelector(person_id=person_id)


async def visit_and_decide(stack: Stack, identifier: common.Identifier) -> tuple[str, str]:
    """A product view, then a Decide: (person id, decision id), once ListDecisions shows it."""
    assert stack.decision is not None
    tracked = await stack.profile.call("Track", profile_pb.TrackRequest(event=product_view(identifier, "ERASE-SKU1")))
    decided = await stack.decision.call(
        "Decide",
        decision_pb.DecideRequest(person_id=tracked.person_id, placement=decision_pb.PLACEMENT_HOME, count=2),
    )
    await wait_for(lambda: listed_decisions(stack, tracked.person_id), what="the decision is listed")
    return tracked.person_id, decided.decision_id


async def listed_decisions(stack: Stack, person_id: str) -> list[str]:
    assert stack.decision is not None
    reply = await stack.decision.call("ListDecisions", decision_pb.ListDecisionsRequest(person_id=person_id))
    return [decision.decision_id for decision in reply.decisions]


@dataclass
class SeededPerson:
    person_id: str
    email: str
    delivery_ids: list[str]
    idempotency_keys: list[str]


async def seeded_person(stack: Stack, smtp: SmtpReceiver) -> SeededPerson:
    """A visitor with a decision, a contact, consent, a welcome email sent, a retargeting member
    and a new-arrivals email scheduled for tomorrow."""
    messaging = stack.messaging
    assert messaging is not None
    visitor = cookie(f"erase-{uuid.uuid4().hex[:10]}")
    person_id, _decision_id = await visit_and_decide(stack, visitor)
    email = f"erase-{uuid.uuid4().hex[:8]}@example.com"
    await messaging.call(
        "SetContact",
        pb.SetContactRequest(
            person=by_id(person_id), email=email, phone="+33612345678", push_token="tok-1", language="fr", country="FR"
        ),
    )
    for channel in (pb.CHANNEL_EMAIL, pb.CHANNEL_PUSH, pb.CHANNEL_RETARGETING):
        await messaging.call(
            "SetConsent",
            pb.SetConsentRequest(person=by_id(person_id), channel=channel, state=pb.CONSENT_STATE_GRANTED),
        )
    now, tomorrow = Timestamp(), Timestamp()
    now.FromMilliseconds(int(time.time() * 1000))
    tomorrow.FromMilliseconds(int(time.time() * 1000) + 24 * HOUR_MS)
    expected: dict[str, int] = {}
    for kind, send_at, status in (
        (pb.TRIGGER_KIND_WELCOME, now, pb.DELIVERY_STATUS_SENT),
        (pb.TRIGGER_KIND_WIN_BACK, now, pb.DELIVERY_STATUS_SENT),  # a retargeting member
        (pb.TRIGGER_KIND_NEW_ARRIVALS, tomorrow, pb.DELIVERY_STATUS_SCHEDULED),
    ):
        fired = await messaging.call(
            "FireTrigger",
            pb.FireTriggerRequest(
                person=by_id(person_id), kind=kind, idempotency_key=uuid.uuid4().hex, send_at=send_at
            ),
        )
        expected |= dict.fromkeys(fired.delivery_ids, status)

    async def listed() -> list[pb.Delivery]:
        reply = await messaging.call("ListDeliveries", pb.ListDeliveriesRequest(person=by_id(person_id)))
        return list(reply.deliveries)

    async def settled() -> bool:
        statuses = {delivery.delivery_id: delivery.status for delivery in await listed()}
        return all(statuses.get(delivery_id) == status for delivery_id, status in expected.items())

    await wait_for(settled, what="the welcome and win-back are sent")
    await wait_for(lambda: smtp.to(email), what="the welcome email arrives")
    found = await listed()  # the visit's own win-back, 30 days ahead, too
    return SeededPerson(
        person_id,
        email,
        [delivery.delivery_id for delivery in found],
        sorted({delivery.idempotency_key for delivery in found}),
    )


class MessagingKeys:
    """Where messaging keeps a person's work in Redis (adapters/redis_queue.py)."""

    def __init__(self, stack: Stack) -> None:
        self.redis = stack.redis
        self.root = f"{stack.prefix}messaging:"

    async def held_for(self, seeded: SeededPerson) -> list[str]:
        """Every key or list entry about the person that messaging holds in Redis."""
        held: list[str] = []
        for delivery_id in seeded.delivery_ids:
            for kind in ("delivery", "done"):
                if await self.redis.exists(f"{self.root}{kind}:{delivery_id}"):
                    held.append(f"{kind}:{delivery_id}")
            if await self.redis.zscore(f"{self.root}due", delivery_id) is not None:
                held.append(f"due:{delivery_id}")
        for key in seeded.idempotency_keys:
            if await self.redis.exists(f"{self.root}key:{key}"):
                held.append(f"key:{key}")
        held += [key async for key in self.redis.scan_iter(f"{self.root}cap:{seeded.person_id}:*")]
        for queue in ("pending", "inflight"):
            members = await self.redis.lrange(f"{self.root}audience:{queue}", 0, -1)  # type: ignore[misc]
            held += [f"audience:{queue}" for member in members if json.loads(member)["person_id"] == seeded.person_id]
        return held


async def messaging_holds(stack: Stack, seeded: SeededPerson) -> dict[str, bool]:
    """What messaging keeps about the person, by place (True where something is left)."""
    person = seeded.person_id
    held = {
        "contact": bool(stack.cql("SELECT * FROM {keyspace}.contact WHERE person_id = %s", person)),
        "consent": any(
            row["consents"] for row in stack.cql("SELECT consents FROM {keyspace}.contact WHERE person_id = %s", person)
        ),
        "delivery index": bool(stack.cql("SELECT * FROM {keyspace}.delivery_by_person WHERE person_id = %s", person)),
        "deliveries": any(
            stack.cql("SELECT * FROM {keyspace}.delivery WHERE delivery_id = %s", delivery_id)
            for delivery_id in seeded.delivery_ids
        ),
        "audience": any(
            stack.cql("SELECT * FROM {keyspace}.audience_member WHERE kind = %s AND person_id = %s", kind, person)
            for kind in ("WIN_BACK",)
        ),
        "redis": bool(await MessagingKeys(stack).held_for(seeded)),
    }
    if stack.messaging is not None:
        consent = await stack.messaging.call("GetConsent", pb.GetConsentRequest(person=by_id(person)))
        listed = await stack.messaging.call("ListDeliveries", pb.ListDeliveriesRequest(person=by_id(person)))
        held["GetConsent"] = any(c.state != pb.CONSENT_STATE_UNSPECIFIED for c in consent.consents)
        held["ListDeliveries"] = bool(listed.deliveries)
    return held


async def decision_holds(stack: Stack, person_id: str) -> dict[str, bool]:
    held = {"recent list": bool(await stack.redis.exists(f"{stack.prefix}decision:recent:{person_id}"))}
    if stack.decision is not None:
        held["ListDecisions"] = bool(await listed_decisions(stack, person_id))
    return held


async def nothing_left(stack: Stack, seeded: SeededPerson) -> dict[str, bool]:
    """{} once messaging and decision hold nothing about the person, else what they still hold."""
    held = {**await messaging_holds(stack, seeded), **await decision_holds(stack, seeded.person_id)}
    return {place: True for place, found in held.items() if found}


async def erasures_announced(stack: Stack) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = await stack.redis.xrange(f"{stack.prefix}profile:person-changes")  # type: ignore[assignment]
    return [fields for _entry_id, fields in entries if fields.get("kind") == "forget"]


async def test_forget_person_erases_messaging_and_decision_data(stack: Stack, smtp: SmtpReceiver) -> None:
    seeded = await seeded_person(stack, smtp)
    held = await nothing_left(stack, seeded)
    # Everything the test then expects gone is there first (or the test would prove nothing).
    assert set(held) == {
        "contact",
        "consent",
        "delivery index",
        "deliveries",
        "audience",
        "redis",
        "GetConsent",
        "ListDeliveries",
        "recent list",
        "ListDecisions",
    }
    redis_held = await MessagingKeys(stack).held_for(seeded)
    for kind in ("delivery:", "done:", "due:", "key:", f"{stack.prefix}messaging:cap:", "audience:pending"):
        assert any(key.startswith(kind) for key in redis_held), kind

    erased = await stack.profile.call(
        "ForgetPerson", profile_pb.ForgetPersonRequest(person=profile_pb.PersonSelector(person_id=seeded.person_id))
    )
    assert list(erased.erased_person_ids) == [seeded.person_id]

    async def erased_everywhere() -> bool:
        return not await nothing_left(stack, seeded)

    await wait_for(erased_everywhere, within_s=15, what="messaging and decision erase the person")
    # The announcement carries person ids only.
    assert {"kind": "forget", "persons": json.dumps([seeded.person_id])} in await erasures_announced(stack)


async def test_services_down_during_forget_person_erase_when_they_are_back(stack: Stack, smtp: SmtpReceiver) -> None:
    seeded = await seeded_person(stack, smtp)
    await stack.stop("messaging")
    await stack.stop("decision")
    try:
        await stack.profile.call(
            "ForgetPerson", profile_pb.ForgetPersonRequest(person=profile_pb.PersonSelector(person_id=seeded.person_id))
        )
        await asyncio.sleep(1.0)
        # Nobody erased anything yet: the erasure waits on the stream.
        still = await nothing_left(stack, seeded)
        assert {"contact", "consent", "deliveries", "redis", "recent list"} <= set(still)
    finally:
        await stack.start("messaging")
        await stack.start("decision")

    async def erased_everywhere() -> bool:
        return not await nothing_left(stack, seeded)

    await wait_for(erased_everywhere, within_s=20, what="restarted messaging and decision erase the person")


async def test_a_merge_moves_the_latest_decisions_to_the_survivor(stack: Stack, unique: Callable[[str], str]) -> None:
    phone, account = cookie(unique("erase-phone")), customer(unique("erase-account"))
    phone_person, phone_decision = await visit_and_decide(stack, phone)
    account_person, account_decision = await visit_and_decide(stack, account)
    linked = await stack.profile.identity.call("Link", identity_pb.LinkRequest(identifiers=[phone, account]))
    assert linked.person_id == account_person  # the holder of the customer id survives

    async def moved() -> bool:
        return set(await listed_decisions(stack, account_person)) == {phone_decision, account_decision}

    await wait_for(moved, within_s=30, what="the merged person's decisions are listed under the survivor")
    assert await listed_decisions(stack, phone_person) == []
