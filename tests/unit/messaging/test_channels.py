"""The bytes an SMTP transaction sends after DATA: exactly what aiosmtplib's own DATA command
would send (CRLF line ends, a final CRLF, dot-stuffing), for composed and arbitrary messages."""

from __future__ import annotations

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings
from hypothesis import strategies as st

from services.messaging.adapters.channels import wire_body
from services.messaging.domain.mime import compose_email


def as_aiosmtplib_sends_it(data: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))


def test_a_composed_email_with_lines_that_start_with_a_dot_is_stuffed() -> None:
    email = compose_email(
        from_name="Shop",
        from_address="shop@example.com",
        to_address="ada@example.com",
        subject="Hello",
        date="Fri, 01 Mar 2024 10:00:00 +0000",
        message_id="<d_1@rapport>",
        text=".starts with a dot\n..and two\n.\nend",
        html="<p>x</p>\n.<p>y</p>",
    )
    body = wire_body(email.data)
    assert body == as_aiosmtplib_sends_it(email.data)
    assert b"\r\n..<p>y</p>\r\n" in body  # (quoted-printable text encodes its leading dots)
    assert b"\r\n.\r\n" not in body  # nothing in it can end the message early


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b" "]), max_size=30).map(b"".join))
def test_any_message_is_sent_as_aiosmtplib_would_send_it(data: bytes) -> None:
    assert wire_body(data) == as_aiosmtplib_sends_it(data)
