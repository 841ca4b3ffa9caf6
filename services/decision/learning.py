"""Keeps a replica's in-memory models current: follows the profile event stream (every click,
cart and purchase trains the recommenders at once), the catalog change stream, and the version
of segments, policies and experiments. Replicas agree because they read the same streams."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import RedisError

from services.decision.adapters.redis_store import DecisionStore
from services.decision.domain.catalog import CATEGORY_SEPARATOR, Catalog, Product, consumable_flag
from services.decision.domain.next_item import NextItemRecommender
from services.decision.domain.recommenders import EVENT_WEIGHTS, CoPurchase, Similar, Trending

log = structlog.get_logger("rapport.decision.learning")

READ_COUNT = 2000
# Events learnt between two turns of the event loop: a full read (a replica catching up, a
# burst) would otherwise hold every Decide waiting for ~100 ms.
LEARN_SLICE = 100
BLOCK_MS = 1000
MAX_TRACKED_VISITORS = 500_000


@dataclass
class Models:
    """What one replica learned; every recommender reads it on the hot path."""

    catalog: Catalog
    next_item: NextItemRecommender[str]
    trending: Trending
    co_purchase: CoPurchase
    similar: Similar
    events_learned: int = 0
    stream_position: str = "0-0"
    caught_up: bool = False


def product_from_fields(product_id: str, fields: Mapping[str, Any], stock: int) -> Product:
    attributes = dict(fields.get("attributes") or {})
    return Product(
        product_id=product_id,
        title=str(fields.get("title", "")),
        category_path=tuple(fields.get("category_path") or ()),
        brand=str(fields.get("brand", "")),
        price=float(fields.get("price", 0.0)),
        currency=str(fields.get("currency", "")),
        stock=stock,
        attributes=attributes,
        added_ms=int(fields.get("added_ms", 0)),
        consumable=consumable_flag(attributes),
    )


def product_fields(product: Product) -> dict[str, Any]:
    return {
        "title": product.title,
        "category_path": list(product.category_path),
        "brand": product.brand,
        "price": product.price,
        "currency": product.currency,
        "attributes": dict(product.attributes),
        "added_ms": product.added_ms,
    }


@dataclass
class _Visits:
    """person -> (visit number, last event ms): the session ids the next-item model learns with."""

    timeout_ms: int
    last: dict[str, tuple[int, int]] = field(default_factory=dict)

    def session_of(self, person_id: str, time_ms: int) -> str:
        number, last_ms = self.last.pop(person_id, (0, 0))
        if not number or time_ms - last_ms > self.timeout_ms:
            number += 1
        self.last[person_id] = (number, max(time_ms, last_ms))
        if len(self.last) > MAX_TRACKED_VISITORS:  # forget the least recently active visitor
            del self.last[next(iter(self.last))]
        return f"{person_id}:{number}"


class Learner:
    def __init__(
        self,
        store: DecisionStore,
        models: Models,
        session_timeout_ms: int,
        on_config_change: Callable[[], Any],
        replay_stream: bool,
    ) -> None:
        self._store = store
        self._models = models
        self._visits = _Visits(session_timeout_ms)
        self._on_config_change = on_config_change
        self._replay = replay_stream
        self._catalog_position = "0-0"
        self._config_version = -1

    async def load(self) -> None:
        """Catalog and configuration as they are now; the event stream is then followed."""
        self._catalog_position = await self._store.catalog_position()
        products = await self._store.all_products()
        self._models.catalog.upsert(product_from_fields(pid, fields, stock) for pid, fields, stock in products)
        await self._refresh_config()
        if not self._replay:
            last: list[tuple[str, Any]] = await self._store.redis.xrevrange(self._store.profile_events, count=1)
            self._models.stream_position = last[0][0] if last else "0-0"
        log.info("catalog_loaded", products=len(products))

    async def _refresh_config(self) -> None:
        version = await self._store.config_version()
        if version != self._config_version:
            self._config_version = version
            result = self._on_config_change()
            if asyncio.iscoroutine(result):
                await result

    async def run(self, loaded: bool = False) -> None:
        """Follows the streams for good; Redis outages pause learning, the models keep serving."""
        backoff = 0.1
        while True:
            try:
                if not loaded:
                    await self.load()
                    loaded = True
                await self.step(BLOCK_MS)
                backoff = 0.1
            except RedisError as error:
                log.warning("learning_paused", error=type(error).__name__, retry_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def step(self, block_ms: int | None) -> int:
        """Reads what the streams have (waiting up to block_ms); how many entries were applied."""
        replies: list[tuple[str, list[tuple[str, dict[str, str]]]]] = await self._store.redis.xread(
            {
                self._store.profile_events: self._models.stream_position,
                self._store.catalog_changes: self._catalog_position,
            },
            count=READ_COUNT,
            block=block_ms,
        )
        applied = 0
        for stream, entries in replies or []:
            if stream == self._store.catalog_changes:
                await self._apply_catalog_changes(entries)
            else:
                for position, (entry_id, fields) in enumerate(entries, 1):
                    self._learn(fields.get("e", ""))
                    self._models.stream_position = entry_id
                    if position % LEARN_SLICE == 0:
                        await asyncio.sleep(0)
            applied += len(entries)
        if not replies or all(len(entries) < READ_COUNT for _, entries in replies):
            self._models.caught_up = True
        await self._refresh_config()
        return applied

    async def _apply_catalog_changes(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        changed: set[str] = set()
        for entry_id, fields in entries:
            changed.update(json.loads(fields.get("ids", "[]")))
            self._catalog_position = entry_id
        loaded = await self._store.load_products(sorted(changed))
        self._models.catalog.upsert(product_from_fields(pid, fields, stock) for pid, fields, stock in loaded)

    def _learn(self, raw: str) -> None:
        try:
            event = json.loads(raw)
            person_id = str(event["person"])
            time_ms = int(event["t"])
            kind = str(event["type"])
        except (ValueError, KeyError, TypeError):
            return
        models = self._models
        models.events_learned += 1
        product_id = event.get("product")
        category_path = tuple(str(event.get("category", "")).split(CATEGORY_SEPARATOR)) if event.get("category") else ()
        if kind == "PRODUCT_VIEW" and product_id:
            session_id = self._visits.session_of(person_id, time_ms)
            models.next_item.observe_click(session_id, product_id, time_ms / 1000)
            models.similar.observe_session_view(session_id, product_id, time_ms)
        if product_id and kind in EVENT_WEIGHTS:
            models.trending.observe(product_id, category_path, EVENT_WEIGHTS[kind], time_ms)
        order = event.get("order")
        if kind == "PURCHASE" and isinstance(order, dict):
            products = [str(pid) for pid in order.get("products", [])]
            models.co_purchase.observe_order(products, time_ms)
            for pid in products:
                product = models.catalog.get(pid)
                models.trending.observe(
                    pid, product.category_path if product else (), EVENT_WEIGHTS["PURCHASE"], time_ms
                )
