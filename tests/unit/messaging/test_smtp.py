"""The send path's SMTP client (services/messaging/adapters/smtp.py, through SmtpSender) against
real servers: aiosmtpd (with and without PIPELINING offered, STARTTLS, AUTH PLAIN and LOGIN, refusals)
and scripted servers that only a pipelining client, or only a careful one, gets through."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.messaging.adapters.channels import SendError, SmtpConfig, SmtpSender
from services.messaging.domain.mime import OutgoingEmail, compose_email
from tests.certificates import ThrowawayAuthority


def email(to: str = "ada@example.com", text: str = "Hello Ada\n.a line that starts with a dot\n.") -> OutgoingEmail:
    return compose_email(
        from_name="Shop",
        from_address="shop@example.com",
        to_address=to,
        subject="Bienvenue chez nous",
        date="Fri, 01 Mar 2024 10:00:00 +0000",
        message_id=f"<{to}@rapport>",
        text=text,
        html="<p>Hello</p>",
    )


class Mailbox:
    """An aiosmtpd handler keeping what it accepts; it offers PIPELINING unless told not to (aiosmtpd
    reads commands one line at a time, so it handles pipelined ones, but does not say so itself)."""

    def __init__(self, pipelining: bool = True) -> None:
        self.pipelining = pipelining
        self.messages: list[bytes] = []
        self.logins: list[bytes | None] = []
        self.refuse_rcpt = ""
        self.refuse_data = ""
        self.data_reply_delay_s = 0.0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse_data:
            return self.refuse_data
        self.messages.append(envelope.original_content)
        self.logins.append(session.login_data)
        if self.data_reply_delay_s:
            await asyncio.sleep(self.data_reply_delay_s)
        return "250 Message accepted"


@pytest.fixture
def serve() -> Iterator[Callable[..., int]]:
    """Starts aiosmtpd servers (a thread each) for a test; gives each one's port."""
    controllers: list[Controller] = []

    def start(handler: Mailbox, **parameters: Any) -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        controller = Controller(handler, hostname="127.0.0.1", port=port, **parameters)
        controller.start()
        controllers.append(controller)
        return port

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
async def sender_of() -> AsyncIterator[Callable[..., SmtpSender]]:
    senders: list[SmtpSender] = []

    def make(port: int, **config: Any) -> SmtpSender:
        sender = SmtpSender(SmtpConfig("127.0.0.1", port, timeout_s=5.0, **config))
        senders.append(sender)
        return sender

    yield make
    for sender in senders:
        await sender.close()


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one command at a time"])
async def test_messages_arrive_whole_on_one_kept_connection(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender], pipelining: bool
) -> None:
    mailbox = Mailbox(pipelining=pipelining)
    sender = sender_of(serve(mailbox), connections=1)
    sent = [email("ada@example.com"), email("bob@example.com", text="second\r\n..two dots")]

    for message in sent:
        await sender.send(message)

    assert mailbox.messages == [message.data for message in sent]  # dot-stuffing undone, byte for byte
    parsed = message_from_bytes(mailbox.messages[0], policy=policy.default)
    assert parsed["Subject"] == "Bienvenue chez nous"
    assert len(sender._idle) == 1  # one connection carried both


async def test_a_refused_recipient_is_permanent_and_the_next_message_goes_through(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender]
) -> None:
    mailbox = Mailbox()
    sender = sender_of(serve(mailbox), connections=1)
    mailbox.refuse_rcpt = "550 5.1.1 no such user"

    with pytest.raises(SendError, match="550") as refused:
        await sender.send(email("nobody@example.com"))
    assert refused.value.permanent
    mailbox.refuse_rcpt = "451 4.3.0 try again later"
    with pytest.raises(SendError, match="451") as deferred:
        await sender.send(email("later@example.com"))
    assert not deferred.value.permanent

    mailbox.refuse_rcpt = ""
    await sender.send(email("ada@example.com"))
    assert len(mailbox.messages) == 1


async def test_a_message_refused_at_its_end_is_permanent(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender]
) -> None:
    mailbox = Mailbox()
    mailbox.refuse_data = "554 5.7.1 rejected as spam"
    sender = sender_of(serve(mailbox))

    with pytest.raises(SendError, match="554") as refused:
        await sender.send(email())
    assert refused.value.permanent


async def test_an_unreachable_server_is_transient(sender_of: Callable[..., SmtpSender]) -> None:
    with pytest.raises(SendError, match="unreachable") as failed:
        await sender_of(1).send(email())
    assert not failed.value.permanent


