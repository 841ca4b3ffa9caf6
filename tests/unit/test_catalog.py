"""Catalog: lookups, availability, category indexes, newest and price orders, price bands, import validation."""

from __future__ import annotations

import pytest

from services.decision.domain.catalog import (
    ALL_PRODUCTS,
    BUDGET,
    MID,
    PREMIUM,
    category_prefixes,
    consumable_flag,
    validate_product,
)
from tests.unit.catalog_fixtures import CARDIGANS, MEN_SWEATERS, SWEATERS, catalog_of, product


def test_a_product_knows_its_leaf_name_and_category_key() -> None:
    sweater = product("p1")
    assert sweater.leaf_category == "Sweaters"
    assert sweater.category == "Women > Knitwear > Sweaters"
    assert product("p2", path=()).leaf_category == ""
    assert category_prefixes(list(SWEATERS)) == ("", "Women", "Women > Knitwear", "Women > Knitwear > Sweaters")


def test_get_len_and_availability_follow_upserts_and_stock_updates() -> None:
    catalog = catalog_of(product("p1"), product("p2", stock=0))
    assert len(catalog) == 2
    assert catalog.get("p1") == product("p1")
    assert catalog.get("nope") is None
    assert catalog.is_available("p1")
    assert not catalog.is_available("p2")  # known but sold out
    assert not catalog.is_available("nope")
    assert catalog.update_stock("p2", 5)
    assert catalog.is_available("p2")
    assert catalog.update_stock("p1", -1)  # a feed's back-order: not available
    assert not catalog.is_available("p1")
    assert not catalog.update_stock("nope", 5)
    assert "nope" not in catalog


def test_products_are_found_by_leaf_key_and_by_any_prefix() -> None:
    catalog = catalog_of(product("s1"), product("c1", path=CARDIGANS), product("m1", path=MEN_SWEATERS))
    assert list(catalog.in_category("Women > Knitwear > Sweaters")) == ["s1"]
    assert sorted(catalog.in_category("Women > Knitwear")) == ["c1", "s1"]
    assert sorted(catalog.in_category("Women")) == ["c1", "s1"]
    assert sorted(catalog.in_category(ALL_PRODUCTS)) == ["c1", "m1", "s1"]
    assert list(catalog.in_category("Men > Knitwear > Sweaters")) == ["m1"]  # same leaf name, other category
    assert list(catalog.in_category("Kids")) == []


def test_an_upsert_that_moves_a_product_reindexes_it() -> None:
    catalog = catalog_of(product("p1"), product("p2"))
    catalog.upsert([product("p1", path=CARDIGANS, price=90.0)])
    assert list(catalog.in_category("Women > Knitwear > Sweaters")) == ["p2"]
    assert list(catalog.in_category("Women > Knitwear > Cardigans")) == ["p1"]
    assert len(catalog) == 2
    assert catalog.remove("p2")
    assert not catalog.remove("p2")
    assert "Women > Knitwear > Sweaters" not in catalog.categories()


@pytest.mark.parametrize("bulk", [False, True])
def test_newest_lists_most_recent_first_and_follows_changes(bulk: bool) -> None:
    filler = [product(f"f{n}", path=("Home",), added_ms=n) for n in range(100 if bulk else 0)]
    catalog = catalog_of(product("old", added_ms=10), product("new", added_ms=30), product("mid", added_ms=20), *filler)
    assert list(catalog.newest("Women > Knitwear"))[:3] == ["new", "mid", "old"]
    # Caches were built by the read above; small upserts must keep them right.
    catalog.upsert([product("newer", added_ms=40), product("old", added_ms=50)])
    assert list(catalog.newest("Women")) == ["old", "newer", "new", "mid"]
    catalog.remove("newer")
    assert list(catalog.newest("Women > Knitwear > Sweaters")) == ["old", "new", "mid"]
    assert list(catalog.newest("Kids")) == []


def test_a_bulk_upsert_after_reads_keeps_the_sorted_views_right() -> None:
    catalog = catalog_of(product("a", added_ms=1, price=10.0))
    assert list(catalog.newest()) == ["a"]
    catalog.upsert([product(f"p{n}", added_ms=1000 - n, price=float(n)) for n in range(100)])
    assert list(catalog.newest())[:2] == ["p0", "p1"]
    assert list(catalog.newest())[-1] == "a"
    assert list(catalog.by_price_closeness("Women", 0.0))[:2] == ["p0", "p1"]


def test_by_price_closeness_walks_outwards_from_the_price() -> None:
    catalog = catalog_of(*(product(f"p{price}", price=float(price)) for price in (10, 20, 30, 45, 100)))
    assert list(catalog.by_price_closeness("Women > Knitwear > Sweaters", 32.0)) == [
        "p30",
        "p20",
        "p45",
        "p10",
        "p100",
    ]
    assert list(catalog.by_price_closeness("Kids", 32.0)) == []


