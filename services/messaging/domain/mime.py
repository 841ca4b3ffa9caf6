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
import functools
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.utils import formataddr, formatdate

# Encoded headers are folded at 76 characters (RFC 2047 2); a line may be 998 (RFC 5322 2.1.1).
_HEADER_LINE = 76
_QP_CUT = _HEADER_LINE - 1  # a quoted-printable line's characters before its soft break
_UTF8_HEADERS = Charset("utf-8")
_UTF8_HEADERS.header_encoding = QP


@dataclass(frozen=True, slots=True)
class QuotedPrintable:
    """A body already encoded (UTF-8, quoted-printable, CRLF line ends, lines of at most 76
    characters), for a caller that encodes the parts its bodies share once (see
    `quoted_printable_piece`)."""

    encoded: str


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
    text: str | QuotedPrintable,
    html: str | QuotedPrintable,
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
            body.encoded if isinstance(body, QuotedPrintable) else _quoted_printable(body),
        ]
    lines += [f"--{boundary}--", ""]
    return OutgoingEmail(from_address, (to_address,), "\r\n".join(lines).encode("ascii"))


def date_header(at_s: float | None = None) -> str:
    """RFC 5322's Date of a message sent at `at_s` (now by default), in UTC. The header has whole
    seconds: it is spelled once per second, not once per message."""
    return _date_of_second(int(time.time() if at_s is None else at_s))


@functools.lru_cache(maxsize=4)
def _date_of_second(second: int) -> str:
    return formatdate(second, localtime=False)


def header_value(value: str) -> str:
    """A header value as 7-bit text: as is when it is ASCII (a long URL must stay one token),
    else RFC 2047 encoded words (UTF-8, Q encoding), folded at 76 characters."""
    value = " ".join(value.split())  # a header value never carries a line break of its own
    if value.isascii():
        return value
    return Header(value, _UTF8_HEADERS, maxlinelen=_HEADER_LINE).encode(linesep="\r\n")


def quoted_printable_piece(text: str) -> str:
    """`text` encoded as a piece of a quoted-printable body: pieces joined in order are the
    encoding of their texts joined. Each piece ends at the end of a line, a soft line break
    ("=" CRLF, which decoders remove) when the text does not end with a newline, so the next
    starts at column 0 and no line passes 76 characters. The fixed text of an email layout is
    encoded once this way, and only its personal values per email: quoted-printable encoding
    of a whole HTML body was about a twentieth of the messaging process's CPU per email."""
    if text.isascii() and text.isprintable() and "=" not in text:
        # Every character stands for itself (a tracked link, say): only the lines are cut. A
        # space before a soft break is not at the end of a line, so it needs no encoding.
        return "".join([text[start : start + _QP_CUT] + "=\r\n" for start in range(0, len(text), _QP_CUT)])
    encoded = _quoted_printable(text)
    if not encoded or encoded.endswith("\r\n"):
        return encoded
    start = encoded.rfind("\n") + 1
    last = encoded[start:]
    if len(last) < _HEADER_LINE:  # room for the soft break's "="
        return encoded + "=\r\n"
    # A full last line: cut it before its 76th character, never inside an "=XX" escape (every "="
    # of the encoding starts one).
    cut = _QP_CUT - 1 if last[_QP_CUT - 1] == "=" else _QP_CUT - 2 if last[_QP_CUT - 2] == "=" else _QP_CUT
    return f"{encoded[:start]}{last[:cut]}=\r\n{last[cut:]}=\r\n"


def _quoted_printable(body: str) -> str:
    """UTF-8, quoted-printable, CRLF line ends, lines of at most 76 characters."""
    normalised = body.replace("\r\n", "\n").replace("\r", "\n")
    encoded = binascii.b2a_qp(normalised.encode("utf-8"), quotetabs=False, istext=True, header=False)
    return encoded.decode("ascii").replace("\n", "\r\n")
