"""One storefront call is one trace across the services: identity, profile and decision run as
processes exporting spans over OTLP/HTTP to a real receiver, and a `Decide` by identifier that
comes with the storefront's `traceparent` gives spans of all three in the storefront's trace, each
the child of the call that reached it. A decision replica without an endpoint passes the context
through, and a replica flushes its spans when it stops."""

from __future__ import annotations

import secrets
import uuid
from pathlib import Path

import grpc
import pytest

from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from services.common.cassandra import CassandraClient
from tests.e2e.conftest import ServiceProcess, start_service
from tests.support import ADMIN_KEY, OtlpReceiver, ReceivedSpan, bearer, wait_until

pytestmark = pytest.mark.e2e

DECIDE = "rapport.decision.v1.DecisionService/Decide"
BATCH_RESOLVE = "rapport.identity.v1.IdentityService/BatchResolve"
GET_PROFILE = "rapport.profile.v1.ProfileService/GetProfile"
GET_PERSON = "rapport.identity.v1.IdentityService/GetPerson"


def storefront_traceparent() -> tuple[str, str, str]:
    """(header, trace id, span id) of a storefront's sampled client span."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def one(spans: list[ReceivedSpan], service: str, name: str, kind: str) -> ReceivedSpan:
    matching = [s for s in spans if (s.service, s.name, s.kind) == (service, name, kind)]
    assert len(matching) == 1, f"expected one {kind} span {name} of {service}, got {matching} among {spans}"
    return matching[0]


def decide(decision: ServiceProcess, visitor: common.Identifier, traceparent: str) -> None:
    with grpc.insecure_channel(decision.address) as channel:
        decision_grpc.DecisionServiceStub(channel).Decide(
            decision_pb.DecideRequest(identifier=visitor, placement=decision_pb.PLACEMENT_HOME, count=3),
            metadata=(*bearer(ADMIN_KEY), ("traceparent", traceparent)),
            timeout=10,
        )


def test_a_decide_by_identifier_is_one_trace_across_decision_identity_and_profile(
    tmp_path: Path, e2e_keyspace: str, run_id: str, cassandra_admin: CassandraClient
) -> None:
    profile_keyspace = f"e2e_tracing_profile_{run_id}"
    cassandra_admin.created_keyspaces.append(profile_keyspace)  # type: ignore[attr-defined]
    receiver = OtlpReceiver().start()
    prefix = {"RAPPORT_REDIS_PREFIX": f"e2e-tracing:{run_id}:"}
    exporting = {"RAPPORT_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    services: list[ServiceProcess] = []
    try:
        identity = start_service(
            "identity", tmp_path, {"RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace, **prefix, **exporting}
        )
        services.append(identity)
        peers = {"RAPPORT_IDENTITY_ADDRESS": identity.address, "RAPPORT_IDENTITY_API_KEY": ADMIN_KEY, **prefix}
        profile = start_service(
            "profile", tmp_path, {"RAPPORT_CASSANDRA_KEYSPACE": profile_keyspace, **peers, **exporting}
        )
        services.append(profile)
        peers |= {"RAPPORT_PROFILE_ADDRESS": profile.address, "RAPPORT_PROFILE_API_KEY": ADMIN_KEY}
        decision_env = {"RAPPORT_DECISION_SECRET": "e2e-secret", "RAPPORT_DECISION_REPLAY_ON_START": "false", **peers}
        # This replica's spans leave only when it stops (a batch delay of 10 minutes): the flush
        # on shutdown is what brings them.
        decision = start_service(
            "decision",
            tmp_path,
            {**decision_env, "RAPPORT_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "600000"},
        )
        services.append(decision)
        passing_through = start_service("decision", tmp_path, decision_env)  # no endpoint: no spans
        services.append(passing_through)

        # A visitor identity knows and profile has no live state for: Decide resolves them and
        # has profile rebuild the state (GetProfile), which asks identity for the identifiers.
        visitor = common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"e2e-trace-{uuid.uuid4().hex[:12]}")
        with grpc.insecure_channel(identity.address) as channel:
            identity_grpc.IdentityServiceStub(channel).Resolve(
                identity_pb.ResolveRequest(identifier=visitor), metadata=bearer(ADMIN_KEY), timeout=10
            )

        traceparent, trace_id, storefront_span = storefront_traceparent()
        decide(decision, visitor, traceparent)

        def peers_spans() -> list[ReceivedSpan]:
            spans = receiver.of_trace(trace_id)
            names = {(span.service, span.name, span.kind) for span in spans}
            wanted = {
                ("rapport-identity", BATCH_RESOLVE, "SERVER"),
                ("rapport-profile", GET_PROFILE, "SERVER"),
                ("rapport-identity", GET_PERSON, "SERVER"),
            }
            return spans if wanted <= names else []

        wait_until(peers_spans, 20.0, "the spans of identity and profile in the storefront's trace", every_s=0.1)
        assert not [span for span in receiver.of_trace(trace_id) if span.service == "rapport-decision"]
        assert decision.terminate() == 0
        services.remove(decision)
        wait_until(
            lambda: [s for s in receiver.of_trace(trace_id) if s.service == "rapport-decision"],
            20.0,
            "the span of decision after its graceful stop",
            every_s=0.1,
        )
        spans = receiver.of_trace(trace_id)

        decide_span = one(spans, "rapport-decision", DECIDE, "SERVER")
        assert decide_span.parent_span_id == storefront_span
        assert decide_span.attributes["rpc.grpc.status_code"] == 0
        resolve_call = one(spans, "rapport-decision", BATCH_RESOLVE, "CLIENT")
        assert resolve_call.parent_span_id == decide_span.span_id
        resolve = one(spans, "rapport-identity", BATCH_RESOLVE, "SERVER")
        assert resolve.parent_span_id == resolve_call.span_id
        rebuild_call = one(spans, "rapport-decision", GET_PROFILE, "CLIENT")
        assert rebuild_call.parent_span_id == decide_span.span_id
        rebuild = one(spans, "rapport-profile", GET_PROFILE, "SERVER")
        assert rebuild.parent_span_id == rebuild_call.span_id
        identifiers_call = one(spans, "rapport-profile", GET_PERSON, "CLIENT")
        assert identifiers_call.parent_span_id == rebuild.span_id
        identifiers = one(spans, "rapport-identity", GET_PERSON, "SERVER")
        assert identifiers.parent_span_id == identifiers_call.span_id
        # The stores' calls made for the request are in it too: decision's Redis reads of the live
        # profile, identity's and profile's Cassandra statements.
        by_id = {span.span_id: span for span in spans}
        redis_reads = [
            s for s in spans if s.service == "rapport-decision" and s.attributes.get("db.system.name") == "redis"
        ]
        assert redis_reads and all(s.parent_span_id == decide_span.span_id for s in redis_reads)
        cassandra = [s for s in spans if s.attributes.get("db.system.name") == "cassandra"]
        assert {s.service for s in cassandra} == {"rapport-identity", "rapport-profile"}
        assert all(by_id[s.parent_span_id].kind == "SERVER" for s in cassandra)
        assert {s.trace_id for s in spans} == {trace_id}

        # A replica that exports nothing passes the storefront's context through unchanged: the
        # identity span's parent is the storefront's own span.
        traceparent, trace_id, storefront_span = storefront_traceparent()
        decide(passing_through, visitor, traceparent)
        [resolve] = wait_until(
            lambda: [s for s in receiver.of_trace(trace_id) if s.name == BATCH_RESOLVE],
            20.0,
            "the identity span behind a decision replica without an endpoint",
            every_s=0.1,
        )
        assert resolve.parent_span_id == storefront_span
        assert resolve.service == "rapport-identity"
    finally:
        for service in reversed(services):
            service.terminate()
        receiver.stop()
