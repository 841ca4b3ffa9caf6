"""The four services as the console reads them, over gRPC with the console's own keys (TLS to a
service whose CA is configured). Every call has a budget and carries the page's trace context
(services/common/tracing.py); a failure becomes a PeerError naming the service, so a page can show
the rest. Nothing here creates or changes anything in the services."""

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
from services.common import tracing
from services.common.channels import ClientCertificate, PeerClient
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


class _Peer(PeerClient):
    """One service, as the console calls it: the shared client (channel, stub, key) plus its
    name for errors and its full name, as traces name its RPCs
    (rapport.identity.v1.IdentityService/GetPerson)."""

    def __init__(
        self,
        name: str,
        stub_type: Any,
        file_descriptor: Any,
        address: str,
        api_key: str,
        tls_ca_file: str,
        certificate: ClientCertificate,
    ) -> None:
        self.stub_class = stub_type
        super().__init__(address, api_key, tls_ca_file, certificate)
        self.name = name
        (self.service,) = (service.full_name for service in file_descriptor.services_by_name.values())

    async def call(self, method: str, request: Any, timeout_s: float) -> Any:
        try:
            with tracing.outgoing(f"{self.service}/{method}", self._metadata) as metadata:
                return await getattr(self._stub, method)(request, metadata=metadata, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            raise PeerError(self.name, error.code(), error.details() or "") from None


class RapportPeers:
    def __init__(self, settings: ConsoleSettings) -> None:
        self._timeout_s = settings.rpc_timeout_s
        certificate = ClientCertificate(settings.peer_tls_cert_file, settings.peer_tls_key_file)
        self._identity = _Peer(
            "identity",
            identity_grpc.IdentityServiceStub,
            identity_pb.DESCRIPTOR,
            settings.identity_address,
            settings.identity_api_key,
            settings.identity_tls_ca_file,
            certificate,
        )
        self._profile = _Peer(
            "profile",
            profile_grpc.ProfileServiceStub,
            profile_pb.DESCRIPTOR,
            settings.profile_address,
            settings.profile_api_key,
            settings.profile_tls_ca_file,
            certificate,
        )
        self._decision = _Peer(
            "decision",
            decision_grpc.DecisionServiceStub,
            decision_pb.DESCRIPTOR,
            settings.decision_address,
            settings.decision_api_key,
            settings.decision_tls_ca_file,
            certificate,
        )
        self._messaging = _Peer(
            "messaging",
            messaging_grpc.MessagingServiceStub,
            messaging_pb.DESCRIPTOR,
            settings.messaging_address,
            settings.messaging_api_key,
            settings.messaging_tls_ca_file,
            certificate,
        )

    async def close(self) -> None:
        for peer in (self._identity, self._profile, self._decision, self._messaging):
            await peer.close()

    async def _call(self, peer: _Peer, method: str, request: Any) -> Any:
        return await peer.call(method, request, self._timeout_s)

    # ------------------------------------------------------------------ identity
    async def lookup(self, identifier: IdentifierKey) -> str | None:
        """The person of an identifier; None when identity has never seen it (or it was erased).
        Identity's Lookup creates nothing, unlike Resolve: a search never makes a person."""
        request = identity_pb.LookupRequest(
            identifier=identifier_pb2.Identifier(type=int(identifier.type), value=identifier.value)  # type: ignore[arg-type]
        )
        try:
            reply: identity_pb.LookupResponse = await self._call(self._identity, "Lookup", request)
        except PeerError as error:
            if error.not_found:
                return None
            raise
        return reply.person_id

    async def person(self, person_id: str) -> identity_pb.Person:
        request = identity_pb.GetPersonRequest(person_id=person_id)
        reply: identity_pb.GetPersonResponse = await self._call(self._identity, "GetPerson", request)
        return reply.person

    # ------------------------------------------------------------------ profile
    async def profile(self, person_id: str, page_size: int, page_token: str) -> profile_pb.GetProfileResponse:
        request = profile_pb.GetProfileRequest(
            person=profile_pb.PersonSelector(person_id=person_id),
            timeline_page_size=page_size,
            timeline_page_token=page_token,
        )
        reply: profile_pb.GetProfileResponse = await self._call(self._profile, "GetProfile", request)
        return reply

    async def describe(self, person_id: str, language: str) -> profile_pb.DescribeResponse:
        request = profile_pb.DescribeRequest(person=profile_pb.PersonSelector(person_id=person_id), language=language)
        reply: profile_pb.DescribeResponse = await self._call(self._profile, "Describe", request)
        return reply

    # ------------------------------------------------------------------ decision
    async def decisions(self, person_id: str) -> list[decision_pb.RecordedDecision]:
        request = decision_pb.ListDecisionsRequest(person_id=person_id)
        reply: decision_pb.ListDecisionsResponse = await self._call(self._decision, "ListDecisions", request)
        return list(reply.decisions)

    async def segments(self) -> list[decision_pb.Segment]:
        reply: decision_pb.ListSegmentsResponse = await self._call(
            self._decision, "ListSegments", decision_pb.ListSegmentsRequest()
        )
        return list(reply.segments)

    async def experiments(self) -> list[decision_pb.Experiment]:
        reply: decision_pb.ListExperimentsResponse = await self._call(
            self._decision, "ListExperiments", decision_pb.ListExperimentsRequest()
        )
        return list(reply.experiments)

    async def experiment_report(self, experiment_id: str) -> decision_pb.GetExperimentReportResponse:
        request = decision_pb.GetExperimentReportRequest(experiment_id=experiment_id)
        reply: decision_pb.GetExperimentReportResponse = await self._call(
            self._decision, "GetExperimentReport", request
        )
        return reply

    # ------------------------------------------------------------------ messaging
    async def deliveries(self, person_id: str) -> list[messaging_pb.Delivery]:
        request = messaging_pb.ListDeliveriesRequest(
            person=messaging_pb.PersonSelector(person_id=person_id), page_size=DELIVERIES_SHOWN
        )
        reply: messaging_pb.ListDeliveriesResponse = await self._call(self._messaging, "ListDeliveries", request)
        return list(reply.deliveries)

    async def consents(self, person_id: str) -> list[messaging_pb.ChannelConsent]:
        request = messaging_pb.GetConsentRequest(person=messaging_pb.PersonSelector(person_id=person_id))
        reply: messaging_pb.GetConsentResponse = await self._call(self._messaging, "GetConsent", request)
        return list(reply.consents)
