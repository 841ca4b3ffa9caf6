"""Decision against the real Redis, with real identity and profile servers: situations along a
storefront visit, catalog rules, segments, feedback and experiments, bad input, Redis outage."""

from __future__ import annotations

import json
import signal
import time
import uuid
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from rapport.common.v1 import event_pb2
from rapport.common.v1 import identifier_pb2 as common
from rapport.decision.v1 import decision_service_pb2 as pb
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from services.common.clock import now_ms
from tests.integration.conftest import (
    DecisionHarness,
    ProfileHarness,
    decision_settings,
    running_decision,
)
from tests.support import STOREFRONT_KEY, error_details, private_redis, scrape_metrics, wait_for

pytestmark = pytest.mark.integration

SWEATERS = ("Women", "Knitwear", "Sweaters")
CARDIGANS = ("Women", "Knitwear", "Cardigans")
SCARVES = ("Women", "Accessories", "Scarves")
MINUTE_MS = 60_000
UNKNOWN_PLACEMENT: Any = 99
PERSON = uuid.uuid4().hex


def cookie(value: str) -> common.Identifier:
    return common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE, value=value)


def catalog_product(pid: str, path: tuple[str, ...], price: float, stock: int = 10, **attributes: str) -> Any:
    return pb.CatalogProduct(
        product_id=pid,
        title=f"Title {pid}",
        category_path=list(path),
        brand="Maison Laine",
        price=event_pb2.Money(currency_code="EUR", amount=price),
        stock=stock,
        attributes=attributes,
    )


def product_ref(pid: str, path: tuple[str, ...], price: float) -> Any:
    return event_pb2.ProductRef(
        product_id=pid,
        title=f"Title {pid}",
        category_path=list(path),
        brand="Maison Laine",
        price=event_pb2.Money(currency_code="EUR", amount=price),
    )


def event(kind: int, who: common.Identifier, at_ms: int, **fields: Any) -> Any:
    message = event_pb2.Event(event_id=uuid.uuid4().hex, type=kind, identifier=who, **fields)  # type: ignore[arg-type]
    message.event_time.FromMilliseconds(at_ms)
    return message


async def track(profile: ProfileHarness, *events: Any) -> None:
    reply = await profile.call("TrackBatch", profile_pb.TrackBatchRequest(events=list(events)))
    assert reply.rejected_count == 0, [r.status.message for r in reply.results if r.status.code]


async def cart_and_leave(profile: ProfileHarness, who: common.Identifier, sweater: str) -> None:
    """Two hours ago the visitor viewed a sweater and put it in the cart, then left."""
    start = now_ms() - 120 * MINUTE_MS
    await track(
        profile,
        event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, who, start, product=product_ref(sweater, SWEATERS, 50)),
        event(
            event_pb2.EVENT_TYPE_ADD_TO_CART, who, start + 1000, product=product_ref(sweater, SWEATERS, 50), quantity=1
        ),
    )


async def decide(decision: DecisionHarness, who: common.Identifier, count: int = 6, **page: Any) -> Any:
    return await decision.call(
        "Decide",
        pb.DecideRequest(identifier=who, placement=pb.PLACEMENT_HOME, count=count, page=pb.PageContext(**page)),
        timeout=2.0,
    )


@pytest.fixture(scope="module")
async def shop(decision: DecisionHarness) -> dict[str, tuple[str, ...]]:  # product id -> category path
    """A small catalog: 8 sweaters, 6 cardigans, 6 scarves; the last sweater out of stock."""
    tag = uuid.uuid4().hex[:6]
    products: dict[str, tuple[str, ...]] = {}
    for index in range(8):
        products[f"sw-{tag}-{index}"] = SWEATERS
    for index in range(6):
        products[f"ca-{tag}-{index}"] = CARDIGANS
        products[f"sc-{tag}-{index}"] = SCARVES
    items = [
        catalog_product(pid, path, 40.0 + 10 * (i % 8), stock=0 if pid == f"sw-{tag}-7" else 5)
        for i, (pid, path) in enumerate(products.items())
    ]
    reply = await decision.call("ImportCatalog", pb.ImportCatalogRequest(products=items))
    assert reply.imported_count == len(items) and not reply.rejected
    return products


