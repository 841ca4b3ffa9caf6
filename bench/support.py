"""Service processes for benchmarks: start `python -m services.<name>` on a free port, wait for
SERVING, stop gracefully. Logs go to a temporary file whose path is printed on failure."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: str

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, within_s: float = 120.0) -> None:
        deadline = time.monotonic() + within_s
        with grpc.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {self.log_path}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.3)
        raise RuntimeError(f"{self.name} did not become SERVING; see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def start_service(name: str, env: dict[str, str], port: int | None = None) -> ServiceProcess:
    port = port or free_port()
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)  # noqa: SIM115 - outlives this function
    process = subprocess.Popen(
        [str(REPO / ".venv/bin/python"), "-m", f"services.{name}"],
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO}:{REPO / 'gen'}",
            "RAPPORT_PORT": str(port),
            "RAPPORT_METRICS_PORT": "-1",
            **env,
        },
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return ServiceProcess(name, port, process, log.name)


def forget_prefix(prefix: str) -> None:
    """A bench run has its own Redis prefix: leave nothing of it behind in the shared dev Redis
    (left there, each run's states and streams grow Redis and slow the next runs down)."""
    client = redis.Redis.from_url(os.environ.get("RAPPORT_REDIS_URL", "redis://127.0.0.1:6379/0"))
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


def cpu_seconds(servers: list[ServiceProcess]) -> float:
    """User + system CPU the servers' processes have used so far (Linux /proc)."""
    ticks_per_s = os.sysconf("SC_CLK_TCK")
    total = 0
    for server in servers:
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / ticks_per_s
