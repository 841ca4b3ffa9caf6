"""Identity service settings (on top of the shared ones)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import CommonSettings, setting


@dataclass(frozen=True)
class IdentitySettings(CommonSettings):
    service_name: str = setting("RAPPORT_SERVICE_NAME", "identity", "Name used in logs and metrics.")
    port: int = setting("RAPPORT_PORT", 50051, "gRPC port; 0 picks a free one (tests).")
    cassandra_keyspace: str = setting("RAPPORT_CASSANDRA_KEYSPACE", "rapport_identity", "Keyspace of identity.")
    max_customers_per_device: int = setting(
        "RAPPORT_IDENTITY_MAX_CUSTOMERS_PER_DEVICE",
        3,
        "A device seen with more customer ids than this is shared (family tablet, kiosk) and stops linking.",
    )
    lock_lease_s: int = setting(
        "RAPPORT_IDENTITY_LOCK_LEASE_S", 10, "Lease of a person lock taken while merging (expires if a replica dies)."
    )
    cache_ttl_s: int = setting("RAPPORT_IDENTITY_CACHE_TTL_S", 86400, "Lifetime of a cached identifier -> person.")
    near_cache_ttl_ms: int = setting(
        "RAPPORT_IDENTITY_NEAR_CACHE_TTL_MS",
        30_000,
        "Lifetime of an identifier -> person answer kept in a replica's memory (0 = off); merges, unlinks and "
        "erasures evict it at once through Redis pub/sub, and it is dropped while that channel is down.",
    )
    near_cache_entries: int = setting(
        "RAPPORT_IDENTITY_NEAR_CACHE_ENTRIES", 200_000, "Most identifiers kept in a replica's near cache."
    )
    last_seen_every_s: int = setting(
        "RAPPORT_IDENTITY_LAST_SEEN_EVERY_S", 60, "A person's last_seen is written at most this often."
    )
    outbox_interval_s: float = setting(
        "RAPPORT_IDENTITY_OUTBOX_INTERVAL_S", 5.0, "How often events left in the outbox are republished."
    )
