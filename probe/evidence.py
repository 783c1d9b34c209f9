"""Evidence of failed probes: a pcap of the inner packets each failed path sent and received, and the JSON
result of the run, under the configured evidence directory as <server>/<UTC time>-<agent>-<port>-<family>.pcap."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from probe.packets import write_pcap
from probe.results import ServerResult
from probe.tunnel import Record


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def save_path_pcap(root: Path, relay: str, agent: str, port: int, family: str, record: Record) -> str:
    directory = root / relay
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_stamp()}-{agent}-{port}-{family}.pcap"
    write_pcap(path, [(at, packet) for at, _direction, packet in record.packets])
    return str(path)


def save_result(root: Path, result: ServerResult) -> ServerResult:
    directory = root / result.server
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_stamp()}-{result.agent}.json"
    saved = result.model_copy(update={"evidence": str(path)})
    path.write_text(saved.model_dump_json(indent=2) + "\n")
    return saved
