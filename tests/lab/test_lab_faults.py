"""The lab is real, proven without wgprobe's own WireGuard client: a wireguard-go client interface in the agent
namespace (the OS path), `ping`, and a capture on the outside host. Each fault kind produces exactly its symptom."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable

import pytest

from probe.errors import LabError
from probe.lab import fleet, netns, osclient
from probe.lab.faults import Fault
from probe.lab.osclient import OsClient
from probe.lab.processes import is_running
from probe.lab.state import load_state

from .conftest import Capture, Lab

pytestmark = pytest.mark.lab


def client(lab: Lab, index: int, **kw: object) -> OsClient:
    relay = lab.relay(index)
    return OsClient(lab.lab_dir, lab.plan, relay, lab.public_keys[relay.name], **kw)  # type: ignore[arg-type]


def breaks(lab: Lab, index: int, *faults: str) -> None:
    fleet.set_faults(lab.lab_dir, lab.relay(index).name, [Fault.parse(f) for f in faults])


def test_healthy_relay_forwards_through_nat_with_its_own_address(healed: Lab, capture: Callable[..., Capture]) -> None:
    lab = healed
    relay = lab.relay(1)
    cap = capture()
    with client(lab, 1) as c:
        assert c.ping("10.64.0.1").ok, "in-tunnel gateway must answer"
        v4 = c.ping(lab.plan.outside_ipv4)
        v6 = c.ping(lab.plan.outside_ipv6)
        assert c.handshake_completed()
    seen = cap.stop()
    assert v4.ok and v6.ok
    assert any(f"IP {relay.ipv4} > {lab.plan.outside_ipv4}: ICMP echo request" in line for line in seen), seen
    assert any(f"IP6 {relay.ipv6} > {lab.plan.outside_ipv6}: ICMP6, echo request" in line for line in seen), seen
    assert not any("10.64." in line or "fc00:bbbb" in line for line in seen), "tunnel addresses must not leak"


@pytest.mark.parametrize("port", [53, 123, 4000, 33433, 51819, 52001, 60000])
def test_extended_range_ports_handshake(lab: Lab, port: int) -> None:
    with client(lab, 2, port=port) as c:
        assert c.ping("10.64.0.1", count=2).ok
        assert c.handshake_completed()


def test_ipv6_entry_address_handshakes(lab: Lab) -> None:
    with client(lab, 2, entry_family=6) as c:
        assert c.ping("10.64.0.1", count=2).ok


def test_ports_fault_breaks_only_the_extended_ranges(healed: Lab) -> None:
    breaks(healed, 2, "ports")
    with client(healed, 2, port=4000) as c:
        assert not c.ping("10.64.0.1", count=2, timeout=1).ok
        assert not c.handshake_completed()
    with client(healed, 2) as c:  # the main port still works
        assert c.ping(healed.plan.outside_ipv4).ok


def test_nat_fault_leaks_the_tunnel_source(healed: Lab, capture: Callable[..., Capture]) -> None:
    breaks(healed, 2, "nat")
    cap = capture()
    with client(healed, 2) as c:
        assert c.ping("10.64.0.1").ok
        assert not c.ping(healed.plan.outside_ipv4, count=2, timeout=1).ok
        assert not c.ping(healed.plan.outside_ipv6, count=2, timeout=1).ok
    seen = cap.stop()
    ident = healed.plan.agents[0].identities[0]
    assert any(f"IP {ident.ipv4} > {healed.plan.outside_ipv4}: ICMP echo request" in line for line in seen), seen
    assert any(f"IP6 {ident.ipv6} > {healed.plan.outside_ipv6}" in line for line in seen), seen


@pytest.mark.parametrize("kind", ["forward", "drop"])
def test_forward_and_drop_faults_stop_forwarding_but_not_the_tunnel(
    healed: Lab, capture: Callable[..., Capture], kind: str
) -> None:
    breaks(healed, 3, kind)
    cap = capture("icmp or icmp6")
    with client(healed, 3) as c:
        assert c.ping("10.64.0.1").ok, "handshake and local delivery still work"
        assert not c.ping(healed.plan.outside_ipv4, count=2, timeout=1).ok
        assert not c.ping(healed.plan.outside_ipv6, count=2, timeout=1).ok
    assert not [line for line in cap.stop() if "echo request" in line], "nothing may reach the outside"
    relay = healed.relay(3)
    sysctl = netns.run_in(relay.netns, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    assert sysctl == ("0" if kind == "forward" else "1")


def test_egress_fault_leaves_with_a_wrong_address(healed: Lab, capture: Callable[..., Capture]) -> None:
    breaks(healed, 3, "egress")
    relay = healed.relay(3)
    cap = capture()
    with client(healed, 3) as c:
        assert c.ping(healed.plan.outside_ipv4).ok, "traffic still flows, from the wrong address"
        assert c.ping(healed.plan.outside_ipv6).ok
    seen = cap.stop()
    assert any(f"IP {relay.wrong_egress_v4} > " in line for line in seen), seen
    assert any(f"IP6 {relay.wrong_egress_v6} > " in line for line in seen), seen
    assert not any(f"IP {relay.ipv4} > " in line for line in seen)


def test_v6nat_fault_breaks_only_ipv6_forwarding(healed: Lab) -> None:
    breaks(healed, 4, "v6nat")
    with client(healed, 4) as c:
        assert c.ping(healed.plan.outside_ipv4).ok
        assert c.ping("10.64.0.1").ok
        assert not c.ping(healed.plan.outside_ipv6, count=2, timeout=1).ok


def test_mtu_fault_drops_only_large_forwarded_packets(healed: Lab) -> None:
    breaks(healed, 4, "mtu")
    with client(healed, 4) as c:
        assert c.ping(healed.plan.outside_ipv4, size=100).ok
        assert not c.ping(healed.plan.outside_ipv4, size=1300, count=2, timeout=1).ok
        assert c.ping("10.64.0.1", size=1300).ok, "local delivery is not forwarding"


def test_loss_fault_drops_a_share_of_packets(healed: Lab) -> None:
    with client(healed, 4) as c:
        assert c.ping("10.64.0.1", count=1).ok  # handshake before the loss, so retries do not stall the test
        breaks(healed, 4, "loss:30")
        result = c.ping(healed.plan.outside_ipv4, count=60, interval=0.01, timeout=1)
    # A round trip through the NAT crosses the relay's public link four times (in from the agent, out to the
    # target, in from it, out to the agent), each a 30% chance of loss: 0.7**4, about 24% survive, 14 of 60.
    # Loss one way only would let 0.7**2, 49%, through.
    assert 0 < result.received < 27, result


def test_delay_fault_holds_packets_on_the_public_link(healed: Lab) -> None:
    with client(healed, 4) as c:
        base = c.ping("10.64.0.1", count=3)
        breaks(healed, 4, "delay:120")
        delayed = c.ping("10.64.0.1", count=3)
        assert base.ok and delayed.ok
        assert min(delayed.rtts_ms) >= 120, delayed
        assert max(base.rtts_ms) < 120, base
        fleet.set_faults(healed.lab_dir, healed.relay(4).name, [])
        assert max(c.ping("10.64.0.1", count=3).rtts_ms) < 120, "heal removes the delay"


def test_down_fault_stops_wireguard_and_leaves_nothing(healed: Lab) -> None:
    relay = healed.relay(3)
    before = load_state(healed.lab_dir).relays[relay.name].wg_pid
    assert before is not None and is_running(before, "wireguard-go")
    breaks(healed, 3, "down")
    assert not is_running(before, "wireguard-go")
    assert not (fleet.WG_SOCKET_DIR / f"{relay.wg_ifname}.sock").exists()
    links = netns.run_in(relay.netns, ["ip", "-o", "link"]).stdout
    assert relay.wg_ifname not in links
    with client(healed, 3) as c:
        assert not c.ping("10.64.0.1", count=2, timeout=1).ok
    fleet.set_faults(healed.lab_dir, relay.name, [])
    with client(healed, 3) as c:
        assert c.ping(healed.plan.outside_ipv4).ok, "heal brings the relay back with its peers"


class Occupant:
    """A control socket under `ifname` that answers every connection by closing it: wireguard-go started for that
    name finds the socket in use and exits, and `wg show` fails at once instead of waiting for an answer."""

    def __init__(self, ifname: str) -> None:
        fleet.WG_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        self.path = fleet.WG_SOCKET_DIR / f"{ifname}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(self.path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.sock.accept()[0].close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(timeout=5)
        self.path.unlink(missing_ok=True)


def test_client_that_fails_to_start_is_retried_and_says_why(healed: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(osclient, "_counter", itertools.count(900))
    prefix = healed.plan.prefix
    held = [Occupant(f"{prefix}c900")]
    try:
        with client(healed, 1) as c:  # the first try's wireguard-go exits; the second, under another name, works
            assert c.ifname == f"{prefix}c901"
            assert c.ping("10.64.0.1", count=1).ok
        held += [Occupant(f"{prefix}c902"), Occupant(f"{prefix}c903")]
        expected = rf"{prefix}c903 exited: .*socket in use \(an earlier try: .*{prefix}c902 exited: .*socket in use"
        with pytest.raises(LabError, match=expected), client(healed, 1):
            pass
    finally:
        for occupant in held:
            occupant.close()
