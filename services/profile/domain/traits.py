"""Behavioural traits read from a live profile: hesitating, sensitive to reviews or promotions,
looking for quality, decisive or browsing. Each comes with the evidence that shows it, in plain
words, so a merchandiser can check why a visitor was labelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.profile.domain.events import CATEGORY_SEPARATOR
from services.profile.domain.folding import FoldRules
from services.profile.domain.state import ProfileState, SessionState
from services.profile.domain.view import PREMIUM, AffinityScore, PriceBands, price_band_affinities

HESITATING = "hesitating"
REVIEW_SENSITIVE = "review_sensitive"
PROMO_SENSITIVE = "promo_sensitive"
QUALITY_SEEKING = "quality_seeking"
DECISIVE = "decisive"
BROWSING = "browsing"

MINUTE_MS = 60_000

# Hesitation is going back and forth between a few products of one category. Two switches back
# (A B A B) is the least that is not just a second look; beyond three products it is comparing
# a shelf, not hesitating. Four switches back is as sure as it gets.
HESITATION_MIN_SWITCHES_BACK = 2
HESITATION_MAX_PRODUCTS = 3
HESITATION_FULL_SWITCHES_BACK = 4

# One review read can be curiosity; two, or sorting a list by rating, is a habit. A rating sort
# is a deliberate choice, so it weighs twice a read.
REVIEW_MIN_READS = 2
REVIEW_MIN_RATING_SORTS = 1
REVIEW_FULL_SCORE = 6

# A coupon or a sale campaign says it at once; one sale page may be where a link happened to
# land, two are a choice.
PROMO_MIN_COUPONS = 1
PROMO_MIN_PAGES = 2
PROMO_FULL_SCORE = 6
# Looked for in the campaign with '-', '_' and spaces removed, so "black-friday" and
# "Black Friday" match but a campaign for black dresses does not.
PROMO_CAMPAIGN_MARKERS = (
    "sale",
    "promo",
    "soldes",
    "discount",
    "deal",
    "coupon",
    "clearance",
    "outlet",
    "blackfriday",
    "cybermonday",
)

# "Most" of the interest measured by price band is premium: 60%, on at least the weight of three
# fresh product views (a single glance at an expensive item is no taste).
QUALITY_MIN_PREMIUM_SHARE = 0.6
QUALITY_MIN_INTEREST = 3.0

# Decisive: a first add-to-cart within 5 minutes of arriving, or a purchase in a short visit.
# Pages are not timestamped in the state, so the visit's whole page count stands for the pages
# before the cart: an upper bound, so a "decisive" is never wrong, only sometimes missed.
DECISIVE_MAX_CART_DELAY_MS = 5 * MINUTE_MS
DECISIVE_MAX_PAGES = 5
# Checkout pages count as pages, hence a little more room when the visit ended in an order.
DECISIVE_MAX_PURCHASE_PAGES = 8

# Browsing: a deep visit (an average shop visit is 5 to 6 pages) with nothing put in the cart.
BROWSING_MIN_PAGES = 8
BROWSING_FULL_PAGES = 16
BROWSING_SHOWN_PRODUCTS = 3


@dataclass(frozen=True)
class Trait:
    """A behavioural trait with how sure we are (0..1) and what shows it."""

    name: str
    strength: float
    evidence: tuple[str, ...]
    product_ids: tuple[str, ...] = ()


def category_label(category: str) -> str:
    """The human label of a category key: its last element, lower-cased for sentences."""
    return category.rpartition(CATEGORY_SEPARATOR)[2].strip().lower()


def detect_traits(
    state: ProfileState,
    now_ms: int,
    bands: PriceBands,
    *,
    half_life_ms: int = FoldRules().affinity_half_life_ms,
    band_affinities: Sequence[AffinityScore] | None = None,
) -> list[Trait]:
    """The traits the state shows, strongest first (ties by name, so the order is stable).
    `band_affinities`: the state's `price_band_affinities` with no limit, when the caller has them."""
    if band_affinities is None:
        band_affinities = all_price_band_affinities(state, now_ms, half_life_ms, bands)
    candidates = [
        _hesitating(state),
        _review_sensitive(state),
        _promo_sensitive(state),
        _quality_seeking(band_affinities),
        _decisive_or_browsing(state),
    ]
    traits = [trait for trait in candidates if trait is not None]
    return sorted(traits, key=lambda trait: (-trait.strength, trait.name))


