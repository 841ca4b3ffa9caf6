"""Messaging against real Redis, Cassandra, identity, profile and decision servers, a real SMTP
server (aiosmtpd) and real HTTP receivers (aiohttp): triggers from profile events, consent,
frequency, retries through an SMTP outage, dead letters, push, retargeting, tracking."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import aiohttp
import grpc
import pytest
from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from services.common import tracing
from services.common.cassandra import CassandraClient, open_service_keyspace
from services.common.clock import now_ms
from services.common.spans import SpanExport
from services.messaging.adapters.cassandra_store import (
    SCHEMA_FILE,
    Contact,
    ContactCard,
    MessagingStore,
    move_consent_table,
)
from services.messaging.domain.delivery import Delivery, DeliveryStatus
from services.messaging.domain.tokens import MessageTokens
from tests.integration.conftest import (
    DecisionHarness,
    IdentityHarness,
    MessagingHarness,
    ProfileHarness,
    messaging_settings,
    running_messaging,
)
from tests.support import ADMIN_KEY, STOREFRONT_KEY, SmtpReceiver, bearer, error_details, scrape_metrics, wait_for

pytestmark = pytest.mark.integration
E = event_pb2.EventType


class HttpReceiver:
    """A real HTTP server collecting JSON posts (push endpoint, audience endpoint)."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> HttpReceiver:
        async def receive(request: web.Request) -> web.Response:
            self.posts.append((request.path, await request.json()))
            return web.json_response({"ok": True})

        app = web.Application()
        app.add_routes([web.post("/{path:.*}", receive)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = next(address[1] for address in self._runner.addresses if isinstance(address, tuple))
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
async def receivers() -> AsyncIterator[HttpReceiver]:
    receiver = await HttpReceiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture(scope="module")
async def messaging(
    identity: IdentityHarness,
    profile: ProfileHarness,
    decision: DecisionHarness,
    smtp: SmtpReceiver,
    receivers: HttpReceiver,
    run_id: str,
) -> AsyncIterator[MessagingHarness]:
    settings = messaging_settings(
        run_id,
        identity.address,
        f"127.0.0.1:{profile.running.port}",
        f"127.0.0.1:{decision.running.port}",
        smtp.port,
        push_url=f"{receivers.url}/push",
        audience_url=f"{receivers.url}/audience",
        audience_batch=50,
    )
    async with running_messaging(settings) as harness:
        for kind, delay in (
            (pb.TRIGGER_KIND_ABANDONED_CART, 1),
            (pb.TRIGGER_KIND_BROWSE_ABANDONMENT, 1),
            (pb.TRIGGER_KIND_WELCOME, 0),
        ):
            channels = [pb.CHANNEL_EMAIL]
            if kind == pb.TRIGGER_KIND_ABANDONED_CART:
                channels = [pb.CHANNEL_EMAIL, pb.CHANNEL_PUSH, pb.CHANNEL_RETARGETING]
            await harness.call(
                "UpdateRule",
                pb.UpdateRuleRequest(rule=pb.Rule(kind=kind, enabled=True, delay_seconds=delay, channels=channels)),
            )
        await decision.call(
            "ImportCatalog",
            decision_pb.ImportCatalogRequest(
                products=[
                    decision_pb.CatalogProduct(
                        product_id=f"MSG-SKU{i}",
                        title=f"Cashmere sweater {i}",
                        category_path=["Women", "Knitwear"],
                        brand="Maison",
                        price=event_pb2.Money(currency_code="EUR", amount=100.0 + i),
                        stock=10,
                    )
                    for i in range(12)
                ]
            ),
        )
        yield harness


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


def event(identifier: common.Identifier, kind: int, product: str = "", order: str = "") -> event_pb2.Event:
    at = Timestamp()
    at.FromMilliseconds(int(time.time() * 1000))
    built = event_pb2.Event(event_id=uuid.uuid4().hex, type=kind, event_time=at, identifier=identifier)  # type: ignore[arg-type]
    if product:
        built.product.CopyFrom(
            event_pb2.ProductRef(
                product_id=product,
                title="Cashmere sweater",
                category_path=["Women", "Knitwear"],
                price=event_pb2.Money(currency_code="EUR", amount=129.0),
            )
        )
        built.quantity = 1
    if order:
        built.order.order_id = order
        built.order.lines.add(product=built.product, quantity=1)
        built.order.total.CopyFrom(event_pb2.Money(currency_code="EUR", amount=129.0))
    return built


async def reachable_person(
    messaging: MessagingHarness, identifier: common.Identifier, email: str, consent: bool = True, **contact: str
) -> str:
    selector = pb.PersonSelector(identifier=identifier)
    reply = await messaging.call("SetContact", pb.SetContactRequest(person=selector, email=email, **contact))
    for channel in (pb.CHANNEL_EMAIL, pb.CHANNEL_PUSH, pb.CHANNEL_RETARGETING):
        state = pb.CONSENT_STATE_GRANTED if consent else pb.CONSENT_STATE_DENIED
        await messaging.call("SetConsent", pb.SetConsentRequest(person=selector, channel=channel, state=state))
    return str(reply.person_id)


async def deliveries(messaging: MessagingHarness, person_id: str) -> list[pb.Delivery]:
    reply = await messaging.call(
        "ListDeliveries", pb.ListDeliveriesRequest(person=pb.PersonSelector(person_id=person_id))
    )
    return list(reply.deliveries)


def of_kind(found: list[pb.Delivery], kind: int, channel: int = pb.CHANNEL_EMAIL) -> list[pb.Delivery]:
    return [delivery for delivery in found if delivery.kind == kind and delivery.channel == channel]


async def test_abandoned_cart_fired_three_times_sends_one_email_with_products_and_links(
    messaging: MessagingHarness, profile: ProfileHarness, smtp: SmtpReceiver, receivers: HttpReceiver
) -> None:
    visitor = cookie(f"msg-cart-{uuid.uuid4().hex[:8]}")
    email = f"cart-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email, language="fr", push_token="device-token-1")
    for _ in range(3):  # the same cart, three times: one trigger instance
        await profile.call("Track", profile_pb.TrackRequest(event=event(visitor, E.EVENT_TYPE_ADD_TO_CART, "MSG-SKU1")))

    async def sent() -> list[pb.Delivery]:
        found = of_kind(await deliveries(messaging, person), pb.TRIGGER_KIND_ABANDONED_CART)
        return [d for d in found if d.status == pb.DELIVERY_STATUS_SENT]

    [delivery] = await wait_for(sent)
    await asyncio.sleep(1.5)  # anything extra would have arrived by now
    [message] = smtp.to(email)
    assert message["Message-ID"] == f"<{delivery.delivery_id}@rapport>"
    assert "panier" in message["Subject"]  # French, as the contact asked
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "https://track.test/c/" in html and "https://track.test/o/" in html
    assert "https://track.test/u/" in message["List-Unsubscribe"]
    # The email shows what was left in the cart, with its title and price as the profile has them.
    assert list(delivery.product_ids) == ["MSG-SKU1"]
    assert "https://shop.example/p/MSG-SKU1" in _targets(html, messaging.settings.secret)
    assert "Cashmere sweater" in text and "129,00" in text
    assert "€" in text
    # The same trigger on the other channels: push over HTTP, retargeting to the audience.
    found = await deliveries(messaging, person)
    push = await wait_for(
        lambda: _first([p for p in receivers.posts if p[0] == "/push" and p[1]["message"]["token"] == "device-token-1"])
    )
    assert push[1]["message"]["notification"]["title"]
    assert of_kind(found, pb.TRIGGER_KIND_ABANDONED_CART, pb.CHANNEL_PUSH)[0].status == pb.DELIVERY_STATUS_SENT


def _targets(html: str, secret: str) -> list[str]:
    """The shop URLs behind the tracked links of an email (what the click endpoint redirects to)."""
    tokens = MessageTokens(secret.encode())
    return [
        tokens.read_click(token, int(time.time() * 1000)).target_url
        for token in re.findall(r'href="https://track\.test/c/([^"]+)"', html)
    ]


def _first(items: list[Any]) -> Any:
    return items[0] if items else None


async def test_a_purchase_before_the_delay_cancels_the_abandoned_cart_email(
    messaging: MessagingHarness, profile: ProfileHarness, smtp: SmtpReceiver
) -> None:
    visitor = cookie(f"msg-buyer-{uuid.uuid4().hex[:8]}")
    email = f"buyer-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    await profile.call("Track", profile_pb.TrackRequest(event=event(visitor, E.EVENT_TYPE_ADD_TO_CART, "MSG-SKU2")))
    await profile.call(
        "Track", profile_pb.TrackRequest(event=event(visitor, E.EVENT_TYPE_PURCHASE, "MSG-SKU2", order="o-1"))
    )

    async def closed() -> list[pb.Delivery]:
        found = of_kind(await deliveries(messaging, person), pb.TRIGGER_KIND_ABANDONED_CART)
        return [d for d in found if d.status == pb.DELIVERY_STATUS_CANCELLED]

    [cancelled] = await wait_for(closed)
    assert cancelled.reason in ("PURCHASED_SINCE", "CART_EMPTY")
    assert smtp.to(email) == []


async def test_nothing_reaches_a_person_who_opted_out_and_the_unsubscribe_link_works(
    messaging: MessagingHarness, profile: ProfileHarness, smtp: SmtpReceiver
) -> None:
    refuser = cookie(f"msg-no-{uuid.uuid4().hex[:8]}")
    refuser_email = f"no-{uuid.uuid4().hex[:8]}@example.com"
    refuser_id = await reachable_person(messaging, refuser, refuser_email, consent=False)
    await profile.call("Track", profile_pb.TrackRequest(event=event(refuser, E.EVENT_TYPE_SIGN_UP)))

    async def skipped() -> list[pb.Delivery]:
        found = of_kind(await deliveries(messaging, refuser_id), pb.TRIGGER_KIND_WELCOME)
        return [d for d in found if d.status == pb.DELIVERY_STATUS_SKIPPED]

    [skip] = await wait_for(skipped)
    assert skip.reason == "NO_CONSENT"
    assert smtp.to(refuser_email) == []

    # A welcomed person follows the unsubscribe link (no login): consent is withdrawn.
    member = cookie(f"msg-yes-{uuid.uuid4().hex[:8]}")
    member_email = f"yes-{uuid.uuid4().hex[:8]}@example.com"
    member_id = await reachable_person(messaging, member, member_email)
    await profile.call("Track", profile_pb.TrackRequest(event=event(member, E.EVENT_TYPE_SIGN_UP)))
    await wait_for(lambda: _first(smtp.to(member_email)))
    [welcome] = smtp.to(member_email)
    link = re.search(r"<(https://track\.test/u/[^>]+)>", welcome["List-Unsubscribe"])
    assert link is not None
    local = link.group(1).replace("https://track.test", messaging.http_url)
    async with aiohttp.ClientSession() as http:
        async with http.get(local) as page:  # a link scanner's GET changes nothing
            assert page.status == 200
        consent = await messaging.call(
            "GetConsent", pb.GetConsentRequest(person=pb.PersonSelector(person_id=member_id))
        )
        assert {c.channel: c.state for c in consent.consents}[pb.CHANNEL_EMAIL] == pb.CONSENT_STATE_GRANTED
        async with http.post(local, data={"List-Unsubscribe": "One-Click"}) as done:
            assert done.status == 200
        async with http.post(local[:-3] + "xyz") as forged:
            assert forged.status == 404
    consent = await messaging.call("GetConsent", pb.GetConsentRequest(person=pb.PersonSelector(person_id=member_id)))
    assert {c.channel: c.state for c in consent.consents}[pb.CHANNEL_EMAIL] == pb.CONSENT_STATE_DENIED


class RecordingCassandra:
    """A keyspace's client that records the statements run through it (a batch as the list of
    its statements)."""

    def __init__(self, db: CassandraClient) -> None:
        self.db = db
        self.statements: list[str | list[str]] = []

    async def execute(self, cql: str, parameters: Sequence[Any] | None = None, **options: Any) -> list[dict[str, Any]]:
        self.statements.append(cql)
        return await self.db.execute(cql, parameters, **options)

    async def execute_batch(self, statements: Sequence[tuple[str, Sequence[Any]]], **options: Any) -> None:
        self.statements.append([cql for cql, _ in statements])
        await self.db.execute_batch(statements, **options)


@pytest.fixture
async def recorded_store(messaging: MessagingHarness) -> AsyncIterator[tuple[MessagingStore, RecordingCassandra]]:
    """A store on messaging's keyspace whose statements are recorded."""
    db = await open_service_keyspace(messaging.settings, None)
    recording = RecordingCassandra(db)
    try:
        yield MessagingStore(cast(CassandraClient, recording)), recording
    finally:
        await db.close()


async def test_contact_and_consent_live_in_one_row_that_a_send_reads_in_one_statement(
    messaging: MessagingHarness, recorded_store: tuple[MessagingStore, RecordingCassandra]
) -> None:
    store, recording = recorded_store
    selector = pb.PersonSelector(identifier=cookie(f"msg-row-{uuid.uuid4().hex[:8]}"))
    # Consent may come before any contact, and each write leaves what the others wrote.
    granted = await messaging.call(
        "SetConsent",
        pb.SetConsentRequest(person=selector, channel=pb.CHANNEL_EMAIL, state=pb.CONSENT_STATE_GRANTED),
    )
    person_id = str(granted.person_id)
    first = await store.contact(person_id)
    assert first.contact == Contact(person_id)
    assert {channel: state for channel, (state, _) in first.consents.items()} == {"EMAIL": "GRANTED"}
    email = f"row-{uuid.uuid4().hex[:8]}@example.com"
    await messaging.call("SetContact", pb.SetContactRequest(person=selector, email=email, country="FR"))
    await messaging.call(
        "SetConsent", pb.SetConsentRequest(person=selector, channel=pb.CHANNEL_PUSH, state=pb.CONSENT_STATE_DENIED)
    )
    await messaging.call("SetContact", pb.SetContactRequest(person=selector, language="fr"))

    recording.statements.clear()
    card = await store.contact(person_id)

    assert len(recording.statements) == 1
    assert card.contact == Contact(person_id, email=email, language="fr", country="FR")
    assert {channel: state for channel, (state, _) in card.consents.items()} == {
        "EMAIL": "GRANTED",
        "PUSH": "DENIED",
    }
    assert card.consents["EMAIL"][1] == first.consents["EMAIL"][1] > 0  # the time it was given, kept
    reply = await messaging.call("GetConsent", pb.GetConsentRequest(person=pb.PersonSelector(person_id=person_id)))
    assert {c.channel: c.state for c in reply.consents} == {
        pb.CHANNEL_EMAIL: pb.CONSENT_STATE_GRANTED,
        pb.CHANNEL_PUSH: pb.CONSENT_STATE_DENIED,
        pb.CHANNEL_RETARGETING: pb.CONSENT_STATE_UNSPECIFIED,
    }
    never_seen = f"never-seen-{uuid.uuid4().hex}"
    assert await store.contact(never_seen) == ContactCard(Contact(never_seen), {})


async def test_the_reads_and_writes_of_concurrent_sends_share_statements_and_each_gets_its_own(
    recorded_store: tuple[MessagingStore, RecordingCassandra],
) -> None:
    store, recording = recorded_store
    run = uuid.uuid4().hex[:8]
    people = [f"group-{run}-{index}" for index in range(20)]
    for index, person in enumerate(people[:10]):  # the other ten were never seen
        await store.set_contact(Contact(person, email=f"{index}@example.com"), now_ms())
        await store.set_consent(person, "EMAIL", "GRANTED" if index % 2 else "DENIED", now_ms())
    recording.statements.clear()

    cards = await asyncio.gather(*(store.contact(person) for person in people))

    assert [card.contact.email for card in cards] == [f"{index}@example.com" for index in range(10)] + [""] * 10
    assert [card.consents.get("EMAIL", ("", 0))[0] for card in cards[:4]] == ["DENIED", "GRANTED"] * 2
    assert all(
        card.consents == {} and card.contact == Contact(person)
        for card, person in zip(cards[10:], people[10:], strict=True)
    )
    # The first read goes alone; the nineteen asked while it was in flight, in (at most 16) more.
    assert 2 <= len(recording.statements) <= 3 < len(people)

    outcomes = [
        Delivery(
            delivery_id=f"d_{run}{index:04d}",
            person_id=person,
            kind="WELCOME",
            channel="EMAIL",
            status=DeliveryStatus.DEAD if index == 3 else DeliveryStatus.SENT,
            idempotency_key=f"WELCOME:{run}{index}",
            created_at_ms=now_ms(),
            due_at_ms=now_ms(),
            sent_at_ms=now_ms(),
        )
        for index, person in enumerate(people)
    ]
    recording.statements.clear()

    await asyncio.gather(*(store.save_outcome(outcome) for outcome in outcomes))

    batches = recording.statements
    assert 2 <= len(batches) <= 3 and all(isinstance(batch, list) for batch in batches)
    assert sum(len(batch) for batch in batches) == len(outcomes) + 1  # and the dead letter
    for outcome in outcomes:
        assert await store.delivery(outcome.delivery_id) == outcome
    assert outcomes[3].delivery_id in [dead.delivery_id for dead in await store.dead_letters(1000)]


async def test_a_keyspace_of_the_previous_schema_keeps_its_contacts_and_consents(
    cassandra_admin: CassandraClient, run_id: str
) -> None:
    keyspace = f"it_messaging_upgrade_{run_id}"
    cassandra_admin.created_keyspaces.append(keyspace)  # type: ignore[attr-defined]
    session = cassandra_admin.session
    session.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}",
        timeout=60,
    )
    # The two tables as the schema made them before consent moved into the contact row.
    session.execute(
        f"CREATE TABLE {keyspace}.contact (person_id text PRIMARY KEY, email text, push_token text, phone text, "
        "language text, country text, updated_at timestamp)",
        timeout=60,
    )
    session.execute(
        f"CREATE TABLE {keyspace}.consent (person_id text, channel text, state text, updated_at timestamp, "
        "PRIMARY KEY (person_id, channel))",
        timeout=60,
    )
    session.execute(f"INSERT INTO {keyspace}.contact (person_id, email) VALUES ('p1', 'ada@example.com')")
    given = "'2023-11-14 22:13:20+0000'"  # 1 700 000 000 000 ms
    for person, channel, state in (("p1", "EMAIL", "GRANTED"), ("p2", "PUSH", "DENIED"), ("p1", "PUSH", "GRANTED")):
        session.execute(
            f"INSERT INTO {keyspace}.consent (person_id, channel, state, updated_at) "
            f"VALUES ('{person}', '{channel}', '{state}', {given})"
        )
    upgraded = CassandraClient(session, cassandra_admin.cluster, keyspace)
    store = MessagingStore(upgraded)
    schema = "{'class': 'SimpleStrategy', 'replication_factor': 1}", SCHEMA_FILE.read_text()
    await asyncio.to_thread(upgraded.apply_schema, *schema)
    # A replica already on the new schema records a newer choice before the table is moved.
    await store.set_consent("p1", "PUSH", "DENIED", 1_800_000_000_000)

    moved = [await asyncio.to_thread(move_consent_table, upgraded) for _ in range(2)]  # at every start
    await asyncio.to_thread(upgraded.apply_schema, *schema)

    tables = {
        row["table_name"]
        for row in session.execute("SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", [keyspace])
    }
    assert "consent" not in tables and "contact" in tables
    assert moved == [3, 0]
    assert await store.contact("p1") == ContactCard(
        Contact("p1", email="ada@example.com"),
        {"EMAIL": ("GRANTED", 1_700_000_000_000), "PUSH": ("DENIED", 1_800_000_000_000)},
    )
    assert await store.contact("p2") == ContactCard(Contact("p2"), {"PUSH": ("DENIED", 1_700_000_000_000)})


