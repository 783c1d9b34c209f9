"""The lab's pure parts: address/name plan, fault parsing, firewall rendering, artifacts, state, nfqueue parsing.

Nothing here builds a namespace. The firewall rulesets are checked with `nft -c` (check mode: parsed and validated
by the kernel, never committed).
"""

import base64
import json
import re
import struct
import subprocess
import tomllib
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probe.addresses import Endpoint
from probe.agent_config import load_config
from probe.errors import ConfigError, LabError
from probe.inventory import load_inventory
from probe.lab import nfqueue
from probe.lab.artifacts import (
    agent_toml,
    identity_public_keys,
    relay_list,
    write_artifacts,
    write_private_key,
)
from probe.lab.faults import Fault, FaultKind, parse_relay_fault
from probe.lab.firewall import delay_rules, delete_ruleset, needs_forwarding, render_ruleset
from probe.lab.state import STATE_FILE, LabState, RelayState, load_state, save_state
from probe.lab.topology import PORT_RANGES, TUNNEL_V4_GATEWAY, TUNNEL_V6_GATEWAY, plan_lab
from probe.reflector import parse_listen

# The repository keeps its own copy of the shared fixture, so CI does not depend on where shared/ is laid.
FIXTURE = Path(__file__).parent.parent / "data" / "inventory" / "mullvad-app-relays-sample.json"
IFNAMSIZ = 16  # including the terminating NUL: an interface name is at most 15 bytes
BENCHMARK_V4 = IPv4Network("198.18.0.0/15")
LAB_V6 = IPv6Network("fd77:7770::/64")

# --- topology ---------------------------------------------------------------------------------------------------


def test_relays_are_named_like_mullvad_hostnames() -> None:
    plan = plan_lab(500)
    assert [r.name for r in plan.relays] == [f"se-got-wg-{i:03d}" for i in range(1, 501)]
    assert plan.relay("se-got-wg-042").index == 42
    with pytest.raises(ConfigError, match=r"no relay 'se-got-wg-501'.*se-got-wg-001\.\.se-got-wg-500"):
        plan.relay("se-got-wg-501")


@pytest.mark.parametrize("prefix", ["wgp", "ab", "z9y8"])
def test_names_are_unique_and_interface_names_fit_the_kernel_limit(prefix: str) -> None:
    plan = plan_lab(500, agents=9, identities=8, prefix=prefix)
    netns = [r.netns for r in plan.relays] + [a.netns for a in plan.agents] + [plan.hub_netns, plan.outside_netns]
    assert len(set(netns)) == len(netns) == 511
    assert all(name.startswith(f"{prefix}-") for name in netns)
    wg = [r.wg_ifname for r in plan.relays]
    hub = [r.hub_ifname for r in plan.relays] + [a.hub_ifname for a in plan.agents]  # all live in the hub netns
    for names in (wg, hub):
        assert len(set(names)) == len(names)
        assert all(len(name.encode()) < IFNAMSIZ for name in names), max(names, key=len)


def test_wireguard_interfaces_of_two_labs_do_not_collide() -> None:
    # wireguard-go's control sockets share /var/run/wireguard/ across namespaces.
    first = {r.wg_ifname for r in plan_lab(500, prefix="wgp").relays}
    second = {r.wg_ifname for r in plan_lab(500, prefix="wgq").relays}
    assert not first & second


def test_public_addresses_are_unique_and_inside_the_lab_ranges() -> None:
    plan = plan_lab(500, agents=9)
    v4 = [plan.outside_ipv4, *(a.ipv4 for a in plan.agents)]
    v6 = [plan.outside_ipv6, *(a.ipv6 for a in plan.agents)]
    for relay in plan.relays:
        v4 += [relay.ipv4, relay.wrong_egress_v4]
        v6 += [relay.ipv6, relay.wrong_egress_v6]
    assert len(set(v4)) == len(v4) == 1 + 9 + 1000
    assert len(set(v6)) == len(v6) == 1 + 9 + 1000
    assert all(a in BENCHMARK_V4 and a.packed[3] not in (0, 255) for a in v4)
    assert all(a in LAB_V6 for a in v6)


