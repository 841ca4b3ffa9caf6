"""The send pipeline: profile events -> trigger instances -> due set -> send stream -> channels.

Every replica runs all four loops; Redis makes them agree (see adapters/redis_queue.py):
- `TriggerIntake` reads the profile event stream in a consumer group and schedules instances;
- `Dispatcher` moves due deliveries to the send stream, each exactly once;
- `Sender` workers take entries from the stream, re-check the trigger, consent, caps and quiet
  hours against the person's current state, render and send, and record the outcome together
  with the entry's acknowledgement. A worker killed mid-send leaves its entry pending; it is
  claimed again after `claim_idle_ms` and the send is attempted again (at least once, and the
  `done` marker makes a completed one a no-op: see README for the one window that remains).
- `AudienceSync` posts retargeting members to the audience endpoint in batches.

With spans exported (services/common/tracing.py), a batch of profile events and each send are
traces of their own; a send links to the trace that scheduled it (the FireTrigger call or the
batch of events), kept in the delivery's trigger data. A link rather than a parent: a send runs
minutes to days after its trigger, longer than a trace is meant to last.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import time
from dataclasses import dataclass

import jinja2
import structlog

from rapport.common.v1 import identifier_pb2
from services.common import tracing
from services.common.clock import now_ms
from services.common.identity_client import IdentityClient
from services.messaging.adapters.cassandra_store import Contact, MessagingStore, StoredAudienceMember
from services.messaging.adapters.channels import HttpSender, SendError, SmtpSender
from services.messaging.adapters.peers import DecisionClient, Pick, Picks
from services.messaging.adapters.redis_queue import MessagingQueue, StreamEntries, TakenSend
from services.messaging.domain.audiences import AudienceMember, hash_email, hash_phone, sync_batches
from services.messaging.domain.delivery import Delivery, DeliveryStatus
from services.messaging.domain.mime import OutgoingEmail, compose_email, date_header
from services.messaging.domain.policy import (
    ConsentState,
    DeferUntil,
    QuietHours,
    SendPolicy,
    Skip,
    daily_cap_key,
    decide_send,
    local_day,
    local_days_possible,
)
from services.messaging.domain.retry import DeadLetter, RetryPolicy
from services.messaging.domain.templates import (
    EmailContent,
    EmailRenderer,
    RecommendedProduct,
    Shop,
    create_environment,
    push_message,
)
from services.messaging.domain.tokens import Click, MessageTokens, Open, Unsubscribe
from services.messaging.domain.triggers import (
    Channel,
    PersonFacts,
    ProfileEventSummary,
    TriggerInstance,
    TriggerKind,
    person_facts,
    still_due,
    triggers_for_event,
)
from services.messaging.messaging import Messaging, RuleCatalog, instance_from_json, trigger_traceparent
from services.messaging.metrics import DeliveryMetrics
from services.profile.reader import ProfileReader

log = structlog.get_logger("rapport.messaging")
PRODUCTS_PER_MESSAGE = 4
# Long header values (a List-Unsubscribe URL has no space to fold at) stay one line up to RFC
# 5322's 998 characters instead of being mangled into encoded words.


# How often, per claim_idle_ms, a sender looks for the entries of a crashed replica: they become
# claimable once idle for claim_idle_ms and wait for the next look, so a look every half period
# (as before) held them up to 1.5 periods, every sixth up to 7/6. A look is one XAUTOCLAIM over a
# pending list of at most the replicas' sends in flight.
CLAIM_SCANS_PER_IDLE = 6


def claim_scan_interval_s(claim_idle_ms: int) -> float:
    """Seconds between a sender's looks for sends a crashed replica held (see CLAIM_SCANS_PER_IDLE)."""
    return claim_idle_ms / 1000 / CLAIM_SCANS_PER_IDLE


@dataclass(frozen=True)
class SenderConfig:
    shop: Shop
    public_url: str
    sender_address: str
    push_url: str
    push_auth_token: str
    default_language: str
    workers: int
    claim_idle_ms: int
    retry: RetryPolicy
    policy: SendPolicy


