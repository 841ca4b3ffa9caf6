"""bench-decision: ghz drives Decide for warm profiles (real identity, profile and decision
processes, profiles live in the real Redis) at a fixed rate, then measures the maximum
throughput of Decide and of the no-op health Check of the same server.

Last line: rps=… p50_ms=… p99_ms=… floor_ratio=…  (floor_ratio = Decide max / Check max)
Environment: BENCH_RPS (1000), BENCH_SECONDS (15), BENCH_VISITORS (500), BENCH_CONCURRENCY (32
ghz workers in all), BENCH_DECISION_REPLICAS (2 decision processes, one per core),
BENCH_PIN_REPLICAS (1: each replica pinned to a core of its own, RAPPORT_CPU_AFFINITY; 0: not).

Calls are spread evenly over the replicas, as a gRPC client's round_robin policy spreads them over
a Deployment's pods: one ghz per replica, each at its share of the rate, and the percentiles are
of all their calls together. (Replicas sharing one port through SO_REUSEPORT get whole
connections, by a hash of their addresses: with a few connections one replica often gets twice
the other's calls, and its queue, not Decide, sets the p99.) Each replica's CPU is printed.

The fixed-rate run starts with WARM_UP_S seconds that are not counted: the load generator's own
start (process, reflection, connection set-up) made its first second's calls wait up to 30-45 ms
and, alone, set the p99 of a separate short run. The measured calls follow on the same ghz
processes and connections, as a storefront's long-lived clients would. Before it, the shared dev
Redis compacts its append-only file (bench/support.py: compact_redis_log), so that a rewrite due
to what tests and earlier runs left there does not land in the measured seconds; the run prints
how many rewrites happened during it anyway.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from bench.support import (
    CHECK,
    ServiceProcess,
    compact_redis_log,
    cpu_seconds,
    forget_prefix,
    ghz_spread,
    redis_log_rewrites,
    start_service,
)
from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as pb
from rapport.decision.v1 import decision_service_pb2_grpc as pb_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc

DECIDE = "rapport.decision.v1.DecisionService/Decide"
CATEGORIES = [("Home", f"Department {d}", f"Shelf {s}") for d in range(5) for s in range(4)]
PRODUCTS = 2000
WARM_UP_S = 3


def varint(value: int) -> bytes:
    """`value` as a protobuf varint (the length prefix of a delimited message)."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def replica_cpus(replicas: int, cores: int, pin: bool) -> list[str]:
    """Each decision replica's RAPPORT_CPU_AFFINITY: a core of its own, as a Deployment's pods get
    with Kubernetes' static CPU manager, when there are as many cores as replicas and `pin`;
    else empty (wherever the kernel schedules them)."""
    if pin and replicas <= cores:
        return [str(index) for index in range(replicas)]
    return [""] * replicas


