"""The services' log takes in what Python's `logging` says under wgprobe's loggers (paho's socket errors through
wgprobe.mqtt.paho, a bug answering an HTTP request): one line each, JSON lines with --log-format json. Before,
Python's last-resort handler wrote them to stderr as bare text, tracebacks over many lines, in the middle of the
JSON lines a log shipper reads."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
from pathlib import Path

import pytest

from agents.log import Log, forwarding


def test_wgprobe_s_logging_records_become_one_line_each() -> None:
    stream = io.StringIO()
    with forwarding(Log(json_lines=True, stream=stream, agent="a")):
        logging.getLogger("wgprobe.mqtt.paho").error("failed to receive on socket: %s", "[Errno 103] abort")
        try:
            raise RuntimeError("secret internals\nsecond line")
        except RuntimeError:
            logging.getLogger("wgprobe.aggregator.http").exception("bug answering GET /api/v1/servers")
        logging.getLogger("wgprobe.http").info("bad request from 127.0.0.1")  # below warning: left out, as before
        logging.getLogger("other").error("not ours")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["level"], line["event"], line["logger"]) for line in lines] == [
        ("error", "failed to receive on socket: [Errno 103] abort", "wgprobe.mqtt.paho"),
        ("error", "bug answering GET /api/v1/servers", "wgprobe.aggregator.http"),
    ]
    assert "secret internals" in lines[1]["traceback"] and lines[0]["agent"] == "a"
    text = io.StringIO()
    with forwarding(Log(stream=text)):
        logging.getLogger("wgprobe.mqtt.paho").warning("a\nb")
    assert text.getvalue().count("\n") == 1
    assert not any(
        isinstance(h, logging.Handler) and h.name == "wgprobe-log" for h in logging.getLogger("wgprobe").handlers
    )


def test_probe_aggregator_forwards_while_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from probe.aggregator import cli

    secret = tmp_path / "mqtt.password"
    secret.write_text("pw\n")
    os.chmod(secret, 0o600)
    (tmp_path / "relays.toml").write_text(
        '[[relays]]\nname = "se-got-wg-001"\npublic_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="\n'
        'ipv4 = "198.18.0.10"\nmain_port = 51820\n'
    )
    config = tmp_path / "aggregator.toml"
    config.write_text(
        '[aggregator]\nname = "agg"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\nusername = "agg"\n'
        'password_file = "mqtt.password"\n[inventory]\nsource = "relays.toml"\n'
    )

    async def running(config: object, log: Log) -> None:
        logging.getLogger("wgprobe.mqtt.paho").error("failed to receive on socket")

    monkeypatch.setattr(cli, "_aggregator", running)
    assert cli.run_aggregator(argparse.Namespace(config=config, log_format="json")) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "failed to receive on socket"
