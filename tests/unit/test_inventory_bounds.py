"""Inventory inputs are bounded: one deadline for a whole HTTP fetch, "could not judge" for network failures, files of
the right kind and size, sane nesting, addresses as strings, and no URL credentials in any message."""

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probe.errors import ConfigError, UnavailableError
from probe.inventory import InventoryError, InventorySource, InventoryUnavailable, load_inventory, parse_inventory
from probe.inventory.model import MAX_BODY

DATA = Path(__file__).parent.parent / "data" / "inventory"
SAMPLE = (DATA / "mullvad-app-relays-sample.json").read_bytes()
KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would intercept loopback requests.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


# --- one deadline for the whole fetch ---------------------------------------------------------------------------


class Dripper:
    """A raw TCP server on loopback that answers every connection with `head`, then one byte of `drip` every 0.1 s,
    for at most `drip_for` seconds: the slow-loris server that urllib's per-read timeout never catches."""

    def __init__(self, head: bytes, drip: bytes, scheme: str = "http", drip_for: float = 8.0) -> None:
        self.head, self.drip, self.drip_for = head, drip, drip_for
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"{scheme}://127.0.0.1:{self.listener.getsockname()[1]}/relays.json"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._drip(conn)

    def _drip(self, conn: socket.socket) -> None:
        try:
            conn.recv(65536)
            conn.sendall(self.head)
            end = time.monotonic() + self.drip_for
            if not self.drip:  # silent: hold the connection open and say nothing
                self.stop.wait(self.drip_for)
            for byte in self.drip * 1000:
                if self.stop.wait(0.1) or time.monotonic() > end:
                    return
                conn.sendall(bytes([byte]))
        except OSError:  # the client gave up: that is the point
            return


@pytest.fixture
def dripper(request: pytest.FixtureRequest) -> Iterator[Dripper]:
    server = Dripper(*request.param)
    server.thread.start()
    try:
        yield server
    finally:
        server.stop.set()
        server.thread.join(timeout=5)
        server.listener.close()


@pytest.mark.parametrize(
    "dripper",
    [
        pytest.param((b"", b""), id="silent"),
        pytest.param((b"", b"", "https"), id="silent-tls"),  # the TLS handshake never completes
        pytest.param((b"\x16\x03\x03\x40\x00", b"\x02" * 100, "https"), id="dripping-tls"),
        pytest.param((b"HTTP/1.1 200 OK\r\n", b"X-Slow: aaaaaaaa"), id="headers"),
        pytest.param((b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"[" + b" " * 99), id="body"),
    ],
    indirect=True,
)
def test_a_dripping_server_cannot_hold_the_fetch_past_its_deadline(dripper: Dripper) -> None:
    started = time.monotonic()
    with pytest.raises(InventoryUnavailable) as caught:
        InventorySource(dripper.url, timeout=1.0).load()
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, f"the fetch took {elapsed:.1f} s with a 1 s deadline"  # hang guard, not a benchmark
    assert str(caught.value) == f"{dripper.url}: cannot fetch inventory: no complete answer within 1 s"


# --- could not judge vs. a bad inventory --------------------------------------------------------------------------


@dataclass
class Served:
    status: int = 200
    body: bytes = SAMPLE
    reason: str | None = None
    location: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        self.served.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        if self.path == "/moved" and self.served.location:
            self.send_response(302)
            self.send_header("Location", self.served.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(self.served.status, self.served.reason)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.served.body)))
        self.end_headers()
        self.wfile.write(self.served.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served() -> Iterator[tuple[Served, int]]:
    state = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"served": state}))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("status", "unavailable"),
    [(500, True), (502, True), (503, True), (408, True), (429, True), (404, False), (403, False), (410, False)],
)
def test_server_trouble_is_unavailable_and_a_wrong_url_is_a_config_error(
    served: tuple[Served, int], status: int, unavailable: bool
) -> None:
    state, port = served
    state.status, state.body = status, b"{}"
    with pytest.raises(InventoryError if not unavailable else InventoryUnavailable) as caught:
        InventorySource(f"http://127.0.0.1:{port}/relays").load()
    assert isinstance(caught.value, UnavailableError) is unavailable
    assert isinstance(caught.value, ConfigError) is not unavailable
    assert f": HTTP {status} " in str(caught.value)


