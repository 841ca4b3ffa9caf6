"""A person's latest decisions as decision keeps them: one compact JSON entry each, read back whole."""

from __future__ import annotations

import orjson

from services.decision.domain.recent_decisions import (
    KEPT_PER_PERSON,
    RecordedDecision,
    RecordedItem,
    decision_entry,
    merged_entries,
    read_entry,
)
from services.decision.domain.recommenders import Candidate


def entry(**overrides: object) -> bytes:
    fields: dict[str, object] = dict(
        decision_id="d1.abc.sig",
        decided_ms=1_700_000_000_123,
        placement="CART",
        situation="ABANDONED_CART",
        situation_key="ABANDONED_CART|v2-3|DIRECT|mobile|knitwear|premium|hesitating",
        lead_strategy="SIMILAR_ITEMS",
        segment_ids=["vip", "knitwear-fans"],
        experiment_id="lead-test",
        arm="bandit",
        degraded_reasons=["bandit_unavailable"],
        items=[
            Candidate("P2", 0.9, "SIMILAR_ITEMS", "Like Cashmere crew neck"),
            Candidate("P9", 0.4, "TRENDING", "Popular in Knitwear"),
        ],
        headline="Didn't find what you wanted last time?",
        body="More knitwear for you.",
        language="en",
    )
    fields.update(overrides)
    return decision_entry(**fields)  # type: ignore[arg-type]


def test_an_entry_reads_back_as_the_decision_with_every_reason() -> None:
    assert read_entry(entry()) == RecordedDecision(
        decision_id="d1.abc.sig",
        decided_ms=1_700_000_000_123,
        placement="CART",
        situation="ABANDONED_CART",
        situation_key="ABANDONED_CART|v2-3|DIRECT|mobile|knitwear|premium|hesitating",
        lead_strategy="SIMILAR_ITEMS",
        segment_ids=("vip", "knitwear-fans"),
        experiment_id="lead-test",
        arm="bandit",
        degraded_reasons=("bandit_unavailable",),
        items=(
            RecordedItem("P2", "SIMILAR_ITEMS", "Like Cashmere crew neck"),
            RecordedItem("P9", "TRENDING", "Popular in Knitwear"),
        ),
        headline="Didn't find what you wanted last time?",
        body="More knitwear for you.",
        language="en",
    )


def test_entries_are_compact_json_without_scores() -> None:
    raw = entry()
    assert b'": ' not in raw and b'", "' not in raw
    assert orjson.loads(raw)["i"][0] == ["P2", "SIMILAR_ITEMS", "Like Cashmere crew neck"]


def test_a_decision_without_a_profile_has_no_situation() -> None:
    decision = read_entry(entry(situation="UNKNOWN", lead_strategy="TRENDING"))
    assert decision is not None and decision.situation == ""


def test_an_entry_that_is_not_a_decision_is_skipped() -> None:
    assert read_entry(b"not json") is None
    assert read_entry(b'{"id": "x"}') is None
    assert read_entry(orjson.dumps({**orjson.loads(entry()), "i": [["only-an-id"]]})) is None


def test_a_merge_joins_the_lists_newest_first_each_decision_once_and_capped() -> None:
    def at(decision_id: str, decided_ms: int) -> str:
        return entry(decision_id=decision_id, decided_ms=decided_ms).decode()

    survivor = [at("s2", 500), at("s1", 100)]
    merged_away = [at("m2", 900), at("s2", 500), "not json", at("m1", 300)]
    joined = merged_entries([survivor, merged_away])
    assert [decision.decision_id if (decision := read_entry(raw)) else raw for raw in joined] == [
        "m2",
        "s2",
        "m1",
        "s1",
        "not json",
    ]
    many = [[at(f"d{i}", i) for i in range(15)], [at(f"e{i}", 100 + i) for i in range(15)]]
    kept = [read_entry(raw) for raw in merged_entries(many)]
    assert len(kept) == KEPT_PER_PERSON
    assert [decision.decision_id for decision in kept if decision][:2] == ["e14", "e13"]
    assert merged_entries([[], []]) == []
