"""A real Prometheus (Debian's /usr/bin/prometheus) scrapes a running aggregator on loopback: the series appear with
the values the store decided, and follow it when a relay heals. The store is fed directly (no MQTT)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from probe.addresses import Endpoint
from probe.aggregator.config import HealthSection
from probe.aggregator.http import make_app
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import make_inventory, make_result, make_status, payload
from probe.http import serving
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import StageName

pytestmark = pytest.mark.integration

BROKEN, HEALTHY, SILENT = "se-got-wg-001", "se-got-wg-002", "de-ber-wg-001"
AGENTS = ("agent-a", "agent-b", "agent-c")
_TARGET_LABELS = ("__name__", "instance", "job")
DEADLINE = 60.0  # hang guard: Prometheus scrapes every second here


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


@pytest_asyncio.fixture
async def aggregator() -> AsyncIterator[tuple[ResultStore, Endpoint]]:
    # The real clock (Prometheus scrapes in real time), with an interval long enough that nothing goes stale here.
    store = ResultStore(
        make_inventory([BROKEN, HEALTHY, SILENT]), now=time.time, health=HealthSection(interval_seconds=600)
    )
    for agent in AGENTS:
        store.ingest_status(payload(make_status(agent, at=time.time())), status_topic(agent))
        send(store, make_result(BROKEN, agent, taken_at=time.time(), fail=StageName.forward))
        send(store, make_result(HEALTHY, agent, taken_at=time.time()))
    async with serving(make_app(store), Endpoint.parse("127.0.0.1:0", allow_port_zero=True)) as bound:
        yield store, bound


@contextmanager
def prometheus(target: Endpoint, tmp_path: Path) -> Iterator[int]:
    """A Prometheus of our own scraping `target` every second: config and data under tmp_path, a free loopback
    port, stopped by its PID. Yields its port."""
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    assert Path(binary).exists(), "Prometheus is needed (Debian: apt-get install prometheus)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: wgprobe\n    static_configs:\n      - targets: ['{target}']\n"
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 0, log_path.read_text(errors="replace")


async def query(client: aiohttp.ClientSession, port: int, promql: str) -> dict[str, float]:
    """{label set as text: value} of an instant query, {} while Prometheus is not answering yet."""
    try:
        async with client.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": promql}) as response:
            if response.status != 200:
                return {}
            body = await response.json()
    except aiohttp.ClientConnectionError:
        return {}
    shown: dict[str, float] = {}
    for item in body["data"]["result"]:
        labels = sorted((k, v) for k, v in item["metric"].items() if k not in _TARGET_LABELS)
        shown[",".join(f"{k}={v}" for k, v in labels)] = float(item["value"][1])
    return shown


async def until(client: aiohttp.ClientSession, port: int, promql: str, expected: dict[str, float]) -> None:
    seen: dict[str, float] = {}
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        seen = await query(client, port, promql)
        if seen == expected:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{promql}: expected {expected}, Prometheus has {seen}")


@pytest.mark.asyncio
async def test_prometheus_scrapes_the_aggregator(aggregator: tuple[ResultStore, Endpoint], tmp_path: Path) -> None:
    store, bound = aggregator
    with prometheus(bound, tmp_path) as port:
        async with aiohttp.ClientSession() as client:
            await until(client, port, "up", {"": 1.0})
            await until(client, port, "wgprobe_server_up", {f"server={BROKEN}": 0.0, f"server={HEALTHY}": 1.0})
            unknown = 'wgprobe_server_health{state="unknown"} == 1'
            await until(client, port, unknown, {f"server={SILENT},state=unknown": 1.0})
            sent = f'wgprobe_stage_packets_sent_total{{server="{BROKEN}",stage="forward"}}'
            await until(client, port, f"sum({sent})", {"": 3 * 2 * 3.0})  # 3 agents x 2 paths x 3 packets
            for agent in AGENTS:  # the relay heals
                send(store, make_result(BROKEN, agent, taken_at=time.time()))
            await until(client, port, "wgprobe_server_up", {f"server={BROKEN}": 1.0, f"server={HEALTHY}": 1.0})
