"""The live side of profile in Redis: each person's folded state, shop-wide price and RFM
distributions, and the stream of applied events that decision and messaging consume.

A state is written only if nobody wrote it since it was read (a revision compare-and-set in
Lua), and the events it applied go onto the stream in the same script: an event is on the
stream exactly when it is in the live state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from services.common.redis import RedisClient, delete_stream_entries

_STORE_SCRIPT = """
local rev = redis.call('HGET', KEYS[1], 'rev')
if (rev or '0') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'rev', tostring(tonumber(ARGV[1]) + 1), 'data', ARGV[2], 'attrs', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
for i = 6, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'e', ARGV[i])
end
return 1
"""

# Registers a product's price in its category once (the set remembers which products counted).
_PRICE_SCRIPT = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return 0
"""

EVENT_STREAM_MAX_LEN = 1_000_000


@dataclass(frozen=True, slots=True)
class StoredState:
    revision: str
    data: dict[str, Any] | None
    attributes: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class EncodedState:
    data: str
    attributes: str


@dataclass(frozen=True, slots=True)
class StateWrite:
    person_id: str
    expected_revision: str
    data: dict[str, Any]
    attributes: Mapping[str, str]
    published_events: Sequence[str]


class RedisProfileState:
    def __init__(self, client: RedisClient, state_ttl_s: int) -> None:
        self._redis: aioredis.Redis = client.redis
        self._pipelined = client.pipelined
        prefix = client.prefix
        self._state_prefix = f"{prefix}profile:state:"
        self._price_prefix = f"{prefix}profile:prices:"
        self._priced_key = f"{prefix}profile:priced"
        self._rfm_keys = {name: f"{prefix}profile:rfm:{name}" for name in ("recency", "frequency", "monetary")}
        self._merged_key = f"{prefix}profile:merged"
        self.event_stream = f"{prefix}profile:events"
        self._state_ttl_s = state_ttl_s
        self._store = self._redis.register_script(_STORE_SCRIPT)
        self._register_price = self._redis.register_script(_PRICE_SCRIPT)

    # ------------------------------------------------------------------ states
    async def load(self, person_ids: Sequence[str]) -> dict[str, StoredState]:
        replies: list[Any]
        if len(person_ids) == 1:  # profile's own single reads: a plain command costs less than a pipeline
            replies = [await self._hmget_state(person_ids[0])]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                for person_id in person_ids:
                    pipe.hmget(self._state_prefix + person_id, "rev", "data", "attrs")
                replies = await pipe.execute()
        loaded: dict[str, StoredState] = {}
        for person_id, (revision, data, attributes) in zip(person_ids, replies, strict=True):
            loaded[person_id] = StoredState(
                revision or "0",
                orjson.loads(data) if data else None,
                orjson.loads(attributes) if attributes else None,
            )
        return loaded

    async def load_encoded(self, person_id: str) -> EncodedState | None:
        """The person's state and attributes as stored (JSON), for a reader that decodes only what
        changed since its last read; None when Redis holds no state for the person."""
        _, data, attributes = await self._hmget_state(person_id)
        return EncodedState(data, attributes or "") if data else None

    async def _hmget_state(self, person_id: str) -> list[str | None]:
        reply: list[str | None] = await self._pipelined.execute(
            "HMGET", self._state_prefix + person_id, "rev", "data", "attrs"
        )
        return reply

    async def store(self, writes: Sequence[StateWrite]) -> list[bool]:
        """Compare-and-set each state; False where someone else wrote it first."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for write in writes:
                await self._store(
                    keys=[self._state_prefix + write.person_id, self.event_stream],
                    args=[
                        write.expected_revision,
                        orjson.dumps(write.data, option=orjson.OPT_NON_STR_KEYS),
                        orjson.dumps(dict(write.attributes)),
                        self._state_ttl_s,
                        EVENT_STREAM_MAX_LEN,
                        *write.published_events,
                    ],
                    client=pipe,
                )
            replies = await pipe.execute()
        return [bool(reply) for reply in replies]

    async def drop(self, person_ids: Iterable[str]) -> None:
        keys = [self._state_prefix + person_id for person_id in person_ids]
        if keys:
            await self._redis.delete(*keys)

    # ------------------------------------------------------------------ shop-wide distributions
    async def register_prices(self, prices: Iterable[tuple[str, str, int]]) -> None:
        """(category, product id, price bucket) seen: each product counts once in its category."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for category, product_id, bucket in prices:
                await self._register_price(
                    keys=[self._priced_key, self._price_prefix + category],
                    args=[f"{category}|{product_id}|{bucket}", bucket],
                    client=pipe,
                )
            await pipe.execute()

    async def price_distributions(self, categories: Iterable[str]) -> dict[str, dict[int, int]]:
        wanted = sorted(set(categories))
        if not wanted:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for category in wanted:
                pipe.hgetall(self._price_prefix + category)
            replies = await pipe.execute()
        return {
            category: {int(bucket): int(count) for bucket, count in reply.items()}
            for category, reply in zip(wanted, replies, strict=True)
            if reply
        }

    async def record_rfm(self, person_id: str, last_purchase_ms: int, order_count: int, total_spent: float) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self._rfm_keys["recency"], {person_id: last_purchase_ms})
            pipe.zadd(self._rfm_keys["frequency"], {person_id: order_count})
            pipe.zadd(self._rfm_keys["monetary"], {person_id: total_spent})
            await pipe.execute()

    async def rfm_ranks(
        self, last_purchase_ms: int, order_count: int, total_spent: float
    ) -> list[tuple[int, int, int]]:
        """(strictly lower, ties, total) among buying customers, for recency, frequency, monetary."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, score in (("recency", last_purchase_ms), ("frequency", order_count), ("monetary", total_spent)):
                key = self._rfm_keys[name]
                pipe.zcount(key, "-inf", f"({score}")
                pipe.zcount(key, score, score)
                pipe.zcard(key)
            replies = await pipe.execute()
        return [(int(replies[i]), int(replies[i + 1]), int(replies[i + 2])) for i in range(0, 9, 3)]

    async def forget_rfm(self, person_ids: Sequence[str]) -> None:
        if not person_ids:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in self._rfm_keys.values():
                pipe.zrem(key, *person_ids)
            await pipe.execute()

    # ------------------------------------------------------------------ merges
    async def mark_merged(self, losers: Sequence[str], survivor: str) -> None:
        if losers:
            await self._redis.hset(self._merged_key, mapping=dict.fromkeys(losers, survivor))

    async def survivors(self, person_ids: Sequence[str]) -> dict[str, str]:
        """Which of these persons were merged away (loser -> survivor), per Redis."""
        if not person_ids:
            return {}
        replies = await self._redis.hmget(self._merged_key, list(person_ids))
        return {person_id: str(survivor) for person_id, survivor in zip(person_ids, replies, strict=True) if survivor}

    async def forget_merged(self, person_ids: Sequence[str]) -> None:
        if person_ids:
            await self._redis.hdel(self._merged_key, *person_ids)

    async def erase_events_about(self, person_ids: set[str]) -> int:
        """Delete stream entries about these persons (GDPR erasure)."""
        return await delete_stream_entries(
            self._redis, self.event_stream, lambda fields: json.loads(fields["e"]).get("person") in person_ids
        )
