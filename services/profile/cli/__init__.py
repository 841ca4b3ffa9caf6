"""Command-line tools that feed the profile service through its public API (`replay`, `import_crm`),
and the client plumbing they share: the API key, the channel, retries of safe calls.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import grpc

DEFAULT_PROFILE_ADDRESS = "127.0.0.1:50052"
DEFAULT_API_KEY_FILE = Path(".state/dev-api-key")
# TrackBatch and ImportCrm both take at most 1 000 items per request (profile_service.proto).
MAX_BATCH_SIZE = 1000

# Only codes that mean "the request may not have been applied, try again": the calls we retry are
# idempotent (deterministic event ids, attribute writes), so a replay after a partial success is safe.
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})
STATUS_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}

Reply = TypeVar("Reply")


class CallFailed(Exception):
    """A call that failed for good: a non-retryable code, or retries exhausted."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--address, --api-key-file / --api-key, --timeout: the same flags for every tool."""
    parser.add_argument("--address", default=DEFAULT_PROFILE_ADDRESS, help="profile service host:port")
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-file",
        type=Path,
        default=DEFAULT_API_KEY_FILE,
        help="file holding the API key (default: the dev key `make run` writes)",
    )
    keys.add_argument("--api-key", help="the API key itself (visible in the process list: prefer a file)")
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, in seconds")


def batch_size_argument(text: str) -> int:
    """argparse type for --batch-size: 1..1000, as the RPCs accept."""
    size = int(text)
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_BATCH_SIZE}")
    return size


def read_api_key(api_key: str | None, api_key_file: Path) -> str:
    """The key given on the command line, else the first line of the key file."""
    if api_key:
        return api_key.strip()
    try:
        key = api_key_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise SystemExit(f"no API key: {api_key_file} does not exist (run `make run`, or pass --api-key)") from None
    if not key:
        raise SystemExit(f"no API key: {api_key_file} is empty")
    return key


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {api_key}"),)


def status_name(code: int) -> str:
    """'INVALID_ARGUMENT' for 3: rejection messages read better with the name."""
    return STATUS_CODE_NAMES.get(code, str(code))


def backoff_seconds(attempt: int, first: float = 0.25, ceiling: float = 8.0) -> float:
    """Exponential back-off with jitter, so parallel batches do not retry in lockstep."""
    return min(ceiling, first * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)


async def call_with_retry(
    call: Callable[[], Awaitable[Reply]],
    *,
    what: str,
    attempts: int = 6,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Reply:
    """Run `call` until it succeeds, retrying RETRYABLE_CODES with back-off; raise CallFailed otherwise."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code not in RETRYABLE_CODES:
                raise CallFailed(f"{what} failed: {code.name}: {error.details()}") from error
            if attempt == attempts:
                raise CallFailed(f"{what} failed {attempts} times, last: {code.name}: {error.details()}") from error
            await sleep(backoff_seconds(attempt))
    raise AssertionError("unreachable: the loop returns or raises")
