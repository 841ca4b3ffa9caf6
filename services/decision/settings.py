"""Decision service settings (on top of the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import CommonSettings, PeerCertificateSettings, setting


@dataclass(frozen=True)
class DecisionSettings(CommonSettings, PeerCertificateSettings):
    service_name: str = setting("RAPPORT_SERVICE_NAME", "decision", "Name used in logs and metrics.")
    port: int = setting("RAPPORT_PORT", 50053, "gRPC port; 0 picks a free one (tests).")
    gc_young_objects: int = setting(
        "RAPPORT_GC_YOUNG_OBJECTS",
        2_000,
        "Objects the garbage collector lets pile up before a young-generation pass: small, so that "
        "each pass (about 0.6 µs per object) stays far inside a Decide's budget.",
    )
    default_deadline_ms: float = setting(
        "RAPPORT_DEFAULT_DEADLINE_MS", 50.0, "Budget of a Decide that arrives without a deadline."
    )
    identity_address: str = setting(
        "RAPPORT_IDENTITY_ADDRESS", "127.0.0.1:50051", "host:port of the identity service (resolves identifiers)."
    )
    identity_api_key: str = setting(
        "RAPPORT_IDENTITY_API_KEY", "", "Key decision presents to identity (scope identity.resolve)."
    )
    identity_tls_ca_file: str = setting(
        "RAPPORT_IDENTITY_TLS_CA_FILE", "", "PEM CA of identity's certificate; empty = plaintext to identity."
    )
    profile_address: str = setting(
        "RAPPORT_PROFILE_ADDRESS", "127.0.0.1:50052", "host:port of the profile service (rebuilds missing profiles)."
    )
    profile_api_key: str = setting(
        "RAPPORT_PROFILE_API_KEY", "", "Key decision presents to profile (scope profile.read)."
    )
    profile_tls_ca_file: str = setting(
        "RAPPORT_PROFILE_TLS_CA_FILE", "", "PEM CA of profile's certificate; empty = plaintext to profile."
    )
    language: str = setting("RAPPORT_DECISION_LANGUAGE", "en", "Default language of messages: en or fr.")
    decision_secret: str = setting(
        "RAPPORT_DECISION_SECRET",
        "",
        "Key signing decision ids (shared by every replica); empty = a random key per process (dev only).",
    )
    recent_buyer_days: float = setting(
        "RAPPORT_DECISION_RECENT_BUYER_DAYS", 30.0, "A purchase this recent makes a RECENT_BUYER."
    )
    loyal_min_orders: int = setting(
        "RAPPORT_DECISION_LOYAL_MIN_ORDERS", 3, "Orders making a LOYAL_CUSTOMER (so does a loyalty card or VIP tier)."
    )
    recommend_consumables_again: bool = setting(
        "RAPPORT_DECISION_CONSUMABLES_AGAIN", True, "Purchased products marked consumable may be recommended again."
    )
    per_category_cap: int = setting(
        "RAPPORT_DECISION_PER_CATEGORY_CAP", 4, "At most this many items of one leaf category in an answer."
    )
    session_timeout_min: float = setting(
        "RAPPORT_PROFILE_SESSION_TIMEOUT_MIN", 30.0, "A visit ends after this many minutes without activity."
    )
    affinity_half_life_days: float = setting(
        "RAPPORT_PROFILE_AFFINITY_HALF_LIFE_DAYS", 14.0, "Affinities halve every this many days (as in profile)."
    )
    cart_abandoned_after_min: float = setting(
        "RAPPORT_PROFILE_CART_ABANDONED_AFTER_MIN", 60.0, "A non-empty cart untouched this long is abandoned."
    )
    trending_half_life_hours: float = setting(
        "RAPPORT_DECISION_TRENDING_HALF_LIFE_HOURS", 24.0, "Popularity halves every this many hours."
    )
    replay_stream_on_start: bool = setting(
        "RAPPORT_DECISION_REPLAY_ON_START",
        True,
        "At start-up, learn from the whole profile event stream Redis retains (else only new events).",
    )
