"""Composition root of the messaging service: settings -> adapters -> use cases -> loops -> gRPC."""

from __future__ import annotations

import asyncio
import secrets

import structlog

from rapport.messaging.v1 import messaging_service_pb2_grpc as pb_grpc
from services.common.channels import ClientCertificate
from services.common.identity_client import IdentityClient
from services.common.person_changes import PersonChange, PersonChangeFollower, PersonChangeStream
from services.common.redis import consumer_name
from services.common.server import ServiceRegistration, cancel_tasks, open_stores
from services.messaging.adapters.cassandra_store import SCHEMA_FILE, MessagingStore, move_consent_table
from services.messaging.adapters.channels import HttpSender, SmtpConfig, SmtpSender
from services.messaging.adapters.peers import DecisionClient, ProfileTracker
from services.messaging.adapters.redis_queue import MessagingQueue
from services.messaging.domain.retry import RetryPolicy
from services.messaging.domain.templates import Shop
from services.messaging.domain.tokens import MessageTokens
from services.messaging.messaging import Messaging, RuleCatalog
from services.messaging.metrics import DeliveryMetrics, QueueDepths
from services.messaging.sending import (
    AudienceSync,
    Dispatcher,
    PersonReader,
    Sender,
    SenderConfig,
    TriggerIntake,
    send_policy,
)
from services.messaging.server import ERROR_DOMAIN, METHOD_SCOPES, SERVICE_NAME, MessagingServicer
from services.messaging.settings import MessagingSettings
from services.messaging.tracking import TrackingEndpoint, start_tracking
from services.profile.reader import ProfileReader

log = structlog.get_logger("rapport.messaging")


async def build_messaging(settings: MessagingSettings) -> ServiceRegistration:
    # Throughput over latency on the send path: each event-loop turn's Redis commands leave in one write.
    cassandra, redis = await open_stores(settings, SCHEMA_FILE, coalesce_pipelined_writes=True)
    if settings.apply_schema:
        moved = await asyncio.to_thread(move_consent_table, cassandra)
        if moved:
            log.info("consent_table_moved", consents=moved)
    store = MessagingStore(cassandra)
    queue = MessagingQueue(redis)
    await queue.ensure_groups()
    secret = settings.secret.encode()
    if not secret:
        log.warning("random_messaging_secret", hint="set RAPPORT_MESSAGING_SECRET so links survive restarts")
        secret = secrets.token_bytes(32)
    tokens = MessageTokens(secret)
    rules = RuleCatalog(store)
    await rules.refresh(force=True)
    messaging = Messaging(store, queue, rules, tokens)
    certificate = ClientCertificate(settings.peer_tls_cert_file, settings.peer_tls_key_file)
    identity = IdentityClient(
        settings.identity_address, settings.identity_api_key, settings.identity_tls_ca_file, certificate
    )
    profiles = ProfileReader(
        redis, settings.profile_address, settings.profile_api_key, settings.profile_tls_ca_file, certificate
    )
    people = PersonReader(profiles)
    decision = DecisionClient(
        settings.decision_address, settings.decision_api_key, settings.decision_tls_ca_file, certificate
    )
    tracker = ProfileTracker(
        settings.profile_address, settings.profile_api_key, settings.profile_tls_ca_file, certificate
    )
    smtp = SmtpSender(
        SmtpConfig(
            settings.smtp_host,
            settings.smtp_port,
            settings.smtp_starttls,
            settings.smtp_username,
            settings.smtp_password,
            settings.smtp_connections,
        )
    )
    http = HttpSender()
    consumer = consumer_name()
    sender = Sender(
        queue,
        store,
        rules,
        people,
        decision,
        identity,
        smtp,
        http,
        tokens,
        SenderConfig(
            shop=Shop(settings.shop_name, settings.shop_url),
            public_url=settings.public_url,
            sender_address=settings.sender_address,
            push_url=settings.push_url,
            push_auth_token=settings.push_auth_token,
            default_language=settings.language,
            workers=settings.senders,
            claim_idle_ms=settings.claim_idle_ms,
            retry=RetryPolicy(settings.max_attempts, settings.retry_base_ms, settings.retry_cap_ms),
            policy=send_policy(settings.quiet_start, settings.quiet_end, settings.quiet_hours),
        ),
        consumer,
        metrics=DeliveryMetrics(),
    )
    tracking = TrackingEndpoint(messaging, tokens, identity, tracker)
    runner, http_port = await start_tracking(tracking, settings.host, settings.http_port)

    async def apply_person_change(change: PersonChange) -> None:
        # This replica's decoded copies of the persons' profiles go at once (the other replicas'
        # within seconds: services/profile/reader.py keeps none longer).
        profiles.forget(change.person_ids)
        await messaging.apply_person_change(change)

    # Erasures announced by profile; always followed, whatever else is switched off.
    person_changes = PersonChangeFollower(
        PersonChangeStream(redis), "messaging", consumer, apply_person_change, settings.claim_idle_ms
    )
    background = [
        asyncio.create_task(Dispatcher(queue).run(), name="messaging-dispatcher"),
        asyncio.create_task(sender.run(), name="messaging-sender"),
        asyncio.create_task(person_changes.run(), name="messaging-person-changes"),
    ]
    if settings.follow_events:
        intake = TriggerIntake(queue, messaging, rules, people, consumer)
        background.append(asyncio.create_task(intake.run(settings.claim_idle_ms), name="messaging-intake"))
    if settings.audience_url:
        sync = AudienceSync(queue, http, settings.audience_url, settings.audience_batch)
        background.append(asyncio.create_task(sync.run(), name="messaging-audience-sync"))
    log.info("tracking_endpoint", port=http_port, public_url=settings.public_url)

    async def close() -> None:
        await cancel_tasks(background)
        await runner.cleanup()
        await smtp.close()
        await http.close()
        for client in (identity, profiles, decision, tracker):
            await client.close()
        await store.close()
        await redis.close()
        await cassandra.close()

    return ServiceRegistration(
        full_name=SERVICE_NAME,
        add_to_server=lambda server: pb_grpc.add_MessagingServiceServicer_to_server(
            MessagingServicer(messaging, identity), server
        ),
        method_scopes=METHOD_SCOPES,
        error_domain=ERROR_DOMAIN,
        probes=[redis, cassandra],
        on_close=[close],
        http_ports={"tracking": http_port},
        collectors=[sender.metrics, QueueDepths(queue, asyncio.get_running_loop())],
    )
