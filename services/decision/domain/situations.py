"""Which of the five situations a visitor is in, and the default policy of each: the strategies
the bandit chooses among to lead the list."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from services.decision.domain.visitor import Visitor

DAY_MS = 86_400_000


class Situation(enum.Enum):
    FIRST_VISIT = 1
    RETURN_VISIT = 2
    ABANDONED_CART = 3
    RECENT_BUYER = 4
    LOYAL_CUSTOMER = 5


class Strategy(enum.Enum):
    """Values match rapport.decision.v1.Strategy."""

    SESSION_NEXT_ITEM = 1
    RECENTLY_VIEWED = 2
    SIMILAR_ITEMS = 3
    FREQUENTLY_BOUGHT_TOGETHER = 4
    TRENDING = 5
    AFFINITY = 6
    NEW_ARRIVALS = 7


@dataclass(frozen=True)
class SituationRules:
    recent_buyer_days: float = 30.0
    loyal_min_orders: int = 3
    loyalty_attributes: tuple[str, ...] = ("loyalty_card", "loyalty_tier", "vip_tier")


def situation_of(visitor: Visitor, now_ms: int, rules: SituationRules) -> Situation:
    """The first that holds: abandoned cart, recent buyer, loyal customer, return visit, first visit.

    A cart counts as abandoned once the profile says so, or as soon as the visitor comes back
    with a cart left unbought in an earlier visit (the profile's delay has not run again yet).
    """
    left_in_earlier_visit = (
        visitor.cart_changed_ms > 0
        and visitor.current_visit_start_ms > 0
        and visitor.cart_changed_ms < visitor.current_visit_start_ms
    )
    if (
        visitor.cart_product_ids
        and visitor.last_purchase_ms < visitor.cart_changed_ms
        and (visitor.cart_abandoned or left_in_earlier_visit)
    ):
        return Situation.ABANDONED_CART
    if visitor.last_purchase_ms and now_ms - visitor.last_purchase_ms <= rules.recent_buyer_days * DAY_MS:
        return Situation.RECENT_BUYER
    if (
        visitor.order_count >= rules.loyal_min_orders
        or visitor.vip_tier
        or any(visitor.attributes.get(name) for name in rules.loyalty_attributes)
    ):
        return Situation.LOYAL_CUSTOMER
    if visitor.visit_number >= 2:
        return Situation.RETURN_VISIT
    return Situation.FIRST_VISIT


DEFAULT_STRATEGIES: dict[Situation, tuple[Strategy, ...]] = {
    # engagement: what is popular where the visitor entered
    Situation.FIRST_VISIT: (Strategy.TRENDING, Strategy.SESSION_NEXT_ITEM, Strategy.NEW_ARRIVALS),
    # alternatives to what was left in the cart
    Situation.ABANDONED_CART: (Strategy.SIMILAR_ITEMS, Strategy.SESSION_NEXT_ITEM, Strategy.TRENDING),
    # complements of the last purchase
    Situation.RECENT_BUYER: (Strategy.FREQUENTLY_BOUGHT_TOGETHER, Strategy.AFFINITY, Strategy.SESSION_NEXT_ITEM),
    # the categories that motivated the last visit
    Situation.RETURN_VISIT: (
        Strategy.AFFINITY,
        Strategy.SESSION_NEXT_ITEM,
        Strategy.RECENTLY_VIEWED,
        Strategy.TRENDING,
    ),
    # favourite categories and what is new in them
    Situation.LOYAL_CUSTOMER: (Strategy.AFFINITY, Strategy.NEW_ARRIVALS, Strategy.SESSION_NEXT_ITEM),
}
