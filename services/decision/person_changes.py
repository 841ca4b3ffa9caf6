"""What decision does when profile announces a person change (services/common/person_changes.py):
an erasure deletes the persons' latest decisions, a merge moves them to the survivor, so that
`ListDecisions` of the survivor shows them."""

from __future__ import annotations

from services.common.person_changes import PersonChange, PersonChangeKind
from services.decision.adapters.redis_store import DecisionStore
from services.profile.reader import ProfileReader

CONSUMER_GROUP = "decision"


class PersonChanges:
    def __init__(self, store: DecisionStore, reader: ProfileReader) -> None:
        self._store = store
        self._reader = reader

    async def apply(self, change: PersonChange) -> None:
        # This replica's copies of the persons' profiles go at once (the other replicas' within
        # seconds: services/profile/reader.py keeps none longer).
        self._reader.forget(change.person_ids)
        if change.kind is PersonChangeKind.FORGET:
            await self._store.forget_decisions(change.person_ids)
        elif change.kind is PersonChangeKind.MERGE:
            await self._store.move_decisions(change.survivor_person_id, change.person_ids)
