"""Candidate generators of the decision service: models learning on every event of the profile stream
(trending, frequently bought together, similar items) and catalog readers (new arrivals, affinity picks,
recently viewed). Each returns ranked `Candidate`s of available products, keeps its memory bounded and
breaks ties by product id, so the same events always give the same answer."""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import MappingProxyType

from services.decision.domain.catalog import ALL_PRODUCTS, Catalog, category_name, category_prefixes

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Strategy names, as the members of situations.Strategy and rapport.decision.v1.Strategy (without prefix).
RECENTLY_VIEWED = "RECENTLY_VIEWED"
SIMILAR_ITEMS = "SIMILAR_ITEMS"
FREQUENTLY_BOUGHT_TOGETHER = "FREQUENTLY_BOUGHT_TOGETHER"
TRENDING = "TRENDING"
AFFINITY = "AFFINITY"
NEW_ARRIVALS = "NEW_ARRIVALS"

# How much one event says about a product's popularity, by event type name of the profile stream: a
# cart or an order shows intent a view does not (the weights profile uses for affinities).
# Other event types carry no popularity signal.
EVENT_WEIGHTS: Mapping[str, float] = MappingProxyType({"PRODUCT_VIEW": 1.0, "ADD_TO_CART": 3.0, "PURCHASE": 5.0})

# A query reads at most this many entries per wanted candidate before giving up on a filter (out of
# stock, excluded, wrong price band): bounds the worst case of a request on a mostly sold-out category.
_SCAN_PER_CANDIDATE = 20


@dataclass(slots=True)  # not frozen: a Decide makes about a hundred, and a frozen one costs 3x to build
class Candidate:
    product_id: str
    score: float  # comparable within one strategy's list only; `rules.blend` merges lists by rank
    strategy: str
    reason: str  # a short text for the shopper, e.g. "Often bought with Cashmere crew neck"


