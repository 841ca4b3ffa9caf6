"""bench-tracing: what trace context costs per RPC on the server's own path (the shared
interceptor, around a handler that makes one call to another service), in process, without a
network: the cases differ only by tracing.

Cases:
- off: no endpoint, the storefront sends no traceparent (the default deployment);
- off+traceparent: no endpoint, a traceparent comes in and is passed on to the outgoing call;
- spans, sampled: an endpoint (spans batched by a BatchSpanProcessor to an exporter that drops
  them, so the collector's network is not measured), sampled: a SERVER and a CLIENT span per RPC;
- spans, caller unsampled: the same with a caller's unsampled traceparent (passed through);
- spans, 10% of new traces: no traceparent, parentbased_traceidratio 0.1 (the Kubernetes default).

Prints one line per case: best and median microseconds per RPC over BENCH_REPEATS runs of
BENCH_CALLS RPCs each (defaults 7 and 20 000), like timeit's best-of-N.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from services.common import tracing
from services.common.auth import ApiKeyRegistry
from services.common.interceptors import InterceptorConfig, RapportServerInterceptor, RpcMetrics
from services.common.spans import SpanExport
from services.common.tracing import PASS_THROUGH, RpcTracing

KEY = "bench-key-0123456789"
METHOD = "/rapport.identity.v1.IdentityService/Resolve"
OUTGOING = "rapport.profile.v1.ProfileService/GetProfile"
PEER_METADATA = (("authorization", "Bearer peer-key"),)
SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
UNSAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"


class DroppingExporter(SpanExporter):
    """Accepts every batch and keeps nothing: the SDK's cost without the collector's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


@dataclass
class CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class Context:
    def time_remaining(self) -> float | None:
        return None


async def handler(_request: Any, _context: Any) -> Any:
    with tracing.outgoing(OUTGOING, PEER_METADATA) as metadata:
        return metadata


async def continuation(_details: Any) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(handler)


def interceptor(mode: RpcTracing) -> RapportServerInterceptor:
    return RapportServerInterceptor(
        InterceptorConfig(
            error_domain="rapport.bench",
            default_deadline_s=1.0,
            max_deadline_s=5.0,
            slow_rpc_s=10.0,
            access_log=False,
            method_scopes={METHOD: "identity.resolve"},
        ),
        ApiKeyRegistry.parse(f"bench:{KEY}:*"),
        RpcMetrics("bench", CollectorRegistry()),
        mode,
    )


async def per_call_us(server: RapportServerInterceptor, metadata: tuple[tuple[str, str], ...], calls: int) -> float:
    details = CallDetails(METHOD, metadata)
    context = Context()
    started = time.perf_counter()
    for _ in range(calls):
        wrapped = await server.intercept_service(continuation, details)
        await wrapped.unary_unary(None, context)
    return (time.perf_counter() - started) / calls * 1e6


async def main() -> None:
    calls = int(os.environ.get("BENCH_CALLS", "20000"))
    repeats = int(os.environ.get("BENCH_REPEATS", "7"))
    auth = ("authorization", f"Bearer {KEY}")
    spans = SpanExport.with_processor("rapport-bench", BatchSpanProcessor(DroppingExporter()))
    tenth = SpanExport.with_processor(
        "rapport-bench", BatchSpanProcessor(DroppingExporter()), "parentbased_traceidratio", 0.1
    )
    cases: list[tuple[str, SpanExport | None, tuple[tuple[str, str], ...]]] = [
        ("off", None, (auth,)),
        ("off+traceparent", None, (auth, ("traceparent", SAMPLED))),
        ("spans, sampled", spans, (auth, ("traceparent", SAMPLED))),
        ("spans, caller unsampled", spans, (auth, ("traceparent", UNSAMPLED))),
        ("spans, 10% of new traces", tenth, (auth,)),
    ]
    servers = {name: interceptor(export if export is not None else PASS_THROUGH) for name, export, _ in cases}
    runs: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    for _ in range(repeats):  # cases interleaved: a busy moment of the machine hits them alike
        for name, export, metadata in cases:
            tracing.use_span_export(export)
            await per_call_us(servers[name], metadata, calls // 10)  # warm-up
            runs[name].append(await per_call_us(servers[name], metadata, calls))
    for name, _, _ in cases:
        print(f"{name:24} best_us={min(runs[name]):.2f} median_us={statistics.median(runs[name]):.2f}", flush=True)
    tracing.use_span_export(None)
    spans.shutdown()
    tenth.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
