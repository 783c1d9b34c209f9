"""Integration fixtures: a real mosquitto per test (cheap to start, and the outage tests stop and restart it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.broker import BrokerMissing, Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running mosquitto on a free 127.0.0.1 port with password file and ACL; stopped by PID afterwards."""
    try:
        mosquitto = Mosquitto(tmp_path / "mosquitto")
    except BrokerMissing as e:
        pytest.fail(str(e))
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()
