"""The egress reflector: its wire format as pure functions, then the real `probe reflector` on loopback."""

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from probe.reflector import (
    MESSAGE_SIZE,
    Observed,
    RateLimiter,
    Reflector,
    ReflectorError,
    build_request,
    build_response,
    parse_request,
    parse_response,
)

REPO = Path(__file__).resolve().parents[2]
NONCE = bytes(range(16))
nonces = st.binary(min_size=16, max_size=16)
ports = st.integers(min_value=0, max_value=65535)
addresses = st.one_of(
    st.integers(min_value=0, max_value=2**32 - 1).map(IPv4Address),
    st.integers(min_value=0, max_value=2**128 - 1).map(IPv6Address),
)

# --- wire format ------------------------------------------------------------------------------------------------


@given(nonces)
def test_a_request_carries_its_nonce(nonce: bytes) -> None:
    request = build_request(nonce)
    assert len(request) == MESSAGE_SIZE
    assert parse_request(request) == nonce


@pytest.mark.parametrize("size", [0, 15, 17])
def test_a_request_needs_a_16_byte_nonce(size: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        build_request(bytes(size))


def _patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


REQUEST = build_request(NONCE)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(REQUEST[:47], id="47 bytes"),
        pytest.param(REQUEST + b"\0", id="49 bytes"),
        pytest.param(_patched(REQUEST, 0, b"WGPX"), id="magic"),
        pytest.param(_patched(REQUEST, 4, b"\x02"), id="version"),
        pytest.param(_patched(REQUEST, 5, b"\x03"), id="type"),
        pytest.param(_patched(REQUEST, 6, b"\x00\x01"), id="reserved"),
        pytest.param(_patched(REQUEST, 24, b"\x01"), id="padding first byte"),
        pytest.param(_patched(REQUEST, 47, b"\x01"), id="padding last byte"),
        # A response fed back must get no answer, or two reflectors could ping-pong forever.
        pytest.param(build_response(NONCE, IPv4Address("192.0.2.1"), 1), id="a response"),
    ],
)
def test_anything_but_a_well_formed_request_gets_no_answer(data: bytes) -> None:
    assert parse_request(data) is None


@pytest.mark.parametrize(
    ("address", "port"),
    [(IPv4Address("198.18.101.3"), 51820), (IPv6Address("fd77:7770::2:3"), 7777), (IPv4Address("0.0.0.0"), 0)],
)
def test_a_response_says_the_observed_address_and_port(address: IPv4Address | IPv6Address, port: int) -> None:
    response = build_response(NONCE, address, port)
    assert len(response) == MESSAGE_SIZE
    assert parse_response(response, NONCE) == Observed(address, port)


@given(nonces, addresses, ports)
def test_responses_round_trip(nonce: bytes, address: IPv4Address | IPv6Address, port: int) -> None:
    observed = parse_response(build_response(nonce, address, port), nonce)
    assert observed == Observed(address, port)
    assert type(observed.address) is type(address)  # ::a.b.c.d stays IPv6, 0.0.0.0 stays IPv4


RESPONSE_V4 = build_response(NONCE, IPv4Address("198.18.0.11"), 40000)
RESPONSE_V6 = build_response(NONCE, IPv6Address("fd77:7770::a:1"), 40000)


@pytest.mark.parametrize(
    ("data", "nonce", "message"),
    [
        (RESPONSE_V4, bytes(16), "nonce mismatch"),
        (RESPONSE_V6, NONCE[::-1], "nonce mismatch"),
        (b"", NONCE, "response of 0 bytes, expected 48"),
        (RESPONSE_V4[:47], NONCE, "response of 47 bytes, expected 48"),
        (RESPONSE_V4 + b"\0", NONCE, "response of 49 bytes, expected 48"),
        (_patched(RESPONSE_V4, 6, b"\x05"), NONCE, "bad address family 5"),
        (_patched(RESPONSE_V4, 6, b"\x00"), NONCE, "bad address family 0"),
        (_patched(RESPONSE_V6, 6, b"\x04"), NONCE, "bad address family 4"),  # IPv4 with bytes past the 4th
        (_patched(RESPONSE_V4, 0, b"WGPX"), NONCE, "not a reflector response"),
        (_patched(RESPONSE_V4, 4, b"\x02"), NONCE, "not a reflector response"),
        (build_request(NONCE), NONCE, "not a reflector response"),
    ],
)
def test_bad_responses_are_reflector_errors(data: bytes, nonce: bytes, message: str) -> None:
    with pytest.raises(ReflectorError, match=re.escape(message)):
        parse_response(data, nonce)


@given(st.one_of(st.binary(max_size=100), st.binary(min_size=44, max_size=44).map(lambda tail: b"WGPR" + tail)))
def test_random_bytes_never_crash_the_request_parser(data: bytes) -> None:
    nonce = parse_request(data)
    assert nonce is None or build_request(nonce) == data


