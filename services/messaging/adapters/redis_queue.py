"""Redis side of messaging: the durable send pipeline and its working state.

- A trigger instance is claimed and scheduled in one script: its idempotency key (SET NX) and
  its deliveries (working copies plus members of the `due` sorted set, scored by due time). A
  key seen before schedules nothing; an abandoned cart touched again pushes its send later.
- The dispatcher moves due deliveries from the sorted set to the `send` stream in one script:
  each is enqueued exactly once, whichever replica runs it.
- Senders read the stream in a consumer group. An entry is acknowledged (and deleted) in the
  same transaction that records its outcome; a sender killed mid-send leaves its entry pending,
  and another sender (or its restart) claims it after `claim_idle_ms`.
- A `done` marker per delivery makes a redelivered entry whose send had completed a no-op.

Redis runs with AOF (appendfsync everysec) in the local stack; see README "Messaging".
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from services.common.redis import RedisClient
from services.messaging.domain.delivery import Delivery, DeliveryStatus

KEY_TTL_S = 60 * 86_400  # idempotency keys, working copies and done markers outlive any delay
STREAM_MAX_LEN = 1_000_000
SENDERS_GROUP = "senders"
TRIGGERS_GROUP = "messaging-triggers"
# Replies are decoded (decode_responses=True).
StreamEntries = list[tuple[str, dict[str, str]]]

_SCHEDULE = """
-- KEYS[1] idempotency key, KEYS[2] due set; ARGV[1] ttl, ARGV[2] due ms, ARGV[3] working-copy prefix,
-- ARGV[4] ids (JSON), ARGV[5] postpone ('1': a repeat pushes a pending send to the new due time),
-- then id, copy pairs.
if redis.call('SET', KEYS[1], ARGV[4], 'NX', 'EX', ARGV[1]) then
  for i = 6, #ARGV, 2 do
    redis.call('SET', ARGV[3] .. ARGV[i], ARGV[i + 1], 'EX', ARGV[1])
    redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
  end
  return {1, ARGV[4]}
end
local ids = redis.call('GET', KEYS[1])
if ARGV[5] == '1' then
  for _, id in ipairs(cjson.decode(ids)) do
    redis.call('ZADD', KEYS[2], 'XX', 'GT', ARGV[2], id)
  end
