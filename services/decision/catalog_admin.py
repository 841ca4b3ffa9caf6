"""Catalog imports and stock updates: stored in Redis (the change stream tells every replica),
and applied to this replica's catalog at once so its next answer already knows them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.decision.adapters.redis_store import DecisionStore
from services.decision.domain.catalog import Catalog, Product
from services.decision.learning import product_fields


class CatalogAdmin:
    def __init__(self, store: DecisionStore, catalog: Catalog) -> None:
        self._store = store
        self._catalog = catalog

    async def import_products(self, products: Sequence[Product]) -> None:
        latest = {product.product_id: product for product in products}  # a repeated id: the last wins
        await self._store.save_products(
            {pid: product_fields(product) for pid, product in latest.items()},
            {pid: product.stock for pid, product in latest.items()},
        )
        self._catalog.upsert(latest.values())

    async def update_stock(self, stocks: Mapping[str, int]) -> list[str]:
        """Applies the levels of known products; the unknown product ids."""
        ids = list(stocks)
        known_flags = await self._store.known_products(ids)
        known = {pid: stocks[pid] for pid, known in zip(ids, known_flags, strict=True) if known}
        await self._store.save_stock(known)
        for pid, stock in known.items():
            self._catalog.update_stock(pid, stock)
        return [pid for pid, known in zip(ids, known_flags, strict=True) if not known]
