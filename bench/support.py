"""What the benchmarks share. Service processes: start `python -m services.<name>` on a free
port, wait for SERVING, stop gracefully; logs go to a temporary file whose path is printed on
failure. The load generator: ghz, one run or one per replica at once."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------- ghz, the load generator
CHECK = "grpc.health.v1.Health/Check"


def ghz_command(address: str, call: str, key: str, data: str | Path, extra: list[str]) -> list[str]:
    """`data`: the requests as JSON, or a file of serialized requests, each prefixed by its length
    (a varint), which ghz sends without converting JSON on every call."""
    binary = shutil.which("ghz") or str(REPO / ".cache/bin/ghz")
    return [
        binary,
        "--insecure",
        # One OS thread for the load generator's Go code, so it does not take both cores from
        # the server it measures.
        "--cpus",
        "1",
        "--format",
        "json",
        "--call",
        call,
        *(["-B", str(data)] if isinstance(data, Path) else ["-d", data]),
        "--metadata",
        json.dumps({"authorization": f"Bearer {key}"}),
        *extra,
        address,
    ]


def _report(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    if returncode != 0 and not stdout.strip().startswith("{"):
        raise RuntimeError(f"ghz failed: {stderr.strip()[-500:]}")
    report: dict[str, Any] = json.loads(stdout)
    return report


def ghz(address: str, call: str, key: str, data: str, extra: list[str]) -> dict[str, Any]:
    out = subprocess.run(ghz_command(address, call, key, data, extra), capture_output=True, text=True, timeout=300)
    return _report(out.stdout, out.stderr, out.returncode)


@dataclass(frozen=True)
class SpreadReport:
    """The calls of several ghz runs at once, one per replica, as one load."""

    rps: float
    count: int
    errors: dict[str, int]
    latencies_ns: list[int]  # of the calls that succeeded, sorted

    def latency_ms(self, percentile: float) -> float:
        if not self.latencies_ns:
            return float("nan")
        rank = min(len(self.latencies_ns) - 1, max(0, math.ceil(percentile / 100 * len(self.latencies_ns)) - 1))
        return self.latencies_ns[rank] / 1e6


def ghz_spread(addresses: list[str], call: str, key: str, data: str | Path, extra: list[str]) -> SpreadReport:
    """One ghz per address, all at once, with the same options (give each its share of the rate
    and concurrency): calls spread evenly over replicas, as a client's round_robin policy does."""
    runs = [
        subprocess.Popen(
            ghz_command(address, call, key, data, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for address in addresses
    ]
    reports = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        reports.append(_report(stdout, stderr, run.returncode))
    errors: Counter[str] = Counter()
    latencies: list[int] = []
    for report in reports:
        errors.update(report.get("errorDistribution") or {})
        latencies += [detail["latency"] for detail in report.get("details") or () if detail.get("status") == "OK"]
    return SpreadReport(
        rps=sum(report["rps"] for report in reports),
        count=sum(report["count"] for report in reports),
        errors=dict(errors),
        latencies_ns=sorted(latencies),
    )


def latency_ms(report: dict[str, Any], percentile: int) -> float:
    for item in report["latencyDistribution"]:
        if item["percentage"] == percentile:
            return item["latency"] / 1e6
    raise KeyError(percentile)
