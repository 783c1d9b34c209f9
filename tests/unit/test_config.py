"""The agent config: a good file read back exactly, defaults, key secrecy, endpoints, where the file is found."""

import base64
import shutil
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from probe.agent_config import AgentConfig, ScheduleSection, load_config
from probe.config import Endpoint, Identity, ProbeConfig, find_config, load_probe_config
from probe.errors import ConfigError
from probe.service_config import HttpSection

DATA = Path(__file__).parent.parent / "data" / "config"
KEY_1 = bytes(range(1, 33))  # what tests/data/config/keys/lab-agent-1.key holds
KEY_2 = bytes(range(33, 65))


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "config"
    shutil.copytree(DATA, copy)
    for key in (copy / "keys").iterdir():
        key.chmod(0o600)
    return copy


def test_good_config_reads_back_exactly(config_dir: Path) -> None:
    config = load_config(config_dir / "good.toml")
    assert config.path == config_dir / "good.toml"
    assert config.agent.name == "lab-agent"
    first, second = config.identities
    assert first.private_key_file == config_dir / "keys" / "lab-agent-1.key"  # relative to the config file
    assert (first.private_key, first.ipv4, first.ipv6) == (
        KEY_1,
        IPv4Address("10.64.0.2"),
        IPv6Address("fc00:bbbb:bbbb:bb01::2"),
    )
    assert (second.private_key, second.ipv4, second.ipv6) == (KEY_2, IPv4Address("10.64.0.3"), None)
    assert config.inventory.source == str(config_dir / "relays.json")
    assert not config.inventory.is_url
    assert (config.inventory.include_inactive, config.inventory.refresh_seconds) == (True, 60.0)
    assert config.checks.forward_target == IPv4Address("198.18.0.2")
    assert config.checks.forward_target_v6 == IPv6Address("fd77::2")
    assert config.checks.reflector == Endpoint(IPv4Address("198.18.0.2"), 7777)
    assert config.checks.reflector_v6 == Endpoint(IPv6Address("fd77::2"), 7777)
    probe = config.probe
    assert (probe.main_port, probe.timeout, probe.packets) == (51821, 0.5, 5)
    assert (probe.handshake_timeout, probe.handshake_attempts) == (2.0, 2)
    assert probe.evidence_dir == Path("/var/lib/wgprobe/evidence")  # absolute stays absolute
    assert (probe.evidence_path_max_bytes, probe.evidence_max_bytes, probe.evidence_max_age_hours) == (
        65536,
        10 * 1024 * 1024,
        24.5,
    )


def test_dump_and_validate_again_is_the_same_config(config_dir: Path) -> None:
    config = load_config(config_dir / "good.toml")
    dumped = config.model_dump(mode="json")
    assert dumped["checks"]["reflector_v6"] == "[fd77::2]:7777"
    assert AgentConfig.model_validate(dumped).model_dump(mode="json") == dumped


def test_contract_example_gets_the_defaults(config_dir: Path) -> None:
    config = load_config(config_dir / "minimal.toml")
    assert config.inventory.source == "https://api.mullvad.net/app/v1/relays"
    assert config.inventory.is_url
    assert (config.inventory.include_inactive, config.inventory.refresh_seconds) == (False, 300.0)
    assert config.checks.reflector_v6 is None
    probe = config.probe
    assert (probe.main_port, probe.timeout, probe.packets) == (None, 1.0, 3)
    assert (probe.handshake_timeout, probe.handshake_attempts) == (1.0, 7)
    assert probe.evidence_dir == config_dir / "evidence"  # the default, too, is relative to the config file
    # The tables left out are their models' own defaults (validated from {} inside AgentConfig, not built apart).
    assert (config.schedule, config.http, config.mqtt) == (ScheduleSection(), HttpSection(), None)
    assert (config.schedule.interval_seconds, config.schedule.concurrency) == (15.0, 64)
    assert str(config.http.listen) == "127.0.0.1:9108"
    assert (probe.evidence_path_max_bytes, probe.evidence_max_bytes, probe.evidence_max_age_hours) == (
        1024 * 1024,
        256 * 1024 * 1024,
        168.0,
    )


def test_reflector_for_each_family(config_dir: Path) -> None:
    good = load_config(config_dir / "good.toml").checks
    assert str(good.reflector_for(4)) == "198.18.0.2:7777"
    assert str(good.reflector_for(6)) == "[fd77::2]:7777"
    v6_only = load_config(config_dir / "minimal.toml").checks  # reflector = "[fd77::2]:7777"
    assert v6_only.reflector_for(4) is None
    assert str(v6_only.reflector_for(6)) == "[fd77::2]:7777"


