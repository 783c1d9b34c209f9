"""The parts of probe/mqtt.py that need no broker: backoff, reason words, the log adapter, exception mapping,
buffered reads."""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from aiomqtt.exceptions import MqttConnectError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from probe.errors import UnavailableError, WgProbeError
from probe.mqtt import (
    READ_SIZE,
    REASONS,
    Backoff,
    BrokerRefused,
    BrokerUnavailable,
    BufferedReads,
    _buffer_reads,
    _mapped,
    event_log,
    reason_word,
)


def test_backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() -> None:
    low = Backoff(initial=1.0, cap=8.0, rng=lambda: 0.0)
    high = Backoff(initial=1.0, cap=8.0, rng=lambda: 0.999999)
    assert [low.next() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [round(high.next(), 3) for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_backoff_starts_over_after_a_success() -> None:
    backoff = Backoff(initial=1.0, cap=60.0, rng=lambda: 0.0)
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() == 0.5


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff(initial=0.5, cap=30.0, rng=lambda: 1.0)
    for _ in range(5000):  # days of retries: no overflow, still capped
        delay = backoff.next()
    assert delay == 30.0


@pytest.mark.parametrize(
    ("code", "word"),
    [(0x87, "not_authorized"), (0x97, "quota_exceeded"), (0x86, "bad_username_or_password"), (0xEE, "refused")],
)
def test_reason_codes_become_a_closed_set_of_words(code: int, word: str) -> None:
    assert reason_word(code) == word
    refused = BrokerRefused(code, "publish")
    assert refused.reason == word
    assert f"0x{code:02X}" in str(refused)


def test_reason_words_are_label_safe() -> None:
    for word in REASONS.values():
        assert word.replace("_", "").isalpha() and word.islower()


def test_event_log_writes_one_line_per_event_to_a_logger(caplog: pytest.LogCaptureFixture) -> None:
    log = event_log(logging.getLogger("wgprobe.test"), "unused")
    with caplog.at_level(logging.INFO, logger="wgprobe.test"):
        log(logging.WARNING, "broker unavailable", broker="mqtt://127.0.0.1:1883", attempts=3)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "broker unavailable broker=mqtt://127.0.0.1:1883 attempts=3"
    assert record.fields == {"broker": "mqtt://127.0.0.1:1883", "attempts": 3}  # type: ignore[attr-defined]


def test_event_log_passes_a_callable_through() -> None:
    seen: list[tuple[int, str]] = []

    def mine(level: int, event: str, **fields: object) -> None:
        seen.append((level, event))

    event_log(mine, "unused")(logging.INFO, "connected")
    assert seen == [(logging.INFO, "connected")]


def test_foreign_exceptions_are_mapped_at_the_boundary() -> None:
    lost = _mapped(aiomqtt.MqttError("Disconnected during message iteration"), "mqtt://b:1883")
    assert isinstance(lost, BrokerUnavailable) and isinstance(lost, UnavailableError)
    assert "mqtt://b:1883" in str(lost)
    refused_os = _mapped(ConnectionRefusedError(111, "Connection refused"), "mqtt://b:1883")
    assert isinstance(refused_os, BrokerUnavailable)
    bad_login = _mapped(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x86)), "mqtt://b:1883")
    assert isinstance(bad_login, BrokerRefused) and bad_login.reason == "bad_username_or_password"
    busy = _mapped(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=0x89)), "mqtt://b:1883")
    assert isinstance(busy, BrokerUnavailable)  # "not now", not "not you": retried like a network error
    assert isinstance(bad_login, WgProbeError)


def test_a_bug_is_not_mistaken_for_the_network() -> None:
    with pytest.raises(ValueError, match="bad topic"):
        _mapped(ValueError("bad topic"), "mqtt://b:1883")


HANG_GUARD = 30.0  # seconds: only ever reached when something is broken


# -- buffered reads ------------------------------------------------------------------------------------------------


def _packets(*payloads: bytes) -> bytes:
    """MQTT-shaped packets: a type byte, a one-byte length, the rest."""
    return b"".join(bytes([0x30, len(p)]) + p for p in payloads)


class PahoReads:
    """Reads packets as paho does: recv(1) for the type, recv(1) for the length, recv(rest) until it has it all;
    a BlockingIOError part-way leaves what it has for the next call."""

    def __init__(self, sock: BufferedReads) -> None:
        self.sock = sock
        self.partial = b""

    def packet(self) -> bytes:
        while len(self.partial) < 2:
            self.partial += self.sock.recv(1)
        size = 2 + self.partial[1]
        while len(self.partial) < size:
            self.partial += self.sock.recv(size - len(self.partial))
        packet, self.partial = self.partial[2:], b""
        return packet

    def turn(self) -> list[bytes]:
        """What aiomqtt's reader callback does when the socket is readable: a packet, again while pending()."""
        got = []
        while True:
            # paho's loop_read: "try again later" (its _sock_recv turns ssl.SSLWantReadError into BlockingIOError)
            with contextlib.suppress(BlockingIOError, ssl.SSLWantReadError):
                got.append(self.packet())
            if not self.sock.pending():
                return got


