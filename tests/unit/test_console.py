"""The staff console without the services: signed sessions, who may sign in, the search form,
the rows pages show, and the HTTP app itself against fake services (sign-in, refusals, a person
page, an unknown identifier, a service that does not answer, draining), the trace context a page
passes on (and its spans when exported), and the peers' read-only Lookup."""

from __future__ import annotations

import hashlib
import re
from typing import Any, cast

import grpc
import pytest
from aiohttp import test_utils
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.messaging.v1 import messaging_service_pb2 as messaging_pb
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from services.common import tracing
from services.common.auth import ApiKeyRegistry
from services.common.identifiers import IdentifierKey, IdentifierType
from services.common.settings import load_settings
from services.common.spans import SpanExport
from services.console import views
from services.console.app import Console
from services.console.peers import PeerError, RapportPeers
from services.console.sessions import (
    COOKIE_NAME,
    InvalidConsoleKey,
    SessionSigner,
    StaffSession,
    safe_next_path,
    staff_for_key,
)
from services.console.settings import ConsoleSettings

NOW_S = 1_750_000_000
NOW_MS = NOW_S * 1000
SECRET = b"console-test-secret-0123456789"
STAFF_KEY = "rk_staff_0123456789abcdef"
SHOP_KEY = "rk_shop_0123456789abcdef"
KEYS = ApiKeyRegistry.parse(
    f"staff:{STAFF_KEY}:console.view;shop:{SHOP_KEY}:identity.resolve;ops:rk_ops_0123456789abcdef:*"
)
PERSON = "0123456789abcdef0123456789abcdef"
PEER_METADATA = (("authorization", "Bearer rk_console_to_identity"),)
CALLER_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SURVIVOR = "fedcba9876543210fedcba9876543210"


# ---------------------------------------------------------------------------------- sessions
def test_a_session_cookie_reads_back_until_it_expires() -> None:
    signer = SessionSigner(SECRET, lifetime_s=3600)
    cookie = signer.issue("staff", NOW_S)
    assert signer.read(cookie, NOW_S + 10) == StaffSession("staff", NOW_S + 3600)
    assert signer.read(cookie, NOW_S + 3600) is None


def test_a_forged_or_foreign_cookie_is_refused() -> None:
    signer = SessionSigner(SECRET, lifetime_s=3600)
    cookie = signer.issue("staff", NOW_S)
    version, _payload, signature = cookie.split(".")
    other_payload = SessionSigner(SECRET, lifetime_s=10**9).issue("admin", NOW_S).split(".")[1]
    assert signer.read(f"{version}.{other_payload}.{signature}", NOW_S) is None
    assert signer.read(SessionSigner(b"another-secret-0123456789", 3600).issue("staff", NOW_S), NOW_S) is None
    for broken in ("", "v1", "v1..", "v2." + cookie[3:], cookie + "x", "v1.!!!." + signature):
        assert signer.read(broken, NOW_S) is None


def test_a_short_session_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        SessionSigner(b"short", 3600)


def test_only_keys_with_the_console_scope_sign_in() -> None:
    assert staff_for_key(KEYS, STAFF_KEY).name == "staff"
    assert staff_for_key(KEYS, " rk_ops_0123456789abcdef\n").name == "ops"  # '*' allows everything
    for key in (SHOP_KEY, "rk_unknown_0123456789", ""):
        with pytest.raises(InvalidConsoleKey):
            staff_for_key(KEYS, key)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        ("/people/abc?lang=fr", "/people/abc?lang=fr"),
        ("/segments", "/segments"),
        ("", "/"),
        (None, "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
    ],
)
def test_after_sign_in_only_a_path_of_the_console_is_followed(requested: str | None, expected: str) -> None:
    assert safe_next_path(requested) == expected


