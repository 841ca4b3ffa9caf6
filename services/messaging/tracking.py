"""The HTTP endpoint recipients reach from a message: the open pixel, tracked clicks (redirects)
and the unsubscribe page (GET shows a form, POST unsubscribes: link scanners that prefetch GET
never unsubscribe anyone; RFC 8058 one-click POSTs work too). Opens and clicks become
EMAIL_OPEN / EMAIL_CLICK events in the profile service, so decisions learn from them."""

from __future__ import annotations

import asyncio
import base64
import html
from typing import Any

import structlog
from aiohttp import web

from rapport.common.v1 import event_pb2, identifier_pb2
from services.common.clock import now_ms
from services.common.identity_client import IdentityClient
from services.messaging.adapters.peers import ProfileTracker
from services.messaging.domain.tokens import InvalidToken, MessageTokens
from services.messaging.messaging import Messaging

log = structlog.get_logger("rapport.messaging.tracking")
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
# Identifier types preferred to stand for a person in tracked events (most stable first).
PREFERRED_TYPES = ("IDENTIFIER_TYPE_CUSTOMER_ID", "IDENTIFIER_TYPE_EMAIL_SHA256")


class TrackingEndpoint:
    def __init__(
        self, messaging: Messaging, tokens: MessageTokens, identity: IdentityClient, tracker: ProfileTracker
    ) -> None:
        self._messaging = messaging
        self._tokens = tokens
        self._identity = identity
        self._tracker = tracker
        self._background: set[asyncio.Task[Any]] = set()

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes(
            [
                web.get("/o/{token}.gif", self.open),
                web.get("/c/{token}", self.click),
                web.get("/u/{token}", self.unsubscribe_page),
                web.post("/u/{token}", self.unsubscribe),
                web.get("/healthz", self.healthz),
            ]
        )
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def open(self, request: web.Request) -> web.Response:
        try:
            opened = self._tokens.read_open(request.match_info["token"], now_ms())
        except InvalidToken:
            return web.Response(body=PIXEL, content_type="image/gif")  # never a broken image
        self._report(opened.delivery_id, event_pb2.EVENT_TYPE_EMAIL_OPEN, "")
        return web.Response(body=PIXEL, content_type="image/gif", headers={"cache-control": "no-store"})

    async def click(self, request: web.Request) -> web.Response:
        try:
            click = self._tokens.read_click(request.match_info["token"], now_ms())
        except InvalidToken:
            raise web.HTTPNotFound(text="This link is not valid.") from None
        self._report(click.delivery_id, event_pb2.EVENT_TYPE_EMAIL_CLICK, click.target_url)
        raise web.HTTPFound(click.target_url)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        try:
            self._tokens.read_unsubscribe(token, now_ms())
        except InvalidToken:
            raise web.HTTPNotFound(text="This unsubscribe link is not valid.") from None
        page = (
            "<!doctype html><meta charset=utf-8><title>Unsubscribe</title>"
            "<p>Stop receiving these messages? / Ne plus recevoir ces messages ?</p>"
            f'<form method=post action="/u/{html.escape(token)}"><button>Unsubscribe / Se désabonner</button></form>'
        )
        return web.Response(text=page, content_type="text/html")

    async def unsubscribe(self, request: web.Request) -> web.Response:
        try:
            await self._messaging.unsubscribe(request.match_info["token"])
        except InvalidToken:
            raise web.HTTPNotFound(text="This unsubscribe link is not valid.") from None
        return web.Response(
            text="<!doctype html><meta charset=utf-8><p>You are unsubscribed. / Vous êtes désabonné(e).</p>",
            content_type="text/html",
        )

    def _report(self, delivery_id: str, kind: int, url: str) -> None:
        task = asyncio.create_task(self._send_event(delivery_id, kind, url))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_event(self, delivery_id: str, kind: int, url: str) -> None:
        try:
            delivery = await self._messaging.delivery(delivery_id)
            identifiers = await self._identity.identifiers_of(delivery.person_id)
            if not identifiers:
                return
            ranked = sorted(
                identifiers,
                key=lambda identifier: (
                    PREFERRED_TYPES.index(identifier_type_name(identifier.type))
                    if identifier_type_name(identifier.type) in PREFERRED_TYPES
                    else len(PREFERRED_TYPES)
                ),
            )
            await self._tracker.track(ranked[0], kind, delivery_id, url)
        except Exception:
            log.warning("tracking_event_lost", delivery=delivery_id, exc_info=True)


def identifier_type_name(value: int) -> str:
    return identifier_pb2.IdentifierType.Name(value)  # type: ignore[arg-type]


async def start_tracking(endpoint: TrackingEndpoint, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(endpoint.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = [address[1] for address in runner.addresses if isinstance(address, tuple)]
    return runner, int(bound[0]) if bound else port
