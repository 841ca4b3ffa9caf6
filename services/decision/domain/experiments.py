"""Experiments: deterministic assignment of a person to an arm or to the holdout (no
personalisation), validation of an experiment's definition, and the report comparing each arm's
conversion rate with the holdout's."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

HOLDOUT: Final = "holdout"
MAX_HOLDOUT_SHARE: Final = 0.5
# Two-sided 95%: the normal quantile 0.975.
Z_95: Final = 1.959963984540054

_EXPERIMENT_ID: Final = re.compile(r"[a-z0-9_-]{1,64}")
_ARM_NAME: Final = re.compile(r"[a-z0-9_-]{1,32}")

FieldError = tuple[str, str]  # (field path, message), as gRPC BadRequest field violations


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    weight: float = 1.0  # relative to the other arms; the holdout is not an arm


@dataclass(frozen=True, slots=True)
class Experiment:
    experiment_id: str
    arms: Sequence[Arm]  # stored as a tuple so the experiment stays immutable
    holdout_share: float = 0.0  # share of people in the holdout, who get no personalisation
    salt: str = ""  # empty = the experiment id; a new salt reshuffles everyone

    def __post_init__(self) -> None:
        object.__setattr__(self, "arms", tuple(self.arms))


def validate_experiment(experiment: Experiment) -> list[FieldError]:
    """Everything wrong with an experiment's definition; empty when it can run."""
    errors: list[FieldError] = []
    if not _EXPERIMENT_ID.fullmatch(experiment.experiment_id):
        errors.append(("experiment_id", "must be 1 to 64 characters among a-z, 0-9, '_' and '-'"))
    share = experiment.holdout_share
    if not (math.isfinite(share) and 0.0 <= share <= MAX_HOLDOUT_SHARE):
        errors.append(("holdout_share", f"must be between 0 and {MAX_HOLDOUT_SHARE}, got {share}"))
    if not experiment.arms:
        errors.append(("arms", "at least one arm is required"))
        return errors
    seen: set[str] = set()
    for index, arm in enumerate(experiment.arms):
        if arm.name == HOLDOUT:
            errors.append((f"arms[{index}].name", f"'{HOLDOUT}' is reserved; set holdout_share instead"))
        elif not _ARM_NAME.fullmatch(arm.name):
            errors.append((f"arms[{index}].name", "must be 1 to 32 characters among a-z, 0-9, '_' and '-'"))
        elif arm.name in seen:
            errors.append((f"arms[{index}].name", f"duplicate arm name '{arm.name}'"))
        seen.add(arm.name)
        if not (math.isfinite(arm.weight) and arm.weight >= 0):
            errors.append((f"arms[{index}].weight", f"must be a finite number >= 0, got {arm.weight}"))
    if not any(math.isfinite(arm.weight) and arm.weight > 0 for arm in experiment.arms):
        errors.append(("arms", "at least one arm needs a positive weight"))
    return errors


