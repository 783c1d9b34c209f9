"""The aggregator's HTTP app: a thin shell over the store, like the MQTT subscriber on the other side.

    app = make_app(store)                                   # aiohttp Application
    await probe.http.serve(app, config.http.listen)         # in the service's TaskGroup

    GET /metrics                  Prometheus text exposition (probe/aggregator/metrics.py)
    GET /api/v1/servers           the fleet view (probe/aggregator/views.py)
    GET /api/v1/servers/{name}    one relay in detail; 404 for a name not in the inventory
    GET /api/v1/agents            the agents
    GET /api/v1/inventory         the relays the aggregator knows (for `probe verify --aggregator`)
    POST /api/v1/verifications    ask every online agent to probe servers now (probe/verify/api.py)
    GET /api/v1/verifications/{request_id}   the answers so far
    GET /api/v1/openapi.json      the API described (probe/aggregator/openapi.py)
    GET /healthz                  200 while serving with fresh data, 503 without
    GET /                         the status page (probe/aggregator/page/, static files)

Everything runs on the event loop's thread, like the store itself. Bodies are pydantic models dumped to JSON; every
error is an `ApiError` body (no stack trace ever leaves the process: unexpected exceptions are logged here and
answered with a 500). The API takes no query parameters (but `after` on a verification): one given is refused with
a 400 rather than ignored, so a typo never looks like a filter that matched everything.

Who may call it: like /metrics, the API is for loopback or a trusted network ([http] listen is loopback by
default) and has no authentication of its own. POST /api/v1/verifications is its one state-changing endpoint: it
costs every online agent a probe of every path of the servers named (inventory names only, at most
probe.verify.api.MAX_SERVERS, at most verifications.PER_MINUTE a minute) and changes nothing else. It takes only
`application/json`, which a page of another site cannot send here without a CORS preflight this server never grants.
Its body must arrive within BODY_SECONDS of its head (408 otherwise), so a client cannot hold a handler open.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources

from aiohttp import web
from pydantic import BaseModel, ValidationError

from probe.aggregator.health import AgentState
from probe.aggregator.metrics import MetricsRenderer
from probe.aggregator.openapi import (
    MAX_AFTER,
    METRICS_CONTENT_TYPE,
    RELAY_NAME_PATTERN,
    AgentList,
    ApiError,
    Healthz,
    openapi_document,
)
from probe.aggregator.store import ResultStore
from probe.aggregator.verifications import TooLarge, TooMany, Verifications, view
from probe.aggregator.views import agent_views, fleet_view, server_detail
from probe.errors import WgProbeError
from probe.inputs import redact_url
from probe.term import clean
from probe.verify.api import MAX_SERVERS, REQUEST_ID, AgentWord, InventoryView, VerificationRequest, VerificationStarted

log = logging.getLogger("wgprobe.aggregator.http")

METRICS_UPDATE_SECONDS = 1.0  # how often metrics blocks that time moved (stale paths) are written between scrapes
MAX_BODY = 512 * 1024  # a verification naming its 1,000 servers at their longest fits; nothing else has a body
# Seconds a POST's body may take to arrive once its head has: a client that declares a body and never sends it (or
# sends it a byte at a time) held its connection and handler open for as long as it liked.
BODY_SECONDS = 10.0
_SUGGESTIONS = 3
_RELAY_NAME = re.compile(RELAY_NAME_PATTERN)
_NO_STORE = "no-store"
# The page loads only its own files and talks only to this server; with every API string inserted as text this is
# a second wall, not the first.
_PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}

Ready = Callable[[], str | None]  # None when ready, else why not (e.g. "MQTT: not connected")
# Sends a command's payload to one agent (wgprobe/v1/commands/<agent>, QoS 1, not retained); returns once the broker
# acknowledged it, raises a WgProbeError saying why not.
CommandSender = Callable[[str, bytes], Awaitable[None]]
RENDERER = web.AppKey("renderer", MetricsRenderer)  # the app's /metrics renderer (tests and benchmarks read it)
VERIFICATIONS = web.AppKey("verifications", Verifications)


def make_app(
    store: ResultStore,
    *,
    ready: Ready | None = None,
    metrics_update_seconds: float | None = METRICS_UPDATE_SECONDS,
    verifications: Verifications | None = None,
    send: CommandSender | None = None,
) -> web.Application:
    """The aggregator's app over `store`. `ready` adds the shell's own check to /healthz (the MQTT subscriber's
    connection, say). `metrics_update_seconds` (None: off) writes the metrics of new results between scrapes.
    `send` delivers verification commands to agents (None: POST /api/v1/verifications answers 503); the results
    that answer them are in `verifications` (probe.aggregator.verifications.Tagged feeds it)."""
    app = web.Application(middlewares=[_errors], client_max_size=MAX_BODY)
    api = _Api(store, ready, verifications or Verifications(now=store.now), send)
    app[RENDERER] = api.renderer
    app[VERIFICATIONS] = api.verifications
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/v1/servers", api.servers)
    app.router.add_get("/api/v1/servers/{name}", api.server)
    app.router.add_get("/api/v1/agents", api.agents)
    app.router.add_get("/api/v1/inventory", api.inventory)
    app.router.add_post("/api/v1/verifications", api.start_verification)
    app.router.add_get("/api/v1/verifications/{request_id}", api.verification)
    app.router.add_get("/api/v1/openapi.json", api.openapi_json)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/", api.page_file)
    app.router.add_get("/page/{file}", api.page_file)
    app.on_response_prepare.append(_common_headers)
    app.cleanup_ctx.append(_following(api.renderer))
    if metrics_update_seconds is not None:
        app.cleanup_ctx.append(_updating(api.renderer, metrics_update_seconds))
    return app


class _Api:
    """The handlers, over one store."""

    def __init__(
        self, store: ResultStore, ready: Ready | None, verifications: Verifications, send: CommandSender | None
    ) -> None:
        self.store, self.ready = store, ready
        self.verifications, self.send = verifications, send
        self.renderer = MetricsRenderer(store)
        self.started = store.now()
        self.openapi = json.dumps(openapi_document(), separators=(",", ":")).encode()
        folder = resources.files("probe.aggregator").joinpath("page")
        self.page = {name: folder.joinpath(name).read_bytes() for name in PAGE_FILES}

    async def metrics(self, request: web.Request) -> web.Response:
        body = self.renderer.render()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE, **_private()})

    async def servers(self, request: web.Request) -> web.Response:
        _no_query(request)
        return _model(fleet_view(self.store), compress=True)

    async def server(self, request: web.Request) -> web.Response:
        _no_query(request)
        name = request.match_info["name"]
        detail = server_detail(self.store, name)
        if detail is not None:
            return _model(detail)
        if not _RELAY_NAME.fullmatch(name):
            problem = ApiError(error="bad_request", detail="not a relay name: letters, digits, '.', '_', '-'")
            raise _Problem(400, problem)
        close = tuple(difflib.get_close_matches(name, self.store.servers.keys(), n=_SUGGESTIONS))
        raise _Problem(404, ApiError(error="not_found", detail=f"no relay {name} in the inventory", suggestions=close))

    async def agents(self, request: web.Request) -> web.Response:
        _no_query(request)
        return _model(AgentList(generated_at=_utc(self.store.now()), agents=agent_views(self.store)))

    async def inventory(self, request: web.Request) -> web.Response:
        _no_query(request)
        inventory = self.store.inventory
        shown = InventoryView.of(inventory, source=redact_url(inventory.source), at=_utc(self.store.now()))
        return _model(shown, compress=True)

    async def start_verification(self, request: web.Request) -> web.Response:
        """Publish a verification's command to every agent that is online with a good control check."""
        asked = await _verification_request(request)
        self._require_known(asked.servers)
        if self.send is None:
            detail = "this aggregator cannot send commands to agents (no broker connection)"
            raise _Problem(503, ApiError(error="unavailable", detail=detail))
        agents, passed_over = self._agents_for(asked)
        try:
            verification = self.verifications.open(asked.servers, agents, all_paths=asked.all_paths)
        except TooMany as e:
            problem = _Problem(429, ApiError(error="too_many_requests", detail=str(e)))
            problem.headers["Retry-After"] = f"{math.ceil(e.retry_after)}"
            raise problem from None
        except TooLarge as e:
            raise _Problem(400, ApiError(error="bad_request", detail=str(e))) from None
        verification.not_asked.update(passed_over)
        payload = verification.command().model_dump_json().encode()
        outcomes = await asyncio.gather(*(self._send_to(agent, payload) for agent in agents))
        refused = {agent: why for agent, why in zip(agents, outcomes, strict=True) if why is not None}
        self.verifications.sent(verification.request_id, refused)
        if not verification.agents:
            self.verifications.forget(verification.request_id)
            detail = "; ".join(f"{agent}: {why}" for agent, why in refused.items())
            raise _Problem(503, ApiError(error="unavailable", detail=f"the command reached no agent: {detail[:500]}"))
        log.info(
            "verification %s: %d server(s) asked of %s",
            verification.request_id,
            len(verification.servers),
            ", ".join(verification.agents),
        )
        location = f"/api/v1/verifications/{verification.request_id}"
        started = VerificationStarted(
            request_id=verification.request_id,
            issued_at=_utc(verification.issued_at),
            servers=verification.servers,
            all_paths=verification.all_paths,
            agents=verification.agents,
            not_asked=verification.not_asked_list(),
            quorum=self.store.health.quorum,
            location=location,
        )
        response = _model(started, status=202)
        response.headers["Location"] = location
        return response

    def _agents_for(self, asked: VerificationRequest) -> tuple[list[str], dict[str, AgentWord]]:
        """The agents to ask (online, with a good control check, and named if the request names any), and those
        passed over with their state; a 503 when there is none to ask."""
        self.store.refresh()
        states = {name: info.state for name, info in self.store.agents.items()}
        named = states.keys() if asked.agents is None else asked.agents
        agents = sorted(name for name in named if states.get(name) is AgentState.ok)
        passed_over = {name: _word(states.get(name)) for name in sorted(named) if name not in agents}
        if not agents:
            known = ", ".join(f"{name} {why}" for name, why in passed_over.items()) or "none heard from"
            detail = clean(f"no agent is online with a good control check (agents: {known[:500]})")
            raise _Problem(503, ApiError(error="unavailable", detail=detail))
        return agents, passed_over

    async def verification(self, request: web.Request) -> web.Response:
        after = _after(request)
        request_id = request.match_info["request_id"]
        if not REQUEST_ID.fullmatch(request_id):
            problem = ApiError(error="bad_request", detail="not a request id: 32 lowercase hexadecimal digits")
            raise _Problem(400, problem)
        verification = self.verifications.get(request_id)
        if verification is None:
            detail = f"no verification {request_id} (never made here, or forgotten: they are kept an hour)"
            raise _Problem(404, ApiError(error="not_found", detail=detail))
        self.store.refresh()
        states: dict[str, AgentWord] = {name: _word(info.state) for name, info in self.store.agents.items()}
        return _model(view(verification, states, self.store.health.quorum, after=after), compress=True)

    def _require_known(self, servers: tuple[str, ...]) -> None:
        unknown = [name for name in servers if name not in self.store.servers]
        if not unknown:
            return
        close = tuple(difflib.get_close_matches(unknown[0], self.store.servers.keys(), n=_SUGGESTIONS))
        more = f" and {len(unknown) - 1} more" if len(unknown) > 1 else ""
        detail = f"no relay {unknown[0]} in the inventory{more}: verifications name inventory relays only"
        raise _Problem(404, ApiError(error="not_found", detail=detail, suggestions=close))

    async def _send_to(self, agent: str, payload: bytes) -> str | None:
        """None once the broker has the command for `agent`, else why not."""
        assert self.send is not None
        try:
            await self.send(agent, payload)
        except WgProbeError as e:
            log.warning("verification command to %s not delivered: %s", agent, clean(str(e)))
            return clean(str(e))[:200]
        return None

    async def healthz(self, request: web.Request) -> web.Response:
        _no_query(request)
        state = health_check(self.store, self.started, self.ready)
        return _model(state, status=200 if state.status in ("ok", "starting") else 503)

    async def openapi_json(self, request: web.Request) -> web.Response:
        return web.Response(body=self.openapi, content_type="application/json", headers=_private())

    async def page_file(self, request: web.Request) -> web.Response:
        name = request.match_info.get("file", "index.html")
        if name not in self.page:
            raise web.HTTPNotFound()
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": _PAGE_POLICY}
        return web.Response(body=self.page[name], content_type=PAGE_FILES[name], charset="utf-8", headers=headers)


