"""Composition root of the decision service: settings -> Redis, peers, models -> use cases -> gRPC.

Health follows the event loop only, not Redis: without Redis, Decide still answers from the
models in memory (degraded=true), so taking the replica out of rotation would serve nobody.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from redis.exceptions import RedisError

from rapport.decision.v1 import decision_service_pb2_grpc as pb_grpc
from services.common.channels import ClientCertificate
from services.common.identity_client import IdentityClient
from services.common.person_changes import PersonChangeFollower, PersonChangeStream
from services.common.redis import RedisClient, consumer_name
from services.common.server import ServiceRegistration, cancel_tasks
from services.decision.adapters.redis_store import DecisionStore
from services.decision.catalog_admin import CatalogAdmin
from services.decision.configuration import ConfigurationAdmin
from services.decision.decisions import Decider, DecisionConfig, DecisionRules
from services.decision.domain.catalog import Catalog
from services.decision.domain.decision_ids import DecisionIds
from services.decision.domain.next_item import NextItemRecommender, NextItemSettings
from services.decision.domain.recommenders import AffinityPicks, CoPurchase, NewArrivals, Similar, Trending
from services.decision.domain.situations import SituationRules
from services.decision.domain.strategies import Recommenders
from services.decision.learning import Learner, Models
from services.decision.metrics import DecisionMetrics
from services.decision.person_changes import CONSUMER_GROUP, PersonChanges
from services.decision.server import ERROR_DOMAIN, METHOD_SCOPES, SERVICE_NAME, DecisionServicer
from services.decision.settings import DecisionSettings
from services.profile.reader import ProfileReader

log = structlog.get_logger("rapport.decision")
MINUTE_MS = 60_000
DAY_MS = 86_400_000
DECISION_WRITES_EVERY_S = 0.2


async def keep_writing_decisions(store: DecisionStore) -> None:
    """Writes the decisions Decide queued, a few times a second: one round trip for all of them
    instead of one per Decide."""
    while True:
        await asyncio.sleep(DECISION_WRITES_EVERY_S)
        await store.write_behind()


async def build_decision(settings: DecisionSettings) -> ServiceRegistration:
    redis = RedisClient(settings.redis_url, settings.redis_prefix)
    store = DecisionStore(redis)
    certificate = ClientCertificate(settings.peer_tls_cert_file, settings.peer_tls_key_file)
    identity = IdentityClient(
        settings.identity_address, settings.identity_api_key, settings.identity_tls_ca_file, certificate
    )
    reader = ProfileReader(
        redis, settings.profile_address, settings.profile_api_key, settings.profile_tls_ca_file, certificate
    )
    catalog = Catalog()
    trending = Trending(catalog, half_life_ms=int(settings.trending_half_life_hours * 3_600_000))
    models = Models(
        catalog=catalog,
        next_item=NextItemRecommender(NextItemSettings(session_timeout=settings.session_timeout_min * 60)),
        trending=trending,
        co_purchase=CoPurchase(catalog),
        similar=Similar(catalog),
    )
    recommenders = Recommenders(
        catalog=catalog,
        next_item=models.next_item,
        trending=trending,
        co_purchase=models.co_purchase,
        similar=models.similar,
        new_arrivals=NewArrivals(catalog),
        affinity=AffinityPicks(catalog, trending),
    )
    secret = settings.decision_secret.encode()
    if not secret:
        log.warning("random_decision_secret", hint="set RAPPORT_DECISION_SECRET so replicas accept each other's ids")
        secret = secrets.token_bytes(32)
    decider = Decider(
        store,
        reader,
        identity,
        recommenders,
        DecisionIds(secret),
        DecisionRules(
            situations=SituationRules(
                recent_buyer_days=settings.recent_buyer_days, loyal_min_orders=settings.loyal_min_orders
            ),
            half_life_ms=int(settings.affinity_half_life_days * DAY_MS),
            cart_abandoned_after_ms=int(settings.cart_abandoned_after_min * MINUTE_MS),
            per_category_cap=settings.per_category_cap,
            consumables_again=settings.recommend_consumables_again,
            default_language=settings.language,
        ),
        DecisionConfig(),
        DecisionMetrics(),
    )
    configuration = ConfigurationAdmin(store, decider)
    learner = Learner(
        store,
        models,
        session_timeout_ms=int(settings.session_timeout_min * MINUTE_MS),
        on_config_change=configuration.reload,
        replay_stream=settings.replay_stream_on_start,
    )
    try:
        await learner.load()
        loaded = True
    except RedisError as error:  # start anyway: Decide answers degraded, learning retries
        log.warning("start_without_redis", error=type(error).__name__)
        loaded = False
    person_changes = PersonChangeFollower(
        PersonChangeStream(redis), CONSUMER_GROUP, consumer_name(), PersonChanges(store, reader).apply
    )
    background = [
        asyncio.create_task(learner.run(loaded), name="decision-learning"),
        asyncio.create_task(keep_writing_decisions(store), name="decision-history"),
        asyncio.create_task(person_changes.run(), name="decision-person-changes"),
    ]

    async def close() -> None:
        await cancel_tasks(background)
        await store.write_behind()
        await reader.close()
        await identity.close()
        await redis.close()

    servicer = DecisionServicer(decider, CatalogAdmin(store, catalog), configuration, store)
    return ServiceRegistration(
        full_name=SERVICE_NAME,
        add_to_server=lambda server: pb_grpc.add_DecisionServiceServicer_to_server(servicer, server),
        method_scopes=METHOD_SCOPES,
        error_domain=ERROR_DOMAIN,
        probes=[],
        on_close=[close],
        collectors=[decider.metrics, redis.metrics],
    )
