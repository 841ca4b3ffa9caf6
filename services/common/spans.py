"""OpenTelemetry spans exported over OTLP/HTTP: what `services/common/tracing.py` uses when an
endpoint is configured (and the only module that imports the SDK, so only then).

Span names and attributes follow OpenTelemetry's semantic conventions for RPC, HTTP and databases:
`rapport.identity.v1.IdentityService/Resolve` with `rpc.system=grpc`, `rpc.grpc.status_code`; a
page of the staff console by its route, `GET /people/{person_id}`, with `http.route` and
`http.response.status_code`; a Redis command or Cassandra statement by its verb with
`db.system.name`. Attributes never hold a key or bound value; an opaque id (a delivery) may be, as
in the logs.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from services.common.tracing import PASS_THROUGH, TRACEPARENT, TRACESTATE, Metadata, RequestTrace, TraceParent

INSTRUMENTATION_NAME = "rapport"

# The last hex digit of a traceparent's flags (character 54) is even when the sampled bit is 0.
_UNSAMPLED_FLAGS = frozenset("02468ace")
_STATUS_NUMBERS = {status.name: status.value[0] for status in grpc.StatusCode}
# Per the RPC conventions, a server span is an error only for these codes (the others are the
# caller's mistake); a client span is an error for every code but OK.
_SERVER_ERRORS = frozenset({"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"})


def sampler_for(name: str, ratio: float) -> Sampler:
    """The sampler OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG name (validated by the settings)."""
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": DEFAULT_ON,
        "parentbased_always_off": DEFAULT_OFF,
        "parentbased_traceidratio": ParentBasedTraceIdRatio(ratio),
    }
    return samplers[name]


def drawn_ratio(sampler: str, ratio: float) -> float | None:
    """The share of new traces SpanExport samples itself under a parent-based sampler; None when
    the SDK's sampler decides (parentbased_always_on samples them all; the others ignore callers)."""
    if sampler == "parentbased_traceidratio":
        return ratio
    if sampler == "parentbased_always_off":
        return 0.0
    return None


def _remote_parent(parent: TraceParent, tracestate: str | None) -> otel_context.Context:
    state = TraceState.from_header([tracestate]) if tracestate else None
    remote = SpanContext(parent.trace_id, parent.span_id, True, TraceFlags(parent.flags), state)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def _rpc_attributes(rpc: str) -> dict[str, str]:
    service, _, method = rpc.partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method}


def _traceparent_of(span_context: SpanContext) -> str:
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def _trace_headers_of(span_context: SpanContext) -> Metadata:
    traceparent = (TRACEPARENT, _traceparent_of(span_context))
    if span_context.trace_state:
        return (traceparent, (TRACESTATE, span_context.trace_state.to_header()))
    return (traceparent,)


