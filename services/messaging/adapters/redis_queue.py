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
- A sender takes an entry in one script (`take_send`): the working copy, the done marker, a lease
  on the delivery, the entry's existence, a previous holder's hand-over record and the person's
  cap counters, in one round trip; the outcome script acknowledges the entry and gives the lease
  back in another. With the hand-over record, that is three round trips per email.
- An erasure deletes a person's working copies; an outcome recorded after that (a send that
  was in flight) only acknowledges its entry and writes nothing back.
- The scripts, the stream reads of a busy sender and the hand-over record go over the client's
  pipelined connection (services/common/redis.py: one socket, hiredis, about half of redis-py's
  CPU per command); blocking reads of an idle stream and the rare commands use redis-py.

Redis runs with AOF (appendfsync everysec) in the local stack; see README "Messaging".
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
import structlog
from redis.exceptions import ResponseError

from services.common.redis import Command, PipelinedConnection, PipelinedScript, RedisClient, pack_command
from services.messaging.domain.delivery import Delivery, DeliveryStatus
from services.messaging.domain.policy import CAP_COUNTER_TTL_S

log = structlog.get_logger("rapport.messaging.queue")
KEY_TTL_S = 60 * 86_400  # idempotency keys, working copies and done markers outlive any delay
STREAM_MAX_LEN = 1_000_000
SENDERS_GROUP = "senders"
TRIGGERS_GROUP = "messaging-triggers"
_AUDIENCE_PAGE = 1000
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


# A sender taking an entry, in one step. Nothing left to do (the copy erased or expired, or the
# send completed before an acknowledgement was lost): the entry is acknowledged. Another sender
# holds the delivery's lease (an entry claimed from a slow, not dead, replica): nothing, the entry
# stays pending. The entry is gone (the lease's previous holder finished or rescheduled it): the
# lease is given back. Else the lease is this sender's, and the reply carries what the send needs
# from Redis: the copy, the hand-over record a previous holder left, and the person's sent count on
# the channel for each local day given (counters named as `daily_cap_key` names them).
_TAKE = """
-- KEYS[1] working copy, KEYS[2] done marker, KEYS[3] lease, KEYS[4] send stream,
-- KEYS[5] hand-over record; ARGV[1] group, ARGV[2] entry id, ARGV[3] lease owner, ARGV[4] lease ms,
-- ARGV[5] cap counter prefix, ARGV[6..] local days (ISO)
local copy = redis.call('GET', KEYS[1])
if not copy or redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('XACK', KEYS[4], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[4], ARGV[2])
  return {'handled'}
end
if not redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then return {'busy'} end
if #redis.call('XRANGE', KEYS[4], ARGV[2], ARGV[2]) == 0 then
  redis.call('DEL', KEYS[3])
  return {'gone'}
end
local delivery = cjson.decode(copy)
local reply = {'taken', copy, redis.call('GET', KEYS[5]) or ''}
for i = 6, #ARGV do
  local counter = ARGV[5] .. delivery.person_id .. ':' .. delivery.channel .. ':' .. ARGV[i]
  reply[#reply + 1] = redis.call('GET', counter) or '0'
end
return reply
"""

# What every outcome script starts with: the entry acknowledged (and deleted), and the lease given
# back if the sender still holds it (ARGV[1] the sender; the lease key is the last of KEYS).
_ACK_AND_RELEASE = """
redis.call('XACK', KEYS[1], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if redis.call('GET', KEYS[#KEYS]) == ARGV[1] then redis.call('DEL', KEYS[#KEYS]) end
"""

_ACK = (
    """
-- KEYS[1] send stream, KEYS[2] lease; ARGV[1] lease owner, ARGV[2] group, ARGV[3] entry id
"""
    + _ACK_AND_RELEASE
)

