"""A real mosquitto (Debian's /usr/sbin/mosquitto) on a free 127.0.0.1 port, for integration tests.

Password file and ACL as in production (deploy/mosquitto/acl.template): each agent may publish only under its own
topics, the aggregator may read everything. Persistence lives in the test's directory, so `stop()` then `start()`
is a broker outage that keeps the retained messages and persistent sessions, on the same port. Handled by PID
only: SIGTERM, then SIGKILL after a timeout.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from probe.service_config import MqttSection, load_mqtt_secrets

MOSQUITTO = Path("/usr/sbin/mosquitto")
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")
ACL_TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl.template"
AGGREGATOR_USER = "aggregator"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
RELOAD_GUARD = 10.0  # seconds: a hang guard for a reload, which takes milliseconds
_RELOADING = "Reloading config."  # what mosquitto logs as it rereads its files on SIGHUP


class BrokerMissing(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Credentials:
    username: str
    password_file: Path


@dataclass
class Mosquitto:
    """One broker in `directory`; `start()` it, `stop()` it, `start()` it again on the same port."""

    directory: Path
    port: int = field(default_factory=free_port)
    users: dict[str, Credentials] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        for tool in (MOSQUITTO, MOSQUITTO_PASSWD):
            if not tool.exists():
                raise BrokerMissing(f"{tool} is missing: apt-get install mosquitto (the integration tests need it)")
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        self.password_file = self.directory / "passwords"
        self.acl_file = self.directory / "acl"
        self.config_file = self.directory / "mosquitto.conf"
        self.log_file = self.directory / "mosquitto.log"
        shutil.copyfile(ACL_TEMPLATE, self.acl_file)
        self.add_user(AGGREGATOR_USER)
        self.config_file.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous false\n"
            f"password_file {self.password_file}\n"
            f"acl_file {self.acl_file}\n"
            # mosquitto started as root switches to the user `mosquitto` unless told to stay.
            "user root\n"
            "persistence true\n"
            f"persistence_location {self.directory / 'data'}/\n"
            f"log_dest file {self.log_file}\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            # Enough for a test's outage backlog queued for a persistent subscriber.
            "max_queued_messages 100000\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def add_user(self, name: str) -> Credentials:
        """A broker user with a random password, and a 0600 file holding it (as `[mqtt] password_file`)."""
        password = secrets.token_urlsafe(18)
        create = [] if self.password_file.exists() else ["-c"]
        subprocess.run(
            [str(MOSQUITTO_PASSWD), *create, "-b", str(self.password_file), name, password],
            check=True,
            capture_output=True,
        )
        os.chmod(self.password_file, 0o600)
        secret = self.directory / f"{name}.password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
        self.users[name] = Credentials(name, secret)
        if self.running:
            self.reload()
        return self.users[name]

    def section(self, user: str, *, client_id: str | None = None) -> MqttSection:
        """The `[mqtt]` table for `user` (added if new), its password loaded."""
        credentials = self.users.get(user) or self.add_user(user)
        data: dict[str, object] = {
            "url": self.url,
            "username": credentials.username,
            "password_file": credentials.password_file,
        }
        if client_id is not None:
            data["client_id"] = client_id
        section = MqttSection.model_validate(data)
        load_mqtt_secrets(section)
        return section

    def wrong_section(self, user: str, directory: Path) -> MqttSection:
        """The `[mqtt]` table of `user` (added if new) with a password the broker does not know, its file in
        `directory`."""
        if user not in self.users:
            self.add_user(user)
        wrong = directory / f"{user}.wrong-password"
        wrong.write_text("not-the-password\n")
        wrong.chmod(0o600)
        section = MqttSection.model_validate({"url": self.url, "username": user, "password_file": wrong})
        load_mqtt_secrets(section)
        return section

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with (self.directory / "stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [str(MOSQUITTO), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}: {self.diagnostics()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections within {START_TIMEOUT} s: {self.diagnostics()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop our mosquitto by its PID (SIGTERM saves persistence; SIGKILL after a timeout)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads its password and ACL files. Returns once it has: its one thread logs
        "Reloading config." and rereads them before it serves the next packet (a fixed 0.2 s wait was a guess)."""
        if self.process is None:
            return
        before = self._log_text().count(_RELOADING)
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RELOAD_GUARD
        while self._log_text().count(_RELOADING) == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not reload within {RELOAD_GUARD:g} s:\n{self.diagnostics()}")
            time.sleep(0.02)

    def _log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def diagnostics(self) -> str:
        parts = []
        for path in (self.directory / "stderr", self.log_file):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)