async def test_storefront_visit_changes_situation_and_message(
    decision: DecisionHarness, profile: ProfileHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    sweaters = [pid for pid, path in shop.items() if path == SWEATERS]
    visitor = cookie(f"visit-{uuid.uuid4().hex}")
    first = await decide(decision, visitor)
    assert first.situation == pb.SITUATION_FIRST_VISIT
    assert first.message.headline == "Welcome!"
    assert not first.degraded, first.degraded_reasons

    # First visit, two hours ago: browses sweaters, puts one in the cart, leaves.
    start = now_ms() - 120 * MINUTE_MS
    await track(
        profile,
        *(
            event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, visitor, start + i * 1000, product=product_ref(pid, SWEATERS, 50))
            for i, pid in enumerate(sweaters[:3])
        ),
        event(
            event_pb2.EVENT_TYPE_ADD_TO_CART,
            visitor,
            start + 5000,
            product=product_ref(sweaters[0], SWEATERS, 50),
            quantity=1,
        ),
    )
    left = await decide(decision, visitor)
    assert left.situation == pb.SITUATION_ABANDONED_CART
    assert left.message.headline == "Didn't find what you wanted last time?"

    # Returns now: the cart is still there, unbought.
    await track(profile, event(event_pb2.EVENT_TYPE_PAGE_VIEW, visitor, now_ms() - 1000))
    back = await decide(decision, visitor, count=8)
    assert back.situation == pb.SITUATION_ABANDONED_CART
    returned = [item.product_id for item in back.items]
    assert returned and sweaters[0] not in returned  # never what is already in the cart
    assert sweaters[7] not in returned  # out of stock
    assert all(pid in shop for pid in returned)  # only catalog products
    french = await decide(decision, visitor, language="fr")
    assert french.message.headline == "Vous n'avez pas trouvé votre bonheur la dernière fois ?"

    # Buys: now a recent buyer, offered what goes with the purchase.
    order = event_pb2.Order(
        order_id=uuid.uuid4().hex,
        lines=[event_pb2.OrderLine(product=product_ref(sweaters[0], SWEATERS, 50), quantity=1)],
        total=event_pb2.Money(currency_code="EUR", amount=50),
    )
    await track(profile, event(event_pb2.EVENT_TYPE_PURCHASE, visitor, now_ms() - 500, order=order))
    bought = await decide(decision, visitor)
    assert bought.situation == pb.SITUATION_RECENT_BUYER
    assert bought.message.headline == "To go with your last purchase"
    assert sweaters[0] not in [item.product_id for item in bought.items]  # not consumable: not again


async def test_return_visit_and_loyal_customer(
    decision: DecisionHarness, profile: ProfileHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    scarves = [pid for pid, path in shop.items() if path == SCARVES]
    visitor = cookie(f"return-{uuid.uuid4().hex}")
    await track(
        profile,
        event(
            event_pb2.EVENT_TYPE_PRODUCT_VIEW,
            visitor,
            now_ms() - 26 * 60 * MINUTE_MS,
            product=product_ref(scarves[0], SCARVES, 30),
        ),
        event(event_pb2.EVENT_TYPE_PAGE_VIEW, visitor, now_ms() - 1000),
    )
    back = await decide(decision, visitor)
    assert back.situation == pb.SITUATION_RETURN_VISIT
    assert back.message.headline == "Welcome back!"
    assert "Scarves" in back.message.body  # the category that motivated the last visit

    await profile.call(
        "SetAttributes",
        profile_pb.SetAttributesRequest(
            person=profile_pb.PersonSelector(identifier=visitor),
            attributes={"loyalty_card": "LC-1", "first_name": "Ada"},
        ),
    )
    loyal = await decide(decision, visitor)
    assert loyal.situation == pb.SITUATION_LOYAL_CUSTOMER
    assert loyal.message.headline == "Thank you for your loyalty, Ada!"


async def test_learns_next_item_from_the_event_stream(
    decision: DecisionHarness, profile: ProfileHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    cardigans = [pid for pid, path in shop.items() if path == CARDIGANS]
    first, then = cardigans[0], cardigans[4]
    at = now_ms() - 10 * MINUTE_MS
    # Many visitors view `first` then `then`.
    events = []
    for index in range(12):
        who = cookie(f"crowd-{uuid.uuid4().hex}")
        events.append(
            event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, who, at + index, product=product_ref(first, CARDIGANS, 60))
        )
        events.append(
            event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, who, at + index + 1000, product=product_ref(then, CARDIGANS, 60))
        )
    await track(profile, *events)

    visitor = cookie(f"learner-{uuid.uuid4().hex}")
    await track(
        profile,
        event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, visitor, now_ms() - 500, product=product_ref(first, CARDIGANS, 60)),
    )

    async def next_item_learned() -> bool:
        reply = await decision.call(
            "Decide",
            pb.DecideRequest(
                identifier=visitor, placement=pb.PLACEMENT_PRODUCT, count=3, page=pb.PageContext(product_id=first)
            ),
        )
        return any(item.product_id == then and item.strategy == pb.STRATEGY_SESSION_NEXT_ITEM for item in reply.items)

    await wait_for(next_item_learned, within_s=5.0, every_s=0.1)


