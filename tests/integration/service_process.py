"""`probe aggregator` and `probe agent` as real processes against a real mosquitto, for the service tests (lab and
simulated fleet) and bench/bench_service.py.

    aggregator = AggregatorProcess(tmp / "agg", broker, inventory=fleet / "relays.json", interval=2.0)
    aggregator.start()                       # returns once its HTTP endpoint answers
    aggregator.metrics()['wgprobe_server_up{server="se-got-wg-001"}']
    aggregator.stop()                        # SIGTERM, by PID; its exit code

Each process's log goes to a file in its directory (never a pipe nobody reads, which would block it). Processes are
handled by PID only: SIGTERM, then SIGKILL after a hang guard.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.broker import AGGREGATOR_USER, Mosquitto, free_port

HANG_GUARD = 60.0  # seconds: only ever reached when something is broken
STOP_TIMEOUT = 20.0


def parse_metrics(body: str) -> dict[str, float]:
    """Sample lines of a text exposition, keyed by the series as written (`name{label="value",...}`)."""
    samples: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        samples[series] = float(value)
    return samples


def http_get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - a loopback URL made by the test
            return int(answer.status), bytes(answer.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


def stop_process(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    """Signal our process by its PID and wait; SIGKILL if it outlives the hang guard (then raise)."""
    if proc.poll() is None:
        proc.send_signal(signum)
    try:
        return proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"process {proc.pid} ignored signal {signum} for {STOP_TIMEOUT:g} s") from None


def probe_command(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "probe", *args], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )


def log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines of a `--log-format json` process."""
    events = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


@dataclass
class AggregatorProcess:
    """`probe aggregator` with an aggregator.toml of its own in `directory`: the broker's `aggregator` user (the
    ACL's reader of everything), `inventory` (a path), [health] at `interval` and `quorum`."""

    directory: Path
    broker: Mosquitto
    inventory: Path
    interval: float
    quorum: str | int = "majority"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "aggregator.toml"
        self.log = self.directory / "aggregator.log"
        credentials = self.broker.users.get(AGGREGATOR_USER) or self.broker.add_user(AGGREGATOR_USER)
        quorum = f'"{self.quorum}"' if isinstance(self.quorum, str) else str(self.quorum)
        self.config.write_text(
            f'[aggregator]\nname = "{AGGREGATOR_USER}"\n'
            f'[mqtt]\nurl = "{self.broker.url}"\nusername = "{AGGREGATOR_USER}"\n'
            f'password_file = "{credentials.password_file}"\n'
            f'[http]\nlisten = "127.0.0.1:{self.port}"\n'
            f'[inventory]\nsource = "{self.inventory}"\n'
            f"[health]\nquorum = {quorum}\ninterval_seconds = {self.interval}\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start it and return once its HTTP endpoint answers (it serves before the broker's retained burst)."""
        self.process = probe_command("aggregator", "--config", str(self.config), "--log-format", "json", log=self.log)
        deadline = time.monotonic() + HANG_GUARD
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"probe aggregator exited with {self.process.returncode}: {self.tail()}")
            try:
                http_get(f"{self.url}/healthz", timeout=2.0)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"probe aggregator did not serve within {HANG_GUARD:g} s") from None
                time.sleep(0.05)

    def stop(self, signum: int = signal.SIGTERM) -> int | None:
        process, self.process = self.process, None
        return None if process is None else stop_process(process, signum)

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(f"{self.url}{path}")

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body[:500])
        return json.loads(body)

    def metrics(self) -> dict[str, float]:
        status, body = self.get("/metrics")
        assert status == 200, (status, body[:500])
        return parse_metrics(body.decode())

    def tail(self, limit: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        return log_events(self.log)


def server_up(metrics: dict[str, float], server: str) -> float | None:
    """wgprobe_server_up of `server`: 1, 0, or None while its health is unknown (the series is absent)."""
    return metrics.get(f'wgprobe_server_up{{server="{server}"}}')


def messages(metrics: dict[str, float], result: str) -> float:
    return metrics.get(f'wgprobe_messages_total{{result="{result}"}}', 0.0)


def agent_up(metrics: dict[str, float], agent: str) -> float | None:
    return metrics.get(f'wgprobe_agent_up{{agent="{agent}"}}')


def service_tables(broker: Mosquitto, agent: str, directory: Path, *, interval: float) -> str:
    """The tables `probe agent` needs besides the probing ones: [mqtt] as the agent's own broker user (the ACL's %u),
    [schedule], its spool and a free [http] port."""
    credentials = broker.users.get(agent) or broker.add_user(agent)
    return (
        f"\n[schedule]\ninterval_seconds = {interval}\n"
        f'[mqtt]\nurl = "{broker.url}"\nusername = "{agent}"\npassword_file = "{credentials.password_file}"\n'
        f'[spool]\npath = "{directory / f"{agent}-spool.sqlite"}"\n'
        f'[http]\nlisten = "127.0.0.1:{free_port()}"\n'
    )


@dataclass
class AgentProcess:
    """`probe agent --config CONFIG`; its log in `log`."""

    name: str
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = probe_command("agent", "--config", str(self.config), "--log-format", "json", log=self.log)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, signum: int = signal.SIGTERM) -> int | None:
        process, self.process = self.process, None
        return None if process is None else stop_process(process, signum)

    def tail(self, limit: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-limit:] if self.log.exists() else ""
