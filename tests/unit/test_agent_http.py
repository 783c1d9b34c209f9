"""The agent's HTTP endpoints on a real loopback socket: `/metrics`, and the blackbox-style `/probe?target=NAME` with
a fake probe (only inventory names are targets, the concurrency limit, the scrape's deadline, nothing blamed on the
relay that it did not do); and `result_metrics`, which `promtool check metrics` accepts."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.http import make_agent_app
from agents.probe_metrics import NAMES, result_metrics
from probe.addresses import Endpoint
from probe.aggregator.records import port_slot
from probe.aggregator.testing import make_inventory, make_path, make_result
from probe.errors import UnavailableError
from probe.http import serving
from probe.results import Reason, ServerResult, StageName

LOOPBACK = Endpoint.parse("127.0.0.1:0", allow_port_zero=True)
RELAYS = ("se-got-wg-001", "se-got-wg-002")
AGENT_METRICS = b"# HELP wgprobe_agent_probes_total x\n# TYPE wgprobe_agent_probes_total counter\n"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def broken_nat(server: str = RELAYS[0]) -> ServerResult:
    """Main port fine on IPv6, NAT broken on IPv4 main port, extended range closed on IPv4 (port unreachable)."""
    paths = (
        make_path(51820, "ipv4", fail=StageName.forward),
        make_path(51820, "ipv6", sent=5, received=4),
        make_path(4000, "ipv4", fail=StageName.handshake, reason=Reason.port_unreachable),
    )
    return make_result(server, "agent-a", taken_at=1_800_000_000.0, paths=paths)


def samples(text: bytes) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def promtool_check(text: bytes) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool is needed (Debian: apt-get install prometheus)"
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, check=False)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout + done.stderr


# -- result_metrics ----------------------------------------------------------------------------------------------


def test_a_failed_relay_reads_as_blackbox_exporter_would_say_it() -> None:
    text = result_metrics(broken_nat())
    found = samples(text)
    assert value(found, "probe_success") == 0.0
    assert value(found, "probe_duration_seconds") == 0.05
    assert value(found, "probe_wgprobe_paths") == 3.0
    assert value(found, "probe_wgprobe_path_success", port="51820", family="ipv6") == 1.0
    assert value(found, "probe_wgprobe_path_success", port="51820", family="ipv4") == 0.0
    assert value(found, "probe_wgprobe_path_failure_reason", port="4000", family="ipv4", reason="port_unreachable") == 1
    nat = {"port": "51820", "family": "ipv4"}
    assert value(found, "probe_wgprobe_stage_success", stage="tunnel", **nat) == 1.0
    assert value(found, "probe_wgprobe_stage_success", stage="forward", **nat) == 0.0
    assert value(found, "probe_wgprobe_stage_success", stage="egress", **nat) is None  # unjudged: absent
    assert value(found, "probe_wgprobe_stage_duration_seconds", stage="egress", **nat) is None
    assert value(found, "probe_wgprobe_stage_success", stage="tunnel", port="4000", family="ipv4") is None
    lossy = {"port": "51820", "family": "ipv6", "stage": "mtu"}
    assert value(found, "probe_wgprobe_stage_loss_ratio", **lossy) == 0.2
    assert value(found, "probe_wgprobe_stage_packets_sent", **lossy) == 5.0
    assert value(found, "probe_wgprobe_stage_packets_received", **lossy) == 4.0
    assert value(found, "probe_wgprobe_stage_duration_seconds", **lossy) == 0.012
    assert {name for name, _ in found} == set(NAMES)
    promtool_check(text)


def test_a_healthy_relay_succeeds_and_ports_can_be_named_by_slot() -> None:
    relay = make_inventory([RELAYS[1]]).relays[0]
    result = make_result(RELAYS[1], "agent-a", taken_at=1_800_000_000.0, ports=(51820, 4711, 40000))
    found = samples(result_metrics(result, port_label=lambda port: port_slot(relay, port)))
    assert value(found, "probe_success") == 1.0
    assert value(found, "probe_wgprobe_path_success", port="4000-33433", family="ipv6") == 1.0
    assert value(found, "probe_wgprobe_path_success", port="33565-51820", family="ipv4") == 1.0
    assert not any(name == "probe_wgprobe_path_failure_reason" for name, _ in found)


def test_paths_that_share_a_series_are_written_once() -> None:
    relay = make_inventory([RELAYS[1]]).relays[0]
    result = make_result(RELAYS[1], "agent-a", taken_at=1_800_000_000.0, ports=(4711, 4712))
    text = result_metrics(result, port_label=lambda port: port_slot(relay, port))
    assert value(samples(text), "probe_wgprobe_paths") == 2.0  # one per family: 4711 and 4712 share a slot
    promtool_check(text)


# -- the app -----------------------------------------------------------------------------------------------------


@dataclass
class FakeProbe:
    """Probes nothing: answers `broken_nat` for the target, or waits for `release` when `hold` is set."""

    hold: bool = False
    error: BaseException | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[str] = field(default_factory=list)
    running: int = 0
    most: int = 0
    cancelled: int = 0

    async def __call__(self, target: str) -> ServerResult:
        self.calls.append(target)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.error is not None:
                raise self.error
            if self.hold:
                await self.release.wait()
            return broken_nat(target)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1


Get = Callable[..., Coroutine[Any, Any, tuple[int, str]]]


@asynccontextmanager
async def agent_app(fake: FakeProbe, *, concurrency: int = 2, queue_seconds: float = 1.0) -> AsyncIterator[Get]:
    app = make_agent_app(
        metrics=lambda: AGENT_METRICS,
        probe=fake,
        targets=lambda: RELAYS,
        concurrency=concurrency,
        queue_seconds=queue_seconds,
    )
    async with serving(app, LOOPBACK) as bound, aiohttp.ClientSession(base_url=f"http://{bound}") as client:

        async def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
            async with client.get(path, headers=headers) as response:
                assert response.headers["Content-Type"].startswith("text/plain")
                return response.status, await response.text()

        yield get


@pytest.mark.asyncio
async def test_metrics_are_the_agents_own() -> None:
    async with agent_app(FakeProbe()) as get:
        assert await get("/metrics") == (200, AGENT_METRICS.decode())


@pytest.mark.asyncio
async def test_probe_answers_with_the_relays_metrics() -> None:
    fake = FakeProbe()
    async with agent_app(fake) as get:
        status, text = await get(f"/probe?target={RELAYS[1]}")
    assert (status, fake.calls) == (200, [RELAYS[1]])
    assert text.encode() == result_metrics(broken_nat(RELAYS[1]))
    assert value(samples(text.encode()), "probe_success") == 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("", "target parameter is missing"),
        ("?target=", "target parameter is missing"),
        ("?target=198.18.0.1", "unknown target '198.18.0.1'"),  # never an address: inventory names only
        ("?target=se-got-wg-001:51820", "unknown target"),
        ("?target=%1b%5b2J", "unknown target '\\x1b[2J'"),  # escaped when quoted back
        (f"?target={RELAYS[0]}&target={RELAYS[1]}", "give one target"),
        (f"?target={RELAYS[0]}&module=icmp", "unknown parameter module"),
    ],
)
async def test_a_bad_target_is_a_400_and_probes_nothing(query: str, words: str) -> None:
    fake = FakeProbe()
    async with agent_app(fake) as get:
        status, text = await get(f"/probe{query}")
    assert status == 400 and words in text, text
    assert fake.calls == []


@pytest.mark.asyncio
async def test_beyond_the_concurrency_limit_a_request_waits_briefly_then_gets_a_503() -> None:
    fake = FakeProbe(hold=True)
    async with agent_app(fake, concurrency=1, queue_seconds=0.2) as get:
        first = asyncio.create_task(get(f"/probe?target={RELAYS[0]}"))
        for _ in range(500):  # hang guard: the first request reaches the probe within milliseconds
            if fake.calls:
                break
            await asyncio.sleep(0.01)
        status, text = await asyncio.wait_for(get(f"/probe?target={RELAYS[1]}"), 10)
        assert status == 503 and "1 probes are running already" in text
        waiting = asyncio.create_task(get(f"/probe?target={RELAYS[1]}"))
        await asyncio.sleep(0.05)
        fake.release.set()  # the first finishes within the second's wait: the second gets the slot
        assert (await asyncio.wait_for(first, 10))[0] == 200
        assert (await asyncio.wait_for(waiting, 10))[0] == 200
    assert fake.calls == [RELAYS[0], RELAYS[1]] and fake.most == 1


@pytest.mark.asyncio
async def test_the_scrape_timeout_header_bounds_the_probe() -> None:
    fake = FakeProbe(hold=True)
    async with agent_app(fake) as get:
        header = {"X-Prometheus-Scrape-Timeout-Seconds": "0.7"}
        status, text = await asyncio.wait_for(get(f"/probe?target={RELAYS[0]}", header), 10)
        assert status == 503 and "did not finish within 0.2 s" in text  # 0.7 s minus the 0.5 s offset
        assert fake.cancelled == 1  # the probe was cancelled, not left running
        for bad in ("soon", "0.4", "nan", "-1"):
            status, text = await get(f"/probe?target={RELAYS[0]}", {"X-Prometheus-Scrape-Timeout-Seconds": bad})
            assert status == 400 and "X-Prometheus-Scrape-Timeout-Seconds" in text
    assert fake.calls == [RELAYS[0]]


@pytest.mark.asyncio
async def test_what_the_agent_cannot_judge_is_not_blamed_on_the_relay() -> None:
    fake = FakeProbe(error=UnavailableError("the agent's own network is down"))
    async with agent_app(fake) as get:
        status, text = await get(f"/probe?target={RELAYS[0]}")
    assert status == 503 and "cannot judge se-got-wg-001: the agent's own network is down" in text
    assert "probe_success" not in text


@pytest.mark.asyncio
async def test_a_bug_is_a_500_without_a_stack_trace(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeProbe(error=RuntimeError("secret internals"))
    caplog.set_level(logging.ERROR, logger="wgprobe.agent.http")
    async with agent_app(fake) as get:
        status, text = await get(f"/probe?target={RELAYS[0]}")
        assert (await get(f"/probe?target={RELAYS[0]}"))[0] == 500  # the slot was given back
    assert status == 500 and "secret" not in text and "Traceback" not in text
    assert "secret internals" in caplog.text


def test_concurrency_must_allow_a_probe() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        make_agent_app(metrics=lambda: b"", probe=FakeProbe(), targets=lambda: RELAYS, concurrency=0)