end
return {0, ids}
"""

_DISPATCH = """
-- KEYS[1] due set, KEYS[2] send stream; ARGV[1] now ms, ARGV[2] limit, ARGV[3] stream max length
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'd', id)
end
return #due
"""


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def delivery_to_json(delivery: Delivery) -> str:
    data = asdict(delivery)
    data["status"] = delivery.status.value
    data["product_ids"] = list(delivery.product_ids)
    return json.dumps(data, separators=(",", ":"))


def delivery_from_json(text: str) -> Delivery:
    data: dict[str, Any] = json.loads(text)
    data["status"] = DeliveryStatus(data["status"])
    data["product_ids"] = tuple(data.get("product_ids") or ())
    return Delivery(**data)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class MessagingQueue:
    def __init__(self, client: RedisClient) -> None:
        self.redis: aioredis.Redis = client.redis
        prefix = client.prefix
        self._key_prefix = f"{prefix}messaging:key:"
        self._copy_prefix = f"{prefix}messaging:delivery:"
        self._done_prefix = f"{prefix}messaging:done:"
        self._cap_prefix = f"{prefix}messaging:cap:"
        self._lease_prefix = f"{prefix}messaging:lease:"
        self.due_key = f"{prefix}messaging:due"
        self.send_stream = f"{prefix}messaging:send"
        self.audience_pending = f"{prefix}messaging:audience:pending"
        self.audience_inflight = f"{prefix}messaging:audience:inflight"
        self.profile_events = f"{prefix}profile:events"
        self._schedule = self.redis.register_script(_SCHEDULE)
        self._dispatch = self.redis.register_script(_DISPATCH)
        self._release = self.redis.register_script(_RELEASE)

    async def ensure_groups(self, events_from: str = "$") -> None:
        for stream, group, start in (
            (self.send_stream, SENDERS_GROUP, "0"),
            (self.profile_events, TRIGGERS_GROUP, events_from),
        ):
            try:
                await self.redis.xgroup_create(stream, group, id=start, mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    # scheduling
    async def schedule(self, key: str, deliveries: Sequence[Delivery], postpone: bool) -> tuple[bool, list[str]]:
        """(created, delivery ids): created is False when the key had been seen."""
        ids = [delivery.delivery_id for delivery in deliveries]
        pairs: list[str] = []
        for delivery in deliveries:
            pairs += [delivery.delivery_id, delivery_to_json(delivery)]
        due_ms = min((delivery.due_at_ms for delivery in deliveries), default=0)
        created, stored_ids = await self._schedule(
            keys=[self._key_prefix + key, self.due_key],
            args=[KEY_TTL_S, due_ms, self._copy_prefix, json.dumps(ids), "1" if postpone else "0", *pairs],
        )
        return bool(created), list(json.loads(stored_ids))

    async def reschedule(self, delivery: Delivery) -> None:
        """Store the copy and put it back in the due set (retry, quiet hours, replay)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._copy_prefix + delivery.delivery_id, delivery_to_json(delivery), ex=KEY_TTL_S)
            pipe.zadd(self.due_key, {delivery.delivery_id: delivery.due_at_ms})
            await pipe.execute()

    async def cancel(self, delivery: Delivery) -> bool:
        """Take a scheduled delivery out of the due set; False when it was already dispatched."""
        removed = await self.redis.zrem(self.due_key, delivery.delivery_id)
        if removed:
            await self.save_copy(delivery)
        return bool(removed)

    async def dispatch_due(self, now_ms: int, limit: int = 500) -> int:
        moved = await self._dispatch(keys=[self.due_key, self.send_stream], args=[now_ms, limit, STREAM_MAX_LEN])
        return int(moved)

    async def next_due_ms(self) -> int | None:
        first = await self.redis.zrange(self.due_key, 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    # working copies
    async def copy(self, delivery_id: str) -> Delivery | None:
        text = await self.redis.get(self._copy_prefix + delivery_id)
        return delivery_from_json(str(text)) if text else None

    async def copies(self, delivery_ids: Sequence[str]) -> dict[str, Delivery]:
        if not delivery_ids:
            return {}
        texts = await self.redis.mget([self._copy_prefix + delivery_id for delivery_id in delivery_ids])
        return {
            delivery_id: delivery_from_json(str(text))
            for delivery_id, text in zip(delivery_ids, texts, strict=True)
            if text
        }

    async def save_copy(self, delivery: Delivery) -> None:
        await self.redis.set(self._copy_prefix + delivery.delivery_id, delivery_to_json(delivery), ex=KEY_TTL_S)

    async def lease(self, delivery_id: str, owner: str, lease_ms: int) -> bool:
        """Exclusive right to send this delivery for `lease_ms` (dies with its holder)."""
        return bool(await self.redis.set(self._lease_prefix + delivery_id, owner, nx=True, px=lease_ms))

    async def release(self, delivery_id: str, owner: str) -> None:
        await self._release(keys=[self._lease_prefix + delivery_id], args=[owner])

    async def entry_exists(self, entry_id: str) -> bool:
        return bool(await self.redis.xrange(self.send_stream, entry_id, entry_id))

    async def is_done(self, delivery_id: str) -> bool:
        return bool(await self.redis.exists(self._done_prefix + delivery_id))

    # the send stream
    async def read_sends(self, consumer: str, count: int, block_ms: int) -> StreamEntries:
        replies: list[tuple[str, StreamEntries]] | None = await self.redis.xreadgroup(  # type: ignore[assignment]
            SENDERS_GROUP, consumer, {self.send_stream: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, entries in replies or [] for entry in entries]

    async def claim_stale_sends(self, consumer: str, idle_ms: int, count: int) -> StreamEntries:
        reply: list[Any] = await self.redis.xautoclaim(  # type: ignore[assignment]
            self.send_stream, SENDERS_GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
        )
        return [entry for entry in reply[1] if entry and entry[1]]

    async def finish(self, entry_id: str, delivery: Delivery, cap_key: str | None) -> None:
        """Record a delivery's outcome and acknowledge its entry, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._copy_prefix + delivery.delivery_id, delivery_to_json(delivery), ex=KEY_TTL_S)
            if delivery.status is DeliveryStatus.SENT:
                pipe.set(self._done_prefix + delivery.delivery_id, "1", ex=KEY_TTL_S)
            if cap_key is not None:
                pipe.incr(self._cap_prefix + cap_key)
                pipe.expire(self._cap_prefix + cap_key, 2 * 86_400)
            pipe.xack(self.send_stream, SENDERS_GROUP, entry_id)
            pipe.xdel(self.send_stream, entry_id)
            await pipe.execute()

    async def ack_send(self, entry_id: str) -> None:
        """Acknowledge (and delete) an entry whose delivery was already handled or is gone."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.send_stream, SENDERS_GROUP, entry_id)
            pipe.xdel(self.send_stream, entry_id)
            await pipe.execute()

    async def requeue(self, entry_id: str, delivery: Delivery) -> None:
        """Put a delivery back in the due set (retry, deferral) and acknowledge its entry, atomically."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._copy_prefix + delivery.delivery_id, delivery_to_json(delivery), ex=KEY_TTL_S)
            pipe.zadd(self.due_key, {delivery.delivery_id: delivery.due_at_ms})
            pipe.xack(self.send_stream, SENDERS_GROUP, entry_id)
            pipe.xdel(self.send_stream, entry_id)
            await pipe.execute()

    async def sent_today(self, cap_key: str) -> int:
        value = await self.redis.get(self._cap_prefix + cap_key)
        return int(value) if value else 0

    async def backlog(self) -> tuple[int, int]:
        """(scheduled, queued-or-in-flight) deliveries."""
        scheduled = await self.redis.zcard(self.due_key)
        try:
            groups = await self.redis.xinfo_groups(self.send_stream)
        except ResponseError:
            return int(scheduled), 0
        in_flight = sum(int(group.get("pending", 0)) + int(group.get("lag") or 0) for group in groups)
        return int(scheduled), in_flight

    async def depths(self) -> dict[str, int]:
        """The size of each queue of the pipeline, in one round trip (metrics)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.due_key)
            pipe.xlen(self.send_stream)
            pipe.xinfo_groups(self.send_stream)
            pipe.llen(self.audience_pending)
            pipe.llen(self.audience_inflight)
            replies = await pipe.execute(raise_on_error=False)
        for reply in (replies[0], replies[1], replies[3], replies[4]):
            if isinstance(reply, Exception):
                raise reply
        scheduled, stream_length, groups, audience_pending, audience_inflight = replies
        if isinstance(groups, Exception):  # no send stream yet
            groups = []
        senders: dict[str, Any] = next((group for group in groups if group.get("name") == SENDERS_GROUP), {})
        in_flight = int(senders.get("pending") or 0)
        lag = senders.get("lag")
        # Acknowledged entries are deleted, so what is left beyond the pending ones is unread;
        # Redis gives no lag after some deletions.
        queued = int(lag) if lag is not None else max(int(stream_length) - in_flight, 0)
        return {
            "scheduled": int(scheduled),
            "send_queued": queued,
            "send_in_flight": in_flight,
            "audience_pending": int(audience_pending),
            "audience_in_flight": int(audience_inflight),
        }

    # the profile event stream
    async def read_events(self, consumer: str, count: int, block_ms: int) -> StreamEntries:
        replies: list[tuple[str, StreamEntries]] | None = await self.redis.xreadgroup(  # type: ignore[assignment]
            TRIGGERS_GROUP, consumer, {self.profile_events: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, entries in replies or [] for entry in entries]

    async def claim_stale_events(self, consumer: str, idle_ms: int, count: int) -> StreamEntries:
        reply: list[Any] = await self.redis.xautoclaim(  # type: ignore[assignment]
            self.profile_events, TRIGGERS_GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
        )
        return [entry for entry in reply[1] if entry and entry[1]]

    async def ack_events(self, entry_ids: Sequence[str]) -> None:
        if entry_ids:
            await self.redis.xack(self.profile_events, TRIGGERS_GROUP, *entry_ids)

    # retargeting audience sync (a reliable list: members move to in-flight until the sync succeeds)
    async def push_audience(self, member_json: str) -> None:
        await self.redis.rpush(self.audience_pending, member_json)

    async def take_audience_batch(self, size: int) -> list[str]:
        inflight = [str(item) for item in await self.redis.lrange(self.audience_inflight, 0, -1)]  # type: ignore[misc]
        if inflight:
            return inflight  # a sync that failed or died: send the same batch again
        batch: list[str] = []
        for _ in range(size):
            item = await self.redis.lmove(self.audience_pending, self.audience_inflight, "LEFT", "RIGHT")
            if item is None:
                break
            batch.append(str(item))
        return batch

    async def audience_synced(self) -> None:
        await self.redis.delete(self.audience_inflight)

    # erasure
    async def forget(self, delivery_ids: Sequence[str]) -> None:
        keys = [self._copy_prefix + delivery_id for delivery_id in delivery_ids]
        keys += [self._done_prefix + delivery_id for delivery_id in delivery_ids]
        if keys:
            await self.redis.delete(*keys)
        if delivery_ids:
            await self.redis.zrem(self.due_key, *delivery_ids)
