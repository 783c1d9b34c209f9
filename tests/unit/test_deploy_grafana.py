"""deploy/grafana/wgprobe-fleet.json: the dashboard's structure is what Grafana's import needs (uid, title, panels laid
out on the 24-column grid, a data source on every panel and query, defined template variables), every query names
only metrics that wgprobe exports, and a real Prometheus parses every query (a syntax error is an HTTP 400)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from probe.aggregator.metrics import ALL_METRICS
from tests.unit.prometheus_server import Prometheus, running

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "wgprobe-fleet.json"
PANEL_TYPES = {"row", "stat", "timeseries", "table", "status-history", "state-timeline", "bargauge", "text"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What Grafana puts in place of its own variables before a query reaches Prometheus.
SUBSTITUTIONS = {"$__rate_interval": "1m", "$server": ".*", "$agent": ".*"}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def exported_names() -> set[str]:
    """Every metric name wgprobe exposes: the aggregator's table, and the agent's (counters get `_total`)."""
    names = {spec.name for spec in ALL_METRICS}
    agent = (REPO / "agents" / "metrics.py").read_text()
    prefix = re.search(r'PREFIX = "(\w+)"', agent)
    assert prefix
    names |= {prefix[1] + n for n in re.findall(r'_gauge\(\s*"(\w+)"', agent)}
    names |= {prefix[1] + n for n in re.findall(r'GaugeMetricFamily\(\s*PREFIX \+ "(\w+)"', agent)}
    names |= {prefix[1] + n + "_total" for n in re.findall(r'_counter\(\s*"(\w+)"', agent)}
    names |= {prefix[1] + n + "_total" for n in re.findall(r'CounterMetricFamily\(\s*PREFIX \+ "(\w+)"', agent)}
    return names


def test_the_dashboard_has_what_an_import_needs() -> None:
    board = dashboard()
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", board["uid"])
    assert board["title"] and isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert "id" not in board or board["id"] is None  # an id would clash with the importing Grafana's own
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] >= 1 and grid["x"] + grid["w"] <= 24 and grid["h"] >= 1
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), panel["title"]


def test_no_two_panels_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_variable_used_is_defined() -> None:
    board = dashboard()
    defined = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "server", "agent"} <= defined
    text = json.dumps(board["panels"])
    used = set(re.findall(r"\$\{?(\w+)", text)) - {"__rate_interval", "__interval"}
    assert used <= defined, used - defined
    datasource = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert datasource["type"] == "datasource" and datasource["query"] == "prometheus"


def test_the_panels_an_operator_needs_are_there() -> None:
    titles = " | ".join(panel["title"] for panel in panels()).lower()
    needed_titles = ("health grid", "failing relays", "round-trip", "loss", "agent up", "result age", "spool", "broker")
    for needed in needed_titles:
        assert needed in titles, needed
    grid = next(panel for panel in panels() if "health grid" in panel["title"].lower())
    mapping = grid["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {mapping[v]["text"] for v in ("0", "1", "2", "3")} == {"unknown", "down", "degraded", "up"}


def test_queries_name_only_exported_metrics() -> None:
    exported = exported_names()
    variables = [v["definition"] for v in dashboard()["templating"]["list"] if "definition" in v]
    used = {name for expr in (*queries(), *variables) for name in re.findall(r"\bwgprobe_\w+", expr)}
    assert used and used <= exported, f"not exported by wgprobe: {used - exported}"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 15s\n")
    with running(tmp / "prometheus.yml", tmp / "data") as server:
        yield server


def test_prometheus_parses_every_query(prometheus: Prometheus) -> None:
    status, body = prometheus.query("sum(wgprobe_server_up")
    assert status == 400 and body["errorType"] == "bad_data"  # what a broken query looks like
    for query in queries():
        expr = query
        for variable, value in SUBSTITUTIONS.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        status, body = prometheus.query(expr)
        assert status == 200, f"{expr}\n{body.get('error')}"
