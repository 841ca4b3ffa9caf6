"""bench-messaging: N triggers for distinct people fanned out to a real SMTP server, with
duplicates injected and one messaging replica killed (-9) in the middle.

Every person first signs up through profile's TrackBatch (so it has a live profile, as a real
welcome email's recipient has). Real processes: identity, profile, decision (products of each
email) and BENCH_MESSAGING_REPLICAS messaging replicas sharing the Redis queue; a real SMTP
server in a thread of this process (bench/smtp_counting_server.py, lean so that the instrument
takes little of the CPU the services are measured on) counts what arrives, by the trigger key
each email carries. Every trigger is fired with one send time a few seconds ahead (plus
BENCH_DUPLICATE_RATIO repeats of the same key), so the clock starts when they all fall due;
half-way through the arrivals one replica is killed.

Last line: emails_per_s=… duplicates=… lost=…
Environment: BENCH_TRIGGERS (3000), BENCH_DUPLICATE_RATIO (0.2), BENCH_MESSAGING_REPLICAS (2),
BENCH_SENDERS (16 concurrent sends per replica), BENCH_SMTP_CONNECTIONS (8 per replica).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from bench.smtp_counting_server import CountingSmtpServer
from bench.support import ServiceProcess, forget_prefix, start_service
from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as pb_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc

LEAD_S = 8.0  # between the last fire and the common send time: every trigger is scheduled by then


async def sign_up(profile_address: str, key: str, count: int, run: str) -> list[str]:
    """Each person signs up on the site first (a live profile, as a real welcome email has)."""
    metadata = (("authorization", f"Bearer {key}"),)
    at = Timestamp()
    at.FromMilliseconds(int(time.time() * 1000))
    people: list[str] = []
    async with grpc.aio.insecure_channel(profile_address) as channel:
        stub = profile_grpc.ProfileServiceStub(channel)
        for start in range(0, count, 500):
            events = [
                event_pb2.Event(
                    event_id=f"bench-signup-{run}-{index}",
                    type=event_pb2.EVENT_TYPE_SIGN_UP,
                    event_time=at,
                    identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"bench-{run}-{index}"),
                )
                for index in range(start, min(start + 500, count))
            ]
            reply = await stub.TrackBatch(profile_pb.TrackBatchRequest(events=events), metadata=metadata, timeout=60)
            people += [result.person_id for result in reply.results]
    return people


async def fire_all(address: str, key: str, people: list[str], repeats: int, send_at: Timestamp) -> float:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.MessagingServiceStub(channel)
        limiter = asyncio.Semaphore(32)

        async def prepare(person: str) -> None:
            async with limiter:
                selector = pb.PersonSelector(person_id=person)
                await stub.SetContact(
                    pb.SetContactRequest(person=selector, email=f"{person}@bench.example", country="US"),
                    metadata=metadata,
                )
                await stub.SetConsent(
                    pb.SetConsentRequest(person=selector, channel=pb.CHANNEL_EMAIL, state=pb.CONSENT_STATE_GRANTED),
                    metadata=metadata,
                )

        await asyncio.gather(*(prepare(person) for person in people))
        rng = random.Random(3)
        firings = [*people, *rng.sample(people, repeats)]
        rng.shuffle(firings)
        started = time.monotonic()

        async def fire(person: str) -> None:
            async with limiter:
                await stub.FireTrigger(
                    pb.FireTriggerRequest(
                        person=pb.PersonSelector(person_id=person),
                        kind=pb.TRIGGER_KIND_WELCOME,
                        idempotency_key=f"welcome-{person}",
                        send_at=send_at,
                    ),
                    metadata=metadata,
                    timeout=30,
                )

        await asyncio.gather(*(fire(person) for person in firings))
        return time.monotonic() - started


def main() -> None:
    triggers = int(os.environ.get("BENCH_TRIGGERS", "3000"))
    duplicate_ratio = float(os.environ.get("BENCH_DUPLICATE_RATIO", "0.2"))
    replica_count = int(os.environ.get("BENCH_MESSAGING_REPLICAS", "2"))
    run = secrets.token_hex(4)
    key = "rk_bench_" + secrets.token_hex(12)
    smtp = CountingSmtpServer().start()
    sink = smtp.count
    common_env = {
        "RAPPORT_API_KEYS": f"bench:{key}:*",
        "RAPPORT_REDIS_PREFIX": f"bench-messaging:{run}:",
        "RAPPORT_LOG_LEVEL": "warning",
    }
    servers: list[ServiceProcess] = []
    try:
        identity = start_service("identity", {**common_env, "RAPPORT_CASSANDRA_KEYSPACE": "bench_identity"})
        servers.append(identity)
        identity.wait_serving()
        peers = {**common_env, "RAPPORT_IDENTITY_ADDRESS": identity.address, "RAPPORT_IDENTITY_API_KEY": key}
        profile = start_service("profile", {**peers, "RAPPORT_CASSANDRA_KEYSPACE": "bench_messaging_profile"})
        servers.append(profile)
        profile.wait_serving()
        peers |= {"RAPPORT_PROFILE_ADDRESS": profile.address, "RAPPORT_PROFILE_API_KEY": key}
        decision = start_service("decision", {**peers, "RAPPORT_DECISION_SECRET": secrets.token_hex(16)})
        servers.append(decision)
        decision.wait_serving()
        with grpc.insecure_channel(decision.address) as channel:
            decision_grpc.DecisionServiceStub(channel).ImportCatalog(
                decision_pb.ImportCatalogRequest(
                    products=[
                        decision_pb.CatalogProduct(
                            product_id=f"B{i}",
                            title=f"Product {i}",
                            category_path=["Women", "Knitwear"],
                            brand="Bench",
                            price=event_pb2.Money(currency_code="EUR", amount=20.0 + i),
                            stock=100,
                        )
                        for i in range(200)
                    ]
                ),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=60,
            )
        messaging_env = {
            **peers,
            "RAPPORT_CASSANDRA_KEYSPACE": f"bench_messaging_{run}",
            "RAPPORT_DECISION_ADDRESS": decision.address,
            "RAPPORT_DECISION_API_KEY": key,
            "RAPPORT_MESSAGING_SECRET": secrets.token_hex(16),
            "RAPPORT_MESSAGING_HTTP_PORT": "0",
            "RAPPORT_MESSAGING_QUIET_HOURS": "false",
            "RAPPORT_MESSAGING_CLAIM_IDLE_MS": "3000",
            "RAPPORT_MESSAGING_FOLLOW_EVENTS": "false",
            "RAPPORT_SMTP_PORT": str(smtp.port),
            "RAPPORT_MESSAGING_SENDERS": os.environ.get("BENCH_SENDERS", "16"),
            "RAPPORT_SMTP_CONNECTIONS": os.environ.get("BENCH_SMTP_CONNECTIONS", "8"),
        }
        replicas = [start_service("messaging", messaging_env) for _ in range(replica_count)]
        servers += replicas
        for replica in replicas:
            replica.wait_serving()

        people = asyncio.run(sign_up(profile.address, key, triggers, run))
        repeats = int(triggers * duplicate_ratio)
        # Setting contacts and firing takes a while; the common send time is after all of it.
        estimate_s = triggers * 6 / 1000 + LEAD_S
        send_at_wall = time.time() + estimate_s
        send_at = Timestamp()
        send_at.FromMilliseconds(int(send_at_wall * 1000))
        fire_s = asyncio.run(fire_all(replicas[0].address, key, people, repeats, send_at))
        print(f"{triggers} people, {triggers + repeats} firings ({repeats} repeated keys) in {fire_s:.1f} s")
        wait_s = send_at_wall - time.time()
        if wait_s < 1:
            raise RuntimeError("firing took longer than planned: raise the lead time")
        time.sleep(wait_s)
        due_at = time.monotonic()
        killed = False
        deadline = due_at + max(120.0, triggers / 20)
        while time.monotonic() < deadline:
            arrived = len(sink.by_trigger)
            if not killed and arrived >= triggers // 2 and replica_count > 1:
                replicas[-1].process.kill()  # -9, in the middle of its sends
                replicas[-1].process.wait(10)
                killed = True
                print(f"killed one replica (-9) after {arrived} emails")
            if arrived >= triggers and time.monotonic() - sink.arrivals[-1] > 5:
                break
            time.sleep(0.05)
        received = sum(sink.by_trigger.values())
        distinct = len(sink.by_trigger)
        duplicates = received - distinct
        lost = triggers - distinct
        last = max(sink.arrivals) if sink.arrivals else due_at
        elapsed = max(last - due_at, 1e-6)
        print(f"{received} emails received, {distinct} distinct triggers, last one {elapsed:.2f} s after due time")
        print(f"emails_per_s={distinct / elapsed:.0f} duplicates={duplicates} lost={lost}")
    finally:
        for server in reversed(servers):
            if server.process.poll() is None:
                server.stop()
        smtp.stop()
        forget_prefix(common_env["RAPPORT_REDIS_PREFIX"])


if __name__ == "__main__":
    main()