async def test_opens_and_clicks_go_back_to_the_profile(
    messaging: MessagingHarness, profile: ProfileHarness, smtp: SmtpReceiver
) -> None:
    visitor = cookie(f"msg-track-{uuid.uuid4().hex[:8]}")
    email = f"track-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    await profile.call("Track", profile_pb.TrackRequest(event=event(visitor, E.EVENT_TYPE_SIGN_UP)))
    await wait_for(lambda: _first(smtp.to(email)))
    html = smtp.to(email)[0].get_body(("html",)).get_content()
    pixel = re.search(r'src="(https://track\.test/o/[^"]+)"', html)
    click = re.search(r'href="(https://track\.test/c/[^"]+)"', html)
    assert pixel and click
    async with aiohttp.ClientSession() as http:
        async with http.get(pixel.group(1).replace("https://track.test", messaging.http_url)) as image:
            assert image.status == 200 and image.content_type == "image/gif"
        target = click.group(1).replace("https://track.test", messaging.http_url)
        async with http.get(target, allow_redirects=False) as redirect:
            assert redirect.status == 302 and redirect.headers["location"].startswith("https://shop.example")

    async def tracked() -> set[int]:
        reply = await profile.call(
            "GetProfile",
            profile_pb.GetProfileRequest(person=profile_pb.PersonSelector(person_id=person), timeline_page_size=50),
        )
        kinds = {entry.type for entry in reply.timeline}
        return kinds if {E.EVENT_TYPE_EMAIL_OPEN, E.EVENT_TYPE_EMAIL_CLICK} <= kinds else set()

    await wait_for(tracked)