def test_a_reason_phrase_is_shown_without_control_characters(served: tuple[Served, int]) -> None:
    state, port = served
    state.status, state.reason = 503, "Busy \x1b]0;owned\x07 now"
    with pytest.raises(InventoryUnavailable) as caught:
        InventorySource(f"http://127.0.0.1:{port}/relays").load()
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)
    assert "HTTP 503 Busy \\x1b]0;owned\\x07 now" in str(caught.value)


def test_a_refused_connection_is_unavailable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/relays"  # bound, not listening: refused
        with pytest.raises(InventoryUnavailable, match=r"cannot fetch inventory: .*[Rr]efused"):
            InventorySource(url, timeout=2.0).load()


def test_a_tls_failure_is_unavailable(served: tuple[Served, int]) -> None:
    _state, port = served  # a plain-HTTP server answers the TLS hello with garbage
    with pytest.raises(InventoryUnavailable, match=r"https://127.0.0.1:\d+/relays: cannot fetch inventory: .*SSL"):
        InventorySource(f"https://127.0.0.1:{port}/relays", timeout=2.0).load()


def test_a_name_that_does_not_resolve_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    # No resolver is asked: this test's network stays on loopback.
    def no_such_name(*_args: object, **_kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(InventoryUnavailable, match="Name or service not known"):
        InventorySource("https://inventory.example/relays").load()


# --- credentials in URLs ------------------------------------------------------------------------------------------


def test_url_credentials_are_sent_as_basic_auth_and_never_shown(served: tuple[Served, int]) -> None:
    state, port = served
    url = f"http://bob:hunter2@127.0.0.1:{port}/relays"
    inventory = InventorySource(url).load()
    assert inventory.source == f"http://***@127.0.0.1:{port}/relays"
    assert state.requests[0]["authorization"] == "Basic " + base64.b64encode(b"bob:hunter2").decode()
    assert "127.0.0.1" not in state.requests[0]["path"] and "bob" not in state.requests[0]["path"]
    for status in (404, 503):
        state.status = status
        with pytest.raises(InventoryError if status == 404 else InventoryUnavailable) as caught:
            InventorySource(url).load()
        assert "hunter2" not in str(caught.value) and "bob" not in str(caught.value)
        assert str(caught.value).startswith(f"http://***@127.0.0.1:{port}/relays: HTTP {status}")


def test_a_source_named_with_credentials_is_shown_without_them() -> None:
    fleet = f'[[relays]]\nname = "a"\npublic_key = "{KEY}"\nipv4 = "192.0.2.1"\n'
    assert (
        parse_inventory(fleet, source="https://bob:hunter2@x.example/f.toml").source == "https://***@x.example/f.toml"
    )
    with pytest.raises(InventoryError) as caught:
        parse_inventory("{}", source="https://bob:hunter2@x.example/f.json")
    assert "hunter2" not in str(caught.value)


def test_credentials_do_not_follow_a_redirect(served: tuple[Served, int]) -> None:
    state, port = served
    state.location = f"http://127.0.0.1:{port}/elsewhere"
    InventorySource(f"http://bob:hunter2@127.0.0.1:{port}/moved").load()
    assert [r["path"] for r in state.requests] == ["/moved", "/elsewhere"]
    assert "authorization" not in state.requests[1]


def test_credentials_never_show_in_errors_without_a_server() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://bob:p%40ss@127.0.0.1:{closed.getsockname()[1]}/relays"
        with pytest.raises(InventoryUnavailable) as caught:
            InventorySource(url, timeout=2.0).load()
    assert "bob" not in str(caught.value) and "p%40ss" not in str(caught.value)


# --- files --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("special", "reason"),
    [
        ("/dev/zero", "is a character device, not a regular file"),
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("directory", "is a directory, not a regular file"),
        ("sparse", "is larger than 32 MiB"),
    ],
)
def test_a_file_inventory_is_a_regular_file_within_the_size_cap(tmp_path: Path, special: str, reason: str) -> None:
    path = tmp_path / "relays.json"
    if special == "fifo":
        os.mkfifo(path)  # nobody writes to it: an open without O_NONBLOCK would wait forever
    elif special == "directory":
        path.mkdir()
    elif special == "sparse":
        with path.open("wb") as sparse:
            sparse.truncate(MAX_BODY + 1)  # takes no disk space, reads as zeros
    else:
        path.symlink_to(special)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value) == f"{path}: cannot read inventory: {reason}"


