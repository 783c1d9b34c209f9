"""The agent's own HTTP endpoints: `/metrics` (the agent itself) and `/probe?target=NAME` (one relay, now).

    app = make_agent_app(metrics=agent_metrics, probe=probe_one, targets=inventory_names, concurrency=4)
    await probe.http.serve(app, config.http.listen)

`/probe` follows blackbox_exporter's conventions (prober/handler.go), so Prometheus scrapes a relay through an agent
with the usual relabelling (`__param_target`): a missing or bad `target` is a 400 in plain text, the answer is the
relay's metrics (agents/probe_metrics.py) with `probe_success` 0 when the relay failed, and the probe's deadline is
the `X-Prometheus-Scrape-Timeout-Seconds` header Prometheus sends, minus an offset for the answer's way back.

Only inventory names are targets, never addresses: the agent holds keys registered on the relays, and an endpoint
that would probe whatever address it is given would lend those keys, and the agent's vantage point, to anyone.

What cannot be judged is never blamed on the relay: when the agent's own reach fails (UnavailableError), when the
concurrency limit is reached or when the probe outlives the scrape's deadline, the answer is a 503 (the scrape
fails and `up` is 0) rather than `probe_success 0`, which would page someone about a healthy relay.

Concurrency: at most `concurrency` probes at once; a request waits up to `queue_seconds` (1 s) for a slot, then gets
a 503. Prometheus spreads its targets' scrapes over the interval, so a brief wait absorbs the jitter of scrapes
that happen to coincide; an unbounded queue would instead pile up probes past their scrapes' deadlines (their
answers would be thrown away, their keys' time spent) while failing at once would turn a moment's overlap into
failed scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Collection
from typing import TYPE_CHECKING

from aiohttp import web

from agents.probe_metrics import result_metrics
from probe.errors import UnavailableError, WgProbeError
from probe.results import ServerResult
from probe.term import clean

if TYPE_CHECKING:
    from agents.agent import Agent

log = logging.getLogger("wgprobe.agent.http")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
DEFAULT_TIMEOUT = 30.0  # without the header: longer than any probe's own timeouts add up to
TIMEOUT_OFFSET = 0.5  # blackbox_exporter's default --timeout-offset: time left for the answer to travel back
QUEUE_SECONDS = 1.0
_SHOWN = 100

PortLabel = Callable[[str, int], str]  # (relay, port) -> the `port` label


class _Refusal(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def make_agent_app(
    *,
    metrics: Callable[[], bytes],
    probe: Callable[[str], Awaitable[ServerResult]],
    targets: Callable[[], Collection[str]],
    concurrency: int,
    queue_seconds: float = QUEUE_SECONDS,
    default_timeout: float = DEFAULT_TIMEOUT,
    timeout_offset: float = TIMEOUT_OFFSET,
    port_label: PortLabel | None = None,
) -> web.Application:
    """The agent's app. `metrics` renders the agent's own metrics; `probe` probes one relay by inventory name (it
    is cancelled when the scrape's deadline passes); `targets` is the current inventory's names."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    slots = asyncio.Semaphore(concurrency)

    async def agent_metrics(request: web.Request) -> web.Response:
        return _exposition(metrics())

    async def probe_handler(request: web.Request) -> web.Response:
        target = _target(request, targets())
        deadline = _deadline(request, default_timeout, timeout_offset)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(min(queue_seconds, deadline)):
                await slots.acquire()
        except TimeoutError:
            raise _Refusal(503, f"{concurrency} probes are running already; try again") from None
        try:
            remaining = deadline - (loop.time() - started)
            async with asyncio.timeout(remaining):
                result = await probe(target)
        except TimeoutError:
            raise _Refusal(503, f"the probe of {target} did not finish within {deadline:.1f} s") from None
        except UnavailableError as e:
            raise _Refusal(503, f"cannot judge {target}: {clean(e)}") from None
        except WgProbeError as e:
            raise _Refusal(503, f"probe of {target} failed: {clean(e)}") from None
        finally:
            slots.release()
        label = port_label
        return _exposition(result_metrics(result, port_label=(lambda port: label(target, port)) if label else str))

    app = web.Application(middlewares=[_errors], client_max_size=64 * 1024)
    app.router.add_get("/metrics", agent_metrics)
    app.router.add_get("/probe", probe_handler)
    return app


def _target(request: web.Request, known: Collection[str]) -> str:
    unknown = sorted({clean(key[:40]) for key in request.query if key != "target"})
    if unknown:
        raise _Refusal(400, f"unknown parameter {', '.join(unknown)}; /probe takes target=NAME only")
    values = request.query.getall("target", [])
    if not values or not values[0]:
        raise _Refusal(400, "target parameter is missing")
    if len(values) > 1:
        raise _Refusal(400, "give one target")
    target = values[0]
    if target not in known:
        shown = clean(target[:_SHOWN])
        raise _Refusal(400, f"unknown target '{shown}': targets are relay names from the agent's inventory")
    return target


def _deadline(request: web.Request, default: float, offset: float) -> float:
    text = request.headers.get(SCRAPE_TIMEOUT_HEADER)
    if text is None:
        return default
    try:
        scrape = float(text)
    except ValueError:
        raise _Refusal(400, f"{SCRAPE_TIMEOUT_HEADER} is not a number") from None
    if not math.isfinite(scrape) or scrape - offset <= 0:
        raise _Refusal(400, f"{SCRAPE_TIMEOUT_HEADER} must be more than {offset} s")
    return min(scrape - offset, default)


def _exposition(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE, "Cache-Control": "no-store"})


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Errors in plain text, as blackbox_exporter answers; a bug is logged with its traceback, never sent."""
    try:
        return await handler(request)
    except _Refusal as refusal:
        if refusal.status >= 500:
            log.warning("%s %s: %s", request.method, clean(request.path[:_SHOWN]), refusal.text)
        return web.Response(status=refusal.status, text=refusal.text + "\n", headers={"Cache-Control": "no-store"})
    except web.HTTPException:
        raise  # aiohttp's own 404 and 405: plain text already
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("bug answering %s %s", request.method, clean(request.path[:_SHOWN]))
        return web.Response(status=500, text="internal error; the agent's log has the details\n")


# The agent's own /probe concurrency: a scrape's probe runs beside the schedule's, on the same keys' time.
PROBE_CONCURRENCY = 4


def agent_http(agent: Agent) -> web.Application:
    """The agent's app, wired to a running `Agent`: its metrics, its inventory's names, its probe of every path."""
    from agents.metrics import exposition
    from probe.aggregator.records import port_slot

    def slot(relay: str, port: int) -> str:
        found = agent.inventory.get(relay)
        return port_slot(found, port) if found is not None else str(port)

    async def probe_now(name: str) -> ServerResult:
        relay = agent.inventory.get(name)
        if relay is None:  # removed between the check and the probe
            raise UnavailableError(f"{name} is no longer in the inventory")
        if agent.control is not None and not agent.control.ok:
            raise UnavailableError(f"the agent's own reach failed: {agent.control.detail}")
        return await agent.probe(relay)

    return make_agent_app(
        metrics=lambda: exposition(agent),
        probe=probe_now,
        targets=lambda: agent.inventory.names,
        concurrency=PROBE_CONCURRENCY,
        port_label=slot,
    )


async def serve_agent_http(agent: Agent, bound: Callable[[], None]) -> None:
    """The agent's HTTP endpoints on its `[http] listen`, for as long as the agent runs (a task of its tree);
    `bound` is called once the address is listening."""
    from probe.http import serve

    await serve(agent_http(agent), agent.config.http.listen, ready=lambda _address: bound())
