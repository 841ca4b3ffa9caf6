"""Signed tokens in message links: unsubscribe, click tracking and the open pixel.

A link must work without a lookup and must not be forgeable: whoever edits an unsubscribe link
must not unsubscribe someone else, and a click link must not redirect to a URL we did not put in
it (an open redirect). So each token carries its fields and an HMAC-SHA256 over them:
`<kind>.<base64url JSON>.<base64url signature>`, URL-safe without escaping. The kind is signed too,
so an open token can never be replayed as a click token. Same scheme as the decision service's
decision ids (`services/decision/domain/decision_ids.py`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

from services.messaging.domain.triggers import Channel

_SIGNATURE_BYTES: Final = 16  # 128 bits: forging needs 2**128 tries, and links stay short
_UNSUBSCRIBE: Final = "u1"
_CLICK: Final = "c1"
_OPEN: Final = "o1"
_NEVER: Final = 0


class InvalidToken(ValueError):
    """A token that is not ours, was altered or truncated, or is damaged."""


class ExpiredToken(InvalidToken):
    pass


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    person_id: str
    channel: Channel


@dataclass(frozen=True, slots=True)
class Click:
    delivery_id: str
    link_index: int
    target_url: str


@dataclass(frozen=True, slots=True)
class Open:
    delivery_id: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class MessageTokens:
    """Issues and reads the tokens of message links. Expiry is optional (`expires_at_ms`, 0 =
    never); unsubscribe tokens should never expire: an old e-mail's link must keep working."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the token secret must be at least 16 bytes")
        # Keyed once: each signature copies it (an email signs eight links), which costs less
        # than keying a one-shot HMAC again for every link.
        self._keyed = hmac.new(secret, digestmod="sha256")

    def _signature(self, kind: str, body: str) -> str:
        mac = self._keyed.copy()
        mac.update(f"{kind}.{body}".encode("ascii"))
        return _b64encode(mac.digest()[:_SIGNATURE_BYTES])

    def _issue(self, kind: str, fields: list[Any], expires_at_ms: int) -> str:
        # Compact JSON (UTF-8, not \u escapes: both read back the same).
        body = _b64encode(orjson.dumps([*fields, expires_at_ms]))
        return f"{kind}.{body}.{self._signature(kind, body)}"

    def _read(self, token: str, kind: str, now_ms: int) -> list[Any]:
        parts = token.split(".")
        if len(parts) != 3 or not all(parts) or not token.isascii():
            raise InvalidToken("not a message token")
        token_kind, body, signature = parts
        if token_kind != kind:
            raise InvalidToken(f"not a {_KIND_NAMES.get(kind, kind)} token")
        # Comparing the canonical text, not decoded bytes: no second spelling of a signature passes.
        if not hmac.compare_digest(signature, self._signature(kind, body)):
            raise InvalidToken("the token's signature does not match (altered or truncated)")
        try:
            fields = json.loads(_b64decode(body))
        except (binascii.Error, ValueError) as error:
            raise InvalidToken("the token is damaged") from error
        if not isinstance(fields, list) or not fields or type(fields[-1]) is not int:
            raise InvalidToken("the token is damaged")
        expires_at_ms = fields.pop()
        if expires_at_ms != _NEVER and now_ms >= expires_at_ms:
            raise ExpiredToken("the token has expired")
        return fields

    def unsubscribe(self, unsubscribe: Unsubscribe, expires_at_ms: int = _NEVER) -> str:
        return self._issue(_UNSUBSCRIBE, [unsubscribe.person_id, unsubscribe.channel.name], expires_at_ms)

    def click(self, click: Click, expires_at_ms: int = _NEVER) -> str:
        if click.link_index < 0:
            raise ValueError("link_index must not be negative")
        _require_web_url(click.target_url)
        return self._issue(_CLICK, [click.delivery_id, click.link_index, click.target_url], expires_at_ms)

    def open(self, open_: Open, expires_at_ms: int = _NEVER) -> str:
        return self._issue(_OPEN, [open_.delivery_id], expires_at_ms)

    def read_unsubscribe(self, token: str, now_ms: int) -> Unsubscribe:
        fields = self._read(token, _UNSUBSCRIBE, now_ms)
        match fields:
            case [str(person_id), str(channel)] if channel in Channel.__members__:
                return Unsubscribe(person_id, Channel[channel])
        raise InvalidToken("the token is damaged")

    def read_click(self, token: str, now_ms: int) -> Click:
        fields = self._read(token, _CLICK, now_ms)
        match fields:
            case [str(delivery_id), int(link_index), str(target_url)] if link_index >= 0 and _is_web_url(target_url):
                return Click(delivery_id, link_index, target_url)
        raise InvalidToken("the token is damaged")

    def read_open(self, token: str, now_ms: int) -> Open:
        fields = self._read(token, _OPEN, now_ms)
        match fields:
            case [str(delivery_id)]:
                return Open(delivery_id)
        raise InvalidToken("the token is damaged")


_KIND_NAMES: Final = {_UNSUBSCRIBE: "unsubscribe", _CLICK: "click", _OPEN: "open"}


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _require_web_url(url: str) -> None:
    # A javascript: or data: target behind our redirect would run with the shop's reputation.
    if not _is_web_url(url):
        raise ValueError("the click target must be an absolute http(s) URL")
