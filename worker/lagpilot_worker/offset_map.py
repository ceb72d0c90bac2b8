"""The offsets finished above the committed one, as a commit's metadata string (pure, no I/O).

Kafka keeps one number per partition, the lowest unfinished offset; records finished above it
(handlers run concurrently, key order lets later keys overtake a slow one) would run again after
a crash or a hand-over. Like Confluent's Parallel Consumer, the worker puts those offsets into
the commit's metadata, and a new owner skips the records the map marks done.

Layout (then base64): one tag byte naming the encoding, the committed offset the map is relative
to (unsigned LEB128 varint), then the body:

* BITSET: varint bit count n, then n bits (LSB first), bit i = offset base+i done;
* RUNS_VARINT / RUNS_U16 / RUNS_U32: lengths of alternating runs, unfinished first (the base
  offset is always unfinished), as varints or fixed-width little-endian integers.

Every candidate is built and the shortest kept. The base offset inside the map ties it to the
commit it was written with: an offset moved by a tool that kept the metadata decodes as "no map".
Offsets inside the span that never reached the worker (compaction, transaction markers) count as
done: no record will ever ask. Anything that does not decode is "no map" (the records replay).
"""

from __future__ import annotations

import base64
import binascii
from bisect import bisect_right
from dataclasses import dataclass

BITSET = 1
RUNS_VARINT = 2
RUNS_U16 = 3
RUNS_U32 = 4

# Kafka broker default of offset.metadata.max.bytes: a longer metadata string fails the commit.
DEFAULT_MAX_BYTES = 4096

_TO_DIGITS = bytes.maketrans(b"\x00\x01", b"01")


class OffsetMapError(ValueError):
    """Metadata that is not an offset map of this format (or not for this committed offset)."""


@dataclass(frozen=True)
class DoneOffsets:
    """Offsets from `base` (the committed offset) up to `high` that an earlier owner finished.

    `starts`/`ends` are the done runs [start, end), increasing: memory grows with the runs, not
    with the span, whatever a (possibly hostile) map claims.
    """

    base: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @property
    def high(self) -> int:
        """The highest offset the map says anything about (done), or base - 1 when empty."""
        return self.ends[-1] - 1 if self.ends else self.base - 1

    @property
    def count(self) -> int:
        return sum(end - start for start, end in zip(self.starts, self.ends, strict=True))

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.done_through(offset) > offset

    def done_through(self, offset: int) -> int:
        """The first offset from `offset` on that the map does not mark done (`offset` itself when it is not)."""
        while self.starts:
            index = bisect_right(self.starts, offset) - 1
            if index < 0 or offset >= self.ends[index]:
                break
            offset = self.ends[index]  # adjacent runs (a hostile map's empty gap) continue the loop
        return offset


# The widest inherited map carried into a commit (flags, one byte each): a map an earlier owner wrote spans
# at most its window of uncommitted records; one claiming more is not carried (its records run again).
MAX_CARRIED_SPAN = 1 << 20


def past_inherited_done(committable: int, inherited: DoneOffsets | None, fetched_through: int | None) -> int:
    """The offset to commit for the tracker's `committable` one: moved past the offsets the earlier owner's
    map (`inherited`) marks done from there on, when this owner has not fetched them yet.

    The tracker's committable offset is past everything this owner fetched once all of it is finished, and
    the next offset may be one the earlier owner finished (this owner would skip it when fetched). Committed
    as it is, that record would run again on the next owner (the committed offset is unfinished in the map's
    format). Nothing of this owner's own is in flight above what it fetched, so the commit can move past
    the finished run.
    """
    if inherited is None or (fetched_through is not None and committable <= fetched_through):
        return committable
    return inherited.done_through(committable)


def carry_inherited(own: tuple[int, bytes] | None, committable: int, inherited: DoneOffsets | None,
                    fetched_through: int | None) -> tuple[int, bytes] | None:
    """The flags to commit at `committable`: this owner's finished offsets (`own`, from the tracker),
    and, above the last offset it fetched, the ones the earlier owner's map (`inherited`) marks done.

    Without the carry, an owner that commits before it has fetched past the inherited map (a revoke soon
    after it took the partition over, in a rolling update or a scale-up) writes a map of only its own
    records, and the next owner runs the earlier owner's finished ones again. The committed offset is
    always unfinished in the format: `past_inherited_done` moves the commit past inherited finished
    records first, and if the inherited map still marks it done here, it is written as unfinished.
    """
    if inherited is None:
        return own
    base = own[0] if own is not None else committable
    floor = base if fetched_through is None else max(base, fetched_through + 1)
    high = inherited.high
    if high < floor or high - base + 1 > MAX_CARRIED_SPAN:
        return own
    flags = bytearray(own[1]) if own is not None else bytearray()
    flags.extend(bytes(high - base + 1 - len(flags)))
    for start, end in zip(inherited.starts, inherited.ends, strict=True):
        low, top = max(start, floor), min(end, high + 1)
        if low < top:
            flags[low - base:top - base] = b"\x01" * (top - low)
    flags[0] = 0
    last = flags.rfind(1)
    if last < 0:
        return own
    return base, bytes(flags[:last + 1])

# -- encoding ---------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _runs(flags: bytes) -> list[int]:
    """Lengths of alternating runs of 0 and 1 flags, starting with 0 (C-speed find per run)."""
    runs: list[int] = []
    position = 0
    size = len(flags)
    looking_for = b"\x01"
    while position < size:
        found = flags.find(looking_for, position)
        if found < 0:
            found = size
        runs.append(found - position)
        position = found
        looking_for = b"\x00" if looking_for == b"\x01" else b"\x01"
    return runs


