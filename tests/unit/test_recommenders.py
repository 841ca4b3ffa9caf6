"""Recommenders: trending with time decay, frequently bought together, similar items, new arrivals,
affinity picks, recently viewed; their filters, bounds and determinism."""

from __future__ import annotations

import random

import pytest

from services.decision.domain.catalog import BUDGET, PREMIUM, Catalog
from services.decision.domain.recommenders import (
    AFFINITY,
    EVENT_WEIGHTS,
    FREQUENTLY_BOUGHT_TOGETHER,
    HOUR_MS,
    NEW_ARRIVALS,
    RECENTLY_VIEWED,
    SIMILAR_ITEMS,
    TRENDING,
    AffinityPicks,
    Candidate,
    CoPurchase,
    NewArrivals,
    Similar,
    Trending,
    recently_viewed,
)
from services.decision.domain.situations import Strategy
from tests.unit.catalog_fixtures import CARDIGANS, SHOES, SWEATERS, catalog_of, product

DAY = 24 * HOUR_MS


def shop(count: int = 20) -> Catalog:
    return catalog_of(*(product(f"p{n}") for n in range(count)))


def ids(candidates: list[Candidate]) -> list[str]:
    return [candidate.product_id for candidate in candidates]


def test_strategy_names_are_those_of_the_decision_api() -> None:
    names = {RECENTLY_VIEWED, SIMILAR_ITEMS, FREQUENTLY_BOUGHT_TOGETHER, TRENDING, AFFINITY, NEW_ARRIVALS}
    assert names <= {strategy.name for strategy in Strategy}


# ---------------------------------------------------------------------------------------------- trending


def test_event_weights_rank_intent_above_views() -> None:
    assert EVENT_WEIGHTS == {"PRODUCT_VIEW": 1.0, "ADD_TO_CART": 3.0, "PURCHASE": 5.0}
    trending = Trending(shop())
    for _ in range(4):
        assert trending.observe_event("PRODUCT_VIEW", "p1", SWEATERS, 0)
    assert trending.observe_event("PURCHASE", "p2", SWEATERS, 0)
    assert not trending.observe_event("SEARCH", "p3", SWEATERS, 0)
    assert ids(trending.top(5)) == ["p2", "p1"]
    assert trending.score("p2") == pytest.approx(5.0)


def test_scores_halve_every_half_life() -> None:
    trending = Trending(shop(), half_life_ms=DAY)
    trending.observe("p1", SWEATERS, 8.0, 0)
    trending.observe("p2", SWEATERS, 1.0, 2 * DAY)
    assert trending.score("p1") == pytest.approx(2.0)
    assert trending.score("p1", "Women > Knitwear") == pytest.approx(2.0)
    assert trending.score("p2") == pytest.approx(1.0)


def test_recent_interest_overtakes_old_popularity() -> None:
    trending = Trending(shop(), half_life_ms=DAY)
    for _ in range(10):
        trending.observe("p1", SWEATERS, 1.0, 0)
    for _ in range(3):
        trending.observe("p2", SWEATERS, 1.0, 3 * DAY)
    assert ids(trending.top(2)) == ["p2", "p1"]


def test_scores_stay_exact_across_origin_rebases() -> None:
    trending = Trending(shop(), half_life_ms=HOUR_MS)
    trending.observe("p1", SWEATERS, 1.0, 0)
    for hour in range(0, 1000, 10):  # 1000 half-lives: far past a float's range without rebasing
        trending.observe("p2", SWEATERS, 1.0, hour * HOUR_MS)
    trending.observe("p3", SWEATERS, 4.0, 999 * HOUR_MS)
    assert trending.score("p3") == pytest.approx(4.0)
    # p2: 1 + 2^-10 + 2^-20 + ... at the last event (hour 990), then 9 hours older.
    assert trending.score("p2") == pytest.approx(2.0**-9 / (1 - 2.0**-10))
    assert trending.score("p1") == pytest.approx(0.0, abs=1e-200)
    assert ids(trending.top(3))[:2] == ["p3", "p2"]


def test_trending_per_category_and_reasons() -> None:
    catalog = catalog_of(product("s1"), product("c1", path=CARDIGANS), product("shoe", path=SHOES))
    trending = Trending(catalog)
    trending.observe("s1", SWEATERS, 1.0, 0)
    trending.observe("c1", CARDIGANS, 2.0, 0)
    trending.observe("shoe", SHOES, 9.0, 0)
    assert ids(trending.top(5, "Women > Knitwear")) == ["c1", "s1"]
    assert ids(trending.top(5, "Women > Knitwear > Sweaters")) == ["s1"]
    assert ids(trending.top(5)) == ["shoe", "c1", "s1"]
    assert trending.top(1, "Women > Knitwear")[0].reason == "Popular in Knitwear right now"
    assert trending.top(1)[0].reason == "Popular right now"
    assert trending.top(1)[0].strategy == TRENDING
    assert trending.top(5, "Kids") == []