# ---------------------------------------------------------------------------------- search
def test_search_takes_a_person_id_or_an_identifier() -> None:
    assert views.parse_search("PERSON_ID", f" {PERSON.upper()} ") == views.SearchTarget(person_id=PERSON)
    assert views.parse_search("COOKIE", "c-123") == views.SearchTarget(
        identifier=IdentifierKey(IdentifierType.COOKIE, "c-123")
    )
    hashed = hashlib.sha256(b"camille@example.com").hexdigest()
    assert views.parse_search("EMAIL_SHA256", " Camille@Example.com ").identifier == IdentifierKey(
        IdentifierType.EMAIL_SHA256, hashed
    )


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [
        ("PERSON_ID", "not-a-person", "32 hexadecimal digits"),
        ("COOKIE", "   ", "Type an identifier"),
        ("SHOE_SIZE", "42", "Choose what kind"),
        ("EMAIL_SHA256", "no-at-sign", "e-mail address"),
    ],
)
def test_a_bad_search_says_what_to_fix_without_echoing_the_value(kind: str, value: str, message: str) -> None:
    with pytest.raises(views.SearchError, match=message) as raised:
        views.parse_search(kind, value)
    assert value.strip() == "" or value not in str(raised.value)


# ---------------------------------------------------------------------------------- rows
def test_labels_and_times_read_as_words() -> None:
    assert views.label("SITUATION_ABANDONED_CART", "SITUATION_") == "Abandoned cart"
    assert views.label("STRATEGY_UNSPECIFIED", "STRATEGY_") == views.NOTHING
    assert views.when_ms(NOW_MS - 3 * 86_400_000, NOW_MS) == "2025-06-12 15:06 UTC (3 d ago)"
    assert views.when_ms(NOW_MS + 2 * 3_600_000, NOW_MS).endswith("(in 2 h)")
    assert views.when_ms(0, NOW_MS) == views.NOTHING
    assert views.money(event_pb2.Money(currency_code="EUR", amount=1234.5)) == "1,234.50 EUR"


def test_timeline_rows_say_what_happened() -> None:
    def event(**fields: Any) -> event_pb2.Event:
        message = event_pb2.Event(**fields)
        message.event_time.FromMilliseconds(NOW_MS - 60_000)
        return message

    sweater = event_pb2.ProductRef(product_id="P1", title="Cashmere sweater", category_path=["Women", "Knitwear"])
    viewed = views.event_row(
        event(type=event_pb2.EVENT_TYPE_ADD_TO_CART, product=sweater, quantity=2, context={"device_type": "mobile"}),
        NOW_MS,
    )
    assert (viewed.kind, viewed.what, viewed.where) == (
        "Add to cart",
        "Cashmere sweater x2 (Women > Knitwear)",
        "mobile",
    )
    bought = views.event_row(
        event(
            type=event_pb2.EVENT_TYPE_PURCHASE,
            order=event_pb2.Order(
                order_id="O-7",
                lines=[event_pb2.OrderLine(product=sweater, quantity=1)],
                total=event_pb2.Money(currency_code="EUR", amount=129),
            ),
        ),
        NOW_MS,
    )
    assert bought.what == "order O-7, 1 lines, 129.00 EUR"
    assert views.event_row(event(type=event_pb2.EVENT_TYPE_SEARCH, search_query="scarf"), NOW_MS).what == "“scarf”"


def test_consent_shows_every_channel_even_never_asked() -> None:
    granted = messaging_pb.ChannelConsent(channel=messaging_pb.CHANNEL_EMAIL, state=messaging_pb.CONSENT_STATE_GRANTED)
    granted.updated_at.FromMilliseconds(NOW_MS)
    never_asked = messaging_pb.ChannelConsent(channel=messaging_pb.CHANNEL_PUSH)  # as GetConsent lists it
    rows = views.consent_rows([granted, never_asked], NOW_MS)
    assert [(row.channel, row.state) for row in rows] == [
        ("Email", "Granted"),
        ("Push", "Never asked"),
        ("Retargeting", "Never asked"),
    ]


