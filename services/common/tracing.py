"""Trace context across the services (W3C Trace Context in gRPC metadata), and OpenTelemetry spans
exported over OTLP/HTTP when an endpoint is configured.

`configure_tracing` picks one of two modes per process (the shared bootstrap calls it once, and
so does the staff console, whose HTTP requests `http_request` traces as the interceptor does RPCs):
- No endpoint (the default): the OpenTelemetry tracing SDK is not imported and no span is ever
  made. The interceptor keeps a valid incoming `traceparent` (and its `tracestate`) in a context
  variable, and `outgoing` adds them to the calls the request makes to other services, so a trace
  begun by the storefront still joins up across replicas that export nothing. Cost: a metadata
  lookup per RPC, and a tuple concatenation per outgoing call.
- An endpoint: spans (`services/common/spans.py`): one SERVER span per RPC, child of the caller's,
  a CLIENT span per call to another service (its context goes out as `traceparent`), spans of the
  Redis commands and Cassandra statements made inside a sampled span, and spans of messaging's
  background work. An RPC whose caller did not sample its trace (flag 00) is passed through as
  without an endpoint, under the parent-based samplers: its spans would not be recorded anyway,
  and the SDK is most of the cost.

The mode is process-wide state, like logging's configuration: the adapters that call other
services are built in many places, and a process is one service either way.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import threading
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from services.common.settings import TracingSettings

if TYPE_CHECKING:
    from services.common.spans import SpanExport

log = structlog.get_logger("rapport.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# W3C: a tracestate is at most 32 members; 512 characters is what every vendor must pass on.
MAX_TRACESTATE_CHARS = 512
OTLP_TRACES_PATH = "/v1/traces"
# On shutdown, buffered spans get this long to reach the collector: it must fit in the pod's
# termination grace period after the RPC grace.
FLUSH_TIMEOUT_S = 5.0

Metadata = tuple[tuple[str, str], ...]

# version - trace id - parent span id - flags [- fields of a later version]
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL)


_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16


def _valid_match(header: str) -> re.Match[str] | None:
    match = _TRACEPARENT.fullmatch(header)
    if match is None:
        return None
    version, trace_hex, span_hex, _flags_hex, later_fields = match.groups()
    # Version ff is forbidden; version 00 has exactly four fields. A later version may add
    # fields, and its first four are read as version 00's. All-zero ids are invalid.
    if version == "ff" or (version == "00" and later_fields is not None):
        return None
    if trace_hex == _ZERO_TRACE_ID or span_hex == _ZERO_SPAN_ID:
        return None
    return match


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A W3C `traceparent`: the trace a call belongs to and the span that made it."""

    trace_id: int
    span_id: int
    flags: int

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 0x01)

    @classmethod
    def parse(cls, header: str) -> TraceParent | None:
        """None when the header breaks the W3C rules; the receiver then starts a new trace."""
        match = _valid_match(header)
        if match is None:
            return None
        _version, trace_hex, span_hex, flags_hex, _later_fields = match.groups()
        return cls(int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16))

    def header(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


def trace_headers(traceparent: str | None, tracestate: str | None) -> Metadata:
    """The trace headers of an incoming call worth passing on: none unless `traceparent` is valid;
    `tracestate` only with it, and only when it is of a size every vendor accepts."""
    if traceparent is None or _valid_match(traceparent) is None:
        return ()
    if tracestate and len(tracestate) <= MAX_TRACESTATE_CHARS:
        return ((TRACEPARENT, traceparent), (TRACESTATE, tracestate))
    return ((TRACEPARENT, traceparent),)


# ---------------------------------------------------------------------------------- server side
class RequestTrace(Protocol):
    """The trace of one RPC the server handles; `end` once, with the gRPC code name (or, for an
    HTTP request, its status: "200")."""

    def trace_id(self) -> str: ...

    def end(self, code: str, error: BaseException | None = None) -> None: ...


class RpcTracing(Protocol):
    """What the interceptor does with an RPC's trace context."""

    def start(
        self, method: str, traceparent: str | None, tracestate: str | None, request_id: str
    ) -> RequestTrace | None:
        """Begin the RPC's trace; None when there is nothing to do."""
        ...


_passed_on: contextvars.ContextVar[Metadata] = contextvars.ContextVar("rapport_trace_headers", default=())


class _PassedOn:
    """An incoming trace context, held for the request's outgoing calls while it runs."""

    __slots__ = ("_headers", "_token")

    def __init__(self, headers: Metadata) -> None:
        self._headers = headers
        self._token = _passed_on.set(headers)

    def trace_id(self) -> str:
        return self._headers[0][1][3:35]

    def end(self, code: str, error: BaseException | None = None) -> None:
        # try rather than contextlib.suppress: this runs on every RPC that brings a trace context.
        try:  # noqa: SIM105
            _passed_on.reset(self._token)
        except ValueError:  # ended from another context (a stream finalised late): it dies with its own
            pass


class PassThrough:
    """No spans: an incoming trace context is only passed on to the request's outgoing calls."""

    def start(
        self, method: str, traceparent: str | None, tracestate: str | None, request_id: str
    ) -> RequestTrace | None:
        if traceparent is None:
            return None
        headers = trace_headers(traceparent, tracestate)
        return _PassedOn(headers) if headers else None


PASS_THROUGH = PassThrough()

# ---------------------------------------------------------------------------------- process mode
_spans: SpanExport | None = None


def otlp_traces_url(settings: TracingSettings) -> str:
    """Where spans go ('' = nowhere): the standard traces URL, else a base URL + /v1/traces."""
    if settings.otel_sdk_disabled:
        return ""
    if settings.otel_exporter_otlp_traces_endpoint:
        return settings.otel_exporter_otlp_traces_endpoint
    base = settings.otlp_endpoint or settings.otel_exporter_otlp_endpoint
    return base.rstrip("/") + OTLP_TRACES_PATH if base else ""


def configure_tracing(settings: TracingSettings) -> None:
    """Export spans when an OTLP endpoint is configured; otherwise pass trace context through."""
    global _spans
    url = otlp_traces_url(settings)
    if not url:
        _spans = None
        return
    from services.common.spans import SpanExport  # the SDK is loaded only when spans are exported

    _spans = SpanExport.to_otlp(
        f"rapport-{settings.service_name}",
        url,
        settings.otel_traces_sampler.lower(),
        settings.otel_traces_sampler_arg,
    )
    log.info(
        "tracing",
        endpoint=url,
        sampler=settings.otel_traces_sampler,
        ratio=settings.otel_traces_sampler_arg,
    )


def use_span_export(spans: SpanExport | None) -> None:
    """Install (or remove, with None) span export directly: tests and the tracing benchmark."""
    global _spans
    _spans = spans


async def shutdown_tracing(timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Export the spans still buffered, within `timeout_s`, then stop exporting."""
    global _spans
    spans, _spans = _spans, None
    if spans is None:
        return
    # A daemon thread: a collector that does not answer must not hold the process past its grace.
    flushing = threading.Thread(target=spans.shutdown, name="rapport-trace-flush", daemon=True)
    flushing.start()
    await asyncio.to_thread(flushing.join, timeout_s)
    if flushing.is_alive():
        log.warning("trace_flush_timed_out", timeout_s=timeout_s)


def rpc_tracing() -> RpcTracing:
    """What the server interceptor uses in this process's mode."""
    return _spans if _spans is not None else PASS_THROUGH


def http_request(http_method: str, route: str, traceparent: str | None, tracestate: str | None) -> RequestTrace | None:
    """The trace of one HTTP request an aiohttp server (the staff console) serves, as the gRPC
    interceptor's `rpc_tracing().start` is for an RPC; `end` it with the HTTP status. Without spans
    it only continues a valid incoming `traceparent` (None, and nothing to do, without one); with
    spans it is a SERVER span named by the route."""
    if _spans is None:
        return PASS_THROUGH.start(route, traceparent, tracestate, "") if traceparent is not None else None
    return _spans.start_http(http_method, route, traceparent, tracestate)


def span_export() -> SpanExport | None:
    """The span exporter, or None when no span is made (the store clients ask when they are built)."""
    return _spans


# ---------------------------------------------------------------------------------- client side
def outgoing(rpc: str, metadata: Metadata) -> AbstractContextManager[Metadata]:
    """The metadata of a call to another service: `metadata` plus the current trace context.

        with tracing.outgoing("rapport.identity.v1.IdentityService/BatchResolve", self._metadata) as metadata:
            reply = await self._stub.BatchResolve(request, metadata=metadata, timeout=...)

    With spans, the call is a CLIENT span and its context is what goes out.
    """
    passed_on = _passed_on.get()
    if _spans is None or passed_on:  # no spans, or a request whose caller's trace is not recorded
        return nullcontext(metadata + passed_on)
    return _spans.client_call(rpc, metadata)


def current_traceparent() -> str:
    """The trace context of the current task as a `traceparent` ('' outside any): what queued work
    keeps so that its later processing links back to the request that queued it."""
    passed_on = _passed_on.get()
    if passed_on:
        return passed_on[0][1]
    return _spans.current_traceparent() if _spans is not None else ""


def job_span(
    name: str, linked_traceparent: str = "", attributes: Mapping[str, str | int] | None = None
) -> AbstractContextManager[None]:
    """A background job (a queued send, a batch of stream events) as a trace of its own, linked to
    the trace that queued it; nothing without spans."""
    if _spans is None:
        return nullcontext()
    return _spans.job_span(name, linked_traceparent, attributes or {})
