"""Bad agent configs, one file each under tests/data/config/, and the error text each must produce.

Git keeps no file modes but the executable bit, so the data is copied to a temporary directory and the key files get
the mode a careful user would give them (0600), except where a case says otherwise.
"""

import shutil
from pathlib import Path

import pytest

from probe.config import load_config
from probe.errors import ConfigError

DATA = Path(__file__).parent.parent / "data" / "config"

# file, {key file: mode} applied after the default 0600, substrings the error must contain
CASES: list[tuple[str, dict[str, int], list[str]]] = [
    (
        "bad-unknown-key.toml",
        {},
        ["checks.reflectr: unknown key (did you mean 'reflector'?); allowed: forward_target, forward_target_v6"],
    ),
    ("bad-unknown-table.toml", {}, ["prober: unknown key (did you mean 'probe'?)"]),
    ("bad-missing-agent-name.toml", {}, ["agent.name: required but missing"]),
    ("bad-agent-name-slash.toml", {}, ["agent.name: must be 1-63 letters, digits", "(got 'lab/agent')"]),
    ("bad-ipv4.toml", {}, ["identities[0].ipv4: Input is not a valid IPv4 address (got '10.64.0.300')"]),
    ("bad-no-identities.toml", {}, ["identities: required but missing"]),
    ("bad-no-forward-target.toml", {}, ["checks.forward_target: required but missing"]),
    (
        "bad-reflector-no-port.toml",
        {},
        ["checks.reflector: no port: write HOST:PORT, e.g. 198.18.0.2:7777, or [V6ADDR]:PORT (got '198.18.0.2')"],
    ),
    ("bad-reflector-v6-unbracketed.toml", {}, ["checks.reflector: write an IPv6 endpoint as [V6ADDR]:PORT"]),
    ("bad-inventory-ftp.toml", {}, ["inventory.source: use a file path or an http:// or https:// URL"]),
    ("bad-packets-zero.toml", {}, ["probe.packets: Input should be greater than or equal to 1 (got 0)"]),
    (
        "bad-key-mode-0644.toml",
        {"world-readable.key": 0o644},
        ["identities[0].private_key_file: key file ", "world-readable.key has mode 0644", "run: chmod 600 "],
    ),
    ("bad-key-mode-0644.toml", {"world-readable.key": 0o640}, ["has mode 0640"]),
    ("bad-key-missing.toml", {}, ["identities[0].private_key_file: key file ", "no-such.key does not exist"]),
    ("bad-key-not-base64.toml", {}, ["not-base64.key is not base64 (expected one line as printed by `wg genkey`)"]),
    ("bad-key-short.toml", {}, ["short.key decodes to 16 bytes; a WireGuard private key is 32 bytes"]),
    ("bad-same-key-twice.toml", {}, ["identities[1] uses the same private key as identities[0]"]),
    ("bad-same-ipv4-twice.toml", {}, ["two identities share ipv4 10.64.0.2; each needs its own"]),
    ("bad-not-toml.toml", {}, ["bad-not-toml.toml: not valid TOML: Expected ']]' at the end of an array"]),
    ("no-such-config.toml", {}, ["no-such-config.toml: cannot read config: No such file or directory"]),
]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "config"
    shutil.copytree(DATA, copy)
    for key in (copy / "keys").iterdir():
        key.chmod(0o600)
    return copy


@pytest.mark.parametrize(("name", "modes", "expected"), CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_bad_config(config_dir: Path, name: str, modes: dict[str, int], expected: list[str]) -> None:
    for key, mode in modes.items():
        (config_dir / "keys" / key).chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / name)
    message = str(caught.value)
    assert message.startswith(str(config_dir / name) + ": ")  # every error names the file first
    for text in expected:
        assert text in message


def test_key_errors_never_show_the_key(config_dir: Path) -> None:
    (config_dir / "keys" / "lab-agent-1.key").chmod(0o644)
    secret = (config_dir / "keys" / "lab-agent-1.key").read_text().strip()
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / "minimal.toml")
    assert "mode 0644" in str(caught.value)
    assert secret not in str(caught.value)
    (config_dir / "keys" / "lab-agent-1.key").write_text(secret[:-8] + "!!!!!!!=\n")
    (config_dir / "keys" / "lab-agent-1.key").chmod(0o600)
    with pytest.raises(ConfigError, match="is not base64") as caught:
        load_config(config_dir / "minimal.toml")
    assert secret[:20] not in str(caught.value)


def test_several_problems_are_reported_together(config_dir: Path) -> None:
    text = (config_dir / "minimal.toml").read_text()
    text = text.replace('ipv4 = "10.64.0.2"', 'ipv4 = "nope"').replace('forward_target = "198.18.0.2"', "")
    (config_dir / "two.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / "two.toml")
    lines = str(caught.value).splitlines()
    assert lines[0].endswith("two.toml: 2 problems:")
    assert "identities[0].ipv4: Input is not a valid IPv4 address (got 'nope')" in lines[1]
    assert "checks.forward_target: required but missing" in lines[2]