async def test_an_smtp_outage_of_30_seconds_delays_the_email_but_loses_nothing(
    messaging: MessagingHarness, smtp: SmtpReceiver
) -> None:
    visitor = cookie(f"msg-outage-{uuid.uuid4().hex[:8]}")
    email = f"outage-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    smtp.stop()
    try:
        reply = await messaging.call(
            "FireTrigger",
            pb.FireTriggerRequest(person=pb.PersonSelector(person_id=person), kind=pb.TRIGGER_KIND_WELCOME),
        )
        [delivery_id] = reply.delivery_ids

        async def retried() -> pb.Delivery | None:
            found = (await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))).delivery
            return found if found.attempts >= 2 and "unreachable" in found.last_error else None

        await wait_for(retried)
        await asyncio.sleep(30)
    finally:
        smtp.start()
    started = time.monotonic()
    await wait_for(lambda: _first(smtp.to(email)), within_s=20)
    delivery = (await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))).delivery
    assert delivery.status == pb.DELIVERY_STATUS_SENT and delivery.attempts >= 3
    assert len(smtp.to(email)) == 1
    print(f"delivered {time.monotonic() - started:.1f} s after the SMTP server came back")


async def test_a_permanent_refusal_is_dead_lettered_and_can_be_replayed(
    messaging: MessagingHarness, smtp: SmtpReceiver
) -> None:
    visitor = cookie(f"msg-dead-{uuid.uuid4().hex[:8]}")
    email = f"dead-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    smtp.reject_with = "550 5.1.1 mailbox unavailable"
    try:
        reply = await messaging.call(
            "FireTrigger",
            pb.FireTriggerRequest(
                person=pb.PersonSelector(person_id=person), kind=pb.TRIGGER_KIND_WELCOME, idempotency_key="dead-1"
            ),
        )
        [delivery_id] = reply.delivery_ids

        async def dead() -> bool:
            letters = await messaging.call("ListDeadLetters", pb.ListDeadLettersRequest())
            return any(letter.delivery_id == delivery_id for letter in letters.deliveries)

        await wait_for(dead)
        found = (await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))).delivery
        assert found.status == pb.DELIVERY_STATUS_DEAD and "550" in found.last_error and found.attempts == 1
    finally:
        smtp.reject_with = None
    again = await messaging.call(
        "FireTrigger",
        pb.FireTriggerRequest(
            person=pb.PersonSelector(person_id=person), kind=pb.TRIGGER_KIND_WELCOME, idempotency_key="dead-1"
        ),
    )
    assert again.duplicate and list(again.delivery_ids) == [delivery_id]
    await messaging.call("ReplayDeadLetter", pb.ReplayDeadLetterRequest(delivery_id=delivery_id))
    await wait_for(lambda: _first(smtp.to(email)))
    letters = await messaging.call("ListDeadLetters", pb.ListDeadLettersRequest())
    assert delivery_id not in {letter.delivery_id for letter in letters.deliveries}


