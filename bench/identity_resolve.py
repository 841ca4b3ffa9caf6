"""bench-identity: ghz drives Resolve on warm identifiers at a fixed rate, then measures the
maximum throughput of Resolve and of the no-op health Check of the same server.

Last line: rps=… p50_ms=… p99_ms=… floor_ratio=…  (floor_ratio = Resolve max / Check max)
Environment: BENCH_RPS (2000), BENCH_SECONDS (15), BENCH_WARM_IDS (1000), BENCH_CONCURRENCY (4
ghz workers, as a storefront's small connection pool), BENCH_IDENTITY_REPLICAS (2 identity
processes sharing the port, one per core).
"""

from __future__ import annotations

import json
import os
import secrets
import time

import grpc

from bench.support import CHECK, ghz, latency_ms, start_service
from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc

RESOLVE = "rapport.identity.v1.IdentityService/Resolve"


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