def wait_ready(call: object, servers: list[ServiceProcess]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            call()  # type: ignore[operator]
            return
        except grpc.RpcError:
            if time.monotonic() > deadline or any(server.process.poll() is not None for server in servers):
                raise
            time.sleep(0.5)


def main() -> None:
    rps = int(os.environ.get("BENCH_RPS", "1000"))
    seconds = int(os.environ.get("BENCH_SECONDS", "15"))
    visitors = int(os.environ.get("BENCH_VISITORS", "500"))
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "32"))
    replica_count = int(os.environ.get("BENCH_DECISION_REPLICAS", "2"))
    key = "rk_bench_" + secrets.token_hex(12)
    run = uuid.uuid4().hex[:8]
    common_env = {"RAPPORT_API_KEYS": f"bench:{key}:*", "RAPPORT_REDIS_PREFIX": f"bench-decision-{run}:"}
    identity = start_service("identity", {**common_env, "RAPPORT_CASSANDRA_KEYSPACE": "bench_decision_identity"})
    servers = [identity]
    workdir = Path(tempfile.mkdtemp(prefix="bench-decision-"))
    try:
        identity.wait_serving()
        profile = start_service(
            "profile",
            {
                **common_env,
                "RAPPORT_CASSANDRA_KEYSPACE": "bench_decision_profile",
                "RAPPORT_IDENTITY_ADDRESS": identity.address,
                "RAPPORT_IDENTITY_API_KEY": key,
            },
        )
        servers.append(profile)
        profile.wait_serving()
        decision_env = {
            **common_env,
            "RAPPORT_IDENTITY_ADDRESS": identity.address,
            "RAPPORT_IDENTITY_API_KEY": key,
            "RAPPORT_PROFILE_ADDRESS": profile.address,
            "RAPPORT_PROFILE_API_KEY": key,
            "RAPPORT_DECISION_SECRET": secrets.token_hex(16),
        }
        pinning = replica_cpus(replica_count, os.cpu_count() or 1, os.environ.get("BENCH_PIN_REPLICAS", "1") != "0")
        deciders = [start_service("decision", {**decision_env, "RAPPORT_CPU_AFFINITY": cpus}) for cpus in pinning]
        first = deciders[0]
        servers += deciders
        for decider in deciders:
            decider.wait_serving()
        metadata = (("authorization", f"Bearer {key}"),)
        rng = random.Random(7)
        products = [
            (f"p{index}", CATEGORIES[index % len(CATEGORIES)], round(5 + rng.random() * 200, 2))
            for index in range(PRODUCTS)
        ]
        decision_stub = pb_grpc.DecisionServiceStub(grpc.insecure_channel(first.address))
        for start in range(0, PRODUCTS, 1000):
            decision_stub.ImportCatalog(
                pb.ImportCatalogRequest(
                    products=[
                        pb.CatalogProduct(
                            product_id=pid,
                            title=f"Product {pid}",
                            category_path=list(path),
                            brand=f"Brand {index % 30}",
                            price=event_pb2.Money(currency_code="EUR", amount=price),
                            stock=10,
                        )
                        for index, (pid, path, price) in enumerate(products[start : start + 1000])
                    ]
                ),
                metadata=metadata,
                timeout=60,
            )
        # Warm profiles: every visitor browses a few products of a department, some carts, some buy.
        profile_stub = profile_grpc.ProfileServiceStub(grpc.insecure_channel(profile.address))
        now_ms = int(time.time() * 1000)
        events = []
        for visitor in range(visitors):
            who = common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"bench-{run}-{visitor}")
            home = rng.randrange(len(CATEGORIES))
            for step in range(6):
                pid, path, price = products[(home + len(CATEGORIES) * rng.randrange(PRODUCTS // len(CATEGORIES)))]
                kind = (
                    event_pb2.EVENT_TYPE_ADD_TO_CART
                    if step == 5 and visitor % 3 == 0
                    else event_pb2.EVENT_TYPE_PRODUCT_VIEW
                )
                message = event_pb2.Event(
                    event_id=uuid.uuid4().hex,
                    type=kind,
                    identifier=who,
                    product=event_pb2.ProductRef(
                        product_id=pid,
                        title=f"Product {pid}",
                        category_path=list(path),
                        price=event_pb2.Money(currency_code="EUR", amount=price),
                    ),
                    quantity=1 if kind == event_pb2.EVENT_TYPE_ADD_TO_CART else 0,
                )
                message.event_time.FromMilliseconds(now_ms - (visitor % 90) * 60_000 + step * 1000)
                events.append(message)
        person_ids: set[str] = set()
        for start in range(0, len(events), 1000):
            reply = profile_stub.TrackBatch(
                profile_pb.TrackBatchRequest(events=events[start : start + 1000]), metadata=metadata, timeout=120
            )
            person_ids.update(result.person_id for result in reply.results if result.person_id)
        warm_person_ids = sorted(person_ids)
        requests = [
            pb.DecideRequest(
                person_id=person_id,
                placement=pb.PLACEMENT_PRODUCT if index % 2 else pb.PLACEMENT_HOME,
                count=8,
                page=pb.PageContext(product_id=products[index % PRODUCTS][0]) if index % 2 else None,
            )
            for index, person_id in enumerate(warm_person_ids)
        ]
        # Serialized once, each prefixed by its length: ghz sends them as they are instead of
        # converting JSON to protobuf on every call.
        data = workdir / "requests.bin"
        data.write_bytes(b"".join(varint(request.ByteSize()) + request.SerializeToString() for request in requests))
        # Every replica has learnt the stream once a Decide answers with items for a product page.
        for decider in deciders:
            stub = pb_grpc.DecisionServiceStub(grpc.insecure_channel(decider.address))
            wait_ready(
                lambda stub=stub: stub.Decide(  # type: ignore[misc]
                    pb.DecideRequest(person_id=warm_person_ids[1], placement=pb.PLACEMENT_HOME, count=8),
                    metadata=metadata,
                    timeout=5,
                ),
                servers,
            )
        time.sleep(2)
        addresses = [decider.address for decider in deciders]
        share = ["-c", str(max(1, concurrency // replica_count)), "--connections", "2"]
        # The first WARM_UP_S of the run warm it up and are not counted: every connection open,
        # the load generator started, every replica's caches (product cards, decoded profiles,
        # bandit beliefs) as a running service has them. The same ghz processes and connections
        # then carry the measured calls, as a storefront's long-lived clients do.
        compact_redis_log()
        rewrites_before = redis_log_rewrites()
        cpu_before: list[float] = []
        fixed = ghz_spread(
            addresses,
            DECIDE,
            key,
            data,
            ["--rps", str(max(1, rps // replica_count)), "-z", f"{seconds + WARM_UP_S}s", *share],
            warm_up_s=WARM_UP_S,
            on_warm=lambda: cpu_before.extend(cpu_seconds([decider]) for decider in deciders),
        )
        replica_cpu_s = [cpu_seconds([decider]) - before for decider, before in zip(deciders, cpu_before, strict=True)]
        rewrites_during = redis_log_rewrites() - rewrites_before
        decide_cpu_ms = sum(replica_cpu_s) * 1000 / max(1, fixed.count)
        decide_max = ghz_spread(addresses, DECIDE, key, data, ["-z", "5s", *share])
        cpu_before_check = cpu_seconds(deciders)
        check_max = ghz_spread(addresses, CHECK, key, "{}", ["-z", "5s", *share])
        check_cpu_ms = (cpu_seconds(deciders) - cpu_before_check) * 1000 / max(1, check_max.count)
        # ghz cancels the calls still in flight when its duration ends ("the client connection is
        # closing", "transport is closing"): those are the load generator's, not the server's.
        errors = {
            message: count
            for message, count in fixed.errors.items()
            if "connection is closing" not in message and "transport is closing" not in message
        }
        cut_at_end = sum(fixed.errors.values()) - sum(errors.values())
        sample = decision_stub.Decide(
            pb.DecideRequest(person_id=warm_person_ids[0], placement=pb.PLACEMENT_HOME, count=8),
            metadata=metadata,
            timeout=5,
        )
        placement = (
            "each on a core of its own (CPUs " + ", ".join(pinning) + ")"
            if all(pinning)
            else "not pinned (BENCH_PIN_REPLICAS=0 or more replicas than cores)"
        )
        print(
            f"warm visitors {len(person_ids)}, catalog {PRODUCTS} products, "
            f"{replica_count} decision replicas, {placement}"
        )
        print(
            f"sample answer: situation={pb.Situation.Name(sample.situation)} "
            f"items={len(sample.items)} degraded={sample.degraded}"
        )
        print(
            f"fixed rate: target {rps}/s for {seconds}s, achieved {fixed.rps:.0f}/s, "
            f"server errors {sum(errors.values())}, in flight when the load generator stopped {cut_at_end}"
        )
        for message, count in errors.items():
            print(f"  {count} x {message}")
        print("CPU seconds per decision replica at the fixed rate: " + ", ".join(f"{s:.1f}" for s in replica_cpu_s))
        print(f"Redis AOF rewrites during the fixed-rate run: {rewrites_during} (the AOF was compacted before it)")
        print(f"max throughput: Decide {decide_max.rps:.0f}/s, health Check {check_max.rps:.0f}/s")
        print(
            f"decision processes' CPU per call: Decide {decide_cpu_ms:.2f} ms (fixed rate), "
            f"health Check {check_cpu_ms:.2f} ms (max throughput)"
        )
        print(
            f"rps={fixed.rps:.0f} p50_ms={fixed.latency_ms(50):.2f} p99_ms={fixed.latency_ms(99):.2f} "
            f"floor_ratio={decide_max.rps / check_max.rps:.2f}"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        for server in reversed(servers):
            server.stop()
        forget_prefix(common_env["RAPPORT_REDIS_PREFIX"])


if __name__ == "__main__":
    main()
