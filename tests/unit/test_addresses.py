"""ADDR:PORT endpoints and IP addresses: one parser and one rule for agent.toml, inventories and `--listen`."""

import re
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe import reflector
from probe.addresses import Endpoint
from probe.config import Endpoint as ConfigEndpoint
from probe.errors import ConfigError

GOOD = [
    ("198.18.0.2:7777", Endpoint(IPv4Address("198.18.0.2"), 7777)),
    ("[fd77::2]:7777", Endpoint(IPv6Address("fd77::2"), 7777)),
    ("0.0.0.0:1", Endpoint(IPv4Address("0.0.0.0"), 1)),
    ("[::1]:65535", Endpoint(IPv6Address("::1"), 65535)),
]

# text, the error both the config key and --listen give
BAD = [
    ("198.18.0.2", "no port: write HOST:PORT, e.g. 198.18.0.2:7777, or [V6ADDR]:PORT"),
    ("[fd77::2]", "no port"),
    ("host", "no port"),
    ("198.18.0.2:", "port '' is not a number from 1 to 65535"),
    ("198.18.0.2:0", "port '0' is not a number from 1 to 65535"),
    ("198.18.0.2:65536", "port '65536' is not a number from 1 to 65535"),
    ("198.18.0.2:-1", "port '-1' is not a number"),
    ("198.18.0.2:http", "port 'http' is not a number"),
    ("1.2.3.4:²", "port '²' is not a number"),  # str.isdigit() accepts it, int() then raises
    ("1.2.3.4:80\n", "port '80\\n' is not a number"),
    ("reflector.example:7777", "'reflector.example' is not an IP address"),
    (":80", "'' is not an IP address"),
    ("1.2.3.4.5:80", "'1.2.3.4.5' is not an IP address"),
    ("[198.18.0.2]:7777", "brackets are for IPv6 addresses: write HOST:PORT"),
    ("fd77::2", "write an IPv6 endpoint as [V6ADDR]:PORT"),
    ("fd77::2:80", "write an IPv6 endpoint as [V6ADDR]:PORT"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD)
def test_endpoints_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected
    assert reflector.parse_listen(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(("text", "message"), BAD)
def test_the_config_and_listen_refuse_the_same_text_with_the_same_words(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Endpoint.parse(text)
    if text.endswith(":0"):
        return  # a bind may ask for any free port: see below
    with pytest.raises(ConfigError, match=re.escape(message.replace("from 1 to", "from 0 to"))) as caught:
        reflector.parse_listen(text)
    assert str(caught.value).startswith(f"--listen {text!r}: ")


def test_port_zero_is_only_for_binding() -> None:
    with pytest.raises(ValueError, match="from 1 to 65535"):
        Endpoint.parse("127.0.0.1:0")
    assert Endpoint.parse("127.0.0.1:0", allow_port_zero=True) == Endpoint(IPv4Address("127.0.0.1"), 0)
    assert reflector.parse_listen("[::1]:0") == Endpoint(IPv6Address("::1"), 0)  # the kernel picks a free port


def test_the_config_uses_the_same_endpoint() -> None:
    assert ConfigEndpoint is Endpoint


@given(host=st.ip_addresses(), port=st.integers(min_value=1, max_value=65535))
def test_endpoint_text_round_trips(host: IPv4Address | IPv6Address, port: int) -> None:
    endpoint = Endpoint(host, port)
    assert Endpoint.parse(str(endpoint)) == endpoint
    assert reflector.parse_listen(str(endpoint)) == endpoint


def test_endpoint_parses_both_families() -> None:
    assert Endpoint.parse("198.18.0.2:7777").host == ip_address("198.18.0.2")
    assert Endpoint.parse("[fd77::2]:7777").host == ip_address("fd77::2")