def test_trending_skips_unavailable_excluded_and_unknown_products() -> None:
    catalog = catalog_of(product("p1"), product("p2", stock=0), product("p3"))
    trending = Trending(catalog)
    for number, product_id in enumerate(["p1", "p2", "p3", "ghost"]):
        trending.observe(product_id, SWEATERS, 10.0 - number, 0)
    assert ids(trending.top(5)) == ["p1", "p3"]
    assert ids(trending.top(5, exclude={"p1"})) == ["p3"]
    assert ids(trending.top(1)) == ["p1"]


def test_the_kept_top_matches_a_full_sort_under_a_random_stream() -> None:
    catalog = shop(300)
    trending = Trending(catalog, half_life_ms=HOUR_MS, top_size=8, tail_refresh=1)
    rng = random.Random(7)
    for step in range(5000):
        product_id = f"p{int(rng.paretovariate(1.2)) % 300}"
        trending.observe(product_id, SWEATERS, rng.choice([1.0, 3.0, 5.0]), step * 60_000)
    expected = sorted(catalog.in_category("Women"), key=lambda pid: (-trending.score(pid), pid))
    expected = [pid for pid in expected if trending.score(pid) > 0][:40]
    assert ids(trending.top(40)) == expected
    assert ids(trending.top(40, "Women > Knitwear > Sweaters")) == expected


def test_trending_memory_is_capped_per_category_and_in_categories() -> None:
    trending = Trending(shop(), max_products_per_category=10, max_categories=3, top_size=4)
    for number in range(100):
        trending.observe(f"x{number}", ("A", "B", "C", f"D{number}"), 1.0 + number, number)
    assert trending.category_count == 3  # A, A > B, A > B > C; the D leaves only count in their parents
    assert len(list(trending.ranked("A"))) <= 20
    assert [pid for pid, _ in trending.ranked("A")][:3] == ["x99", "x98", "x97"]
    with pytest.raises(ValueError):
        trending.observe("p1", SWEATERS, -1.0, 0)


def test_ties_break_by_product_id() -> None:
    trending = Trending(shop())
    for product_id in ["p3", "p1", "p2"]:
        trending.observe(product_id, SWEATERS, 1.0, 0)
    assert ids(trending.top(3)) == ["p1", "p2", "p3"]


# ----------------------------------------------------------------------------- frequently bought together


def test_products_bought_together_complement_each_other() -> None:
    co_purchase = CoPurchase(shop())
    for time in range(5):
        co_purchase.observe_order(["p1", "p2"], time)
    co_purchase.observe_order(["p1", "p3"], 6)
    complements = co_purchase.complements(["p1"], 5)
    assert ids(complements) == ["p2", "p3"]
    assert complements[0].strategy == FREQUENTLY_BOUGHT_TOGETHER
    assert complements[0].reason == "Often bought with Title p1"
    assert co_purchase.complements(["p9"], 5) == []


def test_a_best_seller_in_every_basket_does_not_dominate() -> None:
    co_purchase = CoPurchase(shop(40))
    for order in range(30):
        co_purchase.observe_order(["p0", f"p{10 + order}"], order)  # p0 in every basket
    for order in range(3):
        co_purchase.observe_order(["p1", "p2", "p0"], 100 + order)
    assert ids(co_purchase.complements(["p1"], 2)) == ["p2", "p0"]


def test_complements_of_a_cart_sum_over_its_items_and_name_the_strongest() -> None:
    co_purchase = CoPurchase(shop())
    for time in range(3):
        co_purchase.observe_order(["p1", "p5"], time)
    co_purchase.observe_order(["p2", "p5"], 3)
    co_purchase.observe_order(["p2", "p6"], 4)
    complements = co_purchase.complements(["p1", "p2"], 5)
    assert ids(complements) == ["p5", "p6"]
    assert complements[0].reason == "Often bought with Title p1"
    assert ids(co_purchase.complements(["p1", "p2"], 5, exclude={"p5"})) == ["p6"]


def test_complements_skip_the_seeds_and_unavailable_products() -> None:
    catalog = shop()
    catalog.update_stock("p3", 0)
    co_purchase = CoPurchase(catalog)
    co_purchase.observe_order(["p1", "p2", "p3", "p4", "ghost"], 0)
    assert ids(co_purchase.complements(["p1", "p2"], 5)) == ["p4"]


