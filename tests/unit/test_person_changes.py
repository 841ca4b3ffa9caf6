"""Person changes (erasures, merges) as profile announces them and a consuming service applies
them: the entry format, and the follower's rule of acknowledging an entry only once applied."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from services.common.person_changes import (
    PersonChange,
    PersonChangeFollower,
    PersonChangeKind,
    PersonChangeStream,
    StreamEntry,
    change_fields,
    change_from_fields,
)


def test_an_erasure_and_a_merge_read_back_from_their_entries() -> None:
    erasure = PersonChange.forget(["p2", "p1", "p2"])
    assert erasure == PersonChange(PersonChangeKind.FORGET, ("p1", "p2"))
    assert change_from_fields(change_fields(erasure)) == erasure
    merge = PersonChange.merge("survivor", ["loser"])
    assert change_fields(merge) == {"kind": "merge", "persons": '["loser"]', "survivor": "survivor"}
    assert change_from_fields(change_fields(merge)) == merge


@pytest.mark.parametrize(
    "fields",
    [
        None,  # a pending entry deleted since
        {},
        {"kind": "rename", "persons": '["p1"]'},  # a kind added later
        {"kind": "forget", "persons": "not json"},
        {"kind": "forget", "persons": '{"p1": 1}'},
        {"kind": "forget", "persons": "[]"},
        {"kind": "forget", "persons": '["p1", 7]'},
        {"kind": "merge", "persons": '["p1"]'},  # a merge without its survivor
        {"e": '{"person": "p1", "type": "PAGE_VIEW"}'},  # a profile event, not a change
    ],
)
def test_an_entry_without_a_change_this_code_can_apply_is_none(fields: Mapping[str, str] | None) -> None:
    assert change_from_fields(fields) is None


class FakeStream:
    def __init__(self) -> None:
        self.acknowledged: list[str] = []

    async def ack(self, group: str, entry_id: str) -> None:
        self.acknowledged.append(entry_id)


def follower(stream: FakeStream, applied: list[PersonChange], fail_on: str = "") -> PersonChangeFollower:
    async def apply(change: PersonChange) -> None:
        if fail_on in change.person_ids:
            raise ConnectionError("Cassandra is away")
        applied.append(change)

    return PersonChangeFollower(stream, "messaging", "consumer-1", apply)  # type: ignore[arg-type]


async def test_entries_are_applied_in_order_and_each_acknowledged_once_applied() -> None:
    stream, applied = FakeStream(), list[PersonChange]()
    entries: list[StreamEntry] = [
        ("1-0", change_fields(PersonChange.forget(["p1"]))),
        ("2-0", {"kind": "rename", "persons": '["p9"]'}),  # skipped, acknowledged: never retried
        ("3-0", change_fields(PersonChange.merge("p3", ["p4"]))),
    ]
    assert await follower(stream, applied).handle(entries) == 2
    assert applied == [PersonChange.forget(["p1"]), PersonChange.merge("p3", ["p4"])]
    assert stream.acknowledged == ["1-0", "2-0", "3-0"]


async def test_a_change_that_fails_stays_unacknowledged_with_those_after_it() -> None:
    stream, applied = FakeStream(), list[PersonChange]()
    entries: list[StreamEntry] = [
        ("1-0", change_fields(PersonChange.forget(["p1"]))),
        ("2-0", change_fields(PersonChange.forget(["p2"]))),
        ("3-0", change_fields(PersonChange.forget(["p3"]))),
    ]
    with pytest.raises(ConnectionError):
        await follower(stream, applied, fail_on="p2").handle(entries)
    assert stream.acknowledged == ["1-0"]  # 2-0 and 3-0 are delivered again
    assert applied == [PersonChange.forget(["p1"])]


def test_the_stream_lives_under_the_service_prefix() -> None:
    class Client:
        prefix = "rapport:"
        redis = None

    assert PersonChangeStream(Client()).key == "rapport:profile:person-changes"  # type: ignore[arg-type]
