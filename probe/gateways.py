"""The in-tunnel gateways of Mullvad's relays (`wireguard.ipv4_gateway` / `ipv6_gateway` of /app/v1/relays).

Every relay of a fleet answers on the same gateway address, which is why probes never use an OS interface (see
DESIGN.md). Defined here once, in a module that costs nothing to import: the inventories' defaults and the lab's
relays (probe/lab/topology.py, imported by every `probe` command) both use them.
"""

from ipaddress import IPv4Address, IPv6Address
from typing import Final

MULLVAD_IPV4_GATEWAY: Final = IPv4Address("10.64.0.1")
MULLVAD_IPV6_GATEWAY: Final = IPv6Address("fc00:bbbb:bbbb:bb01::1")
