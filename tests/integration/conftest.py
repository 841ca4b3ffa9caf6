"""In-process identity, profile and decision servers against the real Redis and Cassandra, one keyspace per run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.identity.v1 import identity_service_pb2_grpc as pb_grpc
from rapport.messaging.v1 import messaging_service_pb2_grpc as messaging_grpc
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common.cassandra import CassandraClient
from services.common.server import RunningServer, create_server
from services.common.settings import load_settings
from services.decision.bootstrap import build_decision
from services.decision.settings import DecisionSettings
from services.identity.bootstrap import build_identity
from services.identity.settings import IdentitySettings
from services.messaging.bootstrap import build_messaging
from services.messaging.settings import MessagingSettings
from services.profile.bootstrap import build_profile
from services.profile.settings import ProfileSettings
from tests.support import ADMIN_KEY, API_KEYS, CASSANDRA_HOST, CASSANDRA_PORT, REDIS_URL, SmtpReceiver, bearer


@dataclass
class IdentityHarness:
    running: RunningServer
    settings: IdentitySettings
    channel: grpc.aio.Channel
    stub: pb_grpc.IdentityServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    async def call(self, method: str, request: Any, key: str = ADMIN_KEY, timeout: float = 10.0) -> Any:
        return await getattr(self.stub, method)(request, metadata=bearer(key), timeout=timeout)


def identity_settings(run_id: str, **overrides: Any) -> IdentitySettings:
    values: dict[str, Any] = dict(
        port=0,
        metrics_port=0,
        api_keys=API_KEYS,
        cassandra_keyspace=f"it_identity_{run_id}",
        cassandra_hosts=CASSANDRA_HOST,
        cassandra_port=CASSANDRA_PORT,
        redis_url=REDIS_URL,
        redis_prefix=f"test:{run_id}:",
        health_interval_s=0.2,
        outbox_interval_s=3600.0,
    )
    values.update(overrides)
    return load_settings(IdentitySettings, {}, **values)


@asynccontextmanager
async def running_identity(settings: IdentitySettings) -> AsyncIterator[IdentityHarness]:
    running = await create_server(settings, await build_identity(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield IdentityHarness(running, settings, channel, pb_grpc.IdentityServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(0.5)


@pytest.fixture(scope="session")
async def identity(cassandra_admin: CassandraClient, run_id: str) -> AsyncIterator[IdentityHarness]:
    settings = identity_settings(run_id)
    cassandra_admin.created_keyspaces.append(settings.cassandra_keyspace)  # type: ignore[attr-defined]
    async with running_identity(settings) as harness:
        yield harness


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Identifier values no other test uses."""
    import uuid

    return lambda label: f"{label}-{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------- profile
@dataclass
class ProfileHarness:
    running: RunningServer
    settings: ProfileSettings
    channel: grpc.aio.Channel
    stub: profile_grpc.ProfileServiceStub
    identity: IdentityHarness

    async def call(self, method: str, request: Any, key: str = ADMIN_KEY, timeout: float = 15.0) -> Any:
        return await getattr(self.stub, method)(request, metadata=bearer(key), timeout=timeout)


def profile_settings(run_id: str, identity_address: str, **overrides: Any) -> ProfileSettings:
    # Profile (and decision, which reads profile's keys) live under their own root: the profile
    # follows identity's merges while identity's tests check that erasure leaves no key behind.
    values: dict[str, Any] = dict(
        port=0,
        metrics_port=0,
        api_keys=API_KEYS,
        cassandra_keyspace=f"it_profile_{run_id}",
        cassandra_hosts=CASSANDRA_HOST,
        cassandra_port=CASSANDRA_PORT,
        redis_url=REDIS_URL,
        redis_prefix=f"test-profile:{run_id}:",
        health_interval_s=0.2,
        identity_address=identity_address,
        identity_api_key=ADMIN_KEY,
        default_deadline_ms=10_000.0,
    )
    values.update(overrides)
    return load_settings(ProfileSettings, {}, **values)


