"""Server bootstrap shared by every service: gRPC server, health that tells the truth,
reflection, metrics endpoint, trace export, TLS, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import grpc
import structlog
import uvloop
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from services.common.auth import ApiKeyRegistry
from services.common.cassandra import CassandraClient, open_service_keyspace
from services.common.interceptors import InterceptorConfig, RapportServerInterceptor, RpcMetrics
from services.common.logging import configure_logging
from services.common.metrics import MetricGroup
from services.common.redis import RedisClient
from services.common.settings import CommonSettings, SettingsError, SettingsT, cpu_list, load_settings
from services.common.tracing import configure_tracing, rpc_tracing, shutdown_tracing

log = structlog.get_logger("rapport.server")

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# The middle generation is collected once per this many young objects, whatever the young
# generation's size, and the oldest after this many middle-generation passes (Python's default).
GC_MIDDLE_EVERY_OBJECTS = 1_000_000
GC_OLD_EVERY_MIDDLE = 100


def gc_thresholds(young_objects: int) -> tuple[int, int, int]:
    """`gc.set_threshold` arguments for a young generation of `young_objects` (see serve)."""
    return young_objects, max(1, GC_MIDDLE_EVERY_OBJECTS // young_objects), GC_OLD_EVERY_MIDDLE


class DependencyProbe(Protocol):
    """A backing store whose reachability decides health (Redis, Cassandra, a peer service)."""

    name: str

    async def ping(self, timeout_s: float) -> None: ...


@dataclass
class ServiceRegistration:
    """What a service contributes to the shared server."""

    full_name: str  # e.g. "rapport.identity.v1.IdentityService"
    add_to_server: Callable[[grpc.aio.Server], None]
    method_scopes: dict[str, str]
    error_domain: str
    probes: Sequence[DependencyProbe] = field(default_factory=list)
    on_close: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Other listeners the service opened (e.g. messaging's tracking HTTP endpoint), by name.
    http_ports: dict[str, int] = field(default_factory=dict)
    # Prometheus collectors served on the service's /metrics besides the RPC metrics. The store
    # clients among `probes` (Redis, Cassandra) bring their own metrics: no need to list them.
    collectors: Sequence[Collector] = field(default_factory=list)

    def metric_collectors(self) -> list[Collector]:
        """`collectors`, then the metrics of every probe that has some, each once."""
        found = list(self.collectors)
        for probe in self.probes:
            metrics = getattr(probe, "metrics", None)
            if isinstance(metrics, MetricGroup) and all(metrics is not seen for seen in found):
                found.append(metrics)
        return found


class _MethodAwarePool:
    """The default descriptor pool, but a method name (`pkg.Service.Method`) finds its file.

    protobuf's upb pool raises KeyError for method symbols, so `grpcurl describe pkg.S.M` and
    ghz, which look methods up by symbol, would fail through reflection.
    """

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            parent = symbol.rpartition(".")[0]
            if not parent:
                raise
            return self._pool.FindFileContainingSymbol(parent)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class HealthReporter:
    """Probes every dependency on an interval and sets grpc.health.v1 status accordingly."""

    def __init__(self, service_names: Sequence[str], probes: Sequence[DependencyProbe], interval_s: float) -> None:
        self.servicer = health.aio.HealthServicer()
        self._names = ["", *service_names]
        self._probes = list(probes)
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._shutting_down = False
        self.failing: list[str] = []

    async def check_once(self) -> bool:
        timeout_s = max(0.2, min(2.0, self._interval_s))
        results = await asyncio.gather(*(probe.ping(timeout_s) for probe in self._probes), return_exceptions=True)
        failing = [
            probe.name for probe, result in zip(self._probes, results, strict=True) if isinstance(result, BaseException)
        ]
        if failing != self.failing:
            log.warning("health_changed", failing=failing) if failing else log.info("health_changed", failing=[])
        self.failing = failing
        status = health_pb2.HealthCheckResponse.SERVING if not failing else health_pb2.HealthCheckResponse.NOT_SERVING
        if not self._shutting_down:
            for name in self._names:
                await self.servicer.set(name, status)
        return not failing

    async def _loop(self) -> None:
        while not self._shutting_down:
            try:
                await self.check_once()
            except Exception:
                log.exception("health_probe_error")
            await asyncio.sleep(self._interval_s)

    async def start(self) -> None:
        await self.check_once()
        self._task = asyncio.create_task(self._loop(), name="health-probes")

    async def enter_shutdown(self) -> None:
        self._shutting_down = True
        await self.servicer.enter_graceful_shutdown()
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: HealthReporter
    metrics_port: int | None
    registration: ServiceRegistration
    _metrics_http: Any = None

    async def stop(self, grace_s: float, drain_s: float = 0.0) -> None:
        """Say NOT_SERVING, wait `drain_s` for balancers, then stop with `grace_s` for in-flight RPCs."""
        await self.health.enter_shutdown()
        if drain_s > 0:
            await asyncio.sleep(drain_s)
        await self.server.stop(grace_s)
        for close in self.registration.on_close:
            try:
                await close()
            except Exception:
                log.exception("close_failed")
        if self._metrics_http is not None:
            self._metrics_http.shutdown()


def _server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; with a client CA too, only clients holding a
    certificate it signed get in (mTLS)."""
    if not settings.tls_cert_file:
        return None
    cert = Path(settings.tls_cert_file).read_bytes()
    key = Path(settings.tls_key_file).read_bytes()
    client_ca = Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


