"""deploy/prometheus: the scrape config and alert rules pass the real promtool, every alert has unit tests that see it
fire and stay quiet (and that fail when the rule is broken), the rules only name metrics the aggregator exports, and
a real Prometheus running the scrape config routes each relay to its agent's /probe?target=NAME."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from probe.aggregator.metrics import ALL_METRICS
from tests.unit.prometheus_server import Prometheus, running
from tests.unit.prometheus_server import promtool as run_promtool

DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG, RULES, RULE_TESTS = DIR / "prometheus.yml", DIR / "wgprobe-alerts.yml", DIR / "wgprobe-alerts.test.yml"
REQUIRED = {
    "WgprobeServerDown",
    "WgprobePortRangeBroken",
    "WgprobeEgressMismatch",
    "WgprobeManyServersFailing",
    "WgprobeAgentDown",
    "WgprobeResultsStale",
}


def promtool(*args: str, cwd: Path = DIR) -> subprocess.CompletedProcess[str]:
    return run_promtool(*args, cwd=cwd)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_checks_the_config_and_rules() -> None:
    config = promtool("check", "config", CONFIG.name)
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", RULES.name)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in rules.stdout


def test_the_rule_unit_tests_pass() -> None:
    done = promtool("test", "rules", RULE_TESTS.name)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert names >= REQUIRED
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == names, f"alerts never seen firing in a test: {names - fired}"
    assert quiet == names, f"alerts never seen staying quiet in a test: {names - quiet}"


def test_every_alert_says_who_to_wake_and_what_broke() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    pages = {rule["alert"] for rule in alerts() if rule["labels"]["severity"] == "page"}
    assert {"WgprobeServerDown", "WgprobeManyServersFailing"} <= pages
    many = next(rule for rule in alerts() if rule["alert"] == "WgprobeManyServersFailing")
    assert "for" not in many  # a deploy gone bad pages at once


@pytest.mark.parametrize(
    ("alert", "old", "new"),
    [
        ("WgprobeServerDown", '"failure", "forwarding_broken"', '"failure", "down"'),  # the case not named
        ("WgprobeServerDown", "for: 1m", "for: 0s"),  # a 30 s blip pages
        ("WgprobeServerDown", '"failure", "egress_mismatch"', '"failure", "down"'),  # the wrong address, unsaid
        ("WgprobePortRangeBroken", "== 1)\n          )", ">= 0)\n          )"),  # a relay down counts as a port
        ("WgprobeEgressMismatch", '(min by (server) (wgprobe_stage_success{stage="forward"}) == 1)', "vector(1)"),
        ("WgprobeManyServersFailing", ">= 0.05", ">= 0"),  # three failing in a large fleet page
        ("WgprobeAgentDown", "max without (instance) (wgprobe_agent_up)", "min without (instance) (wgprobe_agent_up)"),
        ("WgprobeResultsStale", "(max without (instance) (wgprobe_agent_up) == 1)", "(vector(1))"),
        # Either aggregator alone would blame an agent for its own clock.
        ("WgprobeAgentClockOff", "min without (instance) (abs(", "max without (instance) (abs("),
    ],
)
def test_the_unit_tests_catch_a_broken_rule(tmp_path: Path, alert: str, old: str, new: str) -> None:
    text = RULES.read_text()
    assert text.count(old) >= 1, old
    (tmp_path / RULES.name).write_text(text.replace(old, new, 1))
    shutil.copy(RULE_TESTS, tmp_path)
    done = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and alert in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_rules_name_only_metrics_that_exist() -> None:
    exported = {spec.name for spec in ALL_METRICS} | {"up"}
    used: set[str] = set()
    for rule in alerts():
        used |= set(re.findall(r"\bwgprobe_\w+", rule["expr"] + rule["annotations"]["description"]))
    assert used and used <= exported, f"not exported by probe/aggregator/metrics.py: {used - exported}"


class Stub:
    """A stand-in agent or aggregator on loopback: answers /metrics and /probe?target=NAME, and records requests."""

    def __init__(self, probe_value: int) -> None:
        self.requests: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append(self.path)
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/probe":
                    body = f"probe_success {probe_value}\n"
                else:
                    body = 'wgprobe_server_up{server="se-got-wg-001"} 1\n'
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def stubs() -> Iterator[tuple[Stub, Stub, Stub]]:
    made = (Stub(1), Stub(0), Stub(1))  # agent se-got answers success, agent de-fra failure; the aggregator
    yield made
    for stub in made:
        stub.close()


def until_found(prometheus: Prometheus, query: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The series `query` finds once there are `count` of them (or what it finds at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = prometheus.query(query)
        assert status == 200, body
        found: list[dict[str, Any]] = body["data"]["result"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_prometheus_routes_each_relay_to_its_agents_probe(tmp_path: Path, stubs: tuple[Stub, Stub, Stub]) -> None:
    agent_a, agent_b, aggregator = stubs
    config = yaml.safe_load(CONFIG.read_text())
    config.pop("alerting")  # no Alertmanager here, and no address outside loopback
    config["global"]["scrape_interval"] = "1s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["wgprobe-aggregator"]["static_configs"] = [{"targets": [aggregator.address]}]
    jobs["wgprobe-agent"]["static_configs"] = [{"targets": [agent_a.address, agent_b.address]}]
    probe = jobs["wgprobe-probe"]
    probe["scrape_interval"] = probe["scrape_timeout"] = "1s"
    groups = probe["static_configs"]
    groups[0]["labels"]["__tmp_agent"], groups[1]["labels"]["__tmp_agent"] = agent_a.address, agent_b.address
    relays = set(groups[0]["targets"])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, tmp_path)
    with running(tmp_path / "prometheus.yml", tmp_path / "data") as prometheus:
        series: list[dict[str, Any]] = []
        deadline = time.monotonic() + 30
        while len(series) < 2 * len(relays) and time.monotonic() < deadline:
            time.sleep(0.5)
            status, body = prometheus.query('probe_success{job="wgprobe-probe"}')
            assert status == 200, body
            series = body["data"]["result"]
        by_agent = {(s["metric"]["agent"], s["metric"]["instance"]): s["value"][1] for s in series}
        assert by_agent == {("se-got", r): "1" for r in relays} | {("de-fra", r): "0" for r in relays}
        assert all("__tmp_agent" not in s["metric"] for s in series)
        # Each job scrapes at its own offset within the interval: the other jobs' first scrape may still be due.
        ups = until_found(prometheus, 'up{job=~"wgprobe-aggregator|wgprobe-agent"}', 3)
        assert sorted(s["value"][1] for s in ups) == ["1", "1", "1"]
        assert until_found(prometheus, "wgprobe_server_up", 1)[0]["metric"]["server"] == "se-got-wg-001"
    for stub in (agent_a, agent_b):
        probed = {
            urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("target", [""])[0]
            for path in stub.requests
            if path.startswith("/probe")
        }
        assert probed == relays  # every relay asked of each agent by name, nothing else
