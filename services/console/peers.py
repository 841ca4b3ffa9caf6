"""The four services as the console reads them, over gRPC with the console's own keys. Every call
has a budget; a failure becomes a PeerError naming the service, so a page can show the rest."""

from __future__ import annotations

from typing import Any

import grpc

from rapport.common.v1 import identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from rapport.messaging.v1 import messaging_service_pb2 as messaging_pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as messaging_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common.identifiers import IdentifierKey
from services.console.settings import ConsoleSettings

DELIVERIES_SHOWN = 50


class PeerError(Exception):
    """A service did not answer as hoped: which one, and its status code."""

    def __init__(self, service: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{service}: {code.name}")
        self.service = service
        self.code = code
        self.details = details

    @property
    def not_found(self) -> bool:
        return bool(self.code == grpc.StatusCode.NOT_FOUND)


class _Peer:
    def __init__(self, name: str, address: str, api_key: str) -> None:
        self.name = name
        self.channel = grpc.aio.insecure_channel(address)
        self.metadata = (("authorization", f"Bearer {api_key}"),)


class RapportPeers:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._timeout_s = settings.rpc_timeout_s
        self._identity = _Peer("identity", settings.identity_address, settings.identity_api_key)
        self._profile = _Peer("profile", settings.profile_address, settings.profile_api_key)
        self._decision = _Peer("decision", settings.decision_address, settings.decision_api_key)
        self._messaging = _Peer("messaging", settings.messaging_address, settings.messaging_api_key)
        self._identity_stub = identity_grpc.IdentityServiceStub(self._identity.channel)
        self._profile_stub = profile_grpc.ProfileServiceStub(self._profile.channel)
        self._decision_stub = decision_grpc.DecisionServiceStub(self._decision.channel)
        self._messaging_stub = messaging_grpc.MessagingServiceStub(self._messaging.channel)

    async def close(self) -> None:
        for peer in (self._identity, self._profile, self._decision, self._messaging):
            await peer.channel.close()

    async def _call(self, peer: _Peer, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=peer.metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            raise PeerError(peer.name, error.code(), error.details() or "") from None

    # ------------------------------------------------------------------ identity
    async def resolve(self, identifier: IdentifierKey) -> identity_pb.ResolveResponse:
        """The person of an identifier (identity creates an anonymous one at first sight: `created`)."""
        request = identity_pb.ResolveRequest(
            identifier=identifier_pb2.Identifier(type=int(identifier.type), value=identifier.value)  # type: ignore[arg-type]
        )
        reply: identity_pb.ResolveResponse = await self._call(self._identity, self._identity_stub.Resolve, request)
        return reply

    async def person(self, person_id: str) -> identity_pb.Person:
        request = identity_pb.GetPersonRequest(person_id=person_id)
        reply: identity_pb.GetPersonResponse = await self._call(self._identity, self._identity_stub.GetPerson, request)
        return reply.person

    # ------------------------------------------------------------------ profile
    async def profile(self, person_id: str, page_size: int, page_token: str) -> profile_pb.GetProfileResponse:
        request = profile_pb.GetProfileRequest(
            person=profile_pb.PersonSelector(person_id=person_id),
            timeline_page_size=page_size,
            timeline_page_token=page_token,
        )
        reply: profile_pb.GetProfileResponse = await self._call(self._profile, self._profile_stub.GetProfile, request)
        return reply

    async def describe(self, person_id: str, language: str) -> profile_pb.DescribeResponse:
        request = profile_pb.DescribeRequest(person=profile_pb.PersonSelector(person_id=person_id), language=language)
        reply: profile_pb.DescribeResponse = await self._call(self._profile, self._profile_stub.Describe, request)
        return reply

    # ------------------------------------------------------------------ decision
    async def decisions(self, person_id: str) -> list[decision_pb.RecordedDecision]:
        request = decision_pb.ListDecisionsRequest(person_id=person_id)
        reply: decision_pb.ListDecisionsResponse = await self._call(
            self._decision, self._decision_stub.ListDecisions, request
        )
        return list(reply.decisions)

    async def segments(self) -> list[decision_pb.Segment]:
        reply: decision_pb.ListSegmentsResponse = await self._call(
            self._decision, self._decision_stub.ListSegments, decision_pb.ListSegmentsRequest()
        )
        return list(reply.segments)

    async def experiments(self) -> list[decision_pb.Experiment]:
        reply: decision_pb.ListExperimentsResponse = await self._call(
            self._decision, self._decision_stub.ListExperiments, decision_pb.ListExperimentsRequest()
        )
        return list(reply.experiments)

    async def experiment_report(self, experiment_id: str) -> decision_pb.GetExperimentReportResponse:
        request = decision_pb.GetExperimentReportRequest(experiment_id=experiment_id)
        reply: decision_pb.GetExperimentReportResponse = await self._call(
            self._decision, self._decision_stub.GetExperimentReport, request
        )
        return reply

    # ------------------------------------------------------------------ messaging
    async def deliveries(self, person_id: str) -> list[messaging_pb.Delivery]:
        request = messaging_pb.ListDeliveriesRequest(
            person=messaging_pb.PersonSelector(person_id=person_id), page_size=DELIVERIES_SHOWN
        )
        reply: messaging_pb.ListDeliveriesResponse = await self._call(
            self._messaging, self._messaging_stub.ListDeliveries, request
        )
        return list(reply.deliveries)

    async def consents(self, person_id: str) -> list[messaging_pb.ChannelConsent]:
        request = messaging_pb.GetConsentRequest(person=messaging_pb.PersonSelector(person_id=person_id))
        reply: messaging_pb.GetConsentResponse = await self._call(
            self._messaging, self._messaging_stub.GetConsent, request
        )
        return list(reply.consents)
