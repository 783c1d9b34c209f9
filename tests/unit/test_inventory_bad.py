"""Bad inventories, one file each under tests/data/inventory/, and the exact text each must produce.

Two kinds: a broken entry among good ones is reported as a problem naming the relay and the field while the others
load; a source that is unusable as a whole is an InventoryError naming the file and the reason.
"""

from pathlib import Path
from typing import NamedTuple

import pytest

from probe.errors import ConfigError
from probe.inventory import InventoryError, InventorySource, load_inventory

DATA = Path(__file__).parent.parent / "data" / "inventory"


class Problem(NamedTuple):
    relay: str | None
    field: str
    text: str  # a substring of the message


# file, the one problem it must give, how many relays still load
PROBLEM_CASES = [
    ("app-missing-public-key.json", Problem("se-got-wg-002", "public_key", "required but missing"), 2),
    (
        "app-bad-key-length.json",
        Problem("se-got-wg-002", "public_key", "public key must decode to 32 bytes, got 31"),
        2,
    ),
    (
        "app-bad-ipv4.json",
        Problem("se-got-wg-002", "ipv4_addr_in", "not a valid IPv4 address (got '185.213.154.300')"),
        2,
    ),
    ("app-duplicate-hostname.json", Problem("se-got-wg-001", "hostname", "duplicate: entry 1 has the same name"), 2),
    ("app-relay-not-object.json", Problem(None, "", "expected an object, got str"), 3),
    ("app-reversed-port-range.json", Problem(None, "wireguard.port_ranges[1]", "port range 60000-4000 is reversed"), 3),
    (
        "web-bad-pubkey.json",
        Problem(
            "se-got-wg-002", "pubkey", "public key must be 44 base64 characters (32 bytes), got 9 (got 'not a key')"
        ),
        2,
    ),
    ("fleet-missing-name.toml", Problem(None, "name", "required but missing"), 1),
    ("fleet-reversed-port-range.toml", Problem("lab-wg-002", "port_ranges[1]", "port range 5000-4000 is reversed"), 1),
    ("fleet-unknown-key.toml", Problem("lab-wg-001", "egress_ip4", "unknown key; a relay has name, public_key"), 1),
    ("fleet-float-label.toml", Problem("lab-wg-001", "labels.kernel", 'is the number 4.1; quote it (kernel = "'), 1),
]

# file, a substring of the error
ERROR_CASES = [
    ("not-json.json", "not-json.json: not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ("not-toml.toml", "not-toml.toml: not valid TOML: Expected '=' after a key"),
    ("garbage.txt", "garbage.txt: neither JSON (Expecting value: line 1 column 1 (char 0)) nor TOML (Invalid"),
    ("wrong-shape.json", "wrong-shape.json: JSON of an unknown shape (an object without a 'wireguard' key)"),
    ("app-empty-relays.json", "app-empty-relays.json: wireguard.relays holds no WireGuard relays"),
    ("app-all-inactive.json", "all 2 relays in wireguard.relays are inactive (set include_inactive = true"),
    ("web-only-openvpn.json", "web-only-openvpn.json: the web relay list holds no WireGuard relays"),
    ("fleet-no-relays.toml", "fleet-no-relays.toml: no [[relays]] tables; not a wgprobe TOML inventory"),
    ("fleet-top-level-unknown.toml", "unknown top-level key 'default'; an inventory has [defaults] and [[relays]]"),
    ("fleet-bad-defaults.toml", "[defaults] main_port: Input should be greater than or equal to 1 (got 0)"),
    ("no-such-file.json", "no-such-file.json: cannot read inventory: No such file or directory"),
]


@pytest.mark.parametrize(("name", "expected", "loaded"), PROBLEM_CASES, ids=[c[0] for c in PROBLEM_CASES])
def test_one_bad_entry_is_reported_and_the_rest_load(name: str, expected: Problem, loaded: int) -> None:
    inventory = load_inventory(DATA / name)
    assert len(inventory.problems) == 1, [str(p) for p in inventory.problems]
    problem = inventory.problems[0]
    assert (problem.relay, problem.field) == (expected.relay, expected.field)
    assert expected.text in problem.message
    assert expected.text in str(problem)
    assert len(inventory.relays) == loaded


@pytest.mark.parametrize(("name", "expected"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_unusable_source_is_a_config_error(name: str, expected: str) -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(DATA / name)
    assert expected in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the CLI reports every ConfigError the same way


def test_problem_text_names_relay_entry_and_field() -> None:
    problem = load_inventory(DATA / "app-bad-ipv4.json").problems[0]
    assert str(problem).startswith("relay se-got-wg-002 (entry 2) ipv4_addr_in: Input is not a valid IPv4 address")


def test_broken_entry_of_an_inactive_relay_is_not_reported() -> None:
    # Nobody probes it, so its problems would only be noise; with include_inactive it is reported.
    text = (DATA / "app-bad-ipv4.json").read_text().replace('"active": true', '"active": false', 2)
    assert "185.213.154.300" in text
    from probe.inventory import parse_inventory

    assert parse_inventory(text, source="x").problems == ()
    assert len(parse_inventory(text, source="x", include_inactive=True).problems) == 1


def test_unsupported_url_scheme_is_refused() -> None:
    with pytest.raises(InventoryError, match="unsupported scheme 'ftp'"):
        InventorySource("ftp://example.net/relays.json")
