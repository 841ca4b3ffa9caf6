"""A person's live profile as read from Redis: the folded state plus what reading it needs (price
bands of its categories, RFM ranks). Profile's own reads use it, and so do decision and
messaging, which read the live state directly because it is on their hot path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.profile.adapters.redis_state import RedisProfileState
from services.profile.domain.state import ProfileState
from services.profile.domain.view import NO_RFM, PriceBands, RfmScores, quintile


@dataclass(frozen=True)
class LiveProfile:
    """A person's state with what it takes to read it now.

    `derived` holds what a reader's caller computed from this very profile, under the caller's
    key (decision keeps its visitor facts there): a reader that hands the same profile out again
    (services/profile/reader.py) hands those out with it, and drops them with it."""

    state: ProfileState
    attributes: dict[str, str]
    bands: PriceBands
    rfm: RfmScores
    derived: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def categories_of(state: ProfileState) -> set[str]:
    """The categories whose price distribution reading this state needs."""
    categories = {key.rpartition("|")[0] for key in state.price_affinity}
    if state.session is not None:
        categories.update(state.session.categories)
    for visit in state.past_visits:
        if visit.top_category:
            categories.add(visit.top_category)
    return categories


class PriceDistributionSource(Protocol):
    async def price_distributions(self, categories: Iterable[str]) -> dict[str, dict[int, int]]: ...


class RecentPriceDistributions:
    """The shop-wide price distributions of categories, as read at most `max_age_s` ago.

    They move as products are first seen, not with a visitor's click, so the readers on a hot path
    (decision's Decide, messaging's sends) keep them for a few seconds instead of spending a Redis
    round trip on them per read."""

    def __init__(self, source: PriceDistributionSource, max_age_s: float = 30.0, max_categories: int = 50_000) -> None:
        self._source = source
        self._max_age_s = max_age_s
        self._max_categories = max_categories
        self._read: dict[str, tuple[float, dict[int, int]]] = {}  # category -> (read at, distribution)

    async def price_distributions(self, categories: Iterable[str]) -> dict[str, dict[int, int]]:
        now = time.monotonic()
        fresh_after = now - self._max_age_s
        known: dict[str, dict[int, int]] = {}
        missing: list[str] = []
        for category in categories:
            entry = self._read.get(category)
            if entry is not None and entry[0] > fresh_after:
                if entry[1]:
                    known[category] = entry[1]
            else:
                missing.append(category)
        if missing:
            fetched = await self._source.price_distributions(missing)
            if len(self._read) + len(missing) > self._max_categories:
                self._read.clear()
            for category in missing:
                distribution = fetched.get(category, {})
                self._read[category] = (now, distribution)
                if distribution:
                    known[category] = distribution
        return known


async def complete_live_profile(
    live: RedisProfileState,
    state: ProfileState,
    attributes: dict[str, str],
    prices: PriceDistributionSource | None = None,
) -> LiveProfile:
    """Adds the shop-wide price bands and RFM scores to a state (two Redis reads, concurrent;
    the RFM one only for buyers). `prices` defaults to reading the distributions from `live`."""
    reading_prices = (prices or live).price_distributions(categories_of(state))
    if not state.order_count:
        return LiveProfile(state, attributes, PriceBands(await reading_prices), NO_RFM)

    async def rfm() -> RfmScores:
        ranks = await live.rfm_ranks(state.last_purchase_ms, state.order_count, state.total_spent)
        return RfmScores(*(quintile(lower, ties, total) for lower, ties, total in ranks))

    distributions, scores = await asyncio.gather(reading_prices, rfm())
    return LiveProfile(state, attributes, PriceBands(distributions), scores)
