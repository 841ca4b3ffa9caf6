"""A person's latest decisions as decision keeps them: one compact JSON entry each, read back whole."""

from __future__ import annotations

import orjson

from services.decision.domain.recent_decisions import (
    RecordedDecision,
    RecordedItem,
    decision_entry,
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