def test_tunnel_addresses_are_unique_per_identity_and_never_the_gateway() -> None:
    plan = plan_lab(1, agents=9, identities=8)
    identities = [ident for agent in plan.agents for ident in agent.identities]
    assert len(identities) == 72
    for family, gateway, net in (
        ("ipv4", TUNNEL_V4_GATEWAY, IPv4Network("10.64.0.0/10")),
        ("ipv6", TUNNEL_V6_GATEWAY, IPv6Network("fc00:bbbb:bbbb:bb01::/64")),
    ):
        addresses = [getattr(ident, family) for ident in identities]
        assert len(set(addresses)) == len(addresses)
        assert gateway not in addresses
        assert all(a in net for a in addresses)
    key_files = [ident.key_file for ident in identities]
    assert len(set(key_files)) == len(key_files)
    assert [a.config_file for a in plan.agents[:2]] == ["agent.toml", "agent-2.toml"]


@pytest.mark.parametrize(
    ("servers", "agents", "identities", "prefix", "message"),
    [
        (0, 1, 2, "wgp", "--servers must be 1..500, got 0"),
        (501, 1, 2, "wgp", "--servers must be 1..500, got 501"),
        (1, 0, 2, "wgp", "--agents must be 1..9, got 0"),
        (1, 10, 2, "wgp", "--agents must be 1..9, got 10"),
        (1, 1, 0, "wgp", "--identities must be 1..8, got 0"),
        (1, 1, 9, "wgp", "--identities must be 1..8, got 9"),
        (1, 1, 2, "WGP", "lab prefix must be 2-4 lowercase letters/digits, got 'WGP'"),
        (1, 1, 2, "w", "lab prefix must be"),
        (1, 1, 2, "wgpxy", "lab prefix must be"),
        (1, 1, 2, "wg-p", "lab prefix must be"),
        (1, 1, 2, "", "lab prefix must be"),
    ],
)
def test_out_of_range_plans_are_refused(servers: int, agents: int, identities: int, prefix: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan_lab(servers, agents, identities, prefix)


# --- faults -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "arg", "canonical"),
    [
        ("nat", FaultKind.NAT, None, "nat"),
        ("loss:20", FaultKind.LOSS, 20, "loss:20"),
        ("loss:100", FaultKind.LOSS, 100, "loss:100"),
        ("delay:150", FaultKind.DELAY, 150, "delay:150"),
        ("delay:10000", FaultKind.DELAY, 10000, "delay:10000"),
        (" v6nat ", FaultKind.V6NAT, None, "v6nat"),
    ],
)
def test_faults_parse(text: str, kind: FaultKind, arg: int | None, canonical: str) -> None:
    fault = Fault.parse(text)
    assert (fault.kind, fault.arg) == (kind, arg)
    assert str(fault) == canonical
    assert Fault.parse(str(fault)) == fault  # the state file stores str(fault)


def test_every_argument_free_kind_parses_by_its_name() -> None:
    for kind in FaultKind:
        if kind not in (FaultKind.LOSS, FaultKind.DELAY):
            assert Fault.parse(kind.value) == Fault(kind)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss", "fault 'loss' needs a number of percent, as loss:20"),
        ("loss:", "needs a number of percent"),
        ("loss:-5", "needs a number of percent"),
        ("loss:0", "loss must be 1..100 percent, got 0"),
        ("loss:101", "loss must be 1..100 percent, got 101"),
        ("delay:x", "fault 'delay' needs a number of milliseconds"),
        ("delay:0", "delay must be 1..10000 ms, got 0"),
        ("delay:10001", "delay must be 1..10000 ms, got 10001"),
        ("nat:1", "fault 'nat' takes no argument, got 'nat:1'"),
        ("nat:", "takes no argument"),
        ("boom", "unknown fault kind 'boom' (known: nat, forward"),
        ("NAT", "unknown fault kind 'NAT'"),
        ("", "unknown fault kind ''"),
    ],
)
def test_bad_faults_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Fault.parse(text)


def test_relay_faults_parse() -> None:
    assert parse_relay_fault("se-got-wg-003:nat") == ("se-got-wg-003", Fault(FaultKind.NAT))
    assert parse_relay_fault("se-got-wg-010:loss:20") == ("se-got-wg-010", Fault(FaultKind.LOSS, 20))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nat", "--fault wants NAME:KIND (as se-got-wg-001:nat), got 'nat'"),
        (":nat", "--fault wants NAME:KIND"),
        ("se-got-wg-001:", "--fault wants NAME:KIND"),
        ("se-got-wg-001:boom", "unknown fault kind 'boom'"),
        ("se-got-wg-001:loss:0", "loss must be 1..100"),
    ],
)
def test_bad_relay_faults_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_relay_fault(text)