# The outcome of a send: the entry is acknowledged (and deleted) in every case; the working copy,
# the done marker and the day's cap count are written only if the copy still exists, so a person
# erased while their message was in flight stays erased.
_FINISH = (
    """
-- KEYS[1] send stream, KEYS[2] working copy, KEYS[3] done marker, KEYS[4] cap counter, KEYS[5] lease;
-- ARGV[1] lease owner, ARGV[2] group, ARGV[3] entry id, ARGV[4] copy, ARGV[5] ttl,
-- ARGV[6] '1' = sent, ARGV[7] '1' = counts toward the cap, ARGV[8] cap counter ttl
"""
    + _ACK_AND_RELEASE
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
if ARGV[6] == '1' then redis.call('SET', KEYS[3], '1', 'EX', ARGV[5]) end
if ARGV[7] == '1' then
  redis.call('INCR', KEYS[4])
  redis.call('EXPIRE', KEYS[4], ARGV[8])
end
return 1
"""
)

# A delivery back to the due set (retry, deferral), unless erased meanwhile; the entry is acknowledged.
_REQUEUE = (
    """
-- KEYS[1] send stream, KEYS[2] working copy, KEYS[3] due set, KEYS[4] lease;
-- ARGV[1] lease owner, ARGV[2] group, ARGV[3] entry id, ARGV[4] copy, ARGV[5] ttl,
-- ARGV[6] delivery id, ARGV[7] due ms
"""
    + _ACK_AND_RELEASE
    + """
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
return 1
"""
)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class HandOverRecord:
    """An email handed to the SMTP server whose outcome was not recorded (yet)."""

    at_ms: int
    product_ids: tuple[str, ...]


def hand_over_from_json(text: str) -> HandOverRecord:
    data = orjson.loads(text)
    return HandOverRecord(int(data["at"]), tuple(data.get("products") or ()))


@dataclass(frozen=True)
class TakenSend:
    """A send entry a sender holds the lease of, as `take_send` read it in one step."""

    delivery: Delivery
    handed: HandOverRecord | None  # what a previous holder handed to the SMTP server, unrecorded
    sent_on: dict[str, int]  # the person's sent count on the channel, by local day (ISO) asked for


class HandOverNote:
    """The record that an email was handed to the SMTP server, written on the pipelined Redis
    connection by a plain socket write in the same step as the email's last line (`write_now`, no
    await in between): a process killed after that step still has the kernel deliver both the line
    to the server and the record to Redis; killed before it, neither. The sender that takes a
    delivery over reads the record (`take_send`) and does not send the email again.

    The record follows the line, so the one remaining window is between those two writes
    (microseconds): killed there, the email is sent again (a duplicate, never a loss)."""

    def __init__(self, connection: PipelinedConnection, command: Command) -> None:
        self._connection = connection
        self._packed = pack_command(command)  # now, so that writing it is one system call
        self._reply: Awaitable[Any] | None = None

    def write_now(self) -> None:
        self._reply = self._connection.write_now(self._packed, "SET")

    async def close(self) -> None:
        """Reads Redis's reply, if the record was written."""
        if self._reply is None:
            return
        try:
            await self._reply
        except Exception:
            log.warning("hand_over_record_unconfirmed", exc_info=True)


def _stream_entries(reply: list[Any] | None) -> StreamEntries:
    """An XREADGROUP reply as hiredis parses it (streams, each a list of [id, [field, value, …]])
    in the shape redis-py gives: (id, {field: value})."""
    return [
        (entry_id, dict(zip(fields[::2], fields[1::2], strict=True)))
        for _stream, entries in reply or ()
        for entry_id, fields in entries
    ]


def delivery_to_json(delivery: Delivery) -> str:
    data = dict(vars(delivery))  # its fields, in order (`asdict` copies them deeply, for nothing here)
    data["status"] = delivery.status.value
    data["product_ids"] = list(delivery.product_ids)
    return orjson.dumps(data).decode()


def delivery_from_json(text: str) -> Delivery:
    data: dict[str, Any] = orjson.loads(text)
    data["status"] = DeliveryStatus(data["status"])
    data["product_ids"] = tuple(data.get("product_ids") or ())
    return Delivery(**data)