class _CurrentServerSpan:
    """A SERVER span, current while its request is served; subclasses record the outcome in
    their protocol's conventions."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token = otel_context.attach(trace.set_span_in_context(span))

    def trace_id(self) -> str:
        return f"{self._span.get_span_context().trace_id:032x}"

    def end(self, code: str, error: BaseException | None = None) -> None:
        span = self._span
        if span.is_recording():
            failed = self._record_outcome(span, code)
            if failed:
                span.set_status(Status(StatusCode.ERROR, code))
                if error is not None:
                    span.set_attribute("error.type", type(error).__name__)
        otel_context.detach(self._token)
        span.end()

    def _record_outcome(self, span: trace.Span, code: str) -> bool:
        """Sets the status attribute; whether the span is an error."""
        raise NotImplementedError


class ServerSpan(_CurrentServerSpan):
    """The SERVER span of one RPC, current while the handler runs."""

    __slots__ = ()

    def _record_outcome(self, span: trace.Span, code: str) -> bool:
        span.set_attribute("rpc.grpc.status_code", _STATUS_NUMBERS.get(code, 2))
        return code in _SERVER_ERRORS


class HttpServerSpan(_CurrentServerSpan):
    """The SERVER span of one HTTP request (a page of the staff console), current while it is
    served. `code` is the HTTP status; per the HTTP conventions a server span is an error for
    5xx only."""

    __slots__ = ()

    def _record_outcome(self, span: trace.Span, code: str) -> bool:
        status = int(code)
        span.set_attribute("http.response.status_code", status)
        return status >= 500


class ClientCall(AbstractContextManager[Metadata]):
    """A call to another service as a CLIENT span; entering gives the metadata to send."""

    __slots__ = ("_metadata", "_rpc", "_span", "_tracer")

    def __init__(self, tracer: trace.Tracer, rpc: str, metadata: Metadata) -> None:
        self._tracer = tracer
        self._rpc = rpc
        self._metadata = metadata
        self._span: trace.Span | None = None

    def __enter__(self) -> Metadata:
        span = self._span = self._tracer.start_span(
            self._rpc, kind=SpanKind.CLIENT, attributes=_rpc_attributes(self._rpc)
        )
        return (*self._metadata, *_trace_headers_of(span.get_span_context()))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        span = self._span
        if span is None:
            return
        if span.is_recording():
            if isinstance(error, grpc.aio.AioRpcError):
                code = error.code()
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                span.set_status(Status(StatusCode.ERROR, code.name))
            elif error is not None:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            else:
                span.set_attribute("rpc.grpc.status_code", 0)
        span.end()


class SpanExport:
    """Spans of one process, batched (BatchSpanProcessor) to an OTLP/HTTP collector.

    Under the parent-based samplers two kinds of traces make no span at all, because the SDK is
    most of tracing's cost and their spans would not be recorded: a request whose caller did not
    sample its trace (its context is passed on as it came), and a trace this process starts that
    the sampler's ratio leaves out (a fresh unsampled context is passed on, so the services it
    calls leave it out too). The ratio is drawn here for those; the SDK's sampler only ever sees
    traces already chosen.
    """

    def __init__(self, provider: TracerProvider, sampler: str, ratio: float) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        self._follows_callers_sampling = sampler.startswith("parentbased_")
        self._new_trace_ratio = drawn_ratio(sampler, ratio)

    @classmethod
    def to_otlp(cls, service_name: str, traces_url: str, sampler: str, ratio: float) -> SpanExport:
        """Export to `traces_url`. The exporter's other standard variables (OTEL_EXPORTER_OTLP_HEADERS,
        _TIMEOUT, _COMPRESSION, _CERTIFICATE), the batching ones (OTEL_BSP_*) and
        OTEL_RESOURCE_ATTRIBUTES apply as usual."""
        return cls.with_processor(
            service_name, BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url)), sampler, ratio
        )

    @classmethod
    def with_processor(
        cls, service_name: str, processor: SpanProcessor, sampler: str = "parentbased_always_on", ratio: float = 1.0
    ) -> SpanExport:
        provider = TracerProvider(
            # A new trace that reaches the SDK after a draw here was chosen already.
            sampler=DEFAULT_ON if drawn_ratio(sampler, ratio) is not None else sampler_for(sampler, ratio),
            resource=Resource.create({SERVICE_NAME: service_name}),
            shutdown_on_exit=False,  # the bootstrap shuts it down, within the pod's grace period
        )
        provider.add_span_processor(processor)
        return cls(provider, sampler, ratio)

    def _left_out(self) -> bool:
        """Whether a trace this process starts now is left out by the sampling ratio."""
        return self._new_trace_ratio is not None and random.random() >= self._new_trace_ratio

    # the interceptor (tracing.RpcTracing)
    def start(
        self, method: str, traceparent: str | None, tracestate: str | None, request_id: str
    ) -> RequestTrace | None:
        rpc = method[1:]  # "/pkg.Service/Method" -> "pkg.Service/Method"
        return self._server_span(rpc, _rpc_attributes(rpc), traceparent, tracestate, ServerSpan)

    def start_http(
        self, http_method: str, route: str, traceparent: str | None, tracestate: str | None
    ) -> RequestTrace | None:
        """An HTTP request (the staff console), by its route: `GET /people/{person_id}`."""
        return self._server_span(
            f"{http_method} {route}",
            {"http.request.method": http_method, "http.route": route},
            traceparent,
            tracestate,
            HttpServerSpan,
        )

    def _server_span(
        self,
        name: str,
        attributes: dict[str, str],
        traceparent: str | None,
        tracestate: str | None,
        span_type: Callable[[trace.Span], RequestTrace],
    ) -> RequestTrace | None:
        if traceparent is not None and self._follows_callers_sampling and traceparent[54:55] in _UNSAMPLED_FLAGS:
            # The caller's trace is not recorded, so none of this request's spans would be: skip
            # the SDK and pass the context on as it came, flag included.
            passed_on = PASS_THROUGH.start(name, traceparent, tracestate, "")
            if passed_on is not None:  # else malformed: a new trace
                return passed_on
        parent = TraceParent.parse(traceparent) if traceparent is not None else None
        if parent is None and self._left_out():
            return PASS_THROUGH.start(name, _unsampled_traceparent(), None, "")
        span = self._tracer.start_span(
            name,
            # No valid parent: a new trace, never a child of whatever the task held before.
            context=_remote_parent(parent, tracestate) if parent is not None else otel_context.Context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        return span_type(span)

    def client_call(self, rpc: str, metadata: Metadata) -> AbstractContextManager[Metadata]:
        current = trace.get_current_span()
        if self._follows_callers_sampling and not current.is_recording():
            span_context = current.get_span_context()
            if span_context.is_valid:  # inside an unsampled trace: the call would not be sampled either
                return nullcontext((*metadata, *_trace_headers_of(span_context)))
            if self._left_out():  # a call outside any trace (background work) starts one
                return nullcontext((*metadata, (TRACEPARENT, _unsampled_traceparent())))
        return ClientCall(self._tracer, rpc, metadata)

    def current_traceparent(self) -> str:
        span_context = trace.get_current_span().get_span_context()
        return _traceparent_of(span_context) if span_context.is_valid else ""

    @contextmanager
    def job_span(self, name: str, linked_traceparent: str, attributes: Mapping[str, str | int]) -> Iterator[None]:
        if self._left_out():
            # Not sampled: the job's calls and queued work carry an unsampled context of its own.
            not_recorded = NonRecordingSpan(SpanContext(*_new_ids(), False, TraceFlags(0)))
            with trace.use_span(not_recorded, end_on_exit=False):
                yield
            return
        linked = TraceParent.parse(linked_traceparent) if linked_traceparent else None
        links = (
            [Link(SpanContext(linked.trace_id, linked.span_id, True, TraceFlags(linked.flags)))]
            if linked is not None
            else []
        )
        with self._tracer.start_as_current_span(
            name,
            context=otel_context.Context(),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=dict(attributes),
            # Exception messages may quote data (an address a mail server refused): the type only.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except Exception as error:
                mark_failed(span, error)
                raise

    def store_span(self, system: str, operation: str, attributes: Mapping[str, Any] | None = None) -> StoreSpan | None:
        """A CLIENT span for one Redis command or Cassandra statement, when the current span is
        sampled (background polling outside any request makes none); the caller ends it."""
        if not trace.get_current_span().is_recording():
            return None
        span = self._tracer.start_span(
            operation,
            kind=SpanKind.CLIENT,
            attributes={"db.system.name": system, "db.operation.name": operation, **(attributes or {})},
        )
        return StoreSpan(span)

    def shutdown(self) -> None:
        """Export what is buffered, then stop (blocking: call it off the event loop)."""
        self._provider.shutdown()


def _new_ids() -> tuple[int, int]:
    """A new trace id and span id, drawn as the SDK draws them (never zero)."""
    return random.getrandbits(128) or 1, random.getrandbits(64) or 1


def _unsampled_traceparent() -> str:
    trace_id, span_id = _new_ids()
    return f"00-{trace_id:032x}-{span_id:016x}-00"


def mark_failed(span: trace.Span, error: BaseException) -> None:
    """Mark `span` failed by `error`: its type only, never its message."""
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))


class StoreSpan:
    """The span of one Redis command or Cassandra statement."""

    __slots__ = ("_span",)

    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def end(self, error: BaseException | None = None) -> None:
        if error is not None:
            mark_failed(self._span, error)
        self._span.end()