# ------------------------------------------------------------------------------------- hesitation
@dataclass(frozen=True)
class _Alternation:
    views: tuple[str, ...]
    switches_back: int
    end: int

    @property
    def rank(self) -> tuple[int, int]:
        return (self.switches_back, self.end)

    @property
    def product_ids(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.views))


def _hesitating(state: ProfileState) -> Trait | None:
    session = state.session
    if session is None:
        return None
    alternation = _strongest_alternation(session, decided=set(state.cart) | set(state.purchased_product_ids))
    if alternation is None:
        return None
    titles = [f"'{session.product_titles.get(pid) or pid}'" for pid in alternation.product_ids]
    evidence = f"viewed {_and_list(titles)} alternately {len(alternation.views)} times this visit"
    strength = min(1.0, alternation.switches_back / HESITATION_FULL_SWITCHES_BACK)
    return Trait(HESITATING, round(strength, 3), (evidence,), alternation.product_ids)


def _strongest_alternation(session: SessionState, decided: set[str]) -> _Alternation | None:
    """The stretch of the visit with most switches back between 2-3 undecided products of one
    category (the most recent one on a tie)."""
    # Reloading a product page is not switching: consecutive views of one product count once.
    views = [pid for i, pid in enumerate(session.product_sequence) if i == 0 or session.product_sequence[i - 1] != pid]
    best: _Alternation | None = None
    for start in range(len(views)):
        candidate = _alternation_from(views, start, session.product_categories, decided)
        if candidate is not None and (best is None or candidate.rank > best.rank):
            best = candidate
    return best


def _alternation_from(
    views: Sequence[str], start: int, categories: dict[str, str], decided: set[str]
) -> _Alternation | None:
    category = categories.get(views[start], "")
    # A product already carted or bought is a decision taken: it ends the hesitation.
    if not category or views[start] in decided:
        return None
    end = start
    distinct: set[str] = set()
    while end < len(views):
        pid = views[end]
        if pid in decided or categories.get(pid) != category:
            break
        if pid not in distinct and len(distinct) == HESITATION_MAX_PRODUCTS:
            break
        distinct.add(pid)
        end += 1
    # A product seen once at either edge is where the visitor came from or went next, not one of
    # the products hesitated between (A B A B C -> A B A B); one seen once in the middle is
    # (A B C A B compares three).
    window = list(views[start:end])
    while window and window.count(window[-1]) == 1:
        window.pop()
        end -= 1
    while window and window.count(window[0]) == 1:
        window.pop(0)
    if not 2 <= len(set(window)) <= HESITATION_MAX_PRODUCTS:
        return None
    switches_back = sum(1 for i, pid in enumerate(window) if pid in window[:i])
    if switches_back < HESITATION_MIN_SWITCHES_BACK:
        return None
    return _Alternation(tuple(window), switches_back, end)


# ------------------------------------------------------------------------------------- reviews
def _review_sensitive(state: ProfileState) -> Trait | None:
    reads, sorts = state.review_reads, state.rating_sorts
    if reads < REVIEW_MIN_READS and sorts < REVIEW_MIN_RATING_SORTS:
        return None
    session = state.session
    evidence = []
    if reads:
        evidence.append(_tally("read", session.review_reads if session else 0, reads, "review", "reviews"))
    if sorts:
        evidence.append(
            _tally("sorted products by rating", session.rating_sorts if session else 0, sorts, "time", "times")
        )
    strength = min(1.0, (reads + 2 * sorts) / REVIEW_FULL_SCORE)
    return Trait(REVIEW_SENSITIVE, round(strength, 3), tuple(evidence))


# ------------------------------------------------------------------------------------- promotions
def is_sale_campaign(campaign: str) -> bool:
    squashed = campaign.lower().replace("-", "").replace("_", "").replace(" ", "")
    return any(marker in squashed for marker in PROMO_CAMPAIGN_MARKERS)


def _promo_sensitive(state: ProfileState) -> Trait | None:
    session = state.session
    campaign = session.utm_campaign if session is not None and is_sale_campaign(session.utm_campaign) else ""
    coupons, pages = state.coupons, state.promo_pages
    if coupons < PROMO_MIN_COUPONS and pages < PROMO_MIN_PAGES and not campaign:
        return None
    evidence = []
    if coupons:
        evidence.append(_tally("applied", session.coupons if session else 0, coupons, "coupon", "coupons"))
    if pages:
        evidence.append(
            _tally("viewed", session.promo_pages if session else 0, pages, "promotion page", "promotion pages")
        )
    if campaign:
        evidence.append(f"came from the campaign '{campaign}' this visit")
    strength = min(1.0, (2 * coupons + pages + (2 if campaign else 0)) / PROMO_FULL_SCORE)
    return Trait(PROMO_SENSITIVE, round(strength, 3), tuple(evidence))


