"""The benchmark's lean SMTP server (bench/smtp_counting_server.py) spoken to by Python's own
SMTP client: messages counted by their trigger header, dot-unstuffed, several on one connection,
pipelined commands, and the replies to commands out of sequence."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator

import pytest

from bench.smtp_counting_server import CountingSmtpServer, trigger_of

DOTTED_BODY = ".starts with a dot\r\n..starts with two\r\n.\r\nafter a line that is a dot\r\nlast line\r\n"


def message(trigger: str | None, body: str = "hello\r\n") -> bytes:
    header = f"X-Rapport-Trigger: {trigger}\r\n" if trigger is not None else ""
    return (f"From: shop@example.com\r\nTo: ada@example.com\r\nSubject: hi\r\n{header}\r\n{body}").encode()


@pytest.fixture
def server() -> Iterator[CountingSmtpServer]:
    running = CountingSmtpServer(keep_messages=True).start()
    try:
        yield running
    finally:
        running.stop()


def test_two_messages_on_one_connection_are_counted_by_trigger_and_arrive_unstuffed(
    server: CountingSmtpServer,
) -> None:
    first, second = message("welcome-p1", DOTTED_BODY), message("welcome-p2")
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        code, _ = client.ehlo("client.test")
        assert code == 250
        assert {"pipelining", "8bitmime", "size"} <= set(client.esmtp_features)
        assert client.sendmail("shop@example.com", ["ada@example.com"], first) == {}
        assert client.sendmail("shop@example.com", ["bob@example.com"], second) == {}
    assert dict(server.count.by_trigger) == {"welcome-p1": 1, "welcome-p2": 1}
    assert server.count.messages == [first, second]
    assert len(server.count.arrivals) == 2


def test_a_message_without_the_header_counts_under_no_trigger_and_repeats_add_up(server: CountingSmtpServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        client.sendmail("shop@example.com", ["ada@example.com"], message(None))
        client.sendmail("shop@example.com", ["ada@example.com"], message("cart-p1"))
        client.sendmail("shop@example.com", ["ada@example.com"], message("cart-p1"))
    assert dict(server.count.by_trigger) == {"": 1, "cart-p1": 2}


def test_commands_out_of_sequence_are_refused_and_rset_starts_over(server: CountingSmtpServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=5) as client:
        assert client.mail("shop@example.com")[0] == 503  # no EHLO yet
        client.ehlo("client.test")
        assert client.rcpt("ada@example.com")[0] == 503  # no MAIL yet
        assert client.docmd("DATA")[0] == 503
        assert client.mail("shop@example.com")[0] == 250
        assert client.mail("other@example.com")[0] == 503  # nested
        assert client.docmd("DATA")[0] == 503  # no RCPT yet
        assert client.rcpt("ada@example.com")[0] == 250
        assert client.rset()[0] == 250
        assert client.docmd("DATA")[0] == 503  # RSET dropped the envelope
        assert client.noop()[0] == 250
        assert client.docmd("FROB")[0] == 500
        assert client.docmd("MAIL", "FROM:<a@example.com> SIZE=999999999999")[0] == 552
        client.sendmail("shop@example.com", ["ada@example.com"], message("after-rset"))
    assert dict(server.count.by_trigger) == {"after-rset": 1}


def test_pipelined_commands_and_a_message_end_split_across_packets(server: CountingSmtpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as connection:
        reader = connection.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        connection.sendall(b"EHLO client.test\r\nMAIL FROM:<shop@example.com>\r\nRCPT TO:<ada@example.com>\r\nDATA\r\n")
        replies = [reader.readline() for _ in range(7)]
        assert [reply[:4] for reply in replies] == [b"250-", b"250-", b"250-", b"250 ", b"250 ", b"250 ", b"354 "]
        body = message("split", "one\r\n..two\r\n")  # the last line's CRLF, then ".", CRLF: the end
        connection.sendall(body[:-1])
        time.sleep(0.05)
        connection.sendall(b"\n.")
        time.sleep(0.05)
        connection.sendall(b"\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 ")
        assert reader.readline().startswith(b"221 ")
    assert server.count.messages == [message("split", "one\r\n.two\r\n")]


def test_the_trigger_header_is_found_in_any_case_anywhere_in_the_header_section_only() -> None:
    assert trigger_of(b"x-rapport-trigger:  k1 \r\nSubject: s\r\n\r\nbody") == "k1"
    assert trigger_of(b"Subject: s\r\nX-Rapport-Trigger: k2\r\n\r\nbody") == "k2"
    assert trigger_of(b"Subject: s\r\n\r\nX-Rapport-Trigger: in-the-body\r\n") == ""