def recorded_decision() -> decision_pb.RecordedDecision:
    decision = decision_pb.RecordedDecision(
        decision_id="d1.x.y",
        placement=decision_pb.PLACEMENT_CART,
        situation=decision_pb.SITUATION_ABANDONED_CART,
        lead_strategy=decision_pb.STRATEGY_SIMILAR_ITEMS,
        segment_ids=["knitwear-fans"],
        experiment_id="lead-test",
        experiment_arm="bandit",
        items=[
            decision_pb.RecommendedItem(
                product_id="P2",
                title="Merino cardigan",
                strategy=decision_pb.STRATEGY_SIMILAR_ITEMS,
                reason="Like Cashmere sweater",
                price=event_pb2.Money(currency_code="EUR", amount=89),
            ),
            decision_pb.RecommendedItem(product_id="GONE", strategy=decision_pb.STRATEGY_TRENDING, reason="Popular"),
        ],
        message=decision_pb.Message(headline="Didn't find what you wanted last time?", body="Knitwear for you."),
        degraded=True,
        degraded_reasons=["bandit_unavailable"],
    )
    decision.decide_time.FromMilliseconds(NOW_MS - 5 * 60_000)
    return decision


def test_a_decision_shows_its_reasons() -> None:
    view = views.decision_view(recorded_decision(), NOW_MS)
    assert (view.placement, view.situation, view.lead_strategy) == ("Cart", "Abandoned cart", "Similar items")
    assert view.experiment == "lead-test / bandit"
    assert view.degraded_reasons == ["bandit_unavailable"]
    assert [(item.title, item.strategy, item.reason) for item in view.items] == [
        ("Merino cardigan", "Similar items", "Like Cashmere sweater"),
        ("GONE", "Trending", "Popular"),  # left the catalog: its id stands for it
    ]
    unknown = decision_pb.RecordedDecision(decision_id="d", situation=decision_pb.SITUATION_UNSPECIFIED)
    assert views.decision_view(unknown, NOW_MS).situation == "Unknown (no profile in time)"


def test_an_experiment_reads_per_arm_against_the_holdout() -> None:
    experiment = decision_pb.Experiment(
        experiment_id="lead-test",
        arms=[decision_pb.ExperimentArm(name="similar", weight=1, strategy=decision_pb.STRATEGY_SIMILAR_ITEMS)],
        holdout_share=0.1,
        placements=[decision_pb.PLACEMENT_CART],
    )
    report = decision_pb.GetExperimentReportResponse(
        experiment=experiment,
        arms=[
            decision_pb.ArmReport(arm="holdout", exposures=100, conversions=5, conversion_rate=0.05),
            decision_pb.ArmReport(
                arm="similar", exposures=900, conversions=90, conversion_rate=0.1, uplift=1.0, p_value=0.01
            ),
        ],
    )
    view = views.experiment_view(experiment, report)
    assert (view.holdout_share, view.placements) == ("10.0 %", "Cart")
    holdout, similar = view.arms
    assert (holdout.strategy, holdout.uplift, holdout.significant) == ("Trending (not personalised)", "—", False)
    assert (similar.strategy, similar.rate, similar.uplift, similar.significant) == (
        "Similar items",
        "10.0 %",
        "+100.0 %",
        True,
    )


