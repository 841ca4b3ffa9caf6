"""A sender looks for the sends a crashed replica held several times per claim period, so they
are taken over soon after they become claimable, not up to half a period later."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from services.messaging.adapters.redis_queue import StreamEntries
from services.messaging.domain.retry import RetryPolicy
from services.messaging.domain.templates import Shop
from services.messaging.sending import Sender, SenderConfig, claim_scan_interval_s, send_policy

CLAIM_IDLE_MS = 600


class IdleSendStream:
    """A send stream with nothing to send; counts the looks for stale entries."""

    def __init__(self) -> None:
        self.claims = 0

    async def claim_stale_sends(self, consumer: str, idle_ms: int, count: int) -> StreamEntries:
        self.claims += 1
        return []

    async def read_sends(self, consumer: str, count: int, block_ms: int) -> StreamEntries:
        await asyncio.sleep(0.01)  # a blocking read that times out, shortened
        return []


def sender(queue: IdleSendStream) -> Sender:
    config = SenderConfig(
        shop=Shop("Shop", "https://shop.example"),
        public_url="https://m.example",
        sender_address="shop@example.com",
        push_url="",
        push_auth_token="",
        default_language="en",
        workers=4,
        claim_idle_ms=CLAIM_IDLE_MS,
        retry=RetryPolicy(),
        policy=send_policy("21:00", "08:00", enabled=False),
    )
    unused = cast(Any, None)
    return Sender(cast(Any, queue), unused, unused, unused, unused, unused, unused, unused, unused, config, "me")


def test_a_look_comes_every_sixth_of_the_claim_period() -> None:
    assert claim_scan_interval_s(30_000) == 5.0
    assert claim_scan_interval_s(3_000) == 0.5


async def test_an_idle_sender_looks_for_stale_sends_several_times_per_claim_period() -> None:
    queue = IdleSendStream()
    running = asyncio.create_task(sender(queue).run())
    await asyncio.sleep(CLAIM_IDLE_MS / 1000 * 0.75)
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    # Every 0.1 s: 4 looks in 0.45 s or more (every half period, as before, gave 2).
    assert queue.claims >= 4