def test_private_key_never_shows(config_dir: Path) -> None:
    config = load_config(config_dir / "good.toml")
    encoded = base64.b64encode(KEY_1).decode()
    for text in (repr(config), str(config), repr(config.identities[0]), str(config.model_dump())):
        assert encoded not in text
        assert KEY_1.hex() not in text
        assert repr(KEY_1) not in text


def test_private_key_cannot_be_written_in_the_config(config_dir: Path) -> None:
    path = config_dir / "inline.toml"
    text = (config_dir / "minimal.toml").read_text()
    path.write_text(text.replace('ipv4 = "10.64.0.2"', 'ipv4 = "10.64.0.2"\nprivate_key = "abc"'))
    with pytest.raises(ConfigError, match=r"identities\[0\].private_key: unknown key"):
        load_config(path)


def test_identity_built_in_code() -> None:
    identity = Identity.with_private_key(KEY_1, ipv4=IPv4Address("10.64.0.9"))
    assert identity.private_key == KEY_1
    with pytest.raises(ConfigError, match="32 bytes, got 3"):
        Identity.with_private_key(b"abc", ipv4=IPv4Address("10.64.0.9"))
    unloaded = Identity(private_key_file=Path("k"), ipv4=IPv4Address("10.64.0.9"))
    with pytest.raises(ConfigError, match="private key not loaded"):
        _ = unloaded.private_key


# --- where the config file is looked for: --config, then $WGPROBE_CONFIG, then ./agent.toml ---


@pytest.fixture
def three_configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, Path]:
    explicit, from_env, local = tmp_path / "explicit.toml", tmp_path / "env.toml", tmp_path / "cwd" / "agent.toml"
    local.parent.mkdir()
    for path in (explicit, from_env, local):
        path.write_text("")
    monkeypatch.chdir(local.parent)
    monkeypatch.setenv("WGPROBE_CONFIG", str(from_env))
    return explicit, from_env, local


def test_explicit_config_comes_first(three_configs: tuple[Path, Path, Path]) -> None:
    explicit, _, _ = three_configs
    assert find_config(explicit) == explicit


def test_environment_comes_before_the_working_directory(three_configs: tuple[Path, Path, Path]) -> None:
    _, from_env, _ = three_configs
    assert find_config(None) == from_env


def test_working_directory_comes_last(three_configs: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _, _, local = three_configs
    monkeypatch.delenv("WGPROBE_CONFIG")
    assert find_config(None) == local
    monkeypatch.setenv("WGPROBE_CONFIG", "")  # set but empty counts as not set
    assert find_config(None) == local


def test_a_named_config_that_is_missing_is_an_error_not_a_fallback(
    three_configs: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing.toml \(from --config\) does not exist"):
        find_config(tmp_path / "missing.toml")
    monkeypatch.setenv("WGPROBE_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone.toml \(from \$WGPROBE_CONFIG\) does not exist"):
        find_config(None)
    with pytest.raises(ConfigError, match=r"\(from --config\) is not a file"):
        find_config(tmp_path)


def test_nothing_found_lists_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WGPROBE_CONFIG", raising=False)
    with pytest.raises(ConfigError) as caught:
        find_config(None)
    message = str(caught.value)
    assert "--config (not given)" in message
    assert "$WGPROBE_CONFIG (not set)" in message
    assert f"{tmp_path / 'agent.toml'} (no such file)" in message


def test_the_agent_config_is_the_probe_config_and_the_service_tables() -> None:
    # load_probe_config validates a file with only ProbeConfig's tables without defining AgentConfig.
    assert set(AgentConfig.model_fields) - set(ProbeConfig.model_fields) == {"schedule", "mqtt", "http", "spool"}
    assert set(ProbeConfig.model_fields) < set(AgentConfig.model_fields)


def test_commands_that_only_probe_validate_the_whole_file_when_it_has_more_than_probing_needs(config_dir: Path) -> None:
    path = config_dir / "good.toml"
    plain = load_probe_config(path)
    assert type(plain) is ProbeConfig and plain.identities[0].private_key
    with path.open("a") as file:
        file.write('\n[mqtt]\nurl = "ftp://broker"\n')
    with pytest.raises(ConfigError, match=r"mqtt\.url"):
        load_probe_config(path)
    path.write_text(path.read_text().replace("[mqtt]", "[mqqt]"))
    with pytest.raises(ConfigError, match=r"mqqt: unknown key.*; allowed: .*probe, schedule, mqtt, http, spool"):
        load_probe_config(path)
