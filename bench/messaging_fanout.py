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

Before it, the CPU each process group took per email from the due time to the kill (all
processes still alive then; Linux /proc): where a send's cost goes.
Last line: emails_per_s=… duplicates=… lost=…
Environment: BENCH_TRIGGERS (3000), BENCH_DUPLICATE_RATIO (0.2), BENCH_MESSAGING_REPLICAS (2),
BENCH_SENDERS (64 concurrent sends per replica, the service's default), BENCH_SMTP_CONNECTIONS (8 per
replica).
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from pathlib import Path

import grpc
from cassandra.cluster import Cluster
from google.protobuf.timestamp_pb2 import Timestamp

from bench.smtp_counting_server import CountingSmtpServer
from bench.support import ServiceProcess, forget_prefix, process_cpu_seconds, stack_pids, start_service
from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.messaging.v1 import messaging_service_pb2 as pb
from rapport.messaging.v1 import messaging_service_pb2_grpc as pb_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.messaging.domain.delivery import delivery_id_for

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
            "RAPPORT_MESSAGING_SENDERS": os.environ.get("BENCH_SENDERS", "64"),
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
        groups = {
            "messaging": [replica.process.pid for replica in replicas],
            "decision": [decision.process.pid],
            "identity+profile": [identity.process.pid, profile.process.pid],
            **{name: [pid] for name, pid in stack_pids().items()},
            "bench (SMTP server)": [os.getpid()],
        }

        def cpu_by_group() -> dict[str, float]:
            return {name: sum(map(process_cpu_seconds, pids)) for name, pids in groups.items()}

        def machine_idle_s() -> float:
            """Idle (and I/O wait) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")

        time.sleep(wait_s)
        due_at = time.monotonic()
        cpu_at_due = cpu_by_group()
        idle_at_due = machine_idle_s()
        cpu_ms: dict[str, float] = {}
        killed = False
        killed_at = due_at
        idle_share = 0.0
        deadline = due_at + max(120.0, triggers / 20)
        while time.monotonic() < deadline:
            arrived = len(sink.by_trigger)
            if not killed and arrived >= triggers // 2 and replica_count > 1:
                cpu_ms = {name: (spent - cpu_at_due[name]) * 1000 / arrived for name, spent in cpu_by_group().items()}
                idle_share = (machine_idle_s() - idle_at_due) / ((time.monotonic() - due_at) * (os.cpu_count() or 1))
                replicas[-1].process.kill()  # -9, in the middle of its sends
                replicas[-1].process.wait(10)
                killed = True
                killed_at = time.monotonic()
                print(f"killed one replica (-9) after {arrived} emails, {killed_at - due_at:.2f} s after due time")
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
        for trigger, times in sorted(sink.by_trigger.items()):
            if times > 1:  # which, to look for in the replicas' logs (their delivery id)
                print(f"duplicate: {trigger} x{times}, delivery {delivery_id_for(trigger, 'EMAIL')}")
        if killed:
            # The survivor takes the killed replica's emails in flight over once their leases run
            # out (RAPPORT_MESSAGING_CLAIM_IDLE_MS): the last arrivals wait for that.
            tail = sorted(at - killed_at for at in sink.arrivals if at > killed_at)
            if tail:
                print(
                    f"after the kill: {len(tail)} emails in {tail[-1]:.2f} s; the last 1% arrived over "
                    f"{tail[-1] - tail[int(len(tail) * 0.99)]:.2f} s"
                )
            split = ", ".join(f"{name} {ms:.2f}" for name, ms in cpu_ms.items())
            print(f"CPU ms per email until the kill: {split}, total {sum(cpu_ms.values()):.2f}")
            print(f"machine idle until the kill: {idle_share:.0%} of {os.cpu_count()} cores")
        print(f"emails_per_s={distinct / elapsed:.0f} duplicates={duplicates} lost={lost}")
    finally:
        for server in reversed(servers):
            if server.process.poll() is None:
                server.stop()
        smtp.stop()
        forget_prefix(common_env["RAPPORT_REDIS_PREFIX"])
        drop_keyspace(f"bench_messaging_{run}")


def drop_keyspace(keyspace: str) -> None:
    """The run's own messaging keyspace goes at the end: left there, each run's tables add to the
    node's memtables and flushes, and the later runs slow down."""
    cluster = Cluster(
        os.environ.get("RAPPORT_CASSANDRA_HOSTS", "127.0.0.1").split(","),
        port=int(os.environ.get("RAPPORT_CASSANDRA_PORT", "9042")),
        protocol_version=5,
    )
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
