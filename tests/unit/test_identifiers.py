"""Identifier validation and normalisation: raw PII never survives parsing."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.identifiers import IdentifierKey, IdentifierType, parse_identifier


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_raw_email_is_normalised_then_hashed() -> None:
    parsed = parse_identifier(IdentifierType.EMAIL_SHA256, "  Jane.Doe@Example.COM ", "identifier")
    assert parsed == IdentifierKey(IdentifierType.EMAIL_SHA256, sha("jane.doe@example.com"))


def test_prehashed_email_is_kept_lowercase() -> None:
    digest = sha("jane@example.com")
    assert parse_identifier(6, digest.upper(), "identifier").value == digest


def test_phone_is_stripped_of_punctuation_before_hashing() -> None:
    parsed = parse_identifier(IdentifierType.PHONE_SHA256, " +33 (6) 12-34.56.78 ", "identifier")
    assert parsed.value == sha("+33612345678")


@pytest.mark.parametrize(
    ("type_number", "value", "field"),
    [
        (0, "abc", "identifier.type"),
        (99, "abc", "identifier.type"),
        (1, "", "identifier.value"),
        (1, "   ", "identifier.value"),
        (1, "x" * 513, "identifier.value"),
        (1, "a\x00b", "identifier.value"),
        (6, "not-an-email", "identifier.value"),
        (7, "call me", "identifier.value"),
    ],
)
def test_bad_identifiers_name_the_field(type_number: int, value: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_identifier(type_number, value, "identifier")
    assert raised.value.violations[0].field == field


def test_error_never_echoes_a_raw_email() -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_identifier(6, "secret-person-at-example", "identifier")
    assert "secret-person" not in str(raised.value)
    assert all("secret-person" not in v.description for v in raised.value.violations)


def test_a_one_megabyte_value_is_refused_with_its_size() -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse_identifier(1, "x" * 1_000_000, "identifiers[0]")
    assert raised.value.violations[0].field == "identifiers[0].value"
    assert "1000000" in raised.value.violations[0].description


@given(st.emails())
def test_any_email_spelling_maps_to_one_hash(email: str) -> None:
    variants = [email, email.upper(), f"  {email}\t"]
    hashed = {parse_identifier(6, variant, "identifier").value for variant in variants}
    assert len(hashed) == 1
    assert email.lower() not in next(iter(hashed))


@given(st.sampled_from(list(IdentifierType)), st.text(min_size=1, max_size=40).filter(lambda s: s.strip()))
def test_storage_key_round_trips(identifier_type: IdentifierType, value: str) -> None:
    key = IdentifierKey(identifier_type, value)
    assert IdentifierKey.from_key(key.key) == key
