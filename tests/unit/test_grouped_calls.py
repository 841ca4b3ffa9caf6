"""Group commit of calls to a batch RPC (services/common/grouped_calls.py): an idle call goes
alone at once, calls made while a group is in flight share the next one, each caller gets its own
result or error, and a caller giving up leaves the others alone."""

from __future__ import annotations

import asyncio

import pytest

from services.common.grouped_calls import GroupedCalls


class Recorder:
    """A batch call that answers each request `n` with `n * 10` (an error for negative ones), once
    `release` is set, and records the groups it was given."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.fail_with: Exception | None = None

    async def send(self, requests: list[int]) -> list[int | Exception]:
        self.groups.append(list(requests))
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        return [ValueError(f"bad {n}") if n < 0 else n * 10 for n in requests]


async def one_group_in_flight() -> tuple[Recorder, GroupedCalls[int, int], asyncio.Task[int]]:
    """A batch call held until `recorder.release` is set, carrying the group of call(1)."""
    recorder = Recorder()
    recorder.release.clear()
    calls: GroupedCalls[int, int] = GroupedCalls(recorder.send, max_group=8)
    first = asyncio.create_task(calls.call(1))
    await asyncio.sleep(0)
    return recorder, calls, first


async def test_an_idle_call_is_sent_at_once_alone() -> None:
    recorder = Recorder()
    calls = GroupedCalls(recorder.send, max_group=8)

    assert await calls.call(3) == 30
    assert recorder.groups == [[3]]


async def test_calls_made_while_a_group_is_in_flight_share_the_next_group() -> None:
    recorder, calls, first = await one_group_in_flight()
    later = [asyncio.create_task(calls.call(n)) for n in range(2, 7)]
    await asyncio.sleep(0)
    recorder.release.set()

    results = await asyncio.gather(first, *later)

    assert results == [10, 20, 30, 40, 50, 60]
    assert recorder.groups == [[1], [2, 3, 4, 5, 6]]
    assert calls.groups_sent == 2


async def test_groups_are_cut_at_max_group_and_at_most_max_in_flight_run_at_once() -> None:
    recorder = Recorder()
    recorder.release.clear()
    calls = GroupedCalls(recorder.send, max_group=3, max_in_flight=2)
    tasks = [asyncio.create_task(calls.call(n)) for n in range(1, 11)]
    for _ in range(3):  # the callers run, then the groups they started
        await asyncio.sleep(0)

    assert recorder.groups == [[1], [2]]  # two in flight; the other eight wait
    recorder.release.set()
    assert await asyncio.gather(*tasks) == [n * 10 for n in range(1, 11)]
    assert recorder.groups == [[1], [2], [3, 4, 5], [6, 7, 8], [9, 10]]


async def test_each_caller_gets_its_own_error() -> None:
    recorder, calls, first = await one_group_in_flight()
    good, bad = asyncio.create_task(calls.call(2)), asyncio.create_task(calls.call(-2))
    await asyncio.sleep(0)
    recorder.release.set()

    assert await first == 10
    assert await good == 20
    with pytest.raises(ValueError, match="bad -2"):
        await bad


async def test_a_failed_group_fails_each_of_its_callers_and_the_next_group_still_goes() -> None:
    recorder, calls, first = await one_group_in_flight()
    recorder.fail_with = ConnectionError("decision unreachable")
    doomed = [first, asyncio.create_task(calls.call(2))]
    await asyncio.sleep(0)
    recorder.release.set()

    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    recorder.fail_with = None

    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert await calls.call(4) == 40


async def test_a_caller_that_gives_up_leaves_the_others_their_results() -> None:
    recorder, calls, first = await one_group_in_flight()
    impatient, patient = asyncio.create_task(calls.call(2)), asyncio.create_task(calls.call(3))
    await asyncio.sleep(0)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(impatient, timeout=0.01)
    recorder.release.set()

    assert await first == 10
    assert await patient == 30


async def test_a_caller_that_gave_up_before_its_group_left_is_not_sent() -> None:
    recorder, calls, first = await one_group_in_flight()
    gone = asyncio.create_task(calls.call(2))
    kept = asyncio.create_task(calls.call(3))
    await asyncio.sleep(0)
    gone.cancel()
    recorder.release.set()

    assert (await first, await kept) == (10, 30)
    assert recorder.groups == [[1], [3]]


async def test_close_cancels_what_is_in_flight_and_waiting() -> None:
    _, calls, in_flight = await one_group_in_flight()
    waiting = asyncio.create_task(calls.call(2))
    await asyncio.sleep(0)

    await calls.close()

    for task in (in_flight, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task


def test_group_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupedCalls(Recorder().send, max_group=0)