def _candidates(flags: bytes, max_raw: int) -> list[bytes]:
    """The encodings worth building: an encoding that cannot beat one already known is skipped, so
    a commit on the poll thread stays cheap however long or fragmented the map is."""
    span = len(flags)
    bitset_size = 1 + len(_varint(span)) + (span + 7) // 8
    bodies: list[bytes] = []
    # Runs come in (unfinished, done) pairs, one per 0->1 step (counted in C); each run takes at
    # least one byte, so run lengths are listed only when they may beat the bitset and fit.
    pairs = flags.count(b"\x00\x01")
    if 2 * pairs < min(bitset_size, max_raw + 1):
        runs = _runs(flags)
        bodies.append(bytes([RUNS_VARINT]) + b"".join(map(_varint, runs)))
        longest = max(runs)
        if longest >= 1 << 14:    # below, a varint is at most two bytes: never longer than fixed width
            width = 2 if longest < 1 << 16 else 4 if longest < 1 << 32 else 0
            if width:
                bodies.append(bytes([RUNS_U16 if width == 2 else RUNS_U32])
                              + b"".join(r.to_bytes(width, "little") for r in runs))
    if bitset_size <= max_raw and (not bodies or bitset_size < min(map(len, bodies))):
        bits = int(flags.translate(_TO_DIGITS)[::-1], 2).to_bytes((span + 7) // 8, "little")
        bodies.append(bytes([BITSET]) + _varint(span) + bits)
    return bodies


def encode(base: int, flags: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """The metadata string for a commit of `base`, or None when the map does not fit `max_bytes`.

    `flags[i]` is 1 when offset base+i is done, 0 when not: flags[0] is 0 (base is the lowest
    unfinished offset) and the last flag is 1 (the highest done offset). Empty flags: "".
    """
    if base < 0:
        raise ValueError(f"base offset {base} is negative")
    if not flags:
        return ""
    if flags[0] != 0 or flags[-1] != 1:
        raise ValueError("flags must start unfinished (the committed offset) and end done")
    head = _varint(base)
    # base64 turns 3 bytes into 4 characters.
    max_raw = max_bytes // 4 * 3 - len(head)
    bodies = _candidates(flags, max_raw)
    if not bodies:
        return None
    body = min(bodies, key=len)
    raw = body[:1] + head + body[1:]
    text = base64.b64encode(raw).decode("ascii")
    return text if len(text) <= max_bytes else None


# -- decoding ---------------------------------------------------------------------------------

def _read_varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= len(data):
            raise OffsetMapError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 63:
            raise OffsetMapError("varint too long")


def _from_runs(base: int, runs: list[int]) -> DoneOffsets:
    if not runs or len(runs) % 2 or not all(runs):
        raise OffsetMapError("runs must be non-empty pairs of unfinished and done lengths")
    starts: list[int] = []
    ends: list[int] = []
    position = base
    for index in range(0, len(runs), 2):
        position += runs[index]
        starts.append(position)
        position += runs[index + 1]
        ends.append(position)
    return DoneOffsets(base, tuple(starts), tuple(ends))


def decode(metadata: str | None, committed: int | None) -> DoneOffsets | None:
    """The done offsets above `committed`; None for no map (empty metadata, or not a map for it).

    Raises OffsetMapError for metadata that looks like nothing this module wrote; callers treat
    that as "no map" too (see `read`).
    """
    if not metadata or committed is None or committed < 0:
        return None
    try:
        raw = base64.b64decode(metadata.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise OffsetMapError(f"not base64: {exc}") from None
    if not raw:
        raise OffsetMapError("empty map")
    tag = raw[0]
    base, position = _read_varint(raw, 1)
    if base != committed:
        raise OffsetMapError(f"map is for offset {base}, the committed offset is {committed}")
    body = raw[position:]
    if tag == BITSET:
        span, start = _read_varint(body, 0)
        bits = body[start:]
        if span == 0 or len(bits) != (span + 7) // 8:
            raise OffsetMapError("bitset length does not match its bit count")
        value = int.from_bytes(bits, "little")
        if value >> span:
            raise OffsetMapError("bits set beyond the bit count")
        flags = format(value, "b").zfill(span)[::-1].encode("ascii").translate(bytes.maketrans(b"01", b"\x00\x01"))
        if flags[0] != 0 or flags[-1] != 1:
            raise OffsetMapError("bitset must start unfinished and end done")
        return _from_runs(base, _runs(flags))
    if tag == RUNS_VARINT:
        runs: list[int] = []
        position = 0
        while position < len(body):
            run, position = _read_varint(body, position)
            runs.append(run)
        return _from_runs(base, runs)
    if tag in (RUNS_U16, RUNS_U32):
        width = 2 if tag == RUNS_U16 else 4
        if len(body) % width:
            raise OffsetMapError("fixed-width runs truncated")
        return _from_runs(base, [int.from_bytes(body[i:i + width], "little") for i in range(0, len(body), width)])
    raise OffsetMapError(f"unknown encoding tag {tag}")


def read(metadata: str | None, committed: int | None) -> tuple[DoneOffsets | None, str | None]:
    """decode() that never raises: (map or None, the reason it was ignored or None)."""
    try:
        return decode(metadata, committed), None
    except OffsetMapError as exc:
        return None, str(exc)
