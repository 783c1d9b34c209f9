"""The parts of probe/mqtt.py that need no broker: backoff, reason words, the log adapter, exception mapping."""

from __future__ import annotations

import logging

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from probe.errors import UnavailableError, WgProbeError
from probe.mqtt import REASONS, Backoff, BrokerRefused, BrokerUnavailable, _mapped, event_log, reason_word


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