def test_order_lines_and_neighbours_are_capped() -> None:
    co_purchase = CoPurchase(shop(), max_order_lines=3, max_neighbours=4)
    co_purchase.observe_order(["p1", "p2", "p3", "p4"], 0)
    assert ids(co_purchase.complements(["p1"], 5)) == ["p2", "p3"]  # p4 was line 4 of 3
    assert co_purchase.complements(["p4"], 5) == []
    for number in range(5, 20):
        co_purchase.observe_order(["p1", f"p{number}"], number)
    assert co_purchase.neighbour_count("p1") <= 8


def test_old_baskets_fade_behind_recent_ones() -> None:
    co_purchase = CoPurchase(shop(), half_life_ms=DAY)
    for _ in range(4):
        co_purchase.observe_order(["p1", "p2"], 0)
    for _ in range(4):
        co_purchase.observe_order(["p1", "p3"], 10 * DAY)
    assert ids(co_purchase.complements(["p1"], 2)) == ["p3", "p2"]
    undecayed = CoPurchase(shop(), half_life_ms=None)
    for time_ms in (0, 0, 0, 0, 10 * DAY, 10 * DAY, 10 * DAY, 10 * DAY):
        undecayed.observe_order(["p1", "p2" if time_ms == 0 else "p3"], time_ms)
    scores = [candidate.score for candidate in undecayed.complements(["p1"], 2)]
    assert scores[0] == pytest.approx(scores[1])


def test_cached_rankings_follow_new_orders_and_fall_back_when_filtered_empty() -> None:
    catalog = shop()
    co_purchase = CoPurchase(catalog, cached_partners=2, refresh_after=1_000)
    for partner, times in (("p2", 3), ("p3", 2), ("p4", 1)):
        for _ in range(times):
            co_purchase.observe_order(["p1", partner], 0)
    assert ids(co_purchase.complements(["p1"], 1)) == ["p2"]  # now cached
    for _ in range(5):
        co_purchase.observe_order(["p1", "p5"], 0)
    assert ids(co_purchase.complements(["p1"], 1)) == ["p5"]
    catalog.update_stock("p5", 0)
    catalog.update_stock("p2", 0)
    # The two cached best are sold out: the complete ranking is read.
    assert ids(co_purchase.complements(["p1"], 2)) == ["p3", "p4"]


def test_partner_counts_refresh_cached_rankings_after_refresh_after_orders() -> None:
    co_purchase = CoPurchase(shop(), refresh_after=3)
    co_purchase.observe_order(["p1", "p2"], 0)
    co_purchase.observe_order(["p1", "p3"], 0)
    before = co_purchase.complements(["p1"], 2)
    assert before[0].score == pytest.approx(before[1].score)
    for _ in range(3):
        co_purchase.observe_order(["p2"], 0)  # p2 sells alone: its cosine with p1 drops
    assert ids(co_purchase.complements(["p1"], 2)) == ["p3", "p2"]


# ------------------------------------------------------------------------------------------- similar items


def test_products_viewed_in_the_same_session_are_similar() -> None:
    similar = Similar(shop(), content_weight=0.0)
    for session in range(3):
        for product_id in ["p1", "p2", "p3"]:
            similar.observe_session_view(f"s{session}", product_id, session)
    similar.observe_session_view("s9", "p1", 10)
    similar.observe_session_view("s9", "p4", 11)
    found = similar.similar("p1", 5)
    assert ids(found) == ["p2", "p3", "p4"]
    assert found[0].strategy == SIMILAR_ITEMS
    assert found[0].reason == "Similar to Title p1"


def test_views_pair_only_within_the_window_and_reloads_add_nothing() -> None:
    similar = Similar(shop(), window=2, content_weight=0.0)
    for product_id in ["p1", "p2", "p3", "p4"]:
        similar.observe_session_view("s", product_id, 0)
    assert ids(similar.similar("p1", 5)) == ["p2", "p3"]
    assert ids(similar.similar("p4", 5)) == ["p2", "p3"]
    reloaded = Similar(shop(), content_weight=0.0)
    for product_id in ["p1", "p2", "p2", "p2", "p1"]:
        reloaded.observe_session_view("s", product_id, 0)
    reloaded.observe_session_view("t", "p1", 0)
    reloaded.observe_session_view("t", "p3", 0)
    reloaded.observe_session_view("t", "p3", 0)
    scores = {candidate.product_id: candidate.score for candidate in reloaded.similar("p1", 5)}
    assert scores["p2"] == pytest.approx(scores["p3"])


