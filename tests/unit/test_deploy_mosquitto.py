"""The production broker config, for real: deploy/new-agent.sh makes the CA, the broker's certificate and clients'
credentials; a real mosquitto runs deploy/mosquitto/mosquitto.conf and deploy/mosquitto/acl (only the paths and the
port moved to a temporary directory and a free loopback port); MQTT v5 clients over TLS show what each may do."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from probe.messages import command_topic, result_topic, status_topic
from probe.mqtt import BrokerUnavailable, connect
from probe.service_config import MqttSection, load_mqtt_secrets

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NEW_AGENT = DEPLOY / "new-agent.sh"
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, and success with no matching subscribers
TIMEOUT = 10.0


def new_client(pki: Path, name: str, *, aggregator: bool = False, broker: str | None = None) -> str:
    command = [str(NEW_AGENT), "--dir", str(pki), *(["--broker", broker] if broker else []), name]
    if aggregator:
        command.insert(1, "--aggregator")
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclass
class Broker:
    port: int
    pki: Path
    proc: subprocess.Popen[str]

    def password(self, name: str) -> str:
        return (self.pki / "clients" / name / "mqtt.password").read_text().strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_config(conf: str, pki: Path, data: Path, port: int) -> str:
    """The production config with its paths and port moved; everything else as shipped."""
    conf = conf.replace("/etc/mosquitto/wgprobe/", f"{pki}/").replace("/var/lib/mosquitto/", f"{data}/")
    conf, count = re.subn(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", conf)
    assert count == 1
    return (
        conf
        + "\n# test only: mosquitto started as root would drop to the mosquitto user, who cannot read tmp\nuser root\n"
    )


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[str]:
    """Debian's mosquitto on `conf`, once it listens on `port` (its stderr in the failure if it exits)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"mosquitto exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.terminate()
                proc.communicate(timeout=10)
                raise AssertionError("mosquitto did not listen") from None
            time.sleep(0.05)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    assert shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists(), "mosquitto is needed (Debian: mosquitto)"
    assert shutil.which("mosquitto_passwd"), "mosquitto_passwd is needed (Debian: mosquitto)"
    tmp = tmp_path_factory.mktemp("broker")
    pki, data = tmp / "pki", tmp / "data"
    data.mkdir()
    new_client(pki, "agent-a", broker="127.0.0.1")
    new_client(pki, "agent-b")
    new_client(pki, "agg-1", aggregator=True)
    shutil.copy(DEPLOY / "mosquitto" / "acl", pki / "acl")
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(broker_config((DEPLOY / "mosquitto" / "mosquitto.conf").read_text(), pki, data, port))
    proc = start_mosquitto(conf, port)
    try:
        yield Broker(port, pki, proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


class Client:
    """A paho MQTT v5 client whose callbacks land in queues, for a test to wait on."""

    def __init__(self, broker: Broker, name: str | None, *, password: str | None = None, ca: bool = True) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{name}", protocol=mqtt.MQTTv5)
        if name is not None:
            self.client.username_pw_set(name, password if password is not None else broker.password(name))
        # Without ca: the system's trust store, which does not know the private CA.
        self.client.tls_set(ca_certs=str(broker.pki / "ca.pem") if ca else None)
        self.connacks: queue.Queue[ReasonCode] = queue.Queue()
        self.pubacks: dict[int, queue.Queue[ReasonCode]] = {}
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc)
        self.client.on_publish = lambda c, u, mid, rc, p: self._puback(mid).put(rc)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put(rcs)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.broker = broker

    def _puback(self, mid: int) -> queue.Queue[ReasonCode]:
        return self.pubacks.setdefault(mid, queue.Queue())

    def connect(self) -> ReasonCode:
        self.client.connect("127.0.0.1", self.broker.port, clean_start=True)
        self.client.loop_start()
        return self.connacks.get(timeout=TIMEOUT)

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1)
        return self._puback(info.mid).get(timeout=TIMEOUT).value

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=TIMEOUT)[0].value

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: Broker) -> Iterator[dict[str, Client]]:
    made = {name: Client(broker, name) for name in ("agent-a", "agent-b", "agg-1")}
    try:
        for client in made.values():
            assert client.connect().value == 0
        yield made
    finally:
        for client in made.values():
            client.close()


