"""Reading a live state at a moment: decayed affinities, price bands, the cart's abandonment,
RFM scores and the VIP tier. Everything here depends on "now" or on the whole shop, which is
why it is not part of the stored state."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.profile.domain.folding import decayed
from services.profile.domain.state import CartLineState, Decayed, ProfileState

BUDGET, MID, PREMIUM = "budget", "mid", "premium"


@dataclass(frozen=True)
class PriceBands:
    """Each category's distribution of product prices, as log-scale bucket -> distinct products.

    A price is "budget" in the lower third of its category, "premium" in the upper third: a
    40 EUR T-shirt is premium, a 40 EUR coat is not.
    """

    distributions: Mapping[str, Mapping[int, int]]
    min_products: int = 5
    # Bands already worked out: one reading of a profile asks for the same ones several times.
    _known: dict[tuple[str, int], str | None] = field(default_factory=dict, compare=False, repr=False)

    def band_of(self, category: str, bucket: int) -> str | None:
        key = (category, bucket)
        if key in self._known:
            return self._known[key]
        band = self._band_of(category, bucket)
        self._known[key] = band
        return band

    def _band_of(self, category: str, bucket: int) -> str | None:
        distribution = self.distributions.get(category)
        if not distribution:
            return None
        total = sum(distribution.values())
        if total < self.min_products:
            return None
        below = sum(count for other, count in distribution.items() if other < bucket)
        percentile = (below + distribution.get(bucket, 0) / 2) / total
        if percentile < 1 / 3:
            return BUDGET
        if percentile >= 2 / 3:
            return PREMIUM
        return MID


@dataclass(frozen=True)
class AffinityScore:
    key: str
    score: float
    share: float


def top_affinities(
    table: Mapping[str, Decayed], now_ms: int, half_life_ms: int, limit: int = 10
) -> list[AffinityScore]:
    scores = {key: decayed(value, now_ms, half_life_ms) for key, value in table.items()}
    total = sum(scores.values()) or 1.0
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [AffinityScore(key, score, score / total) for key, score in ranked]


def price_band_affinities(
    state: ProfileState, now_ms: int, half_life_ms: int, bands: PriceBands, limit: int = 10
) -> list[AffinityScore]:
    """Category x band affinities ("Knitwear|premium"), from the stored category x bucket scores."""
    scores: dict[str, float] = {}
    for key, value in state.price_affinity.items():
        category, _, bucket = key.rpartition("|")
        band = bands.band_of(category, int(bucket))
        if band is None:
            continue
        band_key = f"{category}|{band}"
        scores[band_key] = scores.get(band_key, 0.0) + decayed(value, now_ms, half_life_ms)
    total = sum(scores.values()) or 1.0
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [AffinityScore(key, score, score / total) for key, score in ranked]


@dataclass(frozen=True)
class CartView:
    lines: list[tuple[str, CartLineState]]
    value: float
    currency: str
    last_change_ms: int
    abandoned: bool
    abandoned_since_ms: int


def cart_view(state: ProfileState, now_ms: int, abandon_after_ms: int) -> CartView:
    """A cart is abandoned when non-empty, with no visit to the shop for the delay (opening an
    e-mail is not a visit), and not bought since it last changed."""
    lines = sorted(state.cart.items())
    value = sum(line.price * line.quantity for _, line in lines)
    currency = next((line.currency for _, line in lines if line.currency), state.currency)
    last_on_site_ms = state.session.last_ms if state.session is not None else 0
    idle_since = max(last_on_site_ms, state.cart_changed_ms)
    abandoned = (
        bool(lines) and now_ms - idle_since >= abandon_after_ms and state.last_purchase_ms < state.cart_changed_ms
    )
    return CartView(
        lines, value, currency, state.cart_changed_ms, abandoned, idle_since + abandon_after_ms if abandoned else 0
    )


@dataclass(frozen=True)
class RfmScores:
    recency: int
    frequency: int
    monetary: int

    @property
    def segment(self) -> str:
        return rfm_segment(self.recency, self.frequency, self.monetary)


NO_RFM = RfmScores(0, 0, 0)


def quintile(strictly_lower: int, ties: int, total: int) -> int:
    """1..5 from a rank among `total` customers (ties share the middle of their range)."""
    if total <= 0:
        return 0
    percentile = (strictly_lower + ties / 2) / total
    return min(5, 1 + int(percentile * 5))


def rfm_segment(recency: int, frequency: int, monetary: int) -> str:
    """The usual RFM segment names, from the recency and frequency-monetary scores."""
    if recency == 0:
        return "prospect"
    value = (frequency + monetary) / 2
    if recency >= 4 and value >= 4:
        return "champions"
    if recency >= 3 and value >= 3:
        return "loyal"
    if recency >= 4 and value < 2:
        return "new"
    if recency >= 3:
        return "promising"
    if recency <= 2 and value >= 4:
        return "at risk"
    if recency <= 2 and value >= 2.5:
        return "needs attention"
    return "hibernating"


VIP_ATTRIBUTES = ("vip_tier", "loyalty_tier")


def vip_tier(rfm: RfmScores, attributes: Mapping[str, str]) -> str:
    """The CRM's tier when it has one; else PLATINUM/GOLD/SILVER from the RFM scores."""
    for name in VIP_ATTRIBUTES:
        if attributes.get(name):
            return attributes[name].upper()
    if rfm.monetary == 5 and rfm.frequency == 5 and rfm.recency >= 4:
        return "PLATINUM"
    if rfm.monetary == 5 and rfm.frequency >= 4:
        return "GOLD"
    if rfm.monetary >= 4 and rfm.frequency >= 3:
        return "SILVER"
    return ""