class PersonReader:
    """A person's facts as triggers need them, from profile's live state (rebuilt when missing)."""

    def __init__(self, profiles: ProfileReader) -> None:
        self._profiles = profiles

    async def facts(self, person_id: str, at_ms: int, contact: Contact | None = None) -> PersonFacts:
        live = await self._profiles.read(person_id)
        if live is None and not self._profiles.known_empty(person_id):
            with contextlib.suppress(Exception):
                await self._profiles.rebuild(person_id, timeout_s=5.0)
            live = await self._profiles.read(person_id)
            if live is None:
                self._profiles.remember_empty(person_id)
        has_email = bool(contact and contact.email)
        has_push = bool(contact and contact.push_token)
        if live is None:
            return PersonFacts(person_id, has_email=has_email, has_push_token=has_push)
        return person_facts(live.state, at_ms, has_email=has_email, has_push_token=has_push)

    async def cart(self, person_id: str) -> list[Pick]:
        """The lines of the person's cart as the live profile holds them (titles, prices)."""
        live = await self._profiles.read(person_id)
        if live is None:
            return []
        return [
            Pick(product_id, line.title or product_id, line.price, line.currency or "EUR", "IN_CART")
            for product_id, line in live.state.cart.items()
        ]


class TriggerIntake:
    """Profile events -> trigger instances, in the `messaging-triggers` consumer group."""

    def __init__(
        self, queue: MessagingQueue, messaging: Messaging, rules: RuleCatalog, people: PersonReader, consumer: str
    ) -> None:
        self._queue = queue
        self._messaging = messaging
        self._rules = rules
        self._people = people
        self._consumer = consumer

    async def run(self, claim_idle_ms: int) -> None:
        last_claim = 0.0
        while True:
            try:
                entries: StreamEntries = []
                if time.monotonic() - last_claim > claim_idle_ms / 2000:
                    entries = await self._queue.claim_stale_events(self._consumer, claim_idle_ms, 200)
                    last_claim = time.monotonic()
                if not entries:
                    entries = await self._queue.read_events(self._consumer, 200, 1000)
                if entries:
                    with tracing.job_span("messaging.trigger_intake", attributes={"rapport.events": len(entries)}):
                        await self.handle(entries)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("trigger_intake_failed", exc_info=True)
                await asyncio.sleep(1.0)

    async def handle(self, entries: StreamEntries) -> int:
        """Schedule what these events trigger, then acknowledge them; returns instances created."""
        rules = await self._rules.refresh()
        by_person: dict[str, list[ProfileEventSummary]] = {}
        for _entry_id, fields in entries:
            try:
                event = json.loads(fields["e"])
            except (KeyError, ValueError):
                continue
            order = event.get("order") or {}
            by_person.setdefault(event["person"], []).append(
                ProfileEventSummary(
                    kind=event.get("type", ""),
                    person_id=event["person"],
                    time_ms=int(event.get("t", 0)),
                    product_id=event.get("product", ""),
                    order_id=order.get("id", ""),
                    product_ids=tuple(order.get("products", ())),
                )
            )

        async def person(person_id: str, events: list[ProfileEventSummary]) -> int:
            facts = await self._people.facts(person_id, now_ms())
            made = 0
            for event in events:
                for instance in triggers_for_event(event, facts, rules):
                    made += int((await self._messaging.schedule(instance))[0])
            return made

        created = await asyncio.gather(*(person(p, events) for p, events in by_person.items()))
        await self._queue.ack_events([entry_id for entry_id, _ in entries])
        return sum(created)


