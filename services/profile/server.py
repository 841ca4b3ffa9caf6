"""Thin gRPC handlers of rapport.profile.v1.ProfileService: validate, convert, call Profiles."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2, status_pb2

from rapport.common.v1 import event_pb2
from rapport.profile.v1 import profile_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2_grpc as pb_grpc
from services.common.clock import now_ms as _now_ms
from services.common.errors import FieldViolation, InvalidArgument, RapportError, to_rpc_status
from services.common.identifiers import IdentifierKey, parse_identifier, parse_person_id
from services.profile.adapters.cassandra_log import TimelineCursor
from services.profile.codec import CheckedEvent, check_event
from services.profile.domain.describe import describe
from services.profile.domain.traits import Trait, detect_traits
from services.profile.domain.view import (
    cart_view,
    price_band_affinities,
    top_affinities,
    vip_tier,
)
from services.profile.live import LiveProfile
from services.profile.profiles import Profiles, validate_attributes

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProfileService"].full_name
ERROR_DOMAIN = "rapport.profile"
MAX_BATCH_EVENTS = 1000
MAX_CRM_RECORDS = 1000
MAX_TIMELINE_PAGE = 500
LANGUAGES = ("en", "fr")

SCOPE_TRACK = "profile.track"
SCOPE_READ = "profile.read"
SCOPE_ADMIN = "profile.admin"
METHOD_SCOPES = {
    f"/{SERVICE_NAME}/Track": SCOPE_TRACK,
    f"/{SERVICE_NAME}/TrackBatch": SCOPE_TRACK,
    f"/{SERVICE_NAME}/GetProfile": SCOPE_READ,
    f"/{SERVICE_NAME}/Describe": SCOPE_READ,
    f"/{SERVICE_NAME}/SetAttributes": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/ImportCrm": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/ExportPerson": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/ForgetPerson": SCOPE_ADMIN,
}

_OK = status_pb2.Status(code=code_pb2.OK)


def timestamp(ms: int) -> Timestamp | None:
    if ms <= 0:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _money(amount: float, currency: str) -> event_pb2.Money:
    return event_pb2.Money(amount=round(amount, 2), currency_code=currency)


def _error_status(error: RapportError) -> status_pb2.Status:
    return to_rpc_status(error, ERROR_DOMAIN, "")


class ProfileServicer(pb_grpc.ProfileServiceServicer):
    def __init__(self, profiles: Profiles, max_future_ms: int, max_age_ms: int) -> None:
        self._profiles = profiles
        self._max_future_ms = max_future_ms
        self._max_age_ms = max_age_ms

    def _check(self, event: event_pb2.Event, path: str, now_ms: int) -> CheckedEvent:
        return check_event(event, path, now_ms, self._max_future_ms, self._max_age_ms)

    async def _person(self, selector: pb.PersonSelector, field: str = "person", create: bool = False) -> str:
        which = selector.WhichOneof("selector")
        if which == "identifier":
            identifier = parse_identifier(
                int(selector.identifier.type), selector.identifier.value, f"{field}.identifier"
            )
            return await self._profiles.person_of(identifier, None, create)
        if which == "person_id":
            return await self._profiles.person_of(None, parse_person_id(selector.person_id, f"{field}.person_id"))
        raise InvalidArgument([FieldViolation(field, "must give an identifier or a person_id")])

    # ------------------------------------------------------------------ tracking
    async def Track(self, request: pb.TrackRequest, context: grpc.aio.ServicerContext) -> pb.TrackResponse:
        if not request.HasField("event"):
            raise InvalidArgument([FieldViolation("event", "must be set")])
        checked = self._check(request.event, "event", _now_ms())
        outcome = (await self._profiles.track([checked]))[0]
        return pb.TrackResponse(person_id=outcome.person_id, duplicate=outcome.duplicate)

    async def TrackBatch(
        self, request: pb.TrackBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.TrackBatchResponse:
        count = len(request.events)
        if not 1 <= count <= MAX_BATCH_EVENTS:
            raise InvalidArgument([FieldViolation("events", f"must hold 1 to {MAX_BATCH_EVENTS} events, got {count}")])
        now_ms = _now_ms()
        results = [pb.EventResult(index=index, event_id=event.event_id) for index, event in enumerate(request.events)]
        valid: list[CheckedEvent] = []
        valid_indexes: list[int] = []
        for index, event in enumerate(request.events):
            try:
                valid.append(self._check(event, f"events[{index}]", now_ms))
                valid_indexes.append(index)
            except InvalidArgument as error:
                results[index].status.CopyFrom(_error_status(error))
        outcomes = await self._profiles.track(valid)
        for index, outcome in zip(valid_indexes, outcomes, strict=True):
            results[index].person_id = outcome.person_id
            results[index].duplicate = outcome.duplicate
            results[index].status.CopyFrom(_OK)
        return pb.TrackBatchResponse(results=results, accepted_count=len(valid), rejected_count=count - len(valid))

    # ------------------------------------------------------------------ reading
    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        if not 0 <= request.timeline_page_size <= MAX_TIMELINE_PAGE:
            raise InvalidArgument([FieldViolation("timeline_page_size", f"must be between 0 and {MAX_TIMELINE_PAGE}")])
        cursor = (
            TimelineCursor.decode(request.timeline_page_token, "timeline_page_token")
            if request.timeline_page_token
            else None
        )
        person_id = await self._person(request.person)
        live = await self._profiles.live(person_id)
        response = pb.GetProfileResponse(
            profile=self._profile_proto(live, _now_ms()),
            identifiers=await self._profiles.identifiers_of(person_id),
        )
        if request.timeline_page_size:
            events, next_cursor = await self._profiles.timeline(person_id, request.timeline_page_size, cursor)
            response.timeline.extend(events)
            response.next_timeline_page_token = next_cursor.encode() if next_cursor else ""
        return response

    async def Describe(self, request: pb.DescribeRequest, context: grpc.aio.ServicerContext) -> pb.DescribeResponse:
        language = (request.language or self._profiles.rules.language).lower()
        if language not in LANGUAGES:
            raise InvalidArgument([FieldViolation("language", f"must be one of {', '.join(LANGUAGES)}")])
        person_id = await self._person(request.person)
        live = await self._profiles.live(person_id)
        now_ms = _now_ms()
        traits = detect_traits(live.state, now_ms, live.bands)
        sentences = describe(
            live.state,
            traits,
            now_ms,
            live.bands,
            language,
            abandon_after_ms=self._profiles.rules.cart_abandoned_after_ms,
        )
        return pb.DescribeResponse(
            person_id=person_id,
            sentences=sentences,
            summary="; ".join(sentences),
            traits=[_trait_proto(trait) for trait in traits],
        )

    # ------------------------------------------------------------------ CRM
    async def SetAttributes(
        self, request: pb.SetAttributesRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAttributesResponse:
        attributes = validate_attributes(request.attributes, "attributes")
        person_id = await self._person(request.person, create=True)
        await self._profiles.set_attributes(person_id, attributes)
        return pb.SetAttributesResponse(person_id=person_id)

    async def ImportCrm(self, request: pb.ImportCrmRequest, context: grpc.aio.ServicerContext) -> pb.ImportCrmResponse:
        count = len(request.records)
        if not 1 <= count <= MAX_CRM_RECORDS:
            raise InvalidArgument([FieldViolation("records", f"must hold 1 to {MAX_CRM_RECORDS} records, got {count}")])
        statuses: list[status_pb2.Status] = []
        imported = 0
        parsed: list[tuple[int, IdentifierKey, dict[str, str]]] = []
        for index, record in enumerate(request.records):
            try:
                identifier = parse_identifier(
                    int(record.identifier.type), record.identifier.value, f"records[{index}].identifier"
                )
                attributes = validate_attributes(record.attributes, f"records[{index}].attributes")
                parsed.append((index, identifier, attributes))
                statuses.append(_OK)
            except InvalidArgument as error:
                statuses.append(_error_status(error))
        for index, identifier, attributes in parsed:
            try:
                person_id = await self._profiles.person_of(identifier, None, create=True)
                await self._profiles.set_attributes(person_id, attributes)
                imported += 1
            except RapportError as error:
                statuses[index] = _error_status(error)
        return pb.ImportCrmResponse(statuses=statuses, imported_count=imported)

    # ------------------------------------------------------------------ GDPR
    async def ExportPerson(
        self, request: pb.ExportPersonRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportPersonResponse]:
        person_id = await self._person(request.person)
        live = await self._profiles.live(person_id)
        yield pb.ExportPersonResponse(
            profile=self._profile_proto(live, _now_ms()),
            identifiers=await self._profiles.identifiers_of(person_id),
        )
        async for events in self._profiles.export(person_id):
            yield pb.ExportPersonResponse(events=events)

    async def ForgetPerson(
        self, request: pb.ForgetPersonRequest, context: grpc.aio.ServicerContext
    ) -> pb.ForgetPersonResponse:
        person_id = await self._person(request.person)
        erased, events = await self._profiles.forget(person_id)
        return pb.ForgetPersonResponse(erased_person_ids=erased, erased_event_count=events)

    # ------------------------------------------------------------------ conversion
    def _profile_proto(self, live: LiveProfile, now_ms: int) -> pb.Profile:
        state = live.state
        rules = self._profiles.rules
        half_life = rules.fold.affinity_half_life_ms
        profile = pb.Profile(
            person_id=state.person_id,
            vip_tier=vip_tier(live.rfm, live.attributes),
            attributes=live.attributes,
            traits=[_trait_proto(trait) for trait in detect_traits(state, now_ms, live.bands)],
            device=pb.Device(device_type=state.device_type, os=state.os, browser=state.browser),
            geo=pb.Geo(country=state.country, city=state.city),
            event_count=state.event_count,
            last_event_time=timestamp(state.last_event_ms),
            rfm=pb.Rfm(
                recency_score=live.rfm.recency,
                frequency_score=live.rfm.frequency,
                monetary_score=live.rfm.monetary,
                segment=live.rfm.segment,
            ),
        )
        previous_days = (
            (state.session.start_ms - state.previous_visit_ms) // 86_400_000
            if state.session is not None and state.previous_visit_ms
            else -1
        )
        profile.visits.CopyFrom(
            pb.Visits(
                visit_count=state.visit_count,
                first_visit_time=timestamp(state.first_visit_ms),
                previous_visit_time=timestamp(state.previous_visit_ms),
                last_visit_time=timestamp(state.session.start_ms if state.session else 0),
                days_since_previous_visit=int(previous_days),
                first_visit=state.visit_count <= 1,
            )
        )
        if state.session is not None:
            session = state.session
            profile.current_session.CopyFrom(
                pb.Session(
                    start_time=timestamp(session.start_ms),
                    last_event_time=timestamp(session.last_ms),
                    page_count=session.page_count,
                    categories=[
                        pb.Counted(key=key, label=key.rpartition(" > ")[2], count=count)
                        for key, count in sorted(session.categories.items(), key=lambda item: (-item[1], item[0]))
                    ],
                    products=[
                        pb.Counted(key=key, label=session.product_titles.get(key, ""), count=count)
                        for key, count in sorted(session.products.items(), key=lambda item: (-item[1], item[0]))
                    ],
                    searches=session.searches,
                    traffic_source=pb.TrafficSource.Value(f"TRAFFIC_SOURCE_{session.traffic_source}"),
                    utm_campaign=session.utm_campaign,
                    utm_source=session.utm_source,
                    utm_medium=session.utm_medium,
                    landing_page_url=session.landing_page_url,
                )
            )
        profile.category_affinities.extend(
            pb.Affinity(key=a.key, score=a.score, share=a.share)
            for a in top_affinities(state.category_affinity, now_ms, half_life)
        )
        profile.brand_affinities.extend(
            pb.Affinity(key=a.key, score=a.score, share=a.share)
            for a in top_affinities(state.brand_affinity, now_ms, half_life)
        )
        profile.price_band_affinities.extend(
            pb.Affinity(key=a.key, score=a.score, share=a.share)
            for a in price_band_affinities(state, now_ms, half_life, live.bands)
        )
        cart = cart_view(state, now_ms, rules.cart_abandoned_after_ms)
        profile.cart.CopyFrom(
            pb.Cart(
                lines=[
                    pb.CartLine(
                        product=event_pb2.ProductRef(
                            product_id=product_id,
                            title=line.title,
                            category_path=line.category.split(" > ") if line.category else [],
                            brand=line.brand,
                            price=_money(line.price, line.currency),
                        ),
                        quantity=line.quantity,
                    )
                    for product_id, line in cart.lines
                ],
                value=_money(cart.value, cart.currency),
                last_change_time=timestamp(cart.last_change_ms),
                abandoned=cart.abandoned,
                abandoned_since_time=timestamp(cart.abandoned_since_ms),
            )
        )
        purchases = [
            pb.PurchaseSummary(
                order_id=record.order_id,
                purchase_time=timestamp(record.time_ms),
                total=_money(record.total, record.currency),
                product_ids=record.product_ids,
                main_category=record.main_category,
            )
            for record in state.recent_purchases
        ]
        profile.purchases.CopyFrom(
            pb.Purchases(
                order_count=state.order_count,
                total_spent=_money(state.total_spent, state.currency),
                average_order_value=_money(
                    state.total_spent / state.order_count if state.order_count else 0.0, state.currency
                ),
                last_purchase=purchases[0] if purchases else None,
                recent_purchases=purchases,
                first_purchase_time=timestamp(state.first_purchase_ms),
            )
        )
        return profile


def _trait_proto(trait: Trait) -> pb.Trait:
    return pb.Trait(
        name=trait.name, strength=trait.strength, evidence=list(trait.evidence), product_ids=list(trait.product_ids)
    )
