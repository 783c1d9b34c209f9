"""The aggregator's HTTP app on a real loopback socket: /metrics, the JSON API and its OpenAPI document, /healthz, the
status page's files, errors as JSON without stack traces, and the server set-up of probe/http.py."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import aiohttp
import jsonschema
import pytest
import pytest_asyncio
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi

from probe.addresses import Endpoint
from probe.aggregator import http as aggregator_http
from probe.aggregator.http import PAGE_FILES, RENDERER, make_app
from probe.aggregator.metrics import MetricsRenderer, exposition, make_registry
from probe.aggregator.openapi import openapi_document
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_result, make_status, payload
from probe.aggregator.views import FleetView, ServerDetail
from probe.errors import ConfigError
from probe.http import serve, serving
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import StageName

LOOPBACK = Endpoint.parse("127.0.0.1:0", allow_port_zero=True)
DOWN, DEGRADED, UP, UNKNOWN = "se-got-wg-001", "se-got-wg-002", "de-ber-wg-001", "us-nyc-wg-001"
HOSTILE = '<img src=x onerror="alert(1)">\x1b[31m'
LABELS = {DOWN: {"kernel": "4.15", "note": HOSTILE}, DEGRADED: {"kernel": "4.15"}, UP: {"kernel": "5.15"}}
AGENTS = ("agent-a", "agent-b", "agent-c")


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


def scenario(clock: FakeClock) -> ResultStore:
    """Three agents: DOWN's NAT is broken, DEGRADED's extended range is closed, UP is fine, UNKNOWN unreported."""
    store = ResultStore(make_inventory([DOWN, DEGRADED, UP, UNKNOWN], labels=LABELS), now=clock)
    for agent in AGENTS:
        store.ingest_status(payload(make_status(agent, at=clock())), status_topic(agent))
        send(store, make_result(DOWN, agent, taken_at=clock(), fail=StageName.forward))
        send(
            store, make_result(DEGRADED, agent, taken_at=clock(), ports=(51820, 4000), fail={4000: StageName.handshake})
        )
        send(store, make_result(UP, agent, taken_at=clock()))
    clock.advance(2)
    return store


@dataclass
class Served:
    store: ResultStore
    clock: FakeClock
    client: aiohttp.ClientSession
    app: web.Application

    async def get(self, path: str, status: int = 200) -> Any:
        async with self.client.get(path) as response:
            assert response.status == status, await response.text()
            assert response.content_type == "application/json"
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            return await response.json()


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    store = scenario(clock)
    app = make_app(store, metrics_update_seconds=None)
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:
        yield Served(store, clock, client, app)


# -- /metrics ----------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_serves_the_store_as_prometheus_text(served: Served) -> None:
    async with served.client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        body = await response.read()
    assert body == exposition(make_registry(served.store))
    lines = body.decode().splitlines()
    assert f'wgprobe_server_up{{server="{DOWN}"}} 0.0' in lines
    assert f'wgprobe_server_up{{server="{DEGRADED}"}} 1.0' in lines
    assert not any(line.startswith(f'wgprobe_server_up{{server="{UNKNOWN}"}}') for line in lines)
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed (Debian: apt-get install prometheus)"
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout + done.stderr


@pytest.mark.asyncio
async def test_metrics_follow_the_clock_between_scrapes(served: Served) -> None:
    async with served.client.get("/metrics") as response:
        first = (await response.read()).decode()
    served.clock.advance(60)  # past the staleness limit (3 x 15 s): every relay unknown, path series gone
    async with served.client.get("/metrics") as response:
        later = (await response.read()).decode()
    assert "wgprobe_probe_success{" in first and "wgprobe_probe_success{" not in later
    assert f'wgprobe_server_health{{server="{DOWN}",state="unknown"}} 1.0' in later.splitlines()
    assert f'wgprobe_result_age_seconds{{agent="agent-a",server="{DOWN}"}} 62.0' in later.splitlines()


# -- the JSON API ------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fleet_lists_failing_servers_first_with_reasons_and_shared_labels(served: Served) -> None:
    fleet = FleetView.model_validate(await served.get("/api/v1/servers"))
    assert [(s.name, s.state, s.reason) for s in fleet.failing] == [
        (DOWN, "down", "forward_timeout"),
        (DEGRADED, "degraded", "handshake_timeout"),
    ]
    assert fleet.states == {"up": 1, "degraded": 1, "down": 1, "unknown": 1}
    assert ("kernel", "4.15", 2, 2) in [(s.name, s.value, s.failing, s.fleet) for s in fleet.shared_labels]
    assert fleet.failing[0].labels["note"] == HOSTILE  # data, passed on as it is: the page inserts it as text
    assert [a.name for a in fleet.agents] == list(AGENTS)


@pytest.mark.asyncio
async def test_server_detail_has_every_agent_path_and_stage(served: Served) -> None:
    detail = ServerDetail.model_validate(await served.get(f"/api/v1/servers/{DOWN}"))
    assert detail.state == "down" and detail.agents_failing == 3 and detail.quorum == 2
    assert [a.agent for a in detail.agents] == list(AGENTS)
    path = detail.agents[0].paths[0]
    assert [(s.name, s.ok, s.judged) for s in path.stages] == [
        ("handshake", True, True),
        ("tunnel", True, True),
        ("forward", False, True),
        ("egress", False, False),
        ("mtu", False, False),
    ]
    assert detail.last_failure is not None and detail.last_failure.reason == "forward_timeout"
    assert [(h.previous, h.state) for h in detail.history] == [("unknown", "down")]


@pytest.mark.asyncio
async def test_an_unknown_server_is_a_404_with_close_names(served: Served) -> None:
    body = await served.get("/api/v1/servers/se-got-wg-01", status=404)
    assert body["error"] == "not_found"
    assert body["suggestions"][:2] == [DOWN, DEGRADED]


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["bad%20name", "-leading-dash", "a%2Fb", "%00", "x" * 300])
async def test_a_malformed_name_is_a_400(served: Served, name: str) -> None:
    body = await served.get(f"/api/v1/servers/{name}", status=400)
    assert body["error"] == "bad_request"


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/api/v1/servers?state=down", f"/api/v1/servers/{UP}?x", "/api/v1/agents?a=1&b=2"])
async def test_query_parameters_are_refused_not_ignored(served: Served, path: str) -> None:
    body = await served.get(path, status=400)
    assert body["error"] == "bad_request" and "no query parameters" in body["detail"]


@pytest.mark.asyncio
async def test_unknown_paths_and_methods_answer_json(served: Served) -> None:
    body = await served.get("/api/v2/servers", status=404)
    assert body["error"] == "not_found"
    async with served.client.post("/api/v1/servers", data=b"{}") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET,HEAD"
        assert (await response.json())["error"] == "method_not_allowed"


@pytest.mark.asyncio
async def test_agents(served: Served) -> None:
    body = await served.get("/api/v1/agents")
    assert [(a["name"], a["state"], a["relays_voting"]) for a in body["agents"]] == [
        (agent, "ok", 3) for agent in AGENTS
    ]


@pytest.mark.asyncio
async def test_a_bug_is_a_500_without_a_stack_trace(
    served: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(store: ResultStore) -> FleetView:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(aggregator_http, "fleet_view", broken)
    with caplog.at_level(logging.ERROR, logger="wgprobe.aggregator.http"):
        async with served.client.get("/api/v1/servers") as response:
            assert response.status == 500
            text = await response.text()
    assert json.loads(text)["error"] == "internal_error"
    assert "secret" not in text and "Traceback" not in text
    assert "secret internals" in caplog.text  # the log has it


# -- /healthz ----------------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_healthz_says_ok_while_agents_report_and_503_when_the_data_is_stale() -> None:
    clock = FakeClock()
    store = ResultStore(make_inventory([UP]), now=clock)
    problem: list[str] = []
    app = make_app(store, ready=lambda: problem[0] if problem else None, metrics_update_seconds=None)
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:

        async def healthz() -> tuple[int, dict[str, Any]]:
            async with client.get("/healthz") as response:
                return response.status, await response.json()

        assert (await healthz())[0] == 200 and (await healthz())[1]["status"] == "starting"
        clock.advance(46)  # no agent heard from for longer than the staleness limit (3 x 15 s)
        status, body = await healthz()
        assert (status, body["status"], body["newest_data_age_seconds"]) == (503, "stale", None)
        store.ingest_status(payload(make_status("agent-a", at=clock())), status_topic("agent-a"))
        send(store, make_result(UP, "agent-a", taken_at=clock()))
        store.refresh()
        status, body = await healthz()
        assert (status, body["status"], body["agents_heard"]) == (200, "ok", 1)
        problem.append("MQTT: not connected\x1b[2J")
        status, body = await healthz()
        assert (status, body["status"], body["detail"]) == (503, "unavailable", "MQTT: not connected\\x1b[2J")
        problem.clear()
        clock.advance(46)
        status, body = await healthz()
        assert (status, body["status"], body["newest_data_age_seconds"]) == (503, "stale", 46.0)


# -- the OpenAPI document ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_openapi_document_is_valid_and_describes_what_is_served(served: Served) -> None:
    document = await served.get("/api/v1/openapi.json")
    assert document == json.loads(json.dumps(openapi_document()))
    validate_openapi(document)  # raises on an invalid OpenAPI 3.1 document
    checks = {
        "/api/v1/servers": ("200", "/api/v1/servers"),
        f"/api/v1/servers/{DOWN}": ("200", "/api/v1/servers/{name}"),
        "/api/v1/servers/nope": ("404", "/api/v1/servers/{name}"),
        "/api/v1/agents": ("200", "/api/v1/agents"),
        "/healthz": ("200", "/healthz"),
    }
    for url, (status, path) in checks.items():
        async with served.client.get(url) as response:
            assert str(response.status) == status
            body = await response.json()
        schema = document["paths"][path]["get"]["responses"][status]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({**schema, "components": document["components"]})
        validator.validate(body)
    broken = await served.get(f"/api/v1/servers/{DOWN}")
    broken["state"] = "sideways"
    schema = {"$ref": "#/components/schemas/ServerDetail", "components": document["components"]}
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)  # the schemas are not vacuous


# Schemathesis against the live app: requests generated from the document, answers checked against it (status codes,
# content types, schemas, no server errors).
SCHEMA = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The app on a loopback port, in a thread with its own event loop: schemathesis calls it synchronously."""
    bound: list[str] = []
    started = threading.Event()
    loop = asyncio.new_event_loop()
    stop = loop.create_future()

    async def send(agent: str, payload: bytes) -> None:
        """Every command reaches its agent (a verification names relays this scenario holds only by chance)."""

    async def main() -> None:
        app = make_app(scenario(FakeClock()), metrics_update_seconds=None, send=send)
        async with serving(app, LOOPBACK) as address:
            bound.append(f"http://{address}")
            started.set()
            await stop

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10), "the app did not start"
    yield bound[0]
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(10)
    loop.close()


