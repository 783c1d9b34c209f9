"""Loading the real Mullvad lists and the TOML format, and what a user sees when they name a relay."""

import copy
import json
import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from probe.inventory import (
    Inventory,
    InventoryFormat,
    Relay,
    UnknownRelayError,
    load_inventory,
    parse_inventory,
)

DATA = Path(__file__).parent.parent / "data" / "inventory"
FULL = DATA / "mullvad-app-relays-full.json"
SAMPLE = DATA / "mullvad-app-relays-sample.json"
MULLVAD_RANGES = ((53, 53), (123, 123), (4000, 33433), (33565, 51820), (52001, 60000))


@pytest.fixture(scope="module")
def full() -> Inventory:
    return load_inventory(FULL)


def test_full_app_list_loads_every_active_relay(full: Inventory) -> None:
    entries = json.loads(FULL.read_text())["wireguard"]["relays"]
    assert len(entries) == 539
    assert full.format is InventoryFormat.MULLVAD_APP
    assert len(full.relays) == 522
    assert len(full.inactive_skipped) == 17
    assert full.problems == ()
    assert all(relay.active for relay in full.relays)
    assert {e["hostname"] for e in entries if not e["active"]} == set(full.inactive_skipped)


def test_include_inactive_loads_all_539(full: Inventory) -> None:
    everything = load_inventory(FULL, include_inactive=True)
    assert len(everything.relays) == 539
    assert not everything.require("se-sto-wg-004").active
    assert everything.inactive_skipped == ()


def test_se_got_wg_001_matches_the_file_exactly(full: Inventory) -> None:
    relay = full.require("se-got-wg-001")
    assert relay.public_key == "5JMPeO7gXIbR5CnUa/NPNK4L5GqUnreF0/Bozai4pl4="
    assert len(relay.public_key_bytes) == 32
    assert relay.ipv4_addr_in == IPv4Address("185.213.154.66")
    assert relay.ipv6_addr_in == IPv6Address("2a03:1b20:5:f011:31::a03f")
    assert relay.egress_ipv4 == relay.ipv4_addr_in
    assert relay.egress_ipv6 == relay.ipv6_addr_in
    assert relay.location == "se-got"
    assert relay.main_port == 51820
    assert relay.port_ranges == MULLVAD_RANGES
    assert relay.labels == {
        "provider": "31173",
        "owned": "true",
        "stboot": "true",
        "country": "Sweden",
        "city": "Gothenburg",
    }
    assert full.ipv4_gateway == IPv4Address("10.64.0.1")
    assert full.ipv6_gateway == IPv6Address("fc00:bbbb:bbbb:bb01::1")


def test_fields_mullvad_added_later_are_tolerated(full: Inventory) -> None:
    # br-sao-wg-201 carries daita and features; al-tia-wg-003 features.quic and shadowsocks_extra_addr_in.
    assert full.require("br-sao-wg-201").labels["daita"] == "true"
    assert full.require("al-tia-wg-003").ipv4_addr_in == IPv4Address("103.124.165.130")


def test_sample_and_web_list_agree() -> None:
    app = load_inventory(SAMPLE)
    web = load_inventory(DATA / "mullvad-web-sample.json")
    assert web.format is InventoryFormat.MULLVAD_WEB
    assert app.names == web.names
    assert len(app.relays) == 10
    for a, w in zip(app.relays, web.relays, strict=True):
        assert (a.public_key, a.ipv4_addr_in, a.location) == (w.public_key, w.ipv4_addr_in, w.location)
        assert w.port_ranges == ()  # the web list does not say which ports are open
        assert w.main_port == 51820
    assert web.require("se-got-wg-002").ipv6_addr_in is None  # written as null in the web list
    assert web.require("se-got-wg-001").labels["country"] == "Sweden"


def test_web_list_skips_other_relay_types() -> None:
    inventory = load_inventory(DATA / "web-mixed-types.json")
    assert inventory.names == ["se-got-wg-001", "se-got-wg-002"]
    assert inventory.problems == ()


def test_toml_fleet_defaults_overrides_and_labels() -> None:
    inventory = load_inventory(DATA / "fleet.toml")
    assert inventory.format is InventoryFormat.TOML
    assert inventory.names == ["lab-wg-001", "lab-wg-002"]
    assert inventory.inactive_skipped == ("lab-wg-003",)
    assert inventory.ipv4_gateway == IPv4Address("10.99.0.1")
    assert inventory.ipv6_gateway == IPv6Address("fd99::1")
    first, second = inventory.relays
    assert first.port_ranges == ((53, 53), (4000, 4100))
    assert first.egress_ipv4 == IPv4Address("192.0.2.11")
    assert first.labels == {"provider": "lab", "owned": "true", "kernel": "4.15", "os": "ubuntu-18.04"}
    assert second.main_port == 443
    assert second.port_ranges == ((10000, 10010),)
    assert second.egress_ipv4 == IPv4Address("198.51.100.12")
    assert second.egress_ipv6 == IPv6Address("2001:db8:1::12")
    assert second.ipv6_addr_in is None
    assert second.labels["provider"] == "other"  # a relay's label wins over [defaults]
    assert second.accepts_port(443) and second.accepts_port(10005)
    assert not second.accepts_port(51820)


