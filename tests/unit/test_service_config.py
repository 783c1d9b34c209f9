"""The aggregator's config and the [mqtt]/[http] tables it shares with the agent: good files load with their defaults,
bad ones (one file each under tests/data/aggregator/) give the error text listed here.

Git keeps no file modes, so the data is copied to a temporary directory and the secret files get mode 0600, as a
careful user would give them; `readable.password` gets 0644, to be refused.
"""

import shutil
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from probe.addresses import Endpoint
from probe.aggregator.config import AggregatorConfig, HealthSection, load_aggregator_config
from probe.errors import ConfigError
from probe.service_config import BrokerUrl, HttpSection, MqttSection

DATA = Path(__file__).parent.parent / "data" / "aggregator"
SECRET = (DATA / "secrets" / "mqtt.password").read_text().strip()  # a test secret that guards nothing

# file, substrings the error must contain (after "<file>: ")
CASES: list[tuple[str, list[str]]] = [
    ("bad-unknown-key.toml", ["mqtt.urll: unknown key (did you mean 'url'?); allowed: url, username, password_file"]),
    ("bad-unknown-table.toml", ["healt: unknown key (did you mean 'health'?); allowed: aggregator, mqtt, http"]),
    ("bad-missing-name.toml", ["aggregator.name: required but missing"]),
    ("bad-agent-name-slash.toml", ["aggregator.name: must be 1-63 letters, digits", "(got 'agg/1')"]),
    ("bad-no-inventory.toml", ["inventory: required but missing"]),
    ("bad-mqtt-no-url.toml", ["mqtt.url: required but missing"]),
    ("bad-mqtt-scheme.toml", ["mqtt.url: unsupported scheme 'tcp'; use mqtt:// or mqtts:// (TLS)"]),
    ("bad-mqtt-no-scheme.toml", ["mqtt.url: write mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (got '127.0.0.1:1883')"]),
    ("bad-mqtt-port.toml", ["mqtt.url: not a valid URL: Port out of range 0-65535"]),
    ("bad-mqtt-path.toml", ["mqtt.url: only mqtt(s)://HOST[:PORT]: no path, query or fragment"]),
    ("bad-mqtt-credentials-in-url.toml", ["mqtt: url holds credentials (USER:PASSWORD@); use username and password"]),
    ("bad-mqtt-client-id.toml", ["mqtt.client_id: must be 1-64 letters, digits", "(got 'agg 1')"]),
    ("bad-password-without-username.toml", ["mqtt: password_file is set but username is not"]),
    ("bad-password-mode.toml", ["mqtt.password_file: password file ", "readable.password has mode 0644", "chmod 600 "]),
    ("bad-password-missing.toml", ["mqtt.password_file: password file ", "no-such.password does not exist"]),
    ("bad-password-empty.toml", ["mqtt.password_file: password file ", "empty.password is empty"]),
    ("bad-password-is-directory.toml", ["mqtt.password_file: password file ", "secrets is not a regular file"]),
    ("bad-ca-file-plain-mqtt.toml", ["mqtt: ca_file is for TLS: write the url as mqtts://127.0.0.1:1884"]),
    ("bad-ca-file-not-pem.toml", ["mqtt.ca_file: CA file ", "holds no PEM certificate"]),
    ("bad-http-listen-hostname.toml", ["http.listen: 'localhost' is not an IP address (got 'localhost:9109')"]),
    ("bad-http-listen-no-port.toml", ["http.listen: no port: write HOST:PORT"]),
    ("bad-quorum-word.toml", ["health.quorum: write \"majority\" or a number of agents (1 or more) (got 'most')"]),
    ("bad-quorum-zero.toml", ['health.quorum: write "majority" or a number of agents (1 or more) (got 0)']),
    ("bad-stale-intervals.toml", ["health.stale_after_intervals: Input should be greater than or equal to 1"]),
    ("bad-history-float.toml", ["health.history: Input should be a valid integer (got 10.5)"]),
    ("bad-labels-ftp.toml", ["inventory.labels: use a file path or an http:// or https:// URL"]),
    ("bad-not-toml.toml", ["not valid TOML: Expected ']' at the end of a table declaration"]),
    ("bad-deep-nesting.toml", ["not valid TOML: nested too deeply"]),
    ("no-such-config.toml", ["cannot read config: No such file or directory"]),
]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "aggregator"
    shutil.copytree(DATA, copy)
    for secret in (copy / "secrets").iterdir():
        secret.chmod(0o600)
    (copy / "secrets" / "readable.password").chmod(0o644)
    return copy


