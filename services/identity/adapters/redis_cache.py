"""Redis side of identity: identifier -> person cache, merged-person redirects, event stream.

Redis is never the truth: a miss or an outage falls back to Cassandra. Redirects
(`merged:<loser> -> survivor`) make a cached entry that points at a merged-away person resolve
to the survivor in the same round trip.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.redis import RedisClient, delete_stream_entries

# Follows redirects from the cached person to its root, and says whether last_seen is due.
# Keys beyond KEYS[1] are computed in the script: fine on one Redis, not on Redis Cluster.
_RESOLVE_SCRIPT = """
local person = redis.call('GET', KEYS[1])
if not person then return false end
for _ = 1, 32 do
  local survivor = redis.call('GET', ARGV[1] .. person)
  if not survivor then break end
  person = survivor
end
local due = redis.call('SET', ARGV[2] .. person, '1', 'NX', 'EX', ARGV[3])
if due then return {person, 1} end
return {person, 0}
"""

STREAM_MAX_LEN = 1_000_000
# Replies are decoded (decode_responses=True); redis-py types them as bytes | str | None.
StreamEntries = list[tuple[str, dict[str, str]]]


@dataclass(frozen=True)
class CachedPerson:
    person_id: str
    last_seen_due: bool


@dataclass(frozen=True)
class StreamEvent:
    event_id: str
    fields: dict[str, str]


class RedisIdentityCache:
    def __init__(self, client: RedisClient, cache_ttl_s: int, last_seen_every_s: int) -> None:
        self._redis: aioredis.Redis = client.redis
        prefix = client.prefix
        self._identifier_prefix = f"{prefix}identity:idp:"
        self._redirect_prefix = f"{prefix}identity:merged:"
        self._seen_prefix = f"{prefix}identity:seen:"
        self.stream_key = f"{prefix}identity:events"
        self.invalidation_channel = f"{prefix}identity:invalidate"
        self._cache_ttl_s = cache_ttl_s
        # A redirect outlives any cache entry that could point at the merged-away person.
        self._redirect_ttl_s = cache_ttl_s * 2 + 60
        self._last_seen_every_s = last_seen_every_s
        self._resolve = self._redis.register_script(_RESOLVE_SCRIPT)

    async def lookup(self, identifier: str) -> CachedPerson | None:
        try:
            found = await self._resolve(
                keys=[self._identifier_prefix + identifier],
                args=[self._redirect_prefix, self._seen_prefix, self._last_seen_every_s],
            )
        except RedisError:
            return None
        if not found:
            return None
        return CachedPerson(found[0], bool(found[1]))

    async def remember(self, identifiers: Iterable[str], person_id: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for identifier in identifiers:
                    pipe.set(self._identifier_prefix + identifier, person_id, ex=self._cache_ttl_s)
                await pipe.execute()
        except RedisError:
            pass  # the cache is an optimisation; Cassandra answers

    async def redirect(self, losers: Iterable[str], survivor: str) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for loser in losers:
                    pipe.set(self._redirect_prefix + loser, survivor, ex=self._redirect_ttl_s)
                await pipe.execute()
        except RedisError:
            pass

    async def forget(self, identifiers: Iterable[str], person_ids: Iterable[str]) -> None:
        """Erase every key about these identifiers and persons (raises: erasure must be complete)."""
        keys = [self._identifier_prefix + identifier for identifier in identifiers]
        for person_id in person_ids:
            keys += [self._redirect_prefix + person_id, self._seen_prefix + person_id]
        if keys:
            await self._redis.delete(*keys)

    async def forget_identifiers(self, identifiers: Iterable[str]) -> None:
        keys = [self._identifier_prefix + identifier for identifier in identifiers]
        try:
            if keys:
                await self._redis.delete(*keys)
        except RedisError:
            pass

    # near-cache invalidation (pub/sub: fire and forget, the near cache's TTL covers a lost message)
    async def publish_invalidation(self, person_ids: Iterable[str]) -> None:
        with contextlib.suppress(RedisError):
            await self._redis.publish(self.invalidation_channel, json.dumps(sorted(person_ids)))

    async def invalidations(
        self, on_subscribed: Callable[[], None], ping_every_s: float = 5.0
    ) -> AsyncIterator[list[str]]:
        """Person ids named by invalidations, until the connection fails (then it raises)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.invalidation_channel)
            on_subscribed()
            idle_s = 0.0
            while True:
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    idle_s += 1.0
                    if idle_s >= ping_every_s:  # a silent, dead connection must not look healthy
                        await pubsub.ping()
                        idle_s = 0.0
                    continue
                if message.get("type") == "message":
                    yield list(json.loads(message["data"]))
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    # event stream
    async def publish(self, fields: dict[str, str]) -> str:
        entry_id = await self._redis.xadd(
            self.stream_key, dict(fields.items()), maxlen=STREAM_MAX_LEN, approximate=True
        )
        return str(entry_id)

    async def erase_events_about(self, person_ids: set[str]) -> int:
        """Delete stream entries naming any of these persons (GDPR erasure)."""
        return await delete_stream_entries(
            self._redis,
            self.stream_key,
            lambda fields: bool(person_ids.intersection(json.loads(fields.get("persons", "[]")))),
        )

    async def read_events(self, after_event_id: str, block_ms: int) -> AsyncIterator[StreamEvent]:
        """Events after `after_event_id` ("$" = only new ones), forever, in order."""
        cursor = after_event_id
        if cursor == "$":
            latest: StreamEntries = await self._redis.xrevrange(self.stream_key, count=1)  # type: ignore[assignment]
            cursor = latest[0][0] if latest else "0-0"
        while True:
            batches: list[tuple[str, StreamEntries]] | None = await self._redis.xread(  # type: ignore[assignment]
                {self.stream_key: cursor}, count=100, block=block_ms
            )
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    cursor = entry_id
                    yield StreamEvent(entry_id, fields)
