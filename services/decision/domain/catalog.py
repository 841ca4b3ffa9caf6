"""The shop's catalog in memory: products by id and by category, newest first or by price, with each
category's price distribution (budget / mid / premium terciles). Every recommender reads it on the hot path."""

from __future__ import annotations

import math
import re
from bisect import bisect_left, bisect_right, insort
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import TypeVar

CATEGORY_SEPARATOR = " > "  # as in profile: category keys are paths joined with it, "Women > Knitwear"
ALL_PRODUCTS = ""  # the category key of the whole catalog
BUDGET, MID, PREMIUM = "budget", "mid", "premium"  # the band names profile uses
PRICE_BANDS = (BUDGET, MID, PREMIUM)

MAX_TITLE_LENGTH = 500
MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 200  # brand, category names, attribute keys
MAX_CATEGORY_DEPTH = 8
CONSUMABLE_ATTRIBUTE = "consumable"
_TRUE_WORDS = frozenset({"1", "true", "yes", "y"})
_CURRENCY = re.compile(r"[A-Z]{3}")
# Above this many changed products in one upsert, touched categories are re-sorted once at its end
# instead of paying one O(n) list insertion per product (a full import of 50k products would move ~10 GB).
_BULK_UPSERT = 64
_Entry = TypeVar("_Entry", tuple[int, str], tuple[float, str])


@dataclass(frozen=True, slots=True)
class Product:
    product_id: str
    title: str
    category_path: tuple[str, ...]  # from the root, e.g. ("Women", "Knitwear", "Sweaters")
    brand: str = ""
    price: float = 0.0
    currency: str = ""
    stock: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)
    added_ms: int = 0  # when it arrived in the shop: what "new arrivals" sorts on
    consumable: bool = False  # bought again and again (coffee, ink): may be recommended after a purchase
    # Its category as one key, "Women > Knitwear > Sweaters": unique where a leaf name is not.
    # Derived from category_path once: business rules read it for every candidate of every Decide.
    category: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "category", category_key(self.category_path))

    @property
    def leaf_category(self) -> str:
        """The name of its most specific category, e.g. "Sweaters" (for texts; not unique across the tree)."""
        return self.category_path[-1] if self.category_path else ""


def category_key(category_path: Sequence[str]) -> str:
    return CATEGORY_SEPARATOR.join(category_path)


def category_prefixes(category_path: Sequence[str]) -> tuple[str, ...]:
    """The keys of every category a product with this path belongs to, the whole catalog first."""
    return _prefixes(tuple(category_path[:MAX_CATEGORY_DEPTH]))


@lru_cache(maxsize=16_384)  # every event needs them, and a shop has far fewer paths than events
def _prefixes(path: tuple[str, ...]) -> tuple[str, ...]:
    return (ALL_PRODUCTS, *(category_key(path[: depth + 1]) for depth in range(len(path))))


def category_name(key: str) -> str:
    """The last name of a category key, for texts: "Women > Knitwear" -> "Knitwear"."""
    return key.rpartition(CATEGORY_SEPARATOR)[2]


def consumable_flag(attributes: Mapping[str, str]) -> bool:
    """Whether an imported attribute marks the product consumable (feeds often say consumable=true)."""
    return attributes.get(CONSUMABLE_ATTRIBUTE, "").strip().lower() in _TRUE_WORDS