class HandOverSpy:
    """Records when the hand-over is written, and whether the server had sent its reply then."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.written_with_messages: list[int] = []

    def write_now(self) -> None:
        self.written_with_messages.append(len(self.mailbox.messages))


async def test_the_hand_over_is_written_after_the_final_line_and_before_the_reply(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender]
) -> None:
    mailbox = Mailbox()
    mailbox.data_reply_delay_s = 0.3  # the server keeps the message, then holds its 250
    sender = sender_of(serve(mailbox))
    spy = HandOverSpy(mailbox)

    sending = asyncio.create_task(sender.send(email(), spy))
    await asyncio.sleep(0.2)

    assert spy.written_with_messages and not sending.done()  # written while the reply was held
    await sending
    assert spy.written_with_messages == [spy.written_with_messages[0]]


async def test_no_hand_over_when_the_server_refuses_before_the_message(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender]
) -> None:
    mailbox = Mailbox()
    mailbox.refuse_rcpt = "550 no such user"
    spy = HandOverSpy(mailbox)

    with pytest.raises(SendError):
        await sender_of(serve(mailbox)).send(email(), spy)
    assert spy.written_with_messages == []


# ---------------------------------------------------------------------------- STARTTLS and AUTH
@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client's context that trusts it) from a throwaway CA."""
    authority = ThrowawayAuthority.create(Path(tmp_path_factory.mktemp("smtp-tls")), "smtp")
    pair = authority.server_certificate()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pair.cert_file, pair.key_file)
    return server, ssl.create_default_context(cafile=str(authority.ca_file))


def accept(user: str, password: str) -> Callable[..., AuthResult]:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        valid = auth_data.login == user.encode() and auth_data.password == password.encode()
        return AuthResult(success=valid, handled=False, auth_data=auth_data)  # a failure: aiosmtpd answers 535

    return authenticator


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_starttls_then_auth_then_the_message(
    serve: Callable[..., int],
    sender_of: Callable[..., SmtpSender],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    mechanism: str,
) -> None:
    server_tls, client_tls = tls
    mailbox = Mailbox()
    port = serve(
        mailbox,
        tls_context=server_tls,
        require_starttls=True,
        authenticator=accept("shop", "s3cret"),
        auth_required=True,
        auth_exclude_mechanism=[other for other in ("PLAIN", "LOGIN") if other != mechanism],
    )
    sender = sender_of(port, starttls=True, username="shop", password="s3cret", tls_context=client_tls)

    await sender.send(email())
    await sender.send(email("bob@example.com"))

    assert mailbox.logins == [b"shop", b"shop"]


async def test_a_wrong_password_is_a_permanent_refusal(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, client_tls = tls
    port = serve(Mailbox(), tls_context=server_tls, require_starttls=True, authenticator=accept("shop", "s3cret"))
    sender = sender_of(port, starttls=True, username="shop", password="wrong", tls_context=client_tls)

    with pytest.raises(SendError, match="535") as refused:
        await sender.send(email())
    assert refused.value.permanent


async def test_starttls_to_a_server_whose_certificate_is_not_trusted_fails(
    serve: Callable[..., int], sender_of: Callable[..., SmtpSender], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_tls, _ = tls
    mailbox = Mailbox()
    sender = sender_of(serve(mailbox, tls_context=server_tls), starttls=True)  # the system's CAs

    with pytest.raises(SendError, match="STARTTLS failed") as failed:
        await sender.send(email())
    assert not failed.value.permanent and mailbox.messages == []


# ---------------------------------------------------------------------------- scripted servers
class ScriptedServer:
    """A server in a thread reading raw bytes: it answers the envelope only once MAIL, RCPT and DATA
    have all arrived (a client that waits for each reply before the next command never gets one),
    and records every message's final line."""

    def __init__(self, rcpt_reply: bytes = b"250 OK\r\n") -> None:
        self.rcpt_reply = rcpt_reply
        self.received = bytearray()
        self.ended_messages = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def __aenter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self._thread.join, 5)  # the event loop closes the client's side meanwhile
        self._listener.close()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection:
            connection.settimeout(5)
            connection.sendall(b"220 scripted ESMTP\r\n")
            self._read_until(connection, b"\r\n")
            connection.sendall(b"250-scripted\r\n250-8BITMIME\r\n250 PIPELINING\r\n")
            self._read_until(connection, b"DATA\r\n")  # nothing is answered before the whole envelope
            # A lenient server: it opens DATA even after refusing the only recipient.
            connection.sendall(b"250 OK\r\n" + self.rcpt_reply + b"354 go ahead\r\n")
            try:
                self._read_until(connection, b"\r\n.\r\n")
            except (TimeoutError, ConnectionError):
                return
            self.ended_messages += 1
            connection.sendall(b"250 kept\r\n")
            self._read_until(connection, b"QUIT\r\n")
            connection.sendall(b"221 bye\r\n")

    def _read_until(self, connection: socket.socket, marker: bytes) -> None:
        while marker not in self.received:
            chunk = connection.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.received += chunk
        del self.received[: self.received.index(marker) + len(marker)]


async def test_the_envelope_is_pipelined_when_the_server_offers_it(sender_of: Callable[..., SmtpSender]) -> None:
    async with ScriptedServer() as server:
        sender = sender_of(server.port)
        await sender.send(email())
        await sender.close()
    assert server.ended_messages == 1


async def test_after_a_refused_recipient_the_message_is_never_ended_even_if_data_is_accepted(
    sender_of: Callable[..., SmtpSender],
) -> None:
    async with ScriptedServer(rcpt_reply=b"550 no such user\r\n") as server:
        with pytest.raises(SendError, match="550"):
            await sender_of(server.port).send(email())
    assert server.ended_messages == 0
