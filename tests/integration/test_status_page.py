"""The status page in a real headless Chromium (Debian's, driven by Playwright) against a running aggregator with
1,000 relays: the broken relay red with its reason and a link to its detail, filtering and scrolling through all of
them, updates without a reload, and outside text shown as text, never run. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from probe.addresses import Endpoint
from probe.aggregator.config import HealthSection
from probe.aggregator.http import make_app
from probe.aggregator.store import ResultStore
from probe.aggregator.testing import make_inventory, make_path, make_result, make_status, payload
from probe.http import serving
from probe.messages import ResultMessage, result_topic, status_topic
from probe.results import StageName

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
# Playwright's own browser download is not used: Debian's chromium, headless, talking to nothing but the page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CITIES = ("se-got", "se-sto", "se-mma", "de-ber", "de-fra", "us-nyc", "us-lax", "us-chi", "gb-lon", "gb-man", "jp-tyo")
RELAYS = [f"{CITIES[n % len(CITIES)]}-wg-{n // len(CITIES) + 1:03d}" for n in range(1000)]
BROKEN = "se-got-wg-001"
ALSO_BROKEN = ("se-sto-wg-004", "de-ber-wg-007", "us-nyc-wg-010")
HOSTILE = '<img src=x onerror="window.__xss=1"><b>bold</b>'
AGENTS = ("agent-eu", "agent-us", "agent-ap")
DOWN_RED = "rgb(179, 38, 30)"  # --down-bg in style.css
WAIT_MS = 15_000  # hang guard for anything the page does (it polls every second here)


def send(store: ResultStore, message: ResultMessage) -> None:
    assert store.ingest_result(payload(message), result_topic(message.agent, message.server)).accepted


def fleet() -> ResultStore:
    """1,000 relays seen by three agents; four have broken NAT and share kernel 4.15, one of them carries a label
    and an evidence name written to be run as HTML."""
    labels = {name: {"kernel": "5.15", "provider": f"p{n % 3}"} for n, name in enumerate(RELAYS)}
    for name in (BROKEN, *ALSO_BROKEN):
        labels[name]["kernel"] = "4.15"
    labels[BROKEN]["note"] = HOSTILE
    # The real clock (the page shows ages), with an interval long enough that nothing goes stale during the test.
    store = ResultStore(
        make_inventory(RELAYS, labels=labels), now=time.time, health=HealthSection(interval_seconds=600)
    )
    for agent in AGENTS:
        store.ingest_status(payload(make_status(agent, at=time.time())), status_topic(agent))
    for _ in range(2):  # the last agent's clock runs two minutes ahead: two statuses in a row say so
        late = make_status(AGENTS[-1], at=time.time() + 120)
        store.ingest_status(payload(late), status_topic(AGENTS[-1]))
    for agent in AGENTS:
        for name in RELAYS:
            if name in (BROKEN, *ALSO_BROKEN):
                paths = [
                    make_path(51820, family, fail=StageName.forward, evidence=HOSTILE) for family in ("ipv4", "ipv6")
                ]
                send(store, make_result(name, agent, taken_at=time.time(), paths=paths))
            else:
                send(store, make_result(name, agent, taken_at=time.time()))
    return store


@dataclass
class Served:
    store: ResultStore
    url: str
    browser: Browser
    problems: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # problems a test causes on purpose

    async def open(self, path: str = "/?refresh=1") -> Page:
        """A page on the aggregator; console errors (CSP violations among them), page errors and any request that
        leaves the aggregator are recorded as problems."""
        page = await self.browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: self.problems.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on(
            "request",
            lambda r: None if r.url.startswith((self.url, "data:")) else self.problems.append(f"request: {r.url}"),
        )
        await page.goto(self.url + path)
        await page.wait_for_selector("body[data-ready='1']", timeout=WAIT_MS)
        return page


@pytest_asyncio.fixture
async def served() -> AsyncIterator[Served]:
    assert Path(CHROMIUM).exists(), "chromium is needed (Debian: apt-get install --no-install-recommends chromium)"
    store = fleet()
    async with (
        serving(make_app(store), Endpoint.parse("127.0.0.1:0", allow_port_zero=True)) as bound,
        async_playwright() as playwright,
    ):
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            served = Served(store, f"http://{bound}", browser)
            yield served
        finally:
            await browser.close()
    assert [p for p in served.problems if p not in served.expected] == []


async def tile_count(page: Page, selector: str = "a.tile") -> int:
    return int(await page.locator(selector).count())


@pytest.mark.asyncio
async def test_the_broken_relay_is_red_with_its_reason_and_links_to_its_detail(served: Served) -> None:
    page = await served.open()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "status-page.png"))
    tile = page.locator(f'a.tile[data-relay="{BROKEN}"]')
    assert await tile.get_attribute("data-state") == "down"
    assert await tile.inner_text() == f"{BROKEN}\ndown · forward_timeout"  # a word, not colour alone
    assert await tile.evaluate("node => getComputedStyle(node).backgroundColor") == DOWN_RED
    rows = page.locator("#failing tbody tr")
    assert await rows.count() == 4
    row = rows.filter(has=page.locator(f"a:text-is('{BROKEN}')"))
    assert await row.locator("td").nth(2).inner_text() == "forward_timeout"
    assert await row.locator("td .state-down").inner_text() == "down"
    assert "kernel=4.15" in await page.locator("#shared tbody tr").first.inner_text()
    assert await page.locator("#agents tbody tr").count() == 3
    agent_rows = {
        agent: page.locator("#agents tbody tr").filter(has=page.locator(f"td:text-is('{agent}')")) for agent in AGENTS
    }
    assert "its clock is off by 120 s" in await agent_rows[AGENTS[-1]].inner_text()
    assert "clock" not in await agent_rows[AGENTS[0]].inner_text()

    await row.locator("a").click()
    await page.wait_for_selector(f"#detail h2:text-is('{BROKEN}')", timeout=WAIT_MS)
    assert page.url.endswith(f"#/servers/{BROKEN}")
    assert await page.locator("#detail .agent").count() == 3
    assert "forward_timeout" in await page.locator("#detail .agent tbody tr").first.inner_text()
    assert await page.locator("#detail .detail-head .state-down").inner_text() == "down"
    await page.screenshot(path=str(ARTIFACTS / "status-page-detail.png"), full_page=True)


@pytest.mark.asyncio
async def test_a_thousand_relays_are_all_there_and_filtering_and_scrolling_work(served: Served) -> None:
    page = await served.open()
    timings = await page.evaluate(
        "[performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,"
        " performance.getEntriesByName('wgprobe-render-fleet')[0].duration,"
        " performance.getEntriesByName('wgprobe-render-fleet')[0].startTime,"
        " performance.getEntriesByType('resource').find(r => r.name.endsWith('/api/v1/servers')).decodedBodySize]"
    )
    loaded, render, rendered_at, size = timings
    # No timed assertion (a shared machine's speed varies); the figures are printed (pytest -s) for the report.
    shown = f"{size / 1024:.0f} KiB of JSON, drawn in {render:.0f} ms, {rendered_at - loaded:.0f} ms after load"
    print(f"\n1,000 relays: {shown}")
    assert await tile_count(page) == 1000
    assert await page.locator("#places .country").count() == 5  # se, de, us, gb, jp
    assert await page.inner_text("#shown") == "showing 1000 of 1000"

    await page.fill("#filter", "us-nyc")
    assert await tile_count(page, "a.tile:visible") == len([n for n in RELAYS if n.startswith("us-nyc")])
    assert await page.locator(".country:visible").count() == 1
    await page.fill("#filter", "kernel=4.15")
    assert await tile_count(page, "a.tile:visible") == 4
    await page.fill("#filter", "")
    await page.check("#failing-only")
    assert await tile_count(page, "a.tile:visible") == 4
    await page.uncheck("#failing-only")
    assert await tile_count(page, "a.tile:visible") == 1000

    last = page.locator("a.tile").last
    await last.scroll_into_view_if_needed()
    assert await last.is_visible()
    assert await page.evaluate("window.scrollY") > 0
    name = await last.get_attribute("data-relay")
    await last.click()
    await page.wait_for_selector(f"#detail h2:text-is('{name}')", timeout=WAIT_MS)


@pytest.mark.asyncio
async def test_the_page_updates_itself_without_reloading(served: Served) -> None:
    page = await served.open()
    await page.evaluate("window.__same_page = true")
    healthy = RELAYS[500]
    tile = page.locator(f'a.tile[data-relay="{healthy}"]')
    assert await tile.get_attribute("data-state") == "up"
    for agent in AGENTS:
        send(served.store, make_result(healthy, agent, taken_at=time.time(), fail=StageName.handshake))
    await page.wait_for_selector(f'a.tile[data-relay="{healthy}"][data-state="down"]', timeout=WAIT_MS)
    assert await page.evaluate("window.__same_page") is True
    assert await page.locator("#failing tbody tr").count() == 5
    assert "down 5" in await page.inner_text("#totals")


@pytest.mark.asyncio
async def test_the_page_says_when_the_aggregator_has_lost_the_broker(served: Served) -> None:
    # Verdicts age into unknown while no agent is heard: the page says why, where it says it is live.
    served.store.broker_connection(True)
    page = await served.open()
    connection = page.locator("#connection.failed")
    assert await connection.count() == 0
    served.store.broker_connection(False)
    await page.wait_for_selector("#connection.failed", timeout=WAIT_MS)
    assert "lost the MQTT broker" in await connection.inner_text()
    served.store.broker_connection(True)
    await page.wait_for_selector("#connection:not(.failed)", timeout=WAIT_MS)


@pytest.mark.asyncio
async def test_outside_text_is_shown_as_text_never_run(served: Served) -> None:
    page = await served.open()
    row = page.locator("#failing tbody tr").filter(has=page.locator(f"a:text-is('{BROKEN}')"))
    assert HOSTILE in await row.locator("td.labels").inner_text()
    assert await page.locator("#failing img, #failing b").count() == 0
    await page.goto(f"{served.url}/?refresh=1#/servers/{BROKEN}")
    await page.wait_for_selector(f"#detail h2:text-is('{BROKEN}')", timeout=WAIT_MS)
    assert HOSTILE in await page.inner_text("#detail")  # the label and the evidence name
    assert await page.locator("#detail img, #detail b").count() == 0
    await asyncio.sleep(1.5)  # a poll later, still nothing ran
    assert await page.evaluate("window.__xss") is None


@pytest.mark.asyncio
async def test_an_unknown_relay_says_so_and_suggests_names(served: Served) -> None:
    served.expected.append("console: Failed to load resource: the server responded with a status of 404 (Not Found)")
    page = await served.open(f"/?refresh=1#/servers/{BROKEN}x")
    await page.wait_for_selector("#detail p a", timeout=WAIT_MS)
    assert f"no relay {BROKEN}x in the inventory" in await page.inner_text("#detail")
    assert await page.locator("#detail p a").first.inner_text() == BROKEN


@pytest.mark.asyncio
async def test_ages_are_reckoned_by_the_aggregators_clock(served: Served) -> None:
    """An aggregator whose clock is an hour behind the browser's: a relay that broke seconds ago reads so."""
    behind = time.time() - 3600

    def clock() -> float:
        return behind + (time.monotonic() - started)

    started = time.monotonic()
    store = ResultStore(make_inventory([BROKEN]), now=clock, health=HealthSection(interval_seconds=600))
    for agent in AGENTS:
        send(store, make_result(BROKEN, agent, taken_at=clock(), fail=StageName.forward))
    async with serving(make_app(store), Endpoint.parse("127.0.0.1:0", allow_port_zero=True)) as bound:
        page = await Served(store, f"http://{bound}", served.browser, served.problems).open()
        since = await page.locator("#failing tbody tr td").nth(3).inner_text()
    assert since.endswith(" s ago") and int(since.split()[0]) < 60, since
