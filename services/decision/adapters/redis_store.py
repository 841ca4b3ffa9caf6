"""Decision's shared state in Redis, so that every replica agrees: the catalog and its change
stream, segments, policies and experiments (with a version number replicas poll), strategy
bandit counts, experiment counts, feedback dedupe, and each person's latest decisions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from redis.exceptions import RedisError, WatchError

from services.common.redis import Command, RedisClient
from services.decision.domain import recent_decisions
from services.decision.domain.recent_decisions import RecordedDecision

log = structlog.get_logger("rapport.decision.store")

CATALOG_CHANGES_MAX_LEN = 200_000
FEEDBACK_MEMORY_S = 7 * 86_400
# Decisions waiting for their write to the persons' lists (written every fraction of a second).
UNWRITTEN_DECISIONS_MAX = 50_000
MERGE_ATTEMPTS = 8


class DecisionStore:
    def __init__(self, client: RedisClient) -> None:
        # redis-py types every reply as bytes | str; the client decodes, so replies are str.
        self._redis: Any = client.redis
        self._pipelined = client.pipelined
        prefix = f"{client.prefix}decision:"
        self._catalog = prefix + "catalog"
        self._stock = prefix + "stock"
        self.catalog_changes = prefix + "catalog:changes"
        self._config = {kind: prefix + kind for kind in ("segments", "policies", "experiments")}
        self._config_version = prefix + "config:version"
        self._bandit_prefix = prefix + "bandit:"
        self._experiment_prefix = prefix + "experiment:"
        self._feedback_prefix = prefix + "feedback:"
        self._recent_prefix = prefix + "recent:"
        self._unwritten_decisions: list[tuple[str, bytes]] = []  # (person id, entry), oldest first
        self._unwritten_exposures: dict[tuple[str, str], int] = {}  # (experiment id, arm) -> count
        self.profile_events = f"{client.prefix}profile:events"

    @property
    def redis(self) -> Any:
        return self._redis

    # ------------------------------------------------------------------ catalog
    async def save_products(self, products: Mapping[str, dict[str, Any]], stocks: Mapping[str, int]) -> None:
        if not products:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._catalog, mapping={pid: json.dumps(p, separators=(",", ":")) for pid, p in products.items()})
            pipe.hset(self._stock, mapping=dict(stocks))
            pipe.xadd(
                self.catalog_changes,
                {"ids": json.dumps(sorted(products))},
                maxlen=CATALOG_CHANGES_MAX_LEN,
                approximate=True,
            )
            await pipe.execute()

    async def known_products(self, product_ids: Sequence[str]) -> list[bool]:
        if not product_ids:
            return []
        found: list[Any] = await self._redis.hmget(self._catalog, list(product_ids))
        return [value is not None for value in found]

    async def save_stock(self, stocks: Mapping[str, int]) -> None:
        if not stocks:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._stock, mapping=dict(stocks))
            pipe.xadd(
                self.catalog_changes,
                {"ids": json.dumps(sorted(stocks))},
                maxlen=CATALOG_CHANGES_MAX_LEN,
                approximate=True,
            )
            await pipe.execute()

    async def load_products(self, product_ids: Sequence[str]) -> list[tuple[str, dict[str, Any], int]]:
        """(id, product fields, stock) of the given products that exist."""
        if not product_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(self._catalog, list(product_ids))
            pipe.hmget(self._stock, list(product_ids))
            products, stocks = await pipe.execute()
        return [
            (pid, json.loads(raw), int(stock or 0))
            for pid, raw, stock in zip(product_ids, products, stocks, strict=True)
            if raw is not None
        ]

    async def all_products(self) -> list[tuple[str, dict[str, Any], int]]:
        loaded: list[tuple[str, dict[str, Any], int]] = []
        stocks: dict[str, str] = await self._redis.hgetall(self._stock)
        async for pid, raw in self._redis.hscan_iter(self._catalog, count=2000):
            loaded.append((pid, json.loads(raw), int(stocks.get(pid) or 0)))
        return loaded

    async def catalog_position(self) -> str:
        """The id of the last catalog change, to follow the stream from after a full load."""
        last: list[tuple[str, Any]] = await self._redis.xrevrange(self.catalog_changes, count=1)
        return last[0][0] if last else "0-0"

    # ------------------------------------------------------------------ configuration
    async def config_version(self) -> int:
        return int(await self._redis.get(self._config_version) or 0)

    async def load_config(self, kind: str) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = await self._redis.hgetall(self._config[kind])
        return {key: json.loads(value) for key, value in raw.items()}

    async def save_config(self, kind: str, key: str, value: Mapping[str, Any], *, only_new: bool = False) -> bool:
        encoded = json.dumps(value, separators=(",", ":"))
        if only_new:
            stored = bool(await self._redis.hsetnx(self._config[kind], key, encoded))
        else:
            await self._redis.hset(self._config[kind], key, encoded)
            stored = True
        if stored:
            await self._redis.incr(self._config_version)
        return stored

    async def config_exists(self, kind: str, key: str) -> bool:
        return bool(await self._redis.hexists(self._config[kind], key))

    async def delete_config(self, kind: str, key: str) -> bool:
        deleted = bool(await self._redis.hdel(self._config[kind], key))
        if deleted:
            await self._redis.incr(self._config_version)
        return deleted

    # ------------------------------------------------------------------ learning
    async def bandit_counts(self, keys: Sequence[str]) -> list[dict[str, float]]:
        """Per situation key: "<strategy>:t" (trials) and "<strategy>:s" (successes)."""
        # On Decide's path (when the replica's beliefs for the key have expired): the pipelined
        # connection, whose HGETALL replies are flat [field, value, …] lists.
        replies = await self._pipelined.execute_many([("HGETALL", self._bandit_prefix + key) for key in keys])
        counts: list[dict[str, float]] = []
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
            counts.append({reply[index]: float(reply[index + 1]) for index in range(0, len(reply), 2)})
        return counts

    async def count_feedback(
        self,
        dedupe_key: str,
        bandit_updates: Iterable[tuple[str, str, float]],
        experiment_updates: Iterable[tuple[str, str, int]],
    ) -> bool:
        """Counts one feedback once: False (and nothing counted) when `dedupe_key` was seen."""
        first = await self._redis.set(self._feedback_prefix + dedupe_key, 1, nx=True, ex=FEEDBACK_MEMORY_S)
        if not first:
            return False
        async with self._redis.pipeline(transaction=True) as pipe:
            for key, field, amount in bandit_updates:
                pipe.hincrbyfloat(self._bandit_prefix + key, field, amount)
            for experiment_id, field, amount in experiment_updates:
                pipe.hincrby(self._experiment_prefix + experiment_id, field, amount)
            await pipe.execute()
        return True

    async def experiment_counts(self, experiment_id: str) -> dict[str, int]:
        await self.write_behind()  # this replica's latest exposures count too
        raw: dict[str, str] = await self._redis.hgetall(self._experiment_prefix + experiment_id)
        return {field: int(value) for field, value in raw.items()}

    def count_exposure(self, experiment_id: str, arm: str) -> None:
        """Counts a Decide shown in an experiment's arm; written with the queued decisions."""
        key = (experiment_id, arm)
        self._unwritten_exposures[key] = self._unwritten_exposures.get(key, 0) + 1

    # ------------------------------------------------------------------ latest decisions
    def remember_decision(self, person_id: str, entry: bytes) -> None:
        """Queues a decision (`recent_decisions.decision_entry`) for the head of the person's
        capped list; `write_behind` writes the queue in one round trip. Decide never waits on it:
        a decision that could not be written only misses from the console."""
        if not person_id:
            return
        if len(self._unwritten_decisions) >= UNWRITTEN_DECISIONS_MAX:
            self._unwritten_decisions.clear()  # Redis has been away for a while: drop, never grow
            log.warning("decisions_not_remembered", reason="queue full")
        self._unwritten_decisions.append((person_id, entry))

    async def write_behind(self) -> int:
        """Writes the queued decisions and exposure counts (one pipeline); how many decisions.
        On a Redis error the batch is logged and dropped: the lists are a console's view, and an
        exposure count missing a fraction of a second is noise in an experiment's report."""
        batch, self._unwritten_decisions = self._unwritten_decisions, []
        exposures, self._unwritten_exposures = self._unwritten_exposures, {}
        if not batch and not exposures:
            return 0
        by_person: dict[str, list[bytes]] = {}
        for person_id, entry in batch:
            by_person.setdefault(person_id, []).append(entry)
        commands: list[Command] = [
            ("HINCRBY", self._experiment_prefix + experiment_id, f"{arm}:exposures", count)
            for (experiment_id, arm), count in exposures.items()
        ]
        for person_id, entries in by_person.items():
            key = self._recent_prefix + person_id
            commands += [
                ("LPUSH", key, *entries),  # oldest first in, so the newest ends at the head
                ("LTRIM", key, 0, recent_decisions.KEPT_PER_PERSON - 1),
                ("EXPIRE", key, recent_decisions.KEPT_FOR_S),
            ]
        try:
            replies = await self._pipelined.execute_many(commands)
        except RedisError as error:
            log.debug("decisions_not_remembered", count=len(batch), error=type(error).__name__)
            return 0
        failed = [reply for reply in replies if isinstance(reply, RedisError)]
        if failed:
            log.warning("decisions_not_remembered", count=len(batch), error=str(failed[0]))
        return len(batch)

    async def recent_decisions(self, person_id: str, limit: int) -> list[RecordedDecision]:
        """The person's latest decisions, newest first (at most `limit`), including those this
        replica has not written yet."""
        await self.write_behind()
        raw: list[str] = await self._redis.lrange(self._recent_prefix + person_id, 0, limit - 1)
        return [decision for decision in map(recent_decisions.read_entry, raw) if decision is not None]

    async def forget_decisions(self, person_ids: Sequence[str]) -> None:
        """GDPR erasure: the persons' latest decisions, and those this replica has not written yet."""
        erased = set(person_ids)
        self._unwritten_decisions = [
            (person, entry) for person, entry in self._unwritten_decisions if person not in erased
        ]
        if erased:
            await self._redis.delete(*(self._recent_prefix + person_id for person_id in sorted(erased)))

    async def move_decisions(self, survivor: str, merged: Sequence[str]) -> None:
        """After a merge: the merged persons' latest decisions join the survivor's list (newest
        first, capped), and their own lists go. Optimistic (WATCH): a Decide writing to one of the
        lists meanwhile makes it start again."""
        losers = [person_id for person_id in merged if person_id != survivor]
        if not losers:
            return
        target = self._recent_prefix + survivor
        sources = [self._recent_prefix + person_id for person_id in losers]
        async with self._redis.pipeline(transaction=True) as pipe:
            for _attempt in range(MERGE_ATTEMPTS):
                try:
                    await pipe.watch(target, *sources)
                    found = [await pipe.lrange(key, 0, -1) for key in (target, *sources)]
                    if not any(found[1:]):
                        await pipe.reset()
                        return
                    entries = recent_decisions.merged_entries(found)
                    pipe.multi()
                    pipe.delete(target, *sources)
                    pipe.rpush(target, *entries)
                    pipe.expire(target, recent_decisions.KEPT_FOR_S)
                    await pipe.execute()
                    return
                except WatchError:
                    continue
        raise WatchError("the latest decisions kept changing while they were being moved")  # retried later
