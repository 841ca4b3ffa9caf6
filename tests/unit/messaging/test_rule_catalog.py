"""The rules in force: stored edits overlaid on the defaults, read again once stale, and read
once (not once per send in flight) when many sends find them stale together."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import cast

import pytest

from services.messaging import messaging
from services.messaging.adapters.cassandra_store import MessagingStore, StoredRule
from services.messaging.domain.triggers import TriggerKind
from services.messaging.messaging import RuleCatalog


class SlowRuleStore:
    """The rules table, answering after a pause as Cassandra does, counting its reads."""

    def __init__(self, rules: list[StoredRule]) -> None:
        self.stored = rules
        self.reads = 0

    async def rules(self) -> list[StoredRule]:
        self.reads += 1
        await asyncio.sleep(0.01)
        return list(self.stored)

    async def save_rule(self, rule: StoredRule) -> None:
        self.stored = [rule]


def catalog(store: SlowRuleStore) -> RuleCatalog:
    return RuleCatalog(cast(MessagingStore, store))


async def test_sends_that_find_the_rules_stale_together_read_them_once() -> None:
    store = SlowRuleStore([StoredRule("WELCOME", False, 0, ())])
    rules = catalog(store)
    books = await asyncio.gather(*(rules.refresh() for _ in range(64)))
    assert store.reads == 1
    assert all(not book[TriggerKind.WELCOME].enabled for book in books)


async def test_stale_rules_are_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = SlowRuleStore([])
    rules = catalog(store)
    await rules.refresh()
    await rules.refresh()
    assert store.reads == 1
    monkeypatch.setattr(messaging, "RULES_REFRESH_S", -1.0)
    store.stored = [StoredRule("WIN_BACK", True, 5, ("EMAIL",))]
    assert (await rules.refresh())[TriggerKind.WIN_BACK].delay_ms == 5
    assert store.reads == 2


async def test_an_edit_is_in_force_at_once_even_while_a_read_is_running() -> None:
    store = SlowRuleStore([])
    rules = catalog(store)
    reading = asyncio.create_task(rules.refresh())
    await asyncio.sleep(0)  # the read has started, with the rules as they were
    edited = rules.book[TriggerKind.WELCOME]
    updated = await rules.update(replace(edited, enabled=False))
    await reading
    assert not updated.enabled and not rules.book[TriggerKind.WELCOME].enabled
    assert store.reads == 2
