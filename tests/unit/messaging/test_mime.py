"""The composed email, read back with the standard library's parser (policy.default), as a mail
client would: headers decoded, both alternatives intact, lines within SMTP's limits."""

from __future__ import annotations

import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import formatdate, mktime_tz, parsedate_tz

from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.messaging.domain.mime import (
    OutgoingEmail,
    QuotedPrintable,
    compose_email,
    date_header,
    header_value,
    quoted_printable_piece,
)

UNSUBSCRIBE = "https://shop.example/u/" + "t" * 180


def compose(
    subject: str = "Your cart",
    text: str | QuotedPrintable = "Hello",
    html: str | QuotedPrintable = "<p>Hello</p>",
    name: str = "Maison",
) -> OutgoingEmail:
    return compose_email(
        from_name=name,
        from_address="shop@example.com",
        to_address="anna@example.com",
        subject=subject,
        date="Mon, 23 Nov 2026 22:00:00 -0000",
        message_id="<d-123@rapport>",
        text=text,
        html=html,
        extra_headers=(("List-Unsubscribe", f"<{UNSUBSCRIBE}>"), ("X-Rapport-Delivery", "d-123")),
    )


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def bodies(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()  # type: ignore[attr-defined]


def test_the_envelope_and_the_headers_read_back() -> None:
    email = compose()
    assert email.sender == "shop@example.com" and email.recipients == ("anna@example.com",)
    message = parsed(email.data)
    assert message["From"] == "Maison <shop@example.com>"
    assert message["To"] == "anna@example.com"
    assert message["Subject"] == "Your cart"
    assert message["Message-ID"] == "<d-123@rapport>"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "multipart/alternative"
    # A long URL stays one token: mail clients act on the whole of it.
    assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"


def test_french_subject_sender_name_and_bodies_are_encoded_and_read_back() -> None:
    subject = "Vous avez oublié quelque chose — votre panier vous attend, Élodie !"
    text = "Bonjour Élodie,\n\nVotre pull en cachemire (129,00 €) vous attend.\n.\nÀ bientôt"
    html = "<p>Bonjour Élodie, votre pull à 129,00 € vous attend.</p>"
    email = compose(subject, text, html, name="Maison Laine Française")
    assert email.data.isascii()
    message = parsed(email.data)
    assert message["Subject"] == subject
    assert message["From"].addresses[0].display_name == "Maison Laine Française"  # type: ignore[attr-defined]
    plain, rich = bodies(message)
    assert plain.replace("\r\n", "\n").rstrip("\n") == text
    assert rich.replace("\r\n", "\n").rstrip("\n") == html


def test_every_line_fits_and_ends_with_crlf() -> None:
    long_text = "x" * 3000 + "\n" + "é" * 500
    data = compose(text=long_text, html="<p>" + "y" * 5000 + "</p>").data
    lines = data.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert b"\n" not in data.replace(b"\r\n", b"")
    body_lines = data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert all(len(line) <= 76 for line in body_lines)


def test_a_header_value_never_carries_a_line_break_of_its_own() -> None:
    # A subject built from shop data must not be able to add a header (header injection).
    value = header_value("Hello\r\nBcc: victim@example.com")
    assert "\n" not in value.replace("\r\n ", "")
    message = parsed(compose(subject="Hello\r\nBcc: victim@example.com").data)
    assert message["Bcc"] is None
    assert message["Subject"] == "Hello Bcc: victim@example.com"


@given(
    subject=st.text(min_size=1, max_size=200).filter(lambda value: value.strip()),
    text=st.text(max_size=2000),
)
def test_any_subject_and_text_read_back(subject: str, text: str) -> None:
    message = parsed(compose(subject=subject, text=text).data)
    assert message["Subject"] == " ".join(subject.split())
    plain, _ = bodies(message)
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert plain.replace("\r\n", "\n").rstrip("\n") == expected.rstrip("\n")


def test_the_date_header_is_the_standard_spelling_of_its_second() -> None:
    assert date_header(1_795_000_000.9) == formatdate(1_795_000_000, localtime=False)
    assert date_header(1_795_000_001.2) == formatdate(1_795_000_001, localtime=False)
    now = parsedate_tz(date_header())
    assert now is not None and abs(mktime_tz(now) - time.time()) < 2


@settings(deadline=None, max_examples=300)  # the parser's time varies with the machine's load
@example(
    text_pieces=["000000\x1f\x80\x80\x80\x80\x80\U00010000\U00010000\U00010000" + "0"], html_pieces=[]
)  # a full last line
@given(
    text_pieces=st.lists(st.text(max_size=300), max_size=8),
    html_pieces=st.lists(
        st.sampled_from(['<a href="', "https://t.example/c/" + "A" * 160, '">', "é €\n", " ", "=", ""])
    ),
)
def test_bodies_encoded_in_pieces_read_back_as_the_pieces_joined(
    text_pieces: list[str], html_pieces: list[str]
) -> None:
    text = QuotedPrintable("".join(map(quoted_printable_piece, text_pieces)))
    html = QuotedPrintable("".join(map(quoted_printable_piece, html_pieces)))
    data = compose(text=text, html=html).data
    body_lines = data.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert all(len(line) <= 76 for line in body_lines)
    plain, rich = bodies(parsed(data))
    expected = "".join(text_pieces).replace("\r\n", "\n").replace("\r", "\n")
    assert plain.replace("\r\n", "\n").rstrip("\n") == expected.rstrip("\n")
    assert rich.replace("\r\n", "\n").rstrip("\n") == "".join(html_pieces).rstrip("\n")