def received(client: Client, wait: float = 1.0) -> list[str]:
    topics = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        try:
            topics.append(client.messages.get(timeout=left).topic)
        except queue.Empty:
            break
    return topics


def test_an_agent_publishes_under_its_own_name_and_the_aggregator_reads_it(clients: dict[str, Client]) -> None:
    aggregator, agent = clients["agg-1"], clients["agent-a"]
    assert aggregator.subscribe("wgprobe/v1/results/#") == 1  # granted QoS 1
    assert aggregator.subscribe("wgprobe/v1/agents/+/status") == 1
    assert agent.publish(result_topic("agent-a", "se-got-wg-001")) in ACCEPTED
    assert agent.publish(status_topic("agent-a")) in ACCEPTED
    topics = received(aggregator)
    assert result_topic("agent-a", "se-got-wg-001") in topics and status_topic("agent-a") in topics


def test_an_agent_is_refused_under_another_agents_name(clients: dict[str, Client]) -> None:
    aggregator, agent = clients["agg-1"], clients["agent-a"]
    assert aggregator.subscribe("wgprobe/v1/#") == 1
    assert agent.publish(result_topic("agent-b", "se-got-wg-001")) == NOT_AUTHORIZED
    assert agent.publish(status_topic("agent-b")) == NOT_AUTHORIZED
    assert agent.publish("wgprobe/v1/other") == NOT_AUTHORIZED
    assert agent.publish(command_topic("agent-b")) == NOT_AUTHORIZED
    assert received(aggregator) == []  # refused, and nothing delivered


def test_agents_read_only_their_own_commands_and_no_results(clients: dict[str, Client]) -> None:
    aggregator, agent_a, agent_b = clients["agg-1"], clients["agent-a"], clients["agent-b"]
    agent_a.subscribe(command_topic("agent-a"))
    agent_b.subscribe(command_topic("agent-a"))  # not its own: granted or not, nothing may arrive
    agent_b.subscribe("wgprobe/v1/results/#")
    assert aggregator.publish(command_topic("agent-a")) in ACCEPTED
    assert clients["agent-a"].publish(result_topic("agent-a", "se-got-wg-002")) in ACCEPTED
    assert received(agent_a) == [command_topic("agent-a")]
    assert received(agent_b) == []


def test_the_aggregator_may_only_read_results(clients: dict[str, Client]) -> None:
    aggregator = clients["agg-1"]
    assert aggregator.publish(result_topic("agent-a", "se-got-wg-001")) == NOT_AUTHORIZED
    assert aggregator.publish(status_topic("agent-a")) == NOT_AUTHORIZED


def test_a_wrong_password_or_no_user_is_refused(broker: Broker) -> None:
    wrong = Client(broker, "agent-a", password="0" * 64)
    anonymous = Client(broker, None)
    try:
        assert wrong.connect().value in (0x86, NOT_AUTHORIZED)  # bad user name or password / not authorized
        assert anonymous.connect().value in (0x86, NOT_AUTHORIZED)
    finally:
        wrong.close()
        anonymous.close()


def test_a_client_that_does_not_trust_the_ca_cannot_connect(broker: Broker) -> None:
    # The TLS handshake an MQTT client makes, with the system's trust store and then with the private CA (paho itself
    # raises the same error but leaves its socket open, which this suite counts as an error).
    for context, verified in ((ssl.create_default_context(), False), (_ca_context(broker), True)):
        with socket.create_connection(("127.0.0.1", broker.port), timeout=TIMEOUT) as raw:
            if verified:
                with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    assert tls.version() in ("TLSv1.2", "TLSv1.3")
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    context.wrap_socket(raw, server_hostname="127.0.0.1")


def _ca_context(broker: Broker) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(broker.pki / "ca.pem"))


def test_plain_mqtt_is_not_served(broker: Broker) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-plain", protocol=mqtt.MQTTv5)
    client.username_pw_set("agent-a", broker.password("agent-a"))
    connacks: queue.Queue[int] = queue.Queue()
    client.on_connect = lambda c, u, f, rc, p: connacks.put(rc.value)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        with pytest.raises(queue.Empty):
            connacks.get(timeout=2.0)  # the TLS listener never answers an MQTT CONNECT in clear text
    finally:
        client.disconnect()
        client.loop_stop()


