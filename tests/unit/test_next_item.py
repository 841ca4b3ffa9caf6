"""Next-item recommender: learning on every click, ranking, exclusions, bounds, determinism."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from services.decision.cli.eval_sessions import make_test_cases, read_sessions, score
from services.decision.domain.next_item import NextItemRecommender, NextItemSettings

NEIGHBOURS_ONLY = NextItemSettings(rules_weight=0.0, repeat_weight=0.0)


def trained(sessions: Sequence[Sequence[str]], settings: NextItemSettings | None = None) -> NextItemRecommender[str]:
    model: NextItemRecommender[str] = NextItemRecommender(settings)
    for number, items in enumerate(sessions):
        model.observe_session(f"s{number}", items, float(number))
        model.end_session(f"s{number}")
    return model


def ranked_ids(ranking: list[tuple[str, float]]) -> list[str]:
    return [item for item, _ in ranking]


SHOP = [["shoe", "sock"]] * 5 + [["hat", "scarf"]] * 3 + [["shoe", "lace", "sock"]] + [["coat", "hat"]] * 2


@pytest.mark.parametrize("settings", [NextItemSettings(), NEIGHBOURS_ONLY, NextItemSettings(knn_weight=0.0)])
def test_the_item_that_always_follows_comes_first(settings: NextItemSettings) -> None:
    model = trained(SHOP, settings)
    assert ranked_ids(model.recommend(["shoe"], exclude=["shoe"]))[0] == "sock"
    assert ranked_ids(model.recommend(["coat"], exclude=["coat"]))[0] == "hat"


def test_an_item_of_the_session_may_come_back_unless_excluded() -> None:
    model = trained(SHOP)
    assert "shoe" in ranked_ids(model.recommend(["shoe"], count=3))
    assert "shoe" not in ranked_ids(model.recommend(["shoe"], count=20, exclude=["shoe"]))


def test_each_click_changes_the_next_ranking_without_retraining() -> None:
    model = trained([["tent", "stove"]] * 3 + [["mat", "lamp"]])
    assert ranked_ids(model.recommend(["tent"], exclude=["tent"]))[0] == "stove"
    for number in range(6):
        model.observe_click(f"live-{number}", "tent", 100.0)
        model.observe_click(f"live-{number}", "sleeping-bag", 101.0)
    assert ranked_ids(model.recommend(["tent"], exclude=["tent"]))[0] == "sleeping-bag"


def test_the_latest_click_matters_most() -> None:
    model = trained(SHOP)
    assert ranked_ids(model.recommend(["hat", "shoe"], exclude=["hat", "shoe"]))[0] == "sock"
    assert ranked_ids(model.recommend(["shoe", "hat"], exclude=["hat", "shoe"]))[0] == "scarf"


def test_excluded_items_never_come_back_even_as_best_sellers() -> None:
    model = trained(SHOP)
    excluded = {"sock", "hat", "lace"}
    for session in (["shoe"], [], ["unknown"]):
        assert excluded.isdisjoint(ranked_ids(model.recommend(session, count=50, exclude=excluded)))


def test_count_limits_the_list_and_items_appear_once() -> None:
    model = trained(SHOP)
    assert len(model.recommend(["shoe"], count=2)) == 2
    assert model.recommend(["shoe"], count=0) == []
    everything = ranked_ids(model.recommend(["shoe"], count=100))
    assert sorted(everything) == sorted({item for session in SHOP for item in session})


def test_scores_are_ranked_best_first() -> None:
    scores = [score for _, score in trained(SHOP).recommend(["shoe", "lace"], count=10)]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] > 0


def test_an_empty_or_unknown_session_gets_the_most_clicked_items() -> None:
    model = trained(SHOP)
    expected = [("shoe", 0.0), ("sock", 0.0), ("hat", 0.0)]  # 6, 6 and 5 clicks: ties go to the first seen
    assert model.recommend([], count=3) == expected
    assert model.recommend(["never-seen"], count=3) == expected


def test_an_empty_model_recommends_nothing() -> None:
    assert NextItemRecommender[str]().recommend(["shoe"]) == []


def test_same_clicks_same_recommendations() -> None:
    first, second = trained(SHOP), trained(SHOP)
    for session in (["shoe"], ["hat", "shoe", "lace"], ["coat"]):
        assert first.recommend(session) == second.recommend(session) == first.recommend(session)


def test_integer_product_ids_work_too() -> None:
    model: NextItemRecommender[int] = NextItemRecommender()
    for number in range(3):
        model.observe_session(f"s{number}", [7, 8], float(number))
    assert model.recommend([7], exclude=[7])[0][0] == 8


def test_a_live_session_is_not_its_own_neighbour() -> None:
    model = trained([["tent", "stove"]], NEIGHBOURS_ONLY)
    model.observe_click("live", "tent", 10.0)
    model.observe_click("live", "kayak", 11.0)
    scored_with_itself = dict(model.recommend(["tent"]))
    scored_alone = dict(model.recommend(["tent"], session_id="live"))
    assert scored_with_itself["kayak"] > 0
    assert scored_alone.get("kayak", 0.0) == 0.0
    assert scored_alone["stove"] > 0


def test_the_oldest_sessions_are_forgotten_past_the_cap() -> None:
    settings = NextItemSettings(max_sessions=2, rules_weight=0.0, repeat_weight=0.0)
    model = trained([["tent", "stove"], ["mat", "lamp"]], settings)
    assert dict(model.recommend(["tent"]))["stove"] > 0
    model.observe_session("third", ["hat", "scarf"], 3.0)
    assert dict(model.recommend(["tent"])).get("stove", 0.0) == 0.0


def test_an_idle_session_id_starts_a_new_session() -> None:
    model: NextItemRecommender[str] = NextItemRecommender(NextItemSettings(session_timeout=1800.0))
    model.observe_click("cookie-1", "tent", 0.0)
    model.observe_click("cookie-1", "stove", 60.0)
    model.observe_click("cookie-1", "kayak", 60.0 + 2 * 3600)
    assert model.session_count == 2


def test_rules_are_capped_per_item() -> None:
    rules_only = NextItemSettings(knn_weight=0.0, repeat_weight=0.0, max_rules_per_item=5)
    model = trained([["hub", f"spoke-{number}"] for number in range(50)], rules_only)
    ranking = model.recommend(["hub"], count=50)
    assert len(ranking) == 50  # topped up with best-sellers at score 0
    assert 5 <= sum(score > 0 for _, score in ranking) <= 2 * 5


NONSENSE = [{"sample_size": 0}, {"neighbours": -1}, {"position_decay": 0.0}, {"rules_weight": -1.0}]


@pytest.mark.parametrize("bad", NONSENSE)
def test_nonsense_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        NextItemSettings(**bad)  # type: ignore[arg-type]


def test_yoochoose_clicks_become_sr_gnn_cases_and_are_scored(tmp_path: Path) -> None:
    train = tmp_path / "train.tsv"
    train.write_text("SessionId\tItemId\tTime\n1\t10\t5\n1\t11\t6\n2\t12\t1\n")
    clicks = tmp_path / "clicks.tsv"
    clicks.write_text("SessionId\tItemId\tTime\n7\t11\t9\n7\t99\t10\n7\t10\t8\n7\t12\t11\n8\t10\t1\n")
    cases = tmp_path / "cases.tsv"
    assert make_test_cases(clicks, train, cases) == 2  # 99 is unknown; session 8 is a single click
    assert cases.read_text() == "10\t11\n10 11\t12\n"  # clicks in time order, not file order
    assert read_sessions(train, "tsv") == [(1.0, [12]), (5.0, [10, 11])]
    recommendations = tmp_path / "recs.txt"
    recommendations.write_text("11 12\n10 12\n")
    hit_rate, mrr = score(recommendations, cases)
    assert (hit_rate, mrr) == (100.0, 75.0)
