"""A delivery: one message to one person on one channel for one trigger instance."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from enum import Enum


class DeliveryStatus(Enum):
    SCHEDULED = "SCHEDULED"
    SENDING = "SENDING"
    SENT = "SENT"
    SKIPPED = "SKIPPED"
    DEAD = "DEAD"
    CANCELLED = "CANCELLED"

    @property
    def final(self) -> bool:
        return self in (DeliveryStatus.SENT, DeliveryStatus.SKIPPED, DeliveryStatus.DEAD, DeliveryStatus.CANCELLED)


@dataclass(frozen=True)
class Delivery:
    delivery_id: str
    person_id: str
    kind: str  # TriggerKind name
    channel: str  # Channel name
    status: DeliveryStatus
    idempotency_key: str
    created_at_ms: int
    due_at_ms: int
    attempts: int = 0
    reason: str = ""
    last_error: str = ""
    sent_at_ms: int = 0
    trigger_data: str = "{}"  # JSON facts of the trigger (product, order id, …)
    product_ids: tuple[str, ...] = field(default=())

    def with_status(self, status: DeliveryStatus, **changes: object) -> Delivery:
        return replace(self, status=status, **changes)  # type: ignore[arg-type]


def delivery_id_for(idempotency_key: str, channel: str) -> str:
    """Deterministic: a trigger instance fired again names the same deliveries."""
    digest = hashlib.blake2b(f"{idempotency_key}|{channel}".encode(), digest_size=12).hexdigest()
    return f"d_{digest}"
