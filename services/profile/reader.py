"""Profiles as other services (decision, messaging) read them: straight from the live state
profile keeps in Redis (one hop on the hot path), and through profile's GetProfile RPC when
Redis has no state for the person, which makes profile rebuild it from Cassandra."""

from __future__ import annotations

import time

from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common import tracing
from services.common.channels import NO_CLIENT_CERTIFICATE, ClientCertificate, PeerClient
from services.common.redis import RedisClient
from services.profile.adapters.redis_state import RedisProfileState
from services.profile.domain.state import ProfileState
from services.profile.live import LiveProfile, RecentPriceDistributions, complete_live_profile

# A person profile has nothing for (a first visit) is not asked about again for this long.
EMPTY_MEMORY_S = 10.0
EMPTY_MEMORY_MAX = 100_000
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

    async def read(self, person_id: str) -> LiveProfile | None:
        """The live profile, or None when Redis holds no state for the person."""
        stored = (await self._live.load([person_id]))[person_id]
        if stored.data is None:
            return None
        state = ProfileState.from_dict(stored.data)
        return await complete_live_profile(self._live, state, stored.attributes or {}, self._prices)

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
