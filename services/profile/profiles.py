"""The profile service's use cases: track, read, describe, CRM attributes, merges, export, erase.

Tracking (see README "Nothing acknowledged is lost"):
1. identifiers are resolved to persons by the identity service (one BatchResolve per batch);
2. the events are written to the Cassandra log (idempotent rows keyed by person, day, time, id);
3. the live state of each person is read from Redis, the new events folded in, and written
   back by revision compare-and-set, which also puts them on the profile event stream;
4. only then is the batch acknowledged.
A crash anywhere before 4 leaves the caller without an answer; resending is safe, because the
log rows are the same rows and the live state remembers the ids it applied. A state missing
from Redis (flushed, expired) is rebuilt from the log; an event older than the state's last
one (a late mobile batch) makes the state be rebuilt from the log, in time order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass

import orjson
import structlog

from rapport.common.v1 import event_pb2, identifier_pb2
from services.common.clock import now_ms
from services.common.errors import Aborted, FieldViolation, InvalidArgument
from services.common.identifiers import IdentifierKey
from services.common.identity_client import IdentityClient
from services.common.person_changes import PersonChange, PersonChangeStream
from services.profile.adapters.cassandra_log import CassandraProfileStore, LoggedEvent, TimelineCursor
from services.profile.adapters.redis_state import RedisProfileState, StateWrite, StoredState
from services.profile.codec import CheckedEvent, event_time_ms, stored_to_tracked
from services.profile.domain.events import EventKind, TrackedEvent
from services.profile.domain.folding import FoldRules, apply, comes_after, fold, price_bucket
from services.profile.domain.state import ProfileState
from services.profile.live import LiveProfile, complete_live_profile

log = structlog.get_logger("rapport.profile")

STORE_ATTEMPTS = 8
REPUBLISH_WINDOW_MS = 3_600_000
MAX_KNOWN_PRICES = 200_000
EXPORT_CHUNK = 500


@dataclass(frozen=True)
class ProfileRules:
    fold: FoldRules
    cart_abandoned_after_ms: int
    language: str = "en"


@dataclass(frozen=True)
class TrackOutcome:
    person_id: str
    duplicate: bool


@dataclass
class _PersonBatch:
    events: list[TrackedEvent]
    duplicates: set[str]
    # A merge: the event ids copied from the merged-away persons (already published under them).
    inherited: frozenset[str] = frozenset()


def stream_entry(person_id: str, event: TrackedEvent) -> str:
    """The compact JSON other services read from the profile event stream."""
    entry: dict[str, object] = {"person": person_id, "id": event.event_id, "type": event.kind.name, "t": event.time_ms}
    if event.product is not None:
        entry["product"] = event.product.product_id
        entry["category"] = event.product.category
        entry["price"] = event.product.price
    if event.quantity:
        entry["qty"] = event.quantity
    if event.search_query:
        entry["query"] = event.search_query
    if event.order is not None:
        entry["order"] = {
            "id": event.order.order_id,
            "products": [line.product.product_id for line in event.order.lines],
            "total": event.order.total,
        }
    if event.context.country:
        entry["country"] = event.context.country
    if event.message_id:
        entry["message"] = event.message_id
    return orjson.dumps(entry).decode()


class Profiles:
    def __init__(
        self,
        store: CassandraProfileStore,
        live: RedisProfileState,
        identity: IdentityClient,
        rules: ProfileRules,
        person_changes: PersonChangeStream,
    ) -> None:
        self._store = store
        self._live = live
        self._identity = identity
        self._person_changes = person_changes
        self.rules = rules
        self._known_prices: set[tuple[str, str, int]] = set()

    # ------------------------------------------------------------------ tracking
    async def track(self, events: Sequence[CheckedEvent]) -> list[TrackOutcome]:
        """Record valid events; one outcome per event, in order. Raises if nothing could be made durable."""
        if not events:
            return []
        persons = await self._identity.resolve([checked.identifier for checked in events])
        rows: list[LoggedEvent] = []
        batches: dict[str, _PersonBatch] = {}
        owners: list[str] = []
        # Persons identity created for this batch have no history: their state starts empty
        # instead of being rebuilt from a log that holds only this batch.
        newborn = {resolved.person_id for resolved in persons.values() if resolved.created}
        for checked in events:
            person_id = persons[checked.identifier.key].person_id
            owners.append(person_id)
            rows.append(LoggedEvent(person_id, checked.event.time_ms, checked.event.event_id, _payload(checked)))
            batches.setdefault(person_id, _PersonBatch([], set())).events.append(checked.event)
        # What the live states held before this batch's rows existed anywhere: an id they hold
        # was recorded before (a duplicate). Read later, a state could already hold this batch's
        # own events, folded in by a concurrent rebuild of the log.
        before = await self._live.load(sorted(batches))
        for person_id, batch in batches.items():
            state_data = before[person_id].data
            remembered = set(state_data["ids"]) if state_data else set()
            batch.duplicates.update(event.event_id for event in batch.events if event.event_id in remembered)
        await self._store.append(rows)
        # A person merged away while this batch was in flight: the merge copied the log before
        # these rows were written, or we see its mark here (it is set before the copy starts).
        moved = await self._live.survivors(list(batches))
        for loser, survivor in moved.items():
            await self._store.append([_moved(row, survivor) for row in rows if row.person_id == loser])
            moved_batch = batches.pop(loser)
            target = batches.setdefault(survivor, _PersonBatch([], set()))
            target.events.extend(moved_batch.events)
            target.duplicates.update(moved_batch.duplicates)
            owners = [survivor if owner == loser else owner for owner in owners]
            before.pop(loser, None)
        await self._apply(batches, newborn=newborn, preloaded=before)
        await self._register_prices(checked.event for checked in events)
        return [
            TrackOutcome(owner, checked.event.event_id in batches[owner].duplicates)
            for owner, checked in zip(owners, events, strict=True)
        ]

    async def _apply(
        self,
        batches: Mapping[str, _PersonBatch],
        *,
        force_rebuild: bool = False,
        newborn: Set[str] = frozenset(),
        preloaded: Mapping[str, StoredState] | None = None,
    ) -> None:
        pending = sorted(batches)
        for attempt in range(STORE_ATTEMPTS):
            if attempt == 0 and preloaded is not None and all(person in preloaded for person in pending):
                loaded = dict(preloaded)
            else:
                loaded = await self._live.load(pending)
            writes = await asyncio.gather(
                *(
                    self._next_state(
                        person, loaded[person], batches[person], force_rebuild, attempt == 0 and person in newborn
                    )
                    for person in pending
                )
            )
            stored = await self._live.store(writes)
            for write, ok in zip(writes, stored, strict=True):
                if ok and write.data.get("orders") and _buys(batches[write.person_id].events):
                    state = ProfileState.from_dict(write.data)
                    await self._live.record_rfm(
                        write.person_id, state.last_purchase_ms, state.order_count, state.total_spent
                    )
            pending = [write.person_id for write, ok in zip(writes, stored, strict=True) if not ok]
            if not pending:
                return
        raise Aborted("the live profile kept changing under concurrent writes; retry")

    async def _next_state(
        self, person_id: str, stored: StoredState, batch: _PersonBatch, force_rebuild: bool, newborn: bool
    ) -> StateWrite:
        """The state after this batch, and the events to put on the stream with it.

        Every event enters the stream together with the state write that first makes the live
        state hold it: the events of this batch, and after a rebuild, whatever the log held that
        the stored state did not (rows of a batch that died before applying them).
        """
        unique = sorted({event.event_id: event for event in batch.events}.values(), key=lambda e: e.order_key)
        if newborn and stored.data is None:
            state = ProfileState(person_id)
            for event in unique:
                apply(state, event, self.rules.fold)
            return StateWrite(
                person_id, stored.revision, state.to_dict(), {}, [stream_entry(person_id, e) for e in unique]
            )
        attributes = await self._attributes(person_id, None if force_rebuild else stored)
        published: list[TrackedEvent]
        if stored.data is None or force_rebuild:
            state, logged = await self._rebuild(person_id)
            if force_rebuild:
                # A merge. The merged-away persons' events were published under them; but the
                # survivor's own events that a batch has logged and not yet applied are folded in
                # here first, and that batch will find them held: publish those now, or they never
                # reach the stream (the triggers would miss them).
                remembered = set(ProfileState.from_dict(stored.data).recent_event_ids) if stored.data else set()
                published = [
                    logged[event_id]
                    for event_id in state.recent_event_ids
                    if event_id not in remembered and event_id not in batch.inherited
                ]
            else:
                # No stored state to compare with (first sight raced by another batch, a crash
                # between log and state, a flushed Redis): this batch's events and the recent
                # ones the log holds, at least once; older ones are history, not news.
                recent_from = now_ms() - REPUBLISH_WINDOW_MS
                held = [logged[event_id] for event_id in state.recent_event_ids]
                own = {event.event_id for event in unique}
                published = [
                    event
                    for event in held
                    if event.event_id not in batch.duplicates
                    and (event.time_ms >= recent_from or event.event_id in own)
                ]
        else:
            state = ProfileState.from_dict(stored.data)
            remembered = set(state.recent_event_ids)
            fresh = [event for event in unique if event.event_id not in remembered]
            if fresh and not comes_after(state, fresh[0]):
                # A late event: refold the log in time order.
                state, logged = await self._rebuild(person_id)
                newly_held = [logged[event_id] for event_id in state.recent_event_ids if event_id not in remembered]
                late = [event for event in fresh if event.event_id not in set(state.recent_event_ids)]
                published = sorted(newly_held + late, key=lambda e: e.order_key)
            else:
                for event in fresh:
                    apply(state, event, self.rules.fold)
                published = fresh
        return StateWrite(
            person_id,
            stored.revision,
            state.to_dict(),
            attributes,
            [stream_entry(person_id, event) for event in published],
        )

    async def _attributes(self, person_id: str, stored: StoredState | None) -> dict[str, str]:
        """CRM attributes as the live state caches them, else from Cassandra (their truth)."""
        if stored is not None and stored.attributes is not None:
            return stored.attributes
        return await self._store.attributes(person_id)

    async def _rebuild(self, person_id: str) -> tuple[ProfileState, dict[str, TrackedEvent]]:
        """The state the person's whole log folds to, and the logged events by id."""
        logged = {event.event_id: stored_to_tracked(event) for event in await self._store.history(person_id)}
        return fold(person_id, logged.values(), self.rules.fold), logged

    async def _register_prices(self, events: Iterable[TrackedEvent]) -> None:
        fresh: list[tuple[str, str, int]] = []
        for event in events:
            products = [event.product] if event.product is not None else []
            if event.order is not None:
                products += [line.product for line in event.order.lines]
            for product in products:
                bucket = price_bucket(product.price)
                if bucket is None or not product.category:
                    continue
                key = (product.category, product.product_id, bucket)
                if key not in self._known_prices:
                    self._known_prices.add(key)
                    fresh.append(key)
        if fresh:
            await self._live.register_prices(fresh)
        if len(self._known_prices) > MAX_KNOWN_PRICES:
            self._known_prices.clear()

    # ------------------------------------------------------------------ reading
    async def person_of(self, identifier: IdentifierKey | None, person_id: str | None, create: bool = False) -> str:
        """The live person behind a selector (following profile-side merges of a person id). An
        identifier identity has never seen is NotFound, unless `create` (CRM attributes for a
        customer not seen yet make the person, as a first event would)."""
        if identifier is not None:
            if create:
                return (await self._identity.resolve([identifier]))[identifier.key].person_id
            return await self._identity.lookup(identifier)
        assert person_id is not None
        for _ in range(16):
            survivor = await self._store.survivor_of(person_id)
            if survivor is None:
                return person_id
            person_id = survivor
        return person_id

    async def live(self, person_id: str) -> LiveProfile:
        stored = (await self._live.load([person_id]))[person_id]
        if stored.data is None:
            await self._apply({person_id: _PersonBatch([], set())})
            stored = (await self._live.load([person_id]))[person_id]
        state = ProfileState.from_dict(stored.data) if stored.data else ProfileState(person_id)
        return await complete_live_profile(self._live, state, await self._attributes(person_id, stored))

    async def identifiers_of(self, person_id: str) -> list[identifier_pb2.Identifier]:
        return await self._identity.identifiers_of(person_id)

    async def timeline(
        self, person_id: str, size: int, cursor: TimelineCursor | None
    ) -> tuple[list[event_pb2.Event], TimelineCursor | None]:
        return await self._store.page(person_id, size, cursor)

    async def export(self, person_id: str) -> AsyncIterator[list[event_pb2.Event]]:
        """The person's events, oldest first, in chunks."""
        history = sorted(await self._store.history(person_id), key=lambda e: (event_time_ms(e), e.event_id))
        for start in range(0, len(history), EXPORT_CHUNK):
            yield history[start : start + EXPORT_CHUNK]

    # ------------------------------------------------------------------ CRM attributes
    async def set_attributes(self, person_id: str, attributes: Mapping[str, str]) -> None:
        await self._store.set_attributes(person_id, attributes, now_ms())
        for _attempt in range(STORE_ATTEMPTS):
            stored = (await self._live.load([person_id]))[person_id]
            if stored.data is None:
                return  # the next read rebuilds the state and loads the attributes from Cassandra
            current = dict(await self._attributes(person_id, stored))
            for name, value in attributes.items():
                if value:
                    current[name] = value
                else:
                    current.pop(name, None)
            write = StateWrite(person_id, stored.revision, stored.data, current, [])
            if (await self._live.store([write]))[0]:
                return
        raise Aborted("the live profile kept changing under concurrent writes; retry")

    # ------------------------------------------------------------------ merges
    async def absorb(self, survivor: str, losers: Sequence[str]) -> None:
        """Identity merged `losers` into `survivor`: move their history and attributes, refold."""
        losers = [loser for loser in losers if loser != survivor]
        if not losers:
            return
        at = now_ms()
        for loser in losers:
            await self._store.record_merge(loser, survivor, at)
        await self._live.mark_merged(losers, survivor)
        survivor_attributes = await self._store.attributes(survivor)
        inherited_events: set[str] = set()
        for loser in losers:
            history = await self._store.history(loser)
            inherited_events.update(event.event_id for event in history)
            await self._store.append(
                [LoggedEvent(survivor, event_time_ms(e), e.event_id, e.SerializeToString()) for e in history]
            )
            inherited = {
                name: value
                for name, value in (await self._store.attributes(loser)).items()
                if name not in survivor_attributes
            }
            if inherited:
                await self._store.set_attributes(survivor, inherited, at)
                survivor_attributes.update(inherited)
        await self._apply({survivor: _PersonBatch([], set(), frozenset(inherited_events))}, force_rebuild=True)
        for loser in losers:
            await self._store.erase_history(loser)
            await self._store.erase_attributes(loser)
        await self._live.drop(losers)
        await self._live.forget_rfm(losers)
        # Decision moves the losers' latest decisions to the survivor (at least once: replayed
        # merges and every replica's announcement are harmless repeats).
        await self._person_changes.publish(PersonChange.merge(survivor, losers))
        log.info("persons_absorbed", survivor=survivor, merged=list(losers))

    async def follow_identity(self, checkpoint_name: str = "identity-merges", retry_s: float = 1.0) -> None:
        """Absorb every merge identity announces, forever, resuming after the last one handled."""
        while True:
            try:
                position = await self._store.checkpoint(checkpoint_name) or "0"
                async for event in self._identity.merges(position):
                    if event.merged_person_ids:
                        await self.absorb(event.survivor_person_id, event.merged_person_ids)
                    await self._store.save_checkpoint(checkpoint_name, event.event_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("identity_merges_interrupted", retry_s=retry_s, exc_info=True)
            await asyncio.sleep(retry_s)

    # ------------------------------------------------------------------ GDPR
    async def forget(self, person_id: str) -> tuple[list[str], int]:
        """Erase the person and everyone merged into it, here and in identity, and announce the
        erasure to messaging and decision (services/common/person_changes.py), which erase theirs
        when they read it.

        The announcement goes out before identity's Forget: once identity has forgotten the merge
        history, a retried ForgetPerson would no longer know the merged persons. The caller gets
        an answer only after both, so an acknowledged erasure is on the stream."""
        group = {person_id, *(await self._identity.merged_into(person_id))}
        erased_events = 0
        for member in sorted(group):
            erased_events += await self._store.erase_history(member)
            await self._store.erase_attributes(member)
        await self._store.erase_merge_records(group)
        await self._live.drop(group)
        await self._live.forget_rfm(sorted(group))
        await self._live.forget_merged(sorted(group))
        await self._live.erase_events_about(group)
        await self._person_changes.publish(PersonChange.forget(sorted(group)))
        erased_in_identity = await self._identity.forget(person_id)
        unannounced = set(erased_in_identity) - group  # merged between the two reads of identity
        if unannounced:
            await self._person_changes.publish(PersonChange.forget(sorted(unannounced)))
        log.info("person_forgotten", person=person_id, persons=len(group), events=erased_events)
        return sorted(group | set(erased_in_identity)), erased_events


def _payload(checked: CheckedEvent) -> bytes:
    """The event as logged: the identifier normalised (a raw e-mail is stored only as its hash)."""
    event = event_pb2.Event()
    event.CopyFrom(checked.proto)
    event.identifier.value = checked.identifier.value
    return event.SerializeToString()


def _moved(row: LoggedEvent, person_id: str) -> LoggedEvent:
    return LoggedEvent(person_id, row.time_ms, row.event_id, row.payload)


def _buys(events: Sequence[TrackedEvent]) -> bool:
    return not events or any(event.kind is EventKind.PURCHASE for event in events)


def validate_attributes(attributes: Mapping[str, str], field: str) -> dict[str, str]:
    violations: list[FieldViolation] = []
    for name, value in attributes.items():
        if not name or len(name) > 64 or any(ch not in "abcdefghijklmnopqrstuvwxyz0123456789_" for ch in name):
            violations.append(FieldViolation(f"{field}[{name[:64]!r}]", "names are [a-z0-9_]{1,64}"))
        elif len(value.encode()) > 1024:
            violations.append(FieldViolation(f"{field}[{name!r}]", "values are at most 1 024 bytes"))
    if not attributes:
        violations.append(FieldViolation(field, "must hold at least one attribute"))
    if violations:
        raise InvalidArgument(violations)
    return dict(attributes)
