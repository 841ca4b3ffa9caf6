"""Retargeting audiences for ad platforms: members as SHA-256 hashes only, written as a Meta
(Facebook) Custom Audience customer file or split into batches for an HTTP sync.

Identifiers are normalised the way Meta matches them before hashing (e-mail: trimmed, lower
case; phone: country code and digits only, no "+" nor leading zeros; mobile advertiser id and
country: trimmed, lower case). A value that already is 64 hex digits is taken as a hash; every
other value is hashed here, so a raw e-mail can never reach a file or a request.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Protocol

from services.common.identifiers import is_sha256_hex, normalise_email, sha256_hex

_NON_DIGITS: Final = re.compile(r"\D")
MAX_BATCH_SIZE: Final = 10_000  # Meta's limit of records per request

# Customer-file headers (Meta accepts these lower-case keys) and the Marketing API schema names.
CSV_COLUMNS: Final = ("email", "phone", "madid", "country")
API_SCHEMA: Final = ("EMAIL", "PHONE", "MADID", "COUNTRY")
PRODUCT_IDS_COLUMN: Final = "product_ids"  # ours, for dynamic ads: not a Meta matching key
PRODUCT_ID_SEPARATOR: Final = "|"

# Country calling codes, to turn a national number ("06 12 34 56 78" in France) into E.164 digits.
CALLING_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "AT": "43", "BE": "32", "BG": "359", "HR": "385", "CY": "357", "CZ": "420", "DK": "45", "EE": "372",
        "FI": "358", "FR": "33", "DE": "49", "GR": "30", "HU": "36", "IE": "353", "IT": "39", "LV": "371",
        "LT": "370", "LU": "352", "MT": "356", "NL": "31", "PL": "48", "PT": "351", "RO": "40", "SK": "421",
        "SI": "386", "ES": "34", "SE": "46", "GB": "44", "CH": "41", "NO": "47", "US": "1", "CA": "1",
        "AU": "61", "JP": "81", "CN": "86", "IN": "91", "BR": "55",
    }
)  # fmt: skip
# Where the national number keeps its leading 0 after the country code (Italian landlines).
_KEEPS_TRUNK_ZERO: Final = frozenset({"IT"})
_E164_DIGITS: Final = range(8, 16)  # country code included; E.164 allows at most 15


def _already_hashed(value: str) -> str | None:
    lowered = value.strip().lower()
    return lowered if is_sha256_hex(lowered) else None


def hash_email(value: str) -> str:
    """The SHA-256 of a trimmed, lower-cased e-mail; a SHA-256 hex is returned as it is."""
    return _already_hashed(value) or sha256_hex(normalise_email(value))


def normalise_phone(raw: str, country: str = "") -> str | None:
    """E.164 digits without "+", as Meta hashes phones ("+33 6 12 34 56 78" and, in France,
    "06 12 34 56 78" → "33612345678"); None when it cannot be a phone number."""
    text = raw.strip()
    digits = _NON_DIGITS.sub("", text)
    if text.startswith("+"):
        international = digits
    elif digits.startswith("00"):
        international = digits[2:]
    else:
        code = country.strip().upper()
        calling_code = CALLING_CODES.get(code)
        if calling_code is None:
            international = digits.lstrip("0")  # Meta's rule when the country is unknown
        elif calling_code == "1" and len(digits) == 11 and digits.startswith("1"):
            international = digits  # North American number already with its "1"
        else:
            national = digits if code in _KEEPS_TRUNK_ZERO else digits.lstrip("0")
            international = calling_code + national
    international = international.lstrip("0")
    return international if len(international) in _E164_DIGITS else None


def hash_phone(value: str, country: str = "") -> str | None:
    hashed = _already_hashed(value)
    if hashed is not None:
        return hashed
    phone = normalise_phone(value, country)
    return sha256_hex(phone) if phone is not None else None


def hash_madid(value: str) -> str:
    """Mobile advertiser ids (IDFA, GAID) keep their hyphens, in lower case."""
    return _already_hashed(value) or sha256_hex(value.strip().lower())


def hash_country(value: str) -> str:
    """ISO 3166 alpha-2, lower case (Meta hashes the country too)."""
    return _already_hashed(value) or sha256_hex(value.strip().lower())


@dataclass(frozen=True, slots=True)
class AudienceMember:
    """A person in an audience, as known: values may be raw or already SHA-256 hashed.
    `country` also places a national phone number."""

    email: str = ""
    phone: str = ""
    madid: str = ""
    country: str = ""
    product_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HashedRow:
    """A member as it leaves the service: hashes or empty strings, in `CSV_COLUMNS` order."""

    email: str
    phone: str
    madid: str
    country: str
    product_ids: tuple[str, ...] = ()

    @property
    def values(self) -> tuple[str, str, str, str]:
        return (self.email, self.phone, self.madid, self.country)


def hashed_row(member: AudienceMember) -> HashedRow | None:
    """The member's hashes; None when nothing identifies them (a country alone matches nobody)."""
    email = hash_email(member.email) if member.email.strip() else ""
    phone = (hash_phone(member.phone, member.country) or "") if member.phone.strip() else ""
    madid = hash_madid(member.madid) if member.madid.strip() else ""
    if not (email or phone or madid):
        return None
    country = hash_country(member.country) if member.country.strip() else ""
    return HashedRow(email, phone, madid, country, member.product_ids)


def hashed_rows(members: Iterable[AudienceMember]) -> Iterator[HashedRow]:
    for member in members:
        row = hashed_row(member)
        if row is not None:
            yield row


class TextSink(Protocol):
    def write(self, text: str, /) -> int: ...


def write_customer_file(members: Iterable[AudienceMember], out: TextSink, *, include_product_ids: bool = False) -> int:
    """Writes a Meta customer-file CSV (header `email,phone,madid,country`, plus `product_ids`
    joined by "|" when asked) and returns the number of members written."""
    writer = csv.writer(out, lineterminator="\n")
    header = [*CSV_COLUMNS, PRODUCT_IDS_COLUMN] if include_product_ids else list(CSV_COLUMNS)
    writer.writerow(header)
    written = 0
    for row in hashed_rows(members):
        cells = list(row.values)
        if include_product_ids:
            cells.append(PRODUCT_ID_SEPARATOR.join(row.product_ids))
        writer.writerow(cells)
        written += 1
    return written


@dataclass(frozen=True, slots=True)
class SyncBatch:
    audience: str
    rows: tuple[HashedRow, ...]
    include_product_ids: bool = False

    def payload(self) -> dict[str, Any]:
        """{"audience", "schema", "data"} (+ "product_ids", one list per row) for the HTTP sync."""
        body: dict[str, Any] = {
            "audience": self.audience,
            "schema": list(API_SCHEMA),
            "data": [list(row.values) for row in self.rows],
        }
        if self.include_product_ids:
            body["product_ids"] = [list(row.product_ids) for row in self.rows]
        return body


def sync_batches(
    audience: str,
    members: Iterable[AudienceMember],
    batch_size: int = MAX_BATCH_SIZE,
    *,
    include_product_ids: bool = False,
) -> Iterator[SyncBatch]:
    """The members as batches of at most `batch_size` hashed rows (unidentifiable ones dropped)."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    batch: list[HashedRow] = []
    for row in hashed_rows(members):
        batch.append(row)
        if len(batch) == batch_size:
            yield SyncBatch(audience, tuple(batch), include_product_ids)
            batch = []
    if batch:
        yield SyncBatch(audience, tuple(batch), include_product_ids)