def test_price_bands_are_terciles_of_the_products_category() -> None:
    prices = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    catalog = catalog_of(
        *(product(f"s{n}", price=price) for n, price in enumerate(prices)),
        product("coat", path=("Women", "Coats"), price=40.0),
        product("coat2", path=("Women", "Coats"), price=400.0),
        product("coat3", path=("Women", "Coats"), price=800.0),
    )
    bands = [catalog.price_band(catalog.get(f"s{n}")) for n in range(9)]  # type: ignore[arg-type]
    assert bands == [BUDGET] * 3 + [MID] * 3 + [PREMIUM] * 3
    # The same 40 EUR is mid for a sweater and budget for a coat.
    assert catalog.price_band(catalog.get("coat")) == BUDGET  # type: ignore[arg-type]
    assert catalog.price_percentile(catalog.get("s0")) == pytest.approx(1 / 18)  # type: ignore[arg-type]
    assert catalog.price_ceiling("Women > Knitwear > Sweaters", BUDGET) == 30.0
    assert catalog.price_ceiling("Women > Knitwear > Sweaters", MID) == 60.0
    assert catalog.price_ceiling("Women > Knitwear > Sweaters", PREMIUM) is None
    assert catalog.price_ceiling("Kids", BUDGET) is None


def test_equal_prices_and_lone_products_are_mid() -> None:
    catalog = catalog_of(product("a", price=30.0), product("b", price=30.0), product("c", path=("Solo",)))
    assert catalog.price_band(catalog.get("a")) == MID  # type: ignore[arg-type]
    assert catalog.price_band(catalog.get("c")) == MID  # type: ignore[arg-type]
    assert catalog.price_band(product("unknown", path=("Nowhere",))) == MID


def test_price_order_follows_a_price_change() -> None:
    catalog = catalog_of(product("a", price=10.0), product("b", price=20.0), product("c", price=30.0))
    assert catalog.price_band(catalog.get("a")) == BUDGET  # type: ignore[arg-type]
    assert catalog.band_of("b") == MID
    catalog.upsert([product("a", price=99.0)])
    assert catalog.price_band(catalog.get("a")) == PREMIUM  # type: ignore[arg-type]
    assert catalog.band_of("b") == BUDGET  # remembered bands go with the upsert
    assert catalog.band_of("ghost") is None
    # A product given with another price than the stored one is banded by its own price.
    assert catalog.price_band(product("a", price=1.0)) == BUDGET
    assert catalog.band_of("a") == PREMIUM
    assert list(catalog.by_price_closeness("Women", 0.0)) == ["b", "c", "a"]


@pytest.mark.parametrize("value", ["true", "Yes", "1"])
def test_consumable_flag_reads_feed_attributes(value: str) -> None:
    assert consumable_flag({"consumable": value})
    assert not consumable_flag({"consumable": "no"})
    assert not consumable_flag({})


VALID = {
    "product_id": "p1",
    "title": "Merino cardigan",
    "category_path": ("Women", "Knitwear"),
    "brand": "Acme",
    "price": 59.0,
    "currency": "EUR",
    "stock": 3,
    "attributes": {"colour": "navy"},
    "added_ms": 1_700_000_000_000,
}


def test_a_valid_product_has_no_violation() -> None:
    assert validate_product(**VALID) == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value", "violated"),
    [
        ("product_id", "", "product_id"),
        ("product_id", " p1", "product_id"),
        ("product_id", "x" * 201, "product_id"),
        ("title", "", "title"),
        ("title", "x" * 501, "title"),
        ("category_path", (), "category_path"),
        ("category_path", ("Women", ""), "category_path[1]"),
        ("category_path", ("Women > Knitwear",), "category_path[0]"),
        ("category_path", tuple("abcdefghi"), "category_path"),
        ("brand", "x" * 201, "brand"),
        ("price", -1.0, "price"),
        ("price", float("nan"), "price"),
        ("currency", "eur", "currency"),
        ("currency", "EURO", "currency"),
        ("currency", "", "currency"),
        ("stock", -1, "stock"),
        ("attributes", {"": "x"}, "attributes"),
        ("added_ms", -5, "added_ms"),
    ],
)
def test_each_invalid_field_is_reported_by_name(field: str, value: object, violated: str) -> None:
    violations = validate_product(**{**VALID, field: value})  # type: ignore[arg-type]
    assert [name for name, _ in violations] == [violated]
    assert all(message for _, message in violations)