# ---------------------------------------------------------------------------------- the app
class FakeServices:
    """The four services' answers for one person, PERSON (and SURVIVOR, into which OLD was merged)."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.looked_up: list[IdentifierKey] = []
        self.sent_metadata: list[tuple[tuple[str, str], ...]] = []

    def _check(self, service: str) -> None:
        if service in self.down:
            raise PeerError(service, grpc.StatusCode.UNAVAILABLE, "connection refused")

    async def lookup(self, identifier: IdentifierKey) -> str | None:
        self._check("identity")
        self.looked_up.append(identifier)
        return None if identifier.value == "never-seen" else PERSON

    async def person(self, person_id: str) -> identity_pb.Person:
        self._check("identity")
        # What a call made now would carry, as RapportPeers sends it (the page's trace context).
        with tracing.outgoing("rapport.identity.v1.IdentityService/GetPerson", PEER_METADATA) as metadata:
            self.sent_metadata.append(metadata)
        if person_id == "0" * 32:
            raise PeerError("identity", grpc.StatusCode.NOT_FOUND, "")
        cookie = identity_pb.LinkedIdentifier(
            identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value="c-123")
        )
        return identity_pb.Person(person_id=SURVIVOR if person_id == "1" * 32 else person_id, identifiers=[cookie])

    async def profile(self, person_id: str, page_size: int, page_token: str) -> profile_pb.GetProfileResponse:
        self._check("profile")
        sweater = event_pb2.ProductRef(
            product_id="P1", title="Cashmere sweater", price=event_pb2.Money(currency_code="EUR", amount=129)
        )
        reply = profile_pb.GetProfileResponse(
            profile=profile_pb.Profile(
                person_id=person_id,
                cart=profile_pb.Cart(lines=[profile_pb.CartLine(product=sweater, quantity=1)], abandoned=True),
                category_affinities=[profile_pb.Affinity(key="Women > Knitwear", score=2.5, share=0.8)],
            ),
            timeline=[event_pb2.Event(type=event_pb2.EVENT_TYPE_PRODUCT_VIEW, product=sweater)],
            next_timeline_page_token="older-page" if not page_token else "",
        )
        return reply

    async def describe(self, person_id: str, language: str) -> profile_pb.DescribeResponse:
        self._check("profile")
        sentence = "2e visite" if language == "fr" else "2nd visit"
        return profile_pb.DescribeResponse(person_id=person_id, sentences=[sentence, "hesitating between two products"])

    async def decisions(self, person_id: str) -> list[decision_pb.RecordedDecision]:
        self._check("decision")
        return [recorded_decision()]

    async def deliveries(self, person_id: str) -> list[messaging_pb.Delivery]:
        self._check("messaging")
        return [
            messaging_pb.Delivery(
                delivery_id="dl-1",
                kind=messaging_pb.TRIGGER_KIND_ABANDONED_CART,
                channel=messaging_pb.CHANNEL_EMAIL,
                status=messaging_pb.DELIVERY_STATUS_SENT,
            )
        ]

    async def consents(self, person_id: str) -> list[messaging_pb.ChannelConsent]:
        self._check("messaging")
        return []

    async def segments(self) -> list[decision_pb.Segment]:
        self._check("decision")
        return [decision_pb.Segment(segment_id="knitwear-fans", name="Knitwear fans", rule='top_category == "x"')]

    async def experiments(self) -> list[decision_pb.Experiment]:
        self._check("decision")
        return [decision_pb.Experiment(experiment_id="lead-test", arms=[decision_pb.ExperimentArm(name="bandit")])]

    async def experiment_report(self, experiment_id: str) -> decision_pb.GetExperimentReportResponse:
        self._check("decision")
        return decision_pb.GetExperimentReportResponse(arms=[decision_pb.ArmReport(arm="holdout", exposures=3)])


@pytest.fixture
async def console() -> Any:
    services = FakeServices()
    app = Console(cast(RapportPeers, services), KEYS, SessionSigner(SECRET, 3600)).app()
    async with test_utils.TestClient(test_utils.TestServer(app)) as client:
        client.services = services  # type: ignore[attr-defined]
        yield client


async def sign_in(client: Any, key: str = STAFF_KEY, next_path: str = "/") -> Any:
    return await client.post("/login", data={"api_key": key, "next": next_path}, allow_redirects=False)


async def test_every_page_but_sign_in_needs_a_session(console: Any) -> None:
    for path in ("/", "/segments", f"/people/{PERSON}"):
        response = await console.get(path, allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"].startswith("/login?next=")
    assert (await console.post("/search", data={"kind": "COOKIE", "value": "c"}, allow_redirects=False)).status == 401
    assert (await console.get("/healthz")).status == 200
    assert console.services.looked_up == []


async def test_a_wrong_key_is_refused_and_a_right_one_opens_a_session(console: Any) -> None:
    refused = await sign_in(console, SHOP_KEY)
    assert refused.status == 401
    assert "not valid for the console" in await refused.text()
    assert COOKIE_NAME not in refused.cookies

    accepted = await sign_in(console, STAFF_KEY, f"/people/{PERSON}")
    assert accepted.status == 303 and accepted.headers["Location"] == f"/people/{PERSON}"
    cookie = accepted.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and STAFF_KEY not in cookie
    page = await console.get("/")
    assert page.status == 200 and "signed in as staff" in await page.text()
    assert page.headers["Cache-Control"] == "no-store"

    await console.post("/logout", allow_redirects=False)
    assert (await console.get("/", allow_redirects=False)).status == 303


async def test_search_goes_to_the_person_page(console: Any) -> None:
    await sign_in(console)
    found = await console.post("/search", data={"kind": "COOKIE", "value": "c-123"}, allow_redirects=False)
    assert found.headers["Location"] == f"/people/{PERSON}"
    unknown = await console.post("/search", data={"kind": "COOKIE", "value": "never-seen"}, allow_redirects=False)
    assert unknown.status == 404 and "No such person" in await unknown.text()
    assert 'value="never-seen"' in await unknown.text()  # the form keeps what staff typed
    by_id = await console.post("/search", data={"kind": "PERSON_ID", "value": SURVIVOR}, allow_redirects=False)
    assert by_id.headers["Location"] == f"/people/{SURVIVOR}"
    bad = await console.post("/search", data={"kind": "EMAIL_SHA256", "value": "not-an-address"})
    assert bad.status == 400 and "e-mail address" in await bad.text()
    await console.post("/search", data={"kind": "EMAIL_SHA256", "value": "Camille@example.com"})
    assert console.services.looked_up[-1].value == hashlib.sha256(b"camille@example.com").hexdigest()


async def test_the_person_page_shows_every_part(console: Any) -> None:
    await sign_in(console)
    page = await console.get(f"/people/{PERSON}")
    text = await page.text()
    for expected in (
        PERSON,
        "2nd visit",
        "hesitating between two products",
        "c-123",
        "Cashmere sweater",
        "Women &gt; Knitwear",
        "Abandoned cart",
        "Similar items",
        "Like Cashmere sweater",
        "bandit_unavailable",
        "Didn&#39;t find what you wanted last time?",
        "Never asked",
        "Older events",
    ):
        assert expected in text, expected
    assert re.search(r"<span class=\"pill\">Sent</span>", text)
    french = await (await console.get(f"/people/{PERSON}?lang=fr")).text()
    assert "2e visite" in french


async def test_a_service_that_does_not_answer_leaves_the_rest_of_the_page(console: Any) -> None:
    await sign_in(console)
    console.services.down = {"messaging", "decision"}
    page = await console.get(f"/people/{PERSON}")
    text = await page.text()
    assert page.status == 200
    assert "The messaging service did not answer (UNAVAILABLE)." in text
    assert "The decision service did not answer (UNAVAILABLE)." in text
    assert "2nd visit" in text and "Cashmere sweater" in text
    console.services.down = {"identity"}
    assert (await console.get(f"/people/{PERSON}")).status == 503


async def test_unknown_and_merged_persons(console: Any) -> None:
    await sign_in(console)
    assert (await console.get(f"/people/{'0' * 32}")).status == 404
    assert (await console.get("/people/not-an-id")).status == 404
    merged = await console.get(f"/people/{'1' * 32}", allow_redirects=False)
    assert merged.status == 303 and merged.headers["Location"] == f"/people/{SURVIVOR}"


async def test_the_segments_page_lists_segments_and_experiment_reports(console: Any) -> None:
    await sign_in(console)
    text = await (await console.get("/segments")).text()
    assert "Knitwear fans" in text and "lead-test" in text and "holdout" in text


async def test_a_draining_console_fails_its_health_check_and_still_serves_pages() -> None:
    console = Console(cast(RapportPeers, FakeServices()), KEYS, SessionSigner(SECRET, 3600))
    async with test_utils.TestClient(test_utils.TestServer(console.app())) as client:
        assert (await client.get("/healthz")).status == 200
        console.drain()
        assert (await client.get("/healthz")).status == 503
        assert (await client.get("/login")).status == 200


# ---------------------------------------------------------------------------------- trace context
async def test_a_page_passes_the_callers_trace_context_on_to_the_services(console: Any) -> None:
    await sign_in(console)
    headers = {"traceparent": CALLER_TRACEPARENT, "tracestate": "vendor=1"}
    assert (await console.get(f"/people/{PERSON}", headers=headers)).status == 200
    assert console.services.sent_metadata[-1] == (
        *PEER_METADATA,
        ("traceparent", CALLER_TRACEPARENT),
        ("tracestate", "vendor=1"),
    )
    await console.get(f"/people/{PERSON}")
    assert console.services.sent_metadata[-1] == PEER_METADATA
    await console.get(f"/people/{PERSON}", headers={"traceparent": "00-not-a-trace"})
    assert console.services.sent_metadata[-1] == PEER_METADATA


async def test_with_spans_a_page_is_a_server_span_and_its_calls_are_its_children(console: Any) -> None:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-console-test", SimpleSpanProcessor(memory))
    tracing.use_span_export(export)
    try:
        await sign_in(console)
        await console.get(f"/people/{PERSON}", headers={"traceparent": CALLER_TRACEPARENT})
        await console.get("/healthz")
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    spans = memory.get_finished_spans()
    page = next(span for span in spans if span.name == "GET /people/{person_id}")
    assert page.kind is SpanKind.SERVER and page.parent is not None and page.context is not None
    assert (page.context.trace_id, page.parent.span_id) == (int(CALLER_TRACEPARENT[3:35], 16), 0x00F067AA0BA902B7)
    attributes = dict(page.attributes or {})
    assert attributes["http.route"] == "/people/{person_id}" and attributes["http.response.status_code"] == 200
    assert PERSON not in page.name and PERSON not in repr(attributes)
    call = next(span for span in spans if span.name == "rapport.identity.v1.IdentityService/GetPerson")
    assert call.kind is SpanKind.CLIENT and call.parent is not None and call.context is not None
    assert call.parent.span_id == page.context.span_id
    assert f"-{call.context.span_id:016x}-" in dict(console.services.sent_metadata[-1])["traceparent"]
    sign_in_span = next(span for span in spans if span.name == "POST /login")
    assert dict(sign_in_span.attributes or {})["http.response.status_code"] == 303
    assert sign_in_span.status.status_code is not StatusCode.ERROR
    assert not any("healthz" in span.name for span in spans)


class RecordingIdentityStub:
    """Identity's Lookup as RapportPeers calls it: what it was sent, and a chosen answer."""

    def __init__(self) -> None:
        self.failure: grpc.StatusCode | None = None
        self.calls: list[tuple[identity_pb.LookupRequest, Any, float]] = []

    async def Lookup(self, request: identity_pb.LookupRequest, metadata: Any, timeout: float) -> Any:
        self.calls.append((request, metadata, timeout))
        if self.failure is not None:
            raise grpc.aio.AioRpcError(self.failure, grpc.aio.Metadata(), grpc.aio.Metadata(), "details")
        return identity_pb.LookupResponse(person_id=PERSON, identifier=request.identifier)


