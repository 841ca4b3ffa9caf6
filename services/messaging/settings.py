"""Messaging service settings (on top of the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import CommonSettings, PeerCertificateSettings, setting


@dataclass(frozen=True)
class MessagingSettings(CommonSettings, PeerCertificateSettings):
    service_name: str = setting("RAPPORT_SERVICE_NAME", "messaging", "Name used in logs and metrics.")
    port: int = setting("RAPPORT_PORT", 50054, "gRPC port; 0 picks a free one (tests).")
    cassandra_keyspace: str = setting("RAPPORT_CASSANDRA_KEYSPACE", "rapport_messaging", "Keyspace of messaging.")
    identity_address: str = setting(
        "RAPPORT_IDENTITY_ADDRESS", "127.0.0.1:50051", "host:port of the identity service (resolves identifiers)."
    )
    identity_api_key: str = setting(
        "RAPPORT_IDENTITY_API_KEY", "", "Key messaging presents to identity (scopes identity.resolve, identity.link)."
    )
    identity_tls_ca_file: str = setting(
        "RAPPORT_IDENTITY_TLS_CA_FILE", "", "PEM CA of identity's certificate; empty = plaintext to identity."
    )
    profile_address: str = setting(
        "RAPPORT_PROFILE_ADDRESS", "127.0.0.1:50052", "host:port of the profile service (opens and clicks go there)."
    )
    profile_api_key: str = setting(
        "RAPPORT_PROFILE_API_KEY", "", "Key messaging presents to profile (scopes profile.track, profile.read)."
    )
    profile_tls_ca_file: str = setting(
        "RAPPORT_PROFILE_TLS_CA_FILE", "", "PEM CA of profile's certificate; empty = plaintext to profile."
    )
    decision_address: str = setting(
        "RAPPORT_DECISION_ADDRESS", "127.0.0.1:50053", "host:port of the decision service (products of a message)."
    )
    decision_api_key: str = setting(
        "RAPPORT_DECISION_API_KEY", "", "Key messaging presents to decision (scope decision.decide)."
    )
    decision_tls_ca_file: str = setting(
        "RAPPORT_DECISION_TLS_CA_FILE", "", "PEM CA of decision's certificate; empty = plaintext to decision."
    )
    secret: str = setting(
        "RAPPORT_MESSAGING_SECRET",
        "",
        "Key signing unsubscribe and tracking links (shared by every replica); empty = random per process (dev).",
    )
    public_url: str = setting(
        "RAPPORT_MESSAGING_PUBLIC_URL",
        "http://127.0.0.1:8054",
        "Base URL of the tracking endpoint as recipients reach it (links and pixel in emails).",
    )
    http_port: int = setting(
        "RAPPORT_MESSAGING_HTTP_PORT", 8054, "Port of the tracking endpoint (pixel, clicks, unsubscribe); 0 = free."
    )
    shop_url: str = setting("RAPPORT_SHOP_URL", "https://shop.example", "The shop's site; product links start here.")
    shop_name: str = setting("RAPPORT_SHOP_NAME", "Rapport Demo Shop", "Shop name shown in messages.")
    smtp_host: str = setting("RAPPORT_SMTP_HOST", "127.0.0.1", "SMTP server.")
    smtp_port: int = setting("RAPPORT_SMTP_PORT", 2525, "SMTP port.")
    smtp_starttls: bool = setting("RAPPORT_SMTP_STARTTLS", False, "Upgrade SMTP connections with STARTTLS.")
    smtp_username: str = setting("RAPPORT_SMTP_USERNAME", "", "SMTP AUTH user; empty = no authentication.")
    smtp_password: str = setting("RAPPORT_SMTP_PASSWORD", "", "SMTP AUTH password.")
    smtp_connections: int = setting("RAPPORT_SMTP_CONNECTIONS", 8, "Persistent SMTP connections per replica.")
    sender_address: str = setting("RAPPORT_MESSAGING_FROM", "shop@rapport.example", "From: address of emails.")
    push_url: str = setting(
        "RAPPORT_PUSH_URL", "", "Push endpoint (FCM HTTP v1 shaped JSON is POSTed); empty = push disabled."
    )
    push_auth_token: str = setting("RAPPORT_PUSH_AUTH_TOKEN", "", "Bearer token sent to the push endpoint.")
    audience_url: str = setting(
        "RAPPORT_AUDIENCE_URL", "", "Retargeting audience sync endpoint; empty = members kept for CSV export only."
    )
    audience_batch: int = setting("RAPPORT_AUDIENCE_BATCH", 500, "Members per audience sync request.")
    senders: int = setting(
        "RAPPORT_MESSAGING_SENDERS",
        64,
        "Concurrent sends per replica: enough for the sends' grouped statements and DecideBatch calls to fill.",
    )
    max_attempts: int = setting("RAPPORT_MESSAGING_MAX_ATTEMPTS", 8, "Attempts before a delivery is dead-lettered.")
    retry_base_ms: int = setting("RAPPORT_MESSAGING_RETRY_BASE_MS", 1000, "First retry delay (doubles, jittered).")
    retry_cap_ms: int = setting("RAPPORT_MESSAGING_RETRY_CAP_MS", 300_000, "Longest retry delay.")
    claim_idle_ms: int = setting(
        "RAPPORT_MESSAGING_CLAIM_IDLE_MS",
        30_000,
        "A queued send a crashed replica held this long is taken over by another (or by its restart).",
    )
    quiet_start: str = setting("RAPPORT_MESSAGING_QUIET_START", "21:00", "Quiet hours start, recipient's local time.")
    quiet_end: str = setting("RAPPORT_MESSAGING_QUIET_END", "08:00", "Quiet hours end, recipient's local time.")
    quiet_hours: bool = setting("RAPPORT_MESSAGING_QUIET_HOURS", True, "Hold email and push during quiet hours.")
    language: str = setting("RAPPORT_MESSAGING_LANGUAGE", "en", "Language when a person has none: en or fr.")
    follow_events: bool = setting(
        "RAPPORT_MESSAGING_FOLLOW_EVENTS", True, "Fire triggers from the profile event stream."
    )
