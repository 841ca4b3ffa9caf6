"""The identity graph in Cassandra: every statement the service runs, in one place."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cassandra.util import uuid_from_time

from services.common.cassandra import CassandraClient, to_datetime, to_ms

SCHEMA_FILE = Path(__file__).with_name("schema.cql")
OUTBOX_BUCKET = 0
# 100 ns intervals between the UUID epoch (1582-10-15) and the Unix epoch.
_UUID_EPOCH_OFFSET_100NS = 0x01B21DD213814000


def timeuuid_to_ms(value: uuid.UUID) -> int:
    """Milliseconds since the epoch of a version-1 (time) UUID."""
    return (value.time - _UUID_EPOCH_OFFSET_100NS) // 10_000


@dataclass(frozen=True)
class PersonRow:
    person_id: str
    created_at_ms: int
    last_seen_ms: int
    merged_into: str | None


@dataclass(frozen=True)
class MergeLogRow:
    event_time_ms: int
    kind: str
    from_person_id: str
    to_person_id: str
    identifiers: list[str]


@dataclass(frozen=True)
class OutboxEvent:
    event_id: uuid.UUID
    kind: str  # "merge" or "unlink"
    survivor_person_id: str
    person_ids: list[str]
    identifier: str

    @property
    def created_at_ms(self) -> int:
        return timeuuid_to_ms(self.event_id)


class CassandraIdentityStore:
    def __init__(self, client: CassandraClient) -> None:
        self._db = client

    # identifier -> person
    async def identifier_owner(self, identifier: str, *, serial: bool = False) -> str | None:
        rows = await self._db.execute(
            "SELECT person_id FROM {keyspace}.identifier_person WHERE identifier = ?", [identifier], serial_read=serial
        )
        return rows[0]["person_id"] if rows else None

    async def claim_identifier(self, identifier: str, person_id: str) -> tuple[bool, str]:
        """First writer wins; returns (claimed, owner)."""
        applied, row = await self._db.execute_lwt(
            "INSERT INTO {keyspace}.identifier_person (identifier, person_id) VALUES (?, ?) IF NOT EXISTS",
            [identifier, person_id],
        )
        return applied, person_id if applied else row["person_id"]

    async def move_identifier(self, identifier: str, from_person: str, to_person: str) -> bool:
        applied, _ = await self._db.execute_lwt(
            "UPDATE {keyspace}.identifier_person SET person_id = ? WHERE identifier = ? IF person_id = ?",
            [to_person, identifier, from_person],
        )
        return applied

    async def delete_identifier(self, identifier: str) -> None:
        await self._db.execute("DELETE FROM {keyspace}.identifier_person WHERE identifier = ?", [identifier])

    # persons
    async def create_person(self, person_id: str, created_at_ms: int) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.person (person_id, created_at, last_seen) VALUES (?, ?, ?)",
            [person_id, to_datetime(created_at_ms), to_datetime(created_at_ms)],
        )

    async def person(self, person_id: str, *, serial: bool = False) -> PersonRow | None:
        rows = await self._db.execute(
            "SELECT person_id, created_at, last_seen, merged_into FROM {keyspace}.person WHERE person_id = ?",
            [person_id],
            serial_read=serial,
        )
        if not rows or rows[0]["created_at"] is None:
            return None
        row = rows[0]
        return PersonRow(row["person_id"], to_ms(row["created_at"]), to_ms(row["last_seen"]), row["merged_into"])

    async def mark_merged(self, loser: str, survivor: str, at_ms: int) -> bool:
        """The commit point of a merge: set once, never undone."""
        applied, _ = await self._db.execute_lwt(
            "UPDATE {keyspace}.person SET merged_into = ?, merged_at = ? WHERE person_id = ? IF merged_into = null",
            [survivor, to_datetime(at_ms), loser],
        )
        return applied

    async def touch_last_seen(self, person_id: str, at_ms: int) -> None:
        await self._db.execute(
            "UPDATE {keyspace}.person SET last_seen = ? WHERE person_id = ? IF EXISTS", [to_datetime(at_ms), person_id]
        )

    async def delete_person(self, person_id: str) -> None:
        for table in ("person", "person_identifier", "merged_from", "merge_log", "person_lock"):
            await self._db.execute(f"DELETE FROM {{keyspace}}.{table} WHERE person_id = ?", [person_id])

    # person -> identifiers
    async def add_person_identifier(self, person_id: str, identifier: str, first_seen_ms: int) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.person_identifier (person_id, identifier, first_seen) VALUES (?, ?, ?)",
            [person_id, identifier, to_datetime(first_seen_ms)],
        )

    async def remove_person_identifier(self, person_id: str, identifier: str) -> None:
        await self._db.execute(
            "DELETE FROM {keyspace}.person_identifier WHERE person_id = ? AND identifier = ?", [person_id, identifier]
        )

    async def person_identifiers(self, person_id: str) -> list[tuple[str, int]]:
        rows = await self._db.execute(
            "SELECT identifier, first_seen FROM {keyspace}.person_identifier WHERE person_id = ?", [person_id]
        )
        return [(row["identifier"], to_ms(row["first_seen"])) for row in rows]

    # merge history
    async def add_merged_from(self, survivor: str, loser: str) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.merged_from (person_id, merged_person_id) VALUES (?, ?)", [survivor, loser]
        )

    async def merged_from(self, person_id: str) -> list[str]:
        rows = await self._db.execute(
            "SELECT merged_person_id FROM {keyspace}.merged_from WHERE person_id = ?", [person_id]
        )
        return [row["merged_person_id"] for row in rows]

    async def append_merge_log(
        self, person_id: str, kind: str, from_person: str, to_person: str, identifiers: list[str], at_ms: int
    ) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.merge_log (person_id, event_id, kind, from_person_id, to_person_id, identifiers)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [person_id, uuid_from_time(at_ms / 1000), kind, from_person, to_person, identifiers],
        )

    async def merge_log(self, person_id: str) -> list[MergeLogRow]:
        rows = await self._db.execute(
            "SELECT event_id, kind, from_person_id, to_person_id, identifiers FROM {keyspace}.merge_log"
            " WHERE person_id = ?",
            [person_id],
        )
        return [
            MergeLogRow(
                timeuuid_to_ms(row["event_id"]),
                row["kind"],
                row["from_person_id"],
                row["to_person_id"],
                list(row["identifiers"] or []),
            )
            for row in rows
        ]

    # lease locks
    async def try_lock(self, person_id: str, owner: str, lease_s: int) -> bool:
        applied, _ = await self._db.execute_lwt(
            "INSERT INTO {keyspace}.person_lock (person_id, owner) VALUES (?, ?) IF NOT EXISTS USING TTL ?",
            [person_id, owner, lease_s],
        )
        return applied

    async def unlock(self, person_id: str, owner: str) -> None:
        await self._db.execute_lwt(
            "DELETE FROM {keyspace}.person_lock WHERE person_id = ? IF owner = ?", [person_id, owner]
        )

    # shared-device guard
    async def record_device_customer(self, device: str, customer_id: str) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.device_customer (identifier, customer_id) VALUES (?, ?)", [device, customer_id]
        )
        await self._db.execute(
            "INSERT INTO {keyspace}.customer_device (customer_id, identifier) VALUES (?, ?)", [customer_id, device]
        )

    async def device_customers(self, device: str) -> set[str]:
        rows = await self._db.execute(
            "SELECT customer_id FROM {keyspace}.device_customer WHERE identifier = ?", [device]
        )
        return {row["customer_id"] for row in rows}

    async def erase_device_links(self, identifier: str, customer_id: str | None) -> None:
        """Erase the guard's memory of a device and, for a customer, of every device it used."""
        await self._db.execute("DELETE FROM {keyspace}.device_customer WHERE identifier = ?", [identifier])
        if customer_id is not None:
            rows = await self._db.execute(
                "SELECT identifier FROM {keyspace}.customer_device WHERE customer_id = ?", [customer_id]
            )
            for row in rows:
                await self._db.execute(
                    "DELETE FROM {keyspace}.device_customer WHERE identifier = ? AND customer_id = ?",
                    [row["identifier"], customer_id],
                )
            await self._db.execute("DELETE FROM {keyspace}.customer_device WHERE customer_id = ?", [customer_id])

    # outbox
    async def add_outbox(self, kind: str, survivor: str, person_ids: list[str], identifier: str = "") -> OutboxEvent:
        event = OutboxEvent(uuid_from_time(datetime.now(tz=UTC)), kind, survivor, person_ids, identifier)
        await self._db.execute(
            "INSERT INTO {keyspace}.event_outbox (bucket, event_id, kind, survivor_person_id, person_ids, identifier)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [OUTBOX_BUCKET, event.event_id, kind, survivor, person_ids, identifier],
        )
        return event

    async def remove_outbox(self, event_id: uuid.UUID) -> None:
        await self._db.execute(
            "DELETE FROM {keyspace}.event_outbox WHERE bucket = ? AND event_id = ?", [OUTBOX_BUCKET, event_id]
        )

    async def outbox(self) -> list[OutboxEvent]:
        rows = await self._db.execute(
            "SELECT event_id, kind, survivor_person_id, person_ids, identifier FROM {keyspace}.event_outbox"
            " WHERE bucket = ?",
            [OUTBOX_BUCKET],
        )
        return [
            OutboxEvent(
                row["event_id"],
                row["kind"],
                row["survivor_person_id"],
                list(row["person_ids"] or []),
                row["identifier"] or "",
            )
            for row in rows
        ]
