"""bench-profile: sustained TrackBatch load on a real profile process (durable Cassandra writes,
live state in Redis, identifiers resolved by a real identity process).

Visitors are known to identity and have a live profile before the clock starts (steady state:
first sight and first rebuild are not what is measured), and batches are built and serialised
beforehand, so the figure is the server's, not the load generator's. Each batch carries events
of many visitors, each visitor's events in time order (as an edge collector would send them).

Last line: events_per_s=… p99_batch_ms=…
Environment: BENCH_SECONDS (20), BENCH_PERSONS (5000), BENCH_BATCH (500), BENCH_CLIENTS (8),
BENCH_PROFILE_REPLICAS (2: profile processes sharing the port with SO_REUSEPORT).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import statistics
import time
import uuid

import grpc

from bench.support import ServiceProcess, forget_prefix, start_service
from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from rapport.profile.v1 import profile_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc

E = event_pb2.EventType
CATEGORIES = [
    ("Women", "Knitwear", "Cashmere sweaters"),
    ("Women", "Dresses"),
    ("Men", "Shoes", "Sneakers"),
    ("Men", "Shirts"),
    ("Home", "Candles"),
    ("Kids", "Toys"),
]
PRODUCTS = [
    event_pb2.ProductRef(
        product_id=f"SKU{i}",
        title=f"Product {i}",
        category_path=list(CATEGORIES[i % len(CATEGORIES)]),
        brand=f"Brand {i % 17}",
        price=event_pb2.Money(currency_code="EUR", amount=round(10 + (i * 7.3) % 240, 2)),
    )
    for i in range(2000)
]
KINDS = [E.EVENT_TYPE_PAGE_VIEW] * 3 + [E.EVENT_TYPE_PRODUCT_VIEW] * 5 + [E.EVENT_TYPE_ADD_TO_CART]


def first_visit(person: str, at_ms: int) -> event_pb2.Event:
    event = event_pb2.Event(
        event_id=uuid.uuid4().hex,
        type=E.EVENT_TYPE_PAGE_VIEW,
        identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=person),
    )
    event.event_time.FromMilliseconds(at_ms)
    return event


def build_batches(persons: list[str], batches: int, size: int, rng: random.Random) -> list[bytes]:
    clock = {person: int(time.time() * 1000) - 3_600_000 for person in persons}
    per_visitor = 10
    built: list[bytes] = []
    for _ in range(batches):
        events = []
        for person in rng.sample(persons, size // per_visitor):
            for _ in range(per_visitor):
                clock[person] += rng.randint(1000, 20_000)
                kind = rng.choice(KINDS)
                event = event_pb2.Event(
                    event_id=uuid.uuid4().hex,
                    type=kind,
                    identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=person),
                    context=event_pb2.EventContext(device_type="mobile", page_url="https://shop.example/p"),
                )
                event.event_time.FromMilliseconds(min(clock[person], int(time.time() * 1000)))
                if kind != E.EVENT_TYPE_PAGE_VIEW:
                    event.product.CopyFrom(rng.choice(PRODUCTS))
                    event.quantity = 1 if kind == E.EVENT_TYPE_ADD_TO_CART else 0
                events.append(event)
        built.append(pb.TrackBatchRequest(events=events).SerializeToString())
    return built


async def main() -> None:
    seconds = int(os.environ.get("BENCH_SECONDS", "20"))
    person_count = int(os.environ.get("BENCH_PERSONS", "5000"))
    batch_size = int(os.environ.get("BENCH_BATCH", "500"))
    clients = int(os.environ.get("BENCH_CLIENTS", "8"))
    replica_count = int(os.environ.get("BENCH_PROFILE_REPLICAS", "2"))
    key = "rk_bench_" + secrets.token_hex(12)
    run = secrets.token_hex(3)
    common_env = {"RAPPORT_API_KEYS": f"bench:{key}:*", "RAPPORT_REDIS_PREFIX": f"bench:{run}:"}
    identity = start_service("identity", {**common_env, "RAPPORT_CASSANDRA_KEYSPACE": "bench_identity"})
    profile: ServiceProcess | None = None
    replicas: list[ServiceProcess] = []
    try:
        identity.wait_serving()
        profile_env = {
            **common_env,
            "RAPPORT_CASSANDRA_KEYSPACE": "bench_profile",
            "RAPPORT_IDENTITY_ADDRESS": identity.address,
            "RAPPORT_IDENTITY_API_KEY": key,
            "RAPPORT_DEFAULT_DEADLINE_MS": "30000",
            "RAPPORT_REUSE_PORT": "true",
        }
        profile = start_service("profile", profile_env)
        profile.wait_serving()
        # Further replicas on the same host and port: the kernel spreads connections over them.
        replicas = [
            start_service("profile", {**profile_env, "RAPPORT_PROFILE_WATCH_IDENTITY": "false"}, port=profile.port)
            for _ in range(replica_count - 1)
        ]
        for replica in replicas:
            replica.wait_serving()
        metadata = (("authorization", f"Bearer {key}"),)
        persons = [f"bench-{run}-{i}" for i in range(person_count)]
        async with grpc.aio.insecure_channel(identity.address) as channel:  # first sight is not what we measure
            stub = identity_grpc.IdentityServiceStub(channel)
            for start in range(0, len(persons), 1000):
                await stub.BatchResolve(
                    identity_pb.BatchResolveRequest(
                        identifiers=[
                            common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=p)
                            for p in persons[start : start + 1000]
                        ]
                    ),
                    metadata=metadata,
                    timeout=120,
                )
        async with grpc.aio.insecure_channel(profile.address) as channel:  # nor is a profile's first rebuild
            stub_profile = profile_grpc.ProfileServiceStub(channel)
            first_seen = int(time.time() * 1000) - 4 * 3_600_000
            for start in range(0, len(persons), 1000):
                await stub_profile.TrackBatch(
                    pb.TrackBatchRequest(events=[first_visit(p, first_seen) for p in persons[start : start + 1000]]),
                    metadata=metadata,
                    timeout=300,
                )
        rng = random.Random(1)
        expected_rate = 15_000
        per_client = max(4, expected_rate * seconds // batch_size // clients)
        # Each client (an edge collector) sends its own visitors, so a visitor's batches arrive in
        # order, as they would from one device; a visitor split over concurrent batches would make
        # every other batch a late one (a refold of the log), which is not the steady state.
        queues: list[list[bytes]] = [
            build_batches(persons[index::clients], per_client, batch_size, rng) for index in range(clients)
        ]
        print(f"built {clients} x {per_client} batches of {batch_size} events for {person_count} visitors")

        latencies: list[float] = []
        acked = rejected = 0
        # One connection per client, as separate storefront collectors would have.
        channels = [
            grpc.aio.insecure_channel(profile.address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(clients)
        ]
        try:
            tracks = [
                channel.unary_unary(
                    "/rapport.profile.v1.ProfileService/TrackBatch",
                    request_serializer=lambda raw: raw,
                    response_deserializer=pb.TrackBatchResponse.FromString,
                )
                for channel in channels
            ]
            for track, queue in zip(tracks, queues, strict=True):  # warm-up (connections, caches)
                await track(queue.pop(0), metadata=metadata, timeout=60)
            stop_at = time.monotonic() + seconds

            async def client(track: grpc.aio.UnaryUnaryMultiCallable, queue: list[bytes]) -> None:
                nonlocal acked, rejected
                while time.monotonic() < stop_at and queue:
                    batch = queue.pop(0)
                    started = time.perf_counter()
                    reply = await track(batch, metadata=metadata, timeout=60)
                    latencies.append((time.perf_counter() - started) * 1000)
                    acked += reply.accepted_count
                    rejected += reply.rejected_count

            began = time.monotonic()
            await asyncio.gather(*(client(track, queue) for track, queue in zip(tracks, queues, strict=True)))
            elapsed = time.monotonic() - began
        finally:
            for channel in channels:
                await channel.close()
        if not all(queues):
            print("warning: the prepared batches ran out before the time was up; raise expected_rate")
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"{len(latencies)} batches, {acked} events acknowledged ({rejected} rejected) in {elapsed:.1f} s; "
            f"batch p50 {statistics.median(latencies):.1f} ms"
        )
        print(f"events_per_s={acked / elapsed:.0f} p99_batch_ms={p99:.1f}")
    finally:
        for replica in replicas:
            replica.stop()
        if profile is not None:
            profile.stop()
        identity.stop()
        forget_prefix(common_env["RAPPORT_REDIS_PREFIX"])


if __name__ == "__main__":
    asyncio.run(main())
