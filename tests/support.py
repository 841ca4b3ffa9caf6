"""Helpers the integration and end-to-end tests share: real servers, keys, stubs, error details."""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = os.environ.get("RAPPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CASSANDRA_HOST = os.environ.get("RAPPORT_TEST_CASSANDRA_HOST", "127.0.0.1")
CASSANDRA_PORT = int(os.environ.get("RAPPORT_TEST_CASSANDRA_PORT", "9042"))

ADMIN_KEY = "rk_test_admin_" + secrets.token_hex(8)
STOREFRONT_KEY = "rk_test_storefront_" + secrets.token_hex(8)
API_KEYS = f"admin:{ADMIN_KEY}:*;storefront:{STOREFRONT_KEY}:identity.resolve,identity.link"


def bearer(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape_metrics(port: int | None) -> dict[str, float]:
    """A service's /metrics as {'name{label="value",...}': value}, labels sorted by name."""
    assert port is not None, "the service was started without a metrics port"
    body = await asyncio.to_thread(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    )
    series: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
            series[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return series


@dataclass(frozen=True)
class RpcErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    field_violations: list[tuple[str, str]]


def error_details(error: grpc.RpcError) -> RpcErrorDetails:
    """Decode the AIP-193 google.rpc.Status a Rapport error carries."""
    trailing = error.trailing_metadata() or ()  # type: ignore[attr-defined]
    raw = next(value for key, value in trailing if key == "grpc-status-details-bin")
    status = status_pb2.Status.FromString(raw)
    reason = domain = ""
    violations: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason, info.domain
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return RpcErrorDetails(error.code(), status.message, reason, domain, violations)  # type: ignore[attr-defined]


@contextmanager
def private_redis() -> Iterator[tuple[str, subprocess.Popen[bytes], int]]:
    """A real redis-server of the test's own, on a free port, that the test may stop and restart."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is installed by `make test` (scripts/redis.sh install)"
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="rapport-redis-")
    process = start_redis(binary, port, workdir)
    try:
        yield f"redis://127.0.0.1:{port}/0", process, port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def start_redis(binary: str, port: int, workdir: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("redis-server did not start")


# ---------------------------------------------------------------------------------- receivers
class SmtpReceiver:
    """A real SMTP server (aiosmtpd, in its own thread) keeping what it receives. It can be
    stopped and started again on the same port (an outage), hold RCPT for a while (a slow
    server: a send in progress), keep a message and hold its reply (the sender is killed after
    the server took the message), or refuse messages with a permanent error. It offers
    PIPELINING, as production servers do (aiosmtpd reads commands one line at a time, so it
    handles pipelined ones, but does not say so itself): messaging pipelines its envelopes."""

    def __init__(self, port: int | None = None) -> None:
        from email import message_from_bytes, policy

        self.port = port or free_port()
        self.messages: list[Any] = []
        self.rcpt_delay_s = 0.0
        self.rcpt_seen = 0
        self.data_reply_delay_s = 0.0  # the message is kept, then the 250 waits this long
        self.reject_with: str | None = None
        self._parse: Any = lambda data: message_from_bytes(data, policy=policy.default)
        self._controller: Any = None

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller

        receiver = self

        class Handler:
            async def handle_EHLO(
                self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
            ) -> list[str]:
                session.host_name = hostname
                return [*responses[:-1], "250-PIPELINING", responses[-1]]

            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
                receiver.rcpt_seen += 1
                if receiver.rcpt_delay_s:
                    await asyncio.sleep(receiver.rcpt_delay_s)
                envelope.rcpt_tos.append(address)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                if receiver.reject_with:
                    return receiver.reject_with
                receiver.messages.append(receiver._parse(envelope.original_content or b""))
                if receiver.data_reply_delay_s:
                    await asyncio.sleep(receiver.data_reply_delay_s)
                return "250 Message accepted"

        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Any]:
        return [message for message in list(self.messages) if message["To"] == address]


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as an OTLP receiver got it; ids in hex, '' for a root's parent."""

    service: str
    name: str
    kind: str  # SERVER, CLIENT, CONSUMER...
    trace_id: str
    span_id: str
    parent_span_id: str
    linked: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    attributes: dict[str, Any]


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver (what an OpenTelemetry Collector listens on at :4318): it
    accepts `POST /v1/traces` with a protobuf `ExportTraceServiceRequest`, in its own thread."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        import gzip
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if self.path != "/v1/traces" else 415)
                    return
                receiver.take(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True).start()
        return self

    def take(self, request: Any) -> None:
        from opentelemetry.proto.trace.v1 import trace_pb2

        def values(attributes: Any) -> dict[str, Any]:
            return {
                item.key: getattr(item.value, item.value.WhichOneof("value") or "string_value") for item in attributes
            }

        received = []
        for resource_spans in request.resource_spans:
            service = values(resource_spans.resource.attributes).get("service.name", "")
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            linked=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
                            attributes=values(span.attributes),
                        )
                    )
        self.spans.extend(received)
        self.requests += 1

    def of_trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [span for span in list(self.spans) if span.trace_id == trace_id]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def wait_until(check: Callable[[], Any], within_s: float, what: str, every_s: float = 0.2) -> Any:
    """Calls `check` every `every_s` until it returns something true, and returns that; fails the
    test, naming `what`, after `within_s` (for tests that drive processes from a thread)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {within_s} s waiting for {what}")


async def wait_for(
    check: Callable[[], Any], within_s: float = 20.0, what: str = "the condition", every_s: float = 0.2
) -> Any:
    """`wait_until` on the event loop: `check` may return an awaitable, which is awaited."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        await asyncio.sleep(every_s)
    raise AssertionError(f"timed out after {within_s} s waiting for {what}")
