"""The Decide and Feedback use cases: who the visitor is, which situation and segments, which
strategy leads (bandit or experiment arm), which products and which message, always inside the
request's budget. Each stage gets a share of what remains; a stage that runs short or fails
leaves a fallback in place and marks the answer degraded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import structlog
from redis.exceptions import RedisError

from services.common import clock, deadlines
from services.common.errors import FieldViolation, InvalidArgument, RapportError
from services.common.identifiers import IdentifierKey
from services.common.identity_client import IdentityClient
from services.decision.adapters.redis_store import DecisionStore
from services.decision.domain import bandit, experiments, messages, recent_decisions
from services.decision.domain.bandit import FloatArray
from services.decision.domain.catalog import category_name
from services.decision.domain.decision_ids import DecisionIds, DecisionRecord, InvalidDecisionId, new_nonce
from services.decision.domain.recommenders import Candidate
from services.decision.domain.rules import apply_business_rules, blend
from services.decision.domain.segments import Segment, matching_segments
from services.decision.domain.situations import (
    DEFAULT_STRATEGIES,
    Situation,
    SituationRules,
    Strategy,
    situation_of,
)
from services.decision.domain.strategies import FOLLOWER_WEIGHTS, Page, Recommenders, candidates
from services.decision.domain.visitor import Visitor, visitor_of
from services.decision.metrics import DecisionMetrics
from services.profile.reader import ProfileReader

log = structlog.get_logger("rapport.decision")

HOLDOUT = "holdout"
# Kept back from the request budget for building the answer after the last stage.
ANSWER_RESERVE_S = 0.003
BANDIT_CACHE_S = 2.0
LISTS_BLENDED = 2
BANDIT_CACHE_MAX = 50_000


@dataclass(frozen=True)
class DecideQuery:
    identifier: IdentifierKey | None
    person_id: str
    placement: str
    page: Page
    count: int
    language: str


@dataclass
class Decision:
    decision_id: str
    person_id: str
    situation: Situation | None
    items: list[Candidate]
    message: messages.Message
    language: str
    segment_ids: list[str]
    experiment_id: str
    arm: str
    situation_key: str
    lead_strategy: Strategy | None
    degraded_reasons: list[str] = field(default_factory=list)


@dataclass
class Policy:
    strategies: tuple[Strategy, ...]
    templates: dict[str, messages.MessageTemplate]  # language -> template


@dataclass
class DecisionConfig:
    """Segments, policies and experiments as this replica last loaded them."""

    segments: list[Segment] = field(default_factory=list)
    policies: dict[Situation, Policy] = field(default_factory=dict)
    running_experiments: dict[str, tuple[experiments.Experiment, tuple[str, ...], dict[str, Strategy]]] = field(
        default_factory=dict
    )  # id -> (experiment, placements, arm -> forced strategy)

    def strategies_for(self, situation: Situation) -> tuple[Strategy, ...]:
        policy = self.policies.get(situation)
        return policy.strategies if policy and policy.strategies else DEFAULT_STRATEGIES[situation]

    # The policies' templates keyed as render_message wants them, built once per configuration
    # rather than on every Decide.
    template_overrides: dict[tuple[str, str], messages.MessageTemplate] = field(init=False)

    def __post_init__(self) -> None:
        self.template_overrides = {
            (situation.name, language): template
            for situation, policy in self.policies.items()
            for language, template in policy.templates.items()
        }

    def experiment_for(self, placement: str) -> tuple[experiments.Experiment, dict[str, Strategy]] | None:
        for experiment, placements, forced in self.running_experiments.values():
            if not placements or placement in placements:
                return experiment, forced
        return None


@dataclass(frozen=True)
class DecisionRules:
    situations: SituationRules
    half_life_ms: int
    cart_abandoned_after_ms: int
    per_category_cap: int
    consumables_again: bool
    default_language: str


class _BanditBeliefs:
    """Each strategy's posterior per situation key (and policy), from the counts shared through
    Redis, read at most every few seconds: Decide then only draws from them."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, tuple[Strategy, ...]], tuple[float, tuple[FloatArray, FloatArray]]] = {}

    def get(self, key: str, strategies: tuple[Strategy, ...]) -> tuple[FloatArray, FloatArray] | None:
        entry = self._entries.get((key, strategies))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: str, strategies: tuple[Strategy, ...], beliefs: tuple[FloatArray, FloatArray]) -> None:
        if len(self._entries) >= BANDIT_CACHE_MAX:
            self._entries.clear()
        self._entries[(key, strategies)] = (time.monotonic() + BANDIT_CACHE_S, beliefs)