@SCHEMA.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_api_answers_as_documented(case: schemathesis.Case[Any], base_url: str) -> None:
    case.call_and_validate(base_url=base_url)


# -- the status page's files -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_page_is_served_with_a_strict_content_security_policy(served: Served) -> None:
    async with served.client.get("/") as response:
        assert response.status == 200 and response.content_type == "text/html"
        policy = response.headers["Content-Security-Policy"]
        html = await response.text()
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert '<script src="/page/app.js"' in html
    for name, kind in PAGE_FILES.items():
        async with served.client.get(f"/page/{name}") as response:
            assert response.status == 200 and response.content_type == kind
    for path in ("/page/../http.py", "/page/%2e%2e%2fhttp.py", "/page/openapi.py", "/page/"):
        async with served.client.get(path) as response:
            assert response.status == 404, path


def test_the_page_loads_nothing_from_outside_and_never_parses_api_text_as_html() -> None:
    for name in PAGE_FILES:
        text = resources.files("probe.aggregator").joinpath("page", name).read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    script = resources.files("probe.aggregator").joinpath("page", "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


# -- the renderer behind /metrics: blocks of lines kept between scrapes ------------------------------------------


@pytest.mark.asyncio
async def test_while_serving_each_result_is_written_as_it_arrives() -> None:
    clock = FakeClock()
    store = scenario(clock)
    app = make_app(store, metrics_update_seconds=None)
    renderer = app[RENDERER]
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:
        async with client.get("/metrics") as response:
            await response.read()
        send(store, make_result(UP, "agent-a", taken_at=clock(), fail=StageName.mtu))
        assert renderer.written_on_arrival == 1  # at once, in the store's ingest: no task, no scrape needed
        async with client.get("/metrics") as response:
            body = (await response.read()).decode()
        assert renderer.rebuilt == 0  # the scrape found it written
        line = f'wgprobe_stage_success{{agent="agent-a",server="{UP}",stage="mtu"}} 0.0'
        assert line in body.splitlines()
        assert body.encode() == exposition(make_registry(store))
    assert store.on_kept == []  # an app that stopped serving no longer follows the store
    send(store, make_result(UP, "agent-b", taken_at=clock()))
    assert renderer.written_on_arrival == 1


@pytest.mark.asyncio
async def test_the_update_task_writes_what_time_moved_between_scrapes() -> None:
    clock = FakeClock()
    store = scenario(clock)
    app = make_app(store, metrics_update_seconds=0.02)
    renderer = app[RENDERER]
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:
        async with client.get("/metrics") as response:
            await response.read()
        clock.advance(46)  # every path goes stale (after 45 s): their lines leave
        for _ in range(200):  # hang guard: the task runs every 20 ms
            await asyncio.sleep(0.02)
            if renderer.rebuilt:
                break
        assert renderer.rebuilt == len(AGENTS) * 3  # every (relay, agent) block, written by the task
        async with client.get("/metrics") as response:
            body = (await response.read()).decode()
        assert renderer.rebuilt == 0  # the scrape found them written
        assert "wgprobe_probe_success{" not in body


def test_a_bug_in_writing_on_arrival_never_reaches_the_store(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    store = scenario(clock)
    renderer = MetricsRenderer(store)
    renderer.follow()

    class Boom(dict[tuple[str, str], Any]):
        def get(self, *args: Any) -> Any:
            raise RuntimeError("a bug")

    renderer._agents = Boom()
    with caplog.at_level(logging.ERROR, logger="wgprobe.aggregator.metrics"):
        send(store, make_result(UP, "agent-a", taken_at=clock()))  # accepted all the same
    assert "written at scrape time" in caplog.text
    assert store.on_kept == []  # it stopped following, rather than failing on every result
    renderer._agents = {}
    assert renderer.render() == exposition(make_registry(store))


Op = tuple[Any, ...]
_RELAYS = [DOWN, DEGRADED, UP]
_ops = st.one_of(
    st.tuples(
        st.just("result"),
        st.sampled_from(_RELAYS),
        st.sampled_from(AGENTS),
        st.floats(0, 80),  # how long ago it was taken: replays older than what is held, and stale ones
        st.sampled_from([None, StageName.handshake, StageName.forward, StageName.mtu]),
        st.sampled_from([(51820,), (51820, 4000), (4001, 53)]),
        st.booleans(),  # control check held
    ),
    st.tuples(st.just("advance"), st.floats(-5, 40)),  # the clock may step back a little
    st.tuples(st.just("status"), st.sampled_from(AGENTS), st.sampled_from([None, 5.0, 15.0, 30.0]), st.booleans()),
    st.tuples(st.just("inventory"), st.sets(st.sampled_from(_RELAYS))),
    st.tuples(st.just("tick")),
)


def _apply(store: ResultStore, clock: FakeClock, op: Op, renderer: MetricsRenderer) -> None:
    kind = op[0]
    if kind == "result":
        _, relay, agent, ago, fail, ports, control_ok = op
        if relay in store.servers:
            message = make_result(relay, agent, taken_at=clock() - ago, fail=fail, ports=ports, control_ok=control_ok)
            store.ingest_result(payload(message), result_topic(agent, relay))
    elif kind == "advance":
        clock.advance(op[1])
    elif kind == "status":
        _, agent, interval, online = op
        status = make_status(agent, at=clock(), interval_seconds=interval, online=online)
        store.ingest_status(payload(status), status_topic(agent))
    elif kind == "inventory":
        store.set_inventory(make_inventory(sorted(op[1] | {UP}), labels=LABELS))
    else:
        renderer.update()


@given(st.lists(_ops, min_size=1, max_size=30), st.booleans())
@settings(max_examples=80, deadline=None)
def test_the_kept_blocks_always_equal_a_fresh_exposition(ops: list[Op], following: bool) -> None:
    """Whatever happens between scrapes (new and replayed results, time passing or stepping back, staleness limits
    changing, relays leaving and coming back), a renderer that keeps its blocks, whether it writes them on arrival
    (following the store) or at the scrape, writes what prometheus_client writes from scratch."""
    clock = FakeClock()
    store = scenario(clock)
    renderer = MetricsRenderer(store)
    if following:
        renderer.follow()
    for op in ops:
        _apply(store, clock, op, renderer)
        assert renderer.render() == exposition(make_registry(store)), op


def test_a_scrape_rewrites_only_what_changed() -> None:
    clock = FakeClock()
    store = scenario(clock)
    renderer = MetricsRenderer(store)
    renderer.render()
    assert renderer.rebuilt == len(AGENTS) * 3  # every (relay, agent) block, the first time
    renderer.render()
    assert renderer.rebuilt == 0
    send(store, make_result(UP, "agent-b", taken_at=clock()))
    renderer.render()
    assert renderer.rebuilt == 1
    clock.advance(42)  # 44 s after the first results: still fresh (stale after 45 s)
    renderer.render()
    assert renderer.rebuilt == 0
    clock.advance(2)
    renderer.render()
    assert renderer.rebuilt == len(AGENTS) * 3 - 1  # all but the newest went stale
    clock.advance(-2)  # the clock steps back: what had gone stale is fresh again
    assert renderer.render() == exposition(make_registry(store))
    assert renderer.rebuilt == len(AGENTS) * 3 - 1


# -- probe/http.py: listening, errors, shutdown, access log ------------------------------------------------------


async def _hello(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("wait", "0")))
    return web.Response(text="hello")


def _hello_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _hello)
    return app