# --- firewall ---------------------------------------------------------------------------------------------------

RELAY = plan_lab(250).relays[249]  # relay 250: its wrong egress is 198.18.102.50, fd77:7770::2:fa
V4_MASQ = 'oifname "eth0" ip saddr 10.64.0.0/10 masquerade'
V6_MASQ = 'oifname "eth0" ip6 saddr fc00:bbbb:bbbb:bb01::/64 masquerade'


def _chains(ruleset: str) -> dict[str, list[str]]:
    """Rules per chain (the `type ... policy` line left out)."""
    chains: dict[str, list[str]] = {}
    current: str | None = None
    for line in ruleset.splitlines():
        text = line.strip()
        if text.startswith("chain "):
            current = text.split()[1]
            chains[current] = []
        elif text == "}":
            current = None
        elif current is not None and not text.startswith("type "):
            chains[current].append(text)
    return chains


# Loss spares neighbour discovery (see firewall.py), so the lossy rule always follows this one.
ND_SPARED = (
    'oifname "eth0" icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } accept'
)
ND_SPARED_IN = ND_SPARED.replace("oifname", "iifname")


def lossy(percent: int) -> dict[str, list[str]]:
    """The chains `loss:PERCENT` sets: the same chance of a drop each way on the public link."""
    return {
        "public_egress": [ND_SPARED, f'oifname "eth0" numgen random mod 100 < {percent} drop'],
        "public_ingress": [ND_SPARED_IN, f'iifname "eth0" numgen random mod 100 < {percent} drop'],
    }


HEALTHY = _chains(render_ruleset(RELAY, []))


def _redirected_ports(rules: list[str]) -> set[int]:
    assert len(rules) == 1
    match = re.fullmatch(r'iifname "eth0" udp dport \{ (.+) \} redirect to :51820', rules[0])
    assert match, rules[0]
    ports: set[int] = set()
    for element in match.group(1).split(", "):
        low, _, high = element.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def test_a_healthy_relay_redirects_every_extended_port_and_masquerades_both_families() -> None:
    ports = _redirected_ports(HEALTHY["entry_ports"])
    assert {53, 123, 4000, 33433, 33565, 51819, 52001, 60000} <= ports
    assert not {51820, 52000, 33434, 33564, 3999, 60001, 443} & ports
    assert ports == {p for low, high in PORT_RANGES for p in range(low, high + 1)} - {51820}
    assert HEALTHY["source_nat"] == [V4_MASQ, V6_MASQ]
    assert HEALTHY["forward_filter"] == HEALTHY["public_egress"] == HEALTHY["public_ingress"] == []
    assert needs_forwarding([])


@pytest.mark.parametrize(
    ("fault", "changed"),
    [
        ("ports", {"entry_ports": []}),
        ("nat", {"source_nat": []}),
        ("v6nat", {"source_nat": [V4_MASQ]}),
        (
            "egress",
            {
                "source_nat": [
                    'oifname "eth0" ip saddr 10.64.0.0/10 snat ip to 198.18.102.50',
                    'oifname "eth0" ip6 saddr fc00:bbbb:bbbb:bb01::/64 snat ip6 to fd77:7770::2:fa',
                ]
            },
        ),
        ("drop", {"forward_filter": ['iifname "wgpr250" drop']}),
        ("mtu", {"forward_filter": ['iifname "wgpr250" meta length > 1200 drop']}),
        ("loss:20", lossy(20)),
        ("loss:75", lossy(75)),
        ("forward", {}),  # sysctl, see needs_forwarding
        ("down", {}),  # the process is stopped
        ("delay:150", {}),  # iptables NFQUEUE, see delay_rules
    ],
)
def test_each_fault_changes_exactly_its_piece_of_the_firewall(fault: str, changed: dict[str, list[str]]) -> None:
    assert _chains(render_ruleset(RELAY, [Fault.parse(fault)])) == HEALTHY | changed
    assert needs_forwarding([Fault.parse(fault)]) == (fault != "forward")