def _uniform(salt: str, purpose: str, person_id: str) -> float:
    """A uniform draw in [0, 1) fixed by (salt, purpose, person): 64 bits of SHA-256."""
    digest = hashlib.sha256(f"{salt}\x1f{purpose}\x1f{person_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(experiment: Experiment, person_id: str) -> str:
    """The arm a person sees, or HOLDOUT; the same person always gets the same answer.

    The holdout and the arm split use two independent draws, so changing the holdout share
    only moves people between the holdout and their own arm, and reweighting arms never moves
    anyone in or out of the holdout."""
    errors = validate_experiment(experiment)
    if errors:
        raise ValueError(f"invalid experiment {experiment.experiment_id!r}: {errors}")
    salt = experiment.salt or experiment.experiment_id
    if _uniform(salt, "holdout", person_id) < experiment.holdout_share:
        return HOLDOUT
    total = sum(arm.weight for arm in experiment.arms)
    point = _uniform(salt, "arm", person_id) * total
    cumulative = 0.0
    for arm in experiment.arms:
        cumulative += arm.weight
        if point < cumulative:
            return arm.name
    # Rounding can leave `point` a hair above the sum: the last arm with weight takes it.
    return next(arm.name for arm in reversed(experiment.arms) if arm.weight > 0)


@dataclass(frozen=True, slots=True)
class ArmCounts:
    exposures: int
    conversions: int  # exposures with at least one conversion, so never above exposures


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class ArmResult:
    arm: str
    exposures: int
    conversions: int
    conversion_rate: float  # 0 when the arm had no exposures (its interval is then [0, 1])
    rate_interval: Interval  # 95% Wilson score interval


@dataclass(frozen=True, slots=True)
class Comparison:
    """One arm against the control. None where the data cannot tell (no exposures, zero rate)."""

    arm: str
    control: str
    difference: float  # p_arm - p_control
    difference_interval: Interval  # 95%, Newcombe's hybrid score interval
    relative_uplift: float | None  # (p_arm - p_control) / p_control
    uplift_interval: Interval | None  # 95%, Katz log interval of the ratio, minus one
    p_value: float | None  # two-sided pooled two-proportion z-test


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    control: str
    arms: tuple[ArmResult, ...]  # the control first, then the others in the given order
    comparisons: tuple[Comparison, ...]  # one per non-control arm


def wilson_interval(conversions: int, exposures: int, z: float = Z_95) -> Interval:
    """Wilson score interval of a proportion: unlike p ± z·se it stays inside [0, 1] and is
    not degenerate at 0 or 1 conversions, which small arms hit often."""
    if exposures <= 0:
        return Interval(0.0, 1.0)
    rate = conversions / exposures
    z2 = z * z
    denominator = 1.0 + z2 / exposures
    centre = (rate + z2 / (2 * exposures)) / denominator
    half_width = z * math.sqrt(rate * (1 - rate) / exposures + z2 / (4 * exposures * exposures)) / denominator
    # At 0 (or all) conversions the bound is exactly 0 (or 1); rounding would leave 1e-18.
    low = 0.0 if conversions <= 0 else max(0.0, centre - half_width)
    high = 1.0 if conversions >= exposures else min(1.0, centre + half_width)
    return Interval(low, high)


def _rate(counts: ArmCounts) -> float:
    return counts.conversions / counts.exposures if counts.exposures > 0 else 0.0


def _compare(arm: str, arm_counts: ArmCounts, control: str, control_counts: ArmCounts) -> Comparison:
    p1, n1 = _rate(arm_counts), arm_counts.exposures
    p0, n0 = _rate(control_counts), control_counts.exposures
    difference = p1 - p0

    # Newcombe (1998) method 10: combines the two Wilson intervals; good coverage even with
    # few conversions, where the Wald interval of a difference is too narrow.
    arm_interval = wilson_interval(arm_counts.conversions, n1)
    control_interval = wilson_interval(control_counts.conversions, n0)
    low = difference - math.hypot(p1 - arm_interval.low, control_interval.high - p0)
    high = difference + math.hypot(arm_interval.high - p1, p0 - control_interval.low)
    difference_interval = Interval(max(-1.0, low), min(1.0, high))

    relative_uplift: float | None = None
    uplift_interval: Interval | None = None
    if n0 > 0 and p0 > 0 and n1 > 0:
        relative_uplift = difference / p0
        if p1 > 0:
            # Katz: log(p1/p0) is close to normal with variance (1-p1)/(n1 p1) + (1-p0)/(n0 p0)
            # (delta method); the interval of the ratio, minus one, is the uplift's.
            log_ratio = math.log(p1 / p0)
            standard_error = math.sqrt((1 - p1) / (n1 * p1) + (1 - p0) / (n0 * p0))
            uplift_interval = Interval(
                math.exp(log_ratio - Z_95 * standard_error) - 1.0,
                math.exp(log_ratio + Z_95 * standard_error) - 1.0,
            )

    p_value: float | None = None
    if n1 > 0 and n0 > 0:
        pooled = (arm_counts.conversions + control_counts.conversions) / (n1 + n0)
        variance = pooled * (1 - pooled) * (1 / n1 + 1 / n0)
        # No conversion at all (or only conversions) in both arms: no evidence of a difference.
        p_value = math.erfc(abs(difference) / math.sqrt(2 * variance)) if variance > 0 else 1.0

    return Comparison(arm, control, difference, difference_interval, relative_uplift, uplift_interval, p_value)


def report(counts: Mapping[str, ArmCounts], control: str = HOLDOUT) -> ExperimentReport:
    """Per-arm conversion rates and each arm against `control` (the holdout by default)."""
    if control not in counts:
        raise ValueError(f"no counts for the control arm '{control}'")
    for arm, arm_counts in counts.items():
        if not 0 <= arm_counts.conversions <= arm_counts.exposures:
            raise ValueError(
                f"arm '{arm}': conversions must be between 0 and exposures, got "
                f"{arm_counts.conversions}/{arm_counts.exposures}"
            )
    ordered = [control, *(arm for arm in counts if arm != control)]
    arm_results = tuple(
        ArmResult(
            arm=arm,
            exposures=counts[arm].exposures,
            conversions=counts[arm].conversions,
            conversion_rate=_rate(counts[arm]),
            rate_interval=wilson_interval(counts[arm].conversions, counts[arm].exposures),
        )
        for arm in ordered
    )
    comparisons = tuple(_compare(arm, counts[arm], control, counts[control]) for arm in ordered[1:])
    return ExperimentReport(control=control, arms=arm_results, comparisons=comparisons)
