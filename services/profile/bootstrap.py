"""Composition root of the profile service: settings -> adapters -> Profiles -> gRPC registration."""

from __future__ import annotations

import asyncio

from rapport.profile.v1 import profile_service_pb2_grpc as pb_grpc
from services.common.channels import ClientCertificate
from services.common.identity_client import IdentityClient
from services.common.person_changes import PersonChangeStream
from services.common.server import ServiceRegistration, cancel_tasks, open_stores
from services.profile.adapters.cassandra_log import SCHEMA_FILE, CassandraProfileStore
from services.profile.adapters.redis_state import RedisProfileState
from services.profile.domain.folding import DAY_MS, MINUTE_MS, FoldRules
from services.profile.profiles import ProfileRules, Profiles
from services.profile.server import ERROR_DOMAIN, METHOD_SCOPES, SERVICE_NAME, ProfileServicer
from services.profile.settings import ProfileSettings


async def build_profile(settings: ProfileSettings) -> ServiceRegistration:
    cassandra, redis = await open_stores(settings, SCHEMA_FILE)
    identity = IdentityClient(
        settings.identity_address,
        settings.identity_api_key,
        settings.identity_tls_ca_file,
        ClientCertificate(settings.peer_tls_cert_file, settings.peer_tls_key_file),
    )
    rules = ProfileRules(
        fold=FoldRules(
            session_timeout_ms=int(settings.session_timeout_min * MINUTE_MS),
            affinity_half_life_ms=int(settings.affinity_half_life_days * DAY_MS),
        ),
        cart_abandoned_after_ms=int(settings.cart_abandoned_after_min * MINUTE_MS),
        language=settings.language,
    )
    profiles = Profiles(
        CassandraProfileStore(cassandra, settings.write_concurrency, settings.write_group_rows),
        RedisProfileState(redis, settings.state_ttl_days * 86_400),
        identity,
        rules,
        PersonChangeStream(redis),
    )
    background = (
        [asyncio.create_task(profiles.follow_identity(), name="profile-identity-merges")]
        if settings.watch_identity
        else []
    )

    async def close() -> None:
        await cancel_tasks(background)
        await identity.close()
        await redis.close()
        await cassandra.close()

    servicer = ProfileServicer(
        profiles,
        max_future_ms=int(settings.max_future_skew_s * 1000),
        max_age_ms=settings.max_event_age_days * DAY_MS,
    )
    return ServiceRegistration(
        full_name=SERVICE_NAME,
        add_to_server=lambda server: pb_grpc.add_ProfileServiceServicer_to_server(servicer, server),
        method_scopes=METHOD_SCOPES,
        error_domain=ERROR_DOMAIN,
        probes=[redis, cassandra, identity],
        on_close=[close],
    )
