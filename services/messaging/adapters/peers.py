"""Messaging's calls to its peers: Decide (the products of a message, placement EMAIL) and
Track (opens and clicks go back to the profile, closing the loop). Both carry the trace context of
the work that makes them (a send, a tracked click), over TLS when the peer's CA is configured."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common import clock, tracing
from services.common.channels import PeerClient

_DECIDE = f"{decision_pb.DESCRIPTOR.services_by_name['DecisionService'].full_name}/Decide"
_TRACK = f"{profile_pb.DESCRIPTOR.services_by_name['ProfileService'].full_name}/Track"


@dataclass(frozen=True)
class Pick:
    """A product a message carries."""

    product_id: str
    title: str
    price: float
    currency: str
    reason: str


@dataclass(frozen=True)
class Picks:
    decision_id: str
    items: list[Pick]
    headline: str
    body: str


class DecisionClient(PeerClient):
    stub_class = decision_grpc.DecisionServiceStub
    _stub: decision_grpc.DecisionServiceStub

    async def picks(
        self, person_id: str, count: int, language: str, product_id: str = "", cart: Sequence[str] = ()
    ) -> Picks:
        with tracing.outgoing(_DECIDE, self._metadata) as metadata:
            reply = await self._stub.Decide(
                decision_pb.DecideRequest(
                    person_id=person_id,
                    placement=decision_pb.PLACEMENT_EMAIL,
                    page=decision_pb.PageContext(product_id=product_id, cart_product_ids=list(cart), language=language),
                    count=count,
                ),
                metadata=metadata,
                timeout=2.0,
            )
        return Picks(
            reply.decision_id,
            [
                Pick(item.product_id, item.title, item.price.amount, item.price.currency_code or "EUR", item.reason)
                for item in reply.items
            ],
            reply.message.headline,
            reply.message.body,
        )


class ProfileTracker(PeerClient):
    """Sends EMAIL_OPEN / EMAIL_CLICK / PUSH_OPEN events for a person to the profile service."""

    stub_class = profile_grpc.ProfileServiceStub
    _stub: profile_grpc.ProfileServiceStub

    async def track(
        self, identifier: identifier_pb2.Identifier, kind: int, message_id: str, page_url: str = ""
    ) -> None:
        at = Timestamp()
        at.FromMilliseconds(clock.now_ms())
        event = event_pb2.Event(
            event_id=f"msg-{uuid.uuid4().hex}",
            type=kind,  # type: ignore[arg-type]
            event_time=at,
            identifier=identifier,
            message_id=message_id,
            context=event_pb2.EventContext(page_url=page_url),
        )
        with tracing.outgoing(_TRACK, self._metadata) as metadata:
            await self._stub.Track(profile_pb.TrackRequest(event=event), metadata=metadata, timeout=5.0)
