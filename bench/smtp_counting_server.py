"""A lean but real SMTP server for benchmarks: it counts the messages it accepts by their
`X-Rapport-Trigger` header, and keeps nothing else.

aiosmtpd, which the tests use, costs about 2 ms of CPU per message (a coroutine per command, a
StreamReader per line, an Envelope and a Session per transaction). Measuring messaging's
throughput with it on a small machine takes that CPU from the services being measured. This one
is an asyncio Protocol on uvloop that handles whatever has arrived in one go (a message's end is
searched for, and its dots unstuffed, over the whole message at once) and answers it in one write,
in a thread of its own (the bench reads the counts while it runs).

What it speaks, RFC 5321 and RFC 2920: the greeting, EHLO (PIPELINING, 8BITMIME, SIZE) and HELO,
MAIL FROM (with a SIZE parameter), RCPT TO, DATA with dot-unstuffing, RSET, NOOP, VRFY, QUIT,
and the reply codes for commands out of sequence (503), bad syntax (501), unknown commands (500),
an overlong line (500) and a message over the size limit (552). Any sender and recipient is
accepted; no STARTTLS, no AUTH.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from typing import cast

import uvloop

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MAX_LINE_BYTES = 1000 * 8  # 1000 per RFC 5321 4.5.3.1.6, generously
_TRIGGER_HEADER = b"x-rapport-trigger:"


class MessageCount:
    """Messages accepted, by trigger key (their X-Rapport-Trigger header; "" without one), and
    when each arrived (time.monotonic()); with `keep_messages`, the messages too (tests)."""

    def __init__(self, keep_messages: bool = False) -> None:
        self.by_trigger: Counter[str] = Counter()
        self.arrivals: list[float] = []
        self.messages: list[bytes] = []
        self._keep_messages = keep_messages
        self._lock = threading.Lock()

    def add(self, message: bytes) -> None:
        key = trigger_of(message)
        with self._lock:
            self.by_trigger[key] += 1
            self.arrivals.append(time.monotonic())
            if self._keep_messages:
                self.messages.append(message)

    def total(self) -> int:
        with self._lock:
            return sum(self.by_trigger.values())


def trigger_of(message: bytes) -> str:
    """The X-Rapport-Trigger header's value (unfolded, trimmed), searched in the header section
    only; "" when the message has none."""
    header_end = message.find(b"\r\n\r\n")
    headers = message if header_end < 0 else message[: header_end + 2]
    lines = headers.split(b"\r\n")
    for index, line in enumerate(lines):
        if line[: len(_TRIGGER_HEADER)].lower() == _TRIGGER_HEADER:
            value = [line[len(_TRIGGER_HEADER) :]]
            for continued in lines[index + 1 :]:
                if continued[:1] not in (b" ", b"\t"):
                    break
                value.append(continued)
            return b"".join(value).strip().decode("utf-8", "replace")
    return ""


class SmtpSession(asyncio.Protocol):
    """One client connection: a command state machine fed by whatever bytes have arrived."""

    def __init__(self, count: MessageCount, hostname: str) -> None:
        self._count = count
        self._hostname = hostname
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._greeted = False
        self._sender: bytes | None = None
        self._recipients = 0
        self._in_data = False
        self._scanned = 0  # how much of the message in the buffer was searched for its end
        self._too_big = False
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is one, not a subclass
        self._transport.write(b"220 %s ESMTP counting sink\r\n" % self._hostname.encode())

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        replies: list[bytes] = []
        start = 0
        while not self._closing:
            if self._in_data:
                ended = self._message_end(start)
                if ended < 0:
                    break
                replies.append(self._accept(bytes(self._buffer[start:ended])))
                start = ended + 3  # past the "." line
                continue
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buffer[start:end])
            start = end + 1
            replies.append(self._command(line[:-1] if line.endswith(b"\r") else line))
        del self._buffer[:start]
        if self._in_data and len(self._buffer) > MAX_MESSAGE_BYTES + 4:
            self._too_big = True  # refused when it ends; only what may hold the end is kept
            del self._buffer[:-4]
            self._scanned = 0
        elif not self._in_data and len(self._buffer) > MAX_LINE_BYTES:
            self._buffer.clear()
            replies.append(b"500 Error: line too long\r\n")
        if replies and self._transport is not None:
            self._transport.write(b"".join(replies))
        if self._closing and self._transport is not None:
            self._transport.close()

    def _message_end(self, start: int) -> int:
        """Where the "." line that ends the message starting at `start` begins, or -1 if it has
        not arrived. The message is searched as a whole (in C), not line by line."""
        if not self._too_big and self._buffer.startswith(b".\r\n", start):
            return start  # an empty message
        found = self._buffer.find(b"\r\n.\r\n", max(start, start + self._scanned - 4))
        if found < 0:
            self._scanned = len(self._buffer) - start
            return -1
        return found + 2

    def _accept(self, message: bytes) -> bytes:
        """A whole message (its lines with their CRLFs, still dot-stuffed) has arrived."""
        too_big = self._too_big or len(message) > MAX_MESSAGE_BYTES
        self._in_data = False
        self._reset()
        if too_big:
            return b"552 Error: message too large\r\n"
        # Dot-unstuffing (RFC 5321 4.5.2): a line's leading "." was doubled by the client.
        if message.startswith(b"."):
            message = message[1:]
        self._count.add(message.replace(b"\r\n.", b"\r\n"))
        return b"250 OK\r\n"

    def _command(self, line: bytes) -> bytes:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        argument = argument.strip()
        if verb in (b"EHLO", b"HELO"):
            if not argument:
                return b"501 Syntax: %s hostname\r\n" % verb
            self._greeted = True
            self._reset()
            if verb == b"HELO":
                return b"250 %s\r\n" % self._hostname.encode()
            return b"250-%s\r\n250-SIZE %d\r\n250-8BITMIME\r\n250 PIPELINING\r\n" % (
                self._hostname.encode(),
                MAX_MESSAGE_BYTES,
            )
        if verb == b"MAIL":
            return self._mail(argument)
        if verb == b"RCPT":
            if self._sender is None:
                return b"503 Error: need MAIL command\r\n"
            if not argument.upper().startswith(b"TO:") or not _address(argument[3:]):
                return b"501 Syntax: RCPT TO: <address>\r\n"
            self._recipients += 1
            return b"250 OK\r\n"
        if verb == b"DATA":
            if argument:
                return b"501 Syntax: DATA\r\n"
            if not self._recipients:
                return b"503 Error: need RCPT command\r\n"
            self._in_data = True
            self._scanned = 0
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"RSET":
            self._reset()
            return b"250 OK\r\n"
        if verb == b"NOOP":
            return b"250 OK\r\n"
        if verb == b"VRFY":
            return b"252 Cannot VRFY user, but will accept message and attempt delivery\r\n"
        if verb == b"QUIT":
            self._closing = True
            return b"221 Bye\r\n"
        return b"500 Error: command not recognized\r\n"

    def _mail(self, argument: bytes) -> bytes:
        if not self._greeted:
            return b"503 Error: send HELO first\r\n"
        if self._sender is not None:
            return b"503 Error: nested MAIL command\r\n"
        if not argument.upper().startswith(b"FROM:"):
            return b"501 Syntax: MAIL FROM: <address>\r\n"
        path, _, parameters = argument[5:].strip().partition(b" ")
        if not _address(path) and path != b"<>":
            return b"501 Syntax: MAIL FROM: <address>\r\n"
        for parameter in parameters.split():
            name, _, value = parameter.partition(b"=")
            if name.upper() == b"SIZE":
                if not value.isdigit():
                    return b"501 Syntax: MAIL FROM: <address> [SIZE=<size>]\r\n"
                if int(value) > MAX_MESSAGE_BYTES:
                    return b"552 Error: message size exceeds fixed maximum message size\r\n"
            elif name.upper() not in (b"BODY", b"SMTPUTF8"):
                return b"555 MAIL FROM parameters not recognized or not implemented\r\n"
        self._sender = path
        return b"250 OK\r\n"

    def _reset(self) -> None:
        self._sender = None
        self._recipients = 0
        self._scanned = 0
        self._too_big = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None  # a transaction cut off before its "." counts nothing


def _address(path: bytes) -> bool:
    path = path.strip()
    return len(path) > 2 and path.startswith(b"<") and path.endswith(b">")


class CountingSmtpServer:
    """The server on its own event loop (uvloop) in a background thread: `start()`, then read
    `count` while it runs, then `stop()`."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, hostname: str = "sink.bench", keep_messages: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.count = MessageCount(keep_messages)
        self._hostname = hostname
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> CountingSmtpServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = uvloop.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(lambda: SmtpSession(self.count, self._hostname), self.host, self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=serve, name="smtp-counting-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None or self._thread is None:
            return

        async def close() -> None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
            loop.stop()

        asyncio.run_coroutine_threadsafe(close(), loop)
        self._thread.join(5)
        self._server = None
