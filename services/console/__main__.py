"""`python -m services.console`: serve the staff console until SIGTERM (composition root)."""

from __future__ import annotations

import asyncio
import secrets
import signal

import structlog
from aiohttp import web

from services.common.auth import ApiKeyRegistry
from services.common.logging import configure_logging
from services.common.settings import load_settings
from services.common.tracing import configure_tracing, shutdown_tracing
from services.console.app import Console
from services.console.peers import RapportPeers
from services.console.sessions import SessionSigner
from services.console.settings import ConsoleSettings

log = structlog.get_logger("rapport.console")


def build_console(settings: ConsoleSettings, peers: RapportPeers) -> Console:
    keys = ApiKeyRegistry.parse(settings.api_keys)
    if len(keys) == 0:
        log.warning("no_api_keys", hint="nobody can sign in: set RAPPORT_API_KEYS (a key with scope console.view)")
    secret = settings.session_secret.encode()
    if not secret:
        log.warning("random_console_secret", hint="set RAPPORT_CONSOLE_SECRET so sign-ins survive restarts")
        secret = secrets.token_bytes(32)
    return Console(
        peers,
        keys,
        SessionSigner(secret, int(settings.session_hours * 3600)),
        secure_cookie=settings.secure_cookie,
        timeline_page_size=settings.timeline_page_size,
    )


async def serve(settings: ConsoleSettings) -> None:
    configure_tracing(settings)
    peers = RapportPeers(settings)
    console = build_console(settings, peers)
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    bound = [address[1] for address in runner.addresses if isinstance(address, tuple)]
    log.info("listening", url=f"http://{settings.host}:{bound[0] if bound else settings.port}/")
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    await stop_requested.wait()
    log.info("shutting_down", drain_s=settings.shutdown_drain_s, grace_s=settings.shutdown_grace_s)
    # As the services do: keep serving while the endpoints and balancers catch up, then give the
    # requests in flight the grace period.
    console.drain()
    await asyncio.sleep(settings.shutdown_drain_s)
    await runner.cleanup()
    await peers.close()
    await shutdown_tracing()  # the spans of the last pages still reach the collector
    log.info("stopped")


def main() -> None:
    settings = load_settings(ConsoleSettings)
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
