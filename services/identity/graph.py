"""The identity graph's use cases: resolve, look up, link, describe, unlink, forget, publish events.

Concurrency scheme (several replicas, many callers; see README "Merging safely"):
- An identifier is claimed for a person with `INSERT ... IF NOT EXISTS`: the first writer wins.
- A merge takes lease locks (LWT insert with TTL) on every root person involved, in sorted
  order, then re-reads at SERIAL consistency that they are still roots and still own the
  identifiers. Anything changed: release and retry with jittered back-off.
- The commit point is `person.merged_into`, set once by LWT. Moving the loser's identifiers
  follows, each by `UPDATE ... IF person_id = loser`. A crash between the two leaves identifiers
  on a merged-away person: reads follow `merged_into` to the root (correct answers) and repair
  the leftovers under the same locks; the event outbox replays the rest.
- Identity events go to a Cassandra outbox first, then to the Redis Stream, so a committed
  merge is always published (at least once).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from services.common import deadlines
from services.common.clock import now_ms
from services.common.errors import Aborted, FailedPrecondition, NotFound, Unavailable
from services.common.identifiers import IdentifierKey, IdentifierType
from services.identity.adapters.cassandra_store import CassandraIdentityStore, OutboxEvent
from services.identity.adapters.near_cache import NearCache
from services.identity.adapters.redis_cache import RedisIdentityCache, StreamEvent
from services.identity.domain.merging import (
    PersonSnapshot,
    choose_survivor,
    customer_ids_of,
    ensure_single_customer,
    is_shared_device,
)

log = structlog.get_logger("rapport.identity")

_T = TypeVar("_T")

MAX_MERGE_CHAIN = 64
KIND_LINK = "LINK"
KIND_UNLINK = "UNLINK"


@dataclass(frozen=True)
class IdentityRules:
    max_customers_per_device: int = 3
    lock_lease_s: int = 10
    resolve_concurrency: int = 32


@dataclass(frozen=True)
class Resolution:
    identifier: IdentifierKey
    person_id: str
    created: bool


@dataclass(frozen=True)
class LinkResult:
    person_id: str
    merged_person_ids: list[str]
    skipped_identifiers: list[IdentifierKey]


@dataclass(frozen=True)
class MergeEntry:
    kind: str
    from_person_id: str
    to_person_id: str
    event_time_ms: int
    identifiers: list[IdentifierKey]


@dataclass(frozen=True)
class PersonView:
    person_id: str
    identifiers: list[tuple[IdentifierKey, int]]
    first_seen_ms: int
    last_seen_ms: int
    merges: list[MergeEntry]


@dataclass(frozen=True)
class ForgetResult:
    erased_person_ids: list[str]
    erased_identifier_count: int


class _Changed(Exception):
    """The graph moved under us between reading and locking: start the operation again."""


def _consume_exception(task: asyncio.Task[Any]) -> None:
    """A shielded section whose caller has gone: log its failure instead of losing it."""
    if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), _Changed):
        log.warning("locked_section_failed", error=repr(task.exception()))


def new_person_id() -> str:
    return uuid.uuid4().hex


class IdentityGraph:
    def __init__(
        self,
        store: CassandraIdentityStore,
        cache: RedisIdentityCache,
        rules: IdentityRules,
        near_cache: NearCache | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._rules = rules
        self._near = near_cache if near_cache is not None else NearCache(ttl_s=0, max_entries=0)
        self._background: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- resolve
    async def resolve(self, identifier: IdentifierKey) -> Resolution:
        # A near-cache hit skips last_seen: once the entry expires (30 s by default, within the
        # 60 s last_seen granularity) the Redis path below, which throttles those writes, answers.
        near = self._near.get(identifier.key)
        if near is not None:
            return Resolution(identifier, near, False)
        epoch = self._near.epoch
        cached = await self._cache.lookup(identifier.key)
        if cached is not None:
            if cached.last_seen_due:
                self._in_background(self._store.touch_last_seen(cached.person_id, now_ms()))
            self._near.put(identifier.key, cached.person_id, epoch)
            return Resolution(identifier, cached.person_id, False)
        person_id, created = await self._resolve_in_store(identifier)
        await self._cache.remember([identifier.key], person_id)
        self._near.put(identifier.key, person_id, epoch)
        if not created:
            self._in_background(self._store.touch_last_seen(person_id, now_ms()))
        return Resolution(identifier, person_id, created)

    async def keep_near_cache_coherent(self, retry_s: float = 0.5) -> None:
        """Apply other replicas' invalidations to the near cache, forever; off while unsubscribed."""
        if not self._near.configured:
            return
        while True:
            try:
                async for person_ids in self._cache.invalidations(self._near.switch_on):
                    self._near.invalidate_persons(person_ids)
            except Exception:
                log.warning("near_cache_invalidations_lost", retry_s=retry_s)
            self._near.switch_off()
            await asyncio.sleep(retry_s)

    async def resolve_many(self, identifiers: Sequence[IdentifierKey]) -> list[Resolution]:
        limiter = asyncio.Semaphore(self._rules.resolve_concurrency)

        async def one(identifier: IdentifierKey) -> Resolution:
            async with limiter:
                return await self.resolve(identifier)

        return list(await asyncio.gather(*(one(identifier) for identifier in identifiers)))

    async def _resolve_in_store(self, identifier: IdentifierKey) -> tuple[str, bool]:
        """The root person of an identifier per Cassandra, creating one at first sight."""
        for _attempt in range(5):
            owner = await self._store.identifier_owner(identifier.key)
            if owner is None:
                person_id, at = new_person_id(), now_ms()
                # The person and its identifier row exist before the claim, so a claimed
                # identifier always has them; a lost race only leaves this unseen person to drop.
                await self._store.create_person(person_id, at)
                await self._store.add_person_identifier(person_id, identifier.key, at)
                claimed, owner = await self._store.claim_identifier(identifier.key, person_id)
                if claimed:
                    return person_id, True
                await self._store.delete_person(person_id)
            root = await self._root_of(owner)
            if root is None:
                # The owner was erased while this identifier still pointed at it: free it and retry.
                await self._store.delete_identifier(identifier.key)
                continue
            if root != owner:
                await self._repair_merge(owner)
            return root, False
        raise Aborted("the identifier kept changing; retry")

    async def _root_of(self, person_id: str, *, serial: bool = False) -> str | None:
        current = person_id
        for _ in range(MAX_MERGE_CHAIN):
            person = await self._store.person(current, serial=serial)
            if person is None:
                return None
            if person.merged_into is None:
                return current
            current = person.merged_into
        raise Aborted("merge chain too long")

    # ---------------------------------------------------------------- link
    async def link(self, identifiers: Sequence[IdentifierKey]) -> LinkResult:
        customers = customer_ids_of(identifiers)
        ensure_single_customer([], identifiers)
        customer_id = next(iter(customers), None)
        linkable, skipped = await self._drop_shared_devices(identifiers, customer_id)
        if not linkable:
            raise FailedPrecondition("every identifier is a shared device; nothing to link", "SHARED_DEVICES_ONLY")
        backoff_s = 0.005
        while True:
            try:
                return await self._link_once(linkable, skipped)
            except _Changed:
                # Jittered exponential back-off; the request deadline bounds the retries.
                remaining = deadlines.remaining_s()
                if remaining < backoff_s * 2:
                    raise Aborted("too much contention on these persons; retry") from None
                await asyncio.sleep(random.uniform(0, backoff_s))
                backoff_s = min(backoff_s * 2, 0.2)

    async def _drop_shared_devices(
        self, identifiers: Sequence[IdentifierKey], customer_id: str | None
    ) -> tuple[list[IdentifierKey], list[IdentifierKey]]:
        linkable: list[IdentifierKey] = []
        skipped: list[IdentifierKey] = []
        for identifier in identifiers:
            if identifier.type.is_device:
                if customer_id is not None:
                    await self._store.record_device_customer(identifier.key, customer_id)
                seen = await self._store.device_customers(identifier.key)
                if is_shared_device(len(seen), self._rules.max_customers_per_device):
                    skipped.append(identifier)
                    continue
            linkable.append(identifier)
        return linkable, skipped

    async def _link_once(self, identifiers: list[IdentifierKey], skipped: list[IdentifierKey]) -> LinkResult:
        resolved = await asyncio.gather(*(self._resolve_in_store(identifier) for identifier in identifiers))
        roots = {identifier.key: person_id for identifier, (person_id, _) in zip(identifiers, resolved, strict=True)}
        persons = sorted(set(roots.values()))
        if len(persons) == 1:
            await self._cache.remember(roots.keys(), persons[0])
            return LinkResult(persons[0], [], skipped)
        survivor, losers = await self._to_completion(self._merge(persons, roots, identifiers))
        return LinkResult(survivor, losers, skipped)

    async def _merge(
        self, persons: list[str], roots: dict[str, str], identifiers: list[IdentifierKey]
    ) -> tuple[str, list[str]]:
        """Merge root persons into one, under their locks; (survivor, merged-away persons)."""
        async with self._locked(persons):
            # Under the locks, check at SERIAL consistency that nothing moved since we looked.
            for person_id in persons:
                row = await self._store.person(person_id, serial=True)
                if row is None or row.merged_into is not None:
                    raise _Changed()
            for key, root in roots.items():
                owner = await self._store.identifier_owner(key, serial=True)
                if owner is None or (owner != root and await self._root_of(owner, serial=True) != root):
                    raise _Changed()
            snapshots = [await self._snapshot(person_id) for person_id in persons]
            ensure_single_customer(snapshots, identifiers)
            survivor = choose_survivor(snapshots)
            losers = [person.person_id for person in snapshots if person.person_id != survivor.person_id]
            outbox = await self._store.add_outbox("merge", survivor.person_id, losers)
            # The commit point is next: from here the merge finishes even if the caller gives up.
            deadlines.detach()
            at = now_ms()
            for loser in losers:
                if not await self._commit_merge(loser, survivor.person_id, at):
                    raise _Changed()  # impossible while we hold the lock, unless the lease expired
                await self._store.add_merged_from(survivor.person_id, loser)
                moved = await self._move_identifiers(loser, survivor.person_id)
                await self._store.append_merge_log(survivor.person_id, KIND_LINK, loser, survivor.person_id, moved, at)
            await self._cache.redirect(losers, survivor.person_id)
            await self._cache.remember(roots.keys(), survivor.person_id)
            self._near.invalidate_persons(losers)
        log.info("persons_merged", survivor=survivor.person_id, merged=losers)
        await self._publish(outbox)
        return survivor.person_id, losers

    async def _commit_merge(self, loser: str, survivor: str, at_ms: int) -> bool:
        """Set `merged_into`; when the answer is lost (timeout), read at SERIAL what happened."""
        try:
            return await self._store.mark_merged(loser, survivor, at_ms)
        except Unavailable:
            row = await self._store.person(loser, serial=True)
            if row is not None and row.merged_into == survivor:
                return True
            raise

    async def _to_completion(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run a locked section as a task of its own that the caller's cancellation cannot stop.

        A caller that gives up (deadline, disconnect) would otherwise cancel a merge between its
        commit point and its end: identifiers left on a merged-away person, no Redis redirect, no
        invalidation for the other replicas' near caches. The task starts with a copy of the
        request's context (its deadline applies until `deadlines.detach()`), and releases its
        locks itself.
        """
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_consume_exception)
        return await asyncio.shield(task)

    async def _snapshot(self, person_id: str) -> PersonSnapshot:
        person = await self._store.person(person_id)
        if person is None:
            raise _Changed()
        keys = [IdentifierKey.from_key(key) for key, _ in await self._store.person_identifiers(person_id)]
        return PersonSnapshot(person_id, person.created_at_ms, frozenset(customer_ids_of(keys)))

    async def _move_identifiers(self, loser: str, survivor: str) -> list[str]:
        """Move every identifier of `loser` to `survivor` (idempotent; both locked by the caller)."""
        moved: list[str] = []
        for key, first_seen_ms in await self._store.person_identifiers(loser):
            await self._store.add_person_identifier(survivor, key, first_seen_ms)
            await self._store.move_identifier(key, loser, survivor)
            await self._store.remove_person_identifier(loser, key)
            moved.append(key)
        return moved

    async def _repair_merge(self, merged_person: str) -> None:
        """Finish moving the identifiers of a merged-away person whose merge was interrupted."""
        root = await self._root_of(merged_person)
        if root is None or root == merged_person:
            return
        try:
            async with self._locked(sorted({merged_person, root})):
                if await self._root_of(root, serial=True) != root:
                    return
                moved = await self._move_identifiers(merged_person, root)
                # Entries cached before the interrupted merge still name the merged-away person.
                await self._cache.redirect([merged_person], root)
                if moved:
                    log.warning("merge_repaired", merged=merged_person, survivor=root, identifiers=len(moved))
                    await self._cache.remember(moved, root)
                    self._near.invalidate_persons([merged_person])
                    await self._cache.publish_invalidation([merged_person])
        except _Changed:
            pass  # someone else holds them, most likely finishing this very merge

    # ---------------------------------------------------------------- locks
    @asynccontextmanager
    async def _locked(self, person_ids: Sequence[str]) -> AsyncIterator[None]:
        """Lease-lock persons in sorted order; raise _Changed when one is held elsewhere."""
        owner = uuid.uuid4().hex
        held: list[str] = []
        try:
            for person_id in sorted(person_ids):
                if not await self._store.try_lock(person_id, owner, self._rules.lock_lease_s):
                    raise _Changed()
                held.append(person_id)
            yield
        finally:
            await asyncio.gather(*(self._store.unlock(person_id, owner) for person_id in held), return_exceptions=True)

    async def _with_lock_retry(
        self,
        person_ids: Callable[[], Coroutine[Any, Any, list[str]]],
        action: Callable[[list[str]], Coroutine[Any, Any, Any]],
    ) -> Any:
        """Run `action` under the locks of the persons `person_ids()` names, retrying on contention."""
        backoff_s = 0.005
        while True:
            targets = await person_ids()
            try:
                return await self._to_completion(self._locked_action(targets, action))
            except _Changed:
                if deadlines.remaining_s() < backoff_s * 2:
                    raise Aborted("too much contention on this person; retry") from None
                await asyncio.sleep(random.uniform(0, backoff_s))
                backoff_s = min(backoff_s * 2, 0.2)

    async def _locked_action(self, targets: list[str], action: Callable[[list[str]], Coroutine[Any, Any, Any]]) -> Any:
        async with self._locked(targets):
            return await action(targets)

    # ---------------------------------------------------------------- read
    async def lookup(self, identifier: IdentifierKey) -> str:
        """The root person of an identifier, as Cassandra holds it now. Writes nothing: no person at
        first sight, no cache entry, no last sight (a look-up by staff is not a visit), no repair
        of an interrupted merge (reads follow `merged_into` to the survivor anyway)."""
        owner = await self._store.identifier_owner(identifier.key)
        root = await self._root_of(owner) if owner is not None else None
        if root is None:  # never seen, or erased (an owner erased under its identifier included)
            raise NotFound("identity has never seen this identifier (or it was erased)", "IDENTIFIER_NOT_FOUND")
        return root

    async def person_view(self, person_id: str) -> PersonView:
        root = await self._root_of(person_id)
        if root is None:
            raise NotFound("no person has this id (never created, or erased)", "PERSON_NOT_FOUND")
        person = await self._store.person(root)
        if person is None:
            raise NotFound("no person has this id (never created, or erased)", "PERSON_NOT_FOUND")
        identifiers = [
            (IdentifierKey.from_key(key), first_seen) for key, first_seen in await self._store.person_identifiers(root)
        ]
        merges: list[MergeEntry] = []
        for member in await self._group_of(root):
            for row in await self._store.merge_log(member):
                merges.append(
                    MergeEntry(
                        row.kind,
                        row.from_person_id,
                        row.to_person_id,
                        row.event_time_ms,
                        [IdentifierKey.from_key(key) for key in row.identifiers],
                    )
                )
        merges.sort(key=lambda entry: entry.event_time_ms)
        return PersonView(
            root, sorted(identifiers, key=lambda item: item[1]), person.created_at_ms, person.last_seen_ms, merges
        )

    async def _group_of(self, root: str) -> list[str]:
        """The root and every person merged into it, transitively."""
        group, frontier = [root], [root]
        while frontier:
            merged = await self._store.merged_from(frontier.pop())
            group.extend(merged)
            frontier.extend(merged)
        return group

    # ---------------------------------------------------------------- unlink
    async def unlink(self, identifier: IdentifierKey) -> tuple[str, str]:
        owner = await self._store.identifier_owner(identifier.key)
        if owner is None:
            raise NotFound("this identifier has never been seen", "IDENTIFIER_NOT_FOUND")
        if await self._root_of(owner) != owner:
            await self._repair_merge(owner)

        async def current_owner() -> list[str]:
            found = await self._store.identifier_owner(identifier.key)
            if found is None:
                raise NotFound("this identifier has never been seen", "IDENTIFIER_NOT_FOUND")
            return [found]

        async def move_out(locked: list[str]) -> tuple[str, str]:
            previous = locked[0]
            if await self._store.identifier_owner(identifier.key, serial=True) != previous:
                raise _Changed()
            row = await self._store.person(previous, serial=True)
            if row is None or row.merged_into is not None:
                raise _Changed()
            keys = [key for key, _ in await self._store.person_identifiers(previous)]
            if len(keys) <= 1:
                raise FailedPrecondition(
                    "the identifier is its person's only one; nothing to unlink", "ONLY_IDENTIFIER"
                )
            new_person, at = new_person_id(), now_ms()
            deadlines.detach()  # past here the unlink finishes even if the caller gives up
            outbox = await self._store.add_outbox("unlink", new_person, [previous, new_person], identifier.key)
            await self._store.create_person(new_person, at)
            await self._store.add_person_identifier(new_person, identifier.key, at)
            if not await self._store.move_identifier(identifier.key, previous, new_person):
                await self._store.delete_person(new_person)
                raise _Changed()
            await self._store.remove_person_identifier(previous, identifier.key)
            for person_id in (previous, new_person):
                await self._store.append_merge_log(person_id, KIND_UNLINK, previous, new_person, [identifier.key], at)
            await self._cache.remember([identifier.key], new_person)
            self._near.invalidate_persons([previous])
            # A Resolve that read Cassandra just before the move may re-cache the old person: drop it again.
            self._in_background(self._forget_cached_later(identifier.key))
            await self._publish(outbox)
            return previous, new_person

        result: tuple[str, str] = await self._with_lock_retry(current_owner, move_out)
        return result

    async def _forget_cached_later(self, key: str) -> None:
        await asyncio.sleep(1.0)
        await self._cache.forget_identifiers([key])

    # ---------------------------------------------------------------- forget
    async def forget(self, person_id: str) -> ForgetResult:
        async def root() -> list[str]:
            found = await self._root_of(person_id)
            if found is None:
                raise NotFound("no person has this id (never created, or erased)", "PERSON_NOT_FOUND")
            return [found]

        async def erase(locked: list[str]) -> ForgetResult:
            if await self._root_of(locked[0], serial=True) != locked[0]:
                raise _Changed()
            deadlines.detach()  # an erasure, once started, finishes even if the caller gives up
            group = await self._group_of(locked[0])
            identifiers: list[str] = []
            for member in group:
                identifiers += [key for key, _ in await self._store.person_identifiers(member)]
            for key in identifiers:
                parsed = IdentifierKey.from_key(key)
                await self._store.delete_identifier(key)
                if parsed.type is IdentifierType.CUSTOMER_ID:
                    await self._store.erase_device_links(key, parsed.value)
                elif parsed.type.is_device:
                    await self._store.erase_device_links(key, None)
            for event in await self._store.outbox():
                if set(event.person_ids) & set(group) or event.survivor_person_id in group:
                    await self._store.remove_outbox(event.event_id)
            for member in group:
                await self._store.delete_person(member)
            await self._cache.forget(identifiers, group)
            # Erasure has no event to carry the near-cache eviction to other replicas: send it here.
            self._near.invalidate_persons(group)
            await self._cache.publish_invalidation(group)
            await self._cache.erase_events_about(set(group))
            log.info("person_forgotten", person=locked[0], persons=len(group), identifiers=len(identifiers))
            return ForgetResult(group, len(identifiers))

        result: ForgetResult = await self._with_lock_retry(root, erase)
        return result

    # ---------------------------------------------------------------- events
    async def _publish(self, event: OutboxEvent) -> None:
        """Put an outbox event on the Redis Stream, then drop it from the outbox."""
        involved = sorted({*event.person_ids, event.survivor_person_id})
        fields = {"kind": event.kind, "at": str(event.created_at_ms), "persons": json.dumps(involved)}
        if event.kind == "merge":
            fields["survivor"] = event.survivor_person_id
            fields["merged"] = json.dumps(event.person_ids)
        else:
            previous = next(person for person in event.person_ids if person != event.survivor_person_id)
            fields.update(identifier=event.identifier, previous=previous, new=event.survivor_person_id)
        try:
            await self._cache.publish(fields)
        except Exception:
            log.warning("event_publish_deferred", kind=event.kind)
            return
        await self._cache.publish_invalidation(involved)
        await self._store.remove_outbox(event.event_id)

    async def relay_outbox(self, older_than_ms: int) -> int:
        """Publish outbox events left behind by failures; returns how many were handled."""
        handled = 0
        cutoff = now_ms() - older_than_ms
        for event in await self._store.outbox():
            if event.created_at_ms > cutoff:
                continue
            if event.kind == "merge":
                committed = []
                for loser in event.person_ids:
                    row = await self._store.person(loser)
                    if row is not None and row.merged_into == event.survivor_person_id:
                        committed.append(loser)
                        await self._repair_merge(loser)
                if committed:
                    await self._publish(OutboxEvent(event.event_id, "merge", event.survivor_person_id, committed, ""))
                else:
                    await self._store.remove_outbox(event.event_id)
            elif await self._store.identifier_owner(event.identifier) == event.survivor_person_id:
                await self._publish(event)
            else:
                await self._store.remove_outbox(event.event_id)
            handled += 1
        return handled

    def events(self, after_event_id: str, block_ms: int = 1000) -> AsyncIterator[StreamEvent]:
        return self._cache.read_events(after_event_id, block_ms)

    # ---------------------------------------------------------------- housekeeping
    def _in_background(self, work: Coroutine[Any, Any, Any]) -> None:
        """Best-effort work after the reply (last_seen, cache hygiene), outside the request budget."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.warning("background_work_failed", exc_info=True)

        task = asyncio.create_task(guarded(), context=contextvars.Context())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
