"""Group commit for calls to a batch RPC: calls made while a group is in flight go together in
the next one.

An idle caller is sent at once, with no window to wait for company; under load, the calls that
queue up behind the group in flight share the next call's fixed cost (for a gRPC call in Python,
about half a millisecond of CPU on each side). Used by messaging for the products of its
messages (DecisionService.DecideBatch).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

RequestT = TypeVar("RequestT")
ResultT = TypeVar("ResultT")

# What the batch call gives back for each request, in order: its result, or the error that is
# raised to that request's caller alone.
SendGroup = Callable[[list[RequestT]], Awaitable[Sequence[ResultT | Exception]]]


class GroupedCalls(Generic[RequestT, ResultT]):
    """`call` one request; `send` carries a whole group (at most `max_group`), at most
    `max_in_flight` groups at a time. A failed group fails each of its callers with the group's
    error; a caller that gives up (cancelled, timed out) leaves the others' calls untouched."""

    def __init__(self, send: SendGroup[RequestT, ResultT], max_group: int, max_in_flight: int = 1) -> None:
        if max_group < 1 or max_in_flight < 1:
            raise ValueError("max_group and max_in_flight must be at least 1")
        self._send = send
        self._max_group = max_group
        self._max_in_flight = max_in_flight
        self._waiting: list[tuple[RequestT, asyncio.Future[ResultT]]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self.groups_sent = 0

    async def call(self, request: RequestT) -> ResultT:
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if len(self._in_flight) < self._max_in_flight:
            self._start_group()
        return await future

    def _start_group(self) -> None:
        group = [(request, future) for request, future in self._waiting[: self._max_group] if not future.done()]
        del self._waiting[: self._max_group]
        if not group:
            return
        task = asyncio.create_task(self._run(group))
        self._in_flight.add(task)
        task.add_done_callback(self._group_done)
        self.groups_sent += 1

    def _group_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        while self._waiting and len(self._in_flight) < self._max_in_flight:
            self._start_group()

    async def _run(self, group: list[tuple[RequestT, asyncio.Future[ResultT]]]) -> None:
        try:
            results = await self._send([request for request, _ in group])
            if len(results) != len(group):
                raise RuntimeError(f"a group of {len(group)} calls got {len(results)} results")
        except Exception as error:
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException:  # cancelled (shutdown): so are the callers
            for _, future in group:
                future.cancel()
            raise
        for (_, future), result in zip(group, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def close(self) -> None:
        """Cancel the groups in flight and the calls waiting."""
        for _, future in self._waiting:
            future.cancel()
        self._waiting.clear()
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