def validate_product(
    product_id: str,
    title: str,
    category_path: Sequence[str],
    brand: str,
    price: float,
    currency: str,
    stock: int,
    attributes: Mapping[str, str],
    added_ms: int,
) -> list[tuple[str, str]]:
    """What is wrong with an imported product, as (field, message) pairs; empty when it can be stored.

    Messages are short and say what to fix: they become the BadRequest field violations of the import RPC.
    """
    violations: list[tuple[str, str]] = []
    if not product_id.strip():
        violations.append(("product_id", "must not be empty"))
    elif len(product_id) > MAX_ID_LENGTH:
        violations.append(("product_id", f"must be at most {MAX_ID_LENGTH} characters"))
    elif product_id != product_id.strip():
        violations.append(("product_id", "must not start or end with spaces"))
    if not title.strip():
        violations.append(("title", "must not be empty"))
    elif len(title) > MAX_TITLE_LENGTH:
        violations.append(("title", f"must be at most {MAX_TITLE_LENGTH} characters"))
    if not category_path:
        violations.append(("category_path", "must name at least one category"))
    elif len(category_path) > MAX_CATEGORY_DEPTH:
        violations.append(("category_path", f"must be at most {MAX_CATEGORY_DEPTH} levels deep"))
    for depth, name in enumerate(category_path):
        if not name.strip():
            violations.append((f"category_path[{depth}]", "must not be empty"))
        elif CATEGORY_SEPARATOR in name:
            # It would make two different paths share one key.
            violations.append((f"category_path[{depth}]", f"must not contain {CATEGORY_SEPARATOR.strip()!r}"))
        elif len(name) > MAX_TEXT_LENGTH:
            violations.append((f"category_path[{depth}]", f"must be at most {MAX_TEXT_LENGTH} characters"))
    if len(brand) > MAX_TEXT_LENGTH:
        violations.append(("brand", f"must be at most {MAX_TEXT_LENGTH} characters"))
    if not math.isfinite(price):
        violations.append(("price", "must be a number"))
    elif price < 0:
        violations.append(("price", "must not be negative"))
    if not _CURRENCY.fullmatch(currency):
        violations.append(("currency", "must be an ISO 4217 code of 3 uppercase letters, e.g. EUR"))
    if stock < 0:
        violations.append(("stock", "must not be negative"))
    for key in attributes:
        if not key.strip():
            violations.append(("attributes", "keys must not be empty"))
        elif len(key) > MAX_TEXT_LENGTH:
            violations.append((f"attributes[{key[:40]}]", f"key must be at most {MAX_TEXT_LENGTH} characters"))
    if added_ms < 0:
        violations.append(("added_ms", "must not be negative"))
    return violations


def _newest_key(product: Product) -> tuple[int, str]:
    return (-product.added_ms, product.product_id)


def _price_key(product: Product) -> tuple[float, str]:
    return (product.price, product.product_id)


def _first(entry: tuple[float, str]) -> float:
    return entry[0]


