"""Signed link tokens: round trips, URL safety, and rejection of altered, truncated, foreign,
cross-kind and expired tokens."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.messaging.domain.tokens import (
    Click,
    ExpiredToken,
    InvalidToken,
    MessageTokens,
    Open,
    Unsubscribe,
)
from services.messaging.domain.triggers import Channel

SECRET = b"0123456789abcdef-messaging-test"
NOW = 1_700_000_000_000
URL_SAFE = re.compile(r"[A-Za-z0-9_\-.]+")
tokens = MessageTokens(SECRET)


def test_an_unsubscribe_token_round_trips_and_is_url_safe_without_padding() -> None:
    token = tokens.unsubscribe(Unsubscribe("0123456789abcdef0123456789abcdef", Channel.PUSH))
    assert URL_SAFE.fullmatch(token)
    assert "=" not in token
    assert tokens.read_unsubscribe(token, NOW) == Unsubscribe("0123456789abcdef0123456789abcdef", Channel.PUSH)


def test_an_unsubscribe_token_without_expiry_works_years_later() -> None:
    token = tokens.unsubscribe(Unsubscribe("p1", Channel.EMAIL))
    assert tokens.read_unsubscribe(token, NOW + 10 * 365 * 86_400_000).channel is Channel.EMAIL


def test_click_and_open_tokens_round_trip() -> None:
    click = Click("delivery-1", 3, "https://shop.example/p/42?utm_source=email&x=é")
    assert tokens.read_click(tokens.click(click), NOW) == click
    assert tokens.read_open(tokens.open(Open("delivery-1")), NOW) == Open("delivery-1")


@pytest.mark.parametrize("target", ["javascript:alert(1)", "data:text/html,hi", "/relative/path", "https://"])
def test_a_click_token_only_ever_points_to_a_web_url(target: str) -> None:
    with pytest.raises(ValueError, match="http"):
        tokens.click(Click("d1", 0, target))


def test_a_negative_link_index_is_refused() -> None:
    with pytest.raises(ValueError, match="link_index"):
        tokens.click(Click("d1", -1, "https://shop.example/"))


def test_a_token_of_one_kind_cannot_be_read_as_another() -> None:
    open_token = tokens.open(Open("d1"))
    with pytest.raises(InvalidToken, match="not a click token"):
        tokens.read_click(open_token, NOW)
    # Relabelled by hand: the kind is under the signature too.
    relabelled = "c1" + open_token[2:]
    with pytest.raises(InvalidToken, match="signature"):
        tokens.read_click(relabelled, NOW)


def test_a_token_signed_with_another_secret_is_rejected() -> None:
    foreign = MessageTokens(b"another-secret-of-16-bytes+").unsubscribe(Unsubscribe("p1", Channel.EMAIL))
    with pytest.raises(InvalidToken, match="signature"):
        tokens.read_unsubscribe(foreign, NOW)


@pytest.mark.parametrize("garbage", ["", "u1", "u1.abc", "u1..sig", "u1.a.b.c", "ü1.abc.def", "x" * 40])
def test_garbage_is_not_a_token(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(garbage, NOW)


def test_a_validly_signed_body_of_the_wrong_shape_is_damaged() -> None:
    # Signed with our secret (as an older format could be) but not an unsubscribe's fields.
    token = tokens._issue("u1", ["p1", "FAX"], 0)
    with pytest.raises(InvalidToken, match="damaged"):
        tokens.read_unsubscribe(token, NOW)


def test_expired_tokens_are_rejected_with_their_own_error() -> None:
    token = tokens.open(Open("d1"), expires_at_ms=NOW)
    assert tokens.read_open(token, NOW - 1) == Open("d1")
    with pytest.raises(ExpiredToken):
        tokens.read_open(token, NOW)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        MessageTokens(b"short")


texts = st.text(min_size=0, max_size=60)


@settings(max_examples=150, deadline=None)
@given(delivery_id=texts, link_index=st.integers(0, 10_000), path=texts)
def test_any_click_round_trips(delivery_id: str, link_index: int, path: str) -> None:
    click = Click(delivery_id, link_index, "https://shop.example/" + path)
    token = tokens.click(click)
    assert URL_SAFE.fullmatch(token)
    assert tokens.read_click(token, NOW) == click


@settings(max_examples=200, deadline=None)
@given(person_id=texts, data=st.data())
def test_any_altered_or_truncated_token_is_rejected(person_id: str, data: st.DataObject) -> None:
    token = tokens.unsubscribe(Unsubscribe(person_id, Channel.EMAIL))
    position = data.draw(st.integers(0, len(token) - 1), label="position")
    replacement = data.draw(st.sampled_from("ABCxyz019-_."), label="replacement")
    altered = token[:position] + replacement + token[position + 1 :]
    if altered != token:
        with pytest.raises(InvalidToken):
            tokens.read_unsubscribe(altered, NOW)
    with pytest.raises(InvalidToken):
        tokens.read_unsubscribe(token[:position], NOW)
