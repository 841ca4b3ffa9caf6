"""Three identity replicas, fifty concurrent callers, overlapping identifiers: one person per
connected group, and no identifier left pointing at a merged-away person."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import pytest

from rapport.common.v1 import identifier_pb2 as common
from rapport.identity.v1 import identity_service_pb2 as pb
from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.common.cassandra import CassandraClient
from tests.e2e.conftest import start_service
from tests.support import ADMIN_KEY, bearer

pytestmark = pytest.mark.e2e

GROUPS = 12
IDENTIFIERS_PER_GROUP = 8
CALLERS = 50
RETRYABLE = (grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
KINDS = [
    common.IDENTIFIER_TYPE_COOKIE,
    common.IDENTIFIER_TYPE_DEVICE,
    common.IDENTIFIER_TYPE_APP_INSTALL,
    common.IDENTIFIER_TYPE_AD_ID,
]


def group_identifiers(run_id: str, group: int) -> list[common.Identifier]:
    identifiers = [
        common.Identifier(type=KINDS[i % len(KINDS)], value=f"conc-{run_id}-g{group}-i{i}")  # type: ignore[arg-type]
        for i in range(IDENTIFIERS_PER_GROUP - 1)
    ]
    if group % 2 == 0:  # half the groups log in: one customer id each
        identifiers.append(
            common.Identifier(type=common.IDENTIFIER_TYPE_CUSTOMER_ID, value=f"conc-{run_id}-cust{group}")
        )
    else:
        identifiers.append(common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=f"conc-{run_id}-g{group}-extra"))
    return identifiers


def operations(run_id: str, rng: random.Random) -> list[tuple[str, list[common.Identifier]]]:
    """Links that connect every group (a shuffled spanning chain plus random extra pairs and
    triples), interleaved with resolves of the same identifiers."""
    ops: list[tuple[str, list[common.Identifier]]] = []
    for group in range(GROUPS):
        identifiers = group_identifiers(run_id, group)
        order = identifiers[:]
        rng.shuffle(order)
        ops += [("Link", [order[i], order[i + 1]]) for i in range(len(order) - 1)]
        ops += [("Link", rng.sample(identifiers, rng.choice((2, 3)))) for _ in range(6)]
        ops += [("Resolve", [identifier]) for identifier in identifiers for _ in range(2)]
    rng.shuffle(ops)
    return ops


async def test_replicas_converge_to_one_person_per_group(
    tmp_path: Path, e2e_keyspace: str, run_id: str, cassandra_admin: CassandraClient
) -> None:
    env = {
        "RAPPORT_CASSANDRA_KEYSPACE": e2e_keyspace,
        "RAPPORT_REDIS_PREFIX": f"conc:{run_id}:",
        "RAPPORT_DEFAULT_DEADLINE_MS": "5000",
    }
    replicas = [start_service("identity", tmp_path, env) for _ in range(3)]
    channels = [grpc.aio.insecure_channel(replica.address) for replica in replicas]
    stubs = [pb_grpc.IdentityServiceStub(channel) for channel in channels]
    rng = random.Random(7)
    queue: asyncio.Queue[tuple[str, list[common.Identifier]]] = asyncio.Queue()
    for op in operations(run_id, rng):
        queue.put_nowait(op)
    retries = 0

    async def caller(index: int) -> None:
        nonlocal retries
        while not queue.empty():
            method, identifiers = queue.get_nowait()
            for attempt in range(30):
                stub = stubs[(index + attempt) % len(stubs)]
                try:
                    if method == "Link":
                        await stub.Link(pb.LinkRequest(identifiers=identifiers), metadata=bearer(ADMIN_KEY), timeout=10)
                    else:
                        await stub.Resolve(
                            pb.ResolveRequest(identifier=identifiers[0]), metadata=bearer(ADMIN_KEY), timeout=10
                        )
                    break
                except grpc.aio.AioRpcError as error:
                    if error.code() not in RETRYABLE:
                        raise
                    retries += 1
                    await asyncio.sleep(rng.uniform(0.01, 0.1))
            else:
                raise AssertionError(f"{method} never succeeded")

    try:
        await asyncio.gather(*(caller(i) for i in range(CALLERS)))

        persons_by_group: list[str] = []
        for group in range(GROUPS):
            replies = [
                await stubs[i % 3].Resolve(
                    pb.ResolveRequest(identifier=identifier), metadata=bearer(ADMIN_KEY), timeout=10
                )
                for i, identifier in enumerate(group_identifiers(run_id, group))
            ]
            persons = {reply.person_id for reply in replies}
            assert len(persons) == 1, f"group {group} split into {persons}"
            persons_by_group.append(persons.pop())
        assert len(set(persons_by_group)) == GROUPS, "two groups were merged together"

        # What Cassandra holds: every identifier row points at a live (not merged-away) person,
        # and each survivor's identifier partition is exactly its group.
        session = cassandra_admin.session
        for group, person in enumerate(persons_by_group):
            for identifier in group_identifiers(run_id, group):
                key = (
                    f"{common.IdentifierType.Name(identifier.type).removeprefix('IDENTIFIER_TYPE_')}:{identifier.value}"
                )
                owner = session.execute(
                    f"SELECT person_id FROM {e2e_keyspace}.identifier_person WHERE identifier = %s", [key]
                ).one()["person_id"]
                assert owner == person, f"{key} points at {owner}, not at the survivor {person}"
            row = session.execute(f"SELECT merged_into FROM {e2e_keyspace}.person WHERE person_id = %s", [person]).one()
            assert row["merged_into"] is None
            held = {
                r["identifier"]
                for r in session.execute(
                    f"SELECT identifier FROM {e2e_keyspace}.person_identifier WHERE person_id = %s", [person]
                )
            }
            assert len(held) == IDENTIFIERS_PER_GROUP
        print(f"converged; {retries} retryable answers were retried")
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            replica.terminate()
