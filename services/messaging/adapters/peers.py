"""Messaging's calls to its peers: DecideBatch (the products of messages, placement EMAIL) and
Track (opens and clicks go back to the profile, closing the loop). Both carry the trace context of
the work that makes them (a send, a tracked click; a batch, the send that opened it), over TLS
when the peer's CA is configured."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import code_pb2

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common import clock, tracing
from services.common.channels import PeerClient
from services.common.grouped_calls import GroupedCalls

_DECIDE_BATCH = f"{decision_pb.DESCRIPTOR.services_by_name['DecisionService'].full_name}/DecideBatch"
# Concurrent sends that want products at once share one DecideBatch call (up to this many).
DECIDE_GROUP_MAX = 32
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
    """Products for messages. The sends of a replica that want products while a DecideBatch is
    in flight go together in the next one (services/common/grouped_calls.py): one send alone is
    asked for at once, and a burst of sends costs the decision service a few calls instead of
    one each."""

    stub_class = decision_grpc.DecisionServiceStub
    _stub: decision_grpc.DecisionServiceStub

    _decide_calls: GroupedCalls[decision_pb.DecideRequest, decision_pb.DecideResponse] | None = None

    @property
    def _decide(self) -> GroupedCalls[decision_pb.DecideRequest, decision_pb.DecideResponse]:
        if self._decide_calls is None:
            self._decide_calls = GroupedCalls(self._decide_batch, DECIDE_GROUP_MAX, max_in_flight=2)
        return self._decide_calls

    async def picks(
        self, person_id: str, count: int, language: str, product_id: str = "", cart: Sequence[str] = ()
    ) -> Picks:
        reply = await self._decide.call(
            decision_pb.DecideRequest(
                person_id=person_id,
                placement=decision_pb.PLACEMENT_EMAIL,
                page=decision_pb.PageContext(product_id=product_id, cart_product_ids=list(cart), language=language),
                count=count,
            )
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

    async def _decide_batch(
        self, requests: list[decision_pb.DecideRequest]
    ) -> list[decision_pb.DecideResponse | Exception]:
        with tracing.outgoing(_DECIDE_BATCH, self._metadata) as metadata:
            reply = await self._stub.DecideBatch(
                decision_pb.DecideBatchRequest(requests=requests), metadata=metadata, timeout=2.0
            )
        return [_decided(result) for result in reply.results]

    async def close(self) -> None:
        await self._decide.close()
        await super().close()


class DecideRefused(Exception):
    """The decision service did not decide one request of a batch (its google.rpc.Status)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code_pb2.Code.Name(code) if code in code_pb2.Code.values() else code}: {message}")
        self.code = code


def _decided(result: decision_pb.DecideResult) -> decision_pb.DecideResponse | DecideRefused:
    if result.status.code == code_pb2.OK:
        return result.response
    return DecideRefused(result.status.code, result.status.message)


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
