"""Services as real processes, checked by real peers (grpcurl, grpc-health-probe)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.cassandra import CassandraClient
from tests.support import ADMIN_KEY, API_KEYS, CASSANDRA_HOST, CASSANDRA_PORT, REDIS_URL, REPO, free_port


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)


def tool(name: str) -> str:
    """A Go peer installed by `make tools` (on PATH in `make test`)."""
    found = shutil.which(name) or str(REPO / ".cache" / "bin" / name)
    assert Path(found).exists(), f"{name} is installed by `make tools`"
    return found


def health_probe(address: str, service: str = "", tls: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """grpc-health-probe; `tls` adds its TLS flags (-tls -tls-ca-cert …) for a TLS server."""
    command = [tool("grpc-health-probe"), "-addr", address, "-connect-timeout", "2s", "-rpc-timeout", "2s", *tls]
    if service:
        command += ["-service", service]
    return subprocess.run(command, capture_output=True, text=True, timeout=10)


def start_service(name: str, tmp_path: Path, env: dict[str, str], probe_tls: Sequence[str] = ()) -> ServiceProcess:
    """Starts `python -m services.<name>` and waits until grpc-health-probe (with the `probe_tls`
    flags for a TLS server) says SERVING."""
    port = free_port()
    log_path = tmp_path / f"{name}-{port}.log"
    full_env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
        "RAPPORT_PORT": str(port),
        "RAPPORT_API_KEYS": API_KEYS,
        "RAPPORT_REDIS_URL": REDIS_URL,
        "RAPPORT_CASSANDRA_HOSTS": CASSANDRA_HOST,
        "RAPPORT_CASSANDRA_PORT": str(CASSANDRA_PORT),
        "RAPPORT_HEALTH_INTERVAL_S": "0.25",
        **env,
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(REPO / ".venv/bin/python"), "-m", f"services.{name}"],
            cwd=REPO,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = ServiceProcess(name, port, process, log_path)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{service.log()}")
        if health_probe(service.address, tls=probe_tls).returncode == 0:
            return service
        time.sleep(0.3)
    service.terminate()
    raise AssertionError(f"{name} never became SERVING:\n{service.log()}")


@pytest.fixture(scope="session")
def e2e_keyspace(cassandra_admin: CassandraClient, run_id: str) -> str:
    keyspace = f"e2e_identity_{run_id}"
    cassandra_admin.created_keyspaces.append(keyspace)  # type: ignore[attr-defined]
    return keyspace


@dataclass
class FourServices:
    """identity, profile, decision and messaging as processes, each knowing the ones before it."""

    identity: ServiceProcess
    profile: ServiceProcess
    decision: ServiceProcess
    messaging: ServiceProcess
    # Every service's address and key and the Redis prefix: the environment of one more peer.
    peers: dict[str, str]
    # What messaging was started with, to start it again.
    messaging_env: dict[str, str]


def start_four_services(
    tmp_path: Path,
    name: str,
    run_id: str,
    e2e_keyspace: str,
    cassandra_admin: CassandraClient,
    smtp_port: int,
    services: list[ServiceProcess],
    messaging_env: dict[str, str] | None = None,
) -> FourServices:
    """Starts the four services of a storefront-to-inbox test under its own Redis prefix and
    keyspaces (`name`), messaging sending to `smtp_port`. Each is appended to `services` as it
    starts, so the caller stops whatever started when a later one fails."""
    keyspaces = {service: f"e2e_{name}_{service}_{run_id}" for service in ("profile", "messaging")}
    cassandra_admin.created_keyspaces.extend(keyspaces.values())  # type: ignore[attr-defined]
    prefix = {"RAPPORT_REDIS_PREFIX": f"e2e-{name}:{run_id}:"}
    identity = start_service("identity", tmp_path, {"RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace, **prefix})
    services.append(identity)
    peers = {"RAPPORT_IDENTITY_ADDRESS": identity.address, "RAPPORT_IDENTITY_API_KEY": ADMIN_KEY, **prefix}
    profile = start_service("profile", tmp_path, {"RAPPORT_CASSANDRA_KEYSPACE": keyspaces["profile"], **peers})
    services.append(profile)
    peers |= {"RAPPORT_PROFILE_ADDRESS": profile.address, "RAPPORT_PROFILE_API_KEY": ADMIN_KEY}
    decision = start_service("decision", tmp_path, {"RAPPORT_DECISION_SECRET": f"e2e-{name}-secret", **peers})
    services.append(decision)
    peers |= {"RAPPORT_DECISION_ADDRESS": decision.address, "RAPPORT_DECISION_API_KEY": ADMIN_KEY}
    messaging_env = {
        "RAPPORT_CASSANDRA_KEYSPACE": keyspaces["messaging"],
        "RAPPORT_MESSAGING_SECRET": f"e2e-{name}-messaging-secret",
        "RAPPORT_MESSAGING_HTTP_PORT": "0",
        "RAPPORT_MESSAGING_QUIET_HOURS": "false",
        "RAPPORT_SMTP_PORT": str(smtp_port),
        **peers,
        **(messaging_env or {}),
    }
    messaging = start_service("messaging", tmp_path, messaging_env)
    services.append(messaging)
    peers |= {"RAPPORT_MESSAGING_ADDRESS": messaging.address, "RAPPORT_MESSAGING_API_KEY": ADMIN_KEY}
    return FourServices(identity, profile, decision, messaging, peers, messaging_env)
