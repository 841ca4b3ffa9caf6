"""The console's HTTP handlers (aiohttp): sign in with an API key, search a person, the person's
page, the segments and experiments. Thin: parse the request, ask the services (peers.py), turn
the answers into rows (views.py), render a Jinja2 template. Every page but sign-in and the health
check needs a session cookie. A page continues the trace of a `traceparent` header, and is a span
of its own when spans are exported (services/common/tracing.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
import structlog
from aiohttp import web

from services.common import tracing
from services.common.auth import ApiKeyRegistry
from services.common.errors import InvalidArgument
from services.common.identifiers import parse_person_id
from services.console import views
from services.console.peers import PeerError, RapportPeers
from services.console.sessions import (
    COOKIE_NAME,
    InvalidConsoleKey,
    SessionSigner,
    StaffSession,
    safe_next_path,
    staff_for_key,
)

log = structlog.get_logger("rapport.console")
TEMPLATES = Path(__file__).parent / "templates"
LANGUAGES = ("en", "fr")
MAX_EXPERIMENTS_SHOWN = 50
# A refused key costs the caller this long: guessing keys by the thousand is not worth it.
REFUSED_SIGN_IN_DELAY_S = 0.3
HEALTH_PATH = "/healthz"
PUBLIC_PATHS = frozenset({"/login", HEALTH_PATH})
NO_SUCH_PERSON = "No such person: identity has never seen this identifier (or it was erased)."
STAFF = web.RequestKey("staff", StaffSession)
SECURITY_HEADERS = {
    # Pages hold personal data: never cached, never framed, no scripts at all.
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unavailable(error: BaseException) -> str:
    """What a section says when its service did not answer (never the error's text: it may hold input)."""
    if isinstance(error, PeerError):
        return f"The {error.service} service did not answer ({error.code.name})."
    raise error


def _route(request: web.Request) -> str:
    """The route a request matched, as a span name may hold it (`/people/{person_id}`, never the id)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _see_other(location: str) -> web.Response:
    """A redirect that is returned, not raised, so it can carry a cookie."""
    return web.Response(status=303, headers={"Location": location})


class Console:
    def __init__(
        self,
        peers: RapportPeers,
        keys: ApiKeyRegistry,
        signer: SessionSigner,
        *,
        secure_cookie: bool = False,
        timeline_page_size: int = 50,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self._peers = peers
        self._keys = keys
        self._signer = signer
        self._secure_cookie = secure_cookie
        self._timeline_page_size = timeline_page_size
        self._clock_s = clock_s
        self._draining = False
        self._templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
        )

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._trace, self._security_headers, self._require_session], client_max_size=64 * 1024
        )
        app.add_routes(
            [
                web.get(HEALTH_PATH, self.healthz),
                web.get("/login", self.login_page),
                web.post("/login", self.sign_in),
                web.post("/logout", self.sign_out),
                web.get("/", self.search_page),
                web.post("/search", self.search),
                web.get("/people/{person_id}", self.person),
                web.get("/segments", self.segments),
            ]
        )
        return app

    def drain(self) -> None:
        """Shutting down: the health check fails from now on, so the pod leaves the Service's
        endpoints while pages are still served."""
        self._draining = True

    def _now_ms(self) -> int:
        return int(self._clock_s() * 1000)

    def _render(self, request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
        staff = request.get(STAFF)
        page = self._templates.get_template(template).render(staff=staff, **context)
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    # ------------------------------------------------------------------ middlewares
    @web.middleware
    async def _trace(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The request's trace, as the services' interceptor makes an RPC's: nothing to do without
        a `traceparent` header unless spans are exported. Health checks are not traced."""
        if request.path == HEALTH_PATH:
            return await handler(request)
        trace = tracing.http_request(
            request.method,
            _route(request),
            request.headers.get(tracing.TRACEPARENT),
            request.headers.get(tracing.TRACESTATE),
        )
        if trace is None:
            return await handler(request)
        status, error = 500, None
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as answer:  # redirects and refusals are answers, not failures
            status = answer.status
            raise
        except Exception as failure:
            error = failure
            raise
        finally:
            trace.end(str(status), error)

    @web.middleware
    async def _security_headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as error:
            error.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    @web.middleware
    async def _require_session(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        session = self._signer.read(request.cookies.get(COOKIE_NAME), int(self._clock_s()))
        if session is None:
            if request.method == "GET":
                raise web.HTTPSeeOther(f"/login?{urlencode({'next': request.path_qs})}")
            raise web.HTTPUnauthorized(text="Sign in first.")
        request[STAFF] = session
        return await handler(request)

    # ------------------------------------------------------------------ signing in
    async def healthz(self, request: web.Request) -> web.Response:
        if self._draining:
            return web.Response(status=503, text="shutting down")
        return web.Response(text="ok")

    async def login_page(self, request: web.Request) -> web.Response:
        return self._render(request, "login.html", next=safe_next_path(request.query.get("next")), error="")

    async def sign_in(self, request: web.Request) -> web.Response:
        form = await request.post()
        api_key = str(form.get("api_key", ""))
        next_path = safe_next_path(str(form.get("next", "")))
        try:
            principal = staff_for_key(self._keys, api_key)
        except InvalidConsoleKey:
            log.info("sign_in_refused")
            await asyncio.sleep(REFUSED_SIGN_IN_DELAY_S)
            return self._render(
                request,
                "login.html",
                status=401,
                next=next_path,
                error="This key is not valid for the console (unknown, or without the console.view scope).",
            )
        log.info("signed_in", key_name=principal.name)
        response = _see_other(next_path)
        response.set_cookie(
            COOKIE_NAME,
            self._signer.issue(principal.name, int(self._clock_s())),
            max_age=self._signer.lifetime_s,
            httponly=True,
            samesite="Lax",
            secure=self._secure_cookie,
            path="/",
        )
        return response

    async def sign_out(self, request: web.Request) -> web.Response:
        response = _see_other("/login")
        response.del_cookie(COOKIE_NAME, path="/")
        return response

    # ------------------------------------------------------------------ search
    async def search_page(self, request: web.Request) -> web.Response:
        return self._render(request, "search.html", kinds=views.SEARCH_KINDS, kind="", value="", error="")

    async def search(self, request: web.Request) -> web.Response:
        form = await request.post()
        kind, value = str(form.get("kind", "")), str(form.get("value", ""))
        try:
            target = views.parse_search(kind, value)
        except views.SearchError as error:
            return self._render(
                request, "search.html", status=400, kinds=views.SEARCH_KINDS, kind=kind, value=value, error=str(error)
            )
        if target.identifier is None:
            raise web.HTTPSeeOther(f"/people/{target.person_id}")
        try:
            person_id = await self._peers.lookup(target.identifier)
        except PeerError as error:
            return self._render(
                request,
                "search.html",
                status=503,
                kinds=views.SEARCH_KINDS,
                kind=kind,
                value=value,
                error=_unavailable(error),
            )
        if person_id is None:  # identity's Lookup creates nothing: an unknown identifier is no one
            return self._render(
                request,
                "search.html",
                status=404,
                kinds=views.SEARCH_KINDS,
                kind=kind,
                value=value,
                error=NO_SUCH_PERSON,
            )
        raise web.HTTPSeeOther(f"/people/{quote(person_id)}")

    # ------------------------------------------------------------------ person
    async def person(self, request: web.Request) -> web.Response:
        try:
            person_id = parse_person_id(request.match_info["person_id"])
        except InvalidArgument:
            return self._render(request, "not_found.html", status=404, what="This is not a person id.")
        language = request.query.get("lang", "en")
        language = language if language in LANGUAGES else "en"
        page_token = request.query.get("timeline", "")
        now_ms = self._now_ms()
        try:
            person = await self._peers.person(person_id)
        except PeerError as error:
            if error.not_found:
                return self._render(request, "not_found.html", status=404, what="No person has this id.")
            return self._render(request, "not_found.html", status=503, what=_unavailable(error))
        if person.person_id != person_id:  # merged into another person: show the survivor
            raise web.HTTPSeeOther(f"/people/{quote(person.person_id)}")

        profile, described, decisions, deliveries, consents = await asyncio.gather(
            self._peers.profile(person_id, self._timeline_page_size, page_token),
            self._peers.describe(person_id, language),
            self._peers.decisions(person_id),
            self._peers.deliveries(person_id),
            self._peers.consents(person_id),
            return_exceptions=True,
        )
        context: dict[str, Any] = {
            "header": views.person_header(person, now_ms),
            "language": language,
            "profile": None,
            "timeline": [],
            "older_timeline": "",
            "newest_timeline": bool(page_token),
            "describe": None,
            "decisions": [],
            "deliveries": [],
            "consents": [],
            "unavailable": {},
        }
        unavailable: dict[str, str] = context["unavailable"]
        if isinstance(profile, BaseException):
            unavailable["profile"] = _unavailable(profile)
        else:
            context["profile"] = views.profile_view(profile.profile, now_ms)
            context["timeline"] = [views.event_row(event, now_ms) for event in profile.timeline]
            if profile.next_timeline_page_token:
                older = {"lang": language, "timeline": profile.next_timeline_page_token}
                context["older_timeline"] = f"?{urlencode(older)}"
        if isinstance(described, BaseException):
            unavailable["describe"] = _unavailable(described)
        else:
            context["describe"] = described
        if isinstance(decisions, BaseException):
            unavailable["decisions"] = _unavailable(decisions)
        else:
            context["decisions"] = [views.decision_view(decision, now_ms) for decision in decisions]
        if isinstance(deliveries, BaseException):
            unavailable["deliveries"] = _unavailable(deliveries)
        else:
            context["deliveries"] = [views.delivery_row(delivery, now_ms) for delivery in deliveries]
        if isinstance(consents, BaseException):
            unavailable["consents"] = _unavailable(consents)
        else:
            context["consents"] = views.consent_rows(consents, now_ms)
        return self._render(request, "person.html", **context)

    # ------------------------------------------------------------------ segments and experiments
    async def segments(self, request: web.Request) -> web.Response:
        segments, experiments = await asyncio.gather(
            self._peers.segments(), self._peers.experiments(), return_exceptions=True
        )
        unavailable: dict[str, str] = {}
        segment_rows: list[views.SegmentRow] = []
        experiment_views: list[views.ExperimentView] = []
        if isinstance(segments, BaseException):
            unavailable["segments"] = _unavailable(segments)
        else:
            segment_rows = views.segment_rows(segments)
        if isinstance(experiments, BaseException):
            unavailable["experiments"] = _unavailable(experiments)
        else:
            shown = experiments[:MAX_EXPERIMENTS_SHOWN]
            reports = await asyncio.gather(
                *(self._peers.experiment_report(experiment.experiment_id) for experiment in shown),
                return_exceptions=True,
            )
            for experiment, report in zip(shown, reports, strict=True):
                if isinstance(report, BaseException):
                    experiment_views.append(views.experiment_view(experiment, None, _unavailable(report)))
                else:
                    experiment_views.append(views.experiment_view(experiment, report))
        return self._render(
            request,
            "segments.html",
            segments=segment_rows,
            experiments=experiment_views,
            more_experiments=max(0, len(experiments) - MAX_EXPERIMENTS_SHOWN) if isinstance(experiments, list) else 0,
            unavailable=unavailable,
        )
