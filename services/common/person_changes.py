"""Person changes that profile announces to the other services keeping data per person:
erasures (GDPR, from `ForgetPerson`) and merges (identity linked two persons).

Profile appends each change to the Redis stream `<prefix>profile:person-changes` before it
acknowledges the work; messaging and decision each read that stream in their own consumer group
(created from the stream's start, so a group created late still sees every change kept) and
acknowledge an entry only after they applied it. A service that is down reads what it missed
when it is back; one that dies while applying an entry leaves it pending, and it is claimed
again. Applying a change twice does nothing more, so redelivery is safe.

An entry holds person ids only (random ids, no personal data). It is a stream of its own, not an
entry kind of the profile event stream: erasure deletes a person's events from that one, that one
is trimmed at a million events, and decision follows it without a consumer group.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from services.common.redis import RedisClient

log = structlog.get_logger("rapport.person_changes")

STREAM_NAME = "profile:person-changes"
# Changes are rare (an erasure or merge each); this many are kept, far more than a consumer down
# for days could miss.
STREAM_MAX_LEN = 100_000
CLAIM_IDLE_MS = 30_000
READ_COUNT = 100
BLOCK_MS = 1000

StreamEntry = tuple[str, Mapping[str, str] | None]  # a pending entry deleted since reads as None


class PersonChangeKind(enum.Enum):
    FORGET = "forget"  # erase these persons
    MERGE = "merge"  # these persons are now the survivor


@dataclass(frozen=True, slots=True)
class PersonChange:
    kind: PersonChangeKind
    person_ids: tuple[str, ...]  # the persons erased, or merged away
    survivor_person_id: str = ""  # a merge's survivor

    @classmethod
    def forget(cls, person_ids: Sequence[str]) -> PersonChange:
        return cls(PersonChangeKind.FORGET, tuple(sorted(set(person_ids))))

    @classmethod
    def merge(cls, survivor_person_id: str, merged_person_ids: Sequence[str]) -> PersonChange:
        return cls(PersonChangeKind.MERGE, tuple(sorted(set(merged_person_ids))), survivor_person_id)


def change_fields(change: PersonChange) -> dict[str, str]:
    """The stream entry of a change."""
    fields = {"kind": change.kind.value, "persons": json.dumps(list(change.person_ids))}
    if change.survivor_person_id:
        fields["survivor"] = change.survivor_person_id
    return fields


def change_from_fields(fields: Mapping[str, str] | None) -> PersonChange | None:
    """The change an entry holds; None when there is none this code can apply (a kind added later,
    a damaged or deleted entry): such an entry is acknowledged and skipped, never retried."""
    if not fields:
        return None
    try:
        kind = PersonChangeKind(fields.get("kind", ""))
        persons = json.loads(fields.get("persons", ""))
    except ValueError:
        return None
    if not isinstance(persons, list) or not all(isinstance(person, str) and person for person in persons):
        return None
    survivor = fields.get("survivor", "")
    if not persons or (kind is PersonChangeKind.MERGE and not survivor):
        return None
    return PersonChange(kind, tuple(persons), survivor)


class PersonChangeStream:
    """The stream in Redis: profile publishes, each consuming service reads in its group."""

    def __init__(self, client: RedisClient) -> None:
        self._redis: aioredis.Redis = client.redis
        self.key = client.prefix + STREAM_NAME

    async def publish(self, change: PersonChange) -> str:
        entry_id = await self._redis.xadd(self.key, change_fields(change), maxlen=STREAM_MAX_LEN, approximate=True)  # type: ignore[arg-type]
        return str(entry_id)

    async def join(self, group: str) -> None:
        """Create the group (idempotent), from the stream's start: nothing kept is missed."""
        try:
            await self._redis.xgroup_create(self.key, group, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def read(self, group: str, consumer: str, *, pending: bool, block_ms: int | None) -> list[StreamEntry]:
        """New entries for this consumer, or (`pending`) those it was given and has not acknowledged."""
        replies: list[tuple[str, list[StreamEntry]]] | None = await self._redis.xreadgroup(  # type: ignore[assignment]
            group, consumer, {self.key: "0" if pending else ">"}, count=READ_COUNT, block=None if pending else block_ms
        )
        return [entry for _stream, entries in replies or [] for entry in entries]

    async def claim_stale(self, group: str, consumer: str, idle_ms: int) -> list[StreamEntry]:
        """Entries another consumer of the group took and left unacknowledged for `idle_ms` (it died)."""
        reply: list[Any] = await self._redis.xautoclaim(  # type: ignore[assignment]
            self.key, group, consumer, min_idle_time=idle_ms, start_id="0-0", count=READ_COUNT
        )
        return [(entry[0], entry[1]) for entry in reply[1] if entry]

    async def ack(self, group: str, entry_id: str) -> None:
        await self._redis.xack(self.key, group, entry_id)


class PersonChangeFollower:
    """Applies every person change to one service, in its consumer group, for good."""

    def __init__(
        self,
        stream: PersonChangeStream,
        group: str,
        consumer: str,
        apply: Callable[[PersonChange], Awaitable[None]],
        claim_idle_ms: int = CLAIM_IDLE_MS,
    ) -> None:
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._apply = apply
        self._claim_idle_ms = claim_idle_ms

    async def run(self, retry_s: float = 1.0, max_retry_s: float = 30.0) -> None:
        joined = False
        retry_own = False  # after a failure, first the entries this consumer holds unacknowledged
        last_claim = 0.0
        backoff = retry_s
        while True:
            try:
                if not joined:
                    await self._stream.join(self._group)
                    joined = True
                entries: list[StreamEntry] = []
                if retry_own:
                    entries = await self._stream.read(self._group, self._consumer, pending=True, block_ms=None)
                elif time.monotonic() - last_claim > self._claim_idle_ms / 2000:
                    last_claim = time.monotonic()
                    entries = await self._stream.claim_stale(self._group, self._consumer, self._claim_idle_ms)
                if not entries and not retry_own:
                    entries = await self._stream.read(self._group, self._consumer, pending=False, block_ms=BLOCK_MS)
                await self.handle(entries)
                retry_own = False
                backoff = retry_s
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "person_changes_interrupted", group=self._group, error=type(error).__name__, retry_s=backoff
                )
                retry_own = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max_retry_s)

    async def handle(self, entries: Sequence[StreamEntry]) -> int:
        """Apply the entries in order, acknowledging each once applied; how many were applied.
        A failure stops here: that entry and the ones after it stay unacknowledged."""
        applied = 0
        for entry_id, fields in entries:
            change = change_from_fields(fields)
            if change is None:
                log.warning("person_change_skipped", group=self._group, entry=entry_id)
            else:
                await self._apply(change)
                applied += 1
            await self._stream.ack(self._group, entry_id)
        return applied
