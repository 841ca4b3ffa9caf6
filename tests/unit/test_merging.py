"""Merge rules: deterministic survivor, customer-id conflicts, shared devices."""

from __future__ import annotations

import itertools

import pytest

from services.common.errors import FailedPrecondition
from services.common.identifiers import IdentifierKey, IdentifierType
from services.identity.domain.merging import PersonSnapshot, choose_survivor, ensure_single_customer, is_shared_device

ANON_OLD = PersonSnapshot("a" * 32, 1_000, frozenset())
ANON_NEW = PersonSnapshot("b" * 32, 2_000, frozenset())
CUSTOMER_NEW = PersonSnapshot("c" * 32, 3_000, frozenset({"42"}))


def test_the_customer_holder_survives_even_if_younger() -> None:
    assert choose_survivor([ANON_OLD, CUSTOMER_NEW, ANON_NEW]) == CUSTOMER_NEW


def test_without_customer_the_oldest_survives() -> None:
    assert choose_survivor([ANON_NEW, ANON_OLD]) == ANON_OLD


def test_ties_break_on_the_person_id_in_any_order() -> None:
    twins = [PersonSnapshot(pid * 32, 5, frozenset()) for pid in "fed"]
    assert {choose_survivor(list(order)).person_id for order in itertools.permutations(twins)} == {"d" * 32}


def test_two_customer_ids_are_refused() -> None:
    other_customer = PersonSnapshot("d" * 32, 10, frozenset({"77"}))
    with pytest.raises(FailedPrecondition) as raised:
        ensure_single_customer([CUSTOMER_NEW, other_customer], [])
    assert raised.value.reason == "CONFLICTING_CUSTOMER_IDS"


def test_a_customer_id_in_the_request_conflicts_with_the_persons() -> None:
    with pytest.raises(FailedPrecondition):
        ensure_single_customer([CUSTOMER_NEW], [IdentifierKey(IdentifierType.CUSTOMER_ID, "77")])


def test_the_same_customer_id_twice_is_fine() -> None:
    ensure_single_customer([CUSTOMER_NEW, ANON_OLD], [IdentifierKey(IdentifierType.CUSTOMER_ID, "42")])


def test_a_device_becomes_shared_past_the_limit() -> None:
    assert not is_shared_device(3, 3)
    assert is_shared_device(4, 3)