class MessagingQueue:
    def __init__(self, client: RedisClient) -> None:
        self.redis: aioredis.Redis = client.redis
        self._pipelined = client.pipelined
        prefix = client.prefix
        self._key_prefix = f"{prefix}messaging:key:"
        self._copy_prefix = f"{prefix}messaging:delivery:"
        self._done_prefix = f"{prefix}messaging:done:"
        self._cap_prefix = f"{prefix}messaging:cap:"
        self._lease_prefix = f"{prefix}messaging:lease:"
        self._handed_prefix = f"{prefix}messaging:handed:"
        self.due_key = f"{prefix}messaging:due"
        self.send_stream = f"{prefix}messaging:send"
        self.audience_pending = f"{prefix}messaging:audience:pending"
        self.audience_inflight = f"{prefix}messaging:audience:inflight"
        self.profile_events = f"{prefix}profile:events"
        self._schedule = PipelinedScript(self._pipelined, _SCHEDULE)
        self._dispatch = PipelinedScript(self._pipelined, _DISPATCH)
        self._release = PipelinedScript(self._pipelined, _RELEASE)
        self._take = PipelinedScript(self._pipelined, _TAKE)
        self._ack = PipelinedScript(self._pipelined, _ACK)
        self._finish = PipelinedScript(self._pipelined, _FINISH)
        self._requeue = PipelinedScript(self._pipelined, _REQUEUE)

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

    async def release(self, delivery_id: str, owner: str) -> None:
        await self._release(keys=[self._lease_prefix + delivery_id], args=[owner])

    # the send stream
    async def read_sends(self, consumer: str, count: int, block_ms: int) -> StreamEntries:
        """Up to `count` new entries for `consumer`, waiting up to `block_ms` for one. A busy
        stream answers at once, on the pipelined connection; only an empty one is waited on, on a
        connection of redis-py's pool, so that the commands sharing the pipelined socket never
        queue behind a blocked read."""
        reply = await self._pipelined.execute(
            "XREADGROUP", "GROUP", SENDERS_GROUP, consumer, "COUNT", count, "STREAMS", self.send_stream, ">"
        )
        if reply or block_ms <= 0:
            return _stream_entries(reply)
        replies: list[tuple[str, StreamEntries]] | None = await self.redis.xreadgroup(  # type: ignore[assignment]
            SENDERS_GROUP, consumer, {self.send_stream: ">"}, count=count, block=block_ms
        )
        return [entry for _stream, entries in replies or [] for entry in entries]

    async def claim_stale_sends(self, consumer: str, idle_ms: int, count: int) -> StreamEntries:
        reply: list[Any] = await self.redis.xautoclaim(  # type: ignore[assignment]
            self.send_stream, SENDERS_GROUP, consumer, min_idle_time=idle_ms, start_id="0-0", count=count
        )
        return [entry for entry in reply[1] if entry and entry[1]]

    async def take_send(
        self, entry_id: str, delivery_id: str, owner: str, lease_ms: int, days: Sequence[str]
    ) -> TakenSend | None:
        """Take an entry of the send stream for `owner`, in one round trip (see _TAKE): None
        when there is nothing to send (erased, done, held by another sender for `lease_ms`, or
        finished meanwhile); else the lease is the owner's until an outcome (`finish`,
        `requeue`, `ack_send`) or `release` gives it back, or it runs out."""
        reply = await self._take(
            keys=[
                self._copy_prefix + delivery_id,
                self._done_prefix + delivery_id,
                self._lease_prefix + delivery_id,
                self.send_stream,
                self._handed_prefix + delivery_id,
            ],
            args=[SENDERS_GROUP, entry_id, owner, lease_ms, self._cap_prefix, *days],
        )
        if reply[0] != "taken":
            return None
        copy, handed, *counts = reply[1:]
        return TakenSend(
            delivery_from_json(str(copy)),
            hand_over_from_json(str(handed)) if handed else None,
            {day: int(count) for day, count in zip(days, counts, strict=True)},
        )

    async def hand_over_note(self, delivery_id: str, at_ms: int, product_ids: Sequence[str]) -> HandOverNote:
        """A hand-over record ready to be written the moment the email's last line is (see
        HandOverNote); the caller closes it."""
        record = orjson.dumps({"at": at_ms, "products": list(product_ids)})
        await self._pipelined.open()  # the note is written without waiting: connected beforehand
        return HandOverNote(self._pipelined, ("SET", self._handed_prefix + delivery_id, record, "EX", KEY_TTL_S))

    async def drop_hand_over(self, delivery_id: str) -> None:
        """The server refused the message or never answered: the delivery may be sent again."""
        await self._pipelined.execute("DEL", self._handed_prefix + delivery_id)

    async def finish(self, entry_id: str, delivery: Delivery, cap_key: str | None, lease_owner: str) -> bool:
        """Record a delivery's outcome and acknowledge its entry, atomically, giving
        `lease_owner`'s lease back. False (only the entry acknowledged) when the delivery was
        erased while it was being sent."""
        recorded = await self._finish(
            keys=[
                self.send_stream,
                self._copy_prefix + delivery.delivery_id,
                self._done_prefix + delivery.delivery_id,
                self._cap_prefix + (cap_key or ""),
                self._lease_prefix + delivery.delivery_id,
            ],
            args=[
                lease_owner,
                SENDERS_GROUP,
                entry_id,
                delivery_to_json(delivery),
                KEY_TTL_S,
                "1" if delivery.status is DeliveryStatus.SENT else "0",
                "1" if cap_key is not None else "0",
                CAP_COUNTER_TTL_S,
            ],
        )
        return bool(recorded)

    async def ack_send(self, entry_id: str, delivery_id: str, lease_owner: str) -> None:
        """Acknowledge (and delete) an entry whose delivery was already handled, giving
        `lease_owner`'s lease on it back."""
        await self._ack(
            keys=[self.send_stream, self._lease_prefix + delivery_id], args=[lease_owner, SENDERS_GROUP, entry_id]
        )

    async def requeue(self, entry_id: str, delivery: Delivery, lease_owner: str) -> None:
        """Put a delivery back in the due set (retry, deferral) and acknowledge its entry,
        atomically, giving `lease_owner`'s lease back; an erased delivery is only
        acknowledged."""
        await self._requeue(
            keys=[
                self.send_stream,
                self._copy_prefix + delivery.delivery_id,
                self.due_key,
                self._lease_prefix + delivery.delivery_id,
            ],
            args=[
                lease_owner,
                SENDERS_GROUP,
                entry_id,
                delivery_to_json(delivery),
                KEY_TTL_S,
                delivery.delivery_id,
                delivery.due_at_ms,
            ],
        )

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
    async def forget_deliveries(self, delivery_ids: Sequence[str], idempotency_keys: Sequence[str]) -> None:
        """Erase these deliveries' working copies, done markers, hand-over records and places in
        the due set, and the idempotency keys of their trigger instances. An entry of the send
        stream may still name one: it holds only the id, and the sender drops it when it finds no
        copy."""
        keys = [self._copy_prefix + delivery_id for delivery_id in delivery_ids]
        keys += [self._done_prefix + delivery_id for delivery_id in delivery_ids]
        keys += [self._handed_prefix + delivery_id for delivery_id in delivery_ids]
        keys += [self._key_prefix + key for key in idempotency_keys]
        async with self.redis.pipeline(transaction=True) as pipe:
            if keys:
                pipe.delete(*keys)
            if delivery_ids:
                pipe.zrem(self.due_key, *delivery_ids)
            await pipe.execute()

    async def forget_person(self, person_id: str, cap_keys: Sequence[str]) -> int:
        """Erase the person's cap counters and their retargeting members waiting to be synced;
        how many members were taken out of the audience queue."""
        if cap_keys:
            await self.redis.delete(*[self._cap_prefix + key for key in cap_keys])
        removed = 0
        # Pending first: a member moved to in-flight meanwhile is then found there.
        for queue in (self.audience_pending, self.audience_inflight):
            for member in await self._audience_members_of(queue, person_id):
                removed += int(await self.redis.lrem(queue, 0, member))  # type: ignore[misc]
        return removed

    async def _audience_members_of(self, queue: str, person_id: str) -> list[str]:
        members: list[str] = []
        start = 0
        while True:
            page = [str(item) for item in await self.redis.lrange(queue, start, start + _AUDIENCE_PAGE - 1)]  # type: ignore[misc]
            for item in page:
                try:
                    if json.loads(item).get("person_id") == person_id:
                        members.append(item)
                except (ValueError, AttributeError):
                    continue
            if len(page) < _AUDIENCE_PAGE:
                return members
            start += _AUDIENCE_PAGE
