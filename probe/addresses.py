"""IP addresses and ADDR:PORT endpoints as people write them: in agent.toml, in inventories, after `--listen`.

One set of rules for all of them, so the reflector's `--listen` and the config's `reflector` key accept the same text
and say the same thing when it is wrong. Names are refused: an endpoint is where the probe sends through every relay,
and resolving a name per probe is not its job.
"""

import re
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Annotated, Any, NamedTuple

from pydantic import BeforeValidator

_BRACKETED = re.compile(r"\[([^\]]*)\](?::(.*))?", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}")  # ASCII digits only: str.isdigit() would take "²" and int() then fail


def _what(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return f"a {type(value).__name__}"


def address_text(value: Any) -> Any:
    """`value` if it may become an IP address: a string or an address object, never a number.

    pydantic (and ipaddress) read the integer 12 as 0.0.0.12 and 3232235777 as 192.168.1.1: in a config file or a
    relay list an unquoted number is a typo, never a way of writing an address.
    """
    if isinstance(value, str | IPv4Address | IPv6Address):
        return value
    # ValueError, not TypeError: pydantic reports only the former as a validation error.
    raise ValueError(f'an IP address is written as a string, e.g. "198.18.0.2", not as {_what(value)}')


IPv4Field = Annotated[IPv4Address, BeforeValidator(address_text)]
IPv6Field = Annotated[IPv6Address, BeforeValidator(address_text)]


class Endpoint(NamedTuple):
    """An IP address and a UDP/TCP port, written "198.18.0.2:7777" or "[fd77::2]:7777"."""

    host: IPv4Address | IPv6Address
    port: int

    @classmethod
    def parse(cls, text: str, *, allow_port_zero: bool = False) -> "Endpoint":
        """Parse ADDR:PORT or [V6ADDR]:PORT; ValueError saying what is wrong. Port 0 ("any free port") only for a
        socket that binds, with `allow_port_zero`."""
        bracketed = _BRACKETED.fullmatch(text)
        if bracketed:
            host, port = bracketed.group(1), bracketed.group(2)
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                host, port = text, None
            elif ":" in host:
                raise ValueError("write an IPv6 endpoint as [V6ADDR]:PORT")
        if port is None:
            raise ValueError("no port: write HOST:PORT, e.g. 198.18.0.2:7777, or [V6ADDR]:PORT")
        low = 0 if allow_port_zero else 1
        if not _PORT.fullmatch(port) or not low <= int(port) <= 65535:
            raise ValueError(f"port {port!r} is not a number from {low} to 65535")
        try:
            address = ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
        if bracketed and address.version != 6:
            raise ValueError("brackets are for IPv6 addresses: write HOST:PORT")
        return cls(host=address, port=int(port))

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.host.version == 6 else f"{self.host}:{self.port}"