def test_buffered_reads_answer_paho_s_small_reads_from_one_system_call() -> None:
    near, far = socket.socketpair()
    with near, far:
        near.setblocking(False)
        sock = BufferedReads(near)
        reader = PahoReads(sock)
        messages = [bytes([n]) * (n * 7 % 120 + 1) for n in range(40)]
        far.sendall(_packets(*messages))
        assert reader.turn() == messages  # in order, nothing lost or repeated
        assert sock.reads == 1  # one recv for 40 packets, where paho alone would make 120
        assert sock.pending() == 0
        with pytest.raises(BlockingIOError):  # nothing buffered, nothing in the kernel: as the socket says
            sock.recv(1)
        far.sendall(_packets(b"late"))
        assert reader.turn() == [b"late"]


def test_buffered_reads_hand_out_no_more_than_asked_and_end_like_the_socket() -> None:
    near, far = socket.socketpair()
    with near:
        sock = BufferedReads(near)
        with far:
            far.sendall(b"abcdef")
        assert sock.recv(2) == b"ab"
        assert sock.pending() == 4
        assert sock.recv(100) == b"cdef"  # what is buffered, not more: the caller asks again for the rest
        assert sock.pending() == 0
        assert sock.recv(1) == b""  # the end of the stream, once the buffer is empty
        assert sock.fileno() == near.fileno()  # everything else is the socket's


def test_one_read_from_the_socket_per_wait_for_it() -> None:
    """A turn of the reader gets one buffer's worth, then goes back to waiting: during a burst it does not refill for
    as long as the broker sends, which would starve everything else on the event loop."""
    near, far = socket.socketpair()
    with near, far:
        near.setblocking(False)
        sock = BufferedReads(near)
        reader = PahoReads(sock)
        body = b"x" * 120
        data = _packets(*[body] * 2000)  # ~240 KB: more than one read's worth
        sender = threading.Thread(target=far.sendall, args=(data,))
        sender.start()
        got: list[bytes] = []
        turns = 0
        while len(got) < 2000:
            select.select([near], [], [], HANG_GUARD)
            turns += 1
            got += reader.turn()
            assert sock.reads == turns  # one read per turn
        sender.join()
        assert got == [body] * 2000  # packets cut between two reads are whole
        assert turns >= len(data) // READ_SIZE


def _tls_pair(tmp_path: Path) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """Two ends of a real TLS connection over a socketpair (a self-signed certificate for broker.test)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("broker.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cafile=str(cert_file))
    near, far = socket.socketpair()
    server: list[ssl.SSLSocket] = []
    handshake = threading.Thread(target=lambda: server.append(server_context.wrap_socket(far, server_side=True)))
    handshake.start()
    client = client_context.wrap_socket(near, server_hostname="broker.test")
    handshake.join(HANG_GUARD)
    return client, server[0]


def test_buffered_reads_over_tls_neither_stall_nor_spin(tmp_path: Path) -> None:
    """Over a real TLS connection (records of up to 16 KiB, each read from the socket decrypting one), a burst
    arrives whole and in order, the reader never waiting on a socket with everything already read."""
    client, server = _tls_pair(tmp_path)
    with client, server:
        client.setblocking(False)
        sock = BufferedReads(client)
        reader = PahoReads(sock)
        bodies = [bytes([n % 251]) * (n % 127 + 1) for n in range(3000)]
        sender = threading.Thread(target=server.sendall, args=(_packets(*bodies),))
        sender.start()
        got: list[bytes] = []
        while len(got) < len(bodies):
            readable, _, _ = select.select([client], [], [], HANG_GUARD)
            assert readable or sock.pending(), f"stalled after {len(got)} packets"
            got += reader.turn()
        sender.join()
        assert got == bodies


def test_pending_includes_what_the_tls_layer_holds() -> None:
    class Tls:
        def __init__(self) -> None:
            self.held = b"0123456789"

        def recv(self, size: int) -> bytes:
            # Like ssl.SSLSocket: at most one record at a time, the rest of it counted by pending().
            data, self.held = self.held[:4], self.held[4:]
            return data

        def pending(self) -> int:
            return len(self.held)

    sock = BufferedReads(Tls())
    assert sock.recv(1) == b"0"
    assert sock.pending() == 3 + 6  # 3 here, 6 below
    assert b"".join(sock.recv(1) for _ in range(9)) == b"123456789"
    assert sock.pending() == 0


def test_paho_clients_open_buffered_sockets() -> None:
    """The one private hook this relies on (`_create_socket`): a paho release that renames it fails here."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    _buffer_reads(client)
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client._host, client._port = listener.getsockname()
        opened = client._create_socket()
        try:
            assert isinstance(opened, BufferedReads)
        finally:
            opened.close()
