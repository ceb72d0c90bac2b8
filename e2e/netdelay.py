"""A fixed delay on the packets an iptables NFQUEUE rule hands over: latency without `tc netem`.

This machine's kernel has no netem (`CONFIG_NET_SCH_NETEM is not set`) but has nfnetlink_queue and
the NFQUEUE target. `e2e/faults.py` runs this module inside a Pod's network namespace (`nsenter
--net=...`), where a rule such as `OUTPUT -d <broker> -p tcp --dport <port> -j NFQUEUE --queue-num 7
--queue-bypass` sends it the Pod's packets to the broker; each packet is accepted `--delay-ms` after it
was queued, in arrival order, which is what `netem delay 200ms` on those packets would do.

The netlink protocol is spoken directly (a dozen structs; no library for it is installed here):
bind the queue, ask for metadata only, read packet ids, send NF_ACCEPT verdicts when they fall due.
`--queue-bypass` on the rule lets packets through unharmed whenever no process is bound, so a crash of
this process never partitions the Pod. SIGTERM: packets already queued are still released on time
(the caller removes the rule first, so nothing new arrives), then it exits.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 2
NLMSG_HDR = struct.Struct("=IHHII")     # length, type, flags, sequence, port id (host order)
NFGEN_HDR = struct.Struct("!BBH")       # family, version, resource id = queue number (network order)
NLA_HDR = struct.Struct("=HH")
NFNETLINK_V0 = 0
QUEUE_MAXLEN = 8192
PACKET_MESSAGE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET


def _align(length: int) -> int:
    return (length + 3) & ~3


def attribute(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    raw = NLA_HDR.pack(NLA_HDR.size + len(payload), kind) + payload
    return raw + b"\0" * (_align(len(raw)) - len(raw))


def message(msg_type: int, queue: int, attributes: bytes, *, sequence: int = 0, flags: int = NLM_F_REQUEST,
            family: int = socket.AF_UNSPEC) -> bytes:
    """An nfnetlink message of the queue subsystem."""
    body = NFGEN_HDR.pack(family, NFNETLINK_V0, queue) + attributes
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg_type, flags, sequence,
                          0) + body


def bind_messages(queue: int) -> list[bytes]:
    """Bind the queue, copy metadata only (the id is all a verdict needs), and let it hold many packets."""
    return [
        message(NFQNL_MSG_CONFIG, queue, attribute(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND, 0)),
                sequence=1, flags=NLM_F_REQUEST | NLM_F_ACK),
        message(NFQNL_MSG_CONFIG, queue,
                attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                + attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", QUEUE_MAXLEN)),
                sequence=2, flags=NLM_F_REQUEST | NLM_F_ACK),
    ]


def verdict_message(queue: int, packet_id: int, verdict: int = NF_ACCEPT) -> bytes:
    return message(NFQNL_MSG_VERDICT, queue, attribute(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id)))


def iter_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload after the netlink header) of every message in one datagram."""
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, msg_type, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        yield msg_type, data[offset + NLMSG_HDR.size: offset + length]
        offset += _align(length)


def ack_error(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR (0 for an ACK)."""
    (code,) = struct.unpack_from("=i", payload, 0)
    return -int(code)


def packet_id(payload: bytes) -> int | None:
    """The id in NFQA_PACKET_HDR of a queued-packet message's payload (after the nfgen header)."""
    offset = NFGEN_HDR.size
    while offset + NLA_HDR.size <= len(payload):
        length, kind = NLA_HDR.unpack_from(payload, offset)
        if length < NLA_HDR.size:
            return None
        if kind & 0x3FFF == NFQA_PACKET_HDR:
            (value,) = struct.unpack_from("!I", payload, offset + NLA_HDR.size)
            return int(value)
        offset += _align(length)
    return None


@dataclass
class DelayLine:
    """Packets in arrival order, each due `delay` seconds after it arrived (a FIFO: same delay for all)."""

    delay: float
    pending: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)
    released: int = 0

    def arrive(self, packet: int, now: float) -> None:
        self.pending.append((now + self.delay, packet))

    def due(self, now: float) -> list[int]:
        out: list[int] = []
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        self.released += len(out)
        return out

    def next_due_in(self, now: float, idle: float) -> float:
        return max(0.0, self.pending[0][0] - now) if self.pending else idle


def run(queue: int, delay: float) -> int:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind((0, 0))
    for request in bind_messages(queue):
        sock.send(request)
        for msg_type, payload in iter_messages(sock.recv(65536)):
            if msg_type == NLMSG_ERROR and ack_error(payload):
                print(f"netdelay: binding queue {queue} failed: errno {ack_error(payload)}", file=sys.stderr)
                return 1
    stopping = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    line = DelayLine(delay)
    print(f"netdelay: queue {queue} bound, delay {delay * 1000:.0f} ms", flush=True)
    while not (stopping and not line.pending):
        readable, _, _ = select.select([sock], [], [], line.next_due_in(time.monotonic(), 0.2))
        if readable:
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:  # ENOBUFS: the kernel dropped queued packets; TCP sends them again
                print(f"netdelay: {exc}", file=sys.stderr, flush=True)
                continue
            now = time.monotonic()
            for msg_type, payload in iter_messages(data):
                packet = packet_id(payload) if msg_type == PACKET_MESSAGE else None
                if packet is not None:
                    line.arrive(packet, now)
        for packet in line.due(time.monotonic()):
            sock.send(verdict_message(queue, packet))
    print(f"netdelay: released {line.released} packets", flush=True)
    sock.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--queue", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("netdelay: needs CAP_NET_ADMIN (run as root)", file=sys.stderr)
        return 2
    return run(args.queue, args.delay_ms / 1000)


if __name__ == "__main__":
    sys.exit(main())
