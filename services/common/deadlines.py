"""The request budget: every downstream call (gRPC, Redis, Cassandra) gets what remains of it.

Python gRPC does not propagate deadlines, so the interceptor stores the absolute deadline of the
current request in a context variable and adapters read `remaining_s()`.
"""

from __future__ import annotations

import contextvars
import time

from services.common.errors import DeadlineExceeded

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("rapport_deadline", default=None)

# Used outside any request (start-up, background tasks).
BACKGROUND_BUDGET_S = 10.0


def set_deadline(budget_s: float) -> contextvars.Token[float | None]:
    return _deadline.set(time.monotonic() + budget_s)


def reset_deadline(token: contextvars.Token[float | None]) -> None:
    _deadline.reset(token)


def detach() -> None:
    """From here on the current task works outside any request budget: past a commit point, work
    must finish even when the caller has given up. Call it only in a task of its own (its context
    is a copy, so the request's handler keeps its deadline)."""
    _deadline.set(None)


def remaining_s(floor_s: float = 0.0) -> float:
    """Seconds left in the current request; raises DeadlineExceeded when none are left."""
    deadline = _deadline.get()
    if deadline is None:
        return BACKGROUND_BUDGET_S
    left = deadline - time.monotonic()
    if left <= floor_s:
        raise DeadlineExceeded()
    return left


def request_budget_s(caller_remaining_s: float | None, default_s: float, max_s: float) -> float:
    """The budget granted to a request: the caller's deadline, else the default, capped."""
    if caller_remaining_s is None:
        return default_s
    return min(caller_remaining_s, max_s)
