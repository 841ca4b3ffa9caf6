"""What the console's pages show, as plain values: the services' answers (protobuf) turned into
rows a template prints as they are. Pure functions of their inputs and of `now_ms`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.messaging.v1 import messaging_service_pb2 as messaging_pb
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from services.common.errors import InvalidArgument
from services.common.identifiers import IdentifierKey, IdentifierType, parse_identifier, parse_person_id

PERSON_ID_SEARCH = "PERSON_ID"
# What the search form offers, in its order: (value, label).
SEARCH_KINDS: tuple[tuple[str, str], ...] = (
    (PERSON_ID_SEARCH, "Person id"),
    ("CUSTOMER_ID", "Customer id"),
    ("EMAIL_SHA256", "E-mail (address or SHA-256)"),
    ("PHONE_SHA256", "Phone (number or SHA-256)"),
    ("COOKIE", "Cookie"),
    ("DEVICE", "Device"),
    ("APP_INSTALL", "App install"),
    ("AD_ID", "Advertising id"),
)
NOTHING = "—"


# ---------------------------------------------------------------------------------- formatting
def label(enum_name: str, prefix: str = "") -> str:
    """`SITUATION_ABANDONED_CART` -> `Abandoned cart`; unspecified or empty -> an em dash."""
    name = enum_name.removeprefix(prefix)
    if not name or name == "UNSPECIFIED":
        return NOTHING
    words = name.replace("_", " ").lower()
    return words[0].upper() + words[1:]


def _relative(delta_ms: int) -> str:
    seconds = abs(delta_ms) // 1000
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            amount = f"{seconds // size} {unit}"
            break
    else:
        return "just now"
    return f"{amount} ago" if delta_ms >= 0 else f"in {amount}"


def when_ms(at_ms: int, now_ms: int) -> str:
    """`2025-03-01 14:05 UTC (3 d ago)`; an em dash for no time."""
    if at_ms <= 0:
        return NOTHING
    stamp = datetime.fromtimestamp(at_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"{stamp} ({_relative(now_ms - at_ms)})"


def when(timestamp: Timestamp, now_ms: int) -> str:
    return when_ms(timestamp.ToMilliseconds(), now_ms)


def money(amount: event_pb2.Money) -> str:
    if not amount.currency_code and not amount.amount:
        return NOTHING
    return f"{amount.amount:,.2f} {amount.currency_code}".strip()


def _identifier_type(number: int) -> str:
    return str(identifier_pb2.IdentifierType.Name(number)).removeprefix("IDENTIFIER_TYPE_")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- search
@dataclass(frozen=True)
class SearchTarget:
    """What staff asked for: a person id, or an identifier to resolve."""

    person_id: str = ""
    identifier: IdentifierKey | None = None


class SearchError(ValueError):
    """The search cannot be run; the message says what to fix (never echoing the value)."""


def parse_search(kind: str, value: str) -> SearchTarget:
    value = value.strip()
    if not value:
        raise SearchError("Type an identifier or a person id.")
    if kind == PERSON_ID_SEARCH:
        try:
            return SearchTarget(person_id=parse_person_id(value.lower()))
        except InvalidArgument:
            raise SearchError("A person id is 32 hexadecimal digits.") from None
    try:
        identifier_type = IdentifierType[kind]
    except KeyError:
        raise SearchError("Choose what kind of identifier this is.") from None
    try:
        return SearchTarget(identifier=parse_identifier(identifier_type.value, value, "identifier"))
    except InvalidArgument as error:
        description = error.violations[0].description if error.violations else "is not valid"
        raise SearchError(f"This {label(kind).lower()} {description}.") from None


# ---------------------------------------------------------------------------------- person
@dataclass(frozen=True)
class IdentifierRow:
    type: str
    value: str
    first_seen: str
    device: bool


@dataclass(frozen=True)
class MergeRow:
    kind: str
    from_person_id: str
    to_person_id: str
    at: str
    identifiers: str


@dataclass(frozen=True)
class PersonHeader:
    person_id: str
    first_seen: str
    last_seen: str
    identifiers: list[IdentifierRow]
    merges: list[MergeRow]


def person_header(person: identity_pb.Person, now_ms: int) -> PersonHeader:
    identifiers = [
        IdentifierRow(
            type=label(_identifier_type(linked.identifier.type)),
            value=linked.identifier.value,
            first_seen=when(linked.first_seen_time, now_ms),
            device=IdentifierType(linked.identifier.type).is_device if linked.identifier.type else False,
        )
        for linked in person.identifiers
    ]
    merges = [
        MergeRow(
            kind=label(identity_pb.MergeKind.Name(merge.kind), "MERGE_KIND_"),
            from_person_id=merge.from_person_id,
            to_person_id=merge.to_person_id,
            at=when(merge.event_time, now_ms),
            identifiers=", ".join(
                f"{label(_identifier_type(identifier.type))} {identifier.value}" for identifier in merge.identifiers
            ),
        )
        for merge in person.merges
    ]
    return PersonHeader(
        person.person_id, when(person.first_seen_time, now_ms), when(person.last_seen_time, now_ms), identifiers, merges
    )


@dataclass(frozen=True)
class Fact:
    label: str
    value: str


@dataclass(frozen=True)
class AffinityRow:
    key: str
    score: str
    share_percent: int


@dataclass(frozen=True)
class CartRow:
    product_id: str
    title: str
    quantity: int
    price: str


@dataclass(frozen=True)
class PurchaseRow:
    order_id: str
    at: str
    total: str
    products: str
    main_category: str


@dataclass(frozen=True)
class TraitRow:
    name: str
    strength_percent: int
    evidence: list[str]


@dataclass
class ProfileView:
    facts: list[Fact]
    device: list[Fact]
    session: list[Fact]
    categories: list[AffinityRow]
    brands: list[AffinityRow]
    price_bands: list[AffinityRow]
    cart: list[CartRow]
    cart_facts: list[Fact]
    purchases: list[PurchaseRow]
    purchase_facts: list[Fact]
    traits: list[TraitRow]
    attributes: list[Fact]


def _affinities(affinities: Sequence[profile_pb.Affinity], shown: int = 8) -> list[AffinityRow]:
    return [
        AffinityRow(affinity.key, f"{affinity.score:.2f}", round(affinity.share * 100))
        for affinity in affinities[:shown]
    ]


def _purchase_row(purchase: profile_pb.PurchaseSummary, now_ms: int) -> PurchaseRow:
    return PurchaseRow(
        order_id=purchase.order_id,
        at=when(purchase.purchase_time, now_ms),
        total=money(purchase.total),
        products=", ".join(purchase.product_ids),
        main_category=purchase.main_category or NOTHING,
    )


def profile_view(profile: profile_pb.Profile, now_ms: int) -> ProfileView:
    visits = profile.visits
    rfm = profile.rfm
    session = profile.current_session
    cart = profile.cart
    purchases = profile.purchases
    facts = [
        Fact("Visits", str(visits.visit_count)),
        Fact("First visit", when(visits.first_visit_time, now_ms)),
        Fact("Last visit", when(visits.last_visit_time, now_ms)),
        Fact(
            "Days between the last two visits",
            str(visits.days_since_previous_visit) if visits.days_since_previous_visit >= 0 else NOTHING,
        ),
        Fact("Events", str(profile.event_count)),
        Fact("Last event", when(profile.last_event_time, now_ms)),
        Fact(
            "RFM",
            f"{rfm.recency_score}/{rfm.frequency_score}/{rfm.monetary_score} {rfm.segment}".strip()
            if rfm.recency_score
            else NOTHING,
        ),
        Fact("VIP tier", profile.vip_tier or NOTHING),
    ]
    device = [
        Fact("Device", profile.device.device_type or NOTHING),
        Fact("Operating system", profile.device.os or NOTHING),
        Fact("Browser", profile.device.browser or NOTHING),
        Fact("Place", ", ".join(part for part in (profile.geo.city, profile.geo.country) if part) or NOTHING),
    ]
    utm = " / ".join(part for part in (session.utm_source, session.utm_medium, session.utm_campaign) if part)
    session_facts = [
        Fact("Started", when(session.start_time, now_ms)),
        Fact("Pages", str(session.page_count)),
        Fact("Traffic source", label(profile_pb.TrafficSource.Name(session.traffic_source), "TRAFFIC_SOURCE_")),
        Fact("Campaign (source / medium / name)", utm or NOTHING),
        Fact("Landing page", session.landing_page_url or NOTHING),
        Fact("Categories", ", ".join(f"{c.label or c.key} x{c.count}" for c in session.categories) or NOTHING),
        Fact("Products viewed", ", ".join(f"{p.label or p.key} x{p.count}" for p in session.products) or NOTHING),
        Fact("Searches", ", ".join(session.searches) or NOTHING),
    ]
    cart_rows = [
        CartRow(
            line.product.product_id,
            line.product.title or line.product.product_id,
            line.quantity,
            money(line.product.price),
        )
        for line in cart.lines
    ]
    cart_facts = [
        Fact("Value", money(cart.value)),
        Fact("Last change", when(cart.last_change_time, now_ms)),
        Fact("Abandoned", f"yes, since {when(cart.abandoned_since_time, now_ms)}" if cart.abandoned else "no"),
    ]
    purchase_facts = [
        Fact("Orders", str(purchases.order_count)),
        Fact("Spent", money(purchases.total_spent)),
        Fact("Average order", money(purchases.average_order_value)),
        Fact("First order", when(purchases.first_purchase_time, now_ms)),
    ]
    return ProfileView(
        facts=facts,
        device=device,
        session=session_facts,
        categories=_affinities(profile.category_affinities),
        brands=_affinities(profile.brand_affinities),
        price_bands=_affinities(profile.price_band_affinities),
        cart=cart_rows,
        cart_facts=cart_facts if cart_rows else [],
        purchases=[_purchase_row(purchase, now_ms) for purchase in purchases.recent_purchases],
        purchase_facts=purchase_facts if purchases.order_count else [],
        traits=[
            TraitRow(label(trait.name), round(trait.strength * 100), list(trait.evidence)) for trait in profile.traits
        ],
        attributes=[Fact(name, value) for name, value in sorted(profile.attributes.items())],
    )


# ---------------------------------------------------------------------------------- timeline
@dataclass(frozen=True)
class TimelineRow:
    at: str
    kind: str
    what: str
    where: str


def event_row(event: event_pb2.Event, now_ms: int) -> TimelineRow:
    kind = event_pb2.EventType.Name(event.type)
    product = event.product.title or event.product.product_id
    if event.HasField("order") and event.order.order_id:
        what = f"order {event.order.order_id}, {len(event.order.lines)} lines, {money(event.order.total)}"
    elif event.search_query:
        what = f"“{event.search_query}”"
    elif product:
        quantity = f" x{event.quantity}" if event.quantity > 1 else ""
        path = " > ".join(event.product.category_path)
        what = f"{product}{quantity}" + (f" ({path})" if path else "")
    elif event.coupon_code:
        what = f"coupon {event.coupon_code}"
    elif event.message_id:
        what = f"message {event.message_id}"
    else:
        what = NOTHING
    context = event.context
    where = ", ".join(part for part in (context.device_type, context.page_url, context.utm_source) if part)
    return TimelineRow(when(event.event_time, now_ms), label(kind, "EVENT_TYPE_"), what, where or NOTHING)


# ---------------------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class DecisionItemRow:
    title: str
    product_id: str
    price: str
    strategy: str
    reason: str


@dataclass(frozen=True)
class DecisionView:
    decision_id: str
    at: str
    placement: str
    situation: str
    lead_strategy: str
    segments: str
    experiment: str
    headline: str
    body: str
    degraded_reasons: list[str]
    items: list[DecisionItemRow]
    situation_key: str


def decision_view(decision: decision_pb.RecordedDecision, now_ms: int) -> DecisionView:
    return DecisionView(
        decision_id=decision.decision_id,
        at=when(decision.decide_time, now_ms),
        placement=label(decision_pb.Placement.Name(decision.placement), "PLACEMENT_"),
        situation=(
            label(decision_pb.Situation.Name(decision.situation), "SITUATION_")
            if decision.situation
            else "Unknown (no profile in time)"
        ),
        lead_strategy=label(decision_pb.Strategy.Name(decision.lead_strategy), "STRATEGY_"),
        segments=", ".join(decision.segment_ids) or NOTHING,
        experiment=f"{decision.experiment_id} / {decision.experiment_arm}" if decision.experiment_id else NOTHING,
        headline=decision.message.headline,
        body=decision.message.body,
        degraded_reasons=list(decision.degraded_reasons),
        items=[
            DecisionItemRow(
                title=item.title or item.product_id,
                product_id=item.product_id,
                price=money(item.price),
                strategy=label(decision_pb.Strategy.Name(item.strategy), "STRATEGY_"),
                reason=item.reason or NOTHING,
            )
            for item in decision.items
        ],
        situation_key=decision.situation_key,
    )


# ---------------------------------------------------------------------------------- messaging
@dataclass(frozen=True)
class DeliveryRow:
    delivery_id: str
    created: str
    trigger: str
    channel: str
    status: str
    reason: str
    attempts: int
    sent: str
    products: str
    last_error: str


def delivery_row(delivery: messaging_pb.Delivery, now_ms: int) -> DeliveryRow:
    return DeliveryRow(
        delivery_id=delivery.delivery_id,
        created=when(delivery.created_at, now_ms),
        trigger=label(messaging_pb.TriggerKind.Name(delivery.kind), "TRIGGER_KIND_"),
        channel=label(messaging_pb.Channel.Name(delivery.channel), "CHANNEL_"),
        status=label(messaging_pb.DeliveryStatus.Name(delivery.status), "DELIVERY_STATUS_"),
        reason=label(delivery.reason) if delivery.reason else NOTHING,
        attempts=delivery.attempts,
        sent=when(delivery.sent_at, now_ms),
        products=", ".join(delivery.product_ids) or NOTHING,
        last_error=delivery.last_error or NOTHING,
    )


@dataclass(frozen=True)
class ConsentRow:
    channel: str
    state: str
    updated: str


def consent_rows(consents: Sequence[messaging_pb.ChannelConsent], now_ms: int) -> list[ConsentRow]:
    """Every channel, asked or not: a person never asked gets nothing, and staff should see that."""
    given = {consent.channel: consent for consent in consents if consent.state}
    rows = []
    for channel in (messaging_pb.CHANNEL_EMAIL, messaging_pb.CHANNEL_PUSH, messaging_pb.CHANNEL_RETARGETING):
        consent = given.get(channel)
        rows.append(
            ConsentRow(
                channel=label(messaging_pb.Channel.Name(channel), "CHANNEL_"),
                state=label(messaging_pb.ConsentState.Name(consent.state), "CONSENT_STATE_")
                if consent is not None
                else "Never asked",
                updated=when(consent.updated_at, now_ms) if consent is not None else NOTHING,
            )
        )
    return rows


# ---------------------------------------------------------------------------------- segments
@dataclass(frozen=True)
class SegmentRow:
    segment_id: str
    name: str
    rule: str
    description: str


def segment_rows(segments: Sequence[decision_pb.Segment]) -> list[SegmentRow]:
    return [SegmentRow(s.segment_id, s.name, s.rule, s.description or NOTHING) for s in segments]


@dataclass(frozen=True)
class ArmRow:
    arm: str
    strategy: str
    exposures: int
    conversions: int
    rate: str
    interval: str
    uplift: str
    difference: str
    p_value: str
    significant: bool


@dataclass
class ExperimentView:
    experiment_id: str
    holdout_share: str
    placements: str
    arms: list[ArmRow] = field(default_factory=list)
    unavailable: str = ""


def _percent(value: float) -> str:
    return f"{value * 100:.1f} %"


def experiment_view(
    experiment: decision_pb.Experiment, report: decision_pb.GetExperimentReportResponse | None, unavailable: str = ""
) -> ExperimentView:
    """An experiment with its arms' figures (clicks as conversions), holdout first."""
    forced = {arm.name: arm.strategy for arm in experiment.arms}
    view = ExperimentView(
        experiment_id=experiment.experiment_id,
        holdout_share=_percent(experiment.holdout_share),
        placements=", ".join(label(decision_pb.Placement.Name(p), "PLACEMENT_") for p in experiment.placements)
        or "All",
        unavailable=unavailable,
    )
    if report is None:
        return view
    for arm in report.arms:
        holdout = arm.arm == "holdout"
        strategy: Any = forced.get(arm.arm, 0)
        view.arms.append(
            ArmRow(
                arm=arm.arm,
                strategy="Trending (not personalised)"
                if holdout
                else (label(decision_pb.Strategy.Name(strategy), "STRATEGY_") if strategy else "Bandit chooses"),
                exposures=arm.exposures,
                conversions=arm.conversions,
                rate=_percent(arm.conversion_rate),
                interval=f"[{_percent(arm.rate_low)}, {_percent(arm.rate_high)}]",
                uplift=NOTHING if holdout else f"{arm.uplift * 100:+.1f} %",
                difference=NOTHING if holdout else f"[{_percent(arm.difference_low)}, {_percent(arm.difference_high)}]",
                p_value=NOTHING if holdout else f"{arm.p_value:.3f}",
                significant=not holdout and arm.exposures > 0 and arm.p_value < 0.05,
            )
        )
    return view