async def test_daily_cap_skips_the_third_email_of_the_day(messaging: MessagingHarness, smtp: SmtpReceiver) -> None:
    visitor = cookie(f"msg-cap-{uuid.uuid4().hex[:8]}")
    email = f"cap-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    ids = []
    welcome = 'rapport_messaging_deliveries_total{{channel="EMAIL",reason="{}",status="{}",trigger="WELCOME"}}'
    before = await scrape_metrics(messaging.running.metrics_port)
    for index in range(3):
        reply = await messaging.call(
            "FireTrigger",
            pb.FireTriggerRequest(
                person=pb.PersonSelector(person_id=person), kind=pb.TRIGGER_KIND_WELCOME, idempotency_key=f"cap-{index}"
            ),
        )
        ids += list(reply.delivery_ids)
        await wait_for(
            lambda i=reply.delivery_ids[0]: _closed(messaging, i)  # type: ignore[misc]
        )
    statuses = [(await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id=i))).delivery for i in ids]
    assert [d.status for d in statuses] == [
        pb.DELIVERY_STATUS_SENT,
        pb.DELIVERY_STATUS_SENT,
        pb.DELIVERY_STATUS_SKIPPED,
    ]
    assert statuses[2].reason == "CAPPED"
    assert len(smtp.to(email)) == 2
    # Outcomes, queue depths (read from Redis at scrape time) and store latency on /metrics.
    after = await scrape_metrics(messaging.running.metrics_port)
    for series, count in ((welcome.format("", "SENT"), 2), (welcome.format("CAPPED", "SKIPPED"), 1)):
        assert after.get(series, 0) - before.get(series, 0) >= count, series
    for queue in ("scheduled", "send_queued", "send_in_flight", "audience_pending", "audience_in_flight"):
        assert after[f'rapport_messaging_queue_depth{{queue="{queue}"}}'] >= 0
    assert after['rapport_cassandra_query_duration_seconds_count{lwt="no",statement="SELECT"}'] > 0
    assert after['rapport_redis_command_duration_seconds_count{command="EVALSHA"}'] > 0  # finish() is one script