def test_new_agent_prints_a_config_table_wgprobe_accepts(broker: Broker, tmp_path: Path) -> None:
    import tomllib

    table = new_client(broker.pki, "agent-c")
    section = tomllib.loads(table)["mqtt"]
    assert section == {
        "url": "mqtts://127.0.0.1:8883",
        "username": "agent-c",
        "password_file": "mqtt.password",
        "ca_file": "ca.pem",
        "client_id": "wgprobe-agent-c",
    }
    client_dir = broker.pki / "clients" / "agent-c"
    assert (client_dir / "mqtt.password").stat().st_mode & 0o077 == 0
    mqtt_config = MqttSection.model_validate(section, context={"base_dir": client_dir})
    load_mqtt_secrets(mqtt_config)
    assert mqtt_config.password == (client_dir / "mqtt.password").read_text().strip()
    # Installed (here: the broker already reads this password file) and reloaded, the new agent is in.
    broker.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + TIMEOUT
    while True:
        client = Client(broker, "agent-c")
        try:
            if client.connect().value == 0:
                assert client.publish(result_topic("agent-c", "se-got-wg-001")) in ACCEPTED
                break
        finally:
            client.close()
        assert time.monotonic() < deadline, "the reloaded broker did not accept agent-c"
        time.sleep(0.1)
    # The same name twice is refused: agents and aggregators share the password file's name space.
    again = subprocess.run(
        [str(NEW_AGENT), "--dir", str(broker.pki), "agg-1"], capture_output=True, text=True, check=False
    )
    assert again.returncode == 1 and "already" in again.stderr
    bad = subprocess.run([str(NEW_AGENT), "--dir", str(broker.pki), "a/#"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2


def test_every_aggregator_the_docs_configure_has_its_block_in_the_acl() -> None:
    # An aggregator without one subscribes without error and hears nothing (mosquitto filters at delivery): the
    # README's aggregator.toml named a user the shipped ACL did not know.
    import re
    import tomllib

    users = set(re.findall(r"^user (\S+)$", (DEPLOY / "mosquitto" / "acl").read_text(), re.MULTILINE))
    readme = (DEPLOY.parent / "README.md").read_text()
    shown = re.search(r"`aggregator.toml`, whole:\n+```toml\n(.*?)```", readme, re.DOTALL)
    assert shown is not None, "the README shows aggregator.toml whole"
    configs = [tomllib.loads(shown.group(1)), tomllib.loads((DEPLOY / "compose" / "aggregator.toml").read_text())]
    for config in configs:
        assert config["mqtt"]["username"] in users, config["mqtt"]["username"]


def test_the_printed_install_lets_mosquitto_read_its_files_as_its_own_user(tmp_path: Path) -> None:
    # Started as root, mosquitto drops to the user `mosquitto` before it opens its password file (and key): the
    # 0600 root files new-agent.sh keeps in DIR stop it at start ("Unable to open pwfile"). The commands it prints
    # install them root:mosquitto 0640; followed as printed (only /etc moved), the broker starts and lets the agent in.
    import grp
    import pwd
    import tempfile

    pwd.getpwnam("mosquitto"), grp.getgrnam("mosquitto")  # Debian's package makes both
    pki = tmp_path / "pki"
    done = subprocess.run(
        [str(NEW_AGENT), "--dir", str(pki), "--broker", "127.0.0.1", "agent-a"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    commands = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
    assert commands[-1] == "systemctl reload mosquitto"
    # A place the user mosquitto can reach (pytest's tmp_path is under a 0700 directory), removed afterwards.
    top = Path(tempfile.mkdtemp(prefix="wgprobe-etc-"))
    try:
        top.chmod(0o755)
        etc, data = top / "wgprobe", top / "data"
        data.mkdir()
        shutil.chown(data, "mosquitto")
        for command in commands[:-1]:
            subprocess.run(["bash", "-c", command.replace("/etc/mosquitto/wgprobe", str(etc))], check=True)
        assert {p.name: p.stat().st_mode & 0o777 for p in etc.iterdir()} == {
            "passwd": 0o640, "server.key": 0o640, "ca.pem": 0o644, "server.pem": 0o644, "acl": 0o644,
        }  # fmt: skip
        port = free_port()
        shipped = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
        conf = shipped.replace("/etc/mosquitto/wgprobe/", f"{etc}/").replace("/var/lib/mosquitto/", f"{data}/")
        conf = re.sub(r"(?m)^listener 8883$", f"listener {port} 127.0.0.1", conf)  # and no `user root`
        (top / "mosquitto.conf").write_text(conf)
        proc = start_mosquitto(top / "mosquitto.conf", port)
        try:
            client = Client(Broker(port, pki, proc), "agent-a")
            try:
                assert client.connect().value == 0
                assert client.publish(result_topic("agent-a", "se-got-wg-001")) in ACCEPTED
            finally:
                client.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    finally:
        shutil.rmtree(top)


# -- wgprobe's own client (probe/mqtt.py) against the TLS listener ------------------------------------------------


def _wgprobe_section(broker: Broker, name: str, *, host: str = "127.0.0.1", ca_file: Path | None = None) -> MqttSection:
    """`name`'s `[mqtt]` table as new-agent.sh prints it, with the broker's real port, `host` and `ca_file` (default:
    the one new-agent.sh gave the client)."""
    client_dir = broker.pki / "clients" / name
    section = MqttSection.model_validate(
        {
            "url": f"mqtts://{host}:{broker.port}",
            "username": name,
            "password_file": str(client_dir / "mqtt.password"),
            "ca_file": str(ca_file or client_dir / "ca.pem"),
        }
    )
    load_mqtt_secrets(section)
    return section


async def _results_heard(broker: Broker, publish: Callable[[], Awaitable[None]]) -> list[str]:
    """The result topics agg-1 (wgprobe's client too) hears while and shortly after `publish` runs."""
    async with connect(_wgprobe_section(broker, "agg-1"), "test-agg-1") as aggregator:
        await aggregator.subscribe(["wgprobe/v1/results/#"])
        try:
            await publish()
        finally:
            heard = []
            while (message := await aggregator.receive(timeout=1.0)) is not None:
                heard.append(message.topic)
    return heard


@pytest.mark.asyncio
async def test_wgprobes_client_delivers_over_tls_with_the_brokers_ca(broker: Broker) -> None:
    async def publish() -> None:
        async with connect(_wgprobe_section(broker, "agent-a"), "test-agent-a") as connection:
            await connection.publish(result_topic("agent-a", "se-got-wg-001"), b"{}", timeout=TIMEOUT)

    assert await _results_heard(broker, publish) == [result_topic("agent-a", "se-got-wg-001")]


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made as the broker's was (new-agent.sh, same host and name), that did not sign the broker's certificate."""
    pki = tmp_path_factory.mktemp("other-pki")
    new_client(pki, "agent-a", broker="127.0.0.1")
    return pki / "ca.pem"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("host", "foreign_ca", "words"),
    [
        ("127.0.0.1", True, "CERTIFICATE_VERIFY_FAILED"),
        # The broker's certificate names IP:127.0.0.1 only: the right CA, but not the name the client dialled.
        ("localhost", False, "Hostname mismatch"),
    ],
)
async def test_wgprobes_client_refuses_a_broker_it_cannot_verify(
    broker: Broker, other_ca: Path, host: str, foreign_ca: bool, words: str
) -> None:
    section = _wgprobe_section(broker, "agent-a", host=host, ca_file=other_ca if foreign_ca else None)
    refused: list[BrokerUnavailable] = []
    left_open: set[str] = set()

    async def publish() -> None:
        # Counted around the attempt alone: agg-1's connection is open meanwhile, and a paho client of an earlier
        # test in this module may not have been collected yet (CI once counted one such socket here).
        before = _connections_to(broker.port)
        try:
            async with connect(section, "test-agent-a") as connection:
                await connection.publish(result_topic("agent-a", "se-got-wg-001"), b"{}", timeout=TIMEOUT)
        except BrokerUnavailable as e:
            refused.append(e)
        left_open.update(_connections_to(broker.port) - before)

    assert await _results_heard(broker, publish) == []  # nothing went through
    (error,) = refused
    assert words in str(error) and f"mqtts://{host}:{broker.port}" in str(error), error
    # The refused attempt's socket is closed, not left for the garbage collector (the error, still held here,
    # reaches paho's frames and the socket in them): an agent retries this every few seconds.
    assert left_open == set()


def _connections_to(port: int) -> set[str]:
    """This process's open TCP sockets (inodes) whose far end is 127.0.0.1:`port` (from /proc: no library has it)."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                mine.add(target[len("socket:[") : -1])
    far = f"0100007F:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if row[2] == far and row[9] in mine}