async def create_server(settings: CommonSettings, registration: ServiceRegistration) -> RunningServer:
    """Build, bind and start the server; `settings.port = 0` binds a free port (tests)."""
    api_keys = ApiKeyRegistry.parse(settings.api_keys)
    if len(api_keys) == 0:
        log.warning("no_api_keys", hint="every RPC but health and reflection will be refused: set RAPPORT_API_KEYS")
    metrics_registry = CollectorRegistry()
    interceptor = RapportServerInterceptor(
        InterceptorConfig(
            error_domain=registration.error_domain,
            default_deadline_s=settings.default_deadline_ms / 1000,
            max_deadline_s=settings.max_deadline_ms / 1000,
            slow_rpc_s=settings.slow_rpc_ms / 1000,
            access_log=settings.access_log,
            method_scopes=registration.method_scopes,
        ),
        api_keys,
        RpcMetrics(settings.service_name, metrics_registry),
        rpc_tracing(),
    )
    for collector in registration.metric_collectors():
        metrics_registry.register(collector)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", int(settings.reuse_port)),
        ],
    )
    registration.add_to_server(server)
    health_reporter = HealthReporter([registration.full_name], registration.probes, settings.health_interval_s)
    health_pb2_grpc.add_HealthServicer_to_server(health_reporter.servicer, server)
    reflection.enable_server_reflection(
        (registration.full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
        pool=_MethodAwarePool(),
    )
    address = f"{settings.host}:{settings.port}"
    credentials = _server_credentials(settings)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    metrics_http = None
    metrics_port: int | None = None
    if settings.metrics_port >= 0:
        metrics_http, _thread = start_http_server(settings.metrics_port, addr=settings.host, registry=metrics_registry)
        metrics_port = metrics_http.server_port
    await server.start()
    await health_reporter.start()
    return RunningServer(server, port, health_reporter, metrics_port, registration, metrics_http)


async def serve(settings: CommonSettings, build: Callable[[CommonSettings], Awaitable[ServiceRegistration]]) -> None:
    """Run a service until SIGTERM/SIGINT, then shut down gracefully."""
    # Before `build`: the service's background work (messaging's senders) may make spans at once.
    configure_tracing(settings)
    registration = await build(settings)
    running = await create_server(settings, registration)
    # What start-up allocated (modules, protobuf descriptors, prepared statements) lives as long
    # as the process: keep it out of the collector's sight. Every RPC leaves a reference cycle
    # (grpc.aio's `_find_method_handler` keeps its closure in its own scope, 6 objects), so the
    # collector must run; a young-generation pass pauses the process in proportion to what piled
    # up (50 000 objects: 25-45 ms; 2 000: 1-3 ms), so latency-bound services keep it small.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*gc_thresholds(settings.gc_young_objects))
    log.info(
        "listening",
        service=registration.full_name,
        port=running.port,
        metrics_port=running.metrics_port,
        tls=bool(settings.tls_cert_file),
    )
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await stop_requested.wait()
    log.info("shutting_down", grace_s=settings.shutdown_grace_s, drain_s=settings.shutdown_drain_s)
    await running.stop(settings.shutdown_grace_s, settings.shutdown_drain_s)
    await shutdown_tracing()  # the spans of the last RPCs still reach the collector
    log.info("stopped")


def run_service(settings_type: type[SettingsT], build: Callable[[SettingsT], Awaitable[ServiceRegistration]]) -> None:
    """A service's `python -m` entry point: settings, logs, then `serve` on the chosen event loop
    until SIGTERM."""
    settings = load_settings(settings_type)
    assert isinstance(settings, CommonSettings)
    configure_logging(settings.service_name, settings.log_level)
    if settings.cpu_affinity:
        pin_to_cpus(cpu_list(settings.cpu_affinity))
    with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        runner.run(serve(settings, build))  # type: ignore[arg-type]


def pin_to_cpus(cpus: frozenset[int]) -> None:
    """Keeps every thread of this process, and those it starts later, on `cpus`.

    Linux sets affinity per thread, and a new thread inherits its creator's: each thread that
    exists now is moved (grpc and the Cassandra driver start theirs later, from these)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]  # the calling thread
    for thread in threads:
        try:
            os.sched_setaffinity(thread, cpus)
        except ProcessLookupError:  # ended meanwhile
            continue
        except OSError as error:
            raise SettingsError(f"RAPPORT_CPU_AFFINITY: cannot run on CPUs {sorted(cpus)}: {error}") from error
    log.info("pinned", cpus=sorted(cpus))


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop runs the services' I/O (Redis, the gRPC poller's callbacks, HTTP) on libuv, which
    costs less CPU per request than the standard loop; `asyncio` keeps the standard one."""
    if name == "uvloop":
        return uvloop.new_event_loop
    if name == "asyncio":
        return asyncio.new_event_loop
    raise SettingsError(f"RAPPORT_EVENT_LOOP: unknown event loop {name!r} (uvloop or asyncio)")


async def open_stores(
    settings: CommonSettings, schema_file: Path, coalesce_pipelined_writes: bool = False
) -> tuple[CassandraClient, RedisClient]:
    """The service's Cassandra keyspace (schema applied if asked) and Redis, from the shared settings
    (`coalesce_pipelined_writes`: see RedisClient)."""
    schema_cql = await asyncio.to_thread(schema_file.read_text) if settings.apply_schema else None
    cassandra = await open_service_keyspace(settings, schema_cql)
    return cassandra, RedisClient(
        settings.redis_url, settings.redis_prefix, coalesce_pipelined_writes=coalesce_pipelined_writes
    )


async def cancel_tasks(tasks: Sequence[asyncio.Task[Any]]) -> None:
    """Stop a service's background tasks and wait until they have stopped."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