@given(
    st.one_of(
        st.binary(max_size=100),
        st.binary(min_size=42, max_size=42).map(lambda tail: b"WGPR\x01\x02" + tail),
        st.tuples(st.integers(0, 255), st.binary(min_size=41, max_size=41)).map(
            lambda t: b"WGPR\x01\x02" + bytes([t[0]]) + t[1]
        ),
    ),
    nonces,
)
def test_random_bytes_only_ever_raise_reflector_error(data: bytes, nonce: bytes) -> None:
    try:
        observed = parse_response(data, nonce)
    except ReflectorError:
        return
    assert 0 <= observed.port <= 65535


# --- rate limiting, with the clock driven by hand ------------------------------------------------------------------


def test_a_source_gets_its_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=4.0, burst=3)  # times below are exact binary fractions: no rounding in the test
    assert [limiter.allow("192.0.2.1", 100.0) for _ in range(5)] == [True, True, True, False, False]
    assert not limiter.allow("192.0.2.1", 100.125)  # half a token
    assert limiter.allow("192.0.2.1", 100.25)  # one token every 0.25 s
    assert not limiter.allow("192.0.2.1", 100.25)
    assert [limiter.allow("192.0.2.1", 200.0) for _ in range(4)] == [True, True, True, False]  # refilled to the burst


def test_sources_are_limited_separately() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.allow("192.0.2.1", 0.0)
    assert not limiter.allow("192.0.2.1", 0.0)
    assert limiter.allow("192.0.2.2", 0.0)
    assert limiter.allow("2001:db8::1", 0.0)
    assert len(limiter) == 3


def test_a_clock_going_backwards_gives_no_tokens() -> None:
    limiter = RateLimiter(rate=1.0, burst=1)
    assert limiter.allow("192.0.2.1", 100.0)
    assert not limiter.allow("192.0.2.1", 50.0)
    assert not limiter.allow("192.0.2.1", 100.5)


