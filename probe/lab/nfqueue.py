"""The `delay:MS` fault's packet holder: a minimal NFQUEUE client on a raw netlink socket.

This kernel has no netem (CONFIG_NET_SCH_NETEM is off), so `tc qdisc ... netem delay` is not available. It does have
nfnetlink_queue and the xtables NFQUEUE target: iptables sends every packet arriving on the relay's public link to
a queue, and this process gives each one its ACCEPT verdict MS milliseconds after it arrived. Verdicts may be issued
in any order, but with one fixed delay a FIFO is enough. Only packet metadata is copied to userspace
(NFQNL_COPY_META), so the holder costs little whatever the packet size.

Run inside the relay's namespace (nfnetlink queues are per network namespace):
    python -m probe.lab.nfqueue QUEUE_NUM DELAY_MS

Message layouts follow include/uapi/linux/netfilter/nfnetlink_queue.h; netlink headers are host byte order, the
nfqueue payload structs big-endian.
"""

from __future__ import annotations

import collections
import errno
import select
import signal
import socket
import struct
import sys
import time
from types import FrameType

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
QUEUE_MAXLEN = 8192
NLA_TYPE_MASK = 0x3FFF  # ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

_NLMSGHDR = struct.Struct("=IHHII")
_NFGENMSG_LEN = 4


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(msg_type: int, queue: int, attrs: bytes, seq: int, flags: int = NLM_F_REQUEST) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg_type
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def bind_queue(sock: socket.socket, queue: int) -> None:
    """Bind to `queue`, ask for metadata only, and check the kernel's acknowledgements."""
    requests = [
        _attr(NFQA_CFG_CMD, struct.pack(">BBH", NFQNL_CFG_CMD_BIND, 0, 0)),
        _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
        + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN)),
    ]
    for seq, attrs in enumerate(requests, start=1):
        sock.send(_message(NFQNL_MSG_CONFIG, queue, attrs, seq, NLM_F_REQUEST | NLM_F_ACK))
        reply = sock.recv(65536)
        _length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(reply)
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
            if code != 0:
                raise OSError(-code, f"nfqueue bind of queue {queue}: {errno.errorcode.get(-code, code)}")


def packet_ids(data: bytes) -> list[int]:
    """The packet ids of every NFQNL_MSG_PACKET in one netlink datagram (several may arrive batched)."""
    ids = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = offset + _NLMSGHDR.size + _NFGENMSG_LEN
            end = min(offset + length, len(data))  # a truncated datagram claims more than it holds
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype & NLA_TYPE_MASK == NFQA_PACKET_HDR and pos + 8 <= end:
                    ids.append(struct.unpack_from(">I", data, pos + 4)[0])
                    break
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3
    return ids


def run(queue: int, delay_ms: int) -> None:
    delay = delay_ms / 1000.0
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((0, 0))
    bind_queue(sock, queue)
    held: collections.deque[tuple[float, int]] = collections.deque()
    seq = 100
    while True:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _due, packet_id = held.popleft()
            seq += 1
            verdict = _attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, packet_id))
            sock.send(_message(NFQNL_MSG_VERDICT, queue, verdict, seq))
        timeout = max(0.0, held[0][0] - now) if held else None
        readable, _, _ = select.select([sock], [], [], timeout)
        if not readable:
            continue
        try:
            data = sock.recv(1 << 16)
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped notifications under a burst; keep serving
                continue
            raise
        arrived = time.monotonic()
        held.extend((arrived + delay, packet_id) for packet_id in packet_ids(data))


def _stop(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(0)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not all(a.isdigit() for a in argv):
        print("usage: python -m probe.lab.nfqueue QUEUE_NUM DELAY_MS", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    run(int(argv[0]), int(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