# ------------------------------------------------------------------------------------- quality
def all_price_band_affinities(
    state: ProfileState, now_ms: int, half_life_ms: int, bands: PriceBands
) -> list[AffinityScore]:
    """Every category x band affinity of the state, strongest first (`price_band_affinities` with
    no limit): the premium share is of the whole interest, not of a top 10."""
    return price_band_affinities(state, now_ms, half_life_ms, bands, limit=max(1, len(state.price_affinity)))


def _quality_seeking(affinities: Sequence[AffinityScore]) -> Trait | None:
    total = sum(affinity.score for affinity in affinities)
    premium = [affinity for affinity in affinities if affinity.key.rpartition("|")[2] == PREMIUM]
    if total < QUALITY_MIN_INTEREST or not premium:
        return None
    share = sum(affinity.score for affinity in premium) / total
    if share < QUALITY_MIN_PREMIUM_SHARE:
        return None
    # `premium` keeps the ranking's order, strongest first.
    mostly = category_label(premium[0].key.rpartition("|")[0])
    evidence = f"premium products get {round(share * 100)}% of the interest measured by price band, mostly {mostly}"
    return Trait(QUALITY_SEEKING, round(share, 3), (evidence,))


# ------------------------------------------------------------------------------------- pace
def _decisive_or_browsing(state: ProfileState) -> Trait | None:
    """Decisive and browsing exclude each other: one carts or buys quickly, the other does not."""
    session = state.session
    if session is None:
        return None
    bought_this_visit = state.last_purchase_ms >= session.start_ms
    if session.first_cart_ms:
        delay = session.first_cart_ms - session.start_ms
        if delay <= DECISIVE_MAX_CART_DELAY_MS and session.page_count <= DECISIVE_MAX_PAGES:
            pages = _count(session.page_count, "page", "pages")
            evidence = f"added to the cart {_duration(delay)} after arriving, {pages} this visit"
            strength = 1 - 0.5 * delay / DECISIVE_MAX_CART_DELAY_MS
            return Trait(DECISIVE, round(strength, 3), (evidence,))
    if bought_this_visit and session.page_count <= DECISIVE_MAX_PURCHASE_PAGES:
        evidence = f"bought after {_count(session.page_count, 'page', 'pages')} this visit"
        strength = 1 - 0.5 * session.page_count / DECISIVE_MAX_PURCHASE_PAGES
        return Trait(DECISIVE, round(strength, 3), (evidence,))
    if session.page_count >= BROWSING_MIN_PAGES and not session.first_cart_ms and not bought_this_visit:
        products = sorted(session.products.items(), key=lambda item: (-item[1], item[0]))
        evidence = (
            f"viewed {_count(session.page_count, 'page', 'pages')} this visit "
            f"({_count(len(session.products), 'product', 'products')}, "
            f"{_count(len(session.categories), 'category', 'categories')}) without adding anything to the cart"
        )
        strength = min(1.0, session.page_count / BROWSING_FULL_PAGES)
        shown = tuple(pid for pid, _ in products[:BROWSING_SHOWN_PRODUCTS])
        return Trait(BROWSING, round(strength, 3), (evidence,), shown)
    return None


# ------------------------------------------------------------------------------------- wording
def _count(n: int, singular: str, plural: str) -> str:
    return f"{n} {singular if n == 1 else plural}"


def _tally(verb: str, this_visit: int, in_all: int, singular: str, plural: str) -> str:
    """'read 3 reviews this visit', '... this visit, 5 in all' or '... on earlier visits'."""
    if this_visit == in_all:
        return f"{verb} {_count(in_all, singular, plural)} this visit"
    if this_visit:
        return f"{verb} {_count(this_visit, singular, plural)} this visit, {in_all} in all"
    return f"{verb} {_count(in_all, singular, plural)} on earlier visits"


def _and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _duration(ms: int) -> str:
    minutes = ms // MINUTE_MS
    return "less than a minute" if minutes < 1 else _count(minutes, "minute", "minutes")