@pytest.mark.asyncio
@pytest.mark.parametrize("listen", ["127.0.0.1:0", "[::1]:0"])
async def test_it_listens_where_told_and_says_where(listen: str) -> None:
    endpoint = Endpoint.parse(listen, allow_port_zero=True)
    async with serving(_hello_app(), endpoint) as bound, aiohttp.ClientSession() as client:
        assert bound.host == endpoint.host and bound.port > 0
        async with client.get(f"http://{bound}/") as response:
            assert await response.text() == "hello"


@pytest.mark.asyncio
async def test_a_port_in_use_is_a_config_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"\[http\] listen 127\.0\.0\.1:{port}: .*already in use"):
            async with serving(_hello_app(), Endpoint.parse(f"127.0.0.1:{port}")):
                pass


@pytest.mark.asyncio
async def test_an_address_not_on_this_host_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"192\.0\.2\.1:9109: .*not one of this host's"):
        async with serving(_hello_app(), Endpoint.parse("192.0.2.1:9109")):
            pass


@pytest.mark.asyncio
async def test_leaving_lets_requests_in_flight_finish_then_stops_listening() -> None:
    async with aiohttp.ClientSession() as client:
        async with serving(_hello_app(), LOOPBACK) as bound:
            slow = asyncio.create_task(client.get(f"http://{bound}/slow?wait=0.3"))
            await asyncio.sleep(0.1)  # the request is in its handler when the server stops
        response = await slow
        assert response.status == 200 and await response.text() == "hello"
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(f"http://{bound}/")