def health_check(store: ResultStore, started: float, ready: Ready | None = None) -> Healthz:
    """What /healthz says. Healthy: the shell's own check (if any) passes, and some agent was heard from (a result
    or a status) within the staleness limit, or the aggregator started less than that long ago. Without fresh data
    every relay is unknown: the aggregator serves, but cannot judge, and says so with a 503."""
    now = store.now()
    limit = store.health.stale_after()
    heard = [t for info in store.agents.values() for t in (info.newest_taken_at, info.status_at) if t is not None]
    newest_age = max(0.0, now - max(heard)) if heard else None
    fresh_agents = sum(1 for info in store.agents.values() if info.state in (AgentState.ok, AgentState.control_failed))
    problem = ready() if ready is not None else None

    def answer(status: str, detail: str) -> Healthz:
        return Healthz.model_validate(
            {
                "status": status,
                "detail": detail,
                "newest_data_age_seconds": newest_age,
                "agents_heard": fresh_agents,
                "stale_after_seconds": limit,
            }
        )

    if problem is not None:
        return answer("unavailable", clean(problem))
    if newest_age is not None and newest_age <= limit:
        return answer("ok", f"newest data {newest_age:.0f} s old")
    if now - started <= limit:
        return answer("starting", f"started {now - started:.0f} s ago; waiting for agents")
    if newest_age is None:
        return answer("stale", f"no agent heard from in {now - started:.0f} s since start")
    return answer("stale", f"newest data is {newest_age:.0f} s old (stale after {limit:.0f} s)")


