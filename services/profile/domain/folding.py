"""Folding events into a person's live state, in time order.

`fold(events)` from an empty state and `apply` one event at a time from a stored state give
the same result when the events come in the same (time, id) order: that is what lets Redis be
rebuilt from the Cassandra log, and what makes a late event (older than the state) trigger a
rebuild instead of being applied out of order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from services.profile.domain.events import EventKind, Product, TrackedEvent
from services.profile.domain.state import (
    CartLineState,
    Decayed,
    ProfileState,
    PurchaseRecord,
    SessionState,
    VisitSummary,
)
from services.profile.domain.traffic import classify_traffic, host_of

MINUTE_MS = 60_000
DAY_MS = 86_400_000
PRICE_BUCKET_RATIO = 1.25  # prices within 25% of each other share a bucket
PROMO_URL_MARKERS = ("sale", "promo", "soldes", "deal", "discount", "outlet", "clearance", "coupon", "black-friday")
RATING_SORT_MARKERS = ("sort=rating", "sort=reviews", "sort=top_rated", "sort=best_rated", "orderby=rating")
OFF_SITE_KINDS = frozenset({EventKind.EMAIL_OPEN, EventKind.PUSH_OPEN})
MAX_SEARCHES = 20
MAX_SEQUENCE = 40
MAX_PAST_VISITS = 10
MAX_RECENT_PURCHASES = 20
MAX_BOUGHT_PRODUCTS = 500
MAX_AFFINITY_KEYS = 200

# How much an event says about a taste: a purchase says more than a glance.
AFFINITY_WEIGHTS = {
    EventKind.CATEGORY_VIEW: 0.5,
    EventKind.PRODUCT_VIEW: 1.0,
    EventKind.REVIEW_READ: 1.0,
    EventKind.ADD_TO_CART: 3.0,
    EventKind.PURCHASE: 5.0,
}


@dataclass(frozen=True)
class FoldRules:
    session_timeout_ms: int = 30 * MINUTE_MS
    affinity_half_life_ms: int = 14 * DAY_MS
    remembered_event_ids: int = 500


def price_bucket(price: float) -> int | None:
    """A log-scale price bucket; compared with a category's distribution when the profile is read."""
    if price <= 0:
        return None
    return math.floor(math.log(price) / math.log(PRICE_BUCKET_RATIO))


def decayed(value: Decayed, now_ms: int, half_life_ms: int) -> float:
    if now_ms <= value.at_ms:
        return value.score
    return float(value.score * 0.5 ** ((now_ms - value.at_ms) / half_life_ms))


def fold(person_id: str, events: Iterable[TrackedEvent], rules: FoldRules) -> ProfileState:
    """The state a person's whole history leaves; duplicates (same event id) count once."""
    state = ProfileState(person_id)
    seen: set[str] = set()
    for event in sorted(events, key=lambda e: e.order_key):
        if event.event_id in seen:
            continue
        seen.add(event.event_id)
        apply(state, event, rules)
    return state


def comes_after(state: ProfileState, event: TrackedEvent) -> bool:
    """True when `event` can be applied on top of `state` without reordering history."""
    return event.order_key > (state.last_event_ms, state.last_event_id)


