"""The identity service as the other services use it: resolve identifiers, list a person's identifiers,
erase a person, follow merges. Every call gets what remains of the request's budget, and carries
the request's trace context."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rapport.common.v1 import identifier_pb2
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from services.common import deadlines, tracing
from services.common.channels import PeerClient
from services.common.errors import InvalidArgument, NotFound, RapportError, Unavailable
from services.common.identifiers import IdentifierKey

BATCH_RESOLVE_LIMIT = 1000
# RPC names as traces show them.
_IDENTITY_SERVICE = identity_pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
_BATCH_RESOLVE = f"{_IDENTITY_SERVICE}/BatchResolve"
_GET_PERSON = f"{_IDENTITY_SERVICE}/GetPerson"
_LOOKUP = f"{_IDENTITY_SERVICE}/Lookup"
_FORGET = f"{_IDENTITY_SERVICE}/Forget"


@dataclass(frozen=True, slots=True)
class Resolved:
    person_id: str
    created: bool  # first sight: the person has no history anywhere yet


@dataclass(frozen=True)
class IdentityEvent:
    """A merge (losers -> survivor) or an unlink, from identity's event stream."""

    event_id: str
    survivor_person_id: str
    merged_person_ids: tuple[str, ...]


def _to_proto(identifier: IdentifierKey) -> identifier_pb2.Identifier:
    return identifier_pb2.Identifier(type=int(identifier.type), value=identifier.value)  # type: ignore[arg-type]


class IdentityClient(PeerClient):
    name = "identity"

    stub_class = identity_grpc.IdentityServiceStub
    channel_options = (("grpc.max_receive_message_length", 16 * 1024 * 1024),)
    _stub: identity_grpc.IdentityServiceStub

    @functools.cached_property
    def _health(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self._channel)

    def _error(self, error: grpc.aio.AioRpcError, what: str) -> RapportError:
        code = error.code()
        if code == grpc.StatusCode.NOT_FOUND:
            return NotFound(f"identity does not know this {what}", "PERSON_NOT_FOUND")
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return InvalidArgument([], f"identity rejected the {what}: {error.details()}")
        return Unavailable(f"the identity service failed ({code.name}) while handling the {what}")

    async def resolve(self, identifiers: Sequence[IdentifierKey]) -> dict[str, Resolved]:
        """identifier key -> person, creating persons at first sight."""
        found: dict[str, Resolved] = {}
        unique = list({identifier.key: identifier for identifier in identifiers}.values())
        for start in range(0, len(unique), BATCH_RESOLVE_LIMIT):
            chunk = unique[start : start + BATCH_RESOLVE_LIMIT]
            try:
                with tracing.outgoing(_BATCH_RESOLVE, self._metadata) as metadata:
                    reply = await self._stub.BatchResolve(
                        identity_pb.BatchResolveRequest(identifiers=[_to_proto(identifier) for identifier in chunk]),
                        metadata=metadata,
                        timeout=deadlines.remaining_s(0.01),
                    )
            except grpc.aio.AioRpcError as error:
                raise self._error(error, "identifiers") from error
            for identifier, resolution in zip(chunk, reply.resolutions, strict=True):
                found[identifier.key] = Resolved(resolution.person_id, resolution.created)
        return found

    async def lookup(self, identifier: IdentifierKey) -> str:
        """The person behind an identifier, creating nothing: NotFound when identity has never
        seen it (or erased it). For reads, where Resolve would make a person at first sight."""
        try:
            with tracing.outgoing(_LOOKUP, self._metadata) as metadata:
                reply = await self._stub.Lookup(
                    identity_pb.LookupRequest(identifier=_to_proto(identifier)),
                    metadata=metadata,
                    timeout=deadlines.remaining_s(0.01),
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("no person has this identifier", "IDENTIFIER_NOT_FOUND") from error
            raise self._error(error, "identifier") from error
        person_id: str = reply.person_id
        return person_id

    async def _person(self, person_id: str) -> identity_pb.Person | None:
        """Identity's view of a person (the survivor, for a merged-away id); None if unknown."""
        try:
            with tracing.outgoing(_GET_PERSON, self._metadata) as metadata:
                reply = await self._stub.GetPerson(
                    identity_pb.GetPersonRequest(person_id=person_id),
                    metadata=metadata,
                    timeout=deadlines.remaining_s(0.01),
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise self._error(error, "person") from error
        person: identity_pb.Person = reply.person
        return person

    async def identifiers_of(self, person_id: str) -> list[identifier_pb2.Identifier]:
        person = await self._person(person_id)
        return [linked.identifier for linked in person.identifiers] if person is not None else []

    async def merged_into(self, person_id: str) -> list[str]:
        """The persons identity merged into this one (its history says so); [] if unknown."""
        person = await self._person(person_id)
        if person is None:
            return []
        return sorted(
            {
                merge.from_person_id
                for merge in person.merges
                if merge.kind == identity_pb.MERGE_KIND_LINK and merge.from_person_id != person_id
            }
        )

    async def ping(self, timeout_s: float) -> None:
        """Health probe: identity's own grpc.health.v1 answer must be SERVING."""
        reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise Unavailable("the identity service is not serving")

    async def forget(self, person_id: str) -> list[str]:
        """Erase the person in identity; the persons erased (it and those merged into it)."""
        try:
            with tracing.outgoing(_FORGET, self._metadata) as metadata:
                reply = await self._stub.Forget(
                    identity_pb.ForgetRequest(person_id=person_id),
                    metadata=metadata,
                    timeout=deadlines.remaining_s(0.01),
                )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise self._error(error, "person") from error
        return list(reply.erased_person_ids)

    async def merges(self, after_event_id: str) -> AsyncIterator[IdentityEvent]:
        """Identity's merge and unlink events after `after_event_id`, until the stream breaks."""
        call = self._stub.WatchMerges(
            identity_pb.WatchMergesRequest(after_event_id=after_event_id), metadata=self._metadata
        )
        async for event in call:
            if event.HasField("persons_merged"):
                merged = event.persons_merged
                yield IdentityEvent(event.event_id, merged.survivor_person_id, tuple(merged.merged_person_ids))
            else:
                yield IdentityEvent(event.event_id, "", ())
