"""The durable side of profile in Cassandra: the event log, CRM attributes, merges, checkpoints."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from services.common.cassandra import CassandraClient
from services.common.errors import FieldViolation, InvalidArgument

SCHEMA_FILE = Path(__file__).with_name("schema.cql")
DAY_MS = 86_400_000
# Rows of one partition per UNLOGGED batch: one mutation on the server, bounded in size.
BATCH_ROWS = 100

_INSERT_EVENT = (
    "INSERT INTO {keyspace}.event_log (person_id, day, event_time_ms, event_id, payload) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DAY = "INSERT INTO {keyspace}.person_day (person_id, day) VALUES (?, ?)"
_SELECT_DAYS = "SELECT day FROM {keyspace}.person_day WHERE person_id = ?"
_SELECT_PARTITION = "SELECT event_time_ms, event_id, payload FROM {keyspace}.event_log WHERE person_id = ? AND day = ?"
_SELECT_PAGE_AFTER = (
    "SELECT event_time_ms, event_id, payload FROM {keyspace}.event_log WHERE person_id = ? AND day = ? "
    "AND (event_time_ms, event_id) < (?, ?) LIMIT ?"
)
_SELECT_PAGE = (
    "SELECT event_time_ms, event_id, payload FROM {keyspace}.event_log WHERE person_id = ? AND day = ? LIMIT ?"
)


def day_of(time_ms: int) -> int:
    return time_ms // DAY_MS


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    person_id: str
    time_ms: int
    event_id: str
    payload: bytes


@dataclass(frozen=True)
class TimelineCursor:
    """Where a timeline page stopped: the last (oldest) event returned."""

    day: int
    time_ms: int
    event_id: str

    def encode(self) -> str:
        raw = json.dumps([self.day, self.time_ms, self.event_id], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str, field: str) -> TimelineCursor:
        try:
            padded = token + "=" * (-len(token) % 4)
            day, time_ms, event_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
            return cls(int(day), int(time_ms), str(event_id))
        except (ValueError, TypeError) as error:
            raise InvalidArgument([FieldViolation(field, "is not a token this service gave")]) from error


class CassandraProfileStore:
    def __init__(self, cassandra: CassandraClient, write_concurrency: int = 64) -> None:
        self._cassandra = cassandra
        self._writes = asyncio.Semaphore(write_concurrency)
        # (person, day) pairs already recorded by this process: most events land on a known day.
        self._known_days: set[tuple[str, int]] = set()

    # ------------------------------------------------------------------ events
    async def append(self, events: Sequence[LoggedEvent]) -> None:
        """Durably write events (idempotent: the same event id at the same time is the same row)."""
        partitions: dict[tuple[str, int], list[LoggedEvent]] = {}
        for event in events:
            partitions.setdefault((event.person_id, day_of(event.time_ms)), []).append(event)
        writes = []
        for (person_id, day), rows in partitions.items():
            for start in range(0, len(rows), BATCH_ROWS):
                chunk = rows[start : start + BATCH_ROWS]
                writes.append(
                    [(_INSERT_EVENT, (person_id, day, row.time_ms, row.event_id, row.payload)) for row in chunk]
                )
        new_days = [key for key in partitions if key not in self._known_days]
        await asyncio.gather(
            *(self._write(batch) for batch in writes),
            *(self._write([(_INSERT_DAY, key)]) for key in new_days),
        )
        self._known_days.update(new_days)
        if len(self._known_days) > 1_000_000:
            self._known_days.clear()

    async def _write(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        async with self._writes:
            if len(statements) == 1:
                await self._cassandra.execute(*statements[0])
            else:
                await self._cassandra.execute_batch(statements)

    async def days_of(self, person_id: str) -> list[int]:
        """Days with events, newest first."""
        return [row["day"] for row in await self._cassandra.execute(_SELECT_DAYS, (person_id,))]

    async def history(self, person_id: str) -> list[LoggedEvent]:
        """Every logged event of a person (any order)."""
        days = await self.days_of(person_id)
        partitions = await asyncio.gather(
            *(self._cassandra.execute(_SELECT_PARTITION, (person_id, day)) for day in days)
        )
        return [
            LoggedEvent(person_id, row["event_time_ms"], row["event_id"], row["payload"])
            for rows in partitions
            for row in rows
        ]

    async def page(
        self, person_id: str, size: int, cursor: TimelineCursor | None
    ) -> tuple[list[LoggedEvent], TimelineCursor | None]:
        """Up to `size` events older than `cursor`, newest first, and the cursor of the next page."""
        found: list[LoggedEvent] = []
        for day in await self.days_of(person_id):
            if cursor is not None and day > cursor.day:
                continue
            wanted = size + 1 - len(found)  # one more tells whether another page exists
            if cursor is not None and day == cursor.day:
                rows = await self._cassandra.execute(
                    _SELECT_PAGE_AFTER, (person_id, day, cursor.time_ms, cursor.event_id, wanted)
                )
            else:
                rows = await self._cassandra.execute(_SELECT_PAGE, (person_id, day, wanted))
            for row in rows:
                found.append(LoggedEvent(person_id, row["event_time_ms"], row["event_id"], row["payload"]))
            if len(found) > size:
                break
        if len(found) <= size:
            return found, None
        page = found[:size]
        last = page[-1]
        return page, TimelineCursor(day_of(last.time_ms), last.time_ms, last.event_id)

    async def erase_history(self, person_id: str) -> int:
        """Delete every event of a person; returns how many there were."""
        days = await self.days_of(person_id)
        counts = await asyncio.gather(
            *(
                self._cassandra.execute(
                    "SELECT COUNT(*) AS n FROM {keyspace}.event_log WHERE person_id = ? AND day = ?", (person_id, day)
                )
                for day in days
            )
        )
        await asyncio.gather(
            *(
                self._cassandra.execute(
                    "DELETE FROM {keyspace}.event_log WHERE person_id = ? AND day = ?", (person_id, day)
                )
                for day in days
            )
        )
        await self._cassandra.execute("DELETE FROM {keyspace}.person_day WHERE person_id = ?", (person_id,))
        self._known_days.difference_update((person_id, day) for day in days)
        return sum(int(rows[0]["n"]) for rows in counts if rows)

    # ------------------------------------------------------------------ attributes
    async def set_attributes(self, person_id: str, attributes: Mapping[str, str], at_ms: int) -> None:
        at = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
        statements: list[tuple[str, Sequence[object]]] = []
        for name, value in attributes.items():
            if value:
                statements.append(
                    (
                        "INSERT INTO {keyspace}.person_attribute (person_id, name, value, updated_at) "
                        "VALUES (?, ?, ?, ?)",
                        (person_id, name, value, at),
                    )
                )
            else:
                statements.append(
                    ("DELETE FROM {keyspace}.person_attribute WHERE person_id = ? AND name = ?", (person_id, name))
                )
        if statements:
            await self._write(statements)

    async def attributes(self, person_id: str) -> dict[str, str]:
        rows = await self._cassandra.execute(
            "SELECT name, value FROM {keyspace}.person_attribute WHERE person_id = ?", (person_id,)
        )
        return {row["name"]: row["value"] for row in rows}

    async def erase_attributes(self, person_id: str) -> None:
        await self._cassandra.execute("DELETE FROM {keyspace}.person_attribute WHERE person_id = ?", (person_id,))

    # ------------------------------------------------------------------ merges
    async def record_merge(self, loser: str, survivor: str, at_ms: int) -> None:
        await self._cassandra.execute(
            "INSERT INTO {keyspace}.merged_person (person_id, survivor_id, merged_at) VALUES (?, ?, ?)",
            (loser, survivor, datetime.fromtimestamp(at_ms / 1000, tz=UTC)),
        )

    async def survivor_of(self, person_id: str) -> str | None:
        rows = await self._cassandra.execute(
            "SELECT survivor_id FROM {keyspace}.merged_person WHERE person_id = ?", (person_id,)
        )
        return rows[0]["survivor_id"] if rows else None

    async def erase_merge_records(self, person_ids: Iterable[str]) -> None:
        await asyncio.gather(
            *(
                self._cassandra.execute("DELETE FROM {keyspace}.merged_person WHERE person_id = ?", (person_id,))
                for person_id in person_ids
            )
        )

    # ------------------------------------------------------------------ checkpoints
    async def checkpoint(self, name: str) -> str | None:
        rows = await self._cassandra.execute(
            "SELECT position FROM {keyspace}.stream_checkpoint WHERE name = ?", (name,)
        )
        return rows[0]["position"] if rows else None

    async def save_checkpoint(self, name: str, position: str) -> None:
        await self._cassandra.execute(
            "INSERT INTO {keyspace}.stream_checkpoint (name, position) VALUES (?, ?)", (name, position)
        )