def test_the_table_of_sources_is_bounded_and_idle_sources_expire() -> None:
    limiter = RateLimiter(rate=1.0, burst=2, max_sources=3)
    for n in range(3):
        assert limiter.allow(f"192.0.2.{n}", 0.0)
    # Full of sources still within their burst window: a new one is refused, not let in by forgetting another
    # (forgetting would hand a spoofed victim a fresh burst).
    assert not limiter.allow("192.0.2.9", 0.5)
    assert len(limiter) == 3
    # Two seconds on, every bucket is full again: keeping them says nothing, so they make room and expire.
    assert limiter.allow("192.0.2.9", 2.0)
    assert len(limiter) <= 3
    for n in range(10, 20):
        limiter.allow(f"192.0.2.{n}", 100.0 + n * 10)
    assert len(limiter) <= 3


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("nan"), 1), (float("inf"), 1), (1.0, 0)])
def test_a_limiter_needs_a_positive_rate_and_burst(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RateLimiter(rate=rate, burst=burst)


def test_the_reflector_core_counts_what_it_does() -> None:
    core = Reflector(RateLimiter(rate=1.0, burst=2))
    source = IPv4Address("192.0.2.7")
    answers = [core.handle(build_request(NONCE), source, 4000, 10.0) for _ in range(3)]
    assert answers[0] is not None and parse_response(answers[0], NONCE) == Observed(source, 4000)
    assert answers[1] is not None and answers[2] is None
    assert core.handle(b"junk", source, 4000, 10.0) is None
    assert core.handle(build_request(NONCE), IPv6Address("2001:db8::7"), 4000, 10.0) is not None
    assert (core.answered, core.rate_limited, core.malformed) == (3, 1, 1)
    assert core.counters() == "reflector: answered=3 rate_limited=1 malformed=1 sources=2"


# --- the real reflector on loopback -------------------------------------------------------------------------------


def _free_port() -> int:
    """A UDP port free on both 127.0.0.1 and ::1."""
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as v4:
            v4.bind(("127.0.0.1", 0))
            port: int = v4.getsockname()[1]
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as v6:
                try:
                    v6.bind(("::1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no UDP port free on both loopback addresses")


def _start(*listen: str, extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "probe", "reflector", *extra]
    for item in listen:
        args += ["--listen", item]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _first_line(proc: subprocess.Popen[bytes]) -> str:
    """The reflector's start line, read with a hang guard."""
    assert proc.stderr is not None
    ready, _, _ = select.select([proc.stderr], [], [], 10)
    assert ready, "the reflector logged nothing within 10 s"
    return proc.stderr.readline().decode()


def _listening_port(proc: subprocess.Popen[bytes]) -> int:
    line = _first_line(proc)
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert found, line
    return int(found.group(1))


def _ask(client: socket.socket, server: tuple[str, int], payload: bytes, timeout: float) -> bytes | None:
    client.settimeout(timeout)
    client.sendto(payload, server)
    try:
        data, peer = client.recvfrom(1024)
    except (TimeoutError, ConnectionRefusedError):
        return None
    assert peer[:2] == server
    return data


def _wait_until_answering(proc: subprocess.Popen[bytes], servers: list[tuple[str, int]]) -> None:
    deadline = time.monotonic() + 10
    for server in servers:
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            while _ask(client, server, build_request(NONCE), 0.05) is None:
                assert proc.poll() is None, proc.communicate()[1].decode()
                assert time.monotonic() < deadline, "reflector did not answer within 10 s"


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=5)
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def reflector_port() -> Iterator[int]:
    port = _free_port()
    proc = _start(f"127.0.0.1:{port}", f"[::1]:{port}")
    try:
        _wait_until_answering(proc, [("127.0.0.1", port), ("::1", port)])
        yield port
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.communicate(timeout=5)


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_the_reflector_answers_with_the_clients_address_and_port(
    reflector_port: int, family: socket.AddressFamily, host: str
) -> None:
    server = (host, reflector_port)
    with socket.socket(family, socket.SOCK_DGRAM) as client:
        client.bind((host, 0))
        client_port = client.getsockname()[1]
        nonce = os.urandom(16)
        request = build_request(nonce)
        answer = _ask(client, server, request, 2.0)
        assert answer is not None, "no answer to a well-formed request"
        assert parse_response(answer, nonce) == Observed(ip_address(host), client_port)

        # Malformed, oversized and undersized requests are dropped without a word.
        for bad in (_patched(request, 0, b"XXXX"), request + b"\0", request[:47]):
            client.sendto(bad, server)
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recvfrom(1024)

        # ...and the reflector still serves afterwards.
        assert _ask(client, server, build_request(nonce), 2.0) is not None


def test_sigterm_stops_the_reflector_cleanly_and_logs_its_counters() -> None:
    proc = _start("127.0.0.1:0")
    try:
        port = _listening_port(proc)
        _wait_until_answering(proc, [("127.0.0.1", port)])
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert re.fullmatch(r"reflector: answered=[1-9]\d* rate_limited=0 malformed=0 sources=1", err.strip()), err


def test_the_reflector_logs_where_it_listens_and_its_limits() -> None:
    proc = _start("127.0.0.1:0", "[::1]:0", extra=("--rate", "5", "--burst", "7"))
    try:
        line = _first_line(proc)
    finally:
        _stop(proc)
    assert re.fullmatch(
        r"reflector: listening on 127\.0\.0\.1:\d+, \[::1\]:\d+; "
        r"answers per source address: 5/s, burst 7\n",
        line,
    ), line


def test_answers_are_rate_limited_per_source_and_counted_on_sigusr1() -> None:
    # One token per 1000 s: the burst is all a source gets during the test, whatever the machine's speed.
    proc = _start("127.0.0.1:0", extra=("--rate", "0.001", "--burst", "3"))
    server = ("127.0.0.1", 0)
    try:
        server = ("127.0.0.1", _listening_port(proc))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind(("127.0.0.1", 0))
            answered = [_ask(client, server, build_request(NONCE), 2.0) for _ in range(3)]
            assert all(answer is not None for answer in answered)
            for _ in range(5):
                client.sendto(build_request(NONCE), server)
            client.sendto(b"junk", server)
            # Another source is answered: the reflector reads in order, so everything above has been handled.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                other.bind(("127.0.0.2", 0))
                assert _ask(other, server, build_request(NONCE), 2.0) is not None
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recvfrom(1024)  # nothing came back for the five over the burst, nor for the junk
        proc.send_signal(signal.SIGUSR1)
        assert _first_line(proc) == "reflector: answered=4 rate_limited=5 malformed=1 sources=2\n"
        assert proc.poll() is None  # SIGUSR1 reports and carries on
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as third:
            third.bind(("127.0.0.3", 0))
            assert _ask(third, server, build_request(NONCE), 2.0) is not None
    finally:
        code, err = _stop(proc)
    assert code == 0
    assert err.strip() == "reflector: answered=5 rate_limited=5 malformed=1 sources=3"


def test_listen_is_required() -> None:
    proc = _start()
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert "error: --listen is required" in err.decode()


@pytest.mark.parametrize(
    ("option", "value"), [("--rate", "0"), ("--rate", "-1"), ("--rate", "nan"), ("--rate", "inf"), ("--burst", "0")]
)
def test_rate_and_burst_must_be_positive(option: str, value: str) -> None:
    proc = _start("127.0.0.1:0", extra=(option, value))
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert f"error: {option} must be" in err.decode()


def test_a_port_already_bound_is_refused_not_shared() -> None:
    # The holder allows address reuse, as a second reflector would have: sharing must still be refused.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        proc = _start(f"127.0.0.1:{port}")
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2, err
    assert f"error: reflector cannot listen on 127.0.0.1:{port}: Address already in use" in err.decode()


def test_an_address_it_cannot_listen_on_is_a_usage_error() -> None:
    proc = _start("192.0.2.1:7777")  # TEST-NET-1: not an address of this host
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert "error: reflector cannot listen on 192.0.2.1:7777" in err.decode()


def test_a_bad_listen_address_is_a_usage_error() -> None:
    proc = _start("127.0.0.1")
    _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert "error: --listen '127.0.0.1': no port" in err.decode()
