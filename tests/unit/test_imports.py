"""Importing the library starts nothing and pulls in nothing heavy: the agent and CLI decide what to load."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from probe.errors import LabError
from probe.lab import fleet

CHECK = """
import sys, threading
import probe, probe.results, probe.config, probe.inventory, probe.runner, probe.cli
# (ssl is not listed: asyncio itself imports it)
heavy = sorted(m for m in ("scapy", "pyroute2", "urllib.request", "http.client", "aiomqtt") if m in sys.modules)
assert not heavy, heavy
assert threading.active_count() == 1, threading.enumerate()
"""


def test_importing_the_library_starts_nothing_and_loads_nothing_heavy() -> None:
    done = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_lab_refuses_to_run_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        fleet.preflight()


def test_lab_names_missing_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda tool: None if tool == "wireguard-go" else f"/usr/bin/{tool}")
    with pytest.raises(LabError, match=r"missing wireguard-go: install them with scripts/setup.sh"):
        fleet.preflight()
