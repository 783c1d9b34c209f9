"""Datagrams a hostile relay sends around the handshake: everything an honest client must drop without a crash.

The noise inside the tunnel (truncated, replayed, flipped, wrong-index transport messages) needs the session and
lives with the conversation (`Conversation.send_inner` under the `garbage` fault); what is here needs no session.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

from probe.wireguard import Initiation, PublicKey, compute_mac1


def forged_handshake_answers(initiation: bytes, client: PublicKey) -> Iterator[bytes]:
    """Answers to an initiation that look like responses and cookie replies but must all be refused."""
    index = struct.pack("<I", Initiation.unpack(initiation).sender_index)
    yield b"\x02\0\0\0" + os.urandom(88)  # 92 random bytes of type 2
    yield b"\x02\0\0\0" + os.urandom(4) + index + os.urandom(80)  # ... addressed to the pending handshake
    for ephemeral in (bytes(32), os.urandom(32)):  # low-order point, then random: right mac1, wrong crypto
        body = b"\x02\0\0\0" + os.urandom(4) + index + ephemeral + os.urandom(16)
        yield body + compute_mac1(body + bytes(32), client.raw) + bytes(16)
    yield b"\x03\0\0\0" + index + os.urandom(56)  # a cookie reply that does not decrypt


def handshake_noise(response: bytes) -> Iterator[bytes]:
    """What a `garbage` relay sends before its real response: noise must not derail the handshake."""
    yield os.urandom(37)
    yield response[:60]  # a truncated copy of the real response
    yield b"\x02\0\0\0" + os.urandom(88)  # a response-sized random message of type 2