def _ranked(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """Best score first, ties by product id: two C-level sorts (by id, then stably by score) instead of a
    Python key function, 3-4 times faster on the lists queries re-sort."""
    return sorted(sorted(scores.items()), key=itemgetter(1), reverse=True)


class _DecayFrame:
    """Exponential time decay in O(1) per event: a weight seen at t is stored as w * 2^((t - origin) / half_life).

    Every stored score then shares one time reference, so scores add and compare without being decayed
    one by one; the decayed value at the latest event is stored * 2^(-(latest - origin) / half_life).
    Before the factors overflow a float, the origin jumps forward and the owner rescales its scores once
    (every 64 half-lives: 2 months for trending). half_life None: no decay.
    """

    REBASE_AFTER = 64.0  # half-lives

    def __init__(self, half_life_ms: float | None) -> None:
        if half_life_ms is not None and half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be positive, got {half_life_ms}")
        self.half_life_ms = half_life_ms
        self.origin_ms: float | None = None
        self.latest_ms: float | None = None

    def advance(self, time_ms: float) -> float:
        """Records an event time; returns the factor every stored score must be multiplied by (1 = none)."""
        if self.latest_ms is None or time_ms > self.latest_ms:
            self.latest_ms = time_ms
        if self.half_life_ms is None:
            return 1.0
        if self.origin_ms is None:
            self.origin_ms = time_ms
            return 1.0
        elapsed = (time_ms - self.origin_ms) / self.half_life_ms
        if elapsed <= self.REBASE_AFTER:
            return 1.0
        self.origin_ms = time_ms
        return float(2.0**-elapsed)

    def stored(self, weight: float, time_ms: float) -> float:
        if self.half_life_ms is None or self.origin_ms is None:
            return weight
        return weight * float(2.0 ** ((time_ms - self.origin_ms) / self.half_life_ms))

    def to_now(self) -> float:
        """The factor turning a stored score into its decayed value at the latest event."""
        if self.half_life_ms is None or self.origin_ms is None or self.latest_ms is None:
            return 1.0
        return float(2.0 ** ((self.origin_ms - self.latest_ms) / self.half_life_ms))


def _prune(scores: dict[str, float], keep: int) -> None:
    """Keeps the `keep` highest scores (ties by id)."""
    kept = heapq.nsmallest(keep, scores.items(), key=lambda entry: (-entry[1], entry[0]))
    scores.clear()
    scores.update(kept)


# -------------------------------------------------------------------------------------------------
# Trending
# -------------------------------------------------------------------------------------------------


class _Leaderboard:
    """One category's popularity scores with its top entries kept exactly on every update.

    In the decay frame a stored score only grows, so a product can enter the top only through its own
    update, which passes here: the top stays exact with O(log top) work per event (a min-heap of the top,
    whose outdated entries are dropped as they surface), and a query sorts only the top. Past the top, a
    query reads a full ranking re-sorted once it is `tail_refresh` updates old (the tail may lag; the top never).
    """

    __slots__ = ("heap", "ranked_top", "scores", "tail", "tail_age", "top", "updates")

    def __init__(self) -> None:
        self.scores: dict[str, float] = {}
        self.top: dict[str, float] = {}
        # (score, product id) of every top entry, plus outdated ones (lower scores of the same product or
        # products pushed out): the weakest of the top is the first entry that is still current.
        self.heap: list[tuple[float, str]] = []
        self.ranked_top: list[tuple[str, float]] | None = []
        self.tail: list[tuple[str, float]] | None = None
        self.tail_age = 0
        self.updates = 0

    def add(self, product_id: str, increment: float, top_size: int) -> None:
        score = self.scores.get(product_id, 0.0) + increment
        self.scores[product_id] = score
        self.tail_age += 1
        self.updates += 1
        top = self.top
        if product_id not in top and len(top) >= top_size:
            heap = self.heap
            if score <= heap[0][0]:  # a lower bound of the weakest current score: out for sure
                return
            while top.get(heap[0][1]) != heap[0][0]:
                heapq.heappop(heap)
            if score <= heap[0][0]:
                return
            del top[heapq.heappop(heap)[1]]
        top[product_id] = score
        heapq.heappush(self.heap, (score, product_id))
        self.ranked_top = None
        if len(self.heap) > 4 * top_size:
            self._rebuild_heap()

    def ranked(self, tail_refresh: int) -> Iterator[tuple[str, float]]:
        if self.ranked_top is None:
            self.ranked_top = _ranked(self.top)
        yield from self.ranked_top
        if len(self.scores) <= len(self.top):
            return
        if self.tail is None or self.tail_age >= tail_refresh:
            self.tail = _ranked(self.scores)
            self.tail_age = 0
        for product_id, score in self.tail:
            if product_id not in self.top:
                yield product_id, score

    def rescale(self, factor: float) -> None:
        for table in (self.scores, self.top):
            for product_id in table:
                table[product_id] *= factor
        self._rebuild_heap()
        self.ranked_top = None
        self.tail = None

    def prune(self, keep: int) -> None:
        _prune(self.scores, keep)
        self.scores.update(self.top)  # a tie at the cut could have dropped a top entry
        self.tail = None

    def _rebuild_heap(self) -> None:
        self.heap = [(score, product_id) for product_id, score in self.top.items()]
        heapq.heapify(self.heap)


class Trending:
    """Time-decayed popularity of products, overall and per category (every prefix of the path).

    score(p) = sum of EVENT_WEIGHTS over p's events, each halved every `half_life_ms` since it happened.
    Memory: at most 2 x `max_products_per_category` scores per category (the weakest are pruned when a
    category doubles past the cap; with a bounded catalog that is one score per product and category
    level) and `max_categories` categories (events of further categories count overall only).
    A query reads the category's exact top `top_size` first, and a full ranking beyond it.
    """

    def __init__(
        self,
        catalog: Catalog,
        half_life_ms: float = 24 * HOUR_MS,
        max_products_per_category: int = 5_000,
        max_categories: int = 10_000,
        top_size: int = 256,
        tail_refresh: int = 10_000,
    ) -> None:
        if min(max_products_per_category, max_categories, top_size, tail_refresh) <= 0:
            raise ValueError("caps of Trending must be positive")
        self._catalog = catalog
        self._frame = _DecayFrame(half_life_ms)
        self._max_products = max(max_products_per_category, top_size)
        self._max_categories = max_categories
        self._top_size = top_size
        self._tail_refresh = tail_refresh
        self._boards: dict[str, _Leaderboard] = {ALL_PRODUCTS: _Leaderboard()}

    @property
    def category_count(self) -> int:
        return len(self._boards) - 1

    def observe_event(self, event_type: str, product_id: str, category_path: Sequence[str], time_ms: int) -> bool:
        """Learns from one profile event; False (and nothing learnt) for a type without EVENT_WEIGHTS."""
        weight = EVENT_WEIGHTS.get(event_type)
        if weight is None:
            return False
        self.observe(product_id, category_path, weight, time_ms)
        return True

    def observe(self, product_id: str, category_path: Sequence[str], weight: float, time_ms: int) -> None:
        """Adds `weight` (>= 0) to the product's popularity overall and in each category of its path."""
        if weight < 0:
            raise ValueError(f"a popularity weight cannot be negative, got {weight}")  # scores must only grow
        factor = self._frame.advance(time_ms)
        if factor != 1.0:
            for stale in self._boards.values():
                stale.rescale(factor)
        increment = self._frame.stored(weight, time_ms)
        for key in category_prefixes(category_path):
            board = self._boards.get(key)
            if board is None:
                if len(self._boards) - 1 >= self._max_categories:
                    continue
                board = self._boards[key] = _Leaderboard()
            board.add(product_id, increment, self._top_size)
            if len(board.scores) > 2 * self._max_products:
                board.prune(self._max_products)

    def version(self, category: str = ALL_PRODUCTS) -> int:
        """How many events the category has counted: caches of rankings derived from it key on it."""
        board = self._boards.get(category)
        return board.updates if board is not None else 0

    def score(self, product_id: str, category: str = ALL_PRODUCTS) -> float:
        """The decayed score at the latest observed event; 0 if unknown."""
        board = self._boards.get(category)
        return board.scores.get(product_id, 0.0) * self._frame.to_now() if board is not None else 0.0

    def ranked(self, category: str = ALL_PRODUCTS) -> Iterator[tuple[str, float]]:
        """(product id, decayed score) of a category, most popular first, available or not."""
        board = self._boards.get(category)
        if board is None:
            return
        to_now = self._frame.to_now()
        for product_id, score in board.ranked(self._tail_refresh):
            yield product_id, score * to_now

    def top(self, count: int, category: str = ALL_PRODUCTS, exclude: Collection[str] = ()) -> list[Candidate]:
        """The most popular available products of a category key ("" = the whole shop)."""
        reason = f"Popular in {category_name(category)} right now" if category else "Popular right now"
        picked: list[Candidate] = []
        scan_left = _SCAN_PER_CANDIDATE * count + len(exclude)
        for product_id, score in self.ranked(category):
            if len(picked) >= count or scan_left <= 0:
                break
            scan_left -= 1
            if product_id not in exclude and self._catalog.is_available(product_id):
                picked.append(Candidate(product_id, score, TRENDING, reason))
        return picked


# -------------------------------------------------------------------------------------------------
# Co-occurrence: frequently bought together, co-viewed
# -------------------------------------------------------------------------------------------------


class _CoOccurrence:
    """Decayed co-occurrence counts between products, normalised so that best-sellers do not dominate.

    related(a, b) = co(a, b) / sqrt(n(a) * n(b)) * co(a, b) / (co(a, b) + shrink): the cosine of the two
    products' occurrence vectors, damped while the pair was seen only a few times (one joint occurrence
    weighs half, with shrink 1). A best-seller in every basket co-occurs with everything but its large
    n(b) keeps its cosine low. Memory: at most 2 x `max_neighbours` partners per product (the weakest
    pairs are pruned when a list doubles past the cap) and 2 x `max_products` products (the least
    frequent forgotten the same way).
    """

    def __init__(
        self, half_life_ms: float | None, max_neighbours: int, max_products: int, shrink: float, refresh_after: int
    ) -> None:
        if min(max_neighbours, max_products, refresh_after) <= 0 or shrink < 0:
            raise ValueError("co-occurrence caps must be positive and shrink >= 0")
        self.frame = _DecayFrame(half_life_ms)
        self._max_neighbours = max_neighbours
        self._max_products = max_products
        self._shrink = shrink
        self._refresh_after = refresh_after
        self._counts: dict[str, float] = {}
        self._neighbours: dict[str, dict[str, float]] = {}
        self._observations = 0
        self._paired_at: dict[str, int] = {}  # product id -> the observation that last changed its pairs

    @property
    def product_count(self) -> int:
        return len(self._counts)

    def neighbour_count(self, product_id: str) -> int:
        return len(self._neighbours.get(product_id, ()))

    def version(self, product_id: str) -> tuple[int, int]:
        """Changes when the product's pairs change, and every `refresh_after` observations (partners' counts
        move its normalised scores too, slowly): a ranking cached under the same version is still good."""
        return self._paired_at.get(product_id, 0), self._observations // self._refresh_after

    def start(self, time_ms: float) -> float:
        """Moves the clock to an observation; returns the stored weight of one occurrence at that time."""
        self._observations += 1
        factor = self.frame.advance(time_ms)
        if factor != 1.0:
            for product_id in self._counts:
                self._counts[product_id] *= factor
            for partners in self._neighbours.values():
                for partner in partners:
                    partners[partner] *= factor
        return self.frame.stored(1.0, time_ms)

    def add_occurrence(self, product_id: str, weight: float) -> None:
        self._counts[product_id] = self._counts.get(product_id, 0.0) + weight
        if len(self._counts) > 2 * self._max_products:
            _prune(self._counts, self._max_products)
            for table in (self._neighbours, self._paired_at):
                for forgotten in [product for product in table if product not in self._counts]:
                    del table[forgotten]

    def add_pair(self, first: str, second: str, weight: float) -> None:
        for product_id, partner in ((first, second), (second, first)):
            if product_id not in self._counts:
                continue  # forgotten by a prune in this very observation
            partners = self._neighbours.setdefault(product_id, {})
            partners[partner] = partners.get(partner, 0.0) + weight
            if len(partners) > 2 * self._max_neighbours:
                _prune(partners, self._max_neighbours)
            self._paired_at[product_id] = self._observations

    def related(self, product_id: str) -> Iterator[tuple[str, float]]:
        """(partner, normalised score in (0, 1)) of a product, unordered."""
        partners = self._neighbours.get(product_id)
        count = self._counts.get(product_id, 0.0)
        if not partners or count <= 0:
            return
        to_now = self.frame.to_now()
        shrink = self._shrink
        counts = self._counts
        for partner, together in partners.items():
            partner_count = counts.get(partner, 0.0)
            if partner_count > 0:
                damping = together * to_now / (together * to_now + shrink) if shrink else 1.0
                yield partner, together / math.sqrt(count * partner_count) * damping


class _RankingCache:
    """The best `size` entries of each product's ranking, kept while the version they were computed at holds.

    A query then reads a short sorted list instead of scoring every partner again. Holds at most
    `max_entries` rankings, the oldest computed dropped first (hot products are recomputed soon enough).
    """

    def __init__(self, size: int, max_entries: int) -> None:
        if size <= 0 or max_entries <= 0:
            raise ValueError("ranking cache size and max_entries must be positive")
        self._size = size
        self._max_entries = max_entries
        self._entries: dict[str, tuple[Hashable, list[tuple[str, float]], bool]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, product_id: str, version: Hashable, scores: Callable[[], Iterable[tuple[str, float]]]
    ) -> tuple[list[tuple[str, float]], bool]:
        """The cached best entries, best first (ties by id), and whether the full ranking was longer."""
        entry = self._entries.get(product_id)
        if entry is not None and entry[0] == version:
            return entry[1], entry[2]
        everything = _ranked(dict(scores()))
        best = everything[: self._size]
        truncated = len(everything) > len(best)
        if entry is not None:
            del self._entries[product_id]
        elif len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[product_id] = (version, best, truncated)
        return best, truncated


# A function giving a seed's ranking: cached (best entries, truncated?) or, when asked, complete.
_Rankings = Callable[[str, bool], tuple[Sequence[tuple[str, float]], bool]]


def _from_seeds(
    catalog: Catalog,
    seeds: Sequence[str],
    rankings: _Rankings,
    count: int,
    exclude: Collection[str],
    strategy: str,
    reason: Callable[[str], str],
) -> list[Candidate]:
    """Sums the seeds' scores of each product; its reason names the seed that contributed most.

    Each seed brings its `count` best available products (the complete ranking is read only when filters
    empty the cached one): exact for one seed, a close approximation of the full sum for several.
    """
    seed_set = set(seeds)
    totals: dict[str, float] = {}
    best_part: dict[str, float] = {}
    best_seed: dict[str, str] = {}
    for seed in seeds:
        ranking, truncated = rankings(seed, False)
        accepted = _available(catalog, ranking, count, exclude, seed_set)
        if len(accepted) < count and truncated:
            accepted = _available(catalog, rankings(seed, True)[0], count, exclude, seed_set)
        for product_id, score in accepted:
            totals[product_id] = totals.get(product_id, 0.0) + score
            if score > best_part.get(product_id, 0.0):
                best_part[product_id] = score
                best_seed[product_id] = seed
    best = heapq.nsmallest(count, totals.items(), key=lambda entry: (-entry[1], entry[0]))
    return [Candidate(product_id, score, strategy, reason(best_seed[product_id])) for product_id, score in best]


def _available(
    catalog: Catalog,
    ranking: Iterable[tuple[str, float]],
    count: int,
    exclude: Collection[str],
    seeds: Collection[str] = (),
) -> list[tuple[str, float]]:
    """The first `count` entries of a ranking that may be shown: positive, available, neither excluded nor a seed."""
    accepted: list[tuple[str, float]] = []
    for product_id, score in ranking:
        if len(accepted) >= count:
            break
        if score > 0 and product_id not in exclude and product_id not in seeds and catalog.is_available(product_id):
            accepted.append((product_id, score))
    return accepted


def _title(catalog: Catalog, product_id: str) -> str:
    product = catalog.get(product_id)
    return product.title if product is not None and product.title else product_id


class CoPurchase:
    """Frequently bought together, learnt from order lines (see `_CoOccurrence` for the score).

    An order counts at most `max_order_lines` distinct products (a B2B order of 300 lines would add
    45,000 pairs and says little about each); a query reads at most `max_seeds` products (the first given:
    the caller puts the most relevant first). Purchases halve in weight every `half_life_ms` (None: never),
    so the pairs follow the seasons. Each product's `cached_partners` best partners stay sorted in a cache
    of `max_cached` products, recomputed when the product is bought again or every `refresh_after` orders.
    """

    def __init__(
        self,
        catalog: Catalog,
        half_life_ms: float | None = 90 * DAY_MS,
        max_order_lines: int = 50,
        max_neighbours: int = 100,
        max_products: int = 200_000,
        shrink: float = 1.0,
        max_seeds: int = 20,
        cached_partners: int = 64,
        max_cached: int = 10_000,
        refresh_after: int = 1_000,
    ) -> None:
        if max_order_lines <= 0 or max_seeds <= 0:
            raise ValueError("max_order_lines and max_seeds must be positive")
        self._catalog = catalog
        self._pairs = _CoOccurrence(half_life_ms, max_neighbours, max_products, shrink, refresh_after)
        self._rankings = _RankingCache(cached_partners, max_cached)
        self._max_order_lines = max_order_lines
        self._max_seeds = max_seeds

    @property
    def product_count(self) -> int:
        return self._pairs.product_count

    def neighbour_count(self, product_id: str) -> int:
        return self._pairs.neighbour_count(product_id)

    def observe_order(self, product_ids: Iterable[str], time_ms: int) -> None:
        lines = list(dict.fromkeys(product_ids))[: self._max_order_lines]
        weight = self._pairs.start(time_ms)
        for product_id in lines:
            self._pairs.add_occurrence(product_id, weight)
        for position, product_id in enumerate(lines):
            for partner in lines[position + 1 :]:
                self._pairs.add_pair(product_id, partner, weight)

    def complements(self, product_ids: Sequence[str], count: int, exclude: Collection[str] = ()) -> list[Candidate]:
        """Available products often bought with these (a product page, a cart), best first."""
        seeds = list(dict.fromkeys(product_ids))[: self._max_seeds]
        return _from_seeds(
            self._catalog,
            seeds,
            self._ranking,
            count,
            exclude,
            FREQUENTLY_BOUGHT_TOGETHER,
            lambda seed: f"Often bought with {_title(self._catalog, seed)}",
        )

    def _ranking(self, product_id: str, complete: bool) -> tuple[Sequence[tuple[str, float]], bool]:
        if complete:
            return _ranked(dict(self._pairs.related(product_id))), False
        return self._rankings.get(product_id, self._pairs.version(product_id), lambda: self._pairs.related(product_id))


class Similar:
    """Alternatives to a product: what shoppers viewed in the same sessions, plus look-alikes from the catalog.

    Co-views: a view pairs with the previous `window` distinct products of the session (shoppers compare
    alternatives side by side); re-viewing a product still in the window adds nothing, so reloads do not
    inflate pairs. Scores as in `_CoOccurrence`, halving every `half_life_ms`. Look-alikes fill in for cold
    products: among the `content_pool` products of the same category closest in price, content similarity
    = 0.6 * price closeness (1 - |p - q| / max(p, q)) + 0.4 * same brand, added with `content_weight`, so
    co-view evidence leads once it exists. Memory: `max_sessions` open session windows (the least recently
    active evicted) of `window` ids each, the `_CoOccurrence` caps, and the `cached_partners` best
    alternatives of at most `max_cached` products, recomputed when the product is viewed with a new
    partner, when the catalog changes, or every `refresh_after` views.
    """

    def __init__(
        self,
        catalog: Catalog,
        window: int = 10,
        max_sessions: int = 100_000,
        half_life_ms: float | None = 30 * DAY_MS,
        max_neighbours: int = 100,
        max_products: int = 200_000,
        shrink: float = 1.0,
        content_weight: float = 0.25,
        content_pool: int = 50,
        cached_partners: int = 64,
        max_cached: int = 10_000,
        refresh_after: int = 10_000,
    ) -> None:
        if min(window, max_sessions, content_pool) <= 0 or content_weight < 0:
            raise ValueError("window, max_sessions and content_pool must be positive, content_weight >= 0")
        self._catalog = catalog
        self._pairs = _CoOccurrence(half_life_ms, max_neighbours, max_products, shrink, refresh_after)
        self._rankings = _RankingCache(cached_partners, max_cached)
        self._window = window
        self._max_sessions = max_sessions
        self._content_weight = content_weight
        self._content_pool = content_pool
        # session id -> its last distinct product views, oldest first; dict order = least recently active first
        self._sessions: dict[str, list[str]] = {}

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    @property
    def product_count(self) -> int:
        return self._pairs.product_count

    def observe_session_view(self, session_id: str, product_id: str, time_ms: int | None = None) -> None:
        """One product view of a session; `time_ms` None counts it at the latest time seen."""
        recent = self._sessions.pop(session_id, None)
        if recent is None:
            recent = []
            if len(self._sessions) >= self._max_sessions:
                del self._sessions[next(iter(self._sessions))]
        self._sessions[session_id] = recent
        if product_id in recent:
            recent.remove(product_id)
            recent.append(product_id)
            return
        latest = self._pairs.frame.latest_ms
        weight = self._pairs.start(time_ms if time_ms is not None else (latest if latest is not None else 0))
        self._pairs.add_occurrence(product_id, weight)
        for seen in recent:
            self._pairs.add_pair(seen, product_id, weight)
        recent.append(product_id)
        if len(recent) > self._window:
            del recent[0]

    def end_session(self, session_id: str) -> None:
        """Frees a finished session's window; its co-views stay learnt."""
        self._sessions.pop(session_id, None)

    def similar(self, product_id: str, count: int, exclude: Collection[str] = ()) -> list[Candidate]:
        """Available alternatives to one product, best first."""
        return self.alternatives([product_id], count, exclude)

    def alternatives(self, product_ids: Sequence[str], count: int, exclude: Collection[str] = ()) -> list[Candidate]:
        """Available alternatives to several products (e.g. an abandoned cart), summed over them, best first."""
        return _from_seeds(
            self._catalog,
            list(dict.fromkeys(product_ids)),
            self._ranking,
            count,
            exclude,
            SIMILAR_ITEMS,
            lambda seed: f"Similar to {_title(self._catalog, seed)}",
        )

    def _ranking(self, product_id: str, complete: bool) -> tuple[Sequence[tuple[str, float]], bool]:
        if complete:
            return _ranked(self._scores(product_id)), False
        version = (self._pairs.version(product_id), self._catalog.revision)
        return self._rankings.get(product_id, version, lambda: self._scores(product_id).items())

    def _scores(self, product_id: str) -> dict[str, float]:
        scores = dict(self._pairs.related(product_id))
        if self._content_weight > 0:
            for other, similarity in self._look_alikes(product_id):
                scores[other] = scores.get(other, 0.0) + self._content_weight * similarity
        return scores

    def _look_alikes(self, product_id: str) -> Iterator[tuple[str, float]]:
        product = self._catalog.get(product_id)
        if product is None or not product.category_path:
            return
        found = 0
        scan_left = _SCAN_PER_CANDIDATE * self._content_pool
        for other_id in self._catalog.by_price_closeness(product.category, product.price):
            if found >= self._content_pool or scan_left <= 0:
                return
            scan_left -= 1
            other = self._catalog.get(other_id)
            if other is None or other_id == product_id or other.stock <= 0:
                continue
            found += 1
            highest = max(product.price, other.price)
            closeness = 1.0 - abs(product.price - other.price) / highest if highest > 0 else 1.0
            same_brand = 1.0 if product.brand and product.brand == other.brand else 0.0
            yield other_id, 0.6 * closeness + 0.4 * same_brand


# -------------------------------------------------------------------------------------------------
# Catalog readers
# -------------------------------------------------------------------------------------------------


class NewArrivals:
    """The newest available products of some categories, from the catalog's arrival times.

    score = 2^(-age / freshness_half_life_ms), age counted from `now_ms` (or from the newest product
    found when no time is given); with `now_ms`, products older than `max_age_ms` are not new any more.
    """

    def __init__(
        self, catalog: Catalog, freshness_half_life_ms: float = 14 * DAY_MS, max_age_ms: int | None = 90 * DAY_MS
    ) -> None:
        if freshness_half_life_ms <= 0:
            raise ValueError("freshness_half_life_ms must be positive")
        self._catalog = catalog
        self._half_life_ms = freshness_half_life_ms
        self._max_age_ms = max_age_ms

    def new_in(
        self, categories: Sequence[str], count: int, exclude: Collection[str] = (), now_ms: int | None = None
    ) -> list[Candidate]:
        """Newest first across the category keys (none: the whole shop), each product once."""
        oldest_ms = now_ms - self._max_age_ms if now_ms is not None and self._max_age_ms is not None else None
        found: dict[str, tuple[int, str]] = {}  # product id -> (added_ms, category key of its reason)
        for category in dict.fromkeys(categories or (ALL_PRODUCTS,)):
            taken = 0
            scan_left = _SCAN_PER_CANDIDATE * count + len(exclude)
            for product_id in self._catalog.newest(category):
                if taken >= count or scan_left <= 0:
                    break
                scan_left -= 1
                product = self._catalog.get(product_id)
                if product is None:
                    continue
                if oldest_ms is not None and product.added_ms < oldest_ms:
                    break  # newest first: all that follow are older still
                if product.stock <= 0 or product_id in exclude:
                    continue
                taken += 1
                if product_id not in found:
                    found[product_id] = (product.added_ms, category)
        if not found:
            return []
        reference_ms = now_ms if now_ms is not None else max(added for added, _ in found.values())
        newest = heapq.nsmallest(count, found.items(), key=lambda entry: (-entry[1][0], entry[0]))
        return [
            Candidate(
                product_id,
                float(2.0 ** (-max(0, reference_ms - added_ms) / self._half_life_ms)),
                NEW_ARRIVALS,
                f"New in {category_name(category)}" if category else "Just arrived",
            )
            for product_id, (added_ms, category) in newest
        ]


class AffinityPicks:
    """Products of a visitor's favourite categories within the price band they lean to, ranked by trend.

    score = category weight x trending score / the category's best trending score in the band, so each
    category's list is scaled to its weight. Categories with little traffic fill in with their newest
    products in the band, scored below any trending one. Reads at most `max_categories` categories,
    the heaviest first. Each (category, band)'s `cached_picks` best stay in a cache of `max_cached`
    lists, recomputed every `refresh_after` trending events of the category and on catalog changes:
    the order may lag a few events behind the trend; stock and exclusions are checked on every query.
    """

    def __init__(
        self,
        catalog: Catalog,
        trending: Trending,
        max_categories: int = 5,
        cached_picks: int = 64,
        max_cached: int = 10_000,
        refresh_after: int = 100,
    ) -> None:
        if max_categories <= 0 or refresh_after <= 0:
            raise ValueError("max_categories and refresh_after must be positive")
        self._catalog = catalog
        self._trending = trending
        self._max_categories = max_categories
        self._cached_picks = cached_picks
        self._rankings = _RankingCache(cached_picks, max_cached)
        self._refresh_after = refresh_after

    def picks(
        self,
        category_weights: Mapping[str, float],
        price_band: str | None,
        count: int,
        exclude: Collection[str] = (),
    ) -> list[Candidate]:
        favourites = sorted(
            ((category, weight) for category, weight in category_weights.items() if weight > 0),
            key=lambda entry: (-entry[1], entry[0]),
        )[: self._max_categories]
        best: dict[str, tuple[float, str]] = {}  # product id -> (score, category key)
        for category, weight in favourites:
            for product_id, score in self._picks_in(category, price_band, count, exclude):
                if weight * score > best.get(product_id, (0.0, ""))[0]:
                    best[product_id] = (weight * score, category)
        ranked = heapq.nsmallest(count, best.items(), key=lambda entry: (-entry[1][0], entry[0]))
        return [
            Candidate(product_id, score, AFFINITY, self._reason(category, price_band))
            for product_id, (score, category) in ranked
        ]

    def _picks_in(
        self, category: str, price_band: str | None, count: int, exclude: Collection[str]
    ) -> list[tuple[str, float]]:
        """The category's `count` best available products in the band, with unweighted scores."""
        version = (self._trending.version(category) // self._refresh_after, self._catalog.revision)
        ranking, truncated = self._rankings.get(
            f"{price_band or ''}|{category}",
            version,
            lambda: self._in_band(category, price_band, self._cached_picks + 1, ()),
        )
        accepted = _available(self._catalog, ranking, count, exclude)
        if len(accepted) < count and truncated:
            accepted = list(self._in_band(category, price_band, count, exclude))
        return accepted

    def _in_band(
        self, category: str, price_band: str | None, count: int, exclude: Collection[str]
    ) -> Iterator[tuple[str, float]]:
        taken: set[str] = set()
        scan_left = _SCAN_PER_CANDIDATE * count + len(exclude)
        best_score = 0.0
        for product_id, score in self._trending.ranked(category):
            if len(taken) >= count or scan_left <= 0:
                break
            scan_left -= 1
            if self._fits(product_id, price_band, exclude):
                best_score = best_score or score
                taken.add(product_id)
                yield product_id, score / best_score if best_score > 0 else 0.0
        scan_left = _SCAN_PER_CANDIDATE * count + len(exclude)
        for product_id in self._catalog.newest(category):
            if len(taken) >= count or scan_left <= 0:
                break
            scan_left -= 1
            if product_id not in taken and self._fits(product_id, price_band, exclude):
                # Below every trending pick of the category, still in arrival order.
                yield product_id, 0.01 / (1 + len(taken))
                taken.add(product_id)

    def _fits(self, product_id: str, price_band: str | None, exclude: Collection[str]) -> bool:
        if product_id in exclude or not self._catalog.is_available(product_id):
            return False
        return not price_band or self._catalog.band_of(product_id) == price_band

    @staticmethod
    def _reason(category: str, price_band: str | None) -> str:
        name = category_name(category) or "the shop"
        return f"{price_band.capitalize()} picks in {name} for you" if price_band else f"Picked for you in {name}"


def recently_viewed(
    catalog: Catalog, viewed_product_ids: Iterable[str], count: int, exclude: Collection[str] = ()
) -> list[Candidate]:
    """The visitor's viewed products, most recent first (as given), each once, available ones only."""
    picked: list[Candidate] = []
    for product_id in dict.fromkeys(viewed_product_ids):
        if len(picked) >= count:
            break
        if product_id not in exclude and catalog.is_available(product_id):
            picked.append(Candidate(product_id, 1.0 / (1 + len(picked)), RECENTLY_VIEWED, "You viewed this recently"))
    return picked
