"""Thin gRPC handlers of rapport.decision.v1.DecisionService: validate, convert, call the use cases."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Protocol

import grpc
from google.rpc import code_pb2, status_pb2

from rapport.common.v1 import event_pb2
from rapport.decision.v1 import decision_service_pb2 as pb
from rapport.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.common import clock
from services.common.errors import FieldViolation, InvalidArgument, NotFound, RapportError, to_rpc_status
from services.common.identifiers import parse_identifier, parse_person_id
from services.decision.catalog_admin import CatalogAdmin
from services.decision.configuration import ConfigurationAdmin, StoredExperiment, StoredPolicy, StoredSegment
from services.decision.decisions import DecideQuery, Decider, Decision
from services.decision.domain.catalog import Product, category_key, consumable_flag, validate_product
from services.decision.domain.recent_decisions import KEPT_PER_PERSON, RecordedDecision
from services.decision.domain.situations import Situation, Strategy
from services.decision.domain.strategies import Page

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DecisionService"].full_name
ERROR_DOMAIN = "rapport.decision"
MAX_ITEMS = 100
MAX_BATCH = 100
MAX_IMPORT = 5000
LANGUAGES = ("en", "fr")
PRODUCT_CARDS_MAX = 200_000
STRATEGY_VALUES: dict[str, Any] = {strategy.name: strategy.value for strategy in Strategy}
_ID = re.compile(r"[a-z0-9_-]{1,64}")

SCOPE_DECIDE = "decision.decide"
SCOPE_ADMIN = "decision.admin"
METHOD_SCOPES = {
    f"/{SERVICE_NAME}/Decide": SCOPE_DECIDE,
    f"/{SERVICE_NAME}/DecideBatch": SCOPE_DECIDE,
    f"/{SERVICE_NAME}/Feedback": SCOPE_DECIDE,
    **{
        f"/{SERVICE_NAME}/{method}": SCOPE_ADMIN
        for method in (
            "ImportCatalog",
            "UpdateStock",
            "CreateSegment",
            "ListSegments",
            "UpdateSegment",
            "DeleteSegment",
            "GetPolicy",
            "UpdatePolicy",
            "CreateExperiment",
            "GetExperimentReport",
            "ListExperiments",
            "ListDecisions",
        )
    },
}

PLACEMENTS = {
    value.number: value.name.removeprefix("PLACEMENT_")
    for value in pb.Placement.DESCRIPTOR.values
    if value.number != pb.PLACEMENT_UNSPECIFIED
}
FEEDBACK_KINDS = {
    value.number: value.name.removeprefix("FEEDBACK_KIND_")
    for value in pb.FeedbackKind.DESCRIPTOR.values
    if value.number != pb.FEEDBACK_KIND_UNSPECIFIED
}


_OK = status_pb2.Status(code=code_pb2.OK)


def _strategy(number: int, field: str) -> Strategy:
    try:
        return Strategy(number)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, f"unknown strategy {number}")]) from None


def _situation(number: int, field: str) -> Situation:
    try:
        return Situation(number)
    except ValueError:
        raise InvalidArgument([FieldViolation(field, f"unknown situation {number}")]) from None


def _enum_value(enum: Any, name: str) -> Any:
    """The number of an enum value by name; 0 (unspecified) for a name the proto does not have."""
    try:
        return enum.Value(name)
    except ValueError:
        return 0


def _identifier_field(value: str, field: str) -> str:
    if not _ID.fullmatch(value):
        raise InvalidArgument([FieldViolation(field, "must match [a-z0-9_-]{1,64}")])
    return value


def _decide_query(request: pb.DecideRequest, prefix: str = "") -> DecideQuery:
    """A Decide request as the use case takes it; INVALID_ARGUMENT names every bad field (under
    `prefix` inside a batch, e.g. `requests[3].count`)."""
    violations: list[FieldViolation] = []
    identifier = None
    person_id = ""
    which = request.WhichOneof("visitor")
    try:
        if which == "identifier":
            identifier = parse_identifier(int(request.identifier.type), request.identifier.value, f"{prefix}identifier")
        elif which == "person_id":
            person_id = parse_person_id(request.person_id, f"{prefix}person_id")
        else:
            violations.append(FieldViolation(f"{prefix}visitor", "must give an identifier or a person_id"))
    except InvalidArgument as error:
        violations.extend(error.violations)
    placement = PLACEMENTS.get(request.placement)
    if placement is None:
        violations.append(FieldViolation(f"{prefix}placement", f"unknown placement {request.placement}"))
    if not 1 <= request.count <= MAX_ITEMS:
        violations.append(FieldViolation(f"{prefix}count", f"must be between 1 and {MAX_ITEMS}, got {request.count}"))
    page = request.page
    if page.language and page.language not in LANGUAGES:
        violations.append(FieldViolation(f"{prefix}page.language", f"must be one of {', '.join(LANGUAGES)}"))
    if len(page.cart_product_ids) > 500:
        violations.append(FieldViolation(f"{prefix}page.cart_product_ids", "at most 500 products"))
    if len(page.product_id) > 200 or len(page.search_query) > 500:
        violations.append(FieldViolation(f"{prefix}page", "product_id or search_query too long"))
    if violations:
        raise InvalidArgument(violations)
    assert placement is not None
    return DecideQuery(
        identifier=identifier,
        person_id=person_id,
        placement=placement,
        page=Page(
            product_id=page.product_id,
            category=category_key(page.category_path),
            cart_product_ids=tuple(page.cart_product_ids),
            search_query=page.search_query,
        ),
        count=request.count,
        language=page.language,
    )


class DecisionHistory(Protocol):
    """Where each person's latest decisions are kept (adapters.redis_store.DecisionStore)."""

    async def recent_decisions(self, person_id: str, limit: int) -> list[RecordedDecision]: ...


