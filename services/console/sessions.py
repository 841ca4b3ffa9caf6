"""Staff sign-in: an API key with the console scope is exchanged for a signed session cookie, so
the key itself is sent once and never stored in the browser.

The cookie holds the key's name and an expiry, signed with HMAC-SHA256; nothing else is kept on
the server, so any replica sharing RAPPORT_CONSOLE_SECRET accepts it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

from services.common.auth import ApiKeyRegistry, Principal
from services.common.errors import Unauthenticated

CONSOLE_SCOPE = "console.view"
COOKIE_NAME = "rapport_console"
_VERSION = "v1"


@dataclass(frozen=True)
class StaffSession:
    key_name: str  # the API key's name (never its secret)
    expires_s: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    def __init__(self, secret: bytes, lifetime_s: int) -> None:
        if len(secret) < 16:
            raise ValueError("the console's session secret must have at least 16 bytes")
        self._secret = secret
        self.lifetime_s = lifetime_s

    def _signature(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())

    def issue(self, key_name: str, now_s: int) -> str:
        payload = _b64(orjson.dumps({"n": key_name, "e": now_s + self.lifetime_s}))
        return f"{_VERSION}.{payload}.{self._signature(payload)}"

    def read(self, cookie: str | None, now_s: int) -> StaffSession | None:
        """The session a cookie carries; None when absent, forged, malformed or expired."""
        if not cookie:
            return None
        version, _, rest = cookie.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not payload or not hmac.compare_digest(signature, self._signature(payload)):
            return None
        try:
            fields = orjson.loads(_unb64(payload))
            session = StaffSession(str(fields["n"]), int(fields["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_s > now_s else None


class InvalidConsoleKey(Exception):
    """The key is unknown, or lacks the console scope."""


def staff_for_key(keys: ApiKeyRegistry, api_key: str) -> Principal:
    """Who signs in with this key; InvalidConsoleKey when it may not (the reason is not told)."""
    try:
        principal = keys.authenticate(f"Bearer {api_key.strip()}")
    except Unauthenticated:
        raise InvalidConsoleKey from None
    if not principal.allows(CONSOLE_SCOPE):
        raise InvalidConsoleKey
    return principal


def safe_next_path(requested: str | None) -> str:
    """Where to go after signing in: only a path of this site (never `//host` or a full URL)."""
    if not requested or not requested.startswith("/") or requested.startswith(("//", "/\\")):
        return "/"
    return requested
