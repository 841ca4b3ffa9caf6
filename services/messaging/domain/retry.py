"""When to try a failed delivery again, and when to give up on it (dead letter).

Backoff is exponential with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"): a uniform delay in [0, min(cap, base * 2**retry)], so deliveries failing together (an
SMTP relay restarting) do not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final

_MAX_DOUBLINGS: Final = 62  # beyond, base * 2**n is past any cap; spares a huge int


def backoff_ms(attempt: int, base_ms: int, cap_ms: int, rng: random.Random) -> int:
    """The delay before retry number `attempt` (0 for the first retry)."""
    if attempt < 0 or base_ms < 0 or cap_ms < 0:
        raise ValueError("attempt, base_ms and cap_ms must not be negative")
    ceiling = min(cap_ms, base_ms << min(attempt, _MAX_DOUBLINGS))
    return rng.randint(0, ceiling)


@dataclass(frozen=True, slots=True)
class Retry:
    at_ms: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    reason: str  # UPPER_SNAKE_CASE: PERMANENT_ERROR or ATTEMPTS_EXHAUSTED


NextStep = Retry | DeadLetter


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """8 attempts from 2 s up to 15 min apart: about an hour of retries in the worst case, which
    outlasts a relay restart or a provider's rate limit without sending a stale reminder."""

    max_attempts: int = 8
    base_ms: int = 2_000
    cap_ms: int = 15 * 60_000

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_ms < 0 or self.cap_ms < self.base_ms:
            raise ValueError("base_ms must not be negative nor above cap_ms")

    def next_step(
        self,
        attempt: int,
        error_is_permanent: bool,
        now_ms: int,
        rng: random.Random,
        not_before_ms: int = 0,
    ) -> NextStep:
        """After attempt number `attempt` (1 for the first try) failed. `not_before_ms` honours
        a server's Retry-After."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        if error_is_permanent:
            return DeadLetter("PERMANENT_ERROR")
        if attempt >= self.max_attempts:
            return DeadLetter("ATTEMPTS_EXHAUSTED")
        return Retry(max(now_ms + backoff_ms(attempt - 1, self.base_ms, self.cap_ms, rng), not_before_ms))


def smtp_reply_is_permanent(code: int) -> bool:
    """RFC 5321: 4yz is a transient failure (try again), 5yz a permanent one."""
    if 400 <= code <= 499:
        return False
    if 500 <= code <= 599:
        return True
    raise ValueError(f"SMTP reply {code} is not a failure")


_TRANSIENT_HTTP_4XX: Final = frozenset({408, 429})  # request timeout, too many requests


def http_status_is_permanent(status: int) -> bool:
    """408, 429 and 5xx are worth retrying; any other 4xx will fail the same way again."""
    if 500 <= status <= 599 or status in _TRANSIENT_HTTP_4XX:
        return False
    if 400 <= status <= 499:
        return True
    raise ValueError(f"HTTP status {status} is not a failure")
