"""TLS and mTLS on real processes, with certificates made at test time (tests/certificates.py).
Identity and profile serve TLS only and profile reaches identity over TLS; plaintext clients and
clients trusting another CA are refused; health answers over TLS (grpc.health.v1 and
grpc-health-probe); messaging's and the console's peers use their CA settings; with a client CA,
identity admits only clients holding a certificate it signed, profile among them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rapport.common.v1 import event_pb2, identifier_pb2
from rapport.decision.v1 import decision_service_pb2 as decision_pb
from rapport.decision.v1 import decision_service_pb2_grpc as decision_grpc
from rapport.identity.v1 import identity_service_pb2 as identity_pb
from rapport.identity.v1 import identity_service_pb2_grpc as identity_grpc
from rapport.profile.v1 import profile_service_pb2 as profile_pb
from rapport.profile.v1 import profile_service_pb2_grpc as profile_grpc
from services.common.cassandra import CassandraClient
from services.common.channels import ClientCertificate
from services.common.identifiers import IdentifierKey, IdentifierType
from services.common.identity_client import IdentityClient
from services.console.peers import PeerError, RapportPeers
from services.console.settings import ConsoleSettings
from services.messaging.adapters.peers import ProfileTracker
from tests.certificates import KeyPair, ThrowawayAuthority
from tests.e2e.conftest import ServiceProcess, health_probe, start_service
from tests.support import ADMIN_KEY, REDIS_URL, bearer

pytestmark = pytest.mark.e2e

IDENTITY_SERVICE = "rapport.identity.v1.IdentityService"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Pki:
    authority: ThrowawayAuthority
    server: KeyPair
    client: KeyPair
    stranger: ThrowawayAuthority  # another CA, which signed nothing the services trust
    stranger_client: KeyPair

    @property
    def ca(self) -> str:
        return str(self.authority.ca_file)

    def server_env(self) -> dict[str, str]:
        return {"RAPPORT_TLS_CERT_FILE": str(self.server.cert_file), "RAPPORT_TLS_KEY_FILE": str(self.server.key_file)}

    def probe_flags(self, client: KeyPair | None = None) -> list[str]:
        flags = ["-tls", "-tls-ca-cert", self.ca]
        if client is not None:
            flags += ["-tls-client-cert", str(client.cert_file), "-tls-client-key", str(client.key_file)]
        return flags

    def credentials(
        self, authority: ThrowawayAuthority | None = None, client: KeyPair | None = None
    ) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=(authority or self.authority).ca_file.read_bytes(),
            private_key=client.key_file.read_bytes() if client else None,
            certificate_chain=client.cert_file.read_bytes() if client else None,
        )


@dataclass(frozen=True)
class TlsStack:
    identity: ServiceProcess
    profile: ServiceProcess


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    authority = ThrowawayAuthority.create(directory, "rapport")
    stranger = ThrowawayAuthority.create(directory, "stranger")
    return Pki(
        authority,
        authority.server_certificate(),
        authority.client_certificate(),
        stranger,
        stranger.client_certificate(),
    )


@pytest.fixture(scope="module")
def profile_keyspace(run_id: str, cassandra_admin: CassandraClient) -> str:
    keyspace = f"e2e_profile_{run_id}"
    cassandra_admin.created_keyspaces.append(keyspace)  # type: ignore[attr-defined]
    return keyspace


def start_stack(
    logs: Path,
    identity_keyspace: str,
    profile_keyspace: str,
    redis_prefix: str,
    identity_env: dict[str, str],
    profile_env: dict[str, str],
    identity_probe: Sequence[str],
    profile_probe: Sequence[str],
) -> Iterator[TlsStack]:
    """Identity, then profile calling it with the CA: each with its own extra settings."""
    prefix = {"RAPPORT_REDIS_PREFIX": redis_prefix}
    identity = start_service(
        "identity",
        logs,
        {"RAPPORT_CASSANDRA_KEYSPACE": identity_keyspace, **prefix, **identity_env},
        probe_tls=identity_probe,
    )
    try:
        # Profile's health follows its identity probe, so SERVING already says TLS to identity works.
        profile = start_service(
            "profile",
            logs,
            {
                "RAPPORT_CASSANDRA_KEYSPACE": profile_keyspace,
                "RAPPORT_IDENTITY_ADDRESS": identity.address,
                "RAPPORT_IDENTITY_API_KEY": ADMIN_KEY,
                **prefix,
                **profile_env,
            },
            probe_tls=profile_probe,
        )
    except BaseException:
        identity.terminate()
        raise
    yield TlsStack(identity, profile)
    profile.terminate()
    identity.terminate()


@pytest.fixture(scope="module")
def tls_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, e2e_keyspace: str, profile_keyspace: str, run_id: str
) -> Iterator[TlsStack]:
    """Identity and profile, both TLS only; profile calls identity over TLS with the CA."""
    yield from start_stack(
        tmp_path_factory.mktemp("tls-logs"),
        e2e_keyspace,
        profile_keyspace,
        f"e2e-tls:{run_id}:",
        identity_env=pki.server_env(),
        profile_env={"RAPPORT_IDENTITY_TLS_CA_FILE": pki.ca, **pki.server_env()},
        identity_probe=pki.probe_flags(),
        profile_probe=pki.probe_flags(),
    )


@pytest.fixture(scope="module")
def mtls_stack(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, e2e_keyspace: str, profile_keyspace: str, run_id: str
) -> Iterator[TlsStack]:
    """Identity requiring client certificates signed by the CA, and a profile presenting one."""
    yield from start_stack(
        tmp_path_factory.mktemp("mtls-logs"),
        e2e_keyspace,
        profile_keyspace,
        f"e2e-mtls:{run_id}:",
        identity_env={"RAPPORT_TLS_CLIENT_CA_FILE": pki.ca, **pki.server_env()},
        profile_env={
            "RAPPORT_IDENTITY_TLS_CA_FILE": pki.ca,
            "RAPPORT_PEER_TLS_CERT_FILE": str(pki.client.cert_file),
            "RAPPORT_PEER_TLS_KEY_FILE": str(pki.client.key_file),
        },
        identity_probe=pki.probe_flags(pki.client),
        profile_probe=(),
    )


def cookie(value: str) -> identifier_pb2.Identifier:
    return identifier_pb2.Identifier(type=identifier_pb2.IDENTIFIER_TYPE_COOKIE, value=value)


def resolve(channel: grpc.Channel, value: str) -> str:
    reply = identity_grpc.IdentityServiceStub(channel).Resolve(
        identity_pb.ResolveRequest(identifier=cookie(value)), metadata=bearer(ADMIN_KEY), timeout=10
    )
    person_id: str = reply.person_id
    return person_id


def refused_code(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as refused:
        resolve(channel, f"tls-refused-{uuid.uuid4().hex}")
    code: grpc.StatusCode = refused.value.code()  # type: ignore[attr-defined]
    return code


def product_view(identifier: identifier_pb2.Identifier) -> event_pb2.Event:
    at = Timestamp()
    at.FromMilliseconds(int(time.time() * 1000) - 1000)
    return event_pb2.Event(
        event_id=uuid.uuid4().hex,
        type=event_pb2.EVENT_TYPE_PRODUCT_VIEW,
        event_time=at,
        identifier=identifier,
        product=event_pb2.ProductRef(product_id="TLS-1", category_path=["Home", "Candles"]),
    )


def test_identity_answers_clients_trusting_its_ca_and_refuses_plaintext_and_other_cas(
    tls_stack: TlsStack, pki: Pki
) -> None:
    address = tls_stack.identity.address
    with grpc.secure_channel(address, pki.credentials()) as channel:
        person_id = resolve(channel, "tls-visitor")
        assert len(person_id) == 32
        assert resolve(channel, "tls-visitor") == person_id
    with grpc.insecure_channel(address) as plaintext:
        assert refused_code(plaintext) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(address, pki.credentials(pki.stranger)) as distrusting:
        assert refused_code(distrusting) == grpc.StatusCode.UNAVAILABLE


def test_health_answers_over_tls_to_grpc_health_v1_and_grpc_health_probe(tls_stack: TlsStack, pki: Pki) -> None:
    address = tls_stack.identity.address
    with grpc.secure_channel(address, pki.credentials()) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", IDENTITY_SERVICE):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == SERVING
    probed = health_probe(address, IDENTITY_SERVICE, tls=pki.probe_flags())
    assert probed.returncode == 0 and "status: SERVING" in probed.stdout + probed.stderr, probed.stderr
    assert health_probe(address).returncode != 0  # plaintext
    stranger = ["-tls", "-tls-ca-cert", str(pki.stranger.ca_file)]
    assert health_probe(address, tls=stranger).returncode != 0


def test_profile_tracks_through_identity_over_tls(tls_stack: TlsStack, pki: Pki) -> None:
    visitor = cookie(f"tls-track-{uuid.uuid4().hex}")
    with grpc.secure_channel(tls_stack.profile.address, pki.credentials()) as channel:
        profiles = profile_grpc.ProfileServiceStub(channel)
        tracked = profiles.Track(
            profile_pb.TrackRequest(event=product_view(visitor)), metadata=bearer(ADMIN_KEY), timeout=10
        )
        # GetProfile lists the person's identifiers as identity knows them: a second call to identity.
        shown = profiles.GetProfile(
            profile_pb.GetProfileRequest(person=profile_pb.PersonSelector(person_id=tracked.person_id)),
            metadata=bearer(ADMIN_KEY),
            timeout=10,
        )
    with grpc.secure_channel(tls_stack.identity.address, pki.credentials()) as channel:
        assert resolve(channel, visitor.value) == tracked.person_id
    assert visitor.value in [identifier.value for identifier in shown.identifiers]


def test_decision_resolves_and_rebuilds_through_identity_and_profile_over_tls(
    tls_stack: TlsStack, pki: Pki, tmp_path_factory: pytest.TempPathFactory, run_id: str
) -> None:
    """Decide by a new identifier (decision -> identity) and for a person whose live state is gone
    from Redis (decision -> profile GetProfile, which rebuilds it), both over TLS."""
    tracked_visitor = cookie(f"tls-decide-{uuid.uuid4().hex}")
    with grpc.secure_channel(tls_stack.profile.address, pki.credentials()) as channel:
        tracked = profile_grpc.ProfileServiceStub(channel).Track(
            profile_pb.TrackRequest(event=product_view(tracked_visitor)), metadata=bearer(ADMIN_KEY), timeout=10
        )
    prefix = f"e2e-tls:{run_id}:"
    redis_client = redis.Redis.from_url(REDIS_URL)
    try:
        assert redis_client.delete(f"{prefix}profile:state:{tracked.person_id}") == 1
    finally:
        redis_client.close()
    decision = start_service(
        "decision",
        tmp_path_factory.mktemp("tls-decision-logs"),
        {
            "RAPPORT_REDIS_PREFIX": prefix,
            "RAPPORT_IDENTITY_ADDRESS": tls_stack.identity.address,
            "RAPPORT_IDENTITY_API_KEY": ADMIN_KEY,
            "RAPPORT_IDENTITY_TLS_CA_FILE": pki.ca,
            "RAPPORT_PROFILE_ADDRESS": tls_stack.profile.address,
            "RAPPORT_PROFILE_API_KEY": ADMIN_KEY,
            "RAPPORT_PROFILE_TLS_CA_FILE": pki.ca,
            "RAPPORT_DECISION_SECRET": "e2e-tls-secret",
        },
    )
    try:
        with grpc.insecure_channel(decision.address) as channel:
            decisions = decision_grpc.DecisionServiceStub(channel)
            newcomer = decisions.Decide(
                decision_pb.DecideRequest(
                    identifier=cookie(f"tls-new-{uuid.uuid4().hex}"), placement=decision_pb.PLACEMENT_HOME, count=2
                ),
                metadata=bearer(ADMIN_KEY),
                timeout=5,
            )
            rebuilt = decisions.Decide(
                decision_pb.DecideRequest(person_id=tracked.person_id, placement=decision_pb.PLACEMENT_HOME, count=2),
                metadata=bearer(ADMIN_KEY),
                timeout=5,
            )
    finally:
        decision.terminate()
    assert len(newcomer.person_id) == 32 and not newcomer.degraded, newcomer.degraded_reasons
    assert not rebuilt.degraded, rebuilt.degraded_reasons
    assert rebuilt.situation == decision_pb.SITUATION_FIRST_VISIT  # the rebuilt state: one visit


async def test_messaging_and_console_peers_reach_tls_services_with_their_ca_settings(
    tls_stack: TlsStack, pki: Pki
) -> None:
    visitor = cookie(f"tls-peers-{uuid.uuid4().hex}")
    message_id = f"msg-{uuid.uuid4().hex}"
    tracker = ProfileTracker(tls_stack.profile.address, ADMIN_KEY, pki.ca)
    try:
        await tracker.track(visitor, event_pb2.EVENT_TYPE_EMAIL_CLICK, message_id, "https://shop.example/")
    finally:
        await tracker.close()

    settings = ConsoleSettings(
        identity_address=tls_stack.identity.address,
        identity_api_key=ADMIN_KEY,
        identity_tls_ca_file=pki.ca,
        profile_address=tls_stack.profile.address,
        profile_api_key=ADMIN_KEY,
        profile_tls_ca_file=pki.ca,
    )
    peers = RapportPeers(settings)
    try:
        person_id = await peers.lookup(IdentifierKey(IdentifierType.COOKIE, visitor.value))
        assert person_id is not None  # the click made the person, through profile and identity
        shown = await peers.profile(person_id, 10, "")
        assert [event.message_id for event in shown.timeline] == [message_id]
    finally:
        await peers.close()

    plaintext = RapportPeers(ConsoleSettings(identity_address=tls_stack.identity.address, identity_api_key=ADMIN_KEY))
    try:
        with pytest.raises(PeerError) as refused:
            await plaintext.lookup(IdentifierKey(IdentifierType.COOKIE, visitor.value))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await plaintext.close()


def test_mtls_admits_only_clients_with_a_certificate_signed_by_the_ca(mtls_stack: TlsStack, pki: Pki) -> None:
    address = mtls_stack.identity.address
    with grpc.secure_channel(address, pki.credentials(client=pki.client)) as channel:
        assert len(resolve(channel, "mtls-visitor")) == 32
    with grpc.secure_channel(address, pki.credentials()) as anonymous:
        assert refused_code(anonymous) == grpc.StatusCode.UNAVAILABLE
    with grpc.secure_channel(address, pki.credentials(client=pki.stranger_client)) as impostor:
        assert refused_code(impostor) == grpc.StatusCode.UNAVAILABLE
    assert health_probe(address, tls=pki.probe_flags(pki.client)).returncode == 0
    assert health_probe(address, tls=pki.probe_flags()).returncode != 0


async def test_mtls_peers_present_their_client_certificate(mtls_stack: TlsStack, pki: Pki) -> None:
    # Profile was started with RAPPORT_PEER_TLS_CERT_FILE: it is SERVING, so its identity probe got in.
    with grpc.secure_channel(mtls_stack.identity.address, pki.credentials(client=pki.client)) as channel:
        visitor = f"mtls-track-{uuid.uuid4().hex}"
        person_id = resolve(channel, visitor)
    with grpc.insecure_channel(mtls_stack.profile.address) as channel:
        tracked = profile_grpc.ProfileServiceStub(channel).Track(
            profile_pb.TrackRequest(event=product_view(cookie(visitor))), metadata=bearer(ADMIN_KEY), timeout=10
        )
    assert tracked.person_id == person_id

    certificate = ClientCertificate(str(pki.client.cert_file), str(pki.client.key_file))
    certified = IdentityClient(mtls_stack.identity.address, ADMIN_KEY, pki.ca, certificate)
    anonymous = IdentityClient(mtls_stack.identity.address, ADMIN_KEY, pki.ca)
    try:
        await certified.ping(5)
        found = await certified.resolve([IdentifierKey(IdentifierType.COOKIE, visitor)])
        assert [resolved.person_id for resolved in found.values()] == [person_id]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anonymous.ping(5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await certified.close()
        await anonymous.close()
