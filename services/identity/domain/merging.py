"""Merge rules: who survives, which links are refused, which devices are shared."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from services.common.errors import FailedPrecondition
from services.common.identifiers import IdentifierKey, IdentifierType

DEFAULT_MAX_CUSTOMERS_PER_DEVICE = 3


@dataclass(frozen=True)
class PersonSnapshot:
    """What the merge rules need to know of a person."""

    person_id: str
    created_at_ms: int
    customer_ids: frozenset[str]


def survivor_rank(person: PersonSnapshot) -> tuple[int, int, str]:
    """Smaller is stronger: a holder of a CUSTOMER_ID, then the oldest, then the smaller id.

    A total order, so every replica picks the same survivor for the same group.
    """
    return (0 if person.customer_ids else 1, person.created_at_ms, person.person_id)


def choose_survivor(persons: Sequence[PersonSnapshot]) -> PersonSnapshot:
    if not persons:
        raise ValueError("no persons to choose from")
    return min(persons, key=survivor_rank)


def customer_ids_of(identifiers: Iterable[IdentifierKey]) -> set[str]:
    return {identifier.value for identifier in identifiers if identifier.type is IdentifierType.CUSTOMER_ID}


def ensure_single_customer(persons: Sequence[PersonSnapshot], linked: Iterable[IdentifierKey]) -> None:
    """A person never holds two different CUSTOMER_IDs: refuse the whole link otherwise."""
    customers = customer_ids_of(linked)
    for person in persons:
        customers |= person.customer_ids
    if len(customers) > 1:
        raise FailedPrecondition(
            "these identifiers belong to different customer accounts; nothing was merged",
            "CONFLICTING_CUSTOMER_IDS",
            {"customer_count": str(len(customers))},
        )


def is_shared_device(customers_seen: int, max_customers_per_device: int) -> bool:
    """A device seen with more customer ids than the limit (family tablet, kiosk) stops linking."""
    return customers_seen > max_customers_per_device