class Dispatcher:
    """Due deliveries -> the send stream (exactly once each, whichever replica moves them)."""

    def __init__(self, queue: MessagingQueue, idle_sleep_s: float = 0.1) -> None:
        self._queue = queue
        self._idle_sleep_s = idle_sleep_s

    async def run(self) -> None:
        while True:
            try:
                moved = await self._queue.dispatch_due(now_ms())
                if moved < 500:
                    await asyncio.sleep(self._idle_sleep_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("dispatch_failed", exc_info=True)
                await asyncio.sleep(1.0)


class Sender:
    def __init__(
        self,
        queue: MessagingQueue,
        store: MessagingStore,
        rules: RuleCatalog,
        people: PersonReader,
        decision: DecisionClient,
        identity: IdentityClient,
        smtp: SmtpSender,
        http: HttpSender,
        tokens: MessageTokens,
        config: SenderConfig,
        consumer: str,
        templates: jinja2.Environment | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self._queue = queue
        self._store = store
        self._rules = rules
        self._people = people
        self._decision = decision
        self._identity = identity
        self._smtp = smtp
        self._http = http
        self._tokens = tokens
        self._config = config
        self._consumer = consumer
        self._renderer = EmailRenderer(templates or create_environment())
        self._rng = random.Random()
        self.metrics = metrics or DeliveryMetrics()

    async def run(self) -> None:
        """Read only as many entries as there are free workers: an entry waiting in a local
        buffer would look idle to the group and be claimed a second time."""
        free = asyncio.Semaphore(self._config.workers)
        running: set[asyncio.Task[None]] = set()
        last_claim = 0.0
        try:
            while True:
                await free.acquire()
                capacity = 1
                while capacity < self._config.workers and not free.locked():
                    await free.acquire()
                    capacity += 1
                entries: StreamEntries = []
                try:
                    if time.monotonic() - last_claim > claim_scan_interval_s(self._config.claim_idle_ms):
                        last_claim = time.monotonic()
                        entries = await self._queue.claim_stale_sends(
                            self._consumer, self._config.claim_idle_ms, capacity
                        )
                        if entries:
                            log.warning("sends_reclaimed", count=len(entries))
                    if not entries:
                        entries = await self._queue.read_sends(self._consumer, capacity, 1000)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("send_queue_read_failed", exc_info=True)
                    await asyncio.sleep(1.0)
                for _ in range(capacity - len(entries)):
                    free.release()
                for entry_id, fields in entries:
                    task = asyncio.create_task(self._guarded(entry_id, fields.get("d", "")))
                    running.add(task)
                    task.add_done_callback(running.discard)
                    task.add_done_callback(lambda _task: free.release())
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _guarded(self, entry_id: str, delivery_id: str) -> None:
        try:
            await self.process(entry_id, delivery_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis or Cassandra failed: the entry stays pending and is claimed again later.
            log.warning("send_failed_unrecorded", delivery=delivery_id, exc_info=True)

    async def process(self, entry_id: str, delivery_id: str) -> DeliveryStatus | None:
        at = now_ms()
        # One sender at a time per delivery: an entry claimed from a slow (not dead) replica
        # waits until that replica's lease ends; a killed replica's lease simply runs out. The
        # step that takes the lease also reads what the send needs from Redis (see take_send).
        taken = await self._queue.take_send(
            entry_id,
            delivery_id,
            self._consumer,
            self._config.claim_idle_ms,
            [day.isoformat() for day in local_days_possible(at)],
        )
        if taken is None:
            return None  # erased, expired, already handled, or another sender's
        delivery = taken.delivery
        # Every way out of _process_leased records an outcome that gives the lease back in the
        # same script; only a failure (Redis, Cassandra, cancellation) leaves it to be released here.
        try:
            if delivery.status.final:  # handled by a send whose acknowledgement was lost
                await self._queue.ack_send(entry_id, delivery_id, self._consumer)
                return None
            send_attributes = {
                "rapport.delivery_id": delivery_id,
                "rapport.channel": delivery.channel,
                "rapport.trigger": delivery.kind,
            }
            with tracing.job_span("messaging.send", trigger_traceparent(delivery.trigger_data), send_attributes):
                return await self._process_leased(entry_id, taken, at)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._queue.release(delivery_id, self._consumer)
            raise

    async def _process_leased(self, entry_id: str, taken: TakenSend, at: int) -> DeliveryStatus | None:
        delivery = taken.delivery  # as the previous holder left it, if any
        delivery_id = delivery.delivery_id
        channel = Channel[delivery.channel]
        # Contact and consent, as they are now (one row, one read), at the start of the send.
        card = await self._store.contact(delivery.person_id)
        contact, consents = card.contact, card.consents
        handed = taken.handed
        if handed is not None:
            # The previous holder handed the email to the server and stopped before recording
            # it: sending it again would be a duplicate (see SmtpSender.send).
            log.warning("delivery_handed_over_before_stop", delivery=delivery_id)
            sent = delivery.with_status(
                DeliveryStatus.SENT,
                attempts=delivery.attempts + 1,
                sent_at_ms=handed.at_ms,
                product_ids=handed.product_ids,
                last_error="",
            )
            cap_key = daily_cap_key(
                delivery.person_id, Channel[delivery.channel], local_day(handed.at_ms, contact.country)
            )
            return await self._close(entry_id, sent, cap_key)
        instance, fired = instance_from_json(delivery.trigger_data)
        rules = await self._rules.refresh()
        if not fired:
            facts = await self._people.facts(delivery.person_id, at, contact)
            verdict = still_due(instance, facts, at, rules)
            if not verdict.send:
                if verdict.recheck_at_ms is not None:
                    await self._queue.requeue(
                        entry_id, _later(delivery, verdict.recheck_at_ms, verdict.reason), self._consumer
                    )
                    return DeliveryStatus.SCHEDULED
                return await self._close(
                    entry_id, delivery.with_status(DeliveryStatus.CANCELLED, reason=verdict.reason)
                )
        consent_name = consents.get(channel.name, ("UNKNOWN", 0))[0]
        consent = ConsentState[consent_name] if consent_name in ConsentState.__members__ else ConsentState.UNKNOWN
        country = contact.country
        day = local_day(at, country)
        cap_key = daily_cap_key(delivery.person_id, channel, day)
        sent_today = taken.sent_on.get(day.isoformat())
        if sent_today is None:  # never: the person's local day is among those read
            sent_today = await self._queue.sent_today(cap_key)
        decision = decide_send(
            channel,
            consent,
            sent_today,
            country,
            at,
            self._config.policy,
            reachable=self._reachable(channel, contact),
        )
        if isinstance(decision, Skip):
            return await self._close(
                entry_id, delivery.with_status(DeliveryStatus.SKIPPED, reason=decision.reason.name)
            )
        if isinstance(decision, DeferUntil):
            await self._queue.requeue(entry_id, _later(delivery, decision.at_ms, "QUIET_HOURS"), self._consumer)
            return DeliveryStatus.SCHEDULED
        attempt = delivery.attempts + 1
        try:
            products = await self._send(delivery, instance, channel, contact)
        except SendError as error:
            if channel is Channel.EMAIL:  # a hand-over may have been recorded before the refusal
                await self._queue.drop_hand_over(delivery_id)
            step = self._config.retry.next_step(attempt, error.permanent, at, self._rng)
            if isinstance(step, DeadLetter):
                dead = delivery.with_status(
                    DeliveryStatus.DEAD, attempts=attempt, last_error=str(error), reason=step.reason
                )
                log.warning("delivery_dead", delivery=delivery_id, error=str(error))
                return await self._close(entry_id, dead)
            retry = delivery.with_status(
                DeliveryStatus.SCHEDULED, attempts=attempt, last_error=str(error), due_at_ms=step.at_ms
            )
            await self._queue.requeue(entry_id, retry, self._consumer)
            return DeliveryStatus.SCHEDULED
        sent = delivery.with_status(
            DeliveryStatus.SENT, attempts=attempt, sent_at_ms=now_ms(), product_ids=tuple(products), last_error=""
        )
        return await self._close(entry_id, sent, cap_key)

    async def _close(self, entry_id: str, delivery: Delivery, cap_key: str | None = None) -> DeliveryStatus:
        recorded = await self._queue.finish(entry_id, delivery, cap_key, self._consumer)
        self.metrics.finished(delivery)
        if not recorded:  # the person was erased while this was in flight: no history to write
            log.info("delivery_erased_in_flight", delivery=delivery.delivery_id, status=delivery.status.name)
            return delivery.status
        try:
            await self._store.save_outcome(delivery)
        except Exception:
            log.warning("delivery_history_write_failed", delivery=delivery.delivery_id, exc_info=True)
        return delivery.status

    def _reachable(self, channel: Channel, contact: Contact) -> bool:
        if channel is Channel.EMAIL:
            return bool(contact.email)
        if channel is Channel.PUSH:
            return bool(contact.push_token and self._config.push_url)
        return bool(contact.email or contact.phone)

    # ------------------------------------------------------------------ channels
    async def _send(
        self, delivery: Delivery, instance: TriggerInstance, channel: Channel, contact: Contact
    ) -> list[str]:
        language = contact.language or self._config.default_language
        if channel is Channel.RETARGETING:
            return await self._join_audience(delivery, instance, contact)
        picks = await self._picks(delivery, instance, language)
        if channel is Channel.EMAIL:
            message = self._email(delivery, instance, contact, language, picks)
            note = await self._queue.hand_over_note(
                delivery.delivery_id, now_ms(), [pick.product_id for pick in picks.items]
            )
            try:
                await self._smtp.send(message, note)
            finally:
                await note.close()
        else:
            link = self._track(delivery, 0, self._config.shop.url)
            if not link.startswith("https://"):
                link = self._config.shop.url if self._config.shop.url.startswith("https://") else "https://invalid"
            payload = push_message(
                instance.kind,
                language,
                contact.push_token,
                self._config.shop,
                link,
                data={"delivery_id": delivery.delivery_id, "products": ",".join(p.product_id for p in picks.items)},
                category=instance.category,
            )
            await self._http.post_json(self._config.push_url, payload, self._config.push_auth_token)
        return [pick.product_id for pick in picks.items]

    async def _picks(self, delivery: Delivery, instance: TriggerInstance, language: str) -> Picks:
        if instance.kind is TriggerKind.ABANDONED_CART:
            # The email shows what was left in the cart (its heading says so), not alternatives.
            in_cart = await self._people.cart(delivery.person_id)
            if in_cart:
                return Picks("", in_cart[:PRODUCTS_PER_MESSAGE], "", "")
        try:
            return await self._decision.picks(
                delivery.person_id,
                PRODUCTS_PER_MESSAGE,
                language,
                product_id=instance.product_ids[0] if instance.product_ids else "",
            )
        except Exception as error:  # the decision service is down or late: retry later
            raise SendError(f"no recommendations: {type(error).__name__}", permanent=False) from error

    def _email(
        self, delivery: Delivery, instance: TriggerInstance, contact: Contact, language: str, picks: Picks
    ) -> OutgoingEmail:
        shop = self._config.shop
        unsubscribe = self._url("u", self._tokens.unsubscribe(Unsubscribe(delivery.person_id, Channel.EMAIL)))
        content = EmailContent(
            kind=instance.kind,
            language=language,
            shop=shop,
            products=tuple(
                RecommendedProduct(
                    pick.product_id, pick.title, pick.price, pick.currency, f"{shop.url}/p/{pick.product_id}"
                )
                for pick in picks.items
            ),
            cta_url=f"{shop.url}/cart" if instance.kind is TriggerKind.ABANDONED_CART else shop.url,
            unsubscribe_url=unsubscribe,
            open_pixel_url=self._url("o", self._tokens.open(Open(delivery.delivery_id))) + ".gif",
            category=instance.category,
        )
        rendered = self._renderer.render(content, lambda index, url: self._track(delivery, index, url))
        return compose_email(
            from_name=shop.name,
            from_address=self._config.sender_address,
            to_address=contact.email,
            subject=rendered.subject,
            date=date_header(),
            # Deterministic: a resend after a crash carries the same id, which mail clients deduplicate.
            message_id=f"<{delivery.delivery_id}@rapport>",
            text=rendered.text_encoded or rendered.text,
            html=rendered.html_encoded or rendered.html,
            extra_headers=(
                ("X-Rapport-Delivery", delivery.delivery_id),
                ("X-Rapport-Trigger", delivery.idempotency_key),
                ("List-Unsubscribe", f"<{unsubscribe}>"),
                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ),
        )

    def _url(self, kind: str, token: str) -> str:
        return f"{self._config.public_url.rstrip('/')}/{kind}/{token}"

    def _track(self, delivery: Delivery, index: int, url: str) -> str:
        return self._url("c", self._tokens.click(Click(delivery.delivery_id, index, url)))

    async def _join_audience(self, delivery: Delivery, instance: TriggerInstance, contact: Contact) -> list[str]:
        madid = ""
        with contextlib.suppress(Exception):
            for identifier in await self._identity.identifiers_of(delivery.person_id):
                if identifier.type == identifier_pb2.IDENTIFIER_TYPE_AD_ID:
                    madid = identifier.value
        member = StoredAudienceMember(
            kind=instance.kind.name,
            person_id=delivery.person_id,
            email_sha256=hash_email(contact.email) if contact.email else "",
            phone_sha256=(hash_phone(contact.phone, contact.country) or "") if contact.phone else "",
            madid=madid,
            country=contact.country,
            product_ids=instance.product_ids,
        )
        try:
            await self._store.add_audience_member(member, now_ms())
            await self._queue.push_audience(json.dumps(member.__dict__ | {"product_ids": list(member.product_ids)}))
        except Exception as error:
            raise SendError(f"audience store failed: {type(error).__name__}", permanent=False) from error
        return list(instance.product_ids)


def _later(delivery: Delivery, at_ms: int, reason: str) -> Delivery:
    return delivery.with_status(DeliveryStatus.SCHEDULED, due_at_ms=at_ms, reason=reason)


class AudienceSync:
    """Retargeting members -> the audience endpoint, in batches; a failed batch is sent again."""

    def __init__(self, queue: MessagingQueue, http: HttpSender, url: str, batch: int, token: str = "") -> None:
        self._queue = queue
        self._http = http
        self._url = url
        self._batch = batch
        self._token = token

    async def run(self, interval_s: float = 1.0) -> None:
        backoff_s = interval_s
        while True:
            try:
                synced = await self.sync_once()
                backoff_s = interval_s
                if synced < self._batch:
                    await asyncio.sleep(interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("audience_sync_failed", error=str(error))
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 60.0)

    async def sync_once(self) -> int:
        items = await self._queue.take_audience_batch(self._batch)
        if not items:
            return 0
        members: dict[str, list[AudienceMember]] = {}
        for item in items:
            data = json.loads(item)
            members.setdefault(data["kind"], []).append(
                AudienceMember(
                    data["email_sha256"],
                    data["phone_sha256"],
                    data["madid"],
                    data["country"],
                    tuple(data["product_ids"]),
                )
            )
        for kind, group in members.items():
            for batch in sync_batches(f"rapport_{kind.lower()}", group, self._batch, include_product_ids=True):
                await self._http.post_json(self._url, batch.payload(), self._token)
        await self._queue.audience_synced()
        return len(items)


def send_policy(quiet_start: str, quiet_end: str, enabled: bool) -> SendPolicy:
    """Quiet hours from settings ("21:00", "08:00"); disabled = an empty window."""
    start = dt.time.fromisoformat(quiet_start)
    end = dt.time.fromisoformat(quiet_end)
    quiet = QuietHours(start, end) if enabled else QuietHours(start, start)
    return SendPolicy(quiet_hours=quiet)
