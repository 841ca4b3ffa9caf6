"""bench-identity: ghz drives Resolve on warm identifiers at a fixed rate, then measures the
maximum throughput of Resolve and of the no-op health Check of the same server.

Last line: rps=… p50_ms=… p99_ms=… floor_ratio=…  (floor_ratio = Resolve max / Check max)
Environment: BENCH_RPS (2000), BENCH_SECONDS (15), BENCH_WARM_IDS (1000), BENCH_CONCURRENCY (4
ghz workers, as a storefront's small connection pool), BENCH_IDENTITY_REPLICAS (2 identity
processes sharing the port, one per core).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.support import start_service
from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
RESOLVE = "rapport.identity.v1.IdentityService/Resolve"
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


def main() -> None:
    rps = int(os.environ.get("BENCH_RPS", "2000"))
    seconds = int(os.environ.get("BENCH_SECONDS", "15"))
    warm = int(os.environ.get("BENCH_WARM_IDS", "1000"))
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "4"))
    replica_count = int(os.environ.get("BENCH_IDENTITY_REPLICAS", "2"))
    key = "rk_bench_" + secrets.token_hex(12)
    env = {
        "RAPPORT_API_KEYS": f"bench:{key}:*",
        "RAPPORT_CASSANDRA_KEYSPACE": "bench_identity",
        "RAPPORT_REDIS_PREFIX": "bench:",
        "RAPPORT_REUSE_PORT": "true",
    }
    # Replicas on one host share the port (SO_REUSEPORT); ghz opens one connection per replica
    # and the kernel spreads them.
    servers = [start_service("identity", env)]
    servers += [start_service("identity", env, port=servers[0].port) for _ in range(replica_count - 1)]
    address = servers[0].address
    connections = ["--connections", str(replica_count * 2 if replica_count > 1 else 1)]
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.IdentityServiceStub(channel)
        deadline = time.monotonic() + 90
        while True:
            try:
                stub.BatchResolve(
                    pb.BatchResolveRequest(
                        identifiers=[
                            common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"bench-{i}")
                            for i in range(warm)
                        ]
                    ),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=60,
                )
                break
            except grpc.RpcError:
                if time.monotonic() > deadline or any(server.process.poll() is not None for server in servers):
                    raise
                time.sleep(0.5)
        data = json.dumps(
            {"identifier": {"type": "IDENTIFIER_TYPE_COOKIE", "value": "bench-{{randomInt 0 " + str(warm) + "}}"}}
        )
        # Warm-up: every replica's connections open and its near cache holds the identifiers.
        ghz(address, RESOLVE, key, data, ["--rps", str(rps), "-z", "3s", "-c", str(concurrency), *connections])
        fixed = ghz(
            address, RESOLVE, key, data, ["--rps", str(rps), "-z", f"{seconds}s", "-c", str(concurrency), *connections]
        )
        # The no-op floor at the same fixed rate: what any handler of this server can hope for.
        check_fixed = ghz(
            address, CHECK, key, "{}", ["--rps", str(rps), "-z", f"{seconds}s", "-c", str(concurrency), *connections]
        )
        resolve_max = ghz(address, RESOLVE, key, data, ["-z", "5s", "-c", str(concurrency), *connections])
        check_max = ghz(address, CHECK, key, "{}", ["-z", "5s", "-c", str(concurrency), *connections])
        errors = sum(count for code, count in fixed["statusCodeDistribution"].items() if code != "OK")
        print(f"fixed rate: target {rps}/s for {seconds}s, achieved {fixed['rps']:.0f}/s, non-OK {errors}")
        print(
            f"health Check at the same rate: achieved {check_fixed['rps']:.0f}/s, "
            f"p50_ms={latency_ms(check_fixed, 50):.2f} p99_ms={latency_ms(check_fixed, 99):.2f}"
        )
        print(f"max throughput: Resolve {resolve_max['rps']:.0f}/s, health Check {check_max['rps']:.0f}/s")
        print(
            f"rps={fixed['rps']:.0f} p50_ms={latency_ms(fixed, 50):.2f} p99_ms={latency_ms(fixed, 99):.2f} "
            f"floor_ratio={resolve_max['rps'] / check_max['rps']:.2f}"
        )
    finally:
        for server in servers:
            server.stop()


if __name__ == "__main__":
    main()
