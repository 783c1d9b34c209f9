"""Bad agent configs, one file each under tests/data/config/, and the error text each must produce.

Git keeps no file modes but the executable bit, so the data is copied to a temporary directory and the key files get
the mode a careful user would give them (0600), except where a case says otherwise.
"""

import os
import re
import shutil
from pathlib import Path

import pytest

from probe.agent_config import load_config
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
    # pydantic would read these as 0.0.0.12 and 192.168.1.1
    (
        "bad-ipv4-integer.toml",
        {},
        ['identities[0].ipv4: an IP address is written as a string, e.g. "198.18.0.2", not as a number (got 12)'],
    ),
    (
        "bad-forward-target-integer.toml",
        {},
        ["checks.forward_target: an IP address is written as a string", "not as a number (got 3232235777)"],
    ),
    # 0.0.0.0 reaches this host itself: the control check passed and every relay was blamed (exit 1).
    (
        "bad-forward-target-unspecified.toml",
        {},
        ["checks.forward_target: 0.0.0.0 is an unspecified address, not a host beyond the relays' NAT"],
    ),
    ("bad-reflector-multicast.toml", {}, ["checks.reflector: ff02::1 is a multicast address, not a host beyond"]),
    ("bad-evidence-max-bytes.toml", {}, ["probe.evidence_max_bytes: Input should be a valid integer (got 'lots')"]),
    (
        "bad-inventory-credentials.toml",
        {},
        ["inventory.source: use a file path or an http:// or https:// URL (got 'ftp://***@inventory.example/relays')"],
    ),
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
    (
        "bad-key-not-base64.toml",
        {},
        [
            "not-base64.key: private key must be 44 base64 characters (32 bytes), got 18; "
            "expected one line as printed by `wg genkey`"
        ],
    ),
    ("bad-key-short.toml", {}, ["short.key: private key must be 44 base64 characters (32 bytes), got 24"]),
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
    with pytest.raises(ConfigError, match="is not valid base64") as caught:
        load_config(config_dir / "minimal.toml")
    assert secret[:20] not in str(caught.value)


# A secret nobody would find in a path or a message by chance.
SECRET = b"qZ7vXk2Lw9TnR4bYc8HdJ3mPf6GsE1uAo5NiK0yWtVg="


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xffqZ7vXk2Lw9TnR4bYc8HdJ3mPf6GsE1uAo5NiK0yWt=\n", "is not valid base64"),  # not UTF-8
        (SECRET[:10] + b"\xc3\xa9" + SECRET[12:] + b"\n", "is not valid base64"),  # UTF-8 but not ASCII
        (SECRET[:17] + b"%" + SECRET[18:] + b"\n", "is not valid base64"),  # one wrong character
        (SECRET[:-2] + b"\n", "must be 44 base64 characters"),
        (SECRET * 20, "must be 44 base64 characters (32 bytes), got 880"),
        (SECRET * 200, "lab-agent-1.key: is larger than 4 KiB"),
    ],
)
def test_a_bad_key_file_never_shows_a_byte_of_it(config_dir: Path, content: bytes, reason: str) -> None:
    key = config_dir / "keys" / "lab-agent-1.key"
    key.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        load_config(config_dir / "minimal.toml")
    message = str(caught.value)
    assert reason in message
    text = content.decode("latin-1")
    leaked = [text[i : i + 4] for i in range(len(text) - 3) if text[i : i + 4] in message]
    assert not leaked, message
    assert "0xff" not in message and "\\x" not in message and "position" not in message


@pytest.mark.parametrize("special", ["/dev/zero", "fifo", "directory"])
def test_a_key_path_that_is_not_a_regular_file_is_refused_at_once(config_dir: Path, special: str) -> None:
    key = config_dir / "keys" / "lab-agent-1.key"
    key.unlink()
    if special == "fifo":
        os.mkfifo(key, 0o600)
    elif special == "directory":
        key.mkdir(mode=0o700)
    else:
        key.symlink_to(special)
    with pytest.raises(ConfigError, match=r"lab-agent-1\.key is not a regular file"):
        load_config(config_dir / "minimal.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[agent]\nname = "a"\nx = ' + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("a = " + "{b = " * 100_000 + "1" + "}" * 100_000 + "\n", "nested too deeply"),
        ("[" + ".".join(["a"] * 50) + "]\nb = 1\n", "nested more than 32 levels deep"),
        ('[agent]\nname = "a"\nx = ' + "[" * 200 + "]" * 200 + "\n", "nested more than 32 levels deep"),
        ("a = " + "1" * 5000 + "\n", "not valid TOML"),  # int() refuses more than 4300 digits with a ValueError
    ],
    ids=["100k-lists", "100k-tables", "dotted-keys", "200-lists", "huge-integer"],
)
def test_a_deeply_nested_config_is_a_config_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "deep.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: ")) as caught:
        load_config(path)
    assert expected in str(caught.value)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_config_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, special: str) -> None:
    path = tmp_path / "agent.toml"
    if special == "fifo":
        os.mkfifo(path)  # nobody writes to it: reading it would block forever
    else:
        path.symlink_to(special)
    with pytest.raises(ConfigError, match=r"cannot read config: is a (FIFO \(named pipe\)|character device), not a"):
        load_config(path)


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


@pytest.mark.parametrize(
    ("probe", "expected"),
    [
        ("evidence_path_max_bytes = 100", "probe.evidence_path_max_bytes: Input should be greater than or equal to"),
        ("evidence_max_bytes = 1.5e9", "probe.evidence_max_bytes: Input should be a valid integer (got 1500000000.0)"),
        ("evidence_max_age_hours = 0", "probe.evidence_max_age_hours: Input should be greater than 0 (got 0)"),
        (
            "evidence_path_max_bytes = 4194304\nevidence_max_bytes = 2097152",
            "probe: evidence_path_max_bytes (4194304) is larger than evidence_max_bytes (2097152)",
        ),
    ],
)
def test_evidence_bounds(config_dir: Path, probe: str, expected: str) -> None:
    path = config_dir / "evidence.toml"
    path.write_text((config_dir / "minimal.toml").read_text() + f"[probe]\n{probe}\n")
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(path)
