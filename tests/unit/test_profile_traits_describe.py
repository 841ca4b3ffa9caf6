"""Traits and plain-language descriptions of visitors, from small folded event histories."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.profile.domain.describe import LANGUAGES, describe
from services.profile.domain.events import Context, EventKind, Order, OrderLine, Product, TrackedEvent
from services.profile.domain.folding import FoldRules, apply, comes_after, fold, price_bucket
from services.profile.domain.state import ProfileState
from services.profile.domain.traits import (
    BROWSING,
    DECISIVE,
    HESITATING,
    PROMO_SENSITIVE,
    QUALITY_SEEKING,
    REVIEW_SENSITIVE,
    Trait,
    detect_traits,
    is_sale_campaign,
)
from services.profile.domain.view import PriceBands

RULES = FoldRules()
MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z

EN_SWEATERS = ("Women", "Knitwear", "Cashmere sweaters")
FR_SWEATERS = ("Femme", "Maille", "Pulls en cachemire")
SHOES = ("Men", "Shoes", "Running shoes")

# Each category's catalogue as bucket -> distinct products (buckets of `price_bucket`: 39 EUR is 16,
# 49 is 17, 79 is 19, 119-129 are 21, 199 is 23, 249 is 24, 279-299 are 25). The sweaters at
# 249-299 EUR sit in the upper third of theirs; the 119-129 EUR running shoes in the middle.
SWEATER_PRICES = {17: 3, 19: 3, 21: 3, 24: 2, 25: 1, 26: 1}
SHOE_PRICES = {16: 2, 19: 2, 21: 2, 23: 2, 25: 2}
BANDS = PriceBands(
    {
        " > ".join(EN_SWEATERS): SWEATER_PRICES,
        " > ".join(FR_SWEATERS): SWEATER_PRICES,
        " > ".join(SHOES): SHOE_PRICES,
    }
)

_ids = itertools.count()


def event(kind: EventKind, at_ms: int, product: Product | None = None, **fields: object) -> TrackedEvent:
    # Zero-padded ids so that events at the same millisecond fold in creation order.
    return TrackedEvent(f"e{next(_ids):06d}", kind, at_ms, product=product, **fields)  # type: ignore[arg-type]


def views(products: Sequence[Product], start_ms: int, step_ms: int = MINUTE) -> list[TrackedEvent]:
    return [event(EventKind.PRODUCT_VIEW, start_ms + i * step_ms, product) for i, product in enumerate(products)]


def page(at_ms: int, url: str = "", **context: str) -> TrackedEvent:
    return event(EventKind.PAGE_VIEW, at_ms, context=Context(page_url=url, **context))


def purchase(at_ms: int, *lines: tuple[Product, int]) -> TrackedEvent:
    order_lines = tuple(OrderLine(product, quantity) for product, quantity in lines)
    total = sum(product.price * quantity for product, quantity in lines)
    return event(EventKind.PURCHASE, at_ms, order=Order(f"o-{at_ms}", order_lines, total, "EUR"))


def sweaters(path: tuple[str, ...], titles: tuple[str, str, str]) -> tuple[Product, Product, Product]:
    grey, navy, camel = titles
    return (
        Product("p-grey", grey, path, "Maison Laine", 249.0, "EUR"),
        Product("p-navy", navy, path, "Maison Laine", 299.0, "EUR"),
        Product("p-camel", camel, path, "Maison Laine", 279.0, "EUR"),
    )


EN_GREY, EN_NAVY, EN_CAMEL = sweaters(
    EN_SWEATERS, ("Grey cashmere crew neck", "Navy cashmere V-neck", "Camel cashmere turtleneck")
)
FR_GREY, FR_NAVY, FR_CAMEL = sweaters(
    FR_SWEATERS, ("Pull col rond gris en cachemire", "Pull col V marine en cachemire", "Col roulé camel en cachemire")
)
RUNNER = Product("p-runner", "Trail runner", SHOES, "Stride", 119.0, "EUR")
RACER = Product("p-racer", "Road racer", SHOES, "Stride", 129.0, "EUR")
SCARF = Product("p-scarf", "Silk scarf", ("Women", "Accessories", "Scarves"), "Soie", 89.0, "EUR")
TEE = Product("p-tee", "Linen T-shirt", ("Men", "T-shirts"), "Lin", 39.0, "EUR")

SECOND_VISIT = T0 + 20 * HOUR  # the next day: too soon for "back after N days"
CASHMERE_NOW = SECOND_VISIT + 10 * MINUTE


def cashmere_shopper(grey: Product, navy: Product, camel: Product) -> ProfileState:
    """Looked at premium cashmere sweaters yesterday; today goes back and forth between two of
    them and reads their reviews."""
    events = [
        *views([grey, camel, grey], T0),
        *views([grey, navy, grey, navy, grey], SECOND_VISIT),
        event(EventKind.REVIEW_READ, SECOND_VISIT + 6 * MINUTE, navy),
        event(EventKind.REVIEW_READ, SECOND_VISIT + 7 * MINUTE, grey),
    ]
    return fold("cashmere", events, RULES)


def sentences(state: ProfileState, now_ms: int, language: str = "en", **options: int) -> list[str]:
    return describe(state, detect_traits(state, now_ms, BANDS), now_ms, BANDS, language, **options)


def names(traits: Sequence[Trait]) -> list[str]:
    return [trait.name for trait in traits]


def test_the_fixture_prices_fall_in_the_buckets_the_bands_assume() -> None:
    assert [price_bucket(price) for price in (39, 49, 79, 119, 129, 199, 249, 279, 299)] == [
        16,
        17,
        19,
        21,
        21,
        23,
        24,
        25,
        25,
    ]
    assert BANDS.band_of(" > ".join(EN_SWEATERS), 24) == "premium"
    assert BANDS.band_of(" > ".join(SHOES), 21) == "mid"


# ------------------------------------------------------------------------------------- the example
def test_the_cashmere_shopper_in_english() -> None:
    said = sentences(cashmere_shopper(EN_GREY, EN_NAVY, EN_CAMEL), CASHMERE_NOW)

    assert said == [
        "2nd visit",
        "focused on premium cashmere sweaters, as in the 1st visit",
        "hesitating between two products",
        "sensitive to reviews",
    ]
    assert "; ".join(said) == (
        "2nd visit; focused on premium cashmere sweaters, as in the 1st visit; "
        "hesitating between two products; sensitive to reviews"
    )


def test_the_cashmere_shopper_in_french() -> None:
    said = sentences(cashmere_shopper(FR_GREY, FR_NAVY, FR_CAMEL), CASHMERE_NOW, "fr")

    assert said == [
        "2e visite",
        "intérêt principal : pulls en cachemire haut de gamme, comme lors de la 1re visite",
        "hésite entre deux produits",
        "sensible aux avis",
    ]


def test_category_labels_are_not_translated() -> None:
    said = sentences(cashmere_shopper(EN_GREY, EN_NAVY, EN_CAMEL), CASHMERE_NOW, "fr")

    assert said[1] == "intérêt principal : cashmere sweaters haut de gamme, comme lors de la 1re visite"


def test_the_cashmere_shoppers_traits_and_their_evidence() -> None:
    traits = detect_traits(cashmere_shopper(EN_GREY, EN_NAVY, EN_CAMEL), CASHMERE_NOW, BANDS)
    by_name = {trait.name: trait for trait in traits}

    assert names(traits) == [QUALITY_SEEKING, HESITATING, REVIEW_SENSITIVE]
    assert by_name[HESITATING] == Trait(
        HESITATING,
        0.75,
        ("viewed 'Grey cashmere crew neck' and 'Navy cashmere V-neck' alternately 5 times this visit",),
        ("p-grey", "p-navy"),
    )
    assert by_name[REVIEW_SENSITIVE].evidence == ("read 2 reviews this visit",)
    assert by_name[QUALITY_SEEKING].evidence == (
        "premium products get 100% of the interest measured by price band, mostly cashmere sweaters",
    )


def test_looking_for_quality_is_said_when_the_focus_does_not_say_premium() -> None:
    events = [
        *views([EN_GREY, EN_NAVY, EN_CAMEL, EN_GREY], T0),
        # The next day: one sweater among unrelated things, so no focus to speak of.
        *views([EN_NAVY, SCARF, TEE], SECOND_VISIT),
    ]
    state = fold("connoisseur", events, RULES)

    assert sentences(state, SECOND_VISIT + 5 * MINUTE) == ["2nd visit", "looking for quality"]


def test_mid_range_interest_is_not_quality_seeking() -> None:
    state = fold("runner", views([RUNNER, RACER, RUNNER, RACER, RUNNER], T0), RULES)

    assert QUALITY_SEEKING not in names(detect_traits(state, T0 + HOUR, BANDS))


# ------------------------------------------------------------------------------------- hesitation
def hesitation_of(sequence: str, categories: dict[str, tuple[str, ...]] | None = None) -> Trait | None:
    """The hesitating trait of a visit whose product views are the letters of `sequence`."""
    categories = categories or {}
    products = {
        letter: Product(f"p-{letter}", f"Sweater {letter}", categories.get(letter, EN_SWEATERS), price=99.0)
        for letter in sorted(set(sequence))
    }
    state = fold("hesitant", views([products[letter] for letter in sequence], T0), RULES)
    return next((t for t in detect_traits(state, T0 + HOUR, BANDS) if t.name == HESITATING), None)


@pytest.mark.parametrize(
    ("sequence", "hesitated_between"),
    [
        ("ABAB", ("p-A", "p-B")),
        ("ABCAB", ("p-A", "p-B", "p-C")),
        ("ABCABC", ("p-A", "p-B", "p-C")),
        ("XYZABABW", ("p-A", "p-B")),  # the products on the way in and out are not part of it
    ],
)
def test_going_back_and_forth_is_hesitating(sequence: str, hesitated_between: tuple[str, ...]) -> None:
    trait = hesitation_of(sequence)

    assert trait is not None
    assert trait.product_ids == hesitated_between


def test_reloading_a_product_is_not_switching() -> None:
    trait = hesitation_of("AABBAAB")

    assert trait is not None
    assert (trait.strength, trait.evidence) == (
        0.5,
        ("viewed 'Sweater A' and 'Sweater B' alternately 4 times this visit",),
    )


@pytest.mark.parametrize("sequence", ["ABA", "ABCD", "ABCDABCD", "AAAA", "ABCDEFGH"])
def test_a_second_look_or_a_shelf_is_not_hesitating(sequence: str) -> None:
    assert hesitation_of(sequence) is None


def test_products_of_different_categories_are_not_hesitated_between() -> None:
    assert hesitation_of("ABAB", {"B": SHOES}) is None


def test_a_product_put_in_the_cart_ends_the_hesitation() -> None:
    events = [*views([EN_GREY, EN_NAVY, EN_GREY, EN_NAVY], T0), event(EventKind.ADD_TO_CART, T0 + 5 * MINUTE, EN_NAVY)]
    state = fold("decided", events, RULES)

    assert HESITATING not in names(detect_traits(state, T0 + HOUR, BANDS))


def test_three_products_are_said_as_three() -> None:
    trait = hesitation_of("ABCABC")
    assert trait is not None

    assert describe(ProfileState("x"), [trait], T0, BANDS) == ["hesitating between three products"]
    assert describe(ProfileState("x"), [trait], T0, BANDS, "fr") == ["hésite entre trois produits"]
    assert trait.evidence == ("viewed 'Sweater A', 'Sweater B' and 'Sweater C' alternately 6 times this visit",)


# ------------------------------------------------------------------------------------- pace
def test_a_decisive_buyer() -> None:
    events = [
        *views([RUNNER, RACER], T0),
        event(EventKind.ADD_TO_CART, T0 + 2 * MINUTE, RACER, quantity=1),
        event(EventKind.CHECKOUT_START, T0 + 3 * MINUTE),
        purchase(T0 + 4 * MINUTE, (RACER, 1)),
    ]
    state = fold("decisive", events, RULES)
    now = T0 + 10 * MINUTE
    traits = detect_traits(state, now, BANDS)

    assert names(traits) == [DECISIVE]
    assert traits[0].evidence == ("added to the cart 2 minutes after arriving, 3 pages this visit",)
    assert sentences(state, now) == [
        "1st visit",
        "focused on mid-range running shoes",
        "decisive",
        "bought once, today",
    ]
    assert sentences(state, now, "fr") == [
        "1re visite",
        "intérêt principal : running shoes milieu de gamme",
        "se décide vite",
        "a acheté une fois, aujourd'hui",
    ]


def test_a_slow_cart_is_not_decisive() -> None:
    events = [*views([RUNNER, RACER], T0, step_ms=10 * MINUTE), event(EventKind.ADD_TO_CART, T0 + 25 * MINUTE, RACER)]
    state = fold("slow", events, RULES)

    assert DECISIVE not in names(detect_traits(state, T0 + 30 * MINUTE, BANDS))


def test_a_short_visit_ending_in_an_order_is_decisive() -> None:
    # The cart came late (12 minutes in) but the whole visit took 4 pages.
    events = [
        *views([RUNNER, RACER, RUNNER], T0, step_ms=4 * MINUTE),
        event(EventKind.ADD_TO_CART, T0 + 12 * MINUTE, RUNNER),
        event(EventKind.CHECKOUT_START, T0 + 13 * MINUTE),
        purchase(T0 + 14 * MINUTE, (RUNNER, 1)),
    ]
    traits = detect_traits(fold("buyer", events, RULES), T0 + HOUR, BANDS)

    assert [(trait.name, trait.evidence) for trait in traits] == [(DECISIVE, ("bought after 4 pages this visit",))]


def deep_visit(with_cart: bool) -> ProfileState:
    catalogue = [EN_GREY, EN_NAVY, EN_CAMEL, RUNNER, RACER, SCARF, TEE]
    events = [
        event(EventKind.CATEGORY_VIEW, T0, EN_GREY),
        *views([*catalogue, EN_GREY, SCARF, RUNNER], T0 + MINUTE, step_ms=2 * MINUTE),
        event(EventKind.CATEGORY_VIEW, T0 + 30 * MINUTE, RUNNER),
    ]
    if with_cart:
        events.append(event(EventKind.ADD_TO_CART, T0 + 31 * MINUTE, SCARF))
    return fold("browser", events, RULES)


def test_a_deep_browser() -> None:
    state = deep_visit(with_cart=False)
    traits = detect_traits(state, T0 + HOUR, BANDS)
    browsing = next(trait for trait in traits if trait.name == BROWSING)

    assert DECISIVE not in names(traits)
    assert browsing.strength == 0.75
    assert browsing.evidence == (
        "viewed 12 pages this visit (7 products, 4 categories) without adding anything to the cart",
    )
    assert browsing.product_ids == ("p-grey", "p-runner", "p-scarf")
    assert "browsing" in sentences(state, T0 + HOUR)
    assert "flâne dans le catalogue" in sentences(state, T0 + HOUR, "fr")


def test_a_deep_visit_with_a_cart_is_not_browsing() -> None:
    traits = detect_traits(deep_visit(with_cart=True), T0 + HOUR, BANDS)

    assert BROWSING not in names(traits)
    assert DECISIVE not in names(traits)


# ------------------------------------------------------------------------------------- promotions
def test_a_promo_hunter() -> None:
    campaign = {"utm_source": "google", "utm_medium": "cpc", "utm_campaign": "summer-sale"}
    events = [
        page(T0, "https://shop.example/sale/women?utm_campaign=summer-sale", **campaign),
        page(T0 + MINUTE, "https://shop.example/promo/knitwear"),
        event(EventKind.COUPON_APPLIED, T0 + 2 * MINUTE, coupon_code="SUMMER10"),
    ]
    state = fold("hunter", events, RULES)
    traits = detect_traits(state, T0 + 5 * MINUTE, BANDS)

    assert names(traits) == [PROMO_SENSITIVE]
    assert traits[0].strength == 1.0
    assert traits[0].evidence == (
        "applied 1 coupon this visit",
        "viewed 2 promotion pages this visit",
        "came from the campaign 'summer-sale' this visit",
    )
    assert sentences(state, T0 + 5 * MINUTE) == ["1st visit", "sensitive to promotions", "came from a paid campaign"]
    assert sentences(state, T0 + 5 * MINUTE, "fr") == [
        "1re visite",
        "sensible aux promotions",
        "visite issue d'une campagne payante",
    ]


def test_a_single_sale_page_is_not_a_taste_for_promotions() -> None:
    state = fold("passer-by", [page(T0, "https://shop.example/sale/women")], RULES)

    assert detect_traits(state, T0 + MINUTE, BANDS) == []


@pytest.mark.parametrize(
    ("campaign", "is_sale"),
    [("summer-sale", True), ("Black Friday 2026", True), ("SOLDES_HIVER", True), ("black-dresses", False), ("", False)],
)
def test_sale_campaigns(campaign: str, is_sale: bool) -> None:
    assert is_sale_campaign(campaign) is is_sale


# ------------------------------------------------------------------------------------- visits
def test_a_first_visit_with_nothing_special() -> None:
    state = fold("newcomer", [page(T0, "https://shop.example/"), *views([TEE], T0 + MINUTE)], RULES)

    assert detect_traits(state, T0 + 5 * MINUTE, BANDS) == []
    assert sentences(state, T0 + 5 * MINUTE) == ["1st visit"]
    assert sentences(state, T0 + 5 * MINUTE, "fr") == ["1re visite"]


def nth_visit(visits: int) -> ProfileState:
    return fold("regular", [page(T0 + i * HOUR) for i in range(visits)], RULES)


@pytest.mark.parametrize(
    ("visits", "english", "french"),
    [
        (1, "1st visit", "1re visite"),
        (2, "2nd visit", "2e visite"),
        (3, "3rd visit", "3e visite"),
        (4, "4th visit", "4e visite"),
        (11, "11th visit", "11e visite"),
        (12, "12th visit", "12e visite"),
        (13, "13th visit", "13e visite"),
        (21, "21st visit", "21e visite"),
        (22, "22nd visit", "22e visite"),
        (23, "23rd visit", "23e visite"),
        (111, "111th visit", "111e visite"),
    ],
)
def test_visit_ordinals(visits: int, english: str, french: str) -> None:
    state = nth_visit(visits)
    now = state.last_event_ms + MINUTE

    assert sentences(state, now)[0] == english
    assert sentences(state, now, "fr")[0] == french


def test_a_visitor_back_after_twelve_days() -> None:
    back = T0 + 12 * DAY + 3 * HOUR
    events = [*views([EN_GREY, EN_NAVY], T0), *views([RUNNER, RACER], back)]
    state = fold("returning", events, RULES)

    said = sentences(state, back + 5 * MINUTE)
    assert said[:2] == ["2nd visit", "back after 12 days"]
    assert not any("as in" in sentence for sentence in said)  # the focus changed
    assert sentences(state, back + 5 * MINUTE, "fr")[:2] == ["2e visite", "de retour après 12 jours"]


def test_the_same_focus_as_the_previous_visit_and_as_every_visit() -> None:
    events = [
        *views([RUNNER, RACER], T0),
        *views([EN_GREY, EN_NAVY], T0 + DAY),
        *views([EN_GREY, EN_CAMEL], T0 + 2 * DAY),
    ]
    state = fold("knitter", events, RULES)
    assert "focused on premium cashmere sweaters, as in the previous visit" in sentences(state, T0 + 2 * DAY + HOUR)

    loyal = fold(
        "loyal", [*views([EN_GREY], T0), *views([EN_NAVY], T0 + DAY), *views([EN_GREY, EN_NAVY], T0 + 2 * DAY)], RULES
    )
    assert "comme à chaque visite" in sentences(loyal, T0 + 2 * DAY + HOUR, "fr")[1]


# ------------------------------------------------------------------------------------- cart, orders
def carting() -> ProfileState:
    events = [
        *views([RUNNER], T0),
        event(
            EventKind.ADD_TO_CART,
            T0 + MINUTE,
            Product("p-sock", "Socks", SHOES, price=50.0, currency="EUR"),
            quantity=2,
        ),
        event(EventKind.ADD_TO_CART, T0 + 2 * MINUTE, Product("p-cap", "Cap", SHOES, price=49.0, currency="EUR")),
    ]
    return fold("carting", events, RULES)


def test_the_cart_and_its_abandonment() -> None:
    state = carting()

    assert "3 items in the cart (149.00 EUR)" in sentences(state, T0 + 5 * MINUTE)
    assert "3 articles dans le panier (149,00 EUR)" in sentences(state, T0 + 5 * MINUTE, "fr")
    assert "abandoned cart with 3 items (149.00 EUR)" in sentences(state, T0 + 2 * HOUR)
    assert "panier abandonné avec 3 articles (149,00 EUR)" in sentences(state, T0 + 2 * HOUR, "fr")
    # The caller's own delay wins over the 30-minute default.
    assert "3 items in the cart (149.00 EUR)" in sentences(state, T0 + 2 * HOUR, abandon_after_ms=3 * HOUR)


def test_large_amounts_follow_each_languages_number_format() -> None:
    coat = Product("p-coat", "Coat", ("Women", "Coats"), price=1249.5, currency="EUR")
    state = fold("coat", [event(EventKind.ADD_TO_CART, T0, coat)], RULES)

    assert "1 item in the cart (1,249.50 EUR)" in sentences(state, T0 + MINUTE)
    assert "1 article dans le panier (1\u202f249,50 EUR)" in sentences(state, T0 + MINUTE, "fr")


def test_a_repeat_buyer() -> None:
    events = [purchase(T0 + i * 10 * DAY, (RUNNER, 1)) for i in range(4)]
    state = fold("repeat", events, RULES)
    now = T0 + 50 * DAY + HOUR

    assert "bought 4 times, last 20 days ago" in sentences(state, now)
    assert "a acheté 4 fois, la dernière il y a 20 jours" in sentences(state, now, "fr")
    assert "bought 4 times, last yesterday" in sentences(state, T0 + 31 * DAY)


# ------------------------------------------------------------------------------------- languages
@pytest.mark.parametrize(
    ("source", "english", "french"),
    [
        ({"utm_medium": "email", "utm_source": "newsletter"}, "came from an e-mail", "visite issue d'un e-mail"),
        ({"referrer": "https://www.instagram.com/"}, "came from social media", "visite issue des réseaux sociaux"),
        ({"referrer": "https://www.google.fr/"}, "came from a search engine", "visite issue d'un moteur de recherche"),
    ],
)
def test_traffic_sources(source: dict[str, str], english: str, french: str) -> None:
    state = fold("visitor", [page(T0, "https://shop.example/", **source)], RULES)

    assert sentences(state, T0 + MINUTE) == ["1st visit", english]
    assert sentences(state, T0 + MINUTE, "fr") == ["1re visite", french]


def test_an_unknown_language_is_refused() -> None:
    with pytest.raises(ValueError, match="'de'"):
        describe(nth_visit(1), [], T0 + HOUR, BANDS, "de")


def test_a_region_does_not_change_the_language() -> None:
    assert describe(nth_visit(1), [], T0 + HOUR, BANDS, "fr-CA") == ["1re visite"]


def test_every_language_says_everything_english_says() -> None:
    english = set(LANGUAGES["en"].phrases)
    for code, table in LANGUAGES.items():
        assert set(table.phrases) == english, code


def test_traits_are_strongest_first_and_stable() -> None:
    state = cashmere_shopper(EN_GREY, EN_NAVY, EN_CAMEL)
    traits = detect_traits(state, CASHMERE_NOW, BANDS)

    assert [trait.strength for trait in traits] == sorted((trait.strength for trait in traits), reverse=True)
    assert detect_traits(ProfileState.from_dict(state.to_dict()), CASHMERE_NOW, BANDS) == traits


# ------------------------------------------------------------------------------------- folding
PRODUCTS = [EN_GREY, EN_NAVY, RUNNER, SCARF, TEE]
CONTEXTS = [
    Context(),
    Context(page_url="https://shop.example/sale/women", referrer="https://www.google.com/"),
    Context(page_url="https://shop.example/knitwear?sort=rating", utm_medium="cpc", utm_campaign="black-friday"),
    Context(device_type="mobile", country="FR", language="fr"),
]


@st.composite
def histories(draw: st.DrawFn) -> list[TrackedEvent]:
    """A few dozen events of every kind, with gaps long enough to open new visits."""
    events: list[TrackedEvent] = []
    at_ms = T0
    for index in range(draw(st.integers(0, 40))):
        at_ms += draw(st.sampled_from([0, 1, MINUTE, 29 * MINUTE, 31 * MINUTE, 3 * DAY]))
        kind = draw(st.sampled_from(list(EventKind)))
        product = draw(st.sampled_from(PRODUCTS))
        order = Order(f"o{draw(st.integers(0, 5))}", (OrderLine(product, 1),), 0.0, "EUR")
        events.append(
            TrackedEvent(
                f"e{index:03d}",
                kind,
                at_ms,
                context=draw(st.sampled_from(CONTEXTS)),
                product=product if kind is not EventKind.PURCHASE else None,
                quantity=draw(st.integers(0, 3)),
                order=order if kind is EventKind.PURCHASE else None,
            )
        )
    return events


@settings(max_examples=200, deadline=None)
@given(histories())
def test_folding_at_once_equals_applying_one_by_one_through_storage(events: list[TrackedEvent]) -> None:
    """Redis holds the state as JSON and applies each new event on top; a rebuild from the log
    folds them all at once. Both must agree exactly, or a rebuild would change a profile."""
    incremental = ProfileState("person")
    for tracked in events:
        incremental = ProfileState.from_dict(json.loads(json.dumps(incremental.to_dict())))
        assert comes_after(incremental, tracked)
        apply(incremental, tracked, RULES)

    assert incremental.to_dict() == fold("person", events, RULES).to_dict()
