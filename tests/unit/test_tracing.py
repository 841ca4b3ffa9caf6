"""Trace context: W3C traceparent parsing, passing it through the interceptor to outgoing calls
without spans, and the spans made when they are exported (in memory here; a real OTLP receiver
and real processes in tests/e2e/test_tracing_process.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common import tracing
from services.common.auth import ApiKeyRegistry
from services.common.errors import InvalidArgument
from services.common.interceptors import InterceptorConfig, RapportServerInterceptor, RpcMetrics
from services.common.metrics import RedisMetrics
from services.common.redis import TracedRedis
from services.common.settings import SettingsError, load_settings
from services.common.spans import SpanExport
from services.common.tracing import PASS_THROUGH, Metadata, RpcTracing, TraceParent, trace_headers
from services.identity.settings import IdentitySettings
from services.messaging.domain.triggers import Channel, TriggerInstance, TriggerKind
from services.messaging.messaging import instance_from_json, instance_to_json, trigger_traceparent

KEY = "0123456789abcdef0123"
AUTH = ("authorization", f"Bearer {KEY}")
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"
TRACESTATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
RESOLVE = "/rapport.identity.v1.IdentityService/Resolve"
OUTGOING_RPC = "rapport.profile.v1.ProfileService/GetProfile"
PEER_METADATA: Metadata = (("authorization", "Bearer peer-key"),)


# ---------------------------------------------------------------------------------- traceparent
def test_a_valid_traceparent_is_read_and_written_back_the_same() -> None:
    parent = TraceParent.parse(TRACEPARENT)
    assert parent == TraceParent(TRACE_ID, PARENT_ID, 1)
    assert parent.sampled
    assert parent.header() == TRACEPARENT
    assert not TraceParent(TRACE_ID, PARENT_ID, 0).sampled


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        TRACEPARENT.upper(),  # hex must be lower case
        f"00-{0:032x}-{PARENT_ID:016x}-01",  # all-zero trace id
        f"00-{TRACE_ID:032x}-{0:016x}-01",  # all-zero parent id
        f"ff-{TRACE_ID:032x}-{PARENT_ID:016x}-01",  # forbidden version
        TRACEPARENT + "-extra",  # version 00 has exactly four fields
        TRACEPARENT[:-1],  # short
        f"00-{TRACE_ID:031x}z-{PARENT_ID:016x}-01",
        f"00_{TRACE_ID:032x}-{PARENT_ID:016x}-01",
        TRACEPARENT + "\n",
    ],
)
def test_a_malformed_traceparent_is_refused(header: str) -> None:
    assert TraceParent.parse(header) is None


def test_a_later_version_is_read_by_its_first_four_fields() -> None:
    assert TraceParent.parse(f"cc-{TRACE_ID:032x}-{PARENT_ID:016x}-01-what-comes-later") == TraceParent(
        TRACE_ID, PARENT_ID, 1
    )


def test_only_a_valid_traceparent_and_a_reasonable_tracestate_are_passed_on() -> None:
    assert trace_headers(TRACEPARENT, TRACESTATE) == (("traceparent", TRACEPARENT), ("tracestate", TRACESTATE))
    assert trace_headers(TRACEPARENT, None) == (("traceparent", TRACEPARENT),)
    assert trace_headers(TRACEPARENT, "x=" + "y" * 600) == (("traceparent", TRACEPARENT),)
    assert trace_headers("00-nonsense", TRACESTATE) == ()
    assert trace_headers(None, TRACESTATE) == ()


# ---------------------------------------------------------------------------------- settings
def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    assert tracing.otlp_traces_url(load_settings(IdentitySettings, {})) == ""
    assert (
        tracing.otlp_traces_url(load_settings(IdentitySettings, {"RAPPORT_OTLP_ENDPOINT": "http://collector:4318/"}))
        == "http://collector:4318/v1/traces"
    )
    standard = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318"}
    assert tracing.otlp_traces_url(load_settings(IdentitySettings, standard)) == "http://otel:4318/v1/traces"
    signal = standard | {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://traces.example/v1/traces"}
    assert tracing.otlp_traces_url(load_settings(IdentitySettings, signal)) == "https://traces.example/v1/traces"
    disabled = standard | {"OTEL_SDK_DISABLED": "true"}
    assert tracing.otlp_traces_url(load_settings(IdentitySettings, disabled)) == ""


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RAPPORT_OTLP_ENDPOINT", "collector:4318"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
    ],
)
def test_bad_tracing_settings_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(IdentitySettings, {variable: value})


# ---------------------------------------------------------------------------------- the interceptor
@dataclass
class CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class FakeContext:
    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()) -> None:
        raise grpc.aio.AbortError()


Behaviour = Callable[[Any, Any], Awaitable[Any]]


async def call_through(
    tracing_mode: RpcTracing, behaviour: Behaviour, metadata: tuple[tuple[str, str], ...], method: str = RESOLVE
) -> Any:
    """Run `behaviour` as the handler of one unary RPC behind the shared interceptor."""
    interceptor = RapportServerInterceptor(
        InterceptorConfig(
            error_domain="rapport.test",
            default_deadline_s=1.0,
            max_deadline_s=5.0,
            slow_rpc_s=10.0,
            access_log=False,
            method_scopes={method: "identity.resolve"},
        ),
        ApiKeyRegistry.parse(f"test:{KEY}:*"),
        RpcMetrics("test", CollectorRegistry()),
        tracing_mode,
    )

    async def continuation(_details: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behaviour)

    handler = await interceptor.intercept_service(continuation, CallDetails(method, metadata))
    return await handler.unary_unary(object(), FakeContext())


async def call_a_peer(_request: Any, _context: Any) -> Metadata:
    """A handler that calls another service and returns the metadata the call would carry."""
    with tracing.outgoing(OUTGOING_RPC, PEER_METADATA) as metadata:
        return metadata


async def test_without_spans_the_incoming_trace_context_goes_out_on_the_requests_calls() -> None:
    sent = await call_through(
        PASS_THROUGH, call_a_peer, (AUTH, ("traceparent", TRACEPARENT), ("tracestate", TRACESTATE))
    )
    assert sent == (*PEER_METADATA, ("traceparent", TRACEPARENT), ("tracestate", TRACESTATE))
    # Only for the request's own calls: outside it, nothing is passed on.
    with tracing.outgoing(OUTGOING_RPC, PEER_METADATA) as metadata:
        assert metadata == PEER_METADATA
    assert tracing.current_traceparent() == ""


async def test_without_a_valid_trace_context_nothing_is_added() -> None:
    assert await call_through(PASS_THROUGH, call_a_peer, (AUTH,)) == PEER_METADATA
    assert await call_through(PASS_THROUGH, call_a_peer, (AUTH, ("traceparent", "00-bad"))) == PEER_METADATA


async def test_queued_work_keeps_the_request_trace_context() -> None:
    async def queue_something(_request: Any, _context: Any) -> str:
        return tracing.current_traceparent()

    assert await call_through(PASS_THROUGH, queue_something, (AUTH, ("traceparent", TRACEPARENT))) == TRACEPARENT


# ---------------------------------------------------------------------------------- spans
@pytest.fixture
def exported() -> Iterator[tuple[SpanExport, InMemorySpanExporter]]:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-test", SimpleSpanProcessor(memory))
    tracing.use_span_export(export)
    yield export, memory
    tracing.use_span_export(None)
    export.shutdown()


def attributes_of(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [span for span in spans if span.kind is kind]


async def test_an_rpc_continues_the_callers_trace_and_its_calls_are_its_children(
    exported: tuple[SpanExport, InMemorySpanExporter],
) -> None:
    export, memory = exported
    sent = await call_through(export, call_a_peer, (AUTH, ("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)))
    spans = memory.get_finished_spans()
    [server] = by_kind(spans, SpanKind.SERVER)
    [client] = by_kind(spans, SpanKind.CLIENT)
    assert server.name == RESOLVE[1:]
    assert server.resource.attributes["service.name"] == "rapport-test"
    assert server.context.trace_id == TRACE_ID
    assert server.parent is not None and server.parent.span_id == PARENT_ID and server.parent.is_remote
    assert attributes_of(server)["rpc.service"] == "rapport.identity.v1.IdentityService"
    assert attributes_of(server)["rpc.method"] == "Resolve"
    assert attributes_of(server)["rpc.grpc.status_code"] == 0
    assert str(server.context.trace_state.to_header()) == TRACESTATE
    assert client.name == OUTGOING_RPC
    assert client.context.trace_id == TRACE_ID
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    # What goes out names the client span, so the peer's server span is its child.
    assert sent[: len(PEER_METADATA)] == PEER_METADATA
    outgoing = dict(sent[len(PEER_METADATA) :])
    assert outgoing["traceparent"] == f"00-{TRACE_ID:032x}-{client.context.span_id:016x}-01"
    assert outgoing["tracestate"] == TRACESTATE


async def test_an_rpc_without_trace_context_starts_a_trace(exported: tuple[SpanExport, InMemorySpanExporter]) -> None:
    export, memory = exported
    await call_through(export, call_a_peer, (AUTH,))
    [server] = by_kind(memory.get_finished_spans(), SpanKind.SERVER)
    assert server.parent is None
    assert server.context.trace_id != TRACE_ID


async def test_failures_are_on_the_span_the_servers_own_as_errors(
    exported: tuple[SpanExport, InMemorySpanExporter],
) -> None:
    export, memory = exported

    async def refuse(_request: Any, _context: Any) -> None:
        raise InvalidArgument([], "no")

    async def crash(_request: Any, _context: Any) -> None:
        raise RuntimeError("a bug")

    for behaviour in (refuse, crash):
        with pytest.raises(grpc.aio.AbortError):
            await call_through(export, behaviour, (AUTH,))
    refused, crashed = by_kind(memory.get_finished_spans(), SpanKind.SERVER)
    assert attributes_of(refused)["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.status.status_code is StatusCode.UNSET  # the caller's mistake
    assert attributes_of(crashed)["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert crashed.status.status_code is StatusCode.ERROR
    assert attributes_of(crashed)["error.type"] == "RuntimeError"


async def test_probes_are_not_traced(exported: tuple[SpanExport, InMemorySpanExporter]) -> None:
    export, memory = exported

    async def serving(_request: Any, _context: Any) -> str:
        return "SERVING"

    await call_through(export, serving, (), method="/grpc.health.v1.Health/Check")
    assert memory.get_finished_spans() == ()


async def test_an_unsampled_caller_is_followed_and_says_so_downstream(
    exported: tuple[SpanExport, InMemorySpanExporter],
) -> None:
    export, memory = exported
    unsampled = TRACEPARENT[:-2] + "00"
    sent = await call_through(export, call_a_peer, (AUTH, ("traceparent", unsampled)))
    assert memory.get_finished_spans() == ()
    assert dict(sent)["traceparent"] == unsampled  # passed on as it came: not sampled downstream either


async def test_an_unsampled_new_trace_still_goes_out_unsampled() -> None:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-test", SimpleSpanProcessor(memory), "parentbased_traceidratio", 0.0)
    tracing.use_span_export(export)
    try:
        sent = await call_through(export, call_a_peer, (AUTH,))
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    assert memory.get_finished_spans() == ()
    parent = TraceParent.parse(dict(sent)["traceparent"])
    assert parent is not None and not parent.sampled  # the peer does not sample it either


async def test_the_ratio_samples_that_share_of_new_traces_and_the_rest_make_no_span() -> None:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-test", SimpleSpanProcessor(memory), "parentbased_traceidratio", 0.5)
    tracing.use_span_export(export)
    try:
        sent = [await call_through(export, call_a_peer, (AUTH,)) for _ in range(400)]
        with tracing.job_span("messaging.send"):
            pass
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    sampled = [TraceParent.parse(dict(metadata)["traceparent"]) for metadata in sent]
    recorded = by_kind(memory.get_finished_spans(), SpanKind.SERVER)
    assert 140 <= len(recorded) <= 260  # 200 expected; 6 standard deviations either way
    # Each sampled RPC went out sampled, with its client span; every other one went out unsampled.
    assert sum(1 for parent in sampled if parent is not None and parent.sampled) == len(recorded)
    assert len(by_kind(memory.get_finished_spans(), SpanKind.CLIENT)) == len(recorded)
    assert all(parent is not None for parent in sampled)


async def test_an_unsampled_job_makes_no_span_and_its_calls_say_so() -> None:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-test", SimpleSpanProcessor(memory), "parentbased_traceidratio", 0.0)
    tracing.use_span_export(export)
    try:
        with tracing.job_span("messaging.send", TRACEPARENT), tracing.outgoing(OUTGOING_RPC, PEER_METADATA) as sent:
            queued = tracing.current_traceparent()
        with tracing.outgoing(OUTGOING_RPC, PEER_METADATA) as outside_any_trace:
            pass
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    assert memory.get_finished_spans() == ()
    parent = TraceParent.parse(dict(sent)["traceparent"])
    assert parent is not None and not parent.sampled and parent.trace_id != TRACE_ID
    assert dict(sent)["traceparent"] == queued
    background = TraceParent.parse(dict(outside_any_trace)["traceparent"])
    assert background is not None and not background.sampled


async def test_a_sampler_that_ignores_the_caller_records_an_unsampled_callers_trace() -> None:
    memory = InMemorySpanExporter()
    export = SpanExport.with_processor("rapport-test", SimpleSpanProcessor(memory), "always_on")
    tracing.use_span_export(export)
    try:
        await call_through(export, call_a_peer, (AUTH, ("traceparent", TRACEPARENT[:-2] + "00")))
    finally:
        tracing.use_span_export(None)
        export.shutdown()
    assert {span.kind for span in memory.get_finished_spans()} == {SpanKind.SERVER, SpanKind.CLIENT}
    assert {span.context.trace_id for span in memory.get_finished_spans()} == {TRACE_ID}


async def test_a_job_links_to_the_trace_that_queued_it(exported: tuple[SpanExport, InMemorySpanExporter]) -> None:
    _export, memory = exported
    with tracing.job_span("messaging.send", TRACEPARENT, {"rapport.delivery_id": "d-1"}):
        queued_from_job = tracing.current_traceparent()
        with tracing.outgoing(OUTGOING_RPC, PEER_METADATA):
            pass
    [job] = by_kind(memory.get_finished_spans(), SpanKind.CONSUMER)
    [client] = by_kind(memory.get_finished_spans(), SpanKind.CLIENT)
    assert job.parent is None
    assert [link.context.trace_id for link in job.links] == [TRACE_ID]
    assert job.links[0].context.span_id == PARENT_ID
    assert client.parent is not None and client.parent.span_id == job.context.span_id
    assert TraceParent.parse(queued_from_job) == TraceParent(
        job.context.trace_id, job.context.span_id, int(job.context.trace_flags)
    )


class _AnswersAtOnce(aioredis.Redis):
    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "FAIL":
            raise RedisConnectionError("down")
        return "OK"


class _TracedFake(TracedRedis, _AnswersAtOnce):  # type: ignore[misc]  # redis-py mixins disagree on command_info
    pass


async def test_store_commands_are_spans_only_inside_a_sampled_span(
    exported: tuple[SpanExport, InMemorySpanExporter],
) -> None:
    export, memory = exported
    client = _TracedFake()
    client.metrics = RedisMetrics()
    client.spans = export
    await client.execute_command("GET", "outside-any-request")
    assert memory.get_finished_spans() == ()

    async def read_redis(_request: Any, _context: Any) -> None:
        await client.execute_command("GET", "person:1")
        with pytest.raises(RedisConnectionError):
            await client.execute_command("FAIL")

    await call_through(export, read_redis, (AUTH,))
    [server] = by_kind(memory.get_finished_spans(), SpanKind.SERVER)
    get, failed = by_kind(memory.get_finished_spans(), SpanKind.CLIENT)
    assert (get.name, attributes_of(get)["db.system.name"]) == ("GET", "redis")
    assert get.parent is not None and get.parent.span_id == server.context.span_id
    assert "person:1" not in str(dict(get.attributes or {}))  # keys are data: never on a span
    assert failed.status.status_code is StatusCode.ERROR
    assert attributes_of(failed)["error.type"] == "ConnectionError"
    await client.aclose()


# ---------------------------------------------------------------------------------- messaging
def test_a_scheduled_instance_keeps_the_trace_that_scheduled_it() -> None:
    instance = TriggerInstance(
        kind=TriggerKind.WELCOME,
        person_id="p-1",
        due_at_ms=1,
        channels=(Channel.EMAIL,),
        idempotency_key="k",
        anchor_ms=1,
    )
    stored = instance_to_json(instance, fired=True, traceparent=TRACEPARENT)
    assert trigger_traceparent(stored) == TRACEPARENT
    assert instance_from_json(stored) == (instance, True)
    assert trigger_traceparent(instance_to_json(instance)) == ""
    assert trigger_traceparent("{}") == ""
    assert trigger_traceparent("not json") == ""
