"""Retargeting audiences: Meta's normalisation before hashing, hashes passed through, no raw
identifier ever in the customer file or the sync batches."""

from __future__ import annotations

import csv
import hashlib
import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.messaging.domain.audiences import (
    MAX_BATCH_SIZE,
    AudienceMember,
    hash_email,
    hash_madid,
    hash_phone,
    hashed_row,
    normalise_phone,
    sync_batches,
    write_customer_file,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


ALICE = AudienceMember(
    email="  Alice.Martin@Example.COM ",
    phone="06 12 34 56 78",
    madid="AECE52E7-03EE-455A-B3C4-E57283966239",
    country="FR",
    product_ids=("sku-1", "sku-2"),
)


def test_an_email_is_trimmed_and_lower_cased_before_hashing() -> None:
    assert hash_email("  Alice.Martin@Example.COM ") == sha("alice.martin@example.com")


def test_a_value_that_already_is_a_sha256_is_kept_in_lower_case() -> None:
    hashed = sha("alice@example.com")
    assert hash_email(hashed.upper()) == hashed
    assert hash_phone(hashed) == hashed
    assert hash_madid(f" {hashed} ") == hashed


def test_almost_a_hash_is_hashed_again() -> None:
    not_quite = sha("x")[:63] + "g"
    assert hash_email(not_quite) == sha(not_quite)


@pytest.mark.parametrize(
    ("raw", "country", "digits"),
    [
        ("+33 6 12 34 56 78", "", "33612345678"),
        ("0033 6 12 34 56 78", "", "33612345678"),
        ("06 12 34 56 78", "FR", "33612345678"),
        ("(212) 555-0123", "US", "12125550123"),
        ("1-212-555-0123", "US", "12125550123"),
        ("06 6982 1234", "IT", "390669821234"),  # Italian landlines keep their 0
        ("07911 123456", "gb", "447911123456"),
        ("0612345678", "", "612345678"),  # unknown country: Meta's rule, leading zeros dropped
        ("12", "FR", None),
        ("not a phone", "", None),
    ],
)
def test_phones_are_normalised_to_e164_digits(raw: str, country: str, digits: str | None) -> None:
    assert normalise_phone(raw, country) == digits


def test_a_row_holds_only_hashes_in_the_documented_order() -> None:
    row = hashed_row(ALICE)
    assert row is not None
    assert row.values == (
        sha("alice.martin@example.com"),
        sha("33612345678"),
        sha("aece52e7-03ee-455a-b3c4-e57283966239"),
        sha("fr"),
    )
    assert row.product_ids == ("sku-1", "sku-2")


def test_a_member_identified_by_nothing_is_dropped() -> None:
    assert hashed_row(AudienceMember(country="FR")) is None
    assert hashed_row(AudienceMember(phone="12", country="FR")) is None  # not a phone
    only_madid = hashed_row(AudienceMember(madid="abc-123"))
    assert only_madid is not None and only_madid.values == ("", "", sha("abc-123"), "")


def test_the_customer_file_has_meta_headers_and_no_raw_identifier() -> None:
    out = io.StringIO()
    written = write_customer_file([ALICE, AudienceMember(country="FR")], out)
    text = out.getvalue()
    assert written == 1
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["email", "phone", "madid", "country"]
    assert rows[1] == list(hashed_row(ALICE).values)  # type: ignore[union-attr]
    assert len(rows) == 2
    for raw in ("alice", "example.com", "612345678", "aece52e7"):
        assert raw not in text.lower()


def test_the_customer_file_can_carry_product_ids_for_dynamic_ads() -> None:
    out = io.StringIO()
    write_customer_file([ALICE], out, include_product_ids=True)
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0][-1] == "product_ids"
    assert rows[1][-1] == "sku-1|sku-2"


def test_sync_batches_split_the_members_and_carry_the_api_schema() -> None:
    members = [AudienceMember(email=f"person{i}@example.com") for i in range(5)]
    batches = list(sync_batches("cart-abandoners", members, batch_size=2, include_product_ids=True))
    assert [len(batch.rows) for batch in batches] == [2, 2, 1]
    payload = batches[0].payload()
    assert payload["audience"] == "cart-abandoners"
    assert payload["schema"] == ["EMAIL", "PHONE", "MADID", "COUNTRY"]
    assert payload["data"] == [[sha("person0@example.com"), "", "", ""], [sha("person1@example.com"), "", "", ""]]
    assert payload["product_ids"] == [[], []]
    assert "product_ids" not in next(iter(sync_batches("a", members))).payload()
    assert "@" not in json.dumps([batch.payload() for batch in batches])


@pytest.mark.parametrize("size", [0, MAX_BATCH_SIZE + 1])
def test_a_batch_size_outside_metas_limit_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        list(sync_batches("a", [ALICE], batch_size=size))


# Simpler than st.emails() (which is slow to generate) and still mixing case, dots and plus signs.
emails = st.from_regex(r"[A-Za-z0-9._+-]{1,20}@[A-Za-z0-9-]{1,15}\.[A-Za-z]{2,6}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(email=emails, padding=st.sampled_from(["", " ", "\t", "  \n"]))
def test_any_email_is_hashed_the_same_however_it_is_spelled(email: str, padding: str) -> None:
    hashed = hash_email(padding + email.upper() + padding)
    assert hashed == sha(email.lower())
    assert hash_email(hashed) == hashed
    assert email.lower() not in hashed


@settings(max_examples=100, deadline=None)
@given(numbers=st.lists(st.integers(0, 10**6), max_size=30), size=st.integers(1, 7))
def test_batches_keep_every_identified_member_once_in_order(numbers: list[int], size: int) -> None:
    members = [AudienceMember(email=f"person{n}@example.com") for n in numbers]
    batches = list(sync_batches("a", members, batch_size=size))
    flat = [row for batch in batches for row in batch.payload()["data"]]
    assert flat == [[hash_email(member.email), "", "", ""] for member in members]
    assert all(1 <= len(batch.rows) <= size for batch in batches)
