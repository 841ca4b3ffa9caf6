"""Business rules: each filter, dedupe, the per-category cap and its relaxation, and rank blending."""

from __future__ import annotations

import pytest

from services.decision.domain.catalog import Catalog
from services.decision.domain.recommenders import Candidate
from services.decision.domain.rules import RRF_K, apply_business_rules, blend
from tests.unit.catalog_fixtures import MEN_SWEATERS, SHOES, catalog_of, product


def shop(count: int = 10) -> Catalog:
    return catalog_of(*(product(f"p{n}") for n in range(count)))


def ranked(*product_ids: str, strategy: str = "TRENDING") -> list[Candidate]:
    return [Candidate(pid, 1.0 - n / 100, strategy, f"{strategy} {pid}") for n, pid in enumerate(product_ids)]


def ids(candidates: list[Candidate]) -> list[str]:
    return [candidate.product_id for candidate in candidates]


def test_nothing_filtered_keeps_the_score_order_up_to_count() -> None:
    candidates = [Candidate("p2", 0.5, "A", ""), Candidate("p1", 0.9, "A", ""), Candidate("p3", 0.1, "A", "")]
    assert ids(apply_business_rules(candidates, shop(), 5)) == ["p1", "p2", "p3"]
    assert ids(apply_business_rules(candidates, shop(), 2)) == ["p1", "p2"]
    assert apply_business_rules(candidates, shop(), 0) == []


def test_unknown_and_out_of_stock_products_are_dropped() -> None:
    catalog = shop()
    catalog.update_stock("p2", 0)
    assert ids(apply_business_rules(ranked("p1", "p2", "ghost", "p3"), catalog, 5)) == ["p1", "p3"]


def test_excluded_products_are_dropped() -> None:
    assert ids(apply_business_rules(ranked("p1", "p2", "p3"), shop(), 5, exclude={"p1", "p3"})) == ["p2"]


def test_purchased_products_are_dropped_unless_consumable_and_allowed() -> None:
    catalog = catalog_of(product("coat"), product("coffee", consumable=True), product("tea", consumable=True))
    candidates = ranked("coat", "coffee", "tea")
    purchased = {"coat", "coffee"}
    kept = apply_business_rules(candidates, catalog, 5, purchased=purchased, allow_consumables_again=True)
    assert ids(kept) == ["coffee", "tea"]
    refused = apply_business_rules(candidates, catalog, 5, purchased=purchased, allow_consumables_again=False)
    assert ids(refused) == ["tea"]


def test_products_above_the_budget_are_dropped() -> None:
    catalog = catalog_of(product("cheap", price=20.0), product("fair", price=60.0), product("dear", price=60.01))
    candidates = ranked("dear", "fair", "cheap")
    assert ids(apply_business_rules(candidates, catalog, 5, max_price=60.0)) == ["fair", "cheap"]
    assert ids(apply_business_rules(candidates, catalog, 5, max_price=None)) == ["dear", "fair", "cheap"]


def test_a_product_named_twice_keeps_its_best_entry() -> None:
    candidates = [
        Candidate("p1", 0.2, "TRENDING", "Popular right now"),
        Candidate("p2", 0.5, "AFFINITY", "Picked for you"),
        Candidate("p1", 0.9, "SIMILAR_ITEMS", "Similar to Merino cardigan"),
    ]
    kept = apply_business_rules(candidates, shop(), 5)
    assert kept == [Candidate("p1", 0.9, "SIMILAR_ITEMS", "Similar to Merino cardigan"), candidates[1]]


def test_at_most_the_cap_per_leaf_category_when_there_is_enough() -> None:
    catalog = catalog_of(
        *(product(f"w{n}") for n in range(4)),
        *(product(f"m{n}", path=MEN_SWEATERS) for n in range(2)),
        *(product(f"s{n}", path=SHOES) for n in range(2)),
    )
    candidates = ranked("w0", "w1", "w2", "w3", "m0", "m1", "s0", "s1")
    # Men's sweaters are another category than women's, though both leaves are named "Sweaters".
    assert ids(apply_business_rules(candidates, catalog, 6, per_category_cap=2)) == ["w0", "w1", "m0", "m1", "s0", "s1"]
    assert ids(apply_business_rules(candidates, catalog, 3, per_category_cap=0)) == ["w0", "w1", "w2"]


def test_the_cap_relaxes_step_by_step_when_too_few_remain() -> None:
    catalog = catalog_of(*(product(f"w{n}") for n in range(5)), *(product(f"s{n}", path=SHOES) for n in range(3)))
    candidates = ranked("w0", "w1", "w2", "w3", "w4", "s0", "s1", "s2")
    # Capped list first (w0, s0), then each category's next one in turn (w1, s1), then w2, s2...
    assert ids(apply_business_rules(candidates, catalog, 6, per_category_cap=1)) == ["w0", "s0", "w1", "s1", "w2", "s2"]
    assert ids(apply_business_rules(candidates, catalog, 3, per_category_cap=2)) == ["w0", "w1", "s0"]
    assert len(apply_business_rules(candidates, catalog, 20, per_category_cap=1)) == 8


def test_rules_combine() -> None:
    catalog = catalog_of(
        product("seen"), product("sold-out", stock=0), product("dear", price=500.0), product("ok1"), product("ok2")
    )
    candidates = ranked("seen", "sold-out", "dear", "ok1", "ok1", "ok2")
    kept = apply_business_rules(
        candidates, catalog, 5, exclude=("seen",), purchased=(), max_price=100.0, per_category_cap=1
    )
    assert ids(kept) == ["ok1", "ok2"]


# ------------------------------------------------------------------------------------------------ blend


def test_blend_fuses_ranks_with_weights() -> None:
    trending = ranked("a", "b", "c", strategy="TRENDING")
    similar = ranked("c", "d", strategy="SIMILAR_ITEMS")
    blended = blend([(trending, 1.0), (similar, 1.0)])
    # c: 1/(k+3) + 1/(k+1) beats a: 1/(k+1).
    assert ids(blended) == ["c", "a", "b", "d"]  # b and d tie at rank 2: b was met first
    assert blended[0].score == pytest.approx(1 / (RRF_K + 3) + 1 / (RRF_K + 1))
    assert blended[0].strategy == "SIMILAR_ITEMS"  # its larger share came from similar items
    assert blended[0].reason == "SIMILAR_ITEMS c"
    popular, alike = ranked("a", "b"), ranked("c", "d")
    assert ids(blend([(popular, 1.0), (alike, 1.0)])) == ["a", "c", "b", "d"]
    assert ids(blend([(popular, 1.0), (alike, 2.0)])) == ["c", "d", "a", "b"]


def test_blend_ignores_unweighted_lists_and_duplicates_within_a_list() -> None:
    first = ranked("a", "a", "b")
    assert ids(blend([(first, 1.0), (ranked("z"), 0.0)])) == ["a", "b"]
    assert blend([(first, 1.0)])[1].score == pytest.approx(1 / (RRF_K + 2))
    assert blend([]) == []


def test_blend_ties_keep_the_first_lists_order() -> None:
    assert ids(blend([(ranked("x", "y"), 1.0), (ranked("y", "x"), 1.0)])) == ["x", "y"]
    assert ids(blend([(ranked("m"), 1.0), (ranked("b"), 1.0)])) == ["m", "b"]