def test_a_file_at_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "relays.json"
    path.write_bytes(SAMPLE + b" " * (MAX_BODY - len(SAMPLE)))
    assert len(load_inventory(path).relays) == 10


# --- nesting and numbers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("deep.json", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep.toml", "a = " + "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("deep-tables.toml", "a = " + "{b = " * 100_000 + "1" + "}" * 100_000, "nested too deeply"),
        ("deep-keys.toml", "[" + ".".join(["a"] * 40) + "]\nb = 1\n", "nested more than 32 levels deep"),
        ("deep.json", '{"wireguard": {"relays": [{"location": ' + "[" * 300 + "]" * 300 + "}]}}", "nested more than"),
        ("huge-number.json", "[" + "1" * 5000 + "]", "not valid JSON: Exceeds the limit (4300 digits)"),
        ("huge-number.toml", "a = " + "1" * 5000, "not valid TOML: Exceeds the limit (4300 digits)"),
    ],
)
def test_deep_or_huge_data_is_an_inventory_error(tmp_path: Path, name: str, content: str, reason: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert reason in str(caught.value)
    with pytest.raises(InventoryError, match="x: "):
        parse_inventory(content, source="x", suffix=path.suffix)


# --- addresses written as numbers ---------------------------------------------------------------------------------


def test_an_address_written_as_a_number_is_refused_in_every_format() -> None:
    app = (
        '{"wireguard": {"relays": [{"hostname": "a", "ipv4_addr_in": "192.0.2.1", "public_key": "KEY"},'
        ' {"hostname": "b", "ipv4_addr_in": 3221225986, "public_key": "KEY"}]}}'.replace("KEY", KEY)
    )
    inventory = parse_inventory(app, source="x")
    assert inventory.names == ["a"]
    problem = inventory.problems[0]
    assert (problem.relay, problem.field) == ("b", "ipv4_addr_in")
    assert problem.message.startswith('an IP address is written as a string, e.g. "198.18.0.2", not as a number')

    fleet = f'[[relays]]\nname = "a"\npublic_key = "{KEY}"\nipv4 = "192.0.2.1"\negress_ipv6 = 12\n'
    with pytest.raises(InventoryError, match=r"egress_ipv6: an IP address is written as a string"):
        parse_inventory(fleet, source="x", suffix=".toml")

    gateway = (
        f'[defaults]\nipv4_gateway = 167772161\n[[relays]]\nname = "a"\npublic_key = "{KEY}"\nipv4 = "192.0.2.1"\n'
    )
    with pytest.raises(InventoryError, match=r"\[defaults\] ipv4_gateway: an IP address is written as a string"):
        parse_inventory(gateway, source="x", suffix=".toml")


# --- the same over TLS --------------------------------------------------------------------------------------------


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here: the test trusts it through SSL_CERT_FILE."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wgprobe test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def tls_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Served, int]]:
    import ssl

    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    state = Served()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"served": state}))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_an_inventory_over_tls_loads_and_a_tls_server_error_is_unavailable(tls_served: tuple[Served, int]) -> None:
    state, port = tls_served
    inventory = InventorySource(f"https://bob:hunter2@127.0.0.1:{port}/relays", timeout=5.0).load()
    assert len(inventory.relays) == 10
    assert inventory.source == f"https://***@127.0.0.1:{port}/relays"
    assert state.requests[0]["authorization"] == "Basic " + base64.b64encode(b"bob:hunter2").decode()
    state.status = 503
    with pytest.raises(InventoryUnavailable, match="HTTP 503"):
        InventorySource(f"https://127.0.0.1:{port}/relays", timeout=5.0).load()


def test_a_certificate_nobody_trusts_is_unavailable(
    tls_served: tuple[Served, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _state, port = tls_served
    (tmp_path / "other").mkdir()
    other, _ = _self_signed(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    with pytest.raises(InventoryUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        InventorySource(f"https://127.0.0.1:{port}/relays", timeout=5.0).load()
