"""Cassandra side of messaging: contacts, consent, rules, deliveries, dead letters, audience.

The send path's two statements per email (the person's contact row, read as the send starts; the
delivery's outcome, written as it ends) are grouped with the other sends' of the moment (group
commit, services/common/grouped_calls.py): a read or write asked for while one is in flight goes
with the others in the next, one `IN` read or one unlogged batch. Each send still reads at its own
send time and waits for its own write; what grouping saves is the fixed cost of a statement
(about 0.3 ms of CPU in the driver and 0.2 ms in Cassandra), which dwarfs a row's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cassandra import InvalidRequest

from services.common.cassandra import CassandraClient, to_datetime_or_none, to_ms
from services.common.grouped_calls import GroupedCalls
from services.messaging.domain.delivery import Delivery, DeliveryStatus

SCHEMA_FILE = Path(__file__).with_name("schema.cql")
_DEAD_SHARD = 0
# Rows per grouped read or write: a batch of 16 outcomes (about 6 KiB) stays within the batch
# thresholds of deploy/local/cassandra/cassandra.yaml (see README "Messaging" for a cluster's).
SEND_GROUP_ROWS = 16
SEND_GROUPS_IN_FLIGHT = 1
_CONTACT_COLUMNS = "person_id, email, push_token, phone, language, country, consents"
Statement = tuple[str, list[Any]]


@dataclass(frozen=True)
class Contact:
    person_id: str
    email: str = ""
    push_token: str = ""
    phone: str = ""
    language: str = ""
    country: str = ""


ConsentRecord = tuple[str, int]  # the state's name ('GRANTED', 'DENIED') and when it was given (ms)


@dataclass(frozen=True)
class ContactCard:
    """A person's contact row as one read gives it: where they can be reached, and their consent
    by channel name (a channel absent was never asked)."""

    contact: Contact
    consents: dict[str, ConsentRecord]


@dataclass(frozen=True)
class DeliveryRef:
    """An entry of a person's delivery index."""

    created_at: datetime
    delivery_id: str


@dataclass(frozen=True)
class StoredRule:
    kind: str
    enabled: bool
    delay_ms: int
    channels: tuple[str, ...]


@dataclass(frozen=True)
class StoredAudienceMember:
    """A retargeting member as stored: hashed keys only."""

    kind: str
    person_id: str
    email_sha256: str
    phone_sha256: str
    madid: str
    country: str
    product_ids: tuple[str, ...]


def _delivery(row: dict[str, Any]) -> Delivery:
    return Delivery(
        delivery_id=row["delivery_id"],
        person_id=row["person_id"] or "",
        kind=row["kind"] or "",
        channel=row["channel"] or "",
        status=DeliveryStatus(row["status"]),
        idempotency_key=row["idempotency_key"] or "",
        created_at_ms=to_ms(row["created_at"]),
        due_at_ms=to_ms(row["due_at"]),
        attempts=row["attempts"] or 0,
        reason=row["reason"] or "",
        last_error=row["last_error"] or "",
        sent_at_ms=to_ms(row["sent_at"]),
        trigger_data=row["trigger_data"] or "{}",
        product_ids=tuple(row["product_ids"] or ()),
    )


def _card(person_id: str, row: dict[str, Any] | None) -> ContactCard:
    if row is None:
        return ContactCard(Contact(person_id), {})
    return ContactCard(
        Contact(
            person_id,
            row["email"] or "",
            row["push_token"] or "",
            row["phone"] or "",
            row["language"] or "",
            row["country"] or "",
        ),
        _consents(row["consents"]),
    )


def _delivery_statements(delivery: Delivery, *, new: bool = False) -> list[Statement]:
    """What storing a delivery writes: its row, its entry in the person's index when `new`, its
    dead letter when it died."""
    statements: list[Statement] = [
        (
            "INSERT INTO {keyspace}.delivery (delivery_id, person_id, kind, channel, status, reason, attempts, "
            "last_error, created_at, due_at, sent_at, idempotency_key, trigger_data, product_ids) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                delivery.delivery_id,
                delivery.person_id,
                delivery.kind,
                delivery.channel,
                delivery.status.value,
                delivery.reason,
                delivery.attempts,
                delivery.last_error,
                to_datetime_or_none(delivery.created_at_ms),
                to_datetime_or_none(delivery.due_at_ms),
                to_datetime_or_none(delivery.sent_at_ms),
                delivery.idempotency_key,
                delivery.trigger_data,
                list(delivery.product_ids),
            ],
        )
    ]
    if new:
        statements.append(
            (
                "INSERT INTO {keyspace}.delivery_by_person (person_id, created_at, delivery_id) VALUES (?, ?, ?)",
                [delivery.person_id, to_datetime_or_none(delivery.created_at_ms), delivery.delivery_id],
            )
        )
    if delivery.status is DeliveryStatus.DEAD:
        statements.append(
            (
                "INSERT INTO {keyspace}.dead_letter (shard, dead_at, delivery_id) VALUES (?, ?, ?)",
                [_DEAD_SHARD, _dead_at(delivery), delivery.delivery_id],
            )
        )
    return statements