def test_sessions_are_capped_least_recently_active_first() -> None:
    similar = Similar(shop(), max_sessions=2, content_weight=0.0)
    similar.observe_session_view("a", "p1", 0)
    similar.observe_session_view("b", "p2", 0)
    similar.observe_session_view("a", "p3", 0)  # a is active again: b is the oldest
    similar.observe_session_view("c", "p4", 0)
    assert similar.session_count == 2
    similar.observe_session_view("b", "p5", 0)  # b was evicted: p5 pairs with nothing
    assert similar.similar("p5", 5) == []
    similar.end_session("c")
    assert similar.session_count == 1  # b came back and pushed a out
    similar.observe_session_view("b", "p6", 0)
    assert ids(similar.similar("p6", 5)) == ["p5"]


def test_cold_products_get_look_alikes_from_their_category() -> None:
    catalog = catalog_of(
        product("cold", price=100.0, brand="Nord"),
        product("same-brand", price=90.0, brand="Nord"),
        product("close-price", price=98.0, brand="Other"),
        product("far-price", price=20.0, brand="Other"),
        product("sold-out", price=100.0, brand="Nord", stock=0),
        product("shoe", path=SHOES, price=100.0, brand="Nord"),
    )
    found = Similar(catalog).similar("cold", 5)
    assert ids(found) == ["same-brand", "close-price", "far-price"]
    assert found[0].reason == "Similar to Title cold"


def test_co_views_lead_over_look_alikes() -> None:
    catalog = catalog_of(
        product("p1", price=100.0), product("twin", price=100.0), product("shoe", path=SHOES, price=10.0)
    )
    similar = Similar(catalog)
    for session in range(5):
        similar.observe_session_view(f"s{session}", "p1", 0)
        similar.observe_session_view(f"s{session}", "shoe", 0)
    assert ids(similar.similar("p1", 5)) == ["shoe", "twin"]
    assert ids(similar.similar("p1", 5, exclude={"shoe"})) == ["twin"]


def test_look_alikes_follow_catalog_changes() -> None:
    catalog = catalog_of(product("p1", price=100.0), product("p2", price=50.0))
    similar = Similar(catalog)
    assert ids(similar.similar("p1", 5)) == ["p2"]
    catalog.upsert([product("p3", price=100.0)])
    assert ids(similar.similar("p1", 5)) == ["p3", "p2"]


def test_alternatives_to_a_cart_name_the_closest_item() -> None:
    catalog = catalog_of(product("coat", path=("Coats",), price=200.0), product("parka", path=("Coats",), price=210.0))
    catalog.upsert([product("boot", path=SHOES, price=80.0), product("sneaker", path=SHOES, price=85.0)])
    found = Similar(catalog).alternatives(["coat", "boot"], 5)
    assert {candidate.product_id: candidate.reason for candidate in found} == {
        "parka": "Similar to Title coat",
        "sneaker": "Similar to Title boot",
    }
    assert Similar(catalog).similar("ghost", 5) == []


# -------------------------------------------------------------------------------------------- new arrivals


def test_new_arrivals_are_newest_first_across_categories() -> None:
    catalog = catalog_of(
        product("s-old", added_ms=1 * DAY),
        product("s-new", added_ms=5 * DAY),
        product("c-new", path=CARDIGANS, added_ms=4 * DAY),
        product("s-gone", added_ms=6 * DAY, stock=0),
        product("shoe", path=SHOES, added_ms=9 * DAY),
    )
    arrivals = NewArrivals(catalog, freshness_half_life_ms=DAY)
    found = arrivals.new_in(["Women > Knitwear > Sweaters", "Women > Knitwear > Cardigans"], 5)
    assert ids(found) == ["s-new", "c-new", "s-old"]
    assert [candidate.score for candidate in found] == pytest.approx([1.0, 0.5, 2.0**-4])
    assert found[0].reason == "New in Sweaters"
    assert found[1].reason == "New in Cardigans"
    assert found[0].strategy == NEW_ARRIVALS
    assert ids(arrivals.new_in(["Women", "Women > Knitwear"], 5)) == ["s-new", "c-new", "s-old"]  # once each
    assert ids(arrivals.new_in([], 2)) == ["shoe", "s-new"]
    assert arrivals.new_in([], 1)[0].reason == "Just arrived"
    assert ids(arrivals.new_in(["Women"], 5, exclude={"s-new"})) == ["c-new", "s-old"]