@pytest.mark.parametrize(("name", "expected"), CASES, ids=[case[0] for case in CASES])
def test_bad_config(config_dir: Path, name: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_aggregator_config(config_dir / name)
    message = str(caught.value)
    assert message.startswith(str(config_dir / name) + ": ")  # every error names the file first
    for text in expected:
        assert text in message
    assert SECRET not in message and "hunter2" not in message


def test_every_bad_file_has_a_case() -> None:
    listed = {case[0] for case in CASES}
    assert {path.name for path in DATA.glob("bad-*.toml")} <= listed


def test_minimal_config_gets_the_defaults(config_dir: Path) -> None:
    config = load_aggregator_config(config_dir / "minimal.toml")
    assert config.mqtt.url == BrokerUrl("mqtt", "127.0.0.1", 1883)
    assert not config.mqtt.url.tls
    assert config.mqtt.password is None
    assert config.mqtt.client_id_for(config.aggregator.name) == "wgprobe-agg-1"
    assert config.http.listen == Endpoint(IPv4Address("127.0.0.1"), 9109)  # loopback by default
    assert config.health == HealthSection(quorum="majority", stale_after_intervals=3, interval_seconds=15, history=50)
    assert config.health.stale_after() == 45.0
    assert config.health.stale_after(60.0) == 180.0  # an agent on a slower schedule
    assert config.inventory.source == str(config_dir / "relays.json")  # relative to the file
    assert config.inventory.labels is None
    assert config.path == config_dir / "minimal.toml"


def test_good_config_reads_every_key(config_dir: Path) -> None:
    config = load_aggregator_config(config_dir / "good.toml")
    assert config.mqtt.url == BrokerUrl("mqtts", "broker.example.net", 8884)
    assert config.mqtt.url.tls
    assert config.mqtt.username == "agg-1"
    assert config.mqtt.password == SECRET  # without the trailing newline
    assert config.mqtt.ca_file == config_dir / "secrets" / "ca.pem"
    assert config.mqtt.client_id_for("agg-1") == "wgprobe-agg-1-eu"
    assert config.http.listen == Endpoint(IPv6Address("::1"), 9200)
    assert config.inventory.source == "https://api.mullvad.net/app/v1/relays"
    assert config.inventory.include_inactive
    assert config.inventory.labels == str(config_dir / "labels.json")
    assert config.health.quorum == 2
    assert config.health.stale_after() == 120.0
    assert config.health.history == 100


def test_the_password_never_shows(config_dir: Path) -> None:
    config = load_aggregator_config(config_dir / "good.toml")
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.mqtt)):
        assert SECRET not in text


def test_password_file_readable_by_group_is_refused(config_dir: Path) -> None:
    (config_dir / "secrets" / "mqtt.password").chmod(0o640)
    with pytest.raises(ConfigError, match="has mode 0640") as caught:
        load_aggregator_config(config_dir / "good.toml")
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker", BrokerUrl("mqtt", "broker", 1883)),
        ("mqtts://broker", BrokerUrl("mqtts", "broker", 8883)),
        ("mqtts://b.example.net:443", BrokerUrl("mqtts", "b.example.net", 443)),
        ("mqtt://[::1]:1884", BrokerUrl("mqtt", "::1", 1884)),
        ("mqtt://10.0.0.1/", BrokerUrl("mqtt", "10.0.0.1", 1883)),
    ],
)
def test_broker_urls(url: str, expected: BrokerUrl) -> None:
    assert BrokerUrl.parse(url) == expected
    assert BrokerUrl.parse(str(expected)) == expected  # str() is parseable again


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("mqtt://bad_host", "'bad_host' is not a hostname or IP address"),
        ("mqtt://[zz]:1883", "not a valid URL"),
        ("mqtt://", "no host"),
        ("mqtt://h?x=1", "no path, query or fragment"),
        ("ws://h", "unsupported scheme 'ws'"),
    ],
)
def test_bad_broker_urls(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        BrokerUrl.parse(url)


def test_models_refuse_unknown_keys_and_are_frozen() -> None:
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        MqttSection.model_validate({"url": "mqtt://h", "tls_insecure": True})
    section = HttpSection()
    assert section.listen == Endpoint(IPv4Address("127.0.0.1"), 9108)  # the agent's default
    with pytest.raises(ValueError, match="frozen"):
        section.listen = Endpoint(IPv4Address("0.0.0.0"), 1)


def test_config_built_in_code_keeps_paths_as_given() -> None:
    config = AggregatorConfig.model_validate(
        {"aggregator": {"name": "a"}, "mqtt": {"url": "mqtt://h"}, "inventory": {"source": "r.json", "labels": "l"}}
    )
    assert config.inventory.labels == "l"
    assert config.mqtt.password is None