def test_faults_combine() -> None:
    faults = [Fault.parse(text) for text in ("ports", "v6nat", "mtu", "loss:5", "forward")]
    chains = _chains(render_ruleset(RELAY, faults))
    assert chains["entry_ports"] == []
    assert chains["source_nat"] == [V4_MASQ]
    assert chains["forward_filter"] == ['iifname "wgpr250" meta length > 1200 drop']
    assert {name: chains[name] for name in ("public_egress", "public_ingress")} == lossy(5)
    assert not needs_forwarding(faults)


def test_delay_rules_are_removed_by_their_mirror_image() -> None:
    added, removed = delay_rules(3, add=True), delay_rules(3, add=False)
    assert [cmd[0] for cmd in added] == ["iptables", "ip6tables"]
    assert [[arg.replace("-A", "-D") for arg in cmd] for cmd in added] == removed
    for cmd in added:
        # --queue-bypass: a dead holder process means "no delay", not a second, unrelated fault.
        assert cmd[-3:] == ["--queue-num", "3", "--queue-bypass"]
        # arriving on the public link, held in raw before conntrack (see firewall.delay_rules)
        assert cmd[cmd.index("-i") + 1] == "eth0"
        assert cmd[cmd.index("-t") + 1] == "raw" and "PREROUTING" in cmd


ALL_FAULTS = ["ports", "nat", "v6nat", "egress", "drop", "mtu", "loss:20", "forward", "down", "delay:150"]


