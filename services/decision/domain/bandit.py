"""Which strategy leads the list in a micro-situation: Thompson sampling over Beta posteriors,
with coarser situations lending their experience to sparse micro-situations. Pure: the counts are
read and written elsewhere (Redis), the random generator is passed in.

Hierarchical fallback
=====================

There are thousands of micro-situations (every combination of situation, visit bucket, traffic
source, device, category, price band and trait) and most see few visitors. Each arm's belief
is built from the coarsest level to the finest: a level's posterior, shrunk to at most
`parent_strength` pseudo-observations while keeping its mean, is the prior of the next finer
level. A new micro-situation therefore starts from what its parent learnt, and its own counts
outweigh the parent's as soon as it has more than `parent_strength` trials. The parent's counts
include the child's, so the child's data is counted twice, but the double weight is capped at
`parent_strength` and matters only while the child is sparse.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

KEY_SEPARATOR: Final = "|"
# Pseudo-observations a parent level lends its child at most (see the module docstring).
DEFAULT_PARENT_STRENGTH: Final = 20.0


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What one strategy earned in one situation: trials and (possibly weighted) successes."""

    trials: float = 0.0
    successes: float = 0.0

    @property
    def failures(self) -> float:
        # Counters are incremented separately and may be read mid-update: never go negative.
        return max(self.trials - max(self.successes, 0.0), 0.0)

    @property
    def clipped_successes(self) -> float:
        return min(max(self.successes, 0.0), max(self.trials, 0.0))


@dataclass(frozen=True, slots=True)
class BetaPrior:
    """A Beta(alpha, beta) belief about an arm's success rate; Beta(1, 1) is uniform."""

    alpha: float = 1.0
    beta: float = 1.0

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0):
            raise ValueError(f"Beta parameters must be positive, got ({self.alpha}, {self.beta})")

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def updated(self, stats: ArmStats) -> BetaPrior:
        """The posterior after observing `stats`."""
        return BetaPrior(self.alpha + stats.clipped_successes, self.beta + stats.failures)

    def capped(self, base: BetaPrior, strength: float) -> BetaPrior:
        """This belief with at most `strength` pseudo-observations beyond `base`, same mean."""
        extra_alpha = max(self.alpha - base.alpha, 0.0)
        extra_beta = max(self.beta - base.beta, 0.0)
        extra = extra_alpha + extra_beta
        if extra <= strength:
            return self
        scale = strength / extra
        return BetaPrior(base.alpha + extra_alpha * scale, base.beta + extra_beta * scale)


UNIFORM_PRIOR: Final = BetaPrior()

NO_STATS: Final = ArmStats()


def situation_key(parts: Sequence[str]) -> str:
    """Joins discretised features into a key: "RETURN_VISIT|v2-3|EMAIL|mobile|sweaters"."""
    # A separator inside a part would make two different situations share a key.
    return KEY_SEPARATOR.join(part.replace(KEY_SEPARATOR, "/").strip() or "-" for part in parts)


def situation_key_chain(parts: Sequence[str], parent_lengths: Sequence[int] = (1,)) -> tuple[str, ...]:
    """The keys to read, coarsest first and the full micro-situation last: the prefixes of
    `parts` with the given lengths (e.g. (1,) = the situation alone) then all of `parts`."""
    lengths = sorted({length for length in parent_lengths if 0 < length < len(parts)})
    return (*(situation_key(parts[:length]) for length in lengths), situation_key(parts))


def visit_bucket(visit_number: int) -> str:
    """Visit number in buckets that separate the first visit, early returns and regulars."""
    if visit_number <= 1:
        return "v1"
    if visit_number <= 3:
        return "v2-3"
    if visit_number <= 9:
        return "v4-9"
    return "v10+"


# What each feedback on a decision adds to the led strategy's (trials, successes). An
# impression is a trial; a click is its success. Deeper conversions are stronger successes: they
# add successful trials rather than bare successes, so successes never exceed trials and the
# Beta posterior stays a rate. With these weights a decision followed by a click, an add to cart
# and a purchase counts as five successful trials; one that is only clicked, as one.
_REWARDS: Final[Mapping[str, tuple[float, float]]] = {
    "IMPRESSION": (1.0, 0.0),
    "CLICK": (0.0, 1.0),
    "ADD_TO_CART": (1.0, 1.0),
    "PURCHASE": (3.0, 3.0),
}


