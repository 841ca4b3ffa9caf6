"""The identity process as operators and peers see it: reflection, health, graceful shutdown."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ServiceProcess, health_probe, start_service, tool
from tests.support import ADMIN_KEY, private_redis, start_redis

pytestmark = pytest.mark.e2e

SERVICE = "rapport.identity.v1.IdentityService"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("grpcurl"), *args], capture_output=True, text=True, timeout=20)


@pytest.fixture
def identity_process(tmp_path: Path, e2e_keyspace: str, run_id: str) -> Iterator[ServiceProcess]:
    service = start_service(
        "identity",
        tmp_path,
        {
            "RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace,
            "RAPPORT_REDIS_PREFIX": f"e2e:{run_id}:",
            "RAPPORT_SHUTDOWN_DRAIN_S": "1.5",
            "RAPPORT_SHUTDOWN_GRACE_S": "2",
        },
    )
    yield service
    service.terminate()


def test_grpcurl_lists_and_calls_the_service_through_reflection(identity_process: ServiceProcess) -> None:
    listed = grpcurl("-plaintext", identity_process.address, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl("-plaintext", identity_process.address, "describe", SERVICE)
    assert "rpc Link ( .rapport.identity.v1.LinkRequest )" in described.stdout, described.stderr
    method = grpcurl("-plaintext", identity_process.address, "describe", f"{SERVICE}.Link")
    assert "rpc Link" in method.stdout, method.stderr

    body = json.dumps({"identifier": {"type": "IDENTIFIER_TYPE_EMAIL_SHA256", "value": "Grpcurl@Example.com"}})
    called = grpcurl(
        "-plaintext",
        "-H",
        f"authorization: Bearer {ADMIN_KEY}",
        "-d",
        body,
        identity_process.address,
        f"{SERVICE}/Resolve",
    )
    assert called.returncode == 0, called.stderr
    reply = json.loads(called.stdout)
    assert len(reply["person_id"]) == 32 and "grpcurl" not in called.stdout.lower()

    refused = grpcurl("-plaintext", "-d", body, identity_process.address, f"{SERVICE}/Resolve")
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr


def test_health_probe_says_serving_then_not_serving_on_sigterm(identity_process: ServiceProcess) -> None:
    assert health_probe(identity_process.address).returncode == 0
    assert health_probe(identity_process.address, SERVICE).returncode == 0
    identity_process.process.terminate()  # SIGTERM: NOT_SERVING during the drain, then a graceful stop
    time.sleep(0.5)
    draining = health_probe(identity_process.address)
    assert draining.returncode != 0 and "NOT_SERVING" in draining.stdout + draining.stderr
    assert identity_process.process.wait(30) == 0
    assert '"event": "stopped"' in identity_process.log()


def test_health_probe_says_not_serving_while_redis_is_stopped(tmp_path: Path, e2e_keyspace: str, run_id: str) -> None:
    with private_redis() as (url, process, port):
        service = start_service(
            "identity",
            tmp_path,
            {
                "RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace,
                "RAPPORT_REDIS_PREFIX": f"e2e:{run_id}:",
                "RAPPORT_REDIS_URL": url,
            },
        )
        try:
            assert health_probe(service.address).returncode == 0
            process.terminate()
            process.wait(10)
            time.sleep(1.5)
            stopped = health_probe(service.address)
            assert stopped.returncode != 0 and "NOT_SERVING" in stopped.stdout + stopped.stderr
            workdir = tempfile.mkdtemp(prefix="rapport-redis-")
            restarted = start_redis(shutil.which("redis-server") or "redis-server", port, workdir)
            try:
                time.sleep(1.5)
                assert health_probe(service.address).returncode == 0
            finally:
                restarted.terminate()
                restarted.wait(10)
                shutil.rmtree(workdir, ignore_errors=True)
        finally:
            service.terminate()