def test_new_arrivals_stop_at_the_age_limit() -> None:
    catalog = catalog_of(product("recent", added_ms=95 * DAY), product("old", added_ms=1 * DAY))
    arrivals = NewArrivals(catalog, max_age_ms=30 * DAY)
    assert ids(arrivals.new_in(["Women"], 5, now_ms=100 * DAY)) == ["recent"]
    assert ids(arrivals.new_in(["Women"], 5)) == ["recent", "old"]


# ---------------------------------------------------------------------------------------------- affinity


def affinity_shop() -> tuple[Catalog, Trending]:
    catalog = catalog_of(
        *(product(f"s{price}", price=float(price), added_ms=price) for price in range(10, 100, 10)),
        *(product(f"c{price}", path=CARDIGANS, price=float(price), added_ms=price) for price in range(10, 100, 10)),
    )
    trending = Trending(catalog)
    for price in range(10, 100, 10):
        trending.observe(f"s{price}", SWEATERS, float(price), 0)  # the dearer, the more popular
        trending.observe(f"c{price}", CARDIGANS, float(100 - price), 0)  # the cheaper, the more popular
    return catalog, trending


def test_affinity_picks_keep_to_the_price_band_ranked_by_trend() -> None:
    catalog, trending = affinity_shop()
    picks = AffinityPicks(catalog, trending).picks({"Women > Knitwear > Sweaters": 1.0}, PREMIUM, 5)
    assert ids(picks) == ["s90", "s80", "s70"]
    assert picks[0].reason == "Premium picks in Sweaters for you"
    assert picks[0].strategy == AFFINITY
    budget = AffinityPicks(catalog, trending).picks({"Women > Knitwear > Sweaters": 1.0}, BUDGET, 5)
    assert ids(budget) == ["s30", "s20", "s10"]
    anything = AffinityPicks(catalog, trending).picks({"Women > Knitwear > Sweaters": 1.0}, None, 2)
    assert ids(anything) == ["s90", "s80"]
    assert anything[0].reason == "Picked for you in Sweaters"


def test_affinity_picks_weigh_each_category_by_the_visitors_taste() -> None:
    catalog, trending = affinity_shop()
    picks = AffinityPicks(catalog, trending).picks(
        {"Women > Knitwear > Sweaters": 0.7, "Women > Knitwear > Cardigans": 0.3, "Kids": 0.0}, PREMIUM, 6
    )
    # Each category scaled to its weight: sweaters 0.7, 0.62, 0.54; cardigans 0.3, 0.2, 0.1.
    assert ids(picks) == ["s90", "s80", "s70", "c70", "c80", "c90"]
    assert [candidate.score for candidate in picks] == pytest.approx([0.7, 0.7 * 8 / 9, 0.7 * 7 / 9, 0.3, 0.2, 0.1])


def test_affinity_picks_fill_cold_categories_with_new_products_and_respect_exclusions() -> None:
    catalog, trending = affinity_shop()
    catalog.upsert([product(f"h{n}", path=("Home",), price=float(n), added_ms=n) for n in range(1, 4)])
    picks = AffinityPicks(catalog, trending).picks({"Home": 1.0}, None, 2)
    assert ids(picks) == ["h3", "h2"]
    excluded = AffinityPicks(catalog, trending).picks({"Women > Knitwear > Sweaters": 1.0}, PREMIUM, 5, {"s90"})
    assert ids(excluded) == ["s80", "s70"]


def test_affinity_picks_follow_the_trend_after_refresh_after_events_and_stock_at_once() -> None:
    catalog, trending = affinity_shop()
    picks = AffinityPicks(catalog, trending, refresh_after=5)
    sweaters = {"Women > Knitwear > Sweaters": 1.0}
    assert ids(picks.picks(sweaters, PREMIUM, 1)) == ["s90"]
    catalog.update_stock("s90", 0)
    assert ids(picks.picks(sweaters, PREMIUM, 1)) == ["s80"]  # stock is checked on every query
    catalog.update_stock("s90", 3)
    for _ in range(5):
        trending.observe("s70", SWEATERS, 100.0, 0)
    assert ids(picks.picks(sweaters, PREMIUM, 1)) == ["s70"]


# --------------------------------------------------------------------------------------- recently viewed


def test_recently_viewed_dedupes_keeps_order_and_skips_unavailable() -> None:
    catalog = shop()
    catalog.update_stock("p3", 0)
    found = recently_viewed(catalog, ["p2", "p1", "p2", "p3", "ghost", "p4", "p5"], 3, exclude={"p4"})
    assert ids(found) == ["p2", "p1", "p5"]
    assert found[0].strategy == RECENTLY_VIEWED
    assert [candidate.score for candidate in found] == [1.0, 0.5, 1 / 3]