class _Problem(Exception):
    def __init__(self, status: int, body: ApiError) -> None:
        super().__init__(body.detail)
        self.status, self.body = status, body
        self.headers: dict[str, str] = {}


_WORDS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "bad_request",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as an ApiError body; a bug is logged with its traceback and answered with a plain 500."""
    try:
        return await handler(request)
    except _Problem as problem:
        response = _model(problem.body, status=problem.status)
        response.headers.update(problem.headers)
        return response
    except web.HTTPException as e:
        if e.status < 400:
            raise
        word = _WORDS.get(e.status, "bad_request" if e.status < 500 else "internal_error")
        detail = e.reason if e.status != 404 else f"no such path: {clean(request.path[:200])}"
        body = ApiError.model_validate({"error": word, "detail": detail})
        response = _model(body, status=e.status)
        if "Allow" in e.headers:
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("bug answering %s %s", request.method, clean(request.path[:200]))
        body = ApiError(error="internal_error", detail="internal error; the aggregator's log has the details")
        return _model(body, status=500)


def _no_query(request: web.Request) -> None:
    if request.query_string:
        names = sorted({clean(key[:40]) for key in request.query})
        detail = f"this endpoint takes no query parameters; got {', '.join(names) or 'a query string'}"
        raise _Problem(400, ApiError(error="bad_request", detail=detail))


async def _verification_request(request: web.Request) -> VerificationRequest:
    """POST /api/v1/verifications' body: JSON only (a page of another site cannot send that without a CORS
    preflight), valid, and within MAX_BODY."""
    _no_query(request)
    if request.content_type != "application/json":
        detail = "send the request body as application/json"
        raise _Problem(415, ApiError(error="unsupported_media_type", detail=detail))
    try:
        async with asyncio.timeout(BODY_SECONDS):
            body = await request.read()
        return VerificationRequest.model_validate_json(body)
    except TimeoutError:
        detail = f"the request body did not arrive within {BODY_SECONDS:g} s"
        late = _Problem(408, ApiError(error="request_timeout", detail=detail))
        late.headers["Connection"] = "close"  # what may still come of the body must not be read as a request
        raise late from None
    except ConnectionResetError:
        # The client left before its body was all sent (aiohttp: "Connection lost"): its doing, not a bug of ours,
        # and nobody is left to read the answer.
        raise _Problem(400, ApiError(error="bad_request", detail="the request body ended early")) from None
    except ValidationError as e:
        raise _Problem(400, ApiError(error="bad_request", detail=_first_error(e))) from None
    except web.HTTPRequestEntityTooLarge:
        # Larger than any valid request can be: refused as what it is, an invalid one.
        detail = f"the request body is larger than {MAX_BODY // 1024} KiB: name at most {MAX_SERVERS} servers"
        raise _Problem(400, ApiError(error="bad_request", detail=detail)) from None


def _after(request: web.Request) -> int:
    """The one query parameter of a verification: `after=N`, the results already read."""
    unknown = sorted({clean(key[:40]) for key in request.query if key != "after"})
    if unknown:
        raise _Problem(400, ApiError(error="bad_request", detail=f"this endpoint takes after=N only; got {unknown}"))
    text = request.query.get("after", "0")
    if not text.isdecimal() or int(text) > MAX_AFTER or len(request.query.getall("after", [])) > 1:
        detail = f"after: a whole number of results already read (0 to {MAX_AFTER}), given once"
        raise _Problem(400, ApiError(error="bad_request", detail=detail))
    return int(text)


def _first_error(error: ValidationError) -> str:
    details = error.errors(include_url=False, include_input=False, include_context=False)
    first = details[0] if details else None
    if first is None:
        return "not a valid request"
    where = ".".join(str(part) for part in first["loc"]) or "body"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return clean(f"{where}: {first['msg']}{more}")[:300]


def _word(state: AgentState | None) -> AgentWord:
    words: dict[AgentState | None, AgentWord] = {
        AgentState.ok: "ok",
        AgentState.control_failed: "control_failed",
        AgentState.offline: "offline",
        AgentState.silent: "silent",
        None: "unknown",  # not judged yet
    }
    return words[state]


def _model(body: BaseModel, *, status: int = 200, compress: bool = False) -> web.Response:
    response = web.Response(
        body=body.model_dump_json().encode(), status=status, content_type="application/json", headers=_private()
    )
    if compress:
        response.enable_compression()  # only when the client accepts it; the fleet view is ~1 MB at 1,000 relays
    return response


def _private() -> dict[str, str]:
    return {"Cache-Control": _NO_STORE}


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


def _utc(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, UTC)


def _following(renderer: MetricsRenderer) -> Callable[[web.Application], AsyncIterator[None]]:
    """While the app serves, each result's metrics lines are written as the store keeps it (~40 us), so a scrape
    right after a whole round joins what is written instead of writing ~3,000 blocks (~0.15 s)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        renderer.follow()
        try:
            yield
        finally:
            renderer.unfollow()

    return context


def _updating(renderer: MetricsRenderer, every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A task the app owns while it serves: about once a second, the metrics blocks that time alone moved (paths
    gone stale, an agent's staleness limit changed) are written, and any result's that `_following` missed, so a
    scrape finds them ready instead of writing them all at once."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                renderer.update()
            except Exception:
                # A bug here must not pass silently nor repeat every second: /metrics writes the blocks itself.
                log.exception("metrics update failed; blocks will be written at scrape time")
                return

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(loop(), name="metrics-update")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