async def test_peers_look_up_an_identifier_read_only_with_the_pages_trace_context() -> None:
    settings = load_settings(ConsoleSettings, {}, identity_api_key="rk_console_to_identity", rpc_timeout_s=2.0)
    peers = RapportPeers(settings)
    stub = RecordingIdentityStub()
    peers._identity._stub = stub  # type: ignore[assignment]
    cookie = IdentifierKey(IdentifierType.COOKIE, "c-123")
    try:
        trace = tracing.PASS_THROUGH.start("GET /", CALLER_TRACEPARENT, None, "")
        try:
            assert await peers.lookup(cookie) == PERSON
        finally:
            assert trace is not None
            trace.end("303")
        request, metadata, timeout = stub.calls[-1]
        assert (request.identifier.type, request.identifier.value, timeout) == (
            common.IDENTIFIER_TYPE_COOKIE,
            "c-123",
            2.0,
        )
        assert metadata == (*PEER_METADATA, ("traceparent", CALLER_TRACEPARENT))
        stub.failure = grpc.StatusCode.NOT_FOUND
        assert await peers.lookup(cookie) is None  # never seen: no one, and nothing created
        assert stub.calls[-1][1] == PEER_METADATA  # outside a page's trace, nothing more is sent
        stub.failure = grpc.StatusCode.UNAVAILABLE
        with pytest.raises(PeerError) as raised:
            await peers.lookup(cookie)
        assert (raised.value.service, raised.value.code) == ("identity", grpc.StatusCode.UNAVAILABLE)
    finally:
        await peers.close()
