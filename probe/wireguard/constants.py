"""Protocol constants of WireGuard.

Section numbers (§) refer to the WireGuard whitepaper (Donenfeld, "WireGuard: Next Generation Kernel Network
Tunnel"), which wireguard-go and the Linux kernel module implement.
"""

from typing import Final

# §5.4: the Noise protocol name and the WireGuard identifier that seed the chaining key and hash.
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"
# §5.4.4: labels that derive the mac1 key and the cookie-encryption key from a static public key.
LABEL_MAC1: Final = b"mac1----"
LABEL_COOKIE: Final = b"cookie--"

# §5.4.2-§5.4.7: message types. On the wire the type is one byte followed by three zero bytes; reading the
# first four bytes as a little-endian u32 checks both at once, as wireguard-go does.
MESSAGE_INITIATION: Final = 1
MESSAGE_RESPONSE: Final = 2
MESSAGE_COOKIE_REPLY: Final = 3
MESSAGE_TRANSPORT: Final = 4

# Field sizes (§5.4).
KEY_SIZE: Final = 32
HASH_SIZE: Final = 32
TAG_SIZE: Final = 16  # Poly1305 authenticator appended by AEAD and XAEAD
MAC_SIZE: Final = 16  # mac1, mac2 and the cookie itself are keyed BLAKE2s-128
TIMESTAMP_SIZE: Final = 12  # TAI64N
COOKIE_NONCE_SIZE: Final = 24  # XChaCha20 nonce
PADDING_MULTIPLE: Final = 16  # §5.4.6: transport plaintext is zero-padded to a multiple of 16

# Whole-message sizes (§5.4.2, §5.4.3, §5.4.7, §5.4.6).
INITIATION_SIZE: Final = 148
RESPONSE_SIZE: Final = 92
COOKIE_REPLY_SIZE: Final = 64
TRANSPORT_HEADER_SIZE: Final = 16
TRANSPORT_MIN_SIZE: Final = TRANSPORT_HEADER_SIZE + TAG_SIZE  # an empty (keepalive) transport message

# §5.4.4: mac1 covers the message up to mac1; mac2 covers it up to mac2. Both sit at the message's end.
INITIATION_MAC1_OFFSET: Final = INITIATION_SIZE - 2 * MAC_SIZE  # 116
INITIATION_MAC2_OFFSET: Final = INITIATION_SIZE - MAC_SIZE  # 132
RESPONSE_MAC1_OFFSET: Final = RESPONSE_SIZE - 2 * MAC_SIZE  # 60
RESPONSE_MAC2_OFFSET: Final = RESPONSE_SIZE - MAC_SIZE  # 76

# §6.1 timers and limits (seconds / message counts).
REKEY_AFTER_MESSAGES: Final = 2**60
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1
REKEY_AFTER_TIME: Final = 120.0
REJECT_AFTER_TIME: Final = 180.0
REKEY_ATTEMPT_TIME: Final = 90.0
REKEY_TIMEOUT: Final = 5.0
KEEPALIVE_TIMEOUT: Final = 10.0
# §5.4.7: the responder's cookie secret changes every two minutes, so a held cookie is useless after that.
COOKIE_SECRET_MAX_AGE: Final = 120.0
COOKIE_LIFETIME: Final = COOKIE_SECRET_MAX_AGE
# wireguard-go ignores a second initiation from one key within this many seconds (device/constants.go
# HandshakeInitationRate); callers must space initiations to one relay per key by at least this much.
HANDSHAKE_INITIATION_RATE: Final = 0.020

# §5.4.6 / RFC 6479: how many counters behind the highest one seen the transport replay window still accepts.
REPLAY_WINDOW_SIZE: Final = 2048

# wireguard-go's tai64n.go: whitened timestamps drop the low 24 bits of the nanoseconds (about 16.7 ms) so an
# initiation does not reveal the sender's precise clock; TAI64 labels add 2**62 plus the 10 s TAI-UTC offset.
TAI64_BASE: Final = 0x400000000000000A
TAI64N_WHITENER_MASK: Final = 0x1000000 - 1
