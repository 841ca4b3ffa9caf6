"""The one server interceptor of every service: request id, auth, deadline, trace context,
metrics, errors, logs.

One interceptor doing six small steps costs one handler wrap per RPC instead of six, which
matters on the hot path (Resolve is called on every storefront click).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_status import rpc_status
from prometheus_client import CollectorRegistry, Counter, Histogram
from redis.exceptions import RedisError

from services.common import deadlines
from services.common.auth import ApiKeyRegistry, Principal, require_scope
from services.common.errors import DeadlineExceeded, RapportError, Unavailable, internal_status, to_rpc_status
from services.common.tracing import PASS_THROUGH, TRACEPARENT, TRACESTATE, RequestTrace, RpcTracing

# Probes and discovery must work without a key (Kubernetes, grpc-health-probe, grpcurl).
PUBLIC_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

log = structlog.get_logger("rapport.rpc")

# Request ids for calls that bring none: a random per-process prefix and a counter, unique
# across replicas and restarts without a uuid4 (a syscall) per call.
_REQUEST_ID_PREFIX = os.urandom(6).hex()
_request_numbers = itertools.count(1)


def new_request_id() -> str:
    return f"{_REQUEST_ID_PREFIX}-{next(_request_numbers):x}"


class RpcMetrics:
    """Per-RPC count and latency histogram, labelled by method and status code."""

    def __init__(self, service: str, registry: CollectorRegistry) -> None:
        self._service = service
        self._count = Counter("rapport_rpc_total", "RPCs handled", ["service", "method", "code"], registry=registry)
        self._latency = Histogram(
            "rapport_rpc_duration_seconds",
            "RPC latency",
            ["service", "method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            children = (
                self._count.labels(self._service, method, code),
                self._latency.labels(self._service, method, code),
            )
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(seconds)


@dataclass(frozen=True)
class InterceptorConfig:
    error_domain: str
    default_deadline_s: float
    max_deadline_s: float
    slow_rpc_s: float
    access_log: bool
    method_scopes: Mapping[str, str]


_REQUEST_ID = "x-request-id"
_AUTHORIZATION = "authorization"


def _call_headers(metadata: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """(request id, authorization, traceparent, tracestate) from the call's metadata, in one pass."""
    request_id = authorization = traceparent = tracestate = None
    for key, value in metadata or ():
        if key == _AUTHORIZATION:
            authorization = value
        elif key == _REQUEST_ID:
            request_id = value
        elif key == TRACEPARENT:
            traceparent = value
        elif key == TRACESTATE:
            tracestate = value
    return request_id, authorization, traceparent, tracestate


# The tracing of a call (None for probes), and the trace headers it came with.
_TraceContext = tuple[RpcTracing | None, str | None, str | None]


class RapportServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        config: InterceptorConfig,
        api_keys: ApiKeyRegistry,
        metrics: RpcMetrics,
        tracing: RpcTracing = PASS_THROUGH,
    ) -> None:
        self._config = config
        self._api_keys = api_keys
        self._metrics = metrics
        self._tracing = tracing

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        sent_request_id, authorization, traceparent, tracestate = _call_headers(
            handler_call_details.invocation_metadata
        )
        request_id = sent_request_id or new_request_id()
        auth_error: RapportError | None = None
        principal: Principal | None = None
        # Probes and discovery are not traced: a health check every second is no one's request.
        tracing: RpcTracing | None = None
        if not method.startswith(PUBLIC_METHOD_PREFIXES):
            tracing = self._tracing
            try:
                principal = self._api_keys.authenticate(authorization)
                scope = self._config.method_scopes.get(method)
                if scope is None:  # deny by default: every method must declare its scope
                    scope = f"undeclared:{method}"
                require_scope(principal, scope, method)
            except RapportError as error:
                auth_error = error

        trace_context = (tracing, traceparent, tracestate)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method, request_id, principal, auth_error, trace_context),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method, request_id, principal, auth_error, trace_context),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # client-streaming RPCs are not used by Rapport

    async def _abort(self, context: grpc.aio.ServicerContext, error: RapportError | None, request_id: str) -> None:
        status = (
            to_rpc_status(error, self._config.error_domain, request_id)
            if error is not None
            else internal_status(self._config.error_domain, request_id)
        )
        grpc_status = rpc_status.to_status(status)
        await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)

    def _finish(
        self,
        method: str,
        request_id: str,
        principal: Principal | None,
        started: float,
        code: str,
        error: BaseException | None,
        trace: RequestTrace | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        self._metrics.observe(method, code, elapsed)
        if trace is not None:
            trace.end(code, error)
        if error is not None and not isinstance(error, RapportError):
            log.error(
                "rpc_failed",
                rpc=method,
                request_id=request_id,
                trace_id=trace.trace_id() if trace is not None else None,
                code=code,
                ms=round(elapsed * 1000, 2),
                exc_info=error,
            )
        elif (
            self._config.access_log
            or elapsed > self._config.slow_rpc_s
            or (error is not None and code not in ("INVALID_ARGUMENT", "NOT_FOUND"))
        ):
            log.info(
                "rpc",
                rpc=method,
                request_id=request_id,
                trace_id=trace.trace_id() if trace is not None else None,
                code=code,
                ms=round(elapsed * 1000, 2),
                caller=principal.name if principal else None,
                reason=getattr(error, "reason", None),
            )

    def _budget(self, context: grpc.aio.ServicerContext) -> float:
        return deadlines.request_budget_s(
            context.time_remaining(), self._config.default_deadline_s, self._config.max_deadline_s
        )

    def _wrap_unary(
        self,
        behaviour: Any,
        method: str,
        request_id: str,
        principal: Principal | None,
        auth_error: RapportError | None,
        trace_context: _TraceContext,
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        tracing, traceparent, tracestate = trace_context

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            trace = tracing.start(method, traceparent, tracestate, request_id) if tracing is not None else None
            if auth_error is not None:
                self._finish(method, request_id, principal, started, auth_error.grpc_code.name, auth_error, trace)
                await self._abort(context, auth_error, request_id)
            budget = self._budget(context)
            token = deadlines.set_deadline(budget)
            try:
                async with asyncio.timeout(budget):
                    response = await behaviour(request, context)
            except RapportError as error:
                self._finish(method, request_id, principal, started, error.grpc_code.name, error, trace)
                await self._abort(context, error, request_id)
            except TimeoutError:
                expired = DeadlineExceeded()
                self._finish(method, request_id, principal, started, "DEADLINE_EXCEEDED", expired, trace)
                await self._abort(context, expired, request_id)
            except asyncio.CancelledError:
                self._finish(method, request_id, principal, started, "CANCELLED", None, trace)
                raise
            except grpc.aio.AbortError:  # the handler aborted by itself (Rapport's handlers raise instead)
                if trace is not None:
                    trace.end("UNKNOWN")
                raise
            except RedisError as store_error:  # still failing after the client's retries
                unavailable = Unavailable(f"Redis is unreachable: {type(store_error).__name__}")
                self._finish(method, request_id, principal, started, "UNAVAILABLE", unavailable, trace)
                await self._abort(context, unavailable, request_id)
            except Exception as unexpected:
                self._finish(method, request_id, principal, started, "INTERNAL", unexpected, trace)
                await self._abort(context, None, request_id)
            finally:
                deadlines.reset_deadline(token)
            self._finish(method, request_id, principal, started, "OK", None, trace)
            return response

        return handle

    def _wrap_stream(
        self,
        behaviour: Any,
        method: str,
        request_id: str,
        principal: Principal | None,
        auth_error: RapportError | None,
        trace_context: _TraceContext,
    ) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
        tracing, traceparent, tracestate = trace_context

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = time.perf_counter()
            trace = tracing.start(method, traceparent, tracestate, request_id) if tracing is not None else None
            if auth_error is not None:
                self._finish(method, request_id, principal, started, auth_error.grpc_code.name, auth_error, trace)
                await self._abort(context, auth_error, request_id)
            # A stream lives as long as the caller wants; each step still gets the default budget.
            code = "OK"
            try:
                async for response in behaviour(request, context):
                    yield response
            except RapportError as error:
                code = error.grpc_code.name
                self._finish(method, request_id, principal, started, code, error, trace)
                await self._abort(context, error, request_id)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                code = "CANCELLED"
                raise
            except Exception as unexpected:
                code = "INTERNAL"
                self._finish(method, request_id, principal, started, code, unexpected, trace)
                await self._abort(context, None, request_id)
            finally:
                if code in ("OK", "CANCELLED"):
                    self._finish(method, request_id, principal, started, code, None, trace)

        return handle
