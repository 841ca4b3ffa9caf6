"""Business rules on a decision's candidates: blend the strategies' ranked lists into one, then keep only
what the shop may show this visitor (known, in stock, not excluded, not already bought, within budget),
with at most a few products per category."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from services.decision.domain.catalog import Catalog
from services.decision.domain.recommenders import Candidate

# Reciprocal-rank fusion constant (Cormack, Clarke & Buettcher 2009): large enough that the first ranks
# of one list do not drown the others, the value the paper found robust across collections.
RRF_K = 60.0


def blend(lists: Sequence[tuple[Sequence[Candidate], float]], k: float = RRF_K) -> list[Candidate]:
    """Merges ranked lists of several strategies into one, by weighted reciprocal-rank fusion.

    score(p) = sum over the lists holding p of weight / (k + rank), rank counted from 1. Ranks, not scores:
    each strategy scores on its own scale (decayed event counts, cosines, freshness), so their scores do
    not add up meaningfully, while a product several strategies rank high is a safer bet than one ranked
    first by one strategy only. A product keeps the strategy and reason of the list that gave it its
    largest share. Lists must be ranked best first; a non-positive weight leaves its list out; ties keep
    the order in which products were first met (the first list leads).
    """
    totals: dict[str, float] = {}
    best_share: dict[str, tuple[float, Candidate]] = {}
    for candidates, weight in lists:
        if weight <= 0:
            continue
        seen: set[str] = set()
        rank = 0
        for candidate in candidates:
            if candidate.product_id in seen:
                continue  # a list naming a product twice: only its best rank counts
            seen.add(candidate.product_id)
            rank += 1
            share = weight / (k + rank)
            totals[candidate.product_id] = totals.get(candidate.product_id, 0.0) + share
            previous = best_share.get(candidate.product_id)
            if previous is None or share > previous[0]:
                best_share[candidate.product_id] = (share, candidate)
    ranked = sorted(totals.items(), key=lambda entry: -entry[1])  # stable: ties stay in first-met order
    return [
        Candidate(product_id, total, best_share[product_id][1].strategy, best_share[product_id][1].reason)
        for product_id, total in ranked
    ]


def apply_business_rules(
    candidates: Iterable[Candidate],
    catalog: Catalog,
    count: int,
    exclude: Collection[str] = (),
    purchased: Collection[str] = (),
    max_price: float | None = None,
    per_category_cap: int = 0,
    allow_consumables_again: bool = True,
) -> list[Candidate]:
    """The at most `count` candidates the shop may show, best score first.

    - a product named twice keeps its best-scored entry, with that entry's strategy and reason;
    - unknown and out-of-stock products go, and so do `exclude` (the product on the page, the cart);
    - purchased products go, unless consumable and `allow_consumables_again`;
    - products priced above `max_price` go (budget fit), when it is given;
    - at most `per_category_cap` products per leaf category (its full path: men's and women's
      "Sweaters" are two categories); 0 = no cap. When that leaves fewer than `count`, the cap relaxes
      step by step: each category's next `per_category_cap` products in turn, appended after the capped list.
    """
    if count <= 0:
        return []
    best: dict[str, Candidate] = {}
    for candidate in candidates:
        current = best.get(candidate.product_id)
        if current is None or candidate.score > current.score:
            best[candidate.product_id] = candidate
    shown: list[Candidate] = []
    held_back: list[tuple[int, int, Candidate]] = []  # (relaxation step, position, candidate)
    per_category: dict[str, int] = {}
    # Stable sort: equal scores keep the order they came in (a blended list's order).
    for position, candidate in enumerate(sorted(best.values(), key=lambda candidate: -candidate.score)):
        product = catalog.get(candidate.product_id)
        if product is None or product.stock <= 0 or candidate.product_id in exclude:
            continue
        if candidate.product_id in purchased and not (product.consumable and allow_consumables_again):
            continue
        if max_price is not None and product.price > max_price:
            continue
        already = per_category.get(product.category, 0)
        per_category[product.category] = already + 1
        if per_category_cap <= 0 or already < per_category_cap:
            shown.append(candidate)
            if len(shown) >= count:
                return shown
        else:
            held_back.append((already // per_category_cap, position, candidate))
    held_back.sort(key=lambda entry: (entry[0], entry[1]))
    shown.extend(candidate for _, _, candidate in held_back[: count - len(shown)])
    return shown