async def _closed(messaging: MessagingHarness, delivery_id: str) -> bool:
    found = (await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id=delivery_id))).delivery
    return found.status in (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_SKIPPED, pb.DELIVERY_STATUS_DEAD)


async def test_retargeting_audience_is_synced_and_exported_hashed(
    messaging: MessagingHarness, profile: ProfileHarness, receivers: HttpReceiver
) -> None:
    visitor = cookie(f"msg-ads-{uuid.uuid4().hex[:8]}")
    email = f"Ads.{uuid.uuid4().hex[:8]}@Example.com"
    person = await reachable_person(messaging, visitor, email, phone="+33612345678", country="FR")
    await profile.call("Track", profile_pb.TrackRequest(event=event(visitor, E.EVENT_TYPE_ADD_TO_CART, "MSG-SKU3")))

    async def synced() -> Any:
        return _first(
            [
                body
                for path, body in receivers.posts
                if path == "/audience" and any("MSG-SKU3" in ids for ids in body.get("product_ids", []))
            ]
        )

    body = await wait_for(synced)
    assert body["audience"] == "rapport_abandoned_cart"
    assert email not in json.dumps(body) and email.lower() not in json.dumps(body)
    chunks = []
    async for chunk in messaging.stub.ExportAudience(
        pb.ExportAudienceRequest(kind=pb.TRIGGER_KIND_ABANDONED_CART), metadata=bearer(ADMIN_KEY)
    ):
        chunks.append(chunk.csv_chunk)
    rows = list(csv.DictReader(io.StringIO("".join(chunks))))
    expected = hashlib.sha256(email.strip().lower().encode()).hexdigest()
    mine = [row for row in rows if row["email"] == expected]
    assert mine and mine[0]["phone"] == hashlib.sha256(b"33612345678").hexdigest()
    assert "@" not in "".join(chunks)
    assert person


