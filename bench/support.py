"""What the benchmarks share. Service processes: start `python -m services.<name>` on a free
port, wait for SERVING, stop gracefully; logs go to a temporary file whose path is printed on
failure. The load generator: ghz, one run or one per replica at once."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
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


def compact_redis_log(timeout_s: float = 120.0) -> None:
    """Rewrite the shared dev Redis's append-only file now (BGREWRITEAOF) and wait for the end.

    What tests and earlier runs left in the dev Redis sets the size of its next rewrite, a forked
    child that takes a core for about a second here: started just before a measurement, it does
    not land inside it. Nothing to do when the AOF is off."""
    client = redis.Redis.from_url(os.environ.get("RAPPORT_REDIS_URL", "redis://127.0.0.1:6379/0"))
    if not int(client.info("persistence").get("aof_enabled", 0)):
        return
    with contextlib.suppress(redis.ResponseError):  # one is running already: wait for it
        client.bgrewriteaof()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.info("persistence")
        if not int(state.get("aof_rewrite_in_progress", 0)) and not int(state.get("aof_rewrite_scheduled", 0)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"Redis did not finish rewriting its AOF in {timeout_s:.0f} s")


def redis_log_rewrites() -> int:
    """How many AOF rewrites the shared dev Redis has done since it started."""
    client = redis.Redis.from_url(os.environ.get("RAPPORT_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return int(client.info("persistence").get("aof_rewrites", 0))


def cpu_seconds(servers: list[ServiceProcess]) -> float:
    """User + system CPU the servers' processes have used so far (Linux /proc)."""
    return sum(process_cpu_seconds(server.process.pid) for server in servers)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU a process (all its threads) has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def stack_pids() -> dict[str, int]:
    """The local stack's Redis and Cassandra processes, from the pid files `make stack` writes
    (scripts/redis.sh, scripts/cassandra.sh); those not running are left out."""
    state = Path(os.environ.get("RAPPORT_STATE", REPO / ".state"))
    redis_port = os.environ.get("REDIS_PORT", "6379")
    pids: dict[str, int] = {}
    for name, pid_file in (
        ("redis", state / f"redis/redis-{redis_port}.pid"),
        ("cassandra", state / "cassandra/cassandra.pid"),
    ):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if Path(f"/proc/{pid}/stat").exists():
            pids[name] = pid
    return pids


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


def ghz_spread(
    addresses: list[str],
    call: str,
    key: str,
    data: str | Path,
    extra: list[str],
    warm_up_s: float = 0.0,
    on_warm: Callable[[], None] | None = None,
) -> SpreadReport:
    """One ghz per address, all at once, with the same options (give each its share of the rate
    and concurrency): calls spread evenly over replicas, as a client's round_robin policy does.

    With `warm_up_s`, the first seconds of each run (by the calls' start times) warm it up and are
    left out of the report: its rate and percentiles are of the calls started after them, on the
    same connections, with the load generator's own start (process, reflection, connections)
    behind it. `on_warm` is called `warm_up_s` after the runs start (e.g. to start a CPU count).
    """
    runs = [
        subprocess.Popen(
            ghz_command(address, call, key, data, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for address in addresses
    ]
    if on_warm is not None:
        timer = threading.Timer(warm_up_s, on_warm)
        timer.start()
    reports = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        reports.append(_report(stdout, stderr, run.returncode))
    if on_warm is not None:
        timer.join()
    if not warm_up_s:
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
    return _after_warm_up(reports, warm_up_s)


def _after_warm_up(reports: list[dict[str, Any]], warm_up_s: float) -> SpreadReport:
    errors: Counter[str] = Counter()
    latencies: list[int] = []
    count = 0
    rps = 0.0
    for report in reports:
        details = [(_ns_since_epoch(detail["timestamp"]), detail) for detail in report.get("details") or ()]
        if not details:
            continue
        first = min(started for started, _ in details)
        cut = first + int(warm_up_s * 1e9)
        kept = [(started, detail) for started, detail in details if started >= cut]
        if not kept:
            continue
        window_s = max(max(started for started, _ in kept) - cut, 1) / 1e9
        count += len(kept)
        rps += len(kept) / window_s
        for _, detail in kept:
            if detail.get("status") == "OK":
                latencies.append(detail["latency"])
            else:
                errors[detail.get("error") or detail.get("status", "")] += 1
    return SpreadReport(rps=rps, count=count, errors=dict(errors), latencies_ns=sorted(latencies))


def _ns_since_epoch(timestamp: str) -> int:
    """ghz's RFC 3339 call start time (nanoseconds, `Z` or an offset) as integer nanoseconds."""
    moment = datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", timestamp).replace("Z", "+00:00"))
    digits = re.search(r"\.(\d+)", timestamp)
    nanos = int((digits.group(1) + "000000000")[:9]) if digits else 0
    return int(moment.replace(microsecond=0).timestamp()) * 1_000_000_000 + nanos


def latency_ms(report: dict[str, Any], percentile: int) -> float:
    for item in report["latencyDistribution"]:
        if item["percentage"] == percentile:
            return item["latency"] / 1e6
    raise KeyError(percentile)
