"""A local static identity: one private key plus the per-key state every handshake with that key shares.

Why one object per key and not per handshake: a WireGuard responder remembers, per initiator key, the greatest
TAI64N timestamp it has accepted and drops any initiation whose timestamp is not strictly greater (§5.1,
replay protection of the first message). Every handshake this process makes with a key, to any relay, must
therefore take its timestamp from one monotonic source — the `Identity` — even when the wall clock steps
backwards or two handshakes start within the same clock tick. The identity also caches the static-static DH
result per peer, the one X25519 operation that is the same for every handshake with that peer.

The clock is passed in (`now`, seconds since the Unix epoch); nothing here reads it.
"""

import math
import struct
from typing import Final

from probe.wireguard.constants import TAI64_BASE, TAI64N_WHITENER_MASK, TIMESTAMP_SIZE
from probe.wireguard.crypto import dh
from probe.wireguard.errors import MessageError
from probe.wireguard.keys import PrivateKey, PublicKey

_TAI64N: Final = struct.Struct(">QI")
_NANOS_PER_SECOND: Final = 1_000_000_000


def encode_tai64n(seconds: int, nanoseconds: int) -> bytes:
    """TAI64N label (§5.4.2): big-endian u64 of 2**62 + 10 + Unix seconds, then big-endian u32 nanoseconds."""
    return _TAI64N.pack(TAI64_BASE + seconds, nanoseconds)


def decode_tai64n(data: bytes) -> tuple[int, int]:
    """(Unix seconds, nanoseconds) of a TAI64N label (the responder only compares labels; this is for people)."""
    if len(data) != TIMESTAMP_SIZE:
        raise MessageError(f"TAI64N timestamp must be {TIMESTAMP_SIZE} bytes, got {len(data)}")
    seconds, nanoseconds = _TAI64N.unpack(data)
    return seconds - TAI64_BASE, nanoseconds


def split_unix_time(now: float, *, whiten: bool = True) -> tuple[int, int]:
    """Seconds and nanoseconds of `now`; whitening clears the low 24 nanosecond bits like wireguard-go."""
    seconds = math.floor(now)
    nanoseconds = min(int((now - seconds) * _NANOS_PER_SECOND), _NANOS_PER_SECOND - 1)
    if whiten:
        nanoseconds &= ~TAI64N_WHITENER_MASK
    return seconds, nanoseconds


class Identity:
    """One local static key pair and its shared state: monotonic timestamps and cached static-static DH.

    Not thread-safe: share one instance per key within one event loop (the probe agent is single-threaded).
    """

    __slots__ = ("_last_timestamp", "_static_dh", "private_key", "public_key")

    def __init__(self, private_key: PrivateKey) -> None:
        self.private_key: Final = private_key
        self.public_key: Final = private_key.public_key()
        self._last_timestamp: tuple[int, int] | None = None
        # Keyed by the peer's raw public key. Unbounded on purpose: fleets have hundreds of relays.
        self._static_dh: dict[bytes, bytes] = {}

    def timestamp(self, now: float) -> bytes:
        """A TAI64N label for an initiation sent at `now`, greater than every earlier one from this key.

        If the (whitened) clock has not advanced past the last label (same tick, or the clock went
        backwards), the last label plus one nanosecond is used instead: the responder needs that, and it
        leaks nothing.
        """
        candidate = split_unix_time(now)
        last = self._last_timestamp
        if last is not None and candidate <= last:
            seconds, nanoseconds = last[0], last[1] + 1
            if nanoseconds >= _NANOS_PER_SECOND:
                seconds, nanoseconds = seconds + 1, 0
            candidate = (seconds, nanoseconds)
        self._last_timestamp = candidate
        return encode_tai64n(*candidate)

    def static_dh(self, peer: PublicKey) -> bytes:
        """DH(S_priv, S_peer_pub), computed once per peer (§5.4.2 uses it in every initiation)."""
        shared = self._static_dh.get(peer.raw)
        if shared is None:
            shared = dh(self.private_key.x25519, peer.raw)
            self._static_dh[peer.raw] = shared
        return shared

    def __repr__(self) -> str:
        return f"Identity(public={self.public_key.to_base64()!r})"
