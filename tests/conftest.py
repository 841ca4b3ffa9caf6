"""Fixtures shared by every test: a unique Cassandra keyspace and Redis prefix per run."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from services.common.cassandra import CassandraClient
from tests.support import CASSANDRA_HOST, CASSANDRA_PORT

RUN_ID = secrets.token_hex(4)


@pytest.fixture(scope="session")
def run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def cassandra_admin() -> Iterator[CassandraClient]:
    """A plain driver session for assertions on what Cassandra really holds; drops test keyspaces."""
    client = CassandraClient.connect([CASSANDRA_HOST], CASSANDRA_PORT, "system", "datacenter1")
    created: list[str] = []
    client.created_keyspaces = created  # type: ignore[attr-defined]
    yield client
    for keyspace in created:
        client.session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    client.cluster.shutdown()