def arm_stats(counts: Mapping[str, float], strategies: Sequence[Strategy]) -> dict[str, bandit.ArmStats]:
    return {
        s.name: bandit.ArmStats(trials=counts.get(f"{s.name}:t", 0.0), successes=counts.get(f"{s.name}:s", 0.0))
        for s in strategies
    }


class Decider:
    def __init__(
        self,
        store: DecisionStore,
        reader: ProfileReader,
        identity: IdentityClient,
        models: Recommenders,
        ids: DecisionIds,
        rules: DecisionRules,
        config: DecisionConfig,
        metrics: DecisionMetrics | None = None,
    ) -> None:
        self._store = store
        self._reader = reader
        self._identity = identity
        self.models = models
        self._ids = ids
        self.rules = rules
        self.config = config
        self._bandit_beliefs = _BanditBeliefs()
        self._rng = np.random.default_rng()
        self.metrics = metrics or DecisionMetrics()

    # ------------------------------------------------------------------ Decide
    async def decide(self, query: DecideQuery) -> Decision:
        now_ms = clock.now_ms()
        degraded: list[str] = []
        person_id, created = query.person_id, False
        if query.identifier is not None:
            try:
                async with asyncio.timeout(self._stage_budget(0.6)):
                    resolved = (await self._identity.resolve([query.identifier]))[query.identifier.key]
                person_id, created = resolved.person_id, resolved.created
            except TimeoutError:
                degraded.append("identity_timeout")
            except RapportError:
                degraded.append("identity_unavailable")
        visitor = Visitor(person_id)
        profile_read = False
        if person_id and not created:
            try:
                async with asyncio.timeout(self._stage_budget(0.7)):
                    live = await self._reader.read(person_id)
                    if live is None and not self._reader.known_empty(person_id):
                        await self._reader.rebuild(person_id, max(deadlines.remaining_s() - ANSWER_RESERVE_S, 0.001))
                        live = await self._reader.read(person_id)
                        if live is None:
                            self._reader.remember_empty(person_id)
                profile_read = True
                if live is not None:
                    visitor = visitor_of(live, now_ms, self.rules.half_life_ms, self.rules.cart_abandoned_after_ms)
            except TimeoutError:
                degraded.append("profile_timeout")
            except RedisError:
                degraded.append("redis_unavailable")
            except Exception as error:
                log.warning("profile_read_failed", person_id=person_id, error=type(error).__name__)
                degraded.append("profile_unavailable")
        elif created:
            profile_read = True
        situation = situation_of(visitor, now_ms, self.rules.situations) if profile_read else None
        situation_name = situation.name if situation is not None else "UNKNOWN"
        segment_ids = matching_segments(self.config.segments, visitor.facts(situation_name))

        experiment_id, arm, forced = "", "", None
        running = self.config.experiment_for(query.placement)
        if running is not None and person_id:
            experiment, forced_by_arm = running
            experiment_id, arm = experiment.experiment_id, experiments.assign(experiment, person_id)
            forced = forced_by_arm.get(arm)
            self._store.count_exposure(experiment_id, arm)

        key_parts = self._situation_key(visitor, situation_name)
        situation_key = bandit.situation_key(key_parts)
        strategies = self.config.strategies_for(situation) if situation is not None else (Strategy.TRENDING,)
        if arm == HOLDOUT or situation is None:
            lead = Strategy.TRENDING
            strategies = (Strategy.TRENDING,)
        elif forced is not None:
            lead = forced
        else:
            lead = await self._choose(situation_key, situation_name, strategies, degraded)
        ordered = (lead, *(s for s in strategies if s is not lead))
        exclude = {*query.page.cart_product_ids, *visitor.cart_product_ids}
        if query.page.product_id:
            exclude.add(query.page.product_id)
        # The lead strategy and one follower fill the answer (trending tops it up below); asking
        # every strategy of the policy would triple the work for items that rarely make the cut.
        pool = query.count + 8
        lists = [
            (candidates(strategy, self.models, visitor, query.page, situation, pool, exclude), weight)
            for strategy, weight in zip(ordered[:LISTS_BLENDED], FOLLOWER_WEIGHTS, strict=False)
        ]
        items = apply_business_rules(
            blend(lists),
            self.models.catalog,
            count=query.count,
            exclude=exclude,
            purchased=visitor.purchased_product_ids,
            max_price=None,
            per_category_cap=self.rules.per_category_cap,
            allow_consumables_again=self.rules.consumables_again,
        )
        # Top up with what is popular, whatever the policy; then, for a shop too new to have
        # popular items (cold start), with its newest products.
        for source in ("trending", "new_arrivals"):
            if len(items) >= query.count:
                break
            taken = {*exclude, *(item.product_id for item in items)}
            more = (
                self.models.trending.top(pool, "", taken)
                if source == "trending"
                else self.models.new_arrivals.new_in((), pool, taken, now_ms)
            )
            items += apply_business_rules(
                more,
                self.models.catalog,
                count=query.count - len(items),
                exclude=taken,
                purchased=visitor.purchased_product_ids,
                max_price=None,
                per_category_cap=query.count,
                allow_consumables_again=self.rules.consumables_again,
            )
        language = query.language or self.rules.default_language
        message = messages.render_message(
            situation_name if situation is not None else Situation.FIRST_VISIT.name,
            language,
            self._message_values(visitor, situation, query.page),
            self.config.template_overrides,
        )
        decision_id = self._ids.issue(
            DecisionRecord(person_id, situation_name, situation_key, lead.name, experiment_id, arm, now_ms, new_nonce())
        )
        self.metrics.decided(query.placement, degraded)
        self._store.remember_decision(
            person_id,
            recent_decisions.decision_entry(
                decision_id=decision_id,
                decided_ms=now_ms,
                placement=query.placement,
                situation=situation_name,
                situation_key=situation_key,
                lead_strategy=lead.name,
                segment_ids=segment_ids,
                experiment_id=experiment_id,
                arm=arm,
                degraded_reasons=degraded,
                items=items,
                headline=message.headline,
                body=message.body,
                language=message.language,
            ),
        )
        return Decision(
            decision_id,
            person_id,
            situation,
            items,
            message,
            language if language in ("en", "fr") else "en",
            segment_ids,
            experiment_id,
            arm,
            situation_key,
            lead,
            degraded,
        )

    def _stage_budget(self, share: float) -> float:
        left = deadlines.remaining_s() - ANSWER_RESERVE_S
        return max(left * share, 0.0005)

    def _situation_key(self, visitor: Visitor, situation_name: str) -> list[str]:
        return [
            situation_name,
            bandit.visit_bucket(visitor.visit_number),
            visitor.traffic_source,
            visitor.device_type or "unknown",
            category_name(visitor.top_category) or "none",
            visitor.price_band or "none",
            ",".join(sorted(visitor.traits)) or "none",
        ]

    async def _choose(
        self, situation_key: str, situation_name: str, strategies: tuple[Strategy, ...], degraded: list[str]
    ) -> Strategy:
        beliefs = self._bandit_beliefs.get(situation_key, strategies)
        if beliefs is None:
            try:
                async with asyncio.timeout(self._stage_budget(0.5)):
                    micro, parent = await self._store.bandit_counts([situation_key, situation_name])
            except (TimeoutError, RedisError):
                degraded.append("bandit_unavailable")
                return strategies[0]
            beliefs = bandit.posteriors_in_situation(
                [s.name for s in strategies], [arm_stats(parent, strategies), arm_stats(micro, strategies)]
            )
            self._bandit_beliefs.put(situation_key, strategies, beliefs)
        return strategies[bandit.thompson_pick(beliefs, self._rng)]

    def _message_values(self, visitor: Visitor, situation: Situation | None, page: Page) -> dict[str, str]:
        category = page.category
        if situation is Situation.RETURN_VISIT and visitor.previous_visit_category:
            category = visitor.previous_visit_category
        category = category or visitor.top_category
        values = {"category": category_name(category)} if category else {}
        first_name = visitor.attributes.get("first_name", "")
        if first_name:
            values["first_name"] = first_name
        favourites = sorted(visitor.category_affinity, key=lambda key: -visitor.category_affinity[key])[:2]
        if favourites:
            values["favourite_categories"] = " & ".join(category_name(key) for key in favourites)
        return values

    # ------------------------------------------------------------------ Feedback
    async def feedback(self, decision_id: str, kind: str, product_id: str) -> bool:
        try:
            record = self._ids.read(decision_id)
        except InvalidDecisionId as error:
            raise InvalidArgument([FieldViolation("decision_id", str(error))]) from None
        trials, successes = bandit.reward_of(kind)
        bandit_updates: list[tuple[str, str, float]] = []
        if record.lead_strategy and record.arm != HOLDOUT:
            for key in (record.situation_key, record.situation):
                if trials:
                    bandit_updates.append((key, f"{record.lead_strategy}:t", trials))
                if successes:
                    bandit_updates.append((key, f"{record.lead_strategy}:s", successes))
        experiment_updates = [(record.experiment_id, f"{record.arm}:{kind}", 1)] if record.experiment_id else []
        # One count per decision and kind: a second click on the same answer is not a second success.
        counted = await self._store.count_feedback(f"{decision_id}:{kind}", bandit_updates, experiment_updates)
        if counted:
            self.metrics.feedback(kind, record.lead_strategy)
        return counted
