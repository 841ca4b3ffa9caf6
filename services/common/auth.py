"""API keys with scopes, presented as `authorization: Bearer <key>` metadata."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import PermissionDenied, Unauthenticated

ALL_SCOPES = "*"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (never its secret) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


class ApiKeyRegistry:
    """Looks keys up by SHA-256 so no secret is compared character by character."""

    def __init__(self, principals_by_digest: Mapping[bytes, Principal]) -> None:
        self._principals = dict(principals_by_digest)

    @classmethod
    def parse(cls, spec: str) -> ApiKeyRegistry:
        """Parse 'name:secret:scope,scope;name2:secret2:*' (see RAPPORT_API_KEYS)."""
        principals: dict[bytes, Principal] = {}
        for entry in filter(None, (part.strip() for part in spec.split(";"))):
            pieces = entry.split(":")
            if len(pieces) != 3 or not pieces[0] or len(pieces[1]) < 16:
                raise ValueError("RAPPORT_API_KEYS: each entry is name:secret:scopes with a secret of 16+ characters")
            name, secret, scopes = pieces
            principals[_digest(secret)] = Principal(name, frozenset(s.strip() for s in scopes.split(",") if s.strip()))
        return cls(principals)

    def __len__(self) -> int:
        return len(self._principals)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("send 'authorization: Bearer <api key>' metadata", "MISSING_API_KEY")
        scheme, _, secret = authorization.partition(" ")
        if scheme.lower() != "bearer" or not secret:
            raise Unauthenticated("the authorization metadata must be 'Bearer <api key>'", "MALFORMED_API_KEY")
        digest = _digest(secret.strip())
        for known_digest, principal in self._principals.items():
            if hmac.compare_digest(known_digest, digest):
                return principal
        raise Unauthenticated("the API key is not known", "UNKNOWN_API_KEY")


def require_scope(principal: Principal, scope: str, method: str) -> None:
    if not principal.allows(scope):
        raise PermissionDenied(
            f"the API key '{principal.name}' lacks scope '{scope}'", "MISSING_SCOPE", {"scope": scope, "method": method}
        )
