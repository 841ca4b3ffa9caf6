"""Profiles as other services (decision, messaging) read them: straight from the live state
profile keeps in Redis (one hop on the hot path), and through profile's GetProfile RPC when
Redis has no state for the person, which makes profile rebuild it from Cassandra."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterable

import orjson

from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common import tracing
from services.common.channels import NO_CLIENT_CERTIFICATE, ClientCertificate, PeerClient
from services.common.redis import RedisClient
from services.profile.adapters.redis_state import EncodedState, RedisProfileState
from services.profile.domain.state import ProfileState
from services.profile.live import LiveProfile, RecentPriceDistributions, complete_live_profile

# A person profile has nothing for (a first visit) is not asked about again for this long.
EMPTY_MEMORY_S = 10.0
EMPTY_MEMORY_MAX = 100_000
# A profile read again unchanged is not decoded again for this long (its price bands and RFM
# ranks, which move with the whole shop, are at most this old), among this many persons. Each
# profile's reuse ends at a random point of the last DECODED_REUSE_SPREAD of that time: profiles
# first decoded together (a replica's start, a burst of traffic) are not all decoded again in the
# same instant five seconds later, a spike every reader's requests would wait behind.
DECODED_REUSE_S = 5.0
DECODED_REUSE_SPREAD = 0.4
DECODED_MAX = 20_000
_GET_PROFILE = f"{profile_pb.DESCRIPTOR.services_by_name['ProfileService'].full_name}/GetProfile"


class ProfileReader(PeerClient):
    stub_class = profile_grpc.ProfileServiceStub
    _stub: profile_grpc.ProfileServiceStub

    def __init__(
        self,
        redis: RedisClient,
        profile_address: str,
        api_key: str,
        tls_ca_file: str = "",
        certificate: ClientCertificate = NO_CLIENT_CERTIFICATE,
    ) -> None:
        # The TTL only matters to writers; readers never write a state.
        self._live = RedisProfileState(redis, state_ttl_s=0)
        self._prices = RecentPriceDistributions(self._live)
        super().__init__(profile_address, api_key, tls_ca_file, certificate)
        self._empty_until: dict[str, float] = {}
        # person -> (the state as stored, until when it is reused, the profile decoded from it)
        self._decoded: dict[str, tuple[EncodedState, float, LiveProfile]] = {}
        self._random = random.Random()
        self._pruning: asyncio.TimerHandle | None = None

    async def read(self, person_id: str) -> LiveProfile | None:
        """The live profile, or None when Redis holds no state for the person.

        A storefront asks for several placements of one page, and a person's state changes only
        with their own events: a state read again as it was (the same stored text) within
        DECODED_REUSE_S returns the profile decoded the last time, the very same object, which
        callers may key their own derived facts on. Callers must not modify it."""
        stored = await self._live.load_encoded(person_id)
        if stored is None:
            return None
        now = time.monotonic()
        known = self._decoded.get(person_id)
        if known is not None and known[0] == stored and now < known[1]:
            return known[2]
        state = ProfileState.from_dict(orjson.loads(stored.data))
        attributes = orjson.loads(stored.attributes) if stored.attributes else {}
        live = await complete_live_profile(self._live, state, attributes, self._prices)
        if len(self._decoded) >= DECODED_MAX:
            self._drop_stale_decoded()
            if len(self._decoded) >= DECODED_MAX:
                self._decoded.clear()
        reuse_s = DECODED_REUSE_S * (1.0 - DECODED_REUSE_SPREAD * self._random.random())
        self._decoded[person_id] = (stored, now + reuse_s, live)
        if self._pruning is None:
            self._pruning = asyncio.get_running_loop().call_later(DECODED_REUSE_S, self._prune_on_time)
        return live

    def _drop_stale_decoded(self) -> None:
        now = time.monotonic()
        self._decoded = {person: entry for person, entry in self._decoded.items() if now < entry[1]}

    def _prune_on_time(self) -> None:
        """Runs every DECODED_REUSE_S while any profile is kept, busy or idle: nobody's profile
        stays in memory more than about twice that after it was decoded."""
        self._drop_stale_decoded()
        self._pruning = (
            asyncio.get_running_loop().call_later(DECODED_REUSE_S, self._prune_on_time) if self._decoded else None
        )

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            self._pruning = None
        self._decoded.clear()
        await super().close()

    @property
    def profiles_kept(self) -> int:
        """How many persons' decoded profiles this reader holds in memory now."""
        return len(self._decoded)

    def forget(self, person_ids: Iterable[str]) -> None:
        """Drops what is kept of the persons' profiles (GDPR erasure, merges)."""
        for person_id in person_ids:
            self._decoded.pop(person_id, None)
            self._empty_until.pop(person_id, None)

    def known_empty(self, person_id: str) -> bool:
        until = self._empty_until.get(person_id)
        return until is not None and until > time.monotonic()

    async def rebuild(self, person_id: str, timeout_s: float) -> None:
        """Has profile rebuild the person's live state (from Cassandra) into Redis."""
        with tracing.outgoing(_GET_PROFILE, self._metadata) as metadata:
            await self._stub.GetProfile(
                profile_pb.GetProfileRequest(
                    person=profile_pb.PersonSelector(person_id=person_id), timeline_page_size=0
                ),
                metadata=metadata,
                timeout=timeout_s,
            )

    def remember_empty(self, person_id: str) -> None:
        if len(self._empty_until) >= EMPTY_MEMORY_MAX:
            now = time.monotonic()
            self._empty_until = {person: until for person, until in self._empty_until.items() if until > now}
            if len(self._empty_until) >= EMPTY_MEMORY_MAX:
                self._empty_until.clear()
        self._empty_until[person_id] = time.monotonic() + EMPTY_MEMORY_S
