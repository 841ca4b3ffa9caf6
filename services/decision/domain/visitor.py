"""The visitor as the decision service sees it at one moment: the live profile reduced to the
facts that pick a situation, match segments, key the bandit and seed the recommenders."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from services.profile.domain.traits import all_price_band_affinities, detect_traits
from services.profile.domain.view import cart_view, top_affinities, vip_tier
from services.profile.live import LiveProfile

# A visitor's facts are reused for this long while their profile is unchanged (`visitor_of`).
VISITOR_REUSE_MS = 5_000
_VISITOR = "decision.visitor"

# The visitor's price band is the band of most interest among their strongest category x band
# affinities (`price_band_affinities`' default top 10).
PRICE_BANDS_WEIGHED = 10


@dataclass(frozen=True, slots=True)
class Visitor:
    person_id: str
    known: bool = False  # the profile had a state for this person
    visit_number: int = 0
    days_since_previous_visit: int = -1
    current_visit_start_ms: int = 0
    traffic_source: str = "DIRECT"
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    device_type: str = ""
    country: str = ""
    city: str = ""
    session_product_ids: tuple[str, ...] = ()  # this visit's product views, in order
    session_categories: tuple[str, ...] = ()  # this visit's categories, most viewed first
    entry_category: str = ""  # the first category of this visit
    previous_visit_category: str = ""  # what motivated the previous visit
    cart_product_ids: tuple[str, ...] = ()
    cart_value: float = 0.0
    cart_changed_ms: int = 0
    cart_abandoned: bool = False
    order_count: int = 0
    last_purchase_ms: int = 0
    last_purchase_product_ids: tuple[str, ...] = ()
    purchased_product_ids: frozenset[str] = frozenset()
    total_spent: float = 0.0
    rfm_recency: int = 0
    rfm_frequency: int = 0
    rfm_monetary: int = 0
    rfm_segment: str = ""
    vip_tier: str = ""
    category_affinity: Mapping[str, float] = field(default_factory=dict)  # share of decayed interest
    brand_affinity: Mapping[str, float] = field(default_factory=dict)
    price_band: str = ""  # the band (budget, mid, premium) the visitor leans to, if any
    traits: Mapping[str, float] = field(default_factory=dict)  # trait name -> strength
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def first_visit(self) -> bool:
        return self.visit_number <= 1

    @property
    def top_category(self) -> str:
        if self.session_categories:
            return self.session_categories[0]
        return max(self.category_affinity.items(), key=lambda item: item[1])[0] if self.category_affinity else ""

    def facts(self, situation: str) -> dict[str, object]:
        """What segment rules can name (the README's "Segments" lists them)."""
        return {
            "situation": situation,
            "visit_number": self.visit_number,
            "first_visit": self.first_visit,
            "days_since_previous_visit": self.days_since_previous_visit,
            "traffic_source": self.traffic_source,
            "utm_source": self.utm_source,
            "utm_medium": self.utm_medium,
            "utm_campaign": self.utm_campaign,
            "device_type": self.device_type,
            "country": self.country,
            "city": self.city,
            "top_category": self.top_category,
            "cart_value": self.cart_value,
            "cart_size": len(self.cart_product_ids),
            "order_count": self.order_count,
            "total_spent": self.total_spent,
            "rfm_recency": self.rfm_recency,
            "rfm_frequency": self.rfm_frequency,
            "rfm_monetary": self.rfm_monetary,
            "rfm_segment": self.rfm_segment,
            "vip_tier": self.vip_tier,
            "category_affinity": self.category_affinity,
            "brand_affinity": self.brand_affinity,
            "price_band": self.price_band,
            "traits": frozenset(self.traits),
            "attributes": self.attributes,
        }


def visitor_from_profile(live: LiveProfile, now_ms: int, half_life_ms: int, cart_abandoned_after_ms: int) -> Visitor:
    state = live.state
    session = state.session
    cart = cart_view(state, now_ms, cart_abandoned_after_ms)
    band_affinities = all_price_band_affinities(state, now_ms, half_life_ms, live.bands)
    band_shares: dict[str, float] = {}
    for affinity in band_affinities[:PRICE_BANDS_WEIGHED]:
        band = affinity.key.rpartition("|")[2]
        band_shares[band] = band_shares.get(band, 0.0) + affinity.share
    last_purchase = state.recent_purchases[0] if state.recent_purchases else None
    return Visitor(
        person_id=state.person_id,
        known=state.event_count > 0,
        visit_number=state.visit_count,
        days_since_previous_visit=(
            int((session.start_ms - state.previous_visit_ms) // 86_400_000)
            if session is not None and state.previous_visit_ms
            else -1
        ),
        current_visit_start_ms=session.start_ms if session is not None else 0,
        traffic_source=session.traffic_source if session is not None else "DIRECT",
        utm_source=session.utm_source if session is not None else "",
        utm_medium=session.utm_medium if session is not None else "",
        utm_campaign=session.utm_campaign if session is not None else "",
        device_type=state.device_type,
        country=state.country,
        city=state.city,
        session_product_ids=tuple(session.product_sequence) if session is not None else (),
        session_categories=(
            tuple(key for key, _ in sorted(session.categories.items(), key=lambda item: (-item[1], item[0])))
            if session is not None
            else ()
        ),
        entry_category=next(iter(session.categories), "") if session is not None else "",
        previous_visit_category=state.past_visits[-1].top_category if state.past_visits else "",
        cart_product_ids=tuple(product_id for product_id, _ in cart.lines),
        cart_value=cart.value,
        cart_changed_ms=state.cart_changed_ms,
        cart_abandoned=cart.abandoned,
        order_count=state.order_count,
        last_purchase_ms=state.last_purchase_ms,
        last_purchase_product_ids=tuple(last_purchase.product_ids) if last_purchase is not None else (),
        purchased_product_ids=frozenset(state.purchased_product_ids),
        total_spent=state.total_spent,
        rfm_recency=live.rfm.recency,
        rfm_frequency=live.rfm.frequency,
        rfm_monetary=live.rfm.monetary,
        rfm_segment=live.rfm.segment,
        vip_tier=vip_tier(live.rfm, live.attributes),
        category_affinity={a.key: a.share for a in top_affinities(state.category_affinity, now_ms, half_life_ms)},
        brand_affinity={a.key: a.share for a in top_affinities(state.brand_affinity, now_ms, half_life_ms)},
        price_band=max(band_shares.items(), key=lambda item: item[1])[0] if band_shares else "",
        traits={
            trait.name: trait.strength
            for trait in detect_traits(
                state, now_ms, live.bands, half_life_ms=half_life_ms, band_affinities=band_affinities
            )
        },
        attributes=dict(live.attributes),
    )


def visitor_of(live: LiveProfile, now_ms: int, half_life_ms: int, cart_abandoned_after_ms: int) -> Visitor:
    """`visitor_from_profile`, computed once per profile read anew: the profile reader hands the
    same profile out again while the person's state is unchanged (a page's placements), and the
    facts computed at most VISITOR_REUSE_MS ago come with it. That is well below every span of
    time the facts depend on (a cart is abandoned after minutes; affinities halve over days)."""
    known = live.derived.get(_VISITOR)
    if known is not None and 0 <= now_ms - known[0] < VISITOR_REUSE_MS:
        return cast(Visitor, known[1])
    visitor = visitor_from_profile(live, now_ms, half_life_ms, cart_abandoned_after_ms)
    live.derived[_VISITOR] = (now_ms, visitor)
    return visitor
