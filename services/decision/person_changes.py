"""What decision does when profile announces a person change (services/common/person_changes.py):
an erasure deletes the persons' latest decisions, a merge moves them to the survivor, so that
`ListDecisions` of the survivor shows them."""

from __future__ import annotations

from services.common.person_changes import PersonChange, PersonChangeKind
from services.decision.adapters.redis_store import DecisionStore

CONSUMER_GROUP = "decision"


class PersonChanges:
    def __init__(self, store: DecisionStore) -> None:
        self._store = store

    async def apply(self, change: PersonChange) -> None:
        if change.kind is PersonChangeKind.FORGET:
            await self._store.forget_decisions(change.person_ids)
        elif change.kind is PersonChangeKind.MERGE:
            await self._store.move_decisions(change.survivor_person_id, change.person_ids)
