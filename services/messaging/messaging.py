"""Messaging's use cases: rules, contacts, consent, firing triggers, reading deliveries, dead
letters, the audience export and erasure. Sending itself is in `sending.py`."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace

import orjson
import structlog

from services.common import tracing
from services.common.clock import now_ms
from services.common.errors import FailedPrecondition, NotFound
from services.common.person_changes import PersonChange, PersonChangeKind
from services.messaging.adapters.cassandra_store import Contact, MessagingStore, StoredRule
from services.messaging.adapters.redis_queue import MessagingQueue
from services.messaging.domain.audiences import AudienceMember, write_customer_file
from services.messaging.domain.delivery import Delivery, DeliveryStatus, delivery_id_for
from services.messaging.domain.policy import ConsentState, daily_cap_keys_alive
from services.messaging.domain.tokens import MessageTokens
from services.messaging.domain.triggers import (
    DEFAULT_RULES,
    Channel,
    RuleBook,
    TriggerInstance,
    TriggerKind,
    TriggerRule,
    idempotency_key,
)

log = structlog.get_logger("rapport.messaging")
RULES_REFRESH_S = 5.0
EXPORT_CHUNK_ROWS = 1000
ERASE_PAGE = 500


def instance_to_json(instance: TriggerInstance, fired: bool = False, traceparent: str = "") -> str:
    """The instance as its deliveries keep it; `traceparent` is the trace that scheduled it, which
    the send links to (see `trigger_traceparent`)."""
    data: dict[str, object] = {
        "fired": fired,
        "kind": instance.kind.name,
        "person": instance.person_id,
        "due": instance.due_at_ms,
        "channels": [channel.name for channel in instance.channels],
        "key": instance.idempotency_key,
        "anchor": instance.anchor_ms,
        "products": list(instance.product_ids),
        "order": instance.order_id,
        "category": instance.category,
    }
    if traceparent:
        data["trace"] = traceparent
    return orjson.dumps(data).decode()


def instance_from_json(text: str) -> tuple[TriggerInstance, bool]:
    """The instance, and whether it was fired over RPC (then the caller decided, and the
    send-time re-check of its condition is skipped)."""
    data = orjson.loads(text)
    instance = TriggerInstance(
        kind=TriggerKind[data["kind"]],
        person_id=data["person"],
        due_at_ms=int(data["due"]),
        channels=tuple(Channel[name] for name in data["channels"]),
        idempotency_key=data["key"],
        anchor_ms=int(data["anchor"]),
        product_ids=tuple(data.get("products") or ()),
        order_id=data.get("order", ""),
        category=data.get("category", ""),
    )
    return instance, bool(data.get("fired"))


def trigger_traceparent(text: str) -> str:
    """The `traceparent` of the request (or batch of events) that scheduled an instance; '' if none."""
    try:
        trace = json.loads(text).get("trace", "")
    except (ValueError, AttributeError):
        return ""
    return trace if isinstance(trace, str) else ""


# Kinds whose repeats (the same instance fired again) push a pending send later: the visitor is
# still active, and the reminder counts its delay from the last activity.
POSTPONED_BY_REPEATS = frozenset({TriggerKind.ABANDONED_CART, TriggerKind.BROWSE_ABANDONMENT})


class RuleCatalog:
    """The rules in force: defaults overlaid with what was edited over RPC (Cassandra), refreshed
    every few seconds so every replica follows an edit."""

    def __init__(self, store: MessagingStore) -> None:
        self._store = store
        self._rules: dict[TriggerKind, TriggerRule] = dict(DEFAULT_RULES)
        self._loaded_at = 0.0
        # Every send asks for the rules: when they go stale, the sends in flight (64 per replica)
        # would each read them again from Cassandra. One reads; the others wait for its answer.
        self._loading = asyncio.Lock()

    @property
    def book(self) -> RuleBook:
        return self._rules

    async def refresh(self, force: bool = False) -> RuleBook:
        if not force and not self._stale:
            return self._rules
        async with self._loading:
            if force or self._stale:  # not read meanwhile by the call this one waited for
                await self._load()
        return self._rules

    @property
    def _stale(self) -> bool:
        return time.monotonic() - self._loaded_at > RULES_REFRESH_S

    async def _load(self) -> None:
        rules = dict(DEFAULT_RULES)
        for stored in await self._store.rules():
            kind = TriggerKind.__members__.get(stored.kind)
            if kind is None:
                continue
            rules[kind] = replace(
                DEFAULT_RULES[kind],
                enabled=stored.enabled,
                delay_ms=stored.delay_ms,
                channels=tuple(Channel[name] for name in stored.channels) or DEFAULT_RULES[kind].channels,
            )
        self._rules = rules
        self._loaded_at = time.monotonic()

    async def update(self, rule: TriggerRule) -> TriggerRule:
        await self._store.save_rule(
            StoredRule(rule.kind.name, rule.enabled, rule.delay_ms, tuple(channel.name for channel in rule.channels))
        )
        await self.refresh(force=True)
        return self._rules[rule.kind]


class Messaging:
    def __init__(self, store: MessagingStore, queue: MessagingQueue, rules: RuleCatalog, tokens: MessageTokens) -> None:
        self._store = store
        self._queue = queue
        self.rules = rules
        self._tokens = tokens

    # ------------------------------------------------------------------ triggers
    async def schedule(self, instance: TriggerInstance, fired: bool = False) -> tuple[bool, list[str]]:
        """Schedule one delivery per channel; (created, delivery ids). A key seen before creates nothing."""
        at = now_ms()
        data = instance_to_json(instance, fired, tracing.current_traceparent())
        deliveries = [
            Delivery(
                delivery_id=delivery_id_for(instance.idempotency_key, channel.name),
                person_id=instance.person_id,
                kind=instance.kind.name,
                channel=channel.name,
                status=DeliveryStatus.SCHEDULED,
                idempotency_key=instance.idempotency_key,
                created_at_ms=at,
                due_at_ms=instance.due_at_ms,
                trigger_data=data,
            )
            for channel in instance.channels
        ]
        created, ids = await self._queue.schedule(
            instance.idempotency_key, deliveries, postpone=instance.kind in POSTPONED_BY_REPEATS
        )
        if created:
            # The Redis copy is the working state; Cassandra keeps the history (a failure here is
            # repaired when the delivery's outcome is written).
            try:
                await asyncio.gather(*(self._store.save_delivery(delivery, new=True) for delivery in deliveries))
            except Exception:
                log.warning("delivery_history_deferred", key=instance.idempotency_key, exc_info=True)
        return created, ids

    async def fire(self, person_id: str, kind: TriggerKind, key: str, send_at_ms: int | None) -> tuple[bool, list[str]]:
        rules = await self.rules.refresh()
        rule = rules[kind]
        if not rule.enabled:
            raise FailedPrecondition(f"the {kind.name} rule is disabled", "RULE_DISABLED")
        at = now_ms()
        instance = TriggerInstance(
            kind=kind,
            person_id=person_id,
            due_at_ms=send_at_ms if send_at_ms is not None else at + rule.delay_ms,
            channels=rule.channels,
            idempotency_key=idempotency_key(kind, "fired", key or person_id),
            anchor_ms=at,
        )
        return await self.schedule(instance, fired=True)

    # ------------------------------------------------------------------ contacts and consent
    async def set_contact(self, contact: Contact) -> None:
        await self._store.set_contact(contact, now_ms())

    async def set_consent(self, person_id: str, channel: Channel, state: ConsentState) -> None:
        await self._store.set_consent(person_id, channel.name, state.name, now_ms())

    async def consents(self, person_id: str) -> dict[Channel, tuple[ConsentState, int]]:
        stored = await self._store.consents(person_id)
        result: dict[Channel, tuple[ConsentState, int]] = {}
        for channel in Channel:
            state, at = stored.get(channel.name, ("UNKNOWN", 0))
            result[channel] = (ConsentState[state] if state in ConsentState.__members__ else ConsentState.UNKNOWN, at)
        return result

    async def unsubscribe(self, token: str) -> tuple[str, Channel]:
        """Raises InvalidToken for a forged or damaged token."""
        request = self._tokens.read_unsubscribe(token, now_ms())
        await self.set_consent(request.person_id, request.channel, ConsentState.DENIED)
        log.info("unsubscribed", person=request.person_id, channel=request.channel.name)
        return request.person_id, request.channel

    # ------------------------------------------------------------------ deliveries
    async def delivery(self, delivery_id: str) -> Delivery:
        """The working copy while Redis has it (the freshest), else the history in Cassandra."""
        found = await self._queue.copy(delivery_id) or await self._store.delivery(delivery_id)
        if found is None:
            raise NotFound("no delivery has this id", "DELIVERY_NOT_FOUND")
        return found

    async def deliveries_of(self, person_id: str, limit: int) -> list[Delivery]:
        stored = await self._store.deliveries_of(person_id, limit)
        fresh = await self._queue.copies([delivery.delivery_id for delivery in stored])
        return [fresh.get(delivery.delivery_id, delivery) for delivery in stored]

    async def dead_letters(self, limit: int) -> list[Delivery]:
        return await self._store.dead_letters(limit)

    async def replay(self, delivery_id: str) -> Delivery:
        delivery = await self.delivery(delivery_id)
        if delivery.status is not DeliveryStatus.DEAD:
            raise FailedPrecondition(
                f"only a dead-lettered delivery can be replayed; this one is {delivery.status.name}", "NOT_DEAD"
            )
        revived = delivery.with_status(DeliveryStatus.SCHEDULED, attempts=0, due_at_ms=now_ms(), reason="REPLAYED")
        await self._store.remove_dead_letter(delivery)
        await self._store.save_delivery(revived)
        await self._queue.reschedule(revived)
        return revived

    # ------------------------------------------------------------------ audience
    async def export_audience(self, kinds: Sequence[TriggerKind]) -> AsyncIterator[str]:
        members = await self._store.audience([kind.name for kind in kinds])
        for start in range(0, max(len(members), 1), EXPORT_CHUNK_ROWS):
            chunk = members[start : start + EXPORT_CHUNK_ROWS]
            out = io.StringIO()
            write_customer_file(
                [AudienceMember(m.email_sha256, m.phone_sha256, m.madid, m.country, m.product_ids) for m in chunk],
                out,
                include_product_ids=True,
            )
            text = out.getvalue()
            if start > 0:
                text = text.split("\n", 1)[1]  # the header only once
            yield text

    # ------------------------------------------------------------------ erasure
    async def apply_person_change(self, change: PersonChange) -> None:
        """What profile announced (services/common/person_changes.py): an erasure erases each
        person here. Merges change nothing here (contacts and consent stay with the person they
        were given for)."""
        if change.kind is PersonChangeKind.FORGET:
            for person_id in change.person_ids:
                await self.forget(person_id)

    async def forget(self, person_id: str) -> int:
        """Erase everything messaging keeps about the person; how many deliveries were erased.

        Redis first (working copies, due set, idempotency keys, done markers), then Cassandra
        (delivery rows, dead letters, the index), page by page: an erasure cut short is simply
        run again (the follower acknowledges it only once done), and finds the rest through the
        index. Then contact, consent, cap counters and retargeting members (stored and queued).
        """
        erased = 0
        while refs := await self._store.delivery_refs(person_id, ERASE_PAGE):
            ids = [ref.delivery_id for ref in refs]
            stored = [found for found in [await self._store.delivery(i) for i in ids] if found is not None]
            queued = list((await self._queue.copies(ids)).values())
            keys = sorted({delivery.idempotency_key for delivery in stored + queued if delivery.idempotency_key})
            await self._queue.forget_deliveries(ids, keys)
            await self._store.forget_deliveries(person_id, refs, stored + queued)
            erased += len(refs)
        await self._queue.forget_person(person_id, daily_cap_keys_alive(person_id, now_ms()))
        await self._store.forget_person(person_id, [kind.name for kind in TriggerKind])
        log.info("person_forgotten", person=person_id, deliveries=erased)
        return erased
