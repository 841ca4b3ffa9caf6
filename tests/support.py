"""Helpers the integration and end-to-end tests share: real servers, keys, stubs, error details."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
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
    server: a send in progress), or refuse messages with a permanent error."""

    def __init__(self, port: int | None = None) -> None:
        from email import message_from_bytes, policy

        self.port = port or free_port()
        self.messages: list[Any] = []
        self.rcpt_delay_s = 0.0
        self.rcpt_seen = 0
        self.reject_with: str | None = None
        self._parse: Any = lambda data: message_from_bytes(data, policy=policy.default)
        self._controller: Any = None

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller

        receiver = self

        class Handler:
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