@asynccontextmanager
async def running_profile(settings: ProfileSettings, identity: IdentityHarness) -> AsyncIterator[ProfileHarness]:
    running = await create_server(settings, await build_profile(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield ProfileHarness(running, settings, channel, profile_grpc.ProfileServiceStub(channel), identity)
    finally:
        await channel.close()
        await running.stop(0.5)


@pytest.fixture(scope="session")
async def profile(
    identity: IdentityHarness, cassandra_admin: CassandraClient, run_id: str
) -> AsyncIterator[ProfileHarness]:
    settings = profile_settings(run_id, identity.address)
    cassandra_admin.created_keyspaces.append(settings.cassandra_keyspace)  # type: ignore[attr-defined]
    async with running_profile(settings, identity) as harness:
        yield harness


# ---------------------------------------------------------------------------------- decision
@dataclass
class DecisionHarness:
    running: RunningServer
    settings: DecisionSettings
    channel: grpc.aio.Channel
    stub: decision_grpc.DecisionServiceStub

    async def call(self, method: str, request: Any, key: str = ADMIN_KEY, timeout: float = 5.0) -> Any:
        return await getattr(self.stub, method)(request, metadata=bearer(key), timeout=timeout)


def decision_settings(run_id: str, identity_address: str, profile_address: str, **overrides: Any) -> DecisionSettings:
    values: dict[str, Any] = dict(
        port=0,
        metrics_port=0,
        api_keys=API_KEYS,
        redis_url=REDIS_URL,
        redis_prefix=f"test-profile:{run_id}:",
        health_interval_s=0.2,
        identity_address=identity_address,
        identity_api_key=ADMIN_KEY,
        profile_address=profile_address,
        profile_api_key=ADMIN_KEY,
        decision_secret="test-secret-" + run_id,
    )
    values.update(overrides)
    return load_settings(DecisionSettings, {}, **values)


@asynccontextmanager
async def running_decision(settings: DecisionSettings) -> AsyncIterator[DecisionHarness]:
    running = await create_server(settings, await build_decision(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield DecisionHarness(running, settings, channel, decision_grpc.DecisionServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(0.5)


@pytest.fixture(scope="session")
async def decision(profile: ProfileHarness, identity: IdentityHarness, run_id: str) -> AsyncIterator[DecisionHarness]:
    address = f"127.0.0.1:{profile.running.port}"
    async with running_decision(decision_settings(run_id, identity.address, address)) as harness:
        yield harness


# ---------------------------------------------------------------------------------- messaging
@dataclass
class MessagingHarness:
    running: RunningServer
    settings: MessagingSettings
    channel: grpc.aio.Channel
    stub: messaging_grpc.MessagingServiceStub

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.running.registration.http_ports['tracking']}"

    async def call(self, method: str, request: Any, key: str = ADMIN_KEY, timeout: float = 10.0) -> Any:
        return await getattr(self.stub, method)(request, metadata=bearer(key), timeout=timeout)


def messaging_settings(
    run_id: str, identity: str, profile: str, decision: str, smtp_port: int, **overrides: Any
) -> MessagingSettings:
    values: dict[str, Any] = dict(
        port=0,
        metrics_port=0,
        http_port=0,
        api_keys=API_KEYS,
        cassandra_keyspace=f"it_messaging_{run_id}",
        cassandra_hosts=CASSANDRA_HOST,
        cassandra_port=CASSANDRA_PORT,
        redis_url=REDIS_URL,
        redis_prefix=f"test-profile:{run_id}:",  # reads profile's live state and event stream
        health_interval_s=0.2,
        identity_address=identity,
        identity_api_key=ADMIN_KEY,
        profile_address=profile,
        profile_api_key=ADMIN_KEY,
        decision_address=decision,
        decision_api_key=ADMIN_KEY,
        secret="test-messaging-secret-" + run_id,
        smtp_port=smtp_port,
        quiet_hours=False,
        claim_idle_ms=2000,
        retry_base_ms=500,
        retry_cap_ms=3000,
        max_attempts=40,
        public_url="https://track.test",
    )
    values.update(overrides)
    return load_settings(MessagingSettings, {}, **values)


@asynccontextmanager
async def running_messaging(settings: MessagingSettings) -> AsyncIterator[MessagingHarness]:
    running = await create_server(settings, await build_messaging(settings))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield MessagingHarness(running, settings, channel, messaging_grpc.MessagingServiceStub(channel))
    finally:
        await channel.close()
        await running.stop(0.5)


@pytest.fixture(scope="module")
def smtp() -> Any:
    """A real SMTP server (aiosmtpd) for a module's messaging tests."""
    receiver = SmtpReceiver().start()
    yield receiver
    receiver.stop()
