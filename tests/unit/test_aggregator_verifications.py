"""The aggregator's side of `probe verify --aggregator`: the bounded registry of verifications and the results
answering them (pure, a fake clock), how a command's result sits among scheduled ones in the store, and the HTTP
endpoints on a real loopback socket (POST publishes to the agents online with a good control check, GET reads the
answers back), every answer checked against the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, get_args

import aiohttp
import jsonschema
import pytest
import pytest_asyncio

from probe.addresses import Endpoint
from probe.aggregator import http as aggregator_http
from probe.aggregator.config import HealthSection
from probe.aggregator.health import AgentState
from probe.aggregator.http import make_app
from probe.aggregator.openapi import openapi_document
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import FakeClock, make_inventory, make_result, make_status, payload
from probe.aggregator.verifications import Tagged, TooLarge, TooMany, Verifications
from probe.errors import UnavailableError
from probe.http import serving
from probe.messages import Command, ResultMessage, result_topic, status_topic
from probe.results import StageName
from probe.verify.api import AgentWord, InventoryView, VerificationStarted, VerificationView

LOOPBACK = Endpoint.parse("127.0.0.1:0", allow_port_zero=True)
RELAYS = ("se-got-wg-001", "se-got-wg-002", "de-ber-wg-001")
ONLINE, ALSO_ONLINE, BLIND, GONE = "agent-a", "agent-b", "agent-c", "agent-d"


def tagged(message: ResultMessage, request_id: str | None) -> ResultMessage:
    return message.model_copy(update={"request_id": request_id})


def test_the_registry_keeps_answers_once_each_and_is_bounded() -> None:
    clock = FakeClock()
    registry = Verifications(now=clock, capacity=2, keep_seconds=600, max_results=6, per_minute=3)
    first = registry.open(RELAYS[:2], (ONLINE, ALSO_ONLINE))
    assert len(first.request_id) == 32 and first.command().servers == RELAYS[:2]
    registry.sent(first.request_id, {ALSO_ONLINE: "not_authorized"})
    assert first.agents == (ONLINE,) and first.not_asked == {ALSO_ONLINE: "not_authorized"}

    answer = tagged(make_result(RELAYS[0], ONLINE, taken_at=clock()), first.request_id)
    assert registry.record(answer) and not registry.record(answer)  # once per agent and server
    assert not registry.record(tagged(make_result(RELAYS[0], ALSO_ONLINE, taken_at=clock()), first.request_id))
    assert not registry.record(tagged(make_result(RELAYS[2], ONLINE, taken_at=clock()), first.request_id))
    assert not registry.record(tagged(make_result(RELAYS[1], ONLINE, taken_at=clock()), "0" * 32))
    assert not registry.record(make_result(RELAYS[1], ONLINE, taken_at=clock()))  # a scheduled result
    assert not first.complete
    assert registry.record(tagged(make_result(RELAYS[1], ONLINE, taken_at=clock()), first.request_id))
    assert first.complete and [r.server for r in first.results] == list(RELAYS[:2])

    with pytest.raises(TooLarge):
        registry.open(RELAYS, (ONLINE, ALSO_ONLINE, BLIND))  # 9 answers to wait for; 6 allowed
    second = registry.open(RELAYS, (ONLINE,))
    assert registry.get(first.request_id) is not None  # 2 + 3 answers expected: both fit
    third = registry.open(RELAYS[:1], (ONLINE,))
    assert registry.get(first.request_id) is None  # the oldest forgotten past the capacity
    assert registry.get(second.request_id) is not None
    clock.advance(61)  # the rate's window: three a minute in this registry
    fourth = registry.open(RELAYS[:1], (ONLINE, ALSO_ONLINE, BLIND, GONE))
    assert registry.get(second.request_id) is None and registry.get(third.request_id) is not None  # 1 + 4 fit
    assert registry.get(fourth.request_id) is fourth
    for _ in range(2):
        registry.open(RELAYS[:1], (ONLINE,))
    with pytest.raises(TooMany) as refused:
        registry.open(RELAYS[:1], (ONLINE,))
    assert refused.value.retry_after == 60
    clock.advance(61)
    kept = registry.open(RELAYS[:1], (ONLINE,))
    clock.advance(601)
    assert registry.get(kept.request_id) is None  # kept ten minutes in this registry


def test_a_commands_result_is_an_ordinary_result_newest_taken_wins_either_way() -> None:
    clock = FakeClock()
    store = ResultStore(make_inventory(RELAYS), now=clock)
    registry = Verifications(now=clock)
    sink = Tagged(store, registry)
    verification = registry.open(RELAYS[:1], (ONLINE,))
    relay, topic = RELAYS[0], result_topic(ONLINE, RELAYS[0])
    t0 = clock()
    scheduled = make_result(relay, ONLINE, taken_at=t0, round=100)
    assert sink.ingest_result(payload(scheduled), topic).accepted
    # A command's result taken later, in the same round: it is the newest, for the store and the verification.
    on_command = make_result(relay, ONLINE, taken_at=clock.advance(5), round=100, fail=StageName.forward)
    on_command = tagged(on_command, verification.request_id)
    assert sink.ingest_result(payload(on_command), topic).accepted
    assert store.servers[relay].agents[ONLINE].newest.result_id == on_command.result_id
    assert [r.result_id for r in verification.results] == [on_command.result_id]
    # The next scheduled result replaces it; a second command result that was taken before that, arriving late
    # (a spool after an outage), answers its verification but replaces nothing newer.
    later = make_result(relay, ONLINE, taken_at=clock.advance(10), round=101)
    assert sink.ingest_result(payload(later), topic).accepted
    clock.advance(30)
    again = registry.open(RELAYS[:1], (ONLINE,))
    late = tagged(make_result(relay, ONLINE, taken_at=t0 + 10, round=100), again.request_id)
    assert sink.ingest_result(payload(late), topic).accepted
    assert store.servers[relay].agents[ONLINE].newest.result_id == later.result_id
    assert [r.result_id for r in again.results] == [late.result_id]
    # A re-send (the same result_id) is the store's duplicate, and not an answer twice.
    assert not sink.ingest_result(payload(late), topic).accepted
    assert len(again.results) == 1


@dataclass
class Agents:
    """The send hook: records every command, or refuses for the agents told to."""

    sent: dict[str, list[Command]] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)

    async def send(self, agent: str, data: bytes) -> None:
        if agent in self.refuse:
            raise UnavailableError(self.refuse[agent])
        self.sent.setdefault(agent, []).append(Command.model_validate_json(data))


@dataclass
class Served:
    store: ResultStore
    clock: FakeClock
    agents: Agents
    sink: Tagged
    client: aiohttp.ClientSession
    document: dict[str, Any]

    async def call(self, method: str, path: str, status: int, **kw: Any) -> Any:
        async with self.client.request(method, path, **kw) as response:
            assert response.status == status, await response.text()
            body = await response.json()
            self.check(method, path, status, body)
            return body, response.headers

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        """`body` against the document's schema for this answer: what is served is what is described."""
        template = "/api/v1/verifications/{request_id}" if path.count("/") == 4 else path.partition("?")[0]
        answer = self.document["paths"][template][method.lower()]["responses"][str(status)]
        schema = answer["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator({**schema, "components": self.document["components"]}).validate(body)

    async def post(self, servers: list[str], status: int = 202, **extra: Any) -> Any:
        body, headers = await self.call("POST", "/api/v1/verifications", status, json={"servers": servers, **extra})
        if status == 202:
            assert headers["Location"] == body["location"] == f"/api/v1/verifications/{body['request_id']}"
        return body


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    """Four agents: two online with a good control check, one whose control check fails, one offline."""
    clock = FakeClock()
    store = ResultStore(make_inventory(RELAYS), now=clock, health=HealthSection(quorum=2))
    for agent, online, control_ok in ((ONLINE, 1, 1), (ALSO_ONLINE, 1, 1), (BLIND, 1, 0), (GONE, 0, 1)):
        status = make_status(agent, at=clock(), online=bool(online), control_ok=bool(control_ok))
        store.ingest_status(payload(status), status_topic(agent))
    registry = Verifications(now=clock, per_minute=5)
    agents = Agents()
    app = make_app(store, metrics_update_seconds=None, verifications=registry, send=agents.send)
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:
        yield Served(store, clock, agents, Tagged(store, registry), client, openapi_document())


@pytest.mark.asyncio
async def test_post_asks_the_agents_online_with_a_good_control_check_and_get_reads_their_answers(
    served: Served,
) -> None:
    started = VerificationStarted.model_validate(await served.post([RELAYS[1], RELAYS[0], RELAYS[1]]))
    assert started.servers == (RELAYS[1], RELAYS[0]) and started.all_paths and started.quorum == 2
    assert started.agents == (ONLINE, ALSO_ONLINE)
    assert {(n.agent, n.reason) for n in started.not_asked} == {(BLIND, "control_failed"), (GONE, "offline")}
    for agent in (ONLINE, ALSO_ONLINE):
        (command,) = served.agents.sent[agent]
        assert (command.request_id, command.servers, command.all_paths) == (started.request_id, started.servers, True)
    assert set(served.agents.sent) == {ONLINE, ALSO_ONLINE}

    path = started.location
    view = VerificationView.model_validate((await served.call("GET", path, 200))[0])
    assert (view.results_total, view.complete, view.results) == (0, False, ())
    for relay in started.servers:
        message = tagged(make_result(relay, ONLINE, taken_at=served.clock()), started.request_id)
        assert served.sink.ingest_result(payload(message), result_topic(ONLINE, relay)).accepted
    message = tagged(make_result(RELAYS[0], ALSO_ONLINE, taken_at=served.clock()), started.request_id)
    served.sink.ingest_result(payload(message), result_topic(ALSO_ONLINE, RELAYS[0]))
    view = VerificationView.model_validate((await served.call("GET", path, 200))[0])
    assert view.results_total == 3 and not view.complete
    assert {(a.agent, a.state, a.answered) for a in view.agents} == {(ONLINE, "ok", 2), (ALSO_ONLINE, "ok", 1)}
    rest = VerificationView.model_validate((await served.call("GET", f"{path}?after=2", 200))[0])
    assert [(r.server, r.agent) for r in rest.results] == [(RELAYS[0], ALSO_ONLINE)]

    # Only some agents, as a verification's later rounds ask: the others are not asked again.
    again = await served.post([RELAYS[0]], agents=[ALSO_ONLINE, GONE, "nobody"], all_paths=False)
    assert again["agents"] == [ALSO_ONLINE] and not served.agents.sent[ALSO_ONLINE][-1].all_paths
    assert {n["agent"]: n["reason"] for n in again["not_asked"]} == {GONE: "offline", "nobody": "unknown"}
    assert len(served.agents.sent[ONLINE]) == 1


@pytest.mark.asyncio
async def test_what_post_refuses_and_why(served: Served) -> None:
    body, _ = await served.call("POST", "/api/v1/verifications", 404, json={"servers": ["se-got-wg-01"]})
    assert body["suggestions"][0] == "se-got-wg-001" and "inventory relays only" in body["detail"]
    await served.call("POST", "/api/v1/verifications", 400, json={"servers": []})
    await served.call("POST", "/api/v1/verifications", 400, json={"servers": ["a b"]})
    await served.call("POST", "/api/v1/verifications", 400, data=b'{"servers": [', headers=_json_type())
    await served.call("POST", "/api/v1/verifications", 400, json={"servers": [RELAYS[0]], "extra": 1})
    await served.call("POST", "/api/v1/verifications", 400, json={"servers": ["x"] * 1001})
    await served.call("POST", "/api/v1/verifications", 400, data=b"x" * (600 * 1024), headers=_json_type())
    # A page of another site can post text/plain without a preflight: not application/json, not taken.
    body, _ = await served.call("POST", "/api/v1/verifications", 415, data=json.dumps({"servers": [RELAYS[0]]}))
    await served.call("POST", "/api/v1/verifications?now=1", 400, json={"servers": [RELAYS[0]]})
    assert served.agents.sent == {}  # nothing refused reached an agent

    served.agents.refuse[ONLINE] = "not_authorized (0x87)"
    started = await served.post([RELAYS[0]])
    assert started["agents"] == [ALSO_ONLINE]
    assert {"agent": ONLINE, "reason": "not_authorized (0x87)"} in started["not_asked"]
    served.agents.refuse[ALSO_ONLINE] = "not connected to the broker"
    body, _ = await served.call("POST", "/api/v1/verifications", 503, json={"servers": [RELAYS[0]]})
    assert "reached no agent" in body["detail"] and "not connected" in body["detail"]
    served.agents.refuse.clear()

    for _ in range(3):  # five a minute in this fixture: two taken above
        await served.post([RELAYS[0]])
    body, headers = await served.call("POST", "/api/v1/verifications", 429, json={"servers": [RELAYS[0]]})
    assert body["error"] == "too_many_requests" and int(headers["Retry-After"]) >= 1

    served.clock.advance(3600)  # every agent silent now
    body, _ = await served.call("POST", "/api/v1/verifications", 503, json={"servers": [RELAYS[0]]})
    assert "no agent is online" in body["detail"] and f"{ONLINE} silent" in body["detail"]


@pytest.mark.asyncio
async def test_get_refuses_what_is_not_a_verification(served: Served) -> None:
    await served.call("GET", "/api/v1/verifications/not-an-id", 400)
    await served.call("GET", f"/api/v1/verifications/{'0' * 32}", 404)
    started = await served.post([RELAYS[0]])
    for query in ("after=-1", "after=x", "after=1&after=2", "since=1", "after=10000000000"):
        await served.call("GET", f"{started['location']}?{query}", 400)


@pytest.mark.asyncio
async def test_a_client_that_leaves_mid_body_is_not_a_bug(caplog: pytest.LogCaptureFixture) -> None:
    # A CI job cancelled while it posts, a curl given a Content-Length it never sends: the client's doing, not the
    # aggregator's. It was logged as "bug answering POST /api/v1/verifications" with a traceback.
    access = logging.getLogger("test.access")
    caplog.set_level(logging.INFO)
    store = ResultStore(make_inventory(RELAYS), now=FakeClock())
    app = make_app(store, metrics_update_seconds=None, verifications=Verifications(now=FakeClock()), send=Agents().send)
    async with serving(app, LOOPBACK, access_log=access) as bound:
        _, writer = await asyncio.open_connection(str(bound.host), bound.port)
        head = "POST /api/v1/verifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        writer.write(f'{head}Content-Length: 1000\r\n\r\n{{"servers": ['.encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(10):  # a hang guard: the access log's line comes once the request is answered
            while not [r for r in caplog.records if r.name == "test.access"]:
                await asyncio.sleep(0.01)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.asyncio
async def test_a_body_that_never_arrives_is_answered_408(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that declares a body and never sends it held its connection and the handler open for as long as it
    # stayed: nothing timed the body out.
    monkeypatch.setattr(aggregator_http, "BODY_SECONDS", 0.3)
    store, agents = ResultStore(make_inventory(RELAYS), now=FakeClock()), Agents()
    app = make_app(store, metrics_update_seconds=None, verifications=Verifications(now=FakeClock()), send=agents.send)
    async with serving(app, LOOPBACK) as bound:
        reader, writer = await asyncio.open_connection(str(bound.host), bound.port)
        head = "POST /api/v1/verifications HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        writer.write(f'{head}Content-Length: 1000\r\n\r\n{{"servers": ['.encode())
        await writer.drain()
        async with asyncio.timeout(10):  # a hang guard: the answer comes after BODY_SECONDS
            answer = (await reader.readuntil(b"\r\n\r\n")).decode()
            length = int(next(line for line in answer.split("\r\n") if line.startswith("Content-Length:")).split()[1])
            body = json.loads(await reader.readexactly(length))
        writer.close()
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "Connection: close" in answer  # what may still come of the body is not read as a next request
    assert body["error"] == "request_timeout" and "0.3 s" in body["detail"]
    assert not agents.sent  # nothing was asked of anyone


@pytest.mark.asyncio
async def test_the_inventory_is_served_as_the_relays_it_holds(served: Served) -> None:
    body, _ = await served.call("GET", "/api/v1/inventory", 200)
    inventory = InventoryView.model_validate(body).inventory()
    assert inventory.relays == served.store.inventory.relays
    await served.call("GET", "/api/v1/inventory?x=1", 400)


def test_the_api_names_the_agent_states_the_aggregator_has() -> None:
    assert set(get_args(AgentWord)) == {str(state) for state in AgentState} | {"unknown"}


def _json_type() -> dict[str, str]:
    return {"Content-Type": "application/json"}
