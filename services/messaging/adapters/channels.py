"""The real protocols: email over SMTP (pooled connections, STARTTLS and AUTH by settings, the
envelope pipelined when the server allows it: adapters/smtp.py), push and audience sync as JSON
over HTTP. Failures are classified transient or permanent here, so the sender knows whether to
retry."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.messaging.adapters.smtp import HandOver, SmtpConnection, SmtpError, SmtpRefused
from services.messaging.domain.mime import OutgoingEmail

_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")  # CRLF, or a lone LF or CR
_LEADING_DOT = re.compile(rb"(?m)^\.")


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
    # The certificates STARTTLS trusts; None: the system's (tests pass their throwaway CA's).
    tls_context: ssl.SSLContext | None = None


class SmtpSender:
    """A small pool of persistent SMTP connections; each message is its own SMTP transaction."""

    def __init__(self, config: SmtpConfig) -> None:
        self._config = config
        self._idle: list[SmtpConnection] = []
        self._slots = asyncio.Semaphore(config.connections)
        self._local_hostname = ""
        self._tls: ssl.SSLContext | None = None

    async def _connect(self) -> SmtpConnection:
        if not self._local_hostname:  # what EHLO names (as aiosmtplib and smtplib do); DNS: not on the loop
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        if self._config.starttls and self._tls is None:
            self._tls = self._config.tls_context or ssl.create_default_context()
        return await SmtpConnection.open(
            self._config.host,
            self._config.port,
            local_hostname=self._local_hostname,
            timeout_s=self._config.timeout_s,
            starttls=self._tls if self._config.starttls else None,
            username=self._config.username,
            password=self._config.password,
        )

    async def send(self, message: OutgoingEmail, handing_over: HandOver | None = None) -> None:
        """One SMTP transaction. `handing_over`, when given, is written once the whole message,
        its final "." line included, is in the kernel's socket buffer, in the same step (no await
        in between): the server accepts the message when it reads that line, and a process killed
        after that step still has the kernel deliver the line and the record (HandOverNote)."""
        if not message.sender or not message.recipients:
            raise SendError("the message has no sender or no recipient", permanent=True)
        async with self._slots:
            connection: SmtpConnection | None = None
            while self._idle and connection is None:
                connection = self._idle.pop()
                if not connection.usable:  # closed by the server while idle
                    connection.close()
                    connection = None
            try:
                if connection is None:
                    connection = await self._connect()
                await connection.send(message.sender, message.recipients, wire_body(message.data), handing_over)
            except SmtpRefused as error:
                await _quit(connection)
                raise SendError(f"SMTP {error.code} {error.text}", permanent=500 <= error.code < 600) from error
            except (SmtpError, OSError) as error:
                await _quit(connection)
                raise SendError(f"SMTP unreachable: {type(error).__name__}: {error}", permanent=False) from error
            except BaseException:  # the hand-over record failed, or the send was cancelled
                if connection is not None:
                    connection.close()
                raise
            self._idle.append(connection)

    async def close(self) -> None:
        while self._idle:
            await self._idle.pop().quit()


def wire_body(data: bytes) -> bytes:
    """A message as DATA transmits it, the way smtplib and aiosmtplib prepare it: CRLF line ends
    (a lone CR or LF becomes CRLF), a final CRLF, and dot-stuffing (RFC 5321 4.5.2). Composed
    messages have CRLF line ends already: that is checked by counting, and only a message that
    fails the check goes through the regular expressions (which cost a few per cent of a send's
    CPU on every message)."""
    line_ends = data.count(b"\r\n")
    if data.count(b"\r") != line_ends or data.count(b"\n") != line_ends or not data.endswith(b"\r\n"):
        normalized = _LINE_ENDS.sub(b"\r\n", data)
        if not normalized.endswith(b"\r\n"):
            normalized += b"\r\n"
        return _LEADING_DOT.sub(b"..", normalized)
    stuffed = data.replace(b"\n.", b"\n..")
    return b"." + stuffed if stuffed.startswith(b".") else stuffed


async def _quit(connection: SmtpConnection | None) -> None:
    if connection is not None:
        await connection.quit()


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