def reward_of(kind: str) -> tuple[float, float]:
    """(trials increment, successes increment) of a feedback kind: "click", "CLICK" or
    "FEEDBACK_KIND_CLICK"; an unknown kind is worth nothing."""
    name = kind.strip().upper().removeprefix("FEEDBACK_KIND_")
    return _REWARDS.get(name, (0.0, 0.0))


def choose_strategy(
    arms: Sequence[str],
    stats: Mapping[str, ArmStats],
    rng: np.random.Generator,
    prior: BetaPrior | Mapping[str, BetaPrior] = UNIFORM_PRIOR,
) -> str:
    """Thompson sampling: draws a success rate for each arm from its Beta posterior and
    returns the arm with the highest draw. `prior` is one prior for all arms or one per arm."""
    return arms[thompson_pick(posteriors(arms, stats, prior), rng)]


def posteriors(
    arms: Sequence[str],
    stats: Mapping[str, ArmStats],
    prior: BetaPrior | Mapping[str, BetaPrior] = UNIFORM_PRIOR,
) -> tuple[FloatArray, FloatArray]:
    """Each arm's Beta posterior as (alphas, betas), in the order of `arms`."""
    if not arms:
        raise ValueError("choose_strategy needs at least one arm")
    alphas = np.empty(len(arms))
    betas = np.empty(len(arms))
    for index, arm in enumerate(arms):
        arm_prior = prior if isinstance(prior, BetaPrior) else prior.get(arm, UNIFORM_PRIOR)
        posterior = arm_prior.updated(stats.get(arm, NO_STATS))
        alphas[index] = posterior.alpha
        betas[index] = posterior.beta
    return alphas, betas


def thompson_pick(beliefs: tuple[FloatArray, FloatArray], rng: np.random.Generator) -> int:
    """The position of the arm whose draw from its Beta posterior is highest (the first on a tie).

    One scalar draw per arm: for the three or four arms of a policy, numpy's array call spends
    more on checking its arguments than on drawing."""
    alphas, betas = beliefs
    best, best_draw = 0, -1.0
    for position, (alpha, beta) in enumerate(zip(alphas.tolist(), betas.tolist(), strict=True)):
        draw = rng.beta(alpha, beta)
        if draw > best_draw:
            best, best_draw = position, draw
    return best


def hierarchical_prior(
    ancestors: Sequence[ArmStats],
    base: BetaPrior = UNIFORM_PRIOR,
    parent_strength: float = DEFAULT_PARENT_STRENGTH,
) -> BetaPrior:
    """An arm's prior in a micro-situation from its stats in the coarser levels, coarsest first:
    each level's posterior capped at `parent_strength` pseudo-observations is the next's prior."""
    belief = base
    for level_stats in ancestors:
        belief = belief.updated(level_stats).capped(base, parent_strength)
    return belief


def choose_strategy_in_situation(
    arms: Sequence[str],
    levels: Sequence[Mapping[str, ArmStats]],
    rng: np.random.Generator,
    base: BetaPrior = UNIFORM_PRIOR,
    parent_strength: float = DEFAULT_PARENT_STRENGTH,
) -> str:
    """Thompson sampling in a micro-situation: `levels` holds each arm's stats per level,
    coarsest first and the micro-situation last (as read for `situation_key_chain`)."""
    return arms[thompson_pick(posteriors_in_situation(arms, levels, base, parent_strength), rng)]


def posteriors_in_situation(
    arms: Sequence[str],
    levels: Sequence[Mapping[str, ArmStats]],
    base: BetaPrior = UNIFORM_PRIOR,
    parent_strength: float = DEFAULT_PARENT_STRENGTH,
) -> tuple[FloatArray, FloatArray]:
    """Each arm's posterior in a micro-situation (see `choose_strategy_in_situation`); a caller
    that chooses often with the same counts keeps these and calls `thompson_pick`."""
    if not levels:
        return posteriors(arms, {}, base)
    *ancestor_levels, own_level = levels
    priors = {
        arm: hierarchical_prior([level.get(arm, NO_STATS) for level in ancestor_levels], base, parent_strength)
        for arm in arms
    }
    return posteriors(arms, own_level, priors)
