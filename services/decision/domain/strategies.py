"""Each strategy turns the visitor, the page and the models into ranked candidates with a reason;
the policy's lead strategy (the bandit's pick) comes first, the others fill in."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from services.decision.domain.catalog import ALL_PRODUCTS, Catalog
from services.decision.domain.next_item import NextItemRecommender
from services.decision.domain.recommenders import (
    AffinityPicks,
    Candidate,
    CoPurchase,
    NewArrivals,
    Similar,
    Trending,
    recently_viewed,
)
from services.decision.domain.situations import Situation, Strategy
from services.decision.domain.visitor import Visitor

# Later strategies in the list weigh less when the lists are blended.
FOLLOWER_WEIGHTS = (1.0, 0.5, 0.35, 0.25, 0.2, 0.15, 0.1)


@dataclass(frozen=True)
class Page:
    product_id: str = ""
    category: str = ""  # key, "Women > Knitwear"
    cart_product_ids: tuple[str, ...] = ()
    search_query: str = ""


@dataclass
class Recommenders:
    catalog: Catalog
    next_item: NextItemRecommender[str]
    trending: Trending
    co_purchase: CoPurchase
    similar: Similar
    new_arrivals: NewArrivals
    affinity: AffinityPicks


def _title(catalog: Catalog, product_id: str) -> str:
    product = catalog.get(product_id)
    return product.title if product is not None and product.title else product_id


def candidates(
    strategy: Strategy,
    models: Recommenders,
    visitor: Visitor,
    page: Page,
    situation: Situation | None,
    count: int,
    exclude: Collection[str],
) -> list[Candidate]:
    """Up to `count` candidates of one strategy (before business rules)."""
    catalog = models.catalog
    viewed = list(visitor.session_product_ids)
    if page.product_id and (not viewed or viewed[-1] != page.product_id):
        viewed.append(page.product_id)
    page_product = catalog.get(page.product_id) if page.product_id else None
    focus = page.category or (page_product.category if page_product is not None else "")
    if not focus:
        if situation is Situation.RETURN_VISIT and visitor.previous_visit_category:
            focus = visitor.previous_visit_category
        else:
            focus = visitor.entry_category or visitor.top_category
    if strategy is Strategy.SESSION_NEXT_ITEM:
        if not viewed:
            return []
        last = _title(catalog, viewed[-1])
        return [
            Candidate(pid, score, "SESSION_NEXT_ITEM", f"Viewed next by visitors who viewed {last}")
            for pid, score in models.next_item.recommend(viewed[-20:], count, exclude=exclude)
            if score > 0
        ]
    if strategy is Strategy.RECENTLY_VIEWED:
        return recently_viewed(catalog, reversed(visitor.session_product_ids), count, exclude)
    if strategy is Strategy.SIMILAR_ITEMS:
        seeds = _seeds_for_alternatives(visitor, page, situation)
        return models.similar.alternatives(seeds, count, exclude) if seeds else []
    if strategy is Strategy.FREQUENTLY_BOUGHT_TOGETHER:
        seeds = _seeds_for_complements(visitor, page, situation)
        return models.co_purchase.complements(seeds, count, exclude) if seeds else []
    if strategy is Strategy.TRENDING:
        found = models.trending.top(count, focus, exclude) if focus else []
        if len(found) < count:
            found += models.trending.top(count - len(found), ALL_PRODUCTS, {*exclude, *(c.product_id for c in found)})
        return found
    if strategy is Strategy.AFFINITY:
        weights = dict(visitor.category_affinity)
        if situation is Situation.RETURN_VISIT and visitor.previous_visit_category:
            weights[visitor.previous_visit_category] = weights.get(visitor.previous_visit_category, 0.0) + 1.0
        if not weights and focus:
            weights[focus] = 1.0
        return models.affinity.picks(weights, visitor.price_band or None, count, exclude) if weights else []
    if strategy is Strategy.NEW_ARRIVALS:
        favourites = sorted(visitor.category_affinity, key=lambda key: -visitor.category_affinity[key])[:3]
        if focus and focus not in favourites:
            favourites.insert(0, focus)
        return models.new_arrivals.new_in(favourites or [ALL_PRODUCTS], count, exclude)
    return []


def _seeds_for_alternatives(visitor: Visitor, page: Page, situation: Situation | None) -> list[str]:
    if situation is Situation.ABANDONED_CART and visitor.cart_product_ids:
        return list(visitor.cart_product_ids)
    if page.product_id:
        return [page.product_id]
    return list(reversed(visitor.session_product_ids[-3:]))


def _seeds_for_complements(visitor: Visitor, page: Page, situation: Situation | None) -> list[str]:
    if situation is Situation.RECENT_BUYER and visitor.last_purchase_product_ids:
        return list(visitor.last_purchase_product_ids)
    if page.cart_product_ids or visitor.cart_product_ids:
        return list(page.cart_product_ids or visitor.cart_product_ids)
    return [page.product_id] if page.product_id else []
