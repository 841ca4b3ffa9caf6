"""Thin gRPC handlers of rapport.messaging.v1.MessagingService: validate, convert, call Messaging."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as pb_grpc
from services.common.errors import FieldViolation, InvalidArgument
from services.common.identifiers import parse_identifier, parse_person_id
from services.common.identity_client import IdentityClient
from services.messaging.adapters.cassandra_store import Contact
from services.messaging.domain.delivery import Delivery
from services.messaging.domain.policy import ConsentState
from services.messaging.domain.tokens import InvalidToken
from services.messaging.domain.triggers import Channel, TriggerKind, TriggerRule
from services.messaging.messaging import Messaging

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MessagingService"].full_name
ERROR_DOMAIN = "rapport.messaging"
SCOPE_SEND = "messaging.send"
SCOPE_READ = "messaging.read"
SCOPE_ADMIN = "messaging.admin"
METHOD_SCOPES = {
    f"/{SERVICE_NAME}/ListRules": SCOPE_READ,
    f"/{SERVICE_NAME}/UpdateRule": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/FireTrigger": SCOPE_SEND,
    f"/{SERVICE_NAME}/SetContact": SCOPE_SEND,
    f"/{SERVICE_NAME}/SetConsent": SCOPE_SEND,
    f"/{SERVICE_NAME}/GetConsent": SCOPE_READ,
    f"/{SERVICE_NAME}/Unsubscribe": SCOPE_SEND,
    f"/{SERVICE_NAME}/GetDelivery": SCOPE_READ,
    f"/{SERVICE_NAME}/ListDeliveries": SCOPE_READ,
    f"/{SERVICE_NAME}/ListDeadLetters": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/ReplayDeadLetter": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/ExportAudience": SCOPE_ADMIN,
}
MAX_DELAY_S = 365 * 86_400
MAX_TEXT = 512
STATUS = {
    status: pb.DeliveryStatus.Value(f"DELIVERY_STATUS_{status}")
    for status in ("SCHEDULED", "SENDING", "SENT", "SKIPPED", "DEAD", "CANCELLED")
}


def _timestamp(ms: int) -> Timestamp | None:
    if ms <= 0:
        return None
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def _kind(value: int, field: str) -> TriggerKind:
    try:
        return TriggerKind(value)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, "must be a known TriggerKind, not UNSPECIFIED")]) from None


def _channel(value: int, field: str) -> Channel:
    try:
        return Channel(value)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, "must be a known Channel, not UNSPECIFIED")]) from None


def _text(value: str, field: str, limit: int = MAX_TEXT) -> str:
    if len(value.encode()) > limit:
        raise InvalidArgument([FieldViolation(field, f"must be at most {limit} bytes")])
    return value.strip()


def _delivery_id(value: str) -> str:
    delivery_id = _text(value, "delivery_id", 64)
    if not delivery_id:
        raise InvalidArgument([FieldViolation("delivery_id", "must not be empty")])
    return delivery_id


def _page_size(value: int, default: int, maximum: int) -> int:
    if value == 0:
        return default
    if not 1 <= value <= maximum:
        raise InvalidArgument([FieldViolation("page_size", f"must be between 1 and {maximum}")])
    return value


def delivery_proto(delivery: Delivery) -> pb.Delivery:
    return pb.Delivery(
        delivery_id=delivery.delivery_id,
        person_id=delivery.person_id,
        kind=TriggerKind[delivery.kind].value,  # type: ignore[arg-type]
        channel=Channel[delivery.channel].value,  # type: ignore[arg-type]
        status=STATUS[delivery.status.value],
        reason=delivery.reason,
        attempts=delivery.attempts,
        last_error=delivery.last_error,
        created_at=_timestamp(delivery.created_at_ms),
        due_at=_timestamp(delivery.due_at_ms),
        sent_at=_timestamp(delivery.sent_at_ms),
        idempotency_key=delivery.idempotency_key,
        product_ids=list(delivery.product_ids),
    )


def rule_proto(rule: TriggerRule) -> pb.Rule:
    return pb.Rule(
        kind=rule.kind.value,  # type: ignore[arg-type]
        enabled=rule.enabled,
        delay_seconds=rule.delay_ms // 1000,
        channels=[channel.value for channel in rule.channels],  # type: ignore[misc]
    )


class MessagingServicer(pb_grpc.MessagingServiceServicer):
    def __init__(self, messaging: Messaging, identity: IdentityClient) -> None:
        self._messaging = messaging
        self._identity = identity

    async def _person(self, selector: pb.PersonSelector, field: str = "person") -> str:
        which = selector.WhichOneof("selector")
        if which == "identifier":
            identifier = parse_identifier(
                int(selector.identifier.type), selector.identifier.value, f"{field}.identifier"
            )
            return (await self._identity.resolve([identifier]))[identifier.key].person_id
        if which == "person_id":
            return parse_person_id(selector.person_id, f"{field}.person_id")
        raise InvalidArgument([FieldViolation(field, "must give an identifier or a person_id")])

    async def ListRules(self, request: pb.ListRulesRequest, context: grpc.aio.ServicerContext) -> pb.ListRulesResponse:
        rules = await self._messaging.rules.refresh(force=True)
        return pb.ListRulesResponse(rules=[rule_proto(rules[kind]) for kind in TriggerKind])

    async def UpdateRule(
        self, request: pb.UpdateRuleRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateRuleResponse:
        rule = request.rule
        kind = _kind(rule.kind, "rule.kind")
        violations: list[FieldViolation] = []
        if not 0 <= rule.delay_seconds <= MAX_DELAY_S:
            violations.append(FieldViolation("rule.delay_seconds", f"must be between 0 and {MAX_DELAY_S}"))
        channels = [_channel(value, f"rule.channels[{index}]") for index, value in enumerate(rule.channels)]
        if not channels or len(set(channels)) != len(channels):
            violations.append(FieldViolation("rule.channels", "must name at least one channel, each once"))
        if violations:
            raise InvalidArgument(violations)
        current = (await self._messaging.rules.refresh())[kind]
        updated = TriggerRule(
            kind, rule.enabled, rule.delay_seconds * 1000, tuple(channels), browse_min_views=current.browse_min_views
        )
        return pb.UpdateRuleResponse(rule=rule_proto(await self._messaging.rules.update(updated)))

    async def FireTrigger(
        self, request: pb.FireTriggerRequest, context: grpc.aio.ServicerContext
    ) -> pb.FireTriggerResponse:
        kind = _kind(request.kind, "kind")
        key = _text(request.idempotency_key, "idempotency_key", 256)
        person_id = await self._person(request.person)
        send_at = request.send_at.ToMilliseconds() if request.HasField("send_at") else None
        created, ids = await self._messaging.fire(person_id, kind, key, send_at)
        return pb.FireTriggerResponse(person_id=person_id, delivery_ids=ids, duplicate=not created)

    async def SetContact(
        self, request: pb.SetContactRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetContactResponse:
        violations: list[FieldViolation] = []
        email = request.email.strip()
        if email and ("@" not in email or len(email) > 254 or any(ch.isspace() for ch in email)):
            violations.append(FieldViolation("email", "must be an email address"))
        phone = request.phone.strip()
        if phone and not (phone.startswith("+") and phone[1:].isdigit() and 8 <= len(phone) <= 16):
            violations.append(FieldViolation("phone", "must be in E.164 form, e.g. +33612345678"))
        language = request.language.strip().lower()
        if language and language not in ("en", "fr"):
            violations.append(FieldViolation("language", "must be en or fr"))
        country = request.country.strip().upper()
        if country and not (len(country) == 2 and country.isalpha()):
            violations.append(FieldViolation("country", "must be an ISO 3166 two-letter code"))
        push_token = _text(request.push_token, "push_token", 4096)
        if violations:
            raise InvalidArgument(violations)
        person_id = await self._person(request.person)
        await self._messaging.set_contact(Contact(person_id, email, push_token, phone, language, country))
        return pb.SetContactResponse(person_id=person_id)

    async def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        channel = _channel(request.channel, "channel")
        if request.state not in (pb.CONSENT_STATE_GRANTED, pb.CONSENT_STATE_DENIED):
            raise InvalidArgument([FieldViolation("state", "must be GRANTED or DENIED")])
        person_id = await self._person(request.person)
        state = ConsentState.GRANTED if request.state == pb.CONSENT_STATE_GRANTED else ConsentState.DENIED
        await self._messaging.set_consent(person_id, channel, state)
        return pb.SetConsentResponse(person_id=person_id)

    async def GetConsent(
        self, request: pb.GetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsentResponse:
        person_id = await self._person(request.person)
        consents = await self._messaging.consents(person_id)
        return pb.GetConsentResponse(
            person_id=person_id,
            consents=[
                pb.ChannelConsent(
                    channel=channel.value,  # type: ignore[arg-type]
                    state=state.value,  # type: ignore[arg-type]
                    updated_at=_timestamp(at),
                )
                for channel, (state, at) in consents.items()
            ],
        )

    async def Unsubscribe(
        self, request: pb.UnsubscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnsubscribeResponse:
        try:
            person_id, channel = await self._messaging.unsubscribe(_text(request.token, "token", 2048))
        except InvalidToken as error:
            raise InvalidArgument([FieldViolation("token", str(error) or "is not a valid unsubscribe token")]) from None
        return pb.UnsubscribeResponse(person_id=person_id, channel=channel.value)  # type: ignore[arg-type]

    async def GetDelivery(
        self, request: pb.GetDeliveryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDeliveryResponse:
        delivery = await self._messaging.delivery(_delivery_id(request.delivery_id))
        return pb.GetDeliveryResponse(delivery=delivery_proto(delivery))

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeliveriesResponse:
        limit = _page_size(request.page_size, 50, 200)
        person_id = await self._person(request.person)
        deliveries = await self._messaging.deliveries_of(person_id, limit)
        return pb.ListDeliveriesResponse(deliveries=[delivery_proto(delivery) for delivery in deliveries])

    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        limit = _page_size(request.page_size, 100, 500)
        deliveries = await self._messaging.dead_letters(limit)
        return pb.ListDeadLettersResponse(deliveries=[delivery_proto(delivery) for delivery in deliveries])

    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayDeadLetterResponse:
        delivery = await self._messaging.replay(_delivery_id(request.delivery_id))
        return pb.ReplayDeadLetterResponse(delivery=delivery_proto(delivery))

    async def ExportAudience(
        self, request: pb.ExportAudienceRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportAudienceResponse]:
        kinds = [_kind(request.kind, "kind")] if request.kind else list(TriggerKind)
        async for chunk in self._messaging.export_audience(kinds):
            yield pb.ExportAudienceResponse(csv_chunk=chunk)
