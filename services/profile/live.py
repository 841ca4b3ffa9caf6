"""A person's live profile as read from Redis: the folded state plus what reading it needs (price
bands of its categories, RFM ranks). Profile's own reads use it, and so do decision and
messaging, which read the live state directly because it is on their hot path."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from services.profile.adapters.redis_state import RedisProfileState
from services.profile.domain.state import ProfileState
from services.profile.domain.view import NO_RFM, PriceBands, RfmScores, quintile


@dataclass(frozen=True)
class LiveProfile:
    """A person's state with what it takes to read it now."""

    state: ProfileState
    attributes: dict[str, str]
    bands: PriceBands
    rfm: RfmScores


def categories_of(state: ProfileState) -> set[str]:
    """The categories whose price distribution reading this state needs."""
    categories = {key.rpartition("|")[0] for key in state.price_affinity}
    if state.session is not None:
        categories.update(state.session.categories)
    for visit in state.past_visits:
        if visit.top_category:
            categories.add(visit.top_category)
    return categories


async def complete_live_profile(
    live: RedisProfileState, state: ProfileState, attributes: dict[str, str]
) -> LiveProfile:
    """Adds the shop-wide price bands and RFM scores to a state (two Redis reads, concurrent)."""

    async def rfm() -> RfmScores:
        if not state.order_count:
            return NO_RFM
        ranks = await live.rfm_ranks(state.last_purchase_ms, state.order_count, state.total_spent)
        return RfmScores(*(quintile(lower, ties, total) for lower, ties, total in ranks))

    distributions, scores = await asyncio.gather(live.price_distributions(categories_of(state)), rfm())
    return LiveProfile(state, attributes, PriceBands(distributions), scores)
