"""SMTP client of the send path (RFC 5321): one connection per `SmtpConnection`, kept open across
messages, STARTTLS and AUTH (PLAIN, LOGIN) as configured, and the envelope pipelined (RFC 2920)
when the server offers PIPELINING: MAIL FROM, RCPT TO and DATA go in one write and their replies
are read in order, two round trips per message instead of four.

aiosmtplib, used before, cannot pipeline (its protocol keeps one reply per read of the socket
and drops the others), and it spent a task per reply wait (`asyncio.wait_for`). This client
parses every complete reply a read brings, and exposes the one step the sender's exactly-once
record needs: the message's final line written, the hand-over written right after it, with no
await in between (`send`, see SmtpSender in channels.py).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, cast

MAX_REPLY_BYTES = 64 * 1024  # a reply longer than this (even EHLO's) is not a server speaking SMTP
_CONTROL = re.compile(r"[\x00-\x20\x7f<>]")  # never in an address of the envelope (nor a space)


class HandOver(Protocol):
    """Records that an email was handed to the server (see `SmtpConnection.send`)."""

    def write_now(self) -> None: ...


class SmtpError(Exception):
    """The connection failed: refused, lost, timed out, or the server broke the protocol. The
    message may be sent again later."""


class SmtpRefused(Exception):
    """The server answered a command with an error reply (4xx: try again later; 5xx: never)."""

    def __init__(self, command: str, code: int, text: str) -> None:
        super().__init__(f"{command}: {code} {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class SmtpReply:
    code: int
    text: str  # the lines' texts, joined by newlines


class _Replies(asyncio.Protocol):
    """The client side of the socket: parses every complete reply that arrives (several may share
    a read when commands are pipelined) and hands them out in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._replies: collections.deque[SmtpReply] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.error: SmtpError | None = None  # set once the connection is lost or unusable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while (reply := self._parse()) is not None:
                self._replies.append(reply)
        except SmtpError as error:
            self._fail(error)
            if self.transport is not None:
                self.transport.abort()
        self._wake()

    def eof_received(self) -> bool:
        self._fail(SmtpError("the server closed the connection"))
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SmtpError(f"the connection was lost: {exc or 'closed'}"))

    def _fail(self, error: SmtpError) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _parse(self) -> SmtpReply | None:
        """The first complete reply in the buffer (taken out of it), or None."""
        start = 0
        lines: list[str] = []
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start:end]).rstrip(b"\r")
            start = end + 1
            code = line[:3]
            separator = line[3:4]
            if not code.isdigit() or separator not in (b"", b" ", b"-"):
                raise SmtpError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:].decode("utf-8", "replace"))
            if separator != b"-":
                del self._buffer[:start]
                return SmtpReply(int(code), "\n".join(lines))
        if len(self._buffer) > MAX_REPLY_BYTES:
            raise SmtpError("a reply longer than 64 KiB")
        return None

    @property
    def quiet(self) -> bool:
        """Open, and nothing received that no command asked for (a 421 before closing, say)."""
        return self.error is None and not self._replies and not self._buffer

    async def reply(self, timeout_s: float) -> SmtpReply:
        if not self._replies and self.error is None:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(timeout_s):
                    while not self._replies and self.error is None:  # a read may bring part of a reply
                        self._waiter = loop.create_future()
                        await self._waiter
            except TimeoutError:
                raise SmtpError(f"no reply within {timeout_s:g} s") from None
            finally:
                self._waiter = None
        if self._replies:
            return self._replies.popleft()
        assert self.error is not None
        raise self.error


