"""Profile service settings (on top of the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import CommonSettings, PeerCertificateSettings, setting


@dataclass(frozen=True)
class ProfileSettings(CommonSettings, PeerCertificateSettings):
    service_name: str = setting("RAPPORT_SERVICE_NAME", "profile", "Name used in logs and metrics.")
    port: int = setting("RAPPORT_PORT", 50052, "gRPC port; 0 picks a free one (tests).")
    cassandra_keyspace: str = setting("RAPPORT_CASSANDRA_KEYSPACE", "rapport_profile", "Keyspace of profile.")
    identity_address: str = setting(
        "RAPPORT_IDENTITY_ADDRESS", "127.0.0.1:50051", "host:port of the identity service (resolves identifiers)."
    )
    identity_api_key: str = setting(
        "RAPPORT_IDENTITY_API_KEY",
        "",
        "Key profile presents to identity (scopes identity.resolve, identity.admin).",
    )
    identity_tls_ca_file: str = setting(
        "RAPPORT_IDENTITY_TLS_CA_FILE", "", "PEM CA of identity's certificate; empty = plaintext to identity."
    )
    session_timeout_min: float = setting(
        "RAPPORT_PROFILE_SESSION_TIMEOUT_MIN", 30.0, "A new visit starts after this many minutes without activity."
    )
    affinity_half_life_days: float = setting(
        "RAPPORT_PROFILE_AFFINITY_HALF_LIFE_DAYS", 14.0, "Affinities halve every this many days."
    )
    cart_abandoned_after_min: float = setting(
        "RAPPORT_PROFILE_CART_ABANDONED_AFTER_MIN", 60.0, "A non-empty cart untouched this long is abandoned."
    )
    language: str = setting("RAPPORT_PROFILE_LANGUAGE", "en", "Default language of Describe: en or fr.")
    max_future_skew_s: float = setting(
        "RAPPORT_PROFILE_MAX_FUTURE_SKEW_S", 300.0, "Events dated further in the future than this are rejected."
    )
    max_event_age_days: int = setting(
        "RAPPORT_PROFILE_MAX_EVENT_AGE_DAYS",
        10_000,
        "Events older than this are rejected (a broken device clock); replays of years-old data still fit.",
    )
    state_ttl_days: int = setting(
        "RAPPORT_PROFILE_STATE_TTL_DAYS", 30, "Live state unused this long leaves Redis (rebuilt from Cassandra)."
    )
    watch_identity: bool = setting(
        "RAPPORT_PROFILE_WATCH_IDENTITY", True, "Follow identity's merge events and absorb merged persons."
    )
    write_group_rows: int = setting(
        "RAPPORT_PROFILE_WRITE_GROUP_ROWS",
        16,
        "Log rows sent to Cassandra in one unlogged batch (1 = one token-aware request per row).",
    )
    write_concurrency: int = setting(
        "RAPPORT_PROFILE_WRITE_CONCURRENCY", 64, "Cassandra writes in flight per TrackBatch."
    )
