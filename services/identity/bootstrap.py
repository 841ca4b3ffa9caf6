"""Composition root of the identity service: settings -> adapters -> graph -> gRPC registration."""

from __future__ import annotations

import asyncio

import structlog

from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc
from services.common.server import ServiceRegistration, cancel_tasks, open_stores
from services.identity.adapters.cassandra_store import SCHEMA_FILE, CassandraIdentityStore
from services.identity.adapters.near_cache import NearCache
from services.identity.adapters.redis_cache import RedisIdentityCache
from services.identity.graph import IdentityGraph, IdentityRules
from services.identity.server import METHOD_SCOPES, SERVICE_NAME, IdentityServicer
from services.identity.settings import IdentitySettings

log = structlog.get_logger("rapport.identity")


async def build_identity(settings: IdentitySettings) -> ServiceRegistration:
    cassandra, redis = await open_stores(settings, SCHEMA_FILE)
    graph = IdentityGraph(
        CassandraIdentityStore(cassandra),
        RedisIdentityCache(redis, settings.cache_ttl_s, settings.last_seen_every_s),
        IdentityRules(max_customers_per_device=settings.max_customers_per_device, lock_lease_s=settings.lock_lease_s),
        NearCache(settings.near_cache_ttl_ms / 1000, settings.near_cache_entries),
    )
    background = [
        asyncio.create_task(_relay_outbox_forever(graph, settings), name="identity-outbox-relay"),
        asyncio.create_task(graph.keep_near_cache_coherent(), name="identity-near-cache"),
    ]

    async def close() -> None:
        await cancel_tasks(background)
        await graph.drain()
        await redis.close()
        await cassandra.close()

    return ServiceRegistration(
        full_name=SERVICE_NAME,
        add_to_server=lambda server: pb_grpc.add_IdentityServiceServicer_to_server(IdentityServicer(graph), server),
        method_scopes=METHOD_SCOPES,
        error_domain="rapport.identity",
        probes=[redis, cassandra],
        on_close=[close],
    )


async def _relay_outbox_forever(graph: IdentityGraph, settings: IdentitySettings) -> None:
    # Only events older than a lock lease: younger ones may belong to a merge still in progress.
    older_than_ms = (settings.lock_lease_s + 5) * 1000
    while True:
        await asyncio.sleep(settings.outbox_interval_s)
        try:
            handled = await graph.relay_outbox(older_than_ms)
            if handled:
                log.warning("outbox_relayed", events=handled)
        except Exception:
            log.warning("outbox_relay_failed", exc_info=True)
