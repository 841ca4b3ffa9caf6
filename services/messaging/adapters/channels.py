"""The real protocols: email over SMTP (pooled connections, STARTTLS and AUTH by settings), push
and audience sync as JSON over HTTP. Failures are classified transient or permanent here, so
the sender knows whether to retry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import aiosmtplib


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

    async def send(self, message: EmailMessage) -> None:
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await client.send_message(message)
            except aiosmtplib.SMTPResponseException as error:
                await _close(client)
                raise SendError(f"SMTP {error.code} {error.message}", permanent=500 <= error.code < 600) from error
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
                await _close(client)
                raise SendError(f"SMTP unreachable: {type(error).__name__}: {error}", permanent=False) from error
            self._idle.put_nowait(client)

    async def close(self) -> None:
        while not self._idle.empty():
            await _close(self._idle.get_nowait())


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
