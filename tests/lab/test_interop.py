"""wgprobe's own WireGuard client against real wireguard-go relays in the lab: handshake, tunnel and NAT traffic on
the main and an extended-range port, IPv4 and IPv6, and every way a handshake can fail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from ipaddress import IPv4Address, IPv6Address

import pytest

from probe.lab.topology import TUNNEL_V4_GATEWAY, TUNNEL_V6_GATEWAY
from probe.packets import build_icmp_echo, verify_echo_reply
from probe.sockets import udp_socket
from probe.tunnel import HandshakeTimeout, PortUnreachable, Tunnel
from probe.wireguard import CookieState, Identity, InitiatorHandshake, PrivateKey, PublicKey

from .conftest import Lab

pytestmark = pytest.mark.lab


def identity(lab: Lab, number: int = 1) -> Identity:
    path = lab.lab_dir / lab.plan.agents[0].identities[number - 1].key_file
    return Identity(PrivateKey.from_base64(path.read_text().strip()))


def relay_key(lab: Lab, index: int) -> PublicKey:
    return PublicKey.from_base64(lab.public_keys[lab.relay(index).name])


async def open_tunnel(lab: Lab, index: int, port: int = 51820, family: int = 4, **kw: object) -> Tunnel:
    relay = lab.relay(index)
    entry = relay.ipv4 if family == 4 else relay.ipv6
    ident = kw.pop("ident", None) or identity(lab)
    key = kw.pop("key", None) or relay_key(lab, index)
    return await Tunnel.open(ident, key, entry, port, netns=lab.plan.agents[0].netns, **kw)  # type: ignore[arg-type]


async def echo(tunnel: Tunnel, src: str, dst: IPv4Address | IPv6Address, ident: int) -> bool:
    payload = b"wgprobe-interop!"
    tunnel.send(build_icmp_echo(src, dst, ident, 1, payload))
    deadline = time.monotonic() + 2
    while (left := deadline - time.monotonic()) > 0:
        reply = await tunnel.recv(left)
        if reply is None:
            return False
        verdict = verify_echo_reply(
            reply, expect_src=dst, expect_dst=src, identifier=ident, sequence=1, payload=payload
        )
        if verdict.ok:
            return True
    return False


@pytest.mark.parametrize(("port", "family"), [(51820, 4), (4000, 4), (51820, 6), (60000, 6)])
def test_handshake_and_traffic_through_nat(lab: Lab, port: int, family: int) -> None:
    me = lab.plan.agents[0].identities[0]

    async def run() -> None:
        tunnel = await open_tunnel(lab, 1, port, family)
        try:
            assert tunnel.initiations == 1 and tunnel.cookies == 0
            assert await echo(tunnel, str(me.ipv4), TUNNEL_V4_GATEWAY, 1001)
            assert await echo(tunnel, str(me.ipv4), lab.plan.outside_ipv4, 1002)
            assert await echo(tunnel, str(me.ipv6), TUNNEL_V6_GATEWAY, 1003)
            assert await echo(tunnel, str(me.ipv6), lab.plan.outside_ipv6, 1004)
            assert tunnel.rejected == 0
        finally:
            tunnel.close()

    asyncio.run(run())


def test_wrong_server_key_times_out(lab: Lab) -> None:
    wrong = PrivateKey.generate().public_key()
    with pytest.raises(HandshakeTimeout, match="to 2 initiation") as raised:
        asyncio.run(open_tunnel(lab, 1, key=wrong, timeout=0.3, attempts=2))
    attempts = raised.value.attempts
    assert attempts is not None and (attempts.initiations, attempts.responses) == (2, 0)
    assert attempts.rejected == 0  # the relay stays silent to a wrong mac1: nothing came back at all


def test_unregistered_client_key_times_out(lab: Lab) -> None:
    stranger = Identity(PrivateKey.generate())
    with pytest.raises(HandshakeTimeout):
        asyncio.run(open_tunnel(lab, 1, ident=stranger, timeout=0.3, attempts=2))


def test_closed_port_is_port_unreachable(lab: Lab) -> None:
    # 51821 is in no entry range and nothing listens there: the relay's kernel answers ICMP port unreachable.
    with pytest.raises(PortUnreachable):
        asyncio.run(open_tunnel(lab, 1, port=51821, timeout=1.0))


def test_cookie_path_under_load(lab: Lab) -> None:
    """Flood relay 2 with initiations carrying a valid mac1 (a bounded burst inside the lab) until wireguard-go is
    under load and answers with cookie replies; then a handshake must complete with mac2 set from the cookie."""
    relay = lab.relay(2)
    key = relay_key(lab, 2)
    flood_ident = identity(lab, 2)
    flood = InitiatorHandshake(flood_ident, key).create_initiation(time.time())
    sock = udp_socket(socket.AF_INET, lab.plan.agents[0].netns)
    sock.setblocking(True)
    sock.connect((str(relay.ipv4), 51820))
    me = lab.plan.agents[0].identities[0]

    async def run() -> tuple[int, bool]:
        cookie_state = CookieState(key)
        for _ in range(4):  # a few rounds: the relay must still be under load when our initiation arrives
            for _ in range(3000):
                with contextlib.suppress(BlockingIOError):
                    sock.send(flood)
            tunnel = await open_tunnel(lab, 2, cookie_state=cookie_state, timeout=0.5, attempts=3)
            try:
                if tunnel.cookies:
                    return tunnel.cookies, await echo(tunnel, str(me.ipv4), TUNNEL_V4_GATEWAY, 1100)
            finally:
                tunnel.close()
        return 0, False

    try:
        cookies, works = asyncio.run(run())
    finally:
        sock.close()
    assert cookies >= 1, "wireguard-go never answered with a cookie reply"
    assert works, "the session established with mac2 must carry traffic"