def apply(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    """Apply one event that `comes_after` the state."""
    if event.kind not in OFF_SITE_KINDS:
        _visit(state, event, rules)
    _remember_device_and_geo(state, event)
    handler = _HANDLERS.get(event.kind)
    if handler is not None:
        handler(state, event, rules)
    state.event_count += 1
    if not state.first_event_ms:
        state.first_event_ms = event.time_ms
    state.last_event_ms, state.last_event_id = event.time_ms, event.event_id
    state.recent_event_ids.append(event.event_id)
    if len(state.recent_event_ids) > rules.remembered_event_ids:
        del state.recent_event_ids[: len(state.recent_event_ids) - rules.remembered_event_ids]


# ------------------------------------------------------------------------------------- visits
def _visit(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    session = state.session
    if session is None or event.time_ms - session.last_ms > rules.session_timeout_ms:
        if session is not None:
            state.past_visits.append(_summarise(session))
            del state.past_visits[:-MAX_PAST_VISITS]
            state.previous_visit_ms = session.start_ms
        context = event.context
        source = (
            "EMAIL"
            if event.kind is EventKind.EMAIL_CLICK
            else classify_traffic(context.referrer, context.utm_source, context.utm_medium, _host(context.page_url))
        )
        state.session = session = SessionState(
            start_ms=event.time_ms,
            last_ms=event.time_ms,
            traffic_source=source,
            utm_source=context.utm_source,
            utm_medium=context.utm_medium,
            utm_campaign=context.utm_campaign,
            landing_page_url=context.page_url,
        )
        state.visit_count += 1
        if not state.first_visit_ms:
            state.first_visit_ms = event.time_ms
    session.last_ms = event.time_ms
    if event.kind.is_page:
        session.page_count += 1
    url = event.context.page_url.lower()
    if url:
        if any(marker in url for marker in PROMO_URL_MARKERS):
            session.promo_pages += 1
            state.promo_pages += 1
        if any(marker in url for marker in RATING_SORT_MARKERS):
            session.rating_sorts += 1
            state.rating_sorts += 1


def _host(url: str) -> str:
    return host_of(url) if url else ""


def _summarise(session: SessionState) -> VisitSummary:
    top_category = max(session.categories.items(), key=lambda item: (item[1], item[0]))[0] if session.categories else ""
    top_bucket = (
        int(max(session.price_buckets.items(), key=lambda item: (item[1], int(item[0])))[0])
        if session.price_buckets
        else None
    )
    return VisitSummary(session.start_ms, session.page_count, top_category, top_bucket)


def _remember_device_and_geo(state: ProfileState, event: TrackedEvent) -> None:
    context = event.context
    if context.device_type:
        state.device_type, state.os, state.browser = context.device_type, context.os, context.browser
    if context.country:
        state.country, state.city = context.country, context.city
    if context.language:
        state.language = context.language


# ------------------------------------------------------------------------------------- tastes
def _add_affinity(table: dict[str, Decayed], key: str, weight: float, at_ms: int, half_life_ms: int) -> None:
    if not key:
        return
    current = table.get(key)
    if current is None:
        if len(table) >= MAX_AFFINITY_KEYS:
            weakest = min(table, key=lambda k: (decayed(table[k], at_ms, half_life_ms), k))
            del table[weakest]
        table[key] = Decayed(weight, at_ms)
    else:
        table[key] = Decayed(decayed(current, at_ms, half_life_ms) + weight, at_ms)


def _taste(state: ProfileState, product: Product, weight: float, at_ms: int, rules: FoldRules) -> None:
    half_life = rules.affinity_half_life_ms
    category = product.category
    _add_affinity(state.category_affinity, category, weight, at_ms, half_life)
    _add_affinity(state.brand_affinity, product.brand, weight, at_ms, half_life)
    bucket = price_bucket(product.price)
    if category and bucket is not None:
        _add_affinity(state.price_affinity, f"{category}|{bucket}", weight, at_ms, half_life)


def _seen_in_session(state: ProfileState, product: Product) -> None:
    session = state.session
    if session is None:
        return
    category = product.category
    if category:
        session.categories[category] = session.categories.get(category, 0) + 1
    bucket = price_bucket(product.price)
    if bucket is not None:
        session.price_buckets[str(bucket)] = session.price_buckets.get(str(bucket), 0) + 1


# ------------------------------------------------------------------------------------- handlers
def _category_view(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    if event.product is not None:
        if state.session is not None and event.product.category:
            category = event.product.category
            state.session.categories[category] = state.session.categories.get(category, 0) + 1
        _taste(state, event.product, AFFINITY_WEIGHTS[EventKind.CATEGORY_VIEW], event.time_ms, rules)


def _product_view(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    product = event.product
    if product is None:
        return
    session = state.session
    if session is not None:
        pid = product.product_id
        session.products[pid] = session.products.get(pid, 0) + 1
        if product.title:
            session.product_titles[pid] = product.title
        if product.category:
            session.product_categories[pid] = product.category
        session.product_sequence.append(pid)
        del session.product_sequence[:-MAX_SEQUENCE]
    _seen_in_session(state, product)
    _taste(state, product, AFFINITY_WEIGHTS[EventKind.PRODUCT_VIEW], event.time_ms, rules)


def _search(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    if state.session is not None and event.search_query:
        state.session.searches.append(event.search_query)
        del state.session.searches[:-MAX_SEARCHES]


def _cart_line(product: Product, quantity: int) -> CartLineState:
    return CartLineState(quantity, product.price, product.title, product.category, product.brand, product.currency)


def _add_to_cart(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    product = event.product
    if product is None:
        return
    quantity = max(event.quantity, 1)
    line = state.cart.get(product.product_id)
    if line is None:
        state.cart[product.product_id] = _cart_line(product, quantity)
    else:
        line.quantity += quantity
        if product.price > 0:
            line.price = product.price
    state.cart_changed_ms = event.time_ms
    if state.session is not None and not state.session.first_cart_ms:
        state.session.first_cart_ms = event.time_ms
    _taste(state, product, AFFINITY_WEIGHTS[EventKind.ADD_TO_CART], event.time_ms, rules)


def _remove_from_cart(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    product = event.product
    if product is None or product.product_id not in state.cart:
        return
    line = state.cart[product.product_id]
    if event.quantity <= 0 or event.quantity >= line.quantity:
        del state.cart[product.product_id]
    else:
        line.quantity -= event.quantity
    state.cart_changed_ms = event.time_ms


def _purchase(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    order = event.order
    if order is None or any(p.order_id == order.order_id for p in state.recent_purchases):
        return  # the same order sent twice under two event ids counts once
    total = order.total if order.total > 0 else sum(line.product.price * line.quantity for line in order.lines)
    weights: dict[str, float] = {}
    for line in order.lines:
        if line.product.category:
            weights[line.product.category] = (
                weights.get(line.product.category, 0.0) + line.product.price * line.quantity
            )
    main_category = max(weights.items(), key=lambda item: (item[1], item[0]))[0] if weights else ""
    product_ids = [line.product.product_id for line in order.lines]
    state.order_count += 1
    state.total_spent += total
    state.currency = order.currency or state.currency
    if not state.first_purchase_ms:
        state.first_purchase_ms = event.time_ms
    state.last_purchase_ms = event.time_ms
    state.recent_purchases.insert(
        0, PurchaseRecord(order.order_id, event.time_ms, total, order.currency, product_ids, main_category)
    )
    del state.recent_purchases[MAX_RECENT_PURCHASES:]
    for pid in product_ids:
        if pid in state.purchased_product_ids:
            state.purchased_product_ids.remove(pid)
        state.purchased_product_ids.append(pid)
        state.cart.pop(pid, None)
    del state.purchased_product_ids[:-MAX_BOUGHT_PRODUCTS]
    state.cart_changed_ms = event.time_ms
    for line in order.lines:
        _taste(state, line.product, AFFINITY_WEIGHTS[EventKind.PURCHASE], event.time_ms, rules)


def _sign_up(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    if not state.signed_up_ms:
        state.signed_up_ms = event.time_ms


def _login(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.last_login_ms = event.time_ms


def _review_read(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.review_reads += 1
    if state.session is not None:
        state.session.review_reads += 1
    if event.product is not None:
        _taste(state, event.product, AFFINITY_WEIGHTS[EventKind.REVIEW_READ], event.time_ms, rules)


def _coupon(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.coupons += 1
    if state.session is not None:
        state.session.coupons += 1


def _email_open(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.email_opens += 1


def _email_click(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.email_clicks += 1


def _push_open(state: ProfileState, event: TrackedEvent, rules: FoldRules) -> None:
    state.push_opens += 1


_HANDLERS = {
    EventKind.CATEGORY_VIEW: _category_view,
    EventKind.PRODUCT_VIEW: _product_view,
    EventKind.SEARCH: _search,
    EventKind.ADD_TO_CART: _add_to_cart,
    EventKind.REMOVE_FROM_CART: _remove_from_cart,
    EventKind.PURCHASE: _purchase,
    EventKind.SIGN_UP: _sign_up,
    EventKind.LOGIN: _login,
    EventKind.REVIEW_READ: _review_read,
    EventKind.COUPON_APPLIED: _coupon,
    EventKind.EMAIL_OPEN: _email_open,
    EventKind.EMAIL_CLICK: _email_click,
    EventKind.PUSH_OPEN: _push_open,
}