async def test_stock_changes_reach_answers(decision: DecisionHarness, shop: dict[str, tuple[str, ...]]) -> None:
    visitor = cookie(f"stock-{uuid.uuid4().hex}")
    everything = await decide(decision, visitor, count=40)
    shown = [item.product_id for item in everything.items]
    assert shown
    gone = shown[0]
    reply = await decision.call(
        "UpdateStock",
        pb.UpdateStockRequest(
            levels=[pb.StockLevel(product_id=gone, stock=0), pb.StockLevel(product_id="nope", stock=1)]
        ),
    )
    assert reply.updated_count == 1 and list(reply.unknown_product_ids) == ["nope"]
    after = await decide(decision, visitor, count=40)
    assert gone not in [item.product_id for item in after.items]
    await decision.call("UpdateStock", pb.UpdateStockRequest(levels=[pb.StockLevel(product_id=gone, stock=3)]))


async def test_segments_are_evaluated_per_request(decision: DecisionHarness, profile: ProfileHarness) -> None:
    segment_id = f"knit-{uuid.uuid4().hex[:8]}"
    rule = 'visit_number >= 1 and category_affinity["Women > Knitwear > Sweaters"] > 0.5'
    created = await decision.call(
        "CreateSegment",
        pb.CreateSegmentRequest(segment=pb.Segment(segment_id=segment_id, name="Knit lovers", rule=rule)),
    )
    assert created.segment.rule == rule
    listed = await decision.call("ListSegments", pb.ListSegmentsRequest())
    assert segment_id in [segment.segment_id for segment in listed.segments]

    fan, other = cookie(f"fan-{uuid.uuid4().hex}"), cookie(f"other-{uuid.uuid4().hex}")
    await track(
        profile,
        event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, fan, now_ms() - 2000, product=product_ref("x-sweater", SWEATERS, 70)),
        event(event_pb2.EVENT_TYPE_PRODUCT_VIEW, other, now_ms() - 2000, product=product_ref("x-scarf", SCARVES, 20)),
    )
    assert segment_id in (await decide(decision, fan)).segment_ids
    assert segment_id not in (await decide(decision, other)).segment_ids

    await decision.call(
        "UpdateSegment",
        pb.UpdateSegmentRequest(
            segment=pb.Segment(
                segment_id=segment_id, name="Scarf lovers", rule='top_category == "Women > Accessories > Scarves"'
            )
        ),
    )
    assert segment_id in (await decide(decision, other)).segment_ids
    assert (await decision.call("DeleteSegment", pb.DeleteSegmentRequest(segment_id=segment_id))).deleted
    assert segment_id not in (await decide(decision, other)).segment_ids


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.DecideRequest(person_id=PERSON, placement=pb.PLACEMENT_UNSPECIFIED, count=5), "placement"),
        (pb.DecideRequest(person_id=PERSON, placement=UNKNOWN_PLACEMENT, count=5), "placement"),
        (pb.DecideRequest(person_id=PERSON, placement=pb.PLACEMENT_HOME, count=0), "count"),
        (pb.DecideRequest(person_id=PERSON, placement=pb.PLACEMENT_HOME, count=10_000), "count"),
        (pb.DecideRequest(placement=pb.PLACEMENT_HOME, count=5), "visitor"),
        (
            pb.DecideRequest(
                identifier=common.Identifier(type=common.IDENTIFIER_TYPE_COOKIE), placement=pb.PLACEMENT_HOME, count=5
            ),
            "identifier.value",
        ),
    ],
)
async def test_bad_decide_requests_name_the_field(decision: DecisionHarness, request_: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call("Decide", request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [violation for violation, _ in error_details(raised.value).field_violations]


async def test_a_batch_decides_each_request_as_decide_does_and_reports_bad_ones_apart(
    decision: DecisionHarness, profile: ProfileHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    sweaters = [pid for pid, path in shop.items() if path == SWEATERS]
    browser = cookie(f"batch-{uuid.uuid4().hex}")
    await cart_and_leave(profile, browser, sweaters[0])
    newcomer = cookie(f"batch-new-{uuid.uuid4().hex}")
    requests = [
        pb.DecideRequest(identifier=browser, placement=pb.PLACEMENT_EMAIL, count=4),
        pb.DecideRequest(identifier=newcomer, placement=pb.PLACEMENT_HOME, count=0),
        pb.DecideRequest(identifier=newcomer, placement=pb.PLACEMENT_HOME, count=3, page=pb.PageContext(language="fr")),
        pb.DecideRequest(placement=UNKNOWN_PLACEMENT, count=3),
    ]

    reply = await decision.call("DecideBatch", pb.DecideBatchRequest(requests=requests), timeout=5.0)

    assert [result.index for result in reply.results] == [0, 1, 2, 3]
    assert [result.status.code for result in reply.results] == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0], 0, 3]
    abandoned, bad_count, welcome, bad_visitor = reply.results
    assert abandoned.response.situation == pb.SITUATION_ABANDONED_CART
    assert len(abandoned.response.items) == 4 and abandoned.response.decision_id
    assert sweaters[0] not in [item.product_id for item in abandoned.response.items]
    assert welcome.response.situation == pb.SITUATION_FIRST_VISIT
    assert welcome.response.message.language == "fr" and len(welcome.response.items) == 3
    assert welcome.response.decision_id != abandoned.response.decision_id
    assert _violations(bad_count.status) == ["requests[1].count"]
    assert _violations(bad_visitor.status) == ["requests[3].visitor", "requests[3].placement"]
    assert not bad_count.HasField("response") and not bad_visitor.HasField("response")
    # A decision of a batch takes feedback like any other.
    await decision.call(
        "Feedback",
        pb.FeedbackRequest(decision_id=abandoned.response.decision_id, kind=pb.FEEDBACK_KIND_IMPRESSION),
    )


@pytest.mark.parametrize("size", [0, 101])
async def test_a_batch_holds_one_to_a_hundred_requests(decision: DecisionHarness, size: int) -> None:
    one = pb.DecideRequest(person_id=PERSON, placement=pb.PLACEMENT_HOME, count=2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call("DecideBatch", pb.DecideBatchRequest(requests=[one] * size))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error_details(raised.value).field_violations] == ["requests"]


def _violations(status: Any) -> list[str]:
    fields: list[str] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields += [violation.field for violation in bad.field_violations]
    return fields


@pytest.mark.parametrize("rule", ["visit_number >= ", "(a == 1", "a === 2", '__import__("os")', 'name == "open'])
async def test_malformed_segment_rules_are_refused(decision: DecisionHarness, rule: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call(
            "CreateSegment", pb.CreateSegmentRequest(segment=pb.Segment(segment_id="bad", name="bad", rule=rule))
        )
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in error_details(raised.value).field_violations] == ["segment.rule"]


async def test_storefront_key_cannot_administer(decision: DecisionHarness) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call("ListSegments", pb.ListSegmentsRequest(), key=STOREFRONT_KEY)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_feedback_counts_once_and_experiments_report_per_arm(
    decision: DecisionHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    experiment_id = f"exp-{uuid.uuid4().hex[:8]}"
    await decision.call(
        "CreateExperiment",
        pb.CreateExperimentRequest(
            experiment=pb.Experiment(
                experiment_id=experiment_id,
                arms=[pb.ExperimentArm(name="bandit", weight=1.0)],
                holdout_share=0.5,
                placements=[pb.PLACEMENT_CART],
            )
        ),
    )
    arms: dict[str, int] = {}
    strategies: dict[str, int] = {}  # lead strategy -> clicks in the bandit arm
    before = await scrape_metrics(decision.running.metrics_port)
    for _ in range(40):
        reply = await decision.call(
            "Decide",
            pb.DecideRequest(person_id=uuid.uuid4().hex, placement=pb.PLACEMENT_CART, count=3),
        )
        assert reply.experiment_id == experiment_id
        arms[reply.experiment_arm] = arms.get(reply.experiment_arm, 0) + 1
        await decision.call(
            "Feedback", pb.FeedbackRequest(decision_id=reply.decision_id, kind=pb.FEEDBACK_KIND_IMPRESSION)
        )
        if reply.experiment_arm == "bandit":
            strategy = pb.Strategy.Name(reply.lead_strategy).removeprefix("STRATEGY_")
            strategies[strategy] = strategies.get(strategy, 0) + 1
            click = pb.FeedbackRequest(decision_id=reply.decision_id, kind=pb.FEEDBACK_KIND_CLICK, product_id="x")
            assert (await decision.call("Feedback", click)).counted
            assert not (await decision.call("Feedback", click)).counted  # the same click again
    assert set(arms) == {"bandit", "holdout"}

    async def exposures_counted() -> bool:
        report = await decision.call("GetExperimentReport", pb.GetExperimentReportRequest(experiment_id=experiment_id))
        return sum(arm.exposures for arm in report.arms) == 40

    await wait_for(exposures_counted, within_s=5.0, every_s=0.1)
    report = await decision.call("GetExperimentReport", pb.GetExperimentReportRequest(experiment_id=experiment_id))
    by_arm = {arm.arm: arm for arm in report.arms}
    assert by_arm["holdout"].conversions == 0
    assert by_arm["bandit"].conversions == arms["bandit"]
    assert by_arm["bandit"].conversion_rate == pytest.approx(1.0)
    assert by_arm["bandit"].difference_low > 0  # clicks only in the bandit arm: a clear difference

    # The dashboard's degraded ratio and click-through per strategy (each click counted once).
    after = await scrape_metrics(decision.running.metrics_port)

    def added(series: str) -> float:
        return after.get(series, 0.0) - before.get(series, 0.0)

    cart = 'rapport_decision_decisions_total{{degraded="{}",placement="CART"}}'
    assert added(cart.format("no")) + added(cart.format("yes")) == 40
    for strategy, clicks in strategies.items():
        assert added(f'rapport_decision_feedback_total{{kind="CLICK",strategy="{strategy}"}}') == clicks
    assert sum(added(s) for s in after if s.startswith('rapport_decision_feedback_total{kind="IMPRESSION"')) == 40
    assert added('rapport_redis_command_duration_seconds_count{command="MULTI"}') > 0  # feedback counts

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call("Feedback", pb.FeedbackRequest(decision_id="d1.forged.sig", kind=pb.FEEDBACK_KIND_CLICK))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_without_redis_decide_answers_degraded_from_memory(
    run_id: str, identity: Any, profile: ProfileHarness
) -> None:
    with private_redis() as (url, process, _port):
        settings = decision_settings(
            run_id, identity.address, f"127.0.0.1:{profile.running.port}", redis_url=url, redis_prefix="outage:"
        )
        async with running_decision(settings) as harness:
            await harness.call(
                "ImportCatalog",
                pb.ImportCatalogRequest(products=[catalog_product(f"o-{i}", SCARVES, 20.0 + i) for i in range(5)]),
            )
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(url)
            for i in range(5):
                entry = {
                    "person": f"p{i}",
                    "id": f"e{i}",
                    "type": "PRODUCT_VIEW",
                    "t": now_ms(),
                    "product": f"o-{i % 2}",
                    "category": " > ".join(SCARVES),
                }
                await client.xadd("outage:profile:events", {"e": json.dumps(entry)})
            await client.aclose()

            async def learned() -> bool:
                reply = await harness.call(
                    "Decide", pb.DecideRequest(person_id=uuid.uuid4().hex, placement=pb.PLACEMENT_HOME, count=2)
                )
                return [item.product_id for item in reply.items][:1] == ["o-0"]

            await wait_for(learned, within_s=5.0, every_s=0.1)
            process.terminate()
            process.wait(10)
            started = time.monotonic()
            reply = await harness.call(
                "Decide", pb.DecideRequest(person_id=uuid.uuid4().hex, placement=pb.PLACEMENT_HOME, count=2)
            )
            assert time.monotonic() - started < 0.5
            assert reply.degraded and reply.degraded_reasons
            assert [item.product_id for item in reply.items] == ["o-0", "o-1"]  # trending, from memory
            metrics = await scrape_metrics(harness.running.metrics_port)
            assert metrics['rapport_decision_decisions_total{degraded="yes",placement="HOME"}'] >= 1
            for reason in reply.degraded_reasons:
                assert metrics[f'rapport_decision_degraded_reasons_total{{reason="{reason}"}}'] >= 1
            assert any(s.startswith("rapport_redis_command_errors_total{") for s in metrics)


async def test_a_frozen_redis_costs_the_answer_its_freshness_not_its_deadline(
    run_id: str, identity: Any, profile: ProfileHarness
) -> None:
    """Redis stopped (SIGSTOP: connections open, no replies) while a Decide reads the profile:
    the profile stage's budget runs out and the answer comes from memory, degraded, inside the
    caller's deadline."""
    with private_redis() as (url, process, _port):
        settings = decision_settings(
            run_id, identity.address, f"127.0.0.1:{profile.running.port}", redis_url=url, redis_prefix="frozen:"
        )
        async with running_decision(settings) as harness:
            await harness.call(
                "ImportCatalog",
                pb.ImportCatalogRequest(products=[catalog_product(f"f-{i}", SCARVES, 20.0 + i) for i in range(3)]),
            )
            person = uuid.uuid4().hex
            await harness.call("Decide", pb.DecideRequest(person_id=person, placement=pb.PLACEMENT_HOME, count=2))
            process.send_signal(signal.SIGSTOP)
            try:
                started = time.monotonic()
                reply = await harness.call(
                    "Decide",
                    pb.DecideRequest(person_id=uuid.uuid4().hex, placement=pb.PLACEMENT_HOME, count=2),
                    timeout=0.25,
                )
                elapsed = time.monotonic() - started
            finally:
                process.send_signal(signal.SIGCONT)
            assert reply.degraded and "profile_timeout" in reply.degraded_reasons, reply.degraded_reasons
            assert len(reply.items) == 2  # the catalog's newest, from memory
            assert elapsed < 0.25
            # Redis back: the next answers are whole again.
            await wait_for(lambda: _not_degraded(harness, person), within_s=10.0, every_s=0.1)


async def _not_degraded(harness: DecisionHarness, person: str) -> bool:
    reply = await harness.call("Decide", pb.DecideRequest(person_id=person, placement=pb.PLACEMENT_HOME, count=2))
    return not reply.degraded


async def test_latest_decisions_are_kept_per_person_with_their_reasons(
    decision: DecisionHarness, profile: ProfileHarness, shop: dict[str, tuple[str, ...]]
) -> None:
    sweaters = [pid for pid, path in shop.items() if path == SWEATERS]
    visitor = cookie(f"history-{uuid.uuid4().hex}")
    await cart_and_leave(profile, visitor, sweaters[0])
    first = await decide(decision, visitor, count=4)
    second = await decision.call(
        "Decide",
        pb.DecideRequest(person_id=first.person_id, placement=pb.PLACEMENT_CART, count=3, page=pb.PageContext()),
        timeout=2.0,
    )

    async def both_kept() -> bool:
        listed = await decision.call("ListDecisions", pb.ListDecisionsRequest(person_id=first.person_id))
        return len(listed.decisions) == 2

    await wait_for(both_kept, within_s=5.0, every_s=0.1)
    listed = await decision.call("ListDecisions", pb.ListDecisionsRequest(person_id=first.person_id))
    newest, oldest = listed.decisions
    assert (newest.decision_id, oldest.decision_id) == (second.decision_id, first.decision_id)  # newest first
    assert newest.placement == pb.PLACEMENT_CART and oldest.placement == pb.PLACEMENT_HOME
    assert oldest.situation == first.situation == pb.SITUATION_ABANDONED_CART
    assert oldest.lead_strategy == first.lead_strategy and oldest.situation_key == first.situation_key
    assert oldest.message.headline == first.message.headline and oldest.message.body == first.message.body
    assert oldest.degraded == first.degraded and list(oldest.degraded_reasons) == list(first.degraded_reasons)
    assert list(oldest.segment_ids) == list(first.segment_ids)
    assert [(i.product_id, i.strategy, i.reason, i.title) for i in oldest.items] == [
        (i.product_id, i.strategy, i.reason, i.title) for i in first.items
    ]
    assert all(item.reason for item in oldest.items)
    assert abs(oldest.decide_time.ToMilliseconds() - now_ms()) < 60_000
    one = await decision.call("ListDecisions", pb.ListDecisionsRequest(person_id=first.person_id, limit=1))
    assert [d.decision_id for d in one.decisions] == [second.decision_id]

    # A capped list: the 20 latest, expiring in 30 days.
    for _ in range(22):
        await decision.call(
            "Decide", pb.DecideRequest(person_id=first.person_id, placement=pb.PLACEMENT_HOME, count=2), timeout=2.0
        )
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(decision.settings.redis_url)
    key = f"{decision.settings.redis_prefix}decision:recent:{first.person_id}"
    try:

        async def capped() -> bool:
            listed = await decision.call("ListDecisions", pb.ListDecisionsRequest(person_id=first.person_id))
            return len(listed.decisions) == 20 and first.decision_id not in {d.decision_id for d in listed.decisions}

        await wait_for(capped, within_s=5.0, every_s=0.1)
        assert await client.llen(key) == 20
        assert 29 * 86_400 < await client.ttl(key) <= 30 * 86_400
    finally:
        await client.aclose()

    nobody = await decision.call("ListDecisions", pb.ListDecisionsRequest(person_id=uuid.uuid4().hex))
    assert list(nobody.decisions) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListDecisionsRequest(person_id="not-a-person"), "person_id"),
        (pb.ListDecisionsRequest(), "person_id"),
        (pb.ListDecisionsRequest(person_id=PERSON, limit=21), "limit"),
        (pb.ListDecisionsRequest(person_id=PERSON, limit=-1), "limit"),
    ],
)
async def test_bad_list_decisions_requests_name_the_field(decision: DecisionHarness, request_: Any, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await decision.call("ListDecisions", request_)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation for violation, _ in error_details(raised.value).field_violations] == [field]