async def test_rules_can_be_listed_disabled_and_bad_input_is_named(messaging: MessagingHarness) -> None:
    rules = (await messaging.call("ListRules", pb.ListRulesRequest())).rules
    assert {rule.kind for rule in rules} == set(range(1, 7))
    win_back = next(rule for rule in rules if rule.kind == pb.TRIGGER_KIND_WIN_BACK)
    assert win_back.delay_seconds == 30 * 86_400
    disabled = await messaging.call(
        "UpdateRule",
        pb.UpdateRuleRequest(
            rule=pb.Rule(kind=pb.TRIGGER_KIND_NEW_ARRIVALS, enabled=False, delay_seconds=0, channels=[pb.CHANNEL_EMAIL])
        ),
    )
    assert not disabled.rule.enabled
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await messaging.call(
            "FireTrigger",
            pb.FireTriggerRequest(person=pb.PersonSelector(person_id="0" * 32), kind=pb.TRIGGER_KIND_NEW_ARRIVALS),
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    cases: list[tuple[str, Any, str]] = [
        (
            "UpdateRule",
            pb.UpdateRuleRequest(rule=pb.Rule(kind=pb.TRIGGER_KIND_UNSPECIFIED, channels=[pb.CHANNEL_EMAIL])),
            "rule.kind",
        ),
        (
            "UpdateRule",
            pb.UpdateRuleRequest(
                rule=pb.Rule(kind=pb.TRIGGER_KIND_WELCOME, delay_seconds=-1, channels=[pb.CHANNEL_EMAIL])
            ),
            "rule.delay_seconds",
        ),
        ("UpdateRule", pb.UpdateRuleRequest(rule=pb.Rule(kind=pb.TRIGGER_KIND_WELCOME)), "rule.channels"),
        (
            "SetContact",
            pb.SetContactRequest(person=pb.PersonSelector(person_id="0" * 32), email="not an email"),
            "email",
        ),
        (
            "SetContact",
            pb.SetContactRequest(person=pb.PersonSelector(person_id="0" * 32), phone="0612"),
            "phone",
        ),
        ("SetContact", pb.SetContactRequest(person=pb.PersonSelector(person_id="xyz")), "person.person_id"),
        (
            "SetConsent",
            pb.SetConsentRequest(person=pb.PersonSelector(person_id="0" * 32), channel=pb.CHANNEL_UNSPECIFIED),
            "channel",
        ),
        ("Unsubscribe", pb.UnsubscribeRequest(token="u1.forged.token"), "token"),
        ("GetDelivery", pb.GetDeliveryRequest(delivery_id=""), "delivery_id"),
        ("ListDeadLetters", pb.ListDeadLettersRequest(page_size=10_000), "page_size"),
        ("FireTrigger", pb.FireTriggerRequest(kind=pb.TRIGGER_KIND_WELCOME), "person"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await messaging.call(method, request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, field)
        assert field in [violation[0] for violation in error_details(bad.value).field_violations], (method, field)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await messaging.call("ListDeadLetters", pb.ListDeadLettersRequest(), key=STOREFRONT_KEY)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await messaging.call("GetDelivery", pb.GetDeliveryRequest(delivery_id="d_nothing"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_send_is_a_trace_linked_to_the_call_that_fired_it(
    messaging: MessagingHarness, smtp: SmtpReceiver
) -> None:
    """The trigger keeps the FireTrigger call's trace context in its queued delivery; the send,
    later and in another task, is a span of its own linked to it, and its Decide call is the
    send's child (spans kept in memory here; the in-process servers pass trace context through)."""
    visitor = cookie(f"msg-trace-{uuid.uuid4().hex[:8]}")
    email = f"trace-{uuid.uuid4().hex[:8]}@example.com"
    person = await reachable_person(messaging, visitor, email)
    trace_id, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-messaging", SimpleSpanProcessor(memory))
    tracing.use_span_export(export)

    def spans_named(name: str) -> list[ReadableSpan]:
        return [span for span in memory.get_finished_spans() if span.name == name]

    def send_of(delivery_id: str) -> list[ReadableSpan]:
        return [
            s for s in spans_named("messaging.send") if dict(s.attributes or {})["rapport.delivery_id"] == delivery_id
        ]

    try:
        reply = await messaging.stub.FireTrigger(
            pb.FireTriggerRequest(person=pb.PersonSelector(person_id=person), kind=pb.TRIGGER_KIND_WELCOME),
            metadata=(*bearer(ADMIN_KEY), ("traceparent", f"00-{trace_id}-{caller_span}-01")),
            timeout=10,
        )
        [delivery_id] = reply.delivery_ids
        await wait_for(lambda: _first(smtp.to(email)))
        [send] = await wait_for(lambda: send_of(delivery_id))
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    assert send.kind is SpanKind.CONSUMER and send.parent is None
    linked = [(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") for link in send.links]
    assert linked == [(trace_id, caller_span)]
    decide_calls = [
        span
        for span in spans_named("rapport.decision.v1.DecisionService/DecideBatch")
        if span.kind is SpanKind.CLIENT and span.parent is not None and span.parent.span_id == send.context.span_id
    ]
    assert len(decide_calls) == 1