@pytest.mark.asyncio
async def test_serve_runs_until_cancelled() -> None:
    bound: list[Endpoint] = []
    task = asyncio.create_task(serve(_hello_app(), LOOPBACK, ready=bound.append))
    for _ in range(100):  # hang guard
        if bound:
            break
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as client:
        async with client.get(f"http://{bound[0]}/") as response:
            assert await response.text() == "hello"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(aiohttp.ClientConnectionError):
            await client.get(f"http://{bound[0]}/")


@pytest.mark.asyncio
async def test_the_access_log_is_one_line_per_request_and_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    caplog.set_level(logging.INFO, logger="test.access")
    async with (
        serving(_hello_app(), LOOPBACK, access_log=logger) as bound,
        aiohttp.ClientSession() as client,
        client.get(f"http://{bound}/a%1b%5b2Jb") as response,
    ):
        await response.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "test.access"]
    assert len(lines) == 1 and re.fullmatch(r"http GET /a%1B%5B2Jb 200 \d+ bytes \d+\.\d ms", lines[0]), lines
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    async with (
        serving(_hello_app(), LOOPBACK) as bound,
        aiohttp.ClientSession() as client,
        client.get(f"http://{bound}/") as response,
    ):
        await response.read()
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]


@pytest.mark.asyncio
async def test_an_unparsable_request_is_one_line_in_the_log_not_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wgprobe.http")
    async with serving(_hello_app(), LOOPBACK) as bound:
        reader, writer = await asyncio.open_connection(str(bound.host), bound.port)
        writer.write(b"GET /a\x1b[2J HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await reader.read()
        writer.close()
    assert answer.startswith(b"HTTP/1.0 400 ")
    [record] = [r for r in caplog.records if r.name == "wgprobe.http"]
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "bad request from 127.0.0.1: Invalid char in url path:"
