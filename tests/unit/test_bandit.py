"""The strategy bandit: Thompson sampling exploits a clear winner, explores without data, lets a
parent situation steer a new micro-situation, and is reproducible with a seeded generator."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from services.decision.domain.bandit import (
    ArmStats,
    BetaPrior,
    choose_strategy,
    choose_strategy_in_situation,
    hierarchical_prior,
    reward_of,
    situation_key,
    situation_key_chain,
    visit_bucket,
)

ARMS = ["SESSION_NEXT_ITEM", "TRENDING", "AFFINITY", "NEW_ARRIVALS"]


def choices(arms, stats, rounds=2000, seed=7, **kwargs) -> Counter[str]:
    rng = np.random.default_rng(seed)
    return Counter(choose_strategy(arms, stats, rng, **kwargs) for _ in range(rounds))


def test_a_clear_winner_is_chosen_most_of_the_time() -> None:
    stats = {
        "SESSION_NEXT_ITEM": ArmStats(trials=500, successes=25),
        "TRENDING": ArmStats(trials=500, successes=90),
        "AFFINITY": ArmStats(trials=500, successes=30),
        "NEW_ARRIVALS": ArmStats(trials=500, successes=20),
    }
    counts = choices(ARMS, stats)
    assert counts["TRENDING"] / 2000 > 0.95


def test_without_data_every_arm_gets_tried() -> None:
    counts = choices(ARMS, {}, rounds=4000)
    assert set(counts) == set(ARMS)
    for arm in ARMS:
        assert 0.20 < counts[arm] / 4000 < 0.30


def test_an_uncertain_arm_keeps_being_explored() -> None:
    # TRENDING is slightly better on lots of data; AFFINITY is new: it must still be tried.
    stats = {"SESSION_NEXT_ITEM": ArmStats(2000, 100), "TRENDING": ArmStats(2000, 110)}
    counts = choices(["SESSION_NEXT_ITEM", "TRENDING", "AFFINITY"], stats)
    assert counts["AFFINITY"] > 100


def test_a_seeded_generator_gives_the_same_choices() -> None:
    stats = {"TRENDING": ArmStats(10, 3), "AFFINITY": ArmStats(12, 4)}
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    run_a = [choose_strategy(ARMS, stats, rng_a) for _ in range(200)]
    run_b = [choose_strategy(ARMS, stats, rng_b) for _ in range(200)]
    assert run_a == run_b
    assert len(set(run_a)) > 1  # the same seed, not a constant answer


def test_a_per_arm_prior_shifts_the_choice() -> None:
    priors = {"TRENDING": BetaPrior(30, 10), "AFFINITY": BetaPrior(10, 30)}
    counts = choices(["TRENDING", "AFFINITY"], {}, prior=priors)
    assert counts["TRENDING"] / 2000 > 0.95


def test_the_parent_situation_steers_a_brand_new_micro_situation() -> None:
    parent = {"TRENDING": ArmStats(1000, 50), "AFFINITY": ArmStats(1000, 150)}
    rng = np.random.default_rng(11)
    counts = Counter(choose_strategy_in_situation(["TRENDING", "AFFINITY"], [parent, {}], rng) for _ in range(2000))
    # Capped at 20 pseudo-observations the parent steers (Beta(4, 18) against Beta(2, 20): about
    # 80%) without deciding for good.
    assert 0.7 < counts["AFFINITY"] / 2000 < 0.95
    # Without the parent the same empty micro-situation is a coin toss.
    rng = np.random.default_rng(11)
    alone = Counter(choose_strategy_in_situation(["TRENDING", "AFFINITY"], [{}], rng) for _ in range(2000))
    assert 0.4 < alone["AFFINITY"] / 2000 < 0.6


def test_the_micro_situations_own_data_outweighs_its_parent() -> None:
    # In this micro-situation TRENDING wins clearly, against the parent's opinion.
    parent = {"TRENDING": ArmStats(1000, 50), "AFFINITY": ArmStats(1000, 150)}
    own = {"TRENDING": ArmStats(300, 90), "AFFINITY": ArmStats(300, 15)}
    rng = np.random.default_rng(5)
    counts = Counter(choose_strategy_in_situation(["TRENDING", "AFFINITY"], [parent, own], rng) for _ in range(2000))
    assert counts["TRENDING"] / 2000 > 0.95


def test_the_parent_lends_at_most_parent_strength_pseudo_observations() -> None:
    prior = hierarchical_prior([ArmStats(1000, 150)], BetaPrior(1, 1), parent_strength=20)
    assert prior.alpha + prior.beta == pytest.approx(22)
    assert prior.alpha == pytest.approx(1 + 150 * 20 / 1000)
    assert prior.mean == pytest.approx(4 / 22)
    small = hierarchical_prior([ArmStats(10, 4)], BetaPrior(1, 1), parent_strength=20)
    assert (small.alpha, small.beta) == (5, 7)  # fewer than the cap: counted in full
    chained = hierarchical_prior([ArmStats(1000, 100), ArmStats(100, 50)], BetaPrior(1, 1), parent_strength=20)
    assert chained.alpha + chained.beta == pytest.approx(22)
    assert 0.1 < chained.mean < 0.5  # pulled from 10% towards the finer level's 50%


def test_inconsistent_counters_never_break_the_posterior() -> None:
    # Read between two increments: more successes than trials, or negative noise.
    posterior = BetaPrior().updated(ArmStats(trials=3, successes=5))
    assert (posterior.alpha, posterior.beta) == (4, 1)
    posterior = BetaPrior().updated(ArmStats(trials=-1, successes=-2))
    assert (posterior.alpha, posterior.beta) == (1, 1)
    with pytest.raises(ValueError):
        BetaPrior(0, 1)
    with pytest.raises(ValueError):
        choose_strategy([], {}, np.random.default_rng(0))


def test_reward_of_each_feedback_kind() -> None:
    assert reward_of("impression") == (1.0, 0.0)
    assert reward_of("CLICK") == (0.0, 1.0)
    assert reward_of("FEEDBACK_KIND_ADD_TO_CART") == (1.0, 1.0)
    assert reward_of("purchase") == (3.0, 3.0)
    assert reward_of("FEEDBACK_KIND_UNSPECIFIED") == (0.0, 0.0)
    # A full funnel keeps successes <= trials, so the rate stays a rate.
    trials = sum(reward_of(kind)[0] for kind in ("impression", "click", "add_to_cart", "purchase"))
    successes = sum(reward_of(kind)[1] for kind in ("impression", "click", "add_to_cart", "purchase"))
    assert successes <= trials


def test_situation_keys_and_visit_buckets() -> None:
    parts = ["RETURN_VISIT", visit_bucket(2), "EMAIL", "mobile", "sweaters", "premium", "review_sensitive"]
    assert situation_key(parts) == "RETURN_VISIT|v2-3|EMAIL|mobile|sweaters|premium|review_sensitive"
    assert situation_key(["A", "b|c", ""]) == "A|b/c|-"
    assert situation_key_chain(parts) == ("RETURN_VISIT", situation_key(parts))
    assert situation_key_chain(parts, (3, 1, 99)) == ("RETURN_VISIT", "RETURN_VISIT|v2-3|EMAIL", situation_key(parts))
    assert [visit_bucket(n) for n in (0, 1, 2, 3, 4, 9, 10, 250)] == [
        "v1",
        "v1",
        "v2-3",
        "v2-3",
        "v4-9",
        "v4-9",
        "v10+",
        "v10+",
    ]
