"""The aggregator's HTTP app: a thin shell over the store, like the MQTT subscriber on the other side.

    app = make_app(store)                                   # aiohttp Application
    await probe.http.serve(app, config.http.listen)         # in the service's TaskGroup

    GET /metrics                  Prometheus text exposition (probe/aggregator/metrics.py)
    GET /api/v1/servers           the fleet view (probe/aggregator/views.py)
    GET /api/v1/servers/{name}    one relay in detail; 404 for a name not in the inventory
    GET /api/v1/agents            the agents
    GET /api/v1/openapi.json      the API described (probe/aggregator/openapi.py)
    GET /healthz                  200 while serving with fresh data, 503 without
    GET /                         the status page (probe/aggregator/page/, static files)

Everything runs on the event loop's thread, like the store itself. Bodies are pydantic models dumped to JSON; every
error is an `ApiError` body (no stack trace ever leaves the process: unexpected exceptions are logged here and
answered with a 500). The API takes no query parameters: one given is refused with a 400 rather than ignored, so a
typo never looks like a filter that matched everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources

from aiohttp import web
from pydantic import BaseModel

from probe.aggregator.health import AgentState
from probe.aggregator.metrics import MetricsRenderer
from probe.aggregator.openapi import (
    METRICS_CONTENT_TYPE,
    RELAY_NAME_PATTERN,
    AgentList,
    ApiError,
    Healthz,
    openapi_document,
)
from probe.aggregator.store import ResultStore
from probe.aggregator.views import agent_views, fleet_view, server_detail
from probe.term import clean

log = logging.getLogger("wgprobe.aggregator.http")

METRICS_UPDATE_SECONDS = 1.0  # how often the metrics blocks of newly arrived results are written between scrapes
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
RENDERER = web.AppKey("renderer", MetricsRenderer)  # the app's /metrics renderer (tests and benchmarks read it)


def make_app(
    store: ResultStore,
    *,
    ready: Ready | None = None,
    metrics_update_seconds: float | None = METRICS_UPDATE_SECONDS,
) -> web.Application:
    """The aggregator's app over `store`. `ready` adds the shell's own check to /healthz (the MQTT subscriber's
    connection, say). `metrics_update_seconds` (None: off) writes the metrics of new results between scrapes."""
    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    api = _Api(store, ready)
    app[RENDERER] = api.renderer
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/api/v1/servers", api.servers)
    app.router.add_get("/api/v1/servers/{name}", api.server)
    app.router.add_get("/api/v1/agents", api.agents)
    app.router.add_get("/api/v1/openapi.json", api.openapi_json)
    app.router.add_get("/healthz", api.healthz)
    app.router.add_get("/", api.page_file)
    app.router.add_get("/page/{file}", api.page_file)
    app.on_response_prepare.append(_common_headers)
    if metrics_update_seconds is not None:
        app.cleanup_ctx.append(_updating(api.renderer, metrics_update_seconds))
    return app


class _Api:
    """The handlers, over one store."""

    def __init__(self, store: ResultStore, ready: Ready | None) -> None:
        self.store, self.ready = store, ready
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


_WORDS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as an ApiError body; a bug is logged with its traceback and answered with a plain 500."""
    try:
        return await handler(request)
    except _Problem as problem:
        return _model(problem.body, status=problem.status)
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


def _updating(renderer: MetricsRenderer, every: float) -> Callable[[web.Application], AsyncIterator[None]]:
    """A task the app owns while it serves: the metrics blocks of newly arrived results are written about once a
    second, a few hundred at a time, so a scrape finds them ready instead of writing ~3,000 at once."""

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
