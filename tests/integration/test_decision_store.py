"""Decision's Redis side against the real Redis: what Feedback counts is what Decide's bandit
reads back (over the pipelined connection), per situation key; and the learner, catching up on a
long event stream, lets the event loop (every Decide) run between slices of events."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator

import pytest

from services.common.redis import RedisClient
from services.decision.adapters.redis_store import DecisionStore
from services.decision.domain.catalog import Catalog
from services.decision.domain.next_item import NextItemRecommender, NextItemSettings
from services.decision.domain.recommenders import CoPurchase, Similar, Trending
from services.decision.learning import LEARN_SLICE, READ_COUNT, Learner, Models
from tests.support import REDIS_URL


@pytest.fixture
async def store() -> AsyncIterator[DecisionStore]:
    client = RedisClient(REDIS_URL, prefix=f"test:{uuid.uuid4().hex[:8]}:")
    yield DecisionStore(client)
    keys = [key async for key in client.redis.scan_iter(match=f"{client.prefix}*")]
    if keys:
        await client.redis.delete(*keys)
    await client.close()


async def test_bandit_counts_read_back_what_feedback_counted_per_key(store: DecisionStore) -> None:
    counted = await store.count_feedback(
        "decision-1:click",
        [("micro", "NEXT_ITEM:t", 1.0), ("micro", "NEXT_ITEM:s", 1.0), ("FIRST_VISIT", "TRENDING:t", 2.5)],
        [],
    )
    again = await store.count_feedback("decision-1:click", [("micro", "NEXT_ITEM:t", 1.0)], [])

    micro, situation, unknown = await store.bandit_counts(["micro", "FIRST_VISIT", "never-counted"])

    assert (counted, again) == (True, False)
    assert micro == {"NEXT_ITEM:t": 1.0, "NEXT_ITEM:s": 1.0}
    assert situation == {"TRENDING:t": 2.5}
    assert unknown == {}


async def test_the_learner_lets_decides_run_between_slices_of_a_long_read(store: DecisionStore) -> None:
    events = READ_COUNT  # one full read
    start = await store.redis.xadd(store.profile_events, {"e": "{}"})  # the learner starts after it
    pipe = store.redis.pipeline(transaction=False)
    for index in range(events):
        event = {"person": f"p{index % 50}", "t": 1_700_000_000_000 + index, "type": "PRODUCT_VIEW"}
        pipe.xadd(store.profile_events, {"e": json.dumps({**event, "product": f"sku{index % 300}"})})
    await pipe.execute()
    catalog = Catalog()
    models = Models(
        catalog=catalog,
        next_item=NextItemRecommender(NextItemSettings(session_timeout=1800)),
        trending=Trending(catalog, half_life_ms=3_600_000),
        co_purchase=CoPurchase(catalog),
        similar=Similar(catalog),
    )
    models.stream_position = start
    learner = Learner(store, models, session_timeout_ms=1_800_000, on_config_change=lambda: None, replay_stream=True)
    learnt_at_each_turn: list[int] = []

    async def a_decide_waiting_its_turn() -> None:
        while len(learnt_at_each_turn) < 1000:
            learnt_at_each_turn.append(models.events_learned)
            await asyncio.sleep(0)

    turns = asyncio.create_task(a_decide_waiting_its_turn())
    applied = await learner.step(block_ms=None)
    turns.cancel()

    assert applied == events
    assert models.events_learned == events
    # The other task ran while the read was being learnt, never more than a slice apart.
    during = sorted({count for count in learnt_at_each_turn if 0 < count < events})
    assert len(during) >= events // LEARN_SLICE - 2
    assert max(b - a for a, b in itertools.pairwise(during)) <= LEARN_SLICE
