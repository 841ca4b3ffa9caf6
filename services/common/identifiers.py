"""Identifiers as the identity graph stores them, and their validation (shared: every service that
accepts an identifier checks it the same way before it reaches identity).

Raw e-mail addresses and phone numbers are normalised and hashed here, before anything else
sees them, so no raw PII is ever stored or logged.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass

from services.common.errors import FieldViolation, InvalidArgument

MAX_VALUE_BYTES = 512
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PHONE_NOISE = re.compile(r"[\s\-().]")
_PHONE = re.compile(r"^\+?[0-9]{4,20}$")


class IdentifierType(enum.IntEnum):
    """Mirrors rapport.common.v1.IdentifierType (same numbers)."""

    COOKIE = 1
    DEVICE = 2
    APP_INSTALL = 3
    AD_ID = 4
    CUSTOMER_ID = 5
    EMAIL_SHA256 = 6
    PHONE_SHA256 = 7

    @property
    def is_device(self) -> bool:
        """Identifiers of a device or browser, which a whole family may share."""
        return self in (IdentifierType.COOKIE, IdentifierType.DEVICE, IdentifierType.APP_INSTALL, IdentifierType.AD_ID)


@dataclass(frozen=True, order=True)
class IdentifierKey:
    """A normalised identifier; `key` is its storage form, e.g. `CUSTOMER_ID:42`."""

    type: IdentifierType
    value: str

    @property
    def key(self) -> str:
        return f"{self.type.name}:{self.value}"

    @classmethod
    def from_key(cls, key: str) -> IdentifierKey:
        type_name, _, value = key.partition(":")
        return cls(IdentifierType[type_name], value)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def is_sha256_hex(value: str) -> bool:
    """A value already hashed by the caller (64 lower-case hex digits) is kept as it is."""
    return _SHA256_HEX.fullmatch(value) is not None


def normalise_email(raw: str) -> str:
    return raw.strip().lower()


def normalise_phone(raw: str) -> str:
    return _PHONE_NOISE.sub("", raw.strip())


def parse_identifier(type_number: int, value: str, field: str) -> IdentifierKey:
    """Validate and normalise one identifier; `field` names it in errors (e.g. `identifiers[2]`)."""
    violations: list[FieldViolation] = []
    try:
        identifier_type = IdentifierType(type_number)
    except ValueError:
        violations.append(FieldViolation(f"{field}.type", "must be a known IdentifierType, not UNSPECIFIED"))
        identifier_type = None
    encoded_length = len(value.encode())
    stripped = value.strip()
    if not stripped:
        violations.append(FieldViolation(f"{field}.value", "must not be empty"))
    elif encoded_length > MAX_VALUE_BYTES:
        violations.append(
            FieldViolation(f"{field}.value", f"must be at most {MAX_VALUE_BYTES} bytes, got {encoded_length}")
        )
    elif any(ord(ch) < 32 for ch in stripped):
        violations.append(FieldViolation(f"{field}.value", "must not contain control characters"))
    if violations or identifier_type is None:
        raise InvalidArgument(violations)

    if identifier_type is IdentifierType.EMAIL_SHA256:
        lowered = stripped.lower()
        if is_sha256_hex(lowered):
            return IdentifierKey(identifier_type, lowered)
        email = normalise_email(stripped)
        if "@" not in email or email.startswith("@") or email.endswith("@"):
            # The message must not echo the input: it may be a raw address.
            raise InvalidArgument([FieldViolation(f"{field}.value", "must be 64 hex digits or an e-mail address")])
        return IdentifierKey(identifier_type, sha256_hex(email))
    if identifier_type is IdentifierType.PHONE_SHA256:
        lowered = stripped.lower()
        if is_sha256_hex(lowered):
            return IdentifierKey(identifier_type, lowered)
        phone = normalise_phone(stripped)
        if not _PHONE.match(phone):
            raise InvalidArgument([FieldViolation(f"{field}.value", "must be 64 hex digits or a phone number")])
        return IdentifierKey(identifier_type, sha256_hex(phone))
    return IdentifierKey(identifier_type, stripped)


PERSON_ID_LENGTH = 32


def parse_person_id(value: str, field: str = "person_id") -> str:
    """A person id as identity issues them: 32 lower-case hex digits."""
    if len(value) != PERSON_ID_LENGTH or any(ch not in "0123456789abcdef" for ch in value):
        raise InvalidArgument([FieldViolation(field, "must be the 32 hex digits of a person id")])
    return value