def _consents(stored: Mapping[str, tuple[str | None, datetime | None]] | None) -> dict[str, ConsentRecord]:
    return {channel: (state or "", to_ms(at)) for channel, (state, at) in (stored or {}).items()}


def _dead_at(delivery: Delivery) -> datetime | None:
    """The dead-letter row's clustering time (stable for a delivery, so it can be removed)."""
    return to_datetime_or_none(max(delivery.due_at_ms, delivery.created_at_ms))


def move_consent_table(db: CassandraClient) -> int:
    """Blocking (start-up, after the schema): keyspaces from before consent moved into the contact
    row keep it in a table of its own. Each of its rows is copied into the contact row's map with
    the row's own write time, so a consent given since (already in the map) is newer and wins,
    then the table is dropped. Idempotent: replicas starting together copy the same values with
    the same times. Returns how many consents were copied."""
    session, keyspace = db.session, db.keyspace
    found = session.execute(
        "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s AND table_name = 'consent'",
        [keyspace],
        timeout=60,
    )
    if not list(found):
        return 0
    copy = session.prepare(f"UPDATE {keyspace}.contact USING TIMESTAMP ? SET consents[?] = ? WHERE person_id = ?")
    moved = 0
    try:
        rows = session.execute(
            f"SELECT person_id, channel, state, updated_at, WRITETIME(state) AS written FROM {keyspace}.consent",
            timeout=60,
        )
        for row in rows:
            if row["state"] is None or row["written"] is None:
                continue
            session.execute(
                copy, [row["written"], row["channel"], (row["state"], row["updated_at"]), row["person_id"]], timeout=60
            )
            moved += 1
    except InvalidRequest:  # another replica dropped the table meanwhile, after copying it
        return moved
    session.execute(f"DROP TABLE IF EXISTS {keyspace}.consent", timeout=60)
    db.cluster.control_connection.wait_for_schema_agreement(wait_time=30)
    return moved