def test_unknown_relay_suggests_close_names(full: Inventory) -> None:
    assert full.get("se-got-wg-01") is None
    assert "se-got-wg-001" in full.suggest("se-got-wg-01")
    assert full.suggest("completely-different-name-xyz") == []
    with pytest.raises(UnknownRelayError, match=r"unknown relay 'se-got-wg-01' .*did you mean .*se-got-wg-001"):
        full.require("se-got-wg-01")


def test_asking_for_an_inactive_relay_says_it_is_inactive(full: Inventory) -> None:
    with pytest.raises(UnknownRelayError, match=r"se-sto-wg-004 is marked inactive.*include_inactive"):
        full.require("se-sto-wg-004")


def test_relay_rejects_names_unsafe_for_labels_and_files() -> None:
    key = "5JMPeO7gXIbR5CnUa/NPNK4L5GqUnreF0/Bozai4pl4="
    Relay(name="se-got-wg-001", public_key=key, ipv4_addr_in="185.213.154.66")  # type: ignore[arg-type]
    for bad in ("../etc/passwd", "se got", "-lead", ""):
        with pytest.raises(ValueError, match="relay name"):
            Relay(name=bad, public_key=key, ipv4_addr_in="185.213.154.66")  # type: ignore[arg-type]


def test_format_is_recognised_from_content_not_name() -> None:
    text = (DATA / "fleet.toml").read_text()
    assert parse_inventory(text, source="<stdin>").format is InventoryFormat.TOML
    assert parse_inventory(SAMPLE.read_bytes(), source="<stdin>").format is InventoryFormat.MULLVAD_APP


def test_importing_inventory_and_config_does_not_import_http() -> None:
    # Every CLI command imports both; http.client and ssl are only paid for when a URL is fetched.
    code = (
        "import sys, probe.inventory, probe.config; "
        "print(sorted(m for m in ('urllib.request', 'http.client', 'ssl') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


_SAMPLE_JSON: dict[str, Any] = json.loads(SAMPLE.read_text())
_ACTIVE = [r["hostname"] for r in _SAMPLE_JSON["wireguard"]["relays"] if r["active"]]
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    victim=st.integers(min_value=0, max_value=len(_SAMPLE_JSON["wireguard"]["relays"]) - 1),
    field=st.sampled_from(["hostname", "public_key", "ipv4_addr_in", "ipv6_addr_in", "location", "provider"]),
    value=_json_values | st.just("MISSING"),
)
def test_one_corrupted_entry_never_costs_the_others(victim: int, field: str, value: Any) -> None:
    assume(value not in _ACTIVE)  # renaming onto another relay makes *that* entry the duplicate
    data = copy.deepcopy(_SAMPLE_JSON)
    entry = data["wireguard"]["relays"][victim]
    if value == "MISSING":
        del entry[field]
    else:
        entry[field] = value
    inventory = parse_inventory(json.dumps(data), source="<fuzz>")
    others = [name for name in _ACTIVE if name != _SAMPLE_JSON["wireguard"]["relays"][victim]["hostname"]]
    assert set(others) <= set(inventory.names)
    assert len(inventory.relays) + len(inventory.problems) >= len(others) + (entry["active"] is True)
    for problem in inventory.problems:
        assert problem.index == victim


_RANGE_ITEMS = st.one_of(
    st.lists(st.one_of(st.integers(-2, 70000), st.booleans(), st.floats(0, 70000), st.text(max_size=3)), max_size=3),
    st.tuples(st.integers(0, 65536), st.integers(0, 65536)),
    st.integers(0, 65536),
    st.none(),
)


@settings(max_examples=300)
@given(item=_RANGE_ITEMS)
def test_a_port_range_is_judged_as_pydantics_validator_judges_it(item: Any) -> None:
    """Well-formed ranges skip pydantic's validator (start-up time): the outcome must be the validator's own, the
    same range or the same problem, for every input."""
    from pydantic import ValidationError

    from probe.inventory.mullvad import _port_range_adapter, port_range

    try:
        expected: tuple[int, int] | str = _port_range_adapter().validate_python(item)
    except ValidationError as e:
        expected = str(e)
    try:
        got: tuple[int, int] | str = port_range(item)
    except ValidationError as e:
        got = str(e)
    assert got == expected
    assert type(got) is type(expected)


def test_a_good_list_is_read_without_building_the_port_range_validator() -> None:
    code = (
        "import json, sys; from probe.inventory import mullvad; "
        f"inv = mullvad.parse_app_list(json.load(open({str(SAMPLE)!r})), source='sample'); "
        "assert inv.relays[0].port_ranges; print(mullvad._port_range_adapter.cache_info().currsize)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "0"
