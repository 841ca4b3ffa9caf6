"""Thin gRPC handlers of rapport.identity.v1.IdentityService: validate, convert, call the graph."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from rapport.common.v1 import identifier_pb2
from rapport.identity.v1 import identity_service_pb2 as pb
from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.common.errors import FieldViolation, InvalidArgument
from services.common.identifiers import IdentifierKey, parse_identifier, parse_person_id
from services.identity.graph import IdentityGraph, PersonView

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name
MAX_BATCH_RESOLVE = 1000
MAX_LINK_IDENTIFIERS = 100

SCOPE_RESOLVE = "identity.resolve"
SCOPE_LINK = "identity.link"
SCOPE_ADMIN = "identity.admin"
METHOD_SCOPES = {
    f"/{SERVICE_NAME}/Resolve": SCOPE_RESOLVE,
    f"/{SERVICE_NAME}/BatchResolve": SCOPE_RESOLVE,
    f"/{SERVICE_NAME}/Lookup": SCOPE_RESOLVE,
    f"/{SERVICE_NAME}/GetPerson": SCOPE_RESOLVE,
    f"/{SERVICE_NAME}/Link": SCOPE_LINK,
    f"/{SERVICE_NAME}/Unlink": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/Forget": SCOPE_ADMIN,
    f"/{SERVICE_NAME}/WatchMerges": SCOPE_ADMIN,
}


def identifier_from_proto(message: identifier_pb2.Identifier, field: str) -> IdentifierKey:
    return parse_identifier(int(message.type), message.value, field)


def identifier_to_proto(identifier: IdentifierKey) -> identifier_pb2.Identifier:
    return identifier_pb2.Identifier(type=int(identifier.type), value=identifier.value)  # type: ignore[arg-type]


def identifiers_from_proto(
    messages: Sequence[identifier_pb2.Identifier], field: str, minimum: int, maximum: int
) -> list[IdentifierKey]:
    if not minimum <= len(messages) <= maximum:
        raise InvalidArgument(
            [FieldViolation(field, f"must hold {minimum} to {maximum} identifiers, got {len(messages)}")]
        )
    violations: list[FieldViolation] = []
    parsed: list[IdentifierKey] = []
    for index, message in enumerate(messages):
        try:
            parsed.append(identifier_from_proto(message, f"{field}[{index}]"))
        except InvalidArgument as error:
            violations.extend(error.violations)
    if violations:
        raise InvalidArgument(violations)
    return parsed


def timestamp_ms(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def person_to_proto(view: PersonView) -> pb.Person:
    return pb.Person(
        person_id=view.person_id,
        identifiers=[
            pb.LinkedIdentifier(identifier=identifier_to_proto(identifier), first_seen_time=timestamp_ms(first_seen))
            for identifier, first_seen in view.identifiers
        ],
        first_seen_time=timestamp_ms(view.first_seen_ms),
        last_seen_time=timestamp_ms(view.last_seen_ms),
        merges=[
            pb.MergeRecord(
                kind=pb.MERGE_KIND_LINK if merge.kind == "LINK" else pb.MERGE_KIND_UNLINK,
                from_person_id=merge.from_person_id,
                to_person_id=merge.to_person_id,
                event_time=timestamp_ms(merge.event_time_ms),
                identifiers=[identifier_to_proto(identifier) for identifier in merge.identifiers],
            )
            for merge in view.merges
        ],
    )


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(self, graph: IdentityGraph) -> None:
        self._graph = graph

    async def Resolve(self, request: pb.ResolveRequest, context: grpc.aio.ServicerContext) -> pb.ResolveResponse:
        identifier = identifier_from_proto(request.identifier, "identifier")
        resolution = await self._graph.resolve(identifier)
        return pb.ResolveResponse(
            person_id=resolution.person_id, created=resolution.created, identifier=identifier_to_proto(identifier)
        )

    async def BatchResolve(
        self, request: pb.BatchResolveRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchResolveResponse:
        identifiers = identifiers_from_proto(request.identifiers, "identifiers", 1, MAX_BATCH_RESOLVE)
        resolutions = await self._graph.resolve_many(identifiers)
        return pb.BatchResolveResponse(
            resolutions=[
                pb.Resolution(
                    identifier=identifier_to_proto(item.identifier), person_id=item.person_id, created=item.created
                )
                for item in resolutions
            ]
        )

    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        identifier = identifier_from_proto(request.identifier, "identifier")
        person_id = await self._graph.lookup(identifier)
        return pb.LookupResponse(person_id=person_id, identifier=identifier_to_proto(identifier))

    async def Link(self, request: pb.LinkRequest, context: grpc.aio.ServicerContext) -> pb.LinkResponse:
        identifiers = identifiers_from_proto(request.identifiers, "identifiers", 2, MAX_LINK_IDENTIFIERS)
        unique = sorted(set(identifiers))
        result = await self._graph.link(unique)
        return pb.LinkResponse(
            person_id=result.person_id,
            merged_person_ids=result.merged_person_ids,
            skipped_identifiers=[identifier_to_proto(identifier) for identifier in result.skipped_identifiers],
        )

    async def GetPerson(self, request: pb.GetPersonRequest, context: grpc.aio.ServicerContext) -> pb.GetPersonResponse:
        view = await self._graph.person_view(parse_person_id(request.person_id))
        return pb.GetPersonResponse(person=person_to_proto(view))

    async def Unlink(self, request: pb.UnlinkRequest, context: grpc.aio.ServicerContext) -> pb.UnlinkResponse:
        previous, new = await self._graph.unlink(identifier_from_proto(request.identifier, "identifier"))
        return pb.UnlinkResponse(previous_person_id=previous, new_person_id=new)

    async def Forget(self, request: pb.ForgetRequest, context: grpc.aio.ServicerContext) -> pb.ForgetResponse:
        result = await self._graph.forget(parse_person_id(request.person_id))
        return pb.ForgetResponse(
            erased_person_ids=result.erased_person_ids, erased_identifier_count=result.erased_identifier_count
        )

    async def WatchMerges(
        self, request: pb.WatchMergesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchMergesResponse]:
        after = request.after_event_id or "$"
        if after not in ("$", "0") and not _is_stream_id(after):
            raise InvalidArgument([FieldViolation("after_event_id", "must be an event id like 1700000000000-0, or 0")])
        async for event in self._graph.events(after):
            fields = event.fields
            response = pb.WatchMergesResponse(event_id=event.event_id, event_time=timestamp_ms(int(fields["at"])))
            if fields["kind"] == "merge":
                response.persons_merged.CopyFrom(
                    pb.PersonsMerged(
                        survivor_person_id=fields["survivor"], merged_person_ids=json.loads(fields["merged"])
                    )
                )
            else:
                response.identifier_unlinked.CopyFrom(
                    pb.IdentifierUnlinked(
                        identifier=identifier_to_proto(IdentifierKey.from_key(fields["identifier"])),
                        previous_person_id=fields["previous"],
                        new_person_id=fields["new"],
                    )
                )
            yield response


def _is_stream_id(text: str) -> bool:
    milliseconds, _, sequence = text.partition("-")
    return milliseconds.isdigit() and (sequence == "" or sequence.isdigit())
