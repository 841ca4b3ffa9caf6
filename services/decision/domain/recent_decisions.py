"""A person's latest decisions as the staff console reads them: what was answered and why (the
situation, the lead strategy, each item's strategy and reason, the message, what degraded it).

Each decision is kept as one compact JSON entry; `decision_entry` writes it, `read_entry` reads it
back and skips an entry it cannot read rather than failing the whole list."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from services.decision.domain.recommenders import Candidate

# Kept per person: enough for a console page, small enough to write on every Decide.
KEPT_PER_PERSON = 20
KEPT_FOR_S = 30 * 86_400
# Situation name of a decision taken without a readable profile (decisions.Decider).
UNKNOWN_SITUATION = "UNKNOWN"


@dataclass(frozen=True)
class RecordedItem:
    product_id: str
    strategy: str  # a Strategy name, e.g. "TRENDING"
    reason: str


@dataclass(frozen=True)
class RecordedDecision:
    decision_id: str
    decided_ms: int
    placement: str  # a Placement name without prefix, e.g. "HOME"
    situation: str  # a Situation name, or "" when the profile could not be read
    situation_key: str
    lead_strategy: str  # a Strategy name, or ""
    segment_ids: tuple[str, ...]
    experiment_id: str
    arm: str
    degraded_reasons: tuple[str, ...]
    items: tuple[RecordedItem, ...]
    headline: str
    body: str
    language: str


def decision_entry(
    *,
    decision_id: str,
    decided_ms: int,
    placement: str,
    situation: str,
    situation_key: str,
    lead_strategy: str,
    segment_ids: Sequence[str],
    experiment_id: str,
    arm: str,
    degraded_reasons: Sequence[str],
    items: Sequence[Candidate],
    headline: str,
    body: str,
    language: str,
) -> bytes:
    """One decision as compact JSON (short keys: it is written on every Decide)."""
    return orjson.dumps(
        {
            "id": decision_id,
            "t": decided_ms,
            "p": placement,
            "s": "" if situation == UNKNOWN_SITUATION else situation,
            "k": situation_key,
            "l": lead_strategy,
            "g": list(segment_ids),
            "x": experiment_id,
            "a": arm,
            "d": list(degraded_reasons),
            "i": [[item.product_id, item.strategy, item.reason] for item in items],
            "m": [headline, body, language],
        }
    )


def read_entry(raw: str | bytes) -> RecordedDecision | None:
    """The decision an entry holds; None for an entry that is not one (corrupt, older format)."""
    try:
        entry: Any = orjson.loads(raw)
        headline, body, language = entry["m"]
        return RecordedDecision(
            decision_id=str(entry["id"]),
            decided_ms=int(entry["t"]),
            placement=str(entry["p"]),
            situation=str(entry["s"]),
            situation_key=str(entry.get("k", "")),
            lead_strategy=str(entry["l"]),
            segment_ids=tuple(str(segment) for segment in entry["g"]),
            experiment_id=str(entry["x"]),
            arm=str(entry["a"]),
            degraded_reasons=tuple(str(reason) for reason in entry["d"]),
            items=tuple(
                RecordedItem(str(product_id), str(strategy), str(reason)) for product_id, strategy, reason in entry["i"]
            ),
            headline=str(headline),
            body=str(body),
            language=str(language),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def merged_entries(lists: Sequence[Sequence[str]]) -> list[str]:
    """The entries of several persons' lists as one person's list, after a merge: newest first,
    each decision once, at most `KEPT_PER_PERSON`. An unreadable entry sorts last."""
    by_id: dict[str, tuple[int, str]] = {}
    unreadable: list[str] = []
    for entries in lists:
        for raw in entries:
            decision = read_entry(raw)
            if decision is None:
                unreadable.append(raw)
            elif decision.decision_id not in by_id:
                by_id[decision.decision_id] = (decision.decided_ms, raw)
    newest_first = [raw for _, raw in sorted(by_id.values(), key=lambda kept: -kept[0])]
    return (newest_first + unreadable)[:KEPT_PER_PERSON]
