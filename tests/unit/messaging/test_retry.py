"""Retries: full-jitter backoff bounds, the retry/dead-letter decision, and which SMTP replies
and HTTP statuses are worth retrying."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.messaging.domain.retry import (
    DeadLetter,
    Retry,
    RetryPolicy,
    backoff_ms,
    http_status_is_permanent,
    smtp_reply_is_permanent,
)

NOW = 1_700_000_000_000


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 200),
    base_ms=st.integers(0, 60_000),
    cap_ms=st.integers(0, 3_600_000),
    seed=st.integers(0, 2**32),
)
def test_backoff_stays_within_zero_and_the_exponential_ceiling(
    attempt: int, base_ms: int, cap_ms: int, seed: int
) -> None:
    delay = backoff_ms(attempt, base_ms, cap_ms, random.Random(seed))
    assert 0 <= delay <= min(cap_ms, base_ms * 2**attempt)


def test_backoff_grows_exponentially_until_the_cap() -> None:
    class Highest(random.Random):
        def randint(self, a: int, b: int) -> int:
            return b

    highest = Highest()
    assert [backoff_ms(n, 100, 1_000, highest) for n in range(6)] == [100, 200, 400, 800, 1_000, 1_000]


def test_backoff_is_jittered_over_the_whole_range() -> None:
    rng = random.Random(7)
    delays = {backoff_ms(3, 1_000, 60_000, rng) for _ in range(200)}
    assert min(delays) < 1_000 and max(delays) > 7_000  # ceiling 8 000: full jitter, not +/- a bit


def test_backoff_refuses_negative_inputs() -> None:
    with pytest.raises(ValueError):
        backoff_ms(-1, 100, 1_000, random.Random(1))


def test_a_transient_failure_is_retried_later_within_the_ceiling() -> None:
    policy = RetryPolicy(max_attempts=5, base_ms=1_000, cap_ms=60_000)
    step = policy.next_step(3, error_is_permanent=False, now_ms=NOW, rng=random.Random(3))
    assert isinstance(step, Retry)
    assert NOW <= step.at_ms <= NOW + 4_000  # third failure: second retry, ceiling 1 000 * 2**2


def test_retry_after_is_honoured() -> None:
    policy = RetryPolicy(base_ms=10, cap_ms=10)
    step = policy.next_step(1, False, NOW, random.Random(1), not_before_ms=NOW + 30_000)
    assert step == Retry(NOW + 30_000)


def test_a_permanent_failure_goes_to_the_dead_letters_at_once() -> None:
    assert RetryPolicy().next_step(1, True, NOW, random.Random(1)) == DeadLetter("PERMANENT_ERROR")


def test_the_last_attempt_goes_to_the_dead_letters() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert isinstance(policy.next_step(2, False, NOW, random.Random(1)), Retry)
    assert policy.next_step(3, False, NOW, random.Random(1)) == DeadLetter("ATTEMPTS_EXHAUSTED")


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_ms": -1}, {"base_ms": 1_000, "cap_ms": 10}])
def test_a_policy_that_cannot_work_is_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="from 1"):
        RetryPolicy().next_step(0, False, NOW, random.Random(1))


@pytest.mark.parametrize(("code", "permanent"), [(421, False), (450, False), (451, False), (550, True), (554, True)])
def test_smtp_4xx_is_transient_and_5xx_permanent(code: int, permanent: bool) -> None:
    assert smtp_reply_is_permanent(code) is permanent


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(408, False), (429, False), (500, False), (502, False), (503, False), (400, True), (401, True), (404, True)],
)
def test_http_408_429_and_5xx_are_transient_other_4xx_permanent(status: int, permanent: bool) -> None:
    assert http_status_is_permanent(status) is permanent


@pytest.mark.parametrize("code", [250, 354, 200, 302, 600])
def test_a_success_is_not_classified_as_a_failure(code: int) -> None:
    with pytest.raises(ValueError, match="not a failure"):
        smtp_reply_is_permanent(code)
    with pytest.raises(ValueError, match="not a failure"):
        http_status_is_permanent(code)