async def test_experiments_are_listed_and_need_the_admin_scope(decision: DecisionHarness) -> None:
    experiment_ids = sorted(f"list-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for experiment_id in experiment_ids:
        await decision.call(
            "CreateExperiment",
            pb.CreateExperimentRequest(
                experiment=pb.Experiment(
                    experiment_id=experiment_id,
                    arms=[pb.ExperimentArm(name="similar", weight=2.0, strategy=pb.STRATEGY_SIMILAR_ITEMS)],
                    holdout_share=0.2,
                    placements=[pb.PLACEMENT_SEARCH],
                )
            ),
        )
    listed = await decision.call("ListExperiments", pb.ListExperimentsRequest())
    ids = [experiment.experiment_id for experiment in listed.experiments]
    assert ids == sorted(ids) and set(experiment_ids) <= set(ids)
    mine = next(experiment for experiment in listed.experiments if experiment.experiment_id == experiment_ids[0])
    assert mine.holdout_share == pytest.approx(0.2)
    assert list(mine.placements) == [pb.PLACEMENT_SEARCH]
    assert [(arm.name, arm.weight, arm.strategy) for arm in mine.arms] == [("similar", 2.0, pb.STRATEGY_SIMILAR_ITEMS)]
    for method, request_ in (
        ("ListExperiments", pb.ListExperimentsRequest()),
        ("ListDecisions", pb.ListDecisionsRequest(person_id=PERSON)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await decision.call(method, request_, key=STOREFRONT_KEY)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