class Catalog:
    """Products by id and by category key (the whole catalog, then every prefix of each path).

    Per category it keeps two sorted lists, newest first and cheapest first, updated in place on small
    upserts (a C-level list insertion) and re-sorted once at the end of a bulk import (~0.5 s for 50k
    products, paid by the import and not by the next request); stock changes touch no index, availability
    is checked as lists are read. A product's price band compares
    its price with the prices of its own category (its full path): a 40 EUR T-shirt is premium, a
    40 EUR coat is not. Memory: one entry per product in each of its categories (depth <= 8).
    Not thread-safe: one instance per event loop.
    """

    def __init__(self) -> None:
        self._products: dict[str, Product] = {}
        # category key -> its products (a dict as an insertion-ordered set: deterministic iteration)
        self._members: dict[str, dict[str, None]] = {}
        # Sorted views per category key; a missing key is rebuilt on its next read.
        self._newest: dict[str, list[tuple[int, str]]] = {}
        self._by_price: dict[str, list[tuple[float, str]]] = {}
        self._bands: dict[str, str] = {}  # product id -> price band, until the next upsert or removal
        self._revision = 0

    def __len__(self) -> int:
        return len(self._products)

    def __contains__(self, product_id: object) -> bool:
        return product_id in self._products

    @property
    def revision(self) -> int:
        """Changes with every upsert or removal (not with stock): caches of catalog-derived data key on it."""
        return self._revision

    def get(self, product_id: str) -> Product | None:
        return self._products.get(product_id)

    def is_available(self, product_id: str) -> bool:
        """Known and in stock: what may be shown."""
        product = self._products.get(product_id)
        return product is not None and product.stock > 0

    def upsert(self, products: Iterable[Product]) -> None:
        """Adds or replaces products (a feed import or one product edited)."""
        changes = list(products)
        if not changes:
            return
        self._revision += 1
        self._bands.clear()
        stale: set[str] | None = set() if len(changes) > _BULK_UPSERT else None
        for product in changes:
            previous = self._products.get(product.product_id)
            if previous is not None:
                self._unindex(previous, stale)
            self._products[product.product_id] = product
            self._index(product, stale)
        for category in sorted(stale or ()):
            self._rebuild(category)

    def remove(self, product_id: str) -> bool:
        """Forgets a delisted product; False if it was unknown."""
        product = self._products.pop(product_id, None)
        if product is None:
            return False
        self._revision += 1
        self._bands.clear()
        self._unindex(product, None)
        return True

    def update_stock(self, product_id: str, stock: int) -> bool:
        """Sets the stock of a known product; False if the product is unknown. No index moves."""
        product = self._products.get(product_id)
        if product is None:
            return False
        # A feed's negative stock (back-orders) is simply not available.
        self._products[product_id] = replace(product, stock=max(0, stock))
        return True

    def categories(self) -> Collection[str]:
        """Every category key, the whole catalog ("") included."""
        return self._members.keys()

    def in_category(self, category: str) -> Collection[str]:
        """The products of a category key and of its sub-categories (a leaf's key gives the leaf's products).

        A live view, not a copy: do not upsert while iterating it.
        """
        members = self._members.get(category)
        return members.keys() if members is not None else ()

    def newest(self, category: str = ALL_PRODUCTS) -> Iterator[str]:
        """The products of a category, most recently added first (ties by id), in stock or not."""
        entries = self._newest.get(category)
        if entries is None:
            entries = self._rebuild(category)[0]
        return (product_id for _, product_id in entries)

    def by_price_closeness(self, category: str, price: float) -> Iterator[str]:
        """The products of a category from the closest price to `price` outwards, in stock or not."""
        entries = self._price_entries(category)
        right = bisect_left(entries, price, key=_first)
        left = right - 1
        while left >= 0 or right < len(entries):
            if right >= len(entries) or (left >= 0 and price - entries[left][0] <= entries[right][0] - price):
                yield entries[left][1]
                left -= 1
            else:
                yield entries[right][1]
                right += 1

    def price_percentile(self, product: Product) -> float:
        """Where the price sits in its category, 0 (cheapest) to 1; ties take the middle of their run."""
        entries = self._price_entries(product.category)
        if not entries:
            return 0.5
        below = bisect_left(entries, product.price, key=_first)
        up_to = bisect_right(entries, product.price, key=_first)
        return (below + up_to) / (2 * len(entries))

    def price_band(self, product: Product) -> str:
        """budget, mid or premium: the tercile of the price within the product's category."""
        stored = self._products.get(product.product_id)
        if stored is not None and stored.price == product.price and stored.category_path == product.category_path:
            return self._stored_band(stored)
        return self._band(product)

    def band_of(self, product_id: str) -> str | None:
        """The price band of a known product (remembered until the next upsert); None if unknown."""
        band = self._bands.get(product_id)
        if band is not None:
            return band
        product = self._products.get(product_id)
        return self._stored_band(product) if product is not None else None

    def price_ceiling(self, category: str, band: str) -> float | None:
        """The highest price of a band in a category (a budget-fit limit); None when it sets no limit."""
        entries = self._price_entries(category)
        if not entries or band not in (BUDGET, MID):
            return None
        quantile = 1 / 3 if band == BUDGET else 2 / 3
        # The price at the tercile boundary: products up to it are in the band or below it.
        return entries[max(0, math.ceil(quantile * len(entries)) - 1)][0]

    # ---------------------------------------------------------------------------------------------

    def _stored_band(self, product: Product) -> str:
        band = self._bands.get(product.product_id)
        if band is None:
            band = self._bands[product.product_id] = self._band(product)
        return band

    def _band(self, product: Product) -> str:
        percentile = self.price_percentile(product)
        return BUDGET if percentile < 1 / 3 else PREMIUM if percentile >= 2 / 3 else MID

    def _price_entries(self, category: str) -> list[tuple[float, str]]:
        entries = self._by_price.get(category)
        return entries if entries is not None else self._rebuild(category)[1]

    def _rebuild(self, category: str) -> tuple[list[tuple[int, str]], list[tuple[float, str]]]:
        products = [self._products[product_id] for product_id in self._members.get(category, ())]
        newest = sorted(_newest_key(product) for product in products)
        by_price = sorted(_price_key(product) for product in products)
        if products:  # never cache an unknown key: any string could come in
            self._newest[category] = newest
            self._by_price[category] = by_price
        return newest, by_price

    def _index(self, product: Product, stale: set[str] | None) -> None:
        """Adds to every category; `stale` collects the categories to re-sort at once instead (bulk)."""
        for key in category_prefixes(product.category_path):
            self._members.setdefault(key, {})[product.product_id] = None
            if stale is not None:
                stale.add(key)
                continue
            newest = self._newest.get(key)
            if newest is not None:
                insort(newest, _newest_key(product))
            by_price = self._by_price.get(key)
            if by_price is not None:
                insort(by_price, _price_key(product))

    def _unindex(self, product: Product, stale: set[str] | None) -> None:
        for key in category_prefixes(product.category_path):
            members = self._members.get(key)
            if members is None:
                continue
            members.pop(product.product_id, None)
            if not members:
                del self._members[key]
                self._newest.pop(key, None)
                self._by_price.pop(key, None)
                continue
            if stale is not None:
                stale.add(key)
                continue
            _remove_sorted(self._newest.get(key), _newest_key(product))
            _remove_sorted(self._by_price.get(key), _price_key(product))


def _remove_sorted(entries: list[_Entry] | None, entry: _Entry) -> None:
    if entries is None:
        return
    position = bisect_left(entries, entry)
    if position < len(entries) and entries[position] == entry:
        del entries[position]
