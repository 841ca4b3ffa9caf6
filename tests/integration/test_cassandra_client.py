"""The shared Cassandra client (services/common/cassandra.py) against the real node: its sockets
have Nagle's algorithm off. With it on, a request written while an earlier one on the same
connection is unacknowledged waited for that ACK (up to 40 ms): that was most of the latency of
messaging's grouped reads and writes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from services.common.cassandra import CassandraClient
from tests.support import CASSANDRA_HOST, CASSANDRA_PORT

pytestmark = pytest.mark.integration


def driver_sockets(client: CassandraClient) -> Iterator[socket.socket]:
    """The sockets of the session's connection pools and of the control connection (the driver
    exposes them only through private attributes)."""
    pools: dict[Any, Any] = client.session._pools
    for pool in pools.values():
        connections = getattr(pool, "_connections", None) or {0: pool._connection}
        for connection in connections.values():
            yield connection._socket
    yield client.cluster.control_connection._connection._socket


def test_every_connection_to_the_node_sends_without_waiting_for_acks() -> None:
    client = CassandraClient.connect([CASSANDRA_HOST], CASSANDRA_PORT, "system", "datacenter1")
    try:
        sockets = list(driver_sockets(client))
        assert len(sockets) >= 2
        assert [sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in sockets] == [1] * len(sockets)
    finally:
        client.cluster.shutdown()
