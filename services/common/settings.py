"""Typed settings read once from environment variables, with documented defaults.

Each service declares a frozen dataclass whose fields carry their variable name and a one-line
doc in `metadata`; `load_settings` converts by annotation and names the variable on bad input.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

SettingsT = TypeVar("SettingsT")

# The values of OTEL_TRACES_SAMPLER that OpenTelemetry defines (without the Jaeger remote one).
TRACE_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


class SettingsError(ValueError):
    """A variable is set to something its field cannot hold."""


def setting(env: str, default: Any, doc: str) -> Any:
    """Declare a settings field bound to environment variable `env`."""
    return dataclasses.field(default=default, metadata={"env": env, "doc": doc})


@dataclasses.dataclass(frozen=True)
class TracingSettings:
    """A process's name and where its spans go (services/common/tracing.py): part of every
    service's settings (CommonSettings) and of the staff console's."""

    service_name: str = setting("RAPPORT_SERVICE_NAME", "rapport", "Name used in logs and metrics.")
    # The OTEL_* names are OpenTelemetry's standard ones.
    otlp_endpoint: str = setting(
        "RAPPORT_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP collector base URL (http://collector:4318): spans go to <url>/v1/traces; "
        "empty = OTEL_EXPORTER_OTLP_ENDPOINT, and when both are empty no span is made.",
    )
    otel_exporter_otlp_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", "", "Standard OTLP/HTTP base URL, used when RAPPORT_OTLP_ENDPOINT is empty."
    )
    otel_exporter_otlp_traces_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "", "Standard full URL for spans (…/v1/traces); wins over both base URLs."
    )
    otel_traces_sampler: str = setting(
        "OTEL_TRACES_SAMPLER",
        "parentbased_always_on",
        "always_on, always_off, traceidratio, or parentbased_ + one of them (follow the caller's decision).",
    )
    otel_traces_sampler_arg: float = setting(
        "OTEL_TRACES_SAMPLER_ARG", 1.0, "Share of new traces sampled by the traceidratio samplers (0..1)."
    )
    otel_sdk_disabled: bool = setting("OTEL_SDK_DISABLED", False, "True = no spans, whatever the endpoint.")

    def __post_init__(self) -> None:
        # Checked here so a bad value stops the start (and `make k8s-validate`), naming its variable.
        for env, url in (
            ("RAPPORT_OTLP_ENDPOINT", self.otlp_endpoint),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.otel_exporter_otlp_endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", self.otel_exporter_otlp_traces_endpoint),
        ):
            if url and not url.startswith(("http://", "https://")):
                raise SettingsError(f"{env}={url!r}: expected an http:// or https:// URL")
        if self.otel_traces_sampler.lower() not in TRACE_SAMPLERS:
            raise SettingsError(
                f"OTEL_TRACES_SAMPLER={self.otel_traces_sampler!r}: expected one of {', '.join(TRACE_SAMPLERS)}"
            )
        if not 0.0 <= self.otel_traces_sampler_arg <= 1.0:
            raise SettingsError(f"OTEL_TRACES_SAMPLER_ARG={self.otel_traces_sampler_arg!r}: expected a ratio in 0..1")


@dataclasses.dataclass(frozen=True)
class PeerCertificateSettings:
    """The client certificate a process presents to the Rapport services it calls over TLS, for
    those that require one (mTLS): part of the settings of every process that calls another."""

    peer_tls_cert_file: str = setting(
        "RAPPORT_PEER_TLS_CERT_FILE",
        "",
        "PEM client certificate this process presents to the services it calls over TLS (for their mTLS); "
        "empty = none.",
    )
    peer_tls_key_file: str = setting("RAPPORT_PEER_TLS_KEY_FILE", "", "PEM private key of RAPPORT_PEER_TLS_CERT_FILE.")


@dataclasses.dataclass(frozen=True)
class CommonSettings(TracingSettings):
    """Settings every service shares; services subclass and add their own."""

    host: str = setting("RAPPORT_HOST", "127.0.0.1", "Interface the gRPC server binds.")
    port: int = setting("RAPPORT_PORT", 0, "gRPC port; 0 picks a free one (tests).")
    reuse_port: bool = setting(
        "RAPPORT_REUSE_PORT", False, "Let several processes of a service share the port (SO_REUSEPORT, one host)."
    )
    metrics_port: int = setting(
        "RAPPORT_METRICS_PORT", -1, "Prometheus /metrics HTTP port; -1 disables, 0 picks a free one."
    )
    log_level: str = setting("RAPPORT_LOG_LEVEL", "info", "debug, info, warning or error.")
    event_loop: str = setting(
        "RAPPORT_EVENT_LOOP", "uvloop", "uvloop (libuv, faster I/O) or asyncio (the standard library's loop)."
    )
    cpu_affinity: str = setting(
        "RAPPORT_CPU_AFFINITY",
        "",
        "CPUs the process runs on, as Linux lists them (0, 2-3, 0,2); empty = wherever the kernel "
        "schedules it. One core per latency-bound replica: no other replica's turn to wait for, "
        "caches kept warm.",
    )
    gc_young_objects: int = setting(
        "RAPPORT_GC_YOUNG_OBJECTS",
        50_000,
        "Objects the garbage collector lets pile up before a young-generation pass; each pass pauses "
        "the process about 0.6 µs per object (latency-bound services take a small value).",
    )
    access_log: bool = setting("RAPPORT_ACCESS_LOG", False, "Log every RPC, not only errors and slow ones.")
    slow_rpc_ms: float = setting("RAPPORT_SLOW_RPC_MS", 250.0, "RPCs slower than this are logged.")
    default_deadline_ms: float = setting(
        "RAPPORT_DEFAULT_DEADLINE_MS", 2000.0, "Budget of a request that arrives without a deadline."
    )
    max_deadline_ms: float = setting(
        "RAPPORT_MAX_DEADLINE_MS", 30000.0, "Longest budget granted to unary RPCs, whatever the caller asks."
    )
    shutdown_grace_s: float = setting(
        "RAPPORT_SHUTDOWN_GRACE_S", 5.0, "On SIGTERM, in-flight RPCs get this long to finish."
    )
    shutdown_drain_s: float = setting(
        "RAPPORT_SHUTDOWN_DRAIN_S",
        0.0,
        "On SIGTERM, health says NOT_SERVING this long before the server stops accepting RPCs "
        "(lets load balancers notice; set ~5 s on Kubernetes).",
    )
    health_interval_s: float = setting(
        "RAPPORT_HEALTH_INTERVAL_S", 1.0, "How often Redis and Cassandra are probed for health."
    )
    api_keys: str = setting(
        "RAPPORT_API_KEYS",
        "",
        "API keys, ';'-separated entries 'name:secret:scope,scope' ('*' = every scope).",
    )
    tls_cert_file: str = setting("RAPPORT_TLS_CERT_FILE", "", "PEM server certificate; empty = plaintext.")
    tls_key_file: str = setting("RAPPORT_TLS_KEY_FILE", "", "PEM private key of the server certificate.")
    tls_client_ca_file: str = setting(
        "RAPPORT_TLS_CLIENT_CA_FILE", "", "PEM CA bundle; when set, clients must present a certificate (mTLS)."
    )
    redis_url: str = setting("RAPPORT_REDIS_URL", "redis://127.0.0.1:6379/0", "Redis server URL.")
    redis_prefix: str = setting("RAPPORT_REDIS_PREFIX", "rapport:", "Prefix of every Redis key.")
    cassandra_hosts: str = setting("RAPPORT_CASSANDRA_HOSTS", "127.0.0.1", "Comma-separated contact points.")
    cassandra_port: int = setting("RAPPORT_CASSANDRA_PORT", 9042, "CQL native port.")
    cassandra_keyspace: str = setting("RAPPORT_CASSANDRA_KEYSPACE", "rapport", "Keyspace of this service.")
    cassandra_replication: str = setting(
        "RAPPORT_CASSANDRA_REPLICATION",
        "{'class': 'SimpleStrategy', 'replication_factor': 1}",
        "Replication map used when the keyspace is created.",
    )
    cassandra_local_dc: str = setting(
        "RAPPORT_CASSANDRA_LOCAL_DC", "datacenter1", "Local data centre for DC-aware load balancing."
    )
    apply_schema: bool = setting(
        "RAPPORT_APPLY_SCHEMA", True, "Create the keyspace and tables (idempotent) at start-up."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        cpu_list(self.cpu_affinity)  # a typo stops the start, naming the variable
        if self.gc_young_objects < 100:
            raise SettingsError(f"RAPPORT_GC_YOUNG_OBJECTS={self.gc_young_objects}: expected at least 100")
        if self.tls_cert_file and not self.tls_key_file:
            raise SettingsError("RAPPORT_TLS_CERT_FILE is set: its private key goes in RAPPORT_TLS_KEY_FILE")
        # A client CA without a certificate would serve plaintext to everyone, the opposite of its intent.
        if not self.tls_cert_file and (self.tls_key_file or self.tls_client_ca_file):
            raise SettingsError("RAPPORT_TLS_KEY_FILE and RAPPORT_TLS_CLIENT_CA_FILE need RAPPORT_TLS_CERT_FILE")


def cpu_list(text: str) -> frozenset[int]:
    """The CPUs of a Linux CPU list ("0", "2-3", "0,2-3"), as `RAPPORT_CPU_AFFINITY` gives them;
    empty for an empty text."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and (not last.isdigit() or int(last) < int(first))):
            raise SettingsError(f"RAPPORT_CPU_AFFINITY={text!r}: expected a CPU list such as 0, 2-3 or 0,2")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def _convert(raw: str, annotation: Any, env: str) -> Any:
    if annotation is bool:
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{env}={raw!r}: expected true or false")
    if annotation in (int, float):
        try:
            return annotation(raw)
        except ValueError:
            raise SettingsError(f"{env}={raw!r}: expected a number") from None
    return raw


def load_settings(cls: type[SettingsT], environ: Mapping[str, str] | None = None, **overrides: Any) -> SettingsT:
    """Build `cls` from the environment; keyword overrides win (tests, CLIs)."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        env = field.metadata.get("env")
        if field.name in overrides:
            values[field.name] = overrides[field.name]
        elif env and env in environ:
            values[field.name] = _convert(environ[env], hints[field.name], env)
    return cls(**values)


def describe_settings(cls: type) -> list[tuple[str, Any, str]]:
    """(variable, default, doc) rows, for the README and `--help-settings`."""
    return [(f.metadata["env"], f.default, f.metadata["doc"]) for f in dataclasses.fields(cls) if "env" in f.metadata]
