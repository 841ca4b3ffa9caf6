"""Segments, policies and experiments: validated, stored in Redis for every replica, and turned
into the DecisionConfig the hot path reads (reloaded when the shared version number moves)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import Aborted, FieldViolation, InvalidArgument, NotFound
from services.decision.adapters.redis_store import DecisionStore
from services.decision.decisions import Decider, DecisionConfig, Policy
from services.decision.domain import experiments, messages
from services.decision.domain.segments import RuleSyntaxError, Segment
from services.decision.domain.situations import DEFAULT_STRATEGIES, Situation, Strategy

SEGMENTS, POLICIES, EXPERIMENTS = "segments", "policies", "experiments"
MAX_SEGMENTS = 500


@dataclass(frozen=True)
class StoredSegment:
    segment_id: str
    name: str
    rule: str
    description: str


@dataclass(frozen=True)
class StoredPolicy:
    situation: Situation
    strategies: tuple[Strategy, ...]
    messages: dict[str, tuple[str, str]] = field(default_factory=dict)  # language -> (headline, body)


@dataclass(frozen=True)
class StoredExperiment:
    experiment_id: str
    arms: tuple[tuple[str, float, Strategy | None], ...]  # (name, weight, forced lead strategy)
    holdout_share: float
    placements: tuple[str, ...]

    def domain(self) -> experiments.Experiment:
        return experiments.Experiment(
            self.experiment_id, [experiments.Arm(name, weight) for name, weight, _ in self.arms], self.holdout_share
        )


@dataclass(frozen=True)
class ArmFigures:
    arm: str
    exposures: int
    conversions: int
    rate: float
    rate_low: float
    rate_high: float
    uplift: float
    difference_low: float
    difference_high: float
    p_value: float


def _compile(segment: StoredSegment, field_path: str) -> Segment:
    try:
        return Segment.from_rule_text(segment.segment_id, segment.name, segment.rule, segment.description)
    except RuleSyntaxError as error:
        raise InvalidArgument([FieldViolation(field_path, str(error))]) from None


def _segment_json(segment: StoredSegment) -> dict[str, Any]:
    return {"name": segment.name, "rule": segment.rule, "description": segment.description}


def _policy_json(policy: StoredPolicy) -> dict[str, Any]:
    return {"strategies": [s.name for s in policy.strategies], "messages": policy.messages}


def _policy_from(situation: Situation, raw: dict[str, Any]) -> StoredPolicy:
    return StoredPolicy(
        situation,
        tuple(Strategy[name] for name in raw.get("strategies", [])),
        {language: (pair[0], pair[1]) for language, pair in raw.get("messages", {}).items()},
    )


def _experiment_json(experiment: StoredExperiment) -> dict[str, Any]:
    return {
        "arms": [[name, weight, strategy.name if strategy else ""] for name, weight, strategy in experiment.arms],
        "holdout_share": experiment.holdout_share,
        "placements": list(experiment.placements),
    }


def _experiment_from(experiment_id: str, raw: dict[str, Any]) -> StoredExperiment:
    return StoredExperiment(
        experiment_id,
        tuple(
            (name, float(weight), Strategy[strategy] if strategy else None) for name, weight, strategy in raw["arms"]
        ),
        float(raw["holdout_share"]),
        tuple(raw.get("placements", ())),
    )


class ConfigurationAdmin:
    def __init__(self, store: DecisionStore, decider: Decider) -> None:
        self._store = store
        self._decider = decider

    async def reload(self) -> None:
        """Rebuilds the hot path's configuration from Redis (every replica, on a version change)."""
        segments = [
            Segment.from_rule_text(segment_id, raw["name"], raw["rule"], raw.get("description", ""))
            for segment_id, raw in sorted((await self._store.load_config(SEGMENTS)).items())
        ]
        policies: dict[Situation, Policy] = {}
        for name, raw in (await self._store.load_config(POLICIES)).items():
            stored = _policy_from(Situation[name], raw)
            policies[stored.situation] = Policy(
                stored.strategies,
                {language: messages.MessageTemplate(h, b) for language, (h, b) in stored.messages.items()},
            )
        running = {}
        for experiment_id, raw in sorted((await self._store.load_config(EXPERIMENTS)).items()):
            stored_experiment = _experiment_from(experiment_id, raw)
            running[experiment_id] = (
                stored_experiment.domain(),
                stored_experiment.placements,
                {name: strategy for name, _, strategy in stored_experiment.arms if strategy is not None},
            )
        self._decider.config = DecisionConfig(segments, policies, running)

    # ------------------------------------------------------------------ segments
    async def create_segment(self, segment: StoredSegment) -> StoredSegment:
        _compile(segment, "segment.rule")
        if len(await self._store.load_config(SEGMENTS)) >= MAX_SEGMENTS:
            raise InvalidArgument([FieldViolation("segment", f"at most {MAX_SEGMENTS} segments")])
        if not await self._store.save_config(SEGMENTS, segment.segment_id, _segment_json(segment), only_new=True):
            raise Aborted(f"segment {segment.segment_id} already exists", "SEGMENT_EXISTS")
        await self.reload()
        return segment

    async def update_segment(self, segment: StoredSegment) -> StoredSegment:
        _compile(segment, "segment.rule")
        if not await self._store.config_exists(SEGMENTS, segment.segment_id):
            raise NotFound(f"no segment {segment.segment_id}", "SEGMENT_NOT_FOUND")
        await self._store.save_config(SEGMENTS, segment.segment_id, _segment_json(segment))
        await self.reload()
        return segment

    async def delete_segment(self, segment_id: str) -> bool:
        deleted = await self._store.delete_config(SEGMENTS, segment_id)
        await self.reload()
        return deleted

    async def list_segments(self) -> list[StoredSegment]:
        raw = await self._store.load_config(SEGMENTS)
        return [
            StoredSegment(segment_id, value["name"], value["rule"], value.get("description", ""))
            for segment_id, value in sorted(raw.items())
        ]

    # ------------------------------------------------------------------ policies
    async def policies(self) -> list[StoredPolicy]:
        stored = {
            Situation[name]: _policy_from(Situation[name], raw)
            for name, raw in (await self._store.load_config(POLICIES)).items()
        }
        result = []
        for situation in Situation:
            policy = stored.get(situation, StoredPolicy(situation, ()))
            templates = {
                language: (
                    messages.MessageTemplate(*policy.messages[language])
                    if language in policy.messages
                    else messages.default_template(situation.name, language)
                )
                for language in ("en", "fr")
            }
            result.append(
                StoredPolicy(
                    situation,
                    policy.strategies or DEFAULT_STRATEGIES[situation],
                    {language: (t.headline, t.body) for language, t in templates.items()},
                )
            )
        return result

    async def update_policy(self, policy: StoredPolicy) -> StoredPolicy:
        for language, (headline, body) in policy.messages.items():
            problems = messages.validate_template(messages.MessageTemplate(headline, body))
            if problems:
                field_name, description = problems[0]
                raise InvalidArgument([FieldViolation(f"policy.messages[{language}].{field_name}", description)])
        await self._store.save_config(POLICIES, policy.situation.name, _policy_json(policy))
        await self.reload()
        return next(stored for stored in await self.policies() if stored.situation is policy.situation)

    # ------------------------------------------------------------------ experiments
    async def create_experiment(self, experiment: StoredExperiment) -> StoredExperiment:
        problems = experiments.validate_experiment(experiment.domain())
        if problems:
            raise InvalidArgument([FieldViolation(f"experiment.{path}", message) for path, message in problems])
        await self._store.save_config(EXPERIMENTS, experiment.experiment_id, _experiment_json(experiment))
        await self.reload()
        return experiment

    async def list_experiments(self) -> list[StoredExperiment]:
        raw = await self._store.load_config(EXPERIMENTS)
        return [_experiment_from(experiment_id, value) for experiment_id, value in sorted(raw.items())]

    async def experiment_report(
        self, experiment_id: str, conversion: str
    ) -> tuple[StoredExperiment, Sequence[ArmFigures]] | None:
        raw = (await self._store.load_config(EXPERIMENTS)).get(experiment_id)
        if raw is None:
            return None
        experiment = _experiment_from(experiment_id, raw)
        counts = await self._store.experiment_counts(experiment_id)
        arm_names = [experiments.HOLDOUT] + [name for name, _, _ in experiment.arms]
        arm_counts = {
            name: experiments.ArmCounts(
                exposures=counts.get(f"{name}:exposures", 0),
                conversions=min(counts.get(f"{name}:{conversion}", 0), counts.get(f"{name}:exposures", 0)),
            )
            for name in arm_names
        }
        report = experiments.report(arm_counts, control=experiments.HOLDOUT)
        comparisons = {comparison.arm: comparison for comparison in report.comparisons}
        figures = []
        for result in report.arms:
            comparison = comparisons.get(result.arm)
            figures.append(
                ArmFigures(
                    arm=result.arm,
                    exposures=result.exposures,
                    conversions=result.conversions,
                    rate=result.conversion_rate,
                    rate_low=result.rate_interval.low,
                    rate_high=result.rate_interval.high,
                    uplift=(comparison.relative_uplift or 0.0) if comparison else 0.0,
                    difference_low=comparison.difference_interval.low if comparison else 0.0,
                    difference_high=comparison.difference_interval.high if comparison else 0.0,
                    p_value=(comparison.p_value if comparison and comparison.p_value is not None else 1.0),
                )
            )
        return experiment, figures
