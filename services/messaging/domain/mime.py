"""An email's bytes on the wire: RFC 5322 headers and a multipart/alternative body (text, then
HTML), composed directly.

The standard library's `EmailMessage` builds the same message through its header registry and
content manager, which parse every header back into objects and fold it again: on the send path
that was about a third of the messaging process's CPU per email. The structure of Rapport's
emails is fixed, so composing them is a few string operations; `email` still does the encodings
that need care (RFC 2047 words for non-ASCII headers, `formataddr`), and the tests read every
message back with the standard parser.
"""

from __future__ import annotations

import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.utils import formataddr

# Encoded headers are folded at 76 characters (RFC 2047 2); a line may be 998 (RFC 5322 2.1.1).
_HEADER_LINE = 76
_UTF8_HEADERS = Charset("utf-8")
_UTF8_HEADERS.header_encoding = QP


@dataclass(frozen=True)
class OutgoingEmail:
    """What an SMTP transaction needs: the envelope and the message's bytes."""

    sender: str  # envelope MAIL FROM address
    recipients: tuple[str, ...]
    data: bytes


def compose_email(
    *,
    from_name: str,
    from_address: str,
    to_address: str,
    subject: str,
    date: str,
    message_id: str,
    text: str,
    html: str,
    extra_headers: Sequence[tuple[str, str]] = (),
) -> OutgoingEmail:
    """The message with `text` and `html` as alternatives (the text first, as RFC 2046 orders
    them from plainest to richest). `message_id` includes its angle brackets."""
    boundary = "rapport-" + hashlib.sha256(message_id.encode()).hexdigest()[:32]
    headers = [
        ("From", formataddr((from_name, from_address), charset="utf-8")),
        ("To", to_address),
        ("Subject", header_value(subject)),
        ("Date", date),
        ("Message-ID", message_id),
        *((name, header_value(value)) for name, value in extra_headers),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/alternative; boundary="{boundary}"'),
    ]
    lines = [f"{name}: {value}" for name, value in headers]
    lines.append("")
    for subtype, body in (("plain", text), ("html", html)):
        lines += [
            f"--{boundary}",
            f'Content-Type: text/{subtype}; charset="utf-8"',
            "Content-Transfer-Encoding: quoted-printable",
            "",
            _quoted_printable(body),
        ]
    lines += [f"--{boundary}--", ""]
    return OutgoingEmail(from_address, (to_address,), "\r\n".join(lines).encode("ascii"))


def header_value(value: str) -> str:
    """A header value as 7-bit text: as is when it is ASCII (a long URL must stay one token),
    else RFC 2047 encoded words (UTF-8, Q encoding), folded at 76 characters."""
    value = " ".join(value.split())  # a header value never carries a line break of its own
    if value.isascii():
        return value
    return Header(value, _UTF8_HEADERS, maxlinelen=_HEADER_LINE).encode(linesep="\r\n")


def _quoted_printable(body: str) -> str:
    """UTF-8, quoted-printable, CRLF line ends, lines of at most 76 characters."""
    normalised = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalised.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.decode("ascii").replace("\n", "\r\n")