@pytest.mark.parametrize("faults", [[], *([f] for f in ALL_FAULTS), ALL_FAULTS, ["egress", "drop", "loss:99"]])
def test_rendered_rulesets_pass_nft_check(tmp_path: Path, faults: list[str]) -> None:
    script = tmp_path / "ruleset.nft"
    script.write_text(render_ruleset(RELAY, [Fault.parse(f) for f in faults]))
    checked = subprocess.run(["nft", "-c", "-f", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_delete_ruleset_passes_nft_check_when_no_table_exists(tmp_path: Path) -> None:
    script = tmp_path / "delete.nft"
    script.write_text(delete_ruleset())
    checked = subprocess.run(["nft", "-c", "-f", str(script)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


# --- artifacts ----------------------------------------------------------------------------------------------------

RELAY_FIELDS = [
    "hostname",
    "location",
    "active",
    "owned",
    "provider",
    "ipv4_addr_in",
    "ipv6_addr_in",
    "public_key",
    "weight",
    "include_in_country",
]


def _fake_keys(plan_size: int) -> dict[str, str]:
    return {f"se-got-wg-{i:03d}": base64.b64encode(bytes([i % 256]) * 32).decode() for i in range(1, plan_size + 1)}


def test_relay_list_has_the_shape_of_mullvads_app_list() -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    plan = plan_lab(3)
    keys = _fake_keys(3)
    document = json.loads(json.dumps(relay_list(plan, keys)))  # what relays.json holds
    assert set(document) <= set(fixture)
    wireguard = document["wireguard"]
    assert {"port_ranges", "ipv4_gateway", "ipv6_gateway", "relays"} <= set(wireguard) <= set(fixture["wireguard"])
    assert wireguard["ipv4_gateway"] == fixture["wireguard"]["ipv4_gateway"]
    assert wireguard["ipv6_gateway"] == fixture["wireguard"]["ipv6_gateway"]
    fixture_place = next(iter(fixture["locations"].values()))
    for relay, planned in zip(wireguard["relays"], plan.relays, strict=True):
        for field in RELAY_FIELDS:
            assert field in relay, field
            for expected in fixture["wireguard"]["relays"]:
                assert type(relay[field]) is type(expected[field]), field
        assert (relay["hostname"], relay["public_key"]) == (planned.name, keys[planned.name])
        assert (relay["ipv4_addr_in"], relay["ipv6_addr_in"]) == (str(planned.ipv4), str(planned.ipv6))
        place = document["locations"][relay["location"]]
        assert {k: type(v) for k, v in place.items()} == {k: type(v) for k, v in fixture_place.items()}


def test_relay_list_port_ranges_cover_the_main_port_and_mullvads_extended_ranges() -> None:
    fixture: dict[str, Any] = json.loads(FIXTURE.read_text())
    ranges = relay_list(plan_lab(1), _fake_keys(1))["wireguard"]["port_ranges"]
    assert any(low <= 51820 <= high for low, high in ranges)
    for low, high in fixture["wireguard"]["port_ranges"]:
        assert any(lo <= low and high <= hi for lo, hi in ranges), (low, high)


def test_private_keys_are_created_private_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "lab-agent-1.key"
    public = write_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    raw = base64.b64decode(path.read_text().strip(), validate=True)
    assert len(raw) == 32
    derived = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64decode(public) == derived
    before = path.read_bytes()
    assert write_private_key(path) == public
    assert path.read_bytes() == before
    assert write_private_key(tmp_path / "keys" / "other.key") != public


def test_an_existing_key_with_loose_permissions_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "relay.key"
    public = write_private_key(path)
    path.chmod(0o644)
    assert write_private_key(path) == public
    assert path.stat().st_mode & 0o777 == 0o600


def test_agent_toml_holds_exactly_the_agent_config_contract() -> None:
    plan = plan_lab(2, agents=2, identities=3)
    config = tomllib.loads(agent_toml(plan, plan.agents[1]))
    assert set(config) == {"agent", "identities", "inventory", "checks"}
    # netns: the agent probes from its vantage point's namespace even when started from the host.
    assert config["agent"] == {"name": "lab-agent-2", "netns": "wgp-agent-2"}
    assert config["identities"] == [
        {"private_key_file": f"keys/lab-agent-2-{n}.key", "ipv4": str(i.ipv4), "ipv6": str(i.ipv6)}
        for n, i in enumerate(plan.agents[1].identities, start=1)
    ]
    assert config["inventory"] == {"source": "relays.json", "labels": "labels.json"}
    assert config["checks"] == {
        "forward_target": "198.18.0.2",
        "forward_target_v6": "fd77:7770::2",
        "reflector": "198.18.0.2:7777",
        "reflector_v6": "[fd77:7770::2]:7777",
    }
    assert parse_listen(config["checks"]["reflector"]) == Endpoint(plan.outside_ipv4, 7777)
    assert parse_listen(config["checks"]["reflector_v6"]) == Endpoint(plan.outside_ipv6, 7777)


def test_the_config_loader_reads_the_lab_agent_config(tmp_path: Path) -> None:
    plan = plan_lab(2, agents=2)
    write_artifacts(tmp_path, plan)
    identity_public_keys(tmp_path, plan)  # `probe lab up` creates the agent keys alongside
    config = load_config(tmp_path / "agent-2.toml")
    agent = plan.agents[1]
    assert (config.agent.name, config.agent.netns) == ("lab-agent-2", "wgp-agent-2")
    assert [i.ipv4 for i in config.identities] == [i.ipv4 for i in agent.identities]
    assert [i.private_key_file for i in config.identities] == [tmp_path / i.key_file for i in agent.identities]
    assert config.checks.forward_target == plan.outside_ipv4
    assert config.checks.reflector is not None
    assert (config.checks.reflector.host, config.checks.reflector.port) == (plan.outside_ipv4, 7777)


def test_the_inventory_loader_reads_the_lab_like_production(tmp_path: Path) -> None:
    plan = plan_lab(3, agents=2)
    keys = write_artifacts(tmp_path, plan)
    assert (tmp_path / "agent.toml").is_file() and (tmp_path / "agent-2.toml").is_file()
    assert all((tmp_path / "relays" / f"{name}.key").stat().st_mode & 0o777 == 0o600 for name in keys)
    inventory = load_inventory(tmp_path / "relays.json")
    assert inventory.problems == ()
    assert inventory.names == ["se-got-wg-001", "se-got-wg-002", "se-got-wg-003"]
    assert (inventory.ipv4_gateway, inventory.ipv6_gateway) == (TUNNEL_V4_GATEWAY, TUNNEL_V6_GATEWAY)
    for planned in plan.relays:
        relay = inventory.require(planned.name)
        assert relay.public_key == keys[planned.name]
        assert (relay.ipv4_addr_in, relay.ipv6_addr_in) == (planned.ipv4, planned.ipv6)
        assert relay.egress_ipv4 == planned.ipv4  # the wrong_egress address is what the `egress` fault shows
        assert relay.accepts_port(51820) and relay.accepts_port(4000) and not relay.accepts_port(52000)


# --- state ------------------------------------------------------------------------------------------------------


def test_lab_state_survives_a_save_and_load(tmp_path: Path) -> None:
    state = LabState(
        prefix="ab",
        servers=5,
        agents=2,
        identities=3,
        reflector_pid=1234,
        relays={"se-got-wg-002": RelayState(wg_pid=10, delay_pid=11, faults=["loss:20", "nat"])},
    )
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert loaded == state
    assert loaded.relays["se-got-wg-002"].parsed_faults() == [Fault(FaultKind.LOSS, 20), Fault(FaultKind.NAT)]
    assert loaded.plan() == plan_lab(5, 2, 3, "ab")
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left behind


def test_no_state_tells_the_user_to_start_a_lab(tmp_path: Path) -> None:
    with pytest.raises(LabError, match=r"no lab in .*start one with `probe lab up`"):
        load_state(tmp_path / "missing")


@pytest.mark.parametrize("content", ["garbage", "", "[]", "{}", '{"servers": 1, "surprise": 2}', '{"servers": "x"}'])
def test_unreadable_state_is_a_lab_error(tmp_path: Path, content: str) -> None:
    (tmp_path / STATE_FILE).write_text(content)
    with pytest.raises(LabError, match="unreadable lab state"):
        load_state(tmp_path)


# --- nfqueue ------------------------------------------------------------------------------------------------------

PACKET_KIND = (nfqueue.NFNL_SUBSYS_QUEUE << 8) | nfqueue.NFQNL_MSG_PACKET
NFQA_MARK = 3
NFQA_PAYLOAD = 10


def _nlattr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def _nlmsg(kind: int, body: bytes) -> bytes:
    # nlmsghdr (host order) + body; the next message starts 4-aligned.
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, 0, 0) + body + bytes(-length % 4)


def _packet(packet_id: int, *, mark_first: bool = True) -> bytes:
    nfgenmsg = struct.pack("=BB", 0, 0) + struct.pack(">H", 3)
    header = _nlattr(nfqueue.NFQA_PACKET_HDR, struct.pack(">IHB", packet_id, 0x0800, 4))  # id, hw proto, hook
    mark = _nlattr(NFQA_MARK, struct.pack(">I", 7))
    payload = _nlattr(NFQA_PAYLOAD, b"\x45" + bytes(18))  # odd length: exercises attribute padding
    attrs = payload + mark + header if mark_first else header + mark
    return _nlmsg(PACKET_KIND, nfgenmsg + attrs)


def test_one_packet_message_gives_its_id() -> None:
    assert nfqueue.packet_ids(_packet(0x01020304)) == [0x01020304]  # big-endian, as the kernel sends it
    assert nfqueue.packet_ids(_packet(1, mark_first=False)) == [1]


def test_batched_packet_messages_give_every_id_in_order() -> None:
    error = _nlmsg(nfqueue.NLMSG_ERROR, struct.pack("=i", 0) + bytes(16))  # not a packet: ignored
    data = _packet(5) + error + _packet(6, mark_first=False) + _packet(0xFFFFFFFF)
    assert nfqueue.packet_ids(data) == [5, 6, 0xFFFFFFFF]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 15,
        struct.pack("=IHHII", 0, PACKET_KIND, 0, 0, 0) + _packet(9),  # zero length: must not loop forever
        struct.pack("=IHHII", 20, PACKET_KIND, 0, 0, 0) + struct.pack("=HH", 0, 1),  # zero-length attribute
    ],
)
def test_garbage_gives_no_ids(data: bytes) -> None:
    assert nfqueue.packet_ids(data) == []


def test_a_truncated_tail_keeps_the_ids_before_it() -> None:
    assert nfqueue.packet_ids(_packet(4) + _packet(5)[:10]) == [4]


def test_the_lab_inventory_carries_kernel_labels_from_its_labels_file(tmp_path: Path) -> None:
    from probe.inventory.configured import ConfiguredInventory

    plan = plan_lab(5)
    write_artifacts(tmp_path, plan)
    identity_public_keys(tmp_path, plan)
    inventory = ConfiguredInventory(load_config(tmp_path / "agent.toml").inventory).load()
    relays = {relay.name: relay.labels for relay in inventory.relays}
    # The public list's provider and configuration management's kernel, side by side on every relay.
    assert relays["se-got-wg-002"].items() >= {"provider": "M247", "kernel": "6.1.0-28", "os": "debian-12"}.items()
    assert {r["kernel"] for name, r in relays.items() if name in ("se-got-wg-002", "se-got-wg-003")} == {"6.1.0-28"}
    assert relays["se-got-wg-001"]["kernel"] != "6.1.0-28"