class MessagingStore:
    def __init__(self, db: CassandraClient) -> None:
        self._db = db
        self._contacts = GroupedCalls(
            self._read_contacts, max_group=SEND_GROUP_ROWS, max_in_flight=SEND_GROUPS_IN_FLIGHT
        )
        self._outcomes = GroupedCalls(
            self._write_outcomes, max_group=SEND_GROUP_ROWS, max_in_flight=SEND_GROUPS_IN_FLIGHT
        )

    async def close(self) -> None:
        """Cancel the grouped reads and writes still in flight (shutdown)."""
        await self._contacts.close()
        await self._outcomes.close()

    # contacts and consent (one row per person: see schema.cql)
    async def contact(self, person_id: str) -> ContactCard:
        """The person's contact and consents as they are now (the send path's read, grouped with
        the other sends' of the moment); empty for a person never seen."""
        return await self._contacts.call(person_id)

    async def _read_contacts(self, person_ids: list[str]) -> list[ContactCard]:
        rows = await self._db.execute(
            f"SELECT {_CONTACT_COLUMNS} FROM {{keyspace}}.contact WHERE person_id IN ?", [sorted(set(person_ids))]
        )
        found = {row["person_id"]: row for row in rows}
        return [_card(person_id, found.get(person_id)) for person_id in person_ids]

    async def set_contact(self, contact: Contact, at_ms: int) -> None:
        """Upsert the fields given (empty ones keep what was stored); consent is left as it is."""
        fields = {
            name: value
            for name, value in (
                ("email", contact.email),
                ("push_token", contact.push_token),
                ("phone", contact.phone),
                ("language", contact.language),
                ("country", contact.country),
            )
            if value
        }
        assignments = ", ".join(f"{name} = ?" for name in fields)
        assignments = f"{assignments}, updated_at = ?" if assignments else "updated_at = ?"
        await self._db.execute(
            f"UPDATE {{keyspace}}.contact SET {assignments} WHERE person_id = ?",
            [*fields.values(), to_datetime_or_none(at_ms), contact.person_id],
        )

    async def consents(self, person_id: str) -> dict[str, ConsentRecord]:
        rows = await self._db.execute("SELECT consents FROM {keyspace}.contact WHERE person_id = ?", [person_id])
        return _consents(rows[0]["consents"]) if rows else {}

    async def set_consent(self, person_id: str, channel: str, state: str, at_ms: int) -> None:
        """The channel's consent alone (the map element): the contact fields and the other
        channels' consent are left as they are."""
        await self._db.execute(
            "UPDATE {keyspace}.contact SET consents[?] = ? WHERE person_id = ?",
            [channel, (state, to_datetime_or_none(at_ms)), person_id],
        )

    # rules
    async def rules(self) -> list[StoredRule]:
        rows = await self._db.execute("SELECT * FROM {keyspace}.rule")
        return [
            StoredRule(row["kind"], bool(row["enabled"]), row["delay_ms"] or 0, tuple(row["channels"] or ()))
            for row in rows
        ]

    async def save_rule(self, rule: StoredRule) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.rule (kind, enabled, delay_ms, channels) VALUES (?, ?, ?, ?)",
            [rule.kind, rule.enabled, rule.delay_ms, list(rule.channels)],
        )

    # deliveries
    async def save_delivery(self, delivery: Delivery, *, new: bool = False) -> None:
        for cql, parameters in _delivery_statements(delivery, new=new):
            await self._db.execute(cql, parameters)

    async def save_outcome(self, delivery: Delivery) -> None:
        """A send's outcome (its row, and its dead letter if it died), written with the other
        sends' outcomes of the moment in one unlogged batch; returns once it is written."""
        await self._outcomes.call(delivery)

    async def _write_outcomes(self, deliveries: list[Delivery]) -> list[None]:
        await self._db.execute_batch([statement for d in deliveries for statement in _delivery_statements(d)])
        return [None] * len(deliveries)

    async def delivery(self, delivery_id: str) -> Delivery | None:
        rows = await self._db.execute("SELECT * FROM {keyspace}.delivery WHERE delivery_id = ?", [delivery_id])
        return _delivery(rows[0]) if rows else None

    async def deliveries_of(self, person_id: str, limit: int) -> list[Delivery]:
        rows = await self._db.execute(
            "SELECT delivery_id FROM {keyspace}.delivery_by_person WHERE person_id = ? LIMIT ?", [person_id, limit]
        )
        found = [await self.delivery(row["delivery_id"]) for row in rows]
        return [delivery for delivery in found if delivery is not None]

    async def dead_letters(self, limit: int) -> list[Delivery]:
        rows = await self._db.execute(
            "SELECT delivery_id FROM {keyspace}.dead_letter WHERE shard = ? LIMIT ?", [_DEAD_SHARD, limit]
        )
        found = [await self.delivery(row["delivery_id"]) for row in rows]
        return [delivery for delivery in found if delivery is not None and delivery.status is DeliveryStatus.DEAD]

    async def remove_dead_letter(self, delivery: Delivery) -> None:
        await self._db.execute(
            "DELETE FROM {keyspace}.dead_letter WHERE shard = ? AND dead_at = ? AND delivery_id = ?",
            [_DEAD_SHARD, _dead_at(delivery), delivery.delivery_id],
        )

    # audience
    async def add_audience_member(self, member: StoredAudienceMember, at_ms: int) -> None:
        await self._db.execute(
            "INSERT INTO {keyspace}.audience_member (kind, person_id, email_sha256, phone_sha256, madid, country, "
            "product_ids, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                member.kind,
                member.person_id,
                member.email_sha256,
                member.phone_sha256,
                member.madid,
                member.country,
                list(member.product_ids),
                to_datetime_or_none(at_ms),
            ],
        )

    async def audience(self, kinds: Sequence[str]) -> list[StoredAudienceMember]:
        members: list[StoredAudienceMember] = []
        for kind in kinds:
            rows = await self._db.execute("SELECT * FROM {keyspace}.audience_member WHERE kind = ?", [kind])
            members += [
                StoredAudienceMember(
                    row["kind"],
                    row["person_id"],
                    row["email_sha256"] or "",
                    row["phone_sha256"] or "",
                    row["madid"] or "",
                    row["country"] or "",
                    tuple(row["product_ids"] or ()),
                )
                for row in rows
            ]
        return members

    # erasure
    async def delivery_refs(self, person_id: str, limit: int) -> list[DeliveryRef]:
        """The first `limit` entries of the person's delivery index (whether or not their rows exist)."""
        rows = await self._db.execute(
            "SELECT created_at, delivery_id FROM {keyspace}.delivery_by_person WHERE person_id = ? LIMIT ?",
            [person_id, limit],
        )
        return [DeliveryRef(row["created_at"], row["delivery_id"]) for row in rows]

    async def forget_deliveries(self, person_id: str, refs: Sequence[DeliveryRef], known: Sequence[Delivery]) -> None:
        """Erase these deliveries of the person: their rows, their dead letters (`known`: the
        deliveries as stored or queued, which say which died and when) and their index entries."""
        for delivery in known:
            if delivery.status is DeliveryStatus.DEAD:
                await self.remove_dead_letter(delivery)
        for ref in refs:
            await self._db.execute("DELETE FROM {keyspace}.delivery WHERE delivery_id = ?", [ref.delivery_id])
            await self._db.execute(
                "DELETE FROM {keyspace}.delivery_by_person WHERE person_id = ? AND created_at = ? AND delivery_id = ?",
                [person_id, ref.created_at, ref.delivery_id],
            )

    async def forget_person(self, person_id: str, kinds: Sequence[str]) -> None:
        """Erase the person's contact row (consent included), audience memberships (one per
        trigger kind) and what is left of its delivery index."""
        for cql in (
            "DELETE FROM {keyspace}.delivery_by_person WHERE person_id = ?",
            "DELETE FROM {keyspace}.contact WHERE person_id = ?",
        ):
            await self._db.execute(cql, [person_id])
        for kind in kinds:
            await self._db.execute(
                "DELETE FROM {keyspace}.audience_member WHERE kind = ? AND person_id = ?", [kind, person_id]
            )