class SmtpConnection:
    """An open, greeted (and, as configured, encrypted and authenticated) SMTP connection."""

    def __init__(self, replies: _Replies, timeout_s: float) -> None:
        self._replies = replies
        self._timeout_s = timeout_s
        self.extensions: dict[str, str] = {}  # EHLO keywords (lower case) -> their parameters
        self._awaiting_message = False  # DATA was accepted: the server reads what comes as the message
        self._refused = False  # a transaction failed: the server may still hold part of it

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        local_hostname: str,
        timeout_s: float,
        starttls: ssl.SSLContext | None = None,
        username: str = "",
        password: str = "",
    ) -> SmtpConnection:
        """Connects, reads the greeting and says EHLO (HELO if refused); with `starttls`, upgrades
        the connection (the server must offer it) and says EHLO again; with a `username`,
        authenticates. Raises SmtpError or SmtpRefused (and closes the connection)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                _, replies = await loop.create_connection(_Replies, host, port)
        except (OSError, TimeoutError) as error:
            raise SmtpError(f"cannot connect to {host}:{port}: {type(error).__name__}: {error}") from None
        connection = cls(replies, timeout_s)
        try:
            connection._expect("greeting", await replies.reply(timeout_s), 220)
            await connection._hello(local_hostname)
            if starttls is not None:
                if "starttls" not in connection.extensions:
                    raise SmtpError("the server does not offer STARTTLS")
                connection._expect("STARTTLS", await connection._command(b"STARTTLS"), 220)
                transport = replies.transport
                assert transport is not None
                try:
                    async with asyncio.timeout(timeout_s):
                        upgraded = await loop.start_tls(transport, replies, starttls, server_hostname=host)
                except (OSError, TimeoutError, ssl.SSLError) as error:
                    raise SmtpError(f"STARTTLS failed: {type(error).__name__}: {error}") from None
                if upgraded is None:
                    raise SmtpError("STARTTLS failed: the connection closed")
                replies.transport = upgraded
                await connection._hello(local_hostname)
            if username:
                await connection._authenticate(username, password)
        except BaseException:
            connection.close()
            raise
        return connection

    @property
    def usable(self) -> bool:
        """Can carry another message: open, idle, and no transaction failed on it (after a
        refusal the server may hold its sender or recipients; a new connection is simpler than
        RSET on a path that refusals seldom take)."""
        return self._idle and not self._refused

    @property
    def _idle(self) -> bool:
        """Open, and not in the middle of a message or a reply."""
        transport = self._replies.transport
        return (
            transport is not None and not transport.is_closing() and self._replies.quiet and not self._awaiting_message
        )

    @property
    def pipelining(self) -> bool:
        return "pipelining" in self.extensions

    async def send(
        self,
        sender: str,
        recipients: Sequence[str],
        body: bytes,
        handing_over: HandOver | None = None,
    ) -> None:
        """One transaction. `body` is the message as DATA transmits it (CRLF lines, dot-stuffed,
        ending with CRLF: `wire_body`); its final "." line is written after it. `handing_over`,
        when given, is written once the whole message, its final line included, is in the
        kernel's socket buffer, in the same step (no await in between): the server accepts the
        message when it reads that line, and a process killed after that step still has the
        kernel deliver the line and the record. Raises SmtpRefused (a command refused) or
        SmtpError; the connection is not `usable` after either."""
        try:
            await self._transaction(sender, recipients, body, handing_over)
        except BaseException:
            self._refused = True
            raise

    async def _transaction(
        self, sender: str, recipients: Sequence[str], body: bytes, handing_over: HandOver | None
    ) -> None:
        utf8 = not (sender + "".join(recipients)).isascii()
        if utf8 and "smtputf8" not in self.extensions:
            raise SmtpRefused("MAIL", 553, "a non-ASCII address and a server without SMTPUTF8")
        envelope = [b"MAIL FROM:<%s>%s\r\n" % (_address(sender, utf8), b" SMTPUTF8" if utf8 else b"")]
        envelope += [b"RCPT TO:<%s>\r\n" % _address(recipient, utf8) for recipient in recipients]
        envelope.append(b"DATA\r\n")
        names = ["MAIL", *(["RCPT"] * len(recipients)), "DATA"]
        if self.pipelining:
            # RFC 2920: the whole envelope in one write, then every reply, in order. A refusal is
            # reported once all are read, so that none is left to be taken for a later one's.
            self._write(b"".join(envelope))
            answers = [await self._replies.reply(self._timeout_s) for _ in envelope]
            self._awaiting_message = answers[-1].code == 354
            for name, answer in zip(names, answers, strict=True):
                self._expect(name, answer, 354 if name == "DATA" else 250, 251 if name == "RCPT" else 250)
        else:
            for name, command in zip(names, envelope, strict=True):
                answer = await self._command(command)
                self._awaiting_message = answer.code == 354
                self._expect(name, answer, 354 if name == "DATA" else 250, 251 if name == "RCPT" else 250)
        self._write(body + b".\r\n")
        self._awaiting_message = False
        transport = self._replies.transport
        assert transport is not None
        # Wait until the message is all in the kernel (the transport keeps what the socket did not
        # take yet; a message is almost always taken at once).
        while transport.get_write_buffer_size():
            if self._replies.error is not None:
                raise self._replies.error
            await asyncio.sleep(0.001)
        if handing_over is not None:
            handing_over.write_now()
        self._expect("end of DATA", await self._replies.reply(self._timeout_s), 250)

    async def quit(self) -> None:
        """Says QUIT (unless a message was left unfinished: the server would take it as text)
        and closes the connection."""
        try:
            if self._idle:
                await self._command(b"QUIT", timeout_s=min(self._timeout_s, 2.0))
        except (SmtpError, OSError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Closes at once; a message in progress (its final line unsent) is discarded by the server."""
        if self._replies.transport is not None:
            self._replies.transport.close()

    # ------------------------------------------------------------------ steps
    def _write(self, data: bytes) -> None:
        transport = self._replies.transport
        if self._replies.error is not None:
            raise self._replies.error
        if transport is None or transport.is_closing():
            raise SmtpError("the connection is closed")
        transport.write(data)

    async def _command(self, line: bytes, timeout_s: float | None = None) -> SmtpReply:
        self._write(line if line.endswith(b"\r\n") else line + b"\r\n")
        return await self._replies.reply(timeout_s or self._timeout_s)

    async def _hello(self, local_hostname: str) -> None:
        name = local_hostname.encode("ascii", "replace")
        answer = await self._command(b"EHLO " + name)
        self.extensions = {}
        if answer.code == 250:
            for line in answer.text.split("\n")[1:]:
                keyword, _, parameters = line.strip().partition(" ")
                self.extensions[keyword.lower()] = parameters
            return
        self._expect("HELO", await self._command(b"HELO " + name), 250)  # a server without ESMTP

    async def _authenticate(self, username: str, password: str) -> None:
        offered = self.extensions.get("auth", "").upper().split()
        if "PLAIN" in offered:
            token = base64.b64encode(b"\0%s\0%s" % (username.encode(), password.encode()))
            self._expect("AUTH PLAIN", await self._command(b"AUTH PLAIN " + token), 235)
        elif "LOGIN" in offered:
            self._expect("AUTH LOGIN", await self._command(b"AUTH LOGIN"), 334)
            self._expect("AUTH LOGIN", await self._command(base64.b64encode(username.encode())), 334)
            self._expect("AUTH LOGIN", await self._command(base64.b64encode(password.encode())), 235)
        else:
            raise SmtpError(f"the server offers no AUTH mechanism this client speaks (PLAIN, LOGIN): {offered}")

    @staticmethod
    def _expect(command: str, reply: SmtpReply, *codes: int) -> None:
        if reply.code not in codes:
            raise SmtpRefused(command, reply.code, reply.text)


def _address(address: str, utf8: bool) -> bytes:
    """An envelope address as it goes between the angle brackets: nothing that could end the
    command or start another (control characters, spaces, brackets) gets through."""
    if not address or _CONTROL.search(address):
        raise SmtpRefused("MAIL", 553, f"not an address the envelope can carry: {address[:80]!r}")
    return address.encode("utf-8" if utf8 else "ascii")
