"""Shared bootstrap pieces: settings, API keys, AIP-193 statuses, request budgets."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from services.common import deadlines
from services.common.auth import ApiKeyRegistry, require_scope
from services.common.channels import ClientCertificate, peer_channel
from services.common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    to_rpc_status,
)
from services.common.settings import SettingsError, describe_settings, load_settings
from services.identity.settings import IdentitySettings


def test_settings_read_typed_values_and_keep_defaults() -> None:
    settings = load_settings(IdentitySettings, {"RAPPORT_PORT": "6000", "RAPPORT_ACCESS_LOG": "yes"})
    assert settings.port == 6000
    assert settings.access_log is True
    assert settings.max_customers_per_device == 3


def test_bad_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="RAPPORT_PORT"):
        load_settings(IdentitySettings, {"RAPPORT_PORT": "fifty"})


def test_every_setting_is_documented() -> None:
    rows = describe_settings(IdentitySettings)
    assert len({env for env, _, _ in rows}) == len(rows)
    assert all(doc for _, _, doc in rows)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"RAPPORT_TLS_CERT_FILE": "server.pem"}, "RAPPORT_TLS_KEY_FILE"),
        # A client CA without a server certificate would mean plaintext for everyone, not mTLS.
        ({"RAPPORT_TLS_CLIENT_CA_FILE": "clients-ca.pem"}, "RAPPORT_TLS_CERT_FILE"),
        ({"RAPPORT_TLS_KEY_FILE": "server.key"}, "RAPPORT_TLS_CERT_FILE"),
    ],
)
def test_incomplete_tls_settings_stop_the_start(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        load_settings(IdentitySettings, environ)


def test_a_client_certificate_needs_its_key() -> None:
    with pytest.raises(SettingsError, match="RAPPORT_PEER_TLS_KEY_FILE"):
        ClientCertificate("client.pem", "")
    with pytest.raises(SettingsError, match="RAPPORT_PEER_TLS_CERT_FILE"):
        ClientCertificate("", "client.key")


async def test_a_peer_without_a_ca_is_reached_in_plaintext_whatever_the_certificate() -> None:
    # A certificate is only presented over TLS: its files are not even read for a plaintext peer.
    channel = peer_channel("127.0.0.1:1", "", ClientCertificate("missing.pem", "missing.key"))
    await channel.close()
    with pytest.raises(FileNotFoundError):
        peer_channel("127.0.0.1:1", "missing-ca.pem")


def test_api_keys_carry_scopes() -> None:
    registry = ApiKeyRegistry.parse("shop:0123456789abcdef:identity.resolve;ops:fedcba9876543210fe:*")
    shop = registry.authenticate("Bearer 0123456789abcdef")
    assert shop.name == "shop"
    require_scope(shop, "identity.resolve", "/x")
    with pytest.raises(PermissionDenied):
        require_scope(shop, "identity.admin", "/x")
    require_scope(registry.authenticate("bearer fedcba9876543210fe"), "identity.admin", "/x")


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "Bearer wrong-key-wrong-key"])
def test_missing_or_wrong_keys_are_unauthenticated(header: str | None) -> None:
    registry = ApiKeyRegistry.parse("shop:0123456789abcdef:*")
    with pytest.raises(Unauthenticated):
        registry.authenticate(header)


def test_short_secrets_are_refused_at_start_up() -> None:
    with pytest.raises(ValueError, match="16"):
        ApiKeyRegistry.parse("shop:short:*")


def test_invalid_argument_becomes_bad_request_with_field_violations() -> None:
    error = InvalidArgument([FieldViolation("identifiers[2].value", "must not be empty")])
    status = to_rpc_status(error, "rapport.identity", "req-1")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    status.details[0].Unpack(info)
    status.details[1].Unpack(bad)
    assert (info.reason, info.domain, info.metadata["request_id"]) == ("INVALID_ARGUMENT", "rapport.identity", "req-1")
    assert bad.field_violations[0].field == "identifiers[2].value"


def test_failed_precondition_carries_its_reason() -> None:
    status = to_rpc_status(FailedPrecondition("no", "CONFLICTING_CUSTOMER_IDS"), "rapport.identity", "r")
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert info.reason == "CONFLICTING_CUSTOMER_IDS"


def test_budget_defaults_and_caps() -> None:
    assert deadlines.request_budget_s(None, 2.0, 30.0) == 2.0
    assert deadlines.request_budget_s(0.05, 2.0, 30.0) == 0.05
    assert deadlines.request_budget_s(3600.0, 2.0, 30.0) == 30.0


def test_remaining_budget_runs_out() -> None:
    token = deadlines.set_deadline(-0.001)
    try:
        with pytest.raises(DeadlineExceeded):
            deadlines.remaining_s()
    finally:
        deadlines.reset_deadline(token)
    assert deadlines.remaining_s() == deadlines.BACKGROUND_BUDGET_S