class DecisionServicer(pb_grpc.DecisionServiceServicer):  # type: ignore[misc]
    def __init__(
        self, decider: Decider, catalog: CatalogAdmin, configuration: ConfigurationAdmin, history: DecisionHistory
    ) -> None:
        self._decider = decider
        self._catalog = catalog
        self._configuration = configuration
        self._history = history
        self._product_cards: dict[str, tuple[Product, pb.RecommendedItem]] = {}

    # ------------------------------------------------------------------ deciding
    async def Decide(self, request: pb.DecideRequest, context: grpc.aio.ServicerContext) -> pb.DecideResponse:
        decision = await self._decider.decide(_decide_query(request))
        return self._decision_proto(decision)

    async def DecideBatch(
        self, request: pb.DecideBatchRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecideBatchResponse:
        if not 1 <= len(request.requests) <= MAX_BATCH:
            raise InvalidArgument(
                [FieldViolation("requests", f"must hold 1 to {MAX_BATCH} requests, got {len(request.requests)}")]
            )
        response = pb.DecideBatchResponse()
        results = [response.results.add(index=index) for index in range(len(request.requests))]
        queries: dict[int, DecideQuery] = {}
        for index, one in enumerate(request.requests):
            try:
                queries[index] = _decide_query(one, f"requests[{index}].")
            except InvalidArgument as error:
                results[index].status.CopyFrom(to_rpc_status(error, ERROR_DOMAIN, ""))
        # Together: the profile reads of the batch share their wait for Redis.
        decided = await asyncio.gather(
            *(self._decider.decide(query) for query in queries.values()), return_exceptions=True
        )
        for index, outcome in zip(queries, decided, strict=True):
            if isinstance(outcome, RapportError):
                results[index].status.CopyFrom(to_rpc_status(outcome, ERROR_DOMAIN, ""))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results[index].status.CopyFrom(_OK)
                results[index].response.CopyFrom(self._decision_proto(outcome))
        return response

    def _decision_proto(self, decision: Decision) -> pb.DecideResponse:
        response = pb.DecideResponse(
            decision_id=decision.decision_id,
            person_id=decision.person_id,
            situation=decision.situation.value if decision.situation is not None else 0,  # type: ignore[arg-type]
            segment_ids=decision.segment_ids,
            experiment_id=decision.experiment_id,
            experiment_arm=decision.arm,
            situation_key=decision.situation_key,
            lead_strategy=decision.lead_strategy.value if decision.lead_strategy else 0,  # type: ignore[arg-type]
            degraded=bool(decision.degraded_reasons),
            degraded_reasons=decision.degraded_reasons,
        )
        response.message.headline = decision.message.headline
        response.message.body = decision.message.body
        response.message.language = decision.language
        add_item = response.items.add  # filled in place: building items apart copies each twice
        for candidate in decision.items:
            card = self._product_card(candidate.product_id)
            if card is None:
                continue
            item = add_item()
            item.CopyFrom(card)
            item.strategy = STRATEGY_VALUES[candidate.strategy]
            item.reason = candidate.reason
            item.score = candidate.score
        return response

    def _product_card(self, product_id: str) -> pb.RecommendedItem | None:
        """The product's fields of a recommended item, built once per version of the product (a
        Decide copies eight of them; building each from scratch was a tenth of its CPU)."""
        product = self._decider.models.catalog.get(product_id)
        if product is None:
            return None
        cached = self._product_cards.get(product_id)
        if cached is not None and cached[0] is product:
            return cached[1]
        card = pb.RecommendedItem(
            product_id=product.product_id,
            title=product.title,
            category_path=list(product.category_path),
            brand=product.brand,
            price=event_pb2.Money(currency_code=product.currency, amount=product.price),
        )
        if len(self._product_cards) >= PRODUCT_CARDS_MAX:
            self._product_cards.clear()
        self._product_cards[product_id] = (product, card)
        return card

    async def Feedback(self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext) -> pb.FeedbackResponse:
        kind = FEEDBACK_KINDS.get(request.kind)
        violations = []
        if kind is None:
            violations.append(FieldViolation("kind", f"unknown feedback kind {request.kind}"))
        if not request.decision_id:
            violations.append(FieldViolation("decision_id", "must be set"))
        if len(request.product_id) > 200:
            violations.append(FieldViolation("product_id", "at most 200 characters"))
        if violations:
            raise InvalidArgument(violations)
        assert kind is not None
        counted = await self._decider.feedback(request.decision_id, kind, request.product_id)
        return pb.FeedbackResponse(counted=counted)

    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDecisionsResponse:
        person_id = parse_person_id(request.person_id, "person_id")
        if not 0 <= request.limit <= KEPT_PER_PERSON:
            raise InvalidArgument(
                [FieldViolation("limit", f"must be between 0 and {KEPT_PER_PERSON}, got {request.limit}")]
            )
        decisions = await self._history.recent_decisions(person_id, request.limit or KEPT_PER_PERSON)
        return pb.ListDecisionsResponse(decisions=[self._recorded_proto(decision) for decision in decisions])

    def _recorded_proto(self, decision: RecordedDecision) -> pb.RecordedDecision:
        catalog = self._decider.models.catalog
        items = []
        for item in decision.items:
            product = catalog.get(item.product_id)
            recorded = pb.RecommendedItem(
                product_id=item.product_id,
                strategy=_enum_value(pb.Strategy, f"STRATEGY_{item.strategy}"),
                reason=item.reason,
            )
            if product is not None:  # today's catalog values; a product since removed keeps its id only
                recorded.title = product.title
                recorded.category_path.extend(product.category_path)
                recorded.brand = product.brand
                recorded.price.CopyFrom(event_pb2.Money(currency_code=product.currency, amount=product.price))
            items.append(recorded)
        reply = pb.RecordedDecision(
            decision_id=decision.decision_id,
            placement=_enum_value(pb.Placement, f"PLACEMENT_{decision.placement}"),
            situation=_enum_value(pb.Situation, f"SITUATION_{decision.situation}"),
            situation_key=decision.situation_key,
            lead_strategy=_enum_value(pb.Strategy, f"STRATEGY_{decision.lead_strategy}"),
            segment_ids=decision.segment_ids,
            experiment_id=decision.experiment_id,
            experiment_arm=decision.arm,
            items=items,
            message=pb.Message(headline=decision.headline, body=decision.body, language=decision.language),
            degraded=bool(decision.degraded_reasons),
            degraded_reasons=decision.degraded_reasons,
        )
        reply.decide_time.FromMilliseconds(decision.decided_ms)
        return reply

    # ------------------------------------------------------------------ catalog
    async def ImportCatalog(
        self, request: pb.ImportCatalogRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportCatalogResponse:
        count = len(request.products)
        if not 1 <= count <= MAX_IMPORT:
            raise InvalidArgument([FieldViolation("products", f"must hold 1 to {MAX_IMPORT} products, got {count}")])
        now_ms = clock.now_ms()
        accepted: list[Product] = []
        rejected: list[pb.RejectedProduct] = []
        for index, item in enumerate(request.products):
            problems = validate_product(
                item.product_id,
                item.title,
                list(item.category_path),
                item.brand,
                item.price.amount,
                item.price.currency_code,
                item.stock,
                dict(item.attributes),
                item.added_time.ToMilliseconds() if item.HasField("added_time") else now_ms,
            )
            if problems:
                field, description = problems[0]
                rejected.append(
                    pb.RejectedProduct(index=index, field=f"products[{index}].{field}", description=description)
                )
                continue
            added_ms = item.added_time.ToMilliseconds() if item.HasField("added_time") else now_ms
            accepted.append(
                Product(
                    product_id=item.product_id,
                    title=item.title,
                    category_path=tuple(item.category_path),
                    brand=item.brand,
                    price=item.price.amount,
                    currency=item.price.currency_code,
                    stock=item.stock,
                    attributes=dict(item.attributes),
                    added_ms=added_ms,
                    consumable=consumable_flag(item.attributes),
                )
            )
        await self._catalog.import_products(accepted)
        return pb.ImportCatalogResponse(imported_count=len(accepted), rejected=rejected)

    async def UpdateStock(
        self, request: pb.UpdateStockRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateStockResponse:
        count = len(request.levels)
        if not 1 <= count <= MAX_IMPORT:
            raise InvalidArgument([FieldViolation("levels", f"must hold 1 to {MAX_IMPORT} levels, got {count}")])
        violations = [
            FieldViolation(f"levels[{index}].stock", "must not be negative")
            for index, level in enumerate(request.levels)
            if level.stock < 0
        ] + [
            FieldViolation(f"levels[{index}].product_id", "must be set")
            for index, level in enumerate(request.levels)
            if not level.product_id
        ]
        if violations:
            raise InvalidArgument(violations)
        unknown = await self._catalog.update_stock({level.product_id: level.stock for level in request.levels})
        return pb.UpdateStockResponse(updated_count=count - len(unknown), unknown_product_ids=unknown)

    # ------------------------------------------------------------------ segments
    def _segment_in(self, segment: pb.Segment, field: str) -> StoredSegment:
        violations = []
        if not _ID.fullmatch(segment.segment_id):
            violations.append(FieldViolation(f"{field}.segment_id", "must match [a-z0-9_-]{1,64}"))
        if not segment.rule.strip():
            violations.append(FieldViolation(f"{field}.rule", "must be set"))
        if len(segment.name) > 200 or len(segment.description) > 2000:
            violations.append(FieldViolation(f"{field}.name", "name at most 200, description 2000 characters"))
        if violations:
            raise InvalidArgument(violations)
        return StoredSegment(segment.segment_id, segment.name or segment.segment_id, segment.rule, segment.description)

    @staticmethod
    def _segment_out(segment: StoredSegment) -> pb.Segment:
        return pb.Segment(
            segment_id=segment.segment_id, name=segment.name, rule=segment.rule, description=segment.description
        )

    async def CreateSegment(
        self, request: pb.CreateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateSegmentResponse:
        stored = await self._configuration.create_segment(self._segment_in(request.segment, "segment"))
        return pb.CreateSegmentResponse(segment=self._segment_out(stored))

    async def ListSegments(
        self, request: pb.ListSegmentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSegmentsResponse:
        segments = await self._configuration.list_segments()
        return pb.ListSegmentsResponse(segments=[self._segment_out(segment) for segment in segments])

    async def UpdateSegment(
        self, request: pb.UpdateSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSegmentResponse:
        stored = await self._configuration.update_segment(self._segment_in(request.segment, "segment"))
        return pb.UpdateSegmentResponse(segment=self._segment_out(stored))

    async def DeleteSegment(
        self, request: pb.DeleteSegmentRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSegmentResponse:
        segment_id = _identifier_field(request.segment_id, "segment_id")
        return pb.DeleteSegmentResponse(deleted=await self._configuration.delete_segment(segment_id))

    # ------------------------------------------------------------------ policies
    @staticmethod
    def _policy_out(policy: StoredPolicy) -> pb.SituationPolicy:
        return pb.SituationPolicy(
            situation=policy.situation.value,  # type: ignore[arg-type]
            strategies=[strategy.value for strategy in policy.strategies],  # type: ignore[misc]
            messages=[
                pb.MessageTemplate(language=language, headline=headline, body=body)
                for language, (headline, body) in sorted(policy.messages.items())
            ],
        )

    async def GetPolicy(self, request: pb.GetPolicyRequest, context: grpc.aio.ServicerContext) -> pb.GetPolicyResponse:
        policies = await self._configuration.policies()
        return pb.GetPolicyResponse(policies=[self._policy_out(policy) for policy in policies])

    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdatePolicyResponse:
        policy = request.policy
        if policy.situation == pb.SITUATION_UNSPECIFIED:
            raise InvalidArgument([FieldViolation("policy.situation", "must be set")])
        situation = _situation(policy.situation, "policy.situation")
        strategies = tuple(
            _strategy(number, f"policy.strategies[{index}]") for index, number in enumerate(policy.strategies)
        )
        if len(set(strategies)) != len(strategies):
            raise InvalidArgument([FieldViolation("policy.strategies", "must not repeat a strategy")])
        templates: dict[str, tuple[str, str]] = {}
        for index, template in enumerate(policy.messages):
            if template.language not in LANGUAGES:
                raise InvalidArgument(
                    [FieldViolation(f"policy.messages[{index}].language", f"must be one of {', '.join(LANGUAGES)}")]
                )
            templates[template.language] = (template.headline, template.body)
        stored = await self._configuration.update_policy(StoredPolicy(situation, strategies, templates))
        return pb.UpdatePolicyResponse(policy=self._policy_out(stored))

    # ------------------------------------------------------------------ experiments
    @staticmethod
    def _experiment_out(experiment: StoredExperiment) -> pb.Experiment:
        return pb.Experiment(
            experiment_id=experiment.experiment_id,
            arms=[
                pb.ExperimentArm(
                    name=name,
                    weight=weight,
                    strategy=strategy.value if strategy else 0,  # type: ignore[arg-type]
                )
                for name, weight, strategy in experiment.arms
            ],
            holdout_share=experiment.holdout_share,
            placements=[pb.Placement.Value(f"PLACEMENT_{name}") for name in experiment.placements],
        )

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateExperimentResponse:
        experiment = request.experiment
        experiment_id = _identifier_field(experiment.experiment_id, "experiment.experiment_id")
        arms = []
        for index, arm in enumerate(experiment.arms):
            strategy = _strategy(arm.strategy, f"experiment.arms[{index}].strategy") if arm.strategy else None
            arms.append((arm.name, arm.weight, strategy))
        placements = []
        for index, number in enumerate(experiment.placements):
            name = PLACEMENTS.get(number)
            if name is None:
                raise InvalidArgument([FieldViolation(f"experiment.placements[{index}]", "unknown placement")])
            placements.append(name)
        stored = await self._configuration.create_experiment(
            StoredExperiment(experiment_id, tuple(arms), experiment.holdout_share, tuple(placements))
        )
        return pb.CreateExperimentResponse(experiment=self._experiment_out(stored))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExperimentsResponse:
        experiments = await self._configuration.list_experiments()
        return pb.ListExperimentsResponse(experiments=[self._experiment_out(experiment) for experiment in experiments])

    async def GetExperimentReport(
        self, request: pb.GetExperimentReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetExperimentReportResponse:
        experiment_id = _identifier_field(request.experiment_id, "experiment_id")
        conversion = FEEDBACK_KINDS.get(request.conversion or pb.FEEDBACK_KIND_CLICK)
        if conversion is None:
            raise InvalidArgument([FieldViolation("conversion", "unknown feedback kind")])
        found = await self._configuration.experiment_report(experiment_id, conversion)
        if found is None:
            raise NotFound(f"no experiment {experiment_id}", "EXPERIMENT_NOT_FOUND")
        experiment, arms = found
        return pb.GetExperimentReportResponse(
            experiment=self._experiment_out(experiment),
            arms=[
                pb.ArmReport(
                    arm=arm.arm,
                    exposures=arm.exposures,
                    conversions=arm.conversions,
                    conversion_rate=arm.rate,
                    rate_low=arm.rate_low,
                    rate_high=arm.rate_high,
                    uplift=arm.uplift,
                    difference_low=arm.difference_low,
                    difference_high=arm.difference_high,
                    p_value=arm.p_value,
                )
                for arm in arms
            ],
        )
