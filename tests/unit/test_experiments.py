"""Experiments: stable weighted assignment with a holdout, validation of definitions, and the
report's figures against values worked out by hand."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from services.decision.domain.experiments import (
    HOLDOUT,
    Arm,
    ArmCounts,
    Experiment,
    Interval,
    assign,
    report,
    validate_experiment,
    wilson_interval,
)

PEOPLE = [f"person-{n}" for n in range(20_000)]


def test_assignment_is_stable_and_follows_the_weights() -> None:
    experiment = Experiment("lead-strategy", [Arm("bandit", 3.0), Arm("trending", 1.0)], holdout_share=0.1)
    counts = Counter(assign(experiment, person) for person in PEOPLE)
    assert counts[HOLDOUT] / 20_000 == pytest.approx(0.10, abs=0.01)
    assert counts["bandit"] / 20_000 == pytest.approx(0.9 * 0.75, abs=0.015)
    assert counts["trending"] / 20_000 == pytest.approx(0.9 * 0.25, abs=0.015)
    again = Experiment("lead-strategy", [Arm("bandit", 3.0), Arm("trending", 1.0)], holdout_share=0.1)
    assert all(assign(experiment, person) == assign(again, person) for person in PEOPLE[:2000])


def test_the_salt_reshuffles_people() -> None:
    first = Experiment("exp", [Arm("a"), Arm("b")], salt="one")
    second = Experiment("exp", [Arm("a"), Arm("b")], salt="two")
    same = sum(assign(first, person) == assign(second, person) for person in PEOPLE[:4000])
    assert same / 4000 == pytest.approx(0.5, abs=0.05)


def test_changing_the_holdout_share_keeps_people_in_their_arm() -> None:
    small = Experiment("exp", [Arm("a"), Arm("b"), Arm("c")], holdout_share=0.05)
    large = Experiment("exp", [Arm("a"), Arm("b"), Arm("c")], holdout_share=0.2)
    for person in PEOPLE[:4000]:
        arm_before, arm_after = assign(small, person), assign(large, person)
        if arm_before == HOLDOUT:
            assert arm_after == HOLDOUT
        elif arm_after != HOLDOUT:
            assert arm_after == arm_before


def test_zero_weight_arm_and_no_holdout() -> None:
    experiment = Experiment("exp", [Arm("paused", 0.0), Arm("live", 1.0)])
    assert {assign(experiment, person) for person in PEOPLE[:3000]} == {"live"}


def test_validation_lists_every_field_error() -> None:
    assert validate_experiment(Experiment("ok", [Arm("a")], 0.5)) == []
    assert validate_experiment(Experiment("ok", [], 0.1)) == [("arms", "at least one arm is required")]
    errors = validate_experiment(
        Experiment("Bad Id!", [Arm("a", -1.0), Arm("a", 1.0), Arm(HOLDOUT), Arm("b", math.nan)], holdout_share=0.6)
    )
    fields = [field for field, _ in errors]
    assert fields == [
        "experiment_id",
        "holdout_share",
        "arms[0].weight",
        "arms[1].name",
        "arms[2].name",
        "arms[3].weight",
    ]
    assert ("arms[1].name", "duplicate arm name 'a'") in errors
    assert validate_experiment(Experiment("exp", [Arm("a", 0.0)], -0.1)) == [
        ("holdout_share", "must be between 0 and 0.5, got -0.1"),
        ("arms", "at least one arm needs a positive weight"),
    ]
    with pytest.raises(ValueError, match="invalid experiment"):
        assign(Experiment("exp", []), "person-1")


def test_wilson_interval_by_hand() -> None:
    # 100/1000, z = 1.96: centre (0.1 + 1.9207e-3) / 1.0038415 = 0.101531,
    # half width 1.96 * sqrt(9e-5 + 9.6e-7) / 1.0038415 = 0.018622.
    interval = wilson_interval(100, 1000)
    assert interval.low == pytest.approx(0.082909, abs=1e-5)
    assert interval.high == pytest.approx(0.120152, abs=1e-5)
    assert wilson_interval(0, 0) == Interval(0.0, 1.0)
    assert wilson_interval(20, 20).high == 1.0
    zero = wilson_interval(0, 50)
    assert zero.low == 0.0
    assert zero.high == pytest.approx(3.8415 / (50 + 3.8415), abs=1e-4)  # z^2 / (n + z^2) at 0 conversions


def test_report_by_hand_100_of_1000_against_120_of_1000() -> None:
    result = report({"bandit": ArmCounts(1000, 120), HOLDOUT: ArmCounts(1000, 100)})
    assert [arm.arm for arm in result.arms] == [HOLDOUT, "bandit"]
    assert result.arms[1].conversion_rate == pytest.approx(0.12)
    (comparison,) = result.comparisons
    assert comparison.arm == "bandit"
    assert comparison.control == HOLDOUT
    assert comparison.difference == pytest.approx(0.02)
    assert comparison.relative_uplift == pytest.approx(0.2)
    # Pooled p = 0.11, se = sqrt(0.11 * 0.89 * 2 / 1000) = 0.013993, z = 1.4293.
    assert comparison.p_value == pytest.approx(0.1529, abs=5e-4)
    # Newcombe: 0.02 - sqrt((0.12 - 0.101299)^2 + (0.120152 - 0.1)^2) = -0.007492, and
    # 0.02 + sqrt((0.141609 - 0.12)^2 + (0.1 - 0.082909)^2) = 0.047551.
    assert comparison.difference_interval.low == pytest.approx(-0.007492, abs=1e-5)
    assert comparison.difference_interval.high == pytest.approx(0.047551, abs=1e-5)
    # Katz: log 1.2 = 0.182322, se = sqrt(0.88/120 + 0.9/100) = 0.127802;
    # exp(0.182322 -/+ 1.96 * 0.127802) - 1 = -0.0659, 0.5416.
    assert comparison.uplift_interval is not None
    assert comparison.uplift_interval.low == pytest.approx(-0.0659, abs=2e-4)
    assert comparison.uplift_interval.high == pytest.approx(0.5416, abs=2e-4)


def test_a_large_difference_is_significant() -> None:
    (comparison,) = report({HOLDOUT: ArmCounts(10_000, 1000), "bandit": ArmCounts(10_000, 1300)}).comparisons
    assert comparison.p_value is not None
    assert comparison.p_value < 1e-6
    assert comparison.difference_interval.low > 0
    assert comparison.uplift_interval is not None
    assert comparison.uplift_interval.low > 0


def test_zero_counts_never_divide_by_zero() -> None:
    result = report({HOLDOUT: ArmCounts(0, 0), "bandit": ArmCounts(0, 0), "trending": ArmCounts(500, 0)})
    assert result.arms[0].conversion_rate == 0.0
    assert (result.arms[0].rate_interval.low, result.arms[0].rate_interval.high) == (0.0, 1.0)
    bandit, trending = result.comparisons
    assert bandit.p_value is None
    assert bandit.relative_uplift is None
    assert bandit.uplift_interval is None
    assert -1.0 <= bandit.difference_interval.low <= bandit.difference_interval.high <= 1.0
    assert trending.p_value is None

    no_conversions = report({HOLDOUT: ArmCounts(400, 0), "bandit": ArmCounts(400, 0)}).comparisons[0]
    assert no_conversions.p_value == 1.0
    assert no_conversions.relative_uplift is None

    arm_without_conversion = report({HOLDOUT: ArmCounts(400, 40), "bandit": ArmCounts(400, 0)}).comparisons[0]
    assert arm_without_conversion.relative_uplift == -1.0
    assert arm_without_conversion.uplift_interval is None
    assert arm_without_conversion.p_value is not None


def test_report_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError, match="control arm"):
        report({"bandit": ArmCounts(10, 1)})
    with pytest.raises(ValueError, match="between 0 and exposures"):
        report({HOLDOUT: ArmCounts(10, 11)})
    with pytest.raises(ValueError, match="between 0 and exposures"):
        report({HOLDOUT: ArmCounts(10, 1), "bandit": ArmCounts(10, -1)})
