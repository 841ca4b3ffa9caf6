"""The real protocols: email over SMTP (pooled connections, STARTTLS and AUTH by settings), push
and audience sync as JSON over HTTP. Failures are classified transient or permanent here, so
the sender knows whether to retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.status import SMTPStatus

from services.messaging.domain.mime import OutgoingEmail


class HandOver(Protocol):
    """Records that an email was handed to the server (see SmtpSender.send)."""

    def write_now(self) -> None: ...


class SendError(Exception):
    """A failed send; `permanent` ones are never retried."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int
    starttls: bool = False
    username: str = ""
    password: str = ""
    connections: int = 8
    timeout_s: float = 10.0


class SmtpSender:
    """A small pool of persistent SMTP connections; each message is its own SMTP transaction."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._slots = asyncio.Semaphore(config.connections)

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self._config.host,
            port=self._config.port,
            timeout=self._config.timeout_s,
            start_tls=self._config.starttls,
        )
        await client.connect()
        if self._config.username:
            await client.login(self._config.username, self._config.password)
        return client

    async def send(self, message: OutgoingEmail, handing_over: HandOver | None = None) -> None:
        """One SMTP transaction. `handing_over`, when given, is written once the whole message,
        its final "." line included, is in the kernel's socket buffer, in the same step (no await
        in between): the server accepts the message when it reads that line, and a process killed
        after that step still has the kernel deliver the line and the record (HandOverNote)."""
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await self._transaction(client, message, handing_over)
            except aiosmtplib.SMTPResponseException as error:
                await _close(client)
                raise SendError(f"SMTP {error.code} {error.message}", permanent=500 <= error.code < 600) from error
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await _close(client)
                raise SendError(f"SMTP unreachable: {type(error).__name__}: {error}", permanent=False) from error
            except BaseException:  # the hand-over could not be recorded: the message is never ended
                if client is not None:
                    client.close()
                raise
            self._idle.put_nowait(client)

    async def _transaction(
        self, client: aiosmtplib.SMTP, message: OutgoingEmail, handing_over: HandOver | None
    ) -> None:
        sender, recipients = message.sender, message.recipients
        if not sender or not recipients:
            raise SendError("the message has no sender or no recipient", permanent=True)
        if client.last_ehlo_response is None:
            await client.ehlo()
        mail_options: list[str] = []
        utf8 = not (sender + "".join(recipients)).isascii()
        if utf8:
            if not client.supports_extension("smtputf8"):
                raise SendError("a non-ASCII address and a server without SMTPUTF8", permanent=True)
            mail_options.append("SMTPUTF8")
        body = wire_body(message.data)
        await client.mail(sender, options=mail_options, encoding="utf-8" if utf8 else "ascii")
        for recipient in recipients:
            await client.rcpt(recipient, encoding="utf-8" if utf8 else "ascii")
        started = await client.execute_command(b"DATA")
        if started.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(started.code, started.message)
        protocol = client.protocol
        if protocol is None or protocol.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        protocol.write(body + b".\r\n")
        transport = protocol.transport
        # Wait until the message is all in the kernel (the transport keeps what the socket did not
        # take yet). aiosmtplib has no public drain, and the message is almost always taken at once.
        while transport.get_write_buffer_size():  # type: ignore[attr-defined]  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        if handing_over is not None:
            handing_over.write_now()
        accepted = await protocol.read_response(timeout=self._config.timeout_s)
        if accepted.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(accepted.code, accepted.message)

    async def close(self) -> None:
        while not self._idle.empty():
            await _close(self._idle.get_nowait())


def wire_body(data: bytes) -> bytes:
    """A message as DATA transmits it, the way aiosmtplib's own DATA command prepares it: CRLF
    line ends (a lone CR or LF becomes CRLF), a final CRLF, and dot-stuffing (RFC 5321 4.5.2).
    Composed messages have CRLF line ends already: that is checked by counting, and only a message
    that fails the check goes through aiosmtplib's regular expressions (which cost a few per cent
    of a send's CPU on every message)."""
    line_ends = data.count(b"\r\n")
    if data.count(b"\r") != line_ends or data.count(b"\n") != line_ends or not data.endswith(b"\r\n"):
        return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(data))
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is None:
        return
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


def http_failure(status: int, body: str) -> SendError:
    transient = status in (408, 425, 429) or status >= 500
    return SendError(f"HTTP {status}: {body[:200]}", permanent=not transient)


class HttpSender:
    """JSON POSTs to the push and audience endpoints, over one pooled session."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def post_json(self, url: str, payload: Mapping[str, Any], bearer: str = "") -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = {"content-type": "application/json"}
        if bearer:
            headers["authorization"] = f"Bearer {bearer}"
        try:
            async with self._session.post(url, data=json.dumps(payload), headers=headers) as response:
                if response.status >= 300:
                    raise http_failure(response.status, await response.text())
        except (aiohttp.ClientError, TimeoutError) as error:
            raise SendError(f"HTTP endpoint unreachable: {type(error).__name__}: {error}", permanent=False) from error

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
