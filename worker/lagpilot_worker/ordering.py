"""What may start now, per ordering mode, and when to stop fetching (pure, no I/O).

A *lane* is a sequence of messages that must run one after another: the whole partition in
`partition` mode, one key of one partition in `key` mode. Messages without a lane (every message
in `unordered` mode, null-keyed messages in `key` mode) may run in any order.

Messages are handed out in *work items*: a work item is a list of segments, a segment is a run of
messages of one partition that one slot handles in order. Several consecutive messages of a lane
travel in one segment and many segments share an item: few hand-offs between threads, which is
what keeps a no-op handler near the speed of a bare consume loop. A lane is never in two items at
once, and its next messages wait until the runtime releases it (its handed-out messages finished).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

P = TypeVar("P", bound=Hashable)   # a partition's identity (the runtime uses one object per assignment)
T = TypeVar("T")                   # a message


MAX_IDLE_LANES_PER_PARTITION = 10_000
_NO_PARTITION = object()


class OrderingMode(StrEnum):
    PARTITION = "partition"   # one in flight per partition: Kafka's own ordering
    KEY = "key"               # one in flight per key within a partition; keys overlap in time
    UNORDERED = "unordered"   # no ordering: every message may run at once


class Lane(Generic[P, T]):
    """Messages of one ordering unit waiting to run, and whether some are handed out."""

    __slots__ = ("dropped", "key", "out", "partition", "queue", "ready")

    def __init__(self, partition: P, key: object) -> None:
        self.partition = partition
        self.key = key
        self.queue: deque[T] = deque()
        self.out = False          # handed-out messages not yet released
        self.ready = False        # in the scheduler's ready queue
        self.dropped = False      # its partition was revoked


class Segment(Generic[P, T]):
    """Messages of one partition a slot handles in order, and the lanes they belong to.

    A segment holds whole runs of its lanes one after another (lane A's messages, then lane B's);
    `lanes` is empty for messages without a lane.
    """

    __slots__ = ("lanes", "messages", "partition")

    def __init__(self, partition: P, messages: list[T], lanes: list[Lane[P, T]]) -> None:
        self.partition = partition
        self.messages = messages
        self.lanes = lanes


WorkItem = list[Segment[P, T]]


class Scheduler(Generic[P, T]):
    """Queues fetched messages and forms work items that respect the ordering mode.

    Not thread-safe: the consumer's poll thread owns it.
    """

    def __init__(self, mode: OrderingMode) -> None:
        self.mode = mode
        self._lanes: dict[P, dict[object, Lane[P, T]]] = {}
        self._ready: deque[Lane[P, T]] = deque()
        self._free: dict[P, deque[T]] = {}        # messages without a lane, per partition
        self._blocked: set[P] = set()
        self._queued = 0

    # -- queueing ---------------------------------------------------------------------------

    def enqueue(self, partition: P, messages: Sequence[T], keys: Sequence[bytes | None] | None = None) -> None:
        """Queue `messages` of one partition, in offset order. `keys` is needed in key mode."""
        if not messages:
            return
        self._queued += len(messages)
        mode = self.mode
        if mode is OrderingMode.UNORDERED:
            self._free_queue(partition).extend(messages)
            return
        if mode is OrderingMode.PARTITION:
            lane = self._lane(partition, None)
            lane.queue.extend(messages)
            self._mark_ready(lane)
            return
        if keys is None or len(keys) != len(messages):
            raise ValueError("key mode needs one key per message")
        lanes = self._lanes.get(partition)
        if lanes is None:
            lanes = self._lanes[partition] = {}
        free: deque[T] | None = None
        for message, key in zip(messages, keys, strict=True):
            if key is None:
                # Null keys carry no ordering promise (Kafka spreads them round-robin).
                if free is None:
                    free = self._free_queue(partition)
                free.append(message)
                continue
            key_lane = lanes.get(key)
            if key_lane is None:
                if len(lanes) >= MAX_IDLE_LANES_PER_PARTITION:
                    self._sweep_idle_lanes(lanes)
                key_lane = lanes[key] = Lane(partition, key)
            key_lane.queue.append(message)
            if not key_lane.ready and not key_lane.out:
                key_lane.ready = True
                self._ready.append(key_lane)

    def _free_queue(self, partition: P) -> deque[T]:
        free = self._free.get(partition)
        if free is None:
            free = self._free[partition] = deque()
        return free

    def _lane(self, partition: P, key: object) -> Lane[P, T]:
        lanes = self._lanes.get(partition)
        if lanes is None:
            lanes = self._lanes[partition] = {}
        lane = lanes.get(key)
        if lane is None:
            lane = lanes[key] = Lane(partition, key)
        return lane

    def _mark_ready(self, lane: Lane[P, T]) -> None:
        if not lane.ready and not lane.out and not lane.dropped and lane.queue:
            lane.ready = True
            self._ready.append(lane)

    # -- handing out ------------------------------------------------------------------------

    def take(self, max_items: int, max_messages_per_item: int,
             min_messages_per_item: int = 1) -> list[WorkItem[P, T]]:
        """Form up to `max_items` work items from everything that may start now.

        Items are balanced: lanes go whole (up to the size cap) into the emptiest item, and
        unordered messages top the items up evenly, taken from the partitions in turn. No more
        items are formed than `min_messages_per_item` allows: for a fast handler, one item of a
        thousand records costs one thread hand-off instead of many.
        """
        if max_items <= 0 or self._queued == 0:
            return []
        if max_items == 1 or self._queued <= min_messages_per_item:
            # Everything fits one item (a fast handler, or little work): one pass, no balancing.
            return self._take_one(max_messages_per_item)
        budget = max_items * max_messages_per_item
        lanes: list[Lane[P, T]] = []
        lane_messages = 0
        ready = self._ready
        while ready and lane_messages < budget:
            lane = ready.popleft()
            lane.ready = False
            if lane.dropped or lane.out or not lane.queue or lane.partition in self._blocked:
                continue
            lanes.append(lane)
            lane_messages += min(len(lane.queue), max_messages_per_item)
        free_parts = [(p, q) for p, q in self._free.items() if q and p not in self._blocked]
        free_total = min(sum(len(q) for _, q in free_parts), max(0, budget - lane_messages))
        units = len(lanes) + free_total
        if units == 0:
            return []
        wanted = -(-(lane_messages + free_total) // max(1, min_messages_per_item))
        item_count = min(max_items, units, max(1, wanted))
        items: list[WorkItem[P, T]] = [[] for _ in range(item_count)]
        # Per item, one segment per partition: the lanes of a partition share it.
        by_partition: list[dict[P, Segment[P, T]]] = [{} for _ in range(item_count)]
        sizes = [0] * item_count
        heap = [(0, index) for index in range(item_count)]
        left_over: list[Lane[P, T]] = []
        single = item_count == 1     # the common case for a fast handler: no balancing needed
        for lane in lanes:
            size, index = (sizes[0], 0) if single else heap[0]
            room = max_messages_per_item - size
            if room <= 0:
                lane.ready = True          # every item is full: next round, at the front
                left_over.append(lane)
                continue
            queue = lane.queue
            count = min(room, len(queue))
            if count == len(queue):
                run = list(queue)
                queue.clear()
            else:
                run = [queue.popleft() for _ in range(count)]
            lane.out = True
            segment = by_partition[index].get(lane.partition)
            if segment is None:
                segment = by_partition[index][lane.partition] = Segment(lane.partition, run, [lane])
                items[index].append(segment)
            else:
                segment.messages.extend(run)
                segment.lanes.append(lane)
            sizes[index] = size + count
            if not single:
                heapq.heapreplace(heap, (size + count, index))
        ready.extendleft(reversed(left_over))
        taken = sum(sizes)
        if free_total:
            target = min(max_messages_per_item, -(-(taken + free_total) // item_count))
            remaining = free_total
            turn = 0
            for index in sorted(range(item_count), key=sizes.__getitem__):
                want = min(target - sizes[index], remaining)
                while want > 0 and free_parts:
                    partition, queue = free_parts[turn % len(free_parts)]
                    count = min(want, len(queue))
                    run = [queue.popleft() for _ in range(count)]
                    items[index].append(Segment(partition, run, []))
                    sizes[index] += count
                    want -= count
                    remaining -= count
                    if not queue:
                        free_parts.remove((partition, queue))
                    else:
                        turn += 1
                if remaining == 0 or not free_parts:
                    break
            taken = sum(sizes)
        self._queued -= taken
        return [item for item in items if item]

    def _take_one(self, limit: int) -> list[WorkItem[P, T]]:
        item: WorkItem[P, T] = []
        segments: dict[P, Segment[P, T]] = {}
        size = 0
        ready = self._ready
        blocked = self._blocked
        # Ready lanes come in runs of one partition: find its segment once per run, not per lane.
        # (`current` starts as no partition at all, so the first lane always sets both adders.)
        current: object = _NO_PARTITION
        unused: list[Any] = []
        add_messages: Callable[[Iterable[T]], None] = unused.extend
        add_lane: Callable[[Lane[P, T]], None] = unused.append
        while ready and size < limit:
            lane = ready.popleft()
            lane.ready = False
            queue = lane.queue
            if lane.dropped or lane.out or not queue:
                continue
            partition = lane.partition
            if partition is not current:
                if partition in blocked:
                    continue
                segment = segments.get(partition)
                if segment is None:
                    segment = segments[partition] = Segment(partition, [], [])
                    item.append(segment)
                current, add_messages, add_lane = partition, segment.messages.extend, segment.lanes.append
            count = len(queue)
            if size + count <= limit:
                add_messages(queue)
                queue.clear()
            else:
                count = limit - size
                add_messages([queue.popleft() for _ in range(count)])
            add_lane(lane)
            lane.out = True
            size += count
        for partition, free in self._free.items():
            if size >= limit:
                break
            if not free or partition in blocked:
                continue
            count = min(len(free), limit - size)
            if count == len(free):
                run = list(free)
                free.clear()
            else:
                run = [free.popleft() for _ in range(count)]
            item.append(Segment(partition, run, []))
            size += count
        self._queued -= size
        return [item] if item else []

    def release(self, lane: Lane[P, T]) -> None:
        """The lane's handed-out messages are finished: its next ones may start."""
        lane.out = False
        if lane.queue and not lane.dropped and not lane.ready and lane.partition not in self._blocked:
            lane.ready = True
            self._ready.append(lane)

    def release_all(self, lanes: list[Lane[P, T]]) -> None:
        """release() for every lane of a segment (the common case, without a call per lane)."""
        ready = self._ready
        blocked = self._blocked
        for lane in lanes:
            lane.out = False
            if lane.queue and not lane.dropped and not lane.ready and lane.partition not in blocked:
                lane.ready = True
                ready.append(lane)

    def hold(self, partition: P, key: bytes | None) -> Lane[P, T] | None:
        """Mark the lane of `key` handed out although take() did not form it: its later messages wait.

        For a message the poll thread ran without lanes and the breaker now holds back; release()
        the lane when the held message is finished. None where the mode keeps no lane for it.
        """
        if self.mode is OrderingMode.UNORDERED or (self.mode is OrderingMode.KEY and key is None):
            return None
        lane = self._lane(partition, key if self.mode is OrderingMode.KEY else None)
        lane.out = True
        return lane

    def _sweep_idle_lanes(self, lanes: dict[object, Lane[P, T]]) -> None:
        # Idle lanes are kept (a hot key comes back soon, and re-creating it costs more than
        # keeping it), but keys come and go: past a bound, forget the idle ones.
        for key in [key for key, lane in lanes.items() if not lane.out and not lane.queue and not lane.ready]:
            del lanes[key]

    def requeue(self, segment: Segment[P, T], messages: list[T], keys: Sequence[bytes | None] | None = None,
                keep_out: set[int] | None = None) -> None:
        """Put back the tail of a handed-out segment that did not run, ahead of later messages.

        Releases the segment's lanes, except those whose id() is in `keep_out`. `keys` (one per
        message) is needed in key mode to find each message's lane. The partition must still be
        assigned.
        """
        back: dict[int, list[T]] = {}
        free: list[T] = []
        lanes = segment.lanes
        for position, message in enumerate(messages):
            lane = self._lane_of(lanes, None if keys is None else keys[position])
            if lane is None:
                free.append(message)
            else:
                back.setdefault(id(lane), []).append(message)
        if free:
            self._free_queue(segment.partition).extendleft(reversed(free))
            self._queued += len(free)
        for lane in lanes:
            returned = back.get(id(lane))
            if returned and not lane.dropped:
                lane.queue.extendleft(reversed(returned))
                self._queued += len(returned)
            if keep_out is None or id(lane) not in keep_out:
                self.release(lane)

    def _lane_of(self, lanes: list[Lane[P, T]], key: bytes | None) -> Lane[P, T] | None:
        if self.mode is OrderingMode.PARTITION:
            return lanes[0] if lanes else None
        if self.mode is OrderingMode.UNORDERED or key is None:
            return None
        for lane in lanes:
            if lane.key == key:
                return lane
        return None

    def lane_for(self, segment: Segment[P, T], key: bytes | None) -> Lane[P, T] | None:
        """The lane of one message of `segment` (by its key in key mode)."""
        return self._lane_of(segment.lanes, key)

    # -- partitions -------------------------------------------------------------------------

    def drop(self, partition: P) -> list[T]:
        """Forget a revoked partition: returns its queued (never handed out) messages."""
        self._blocked.discard(partition)
        dropped: list[T] = list(self._free.pop(partition, ()))
        for lane in self._lanes.pop(partition, {}).values():
            lane.dropped = True
            dropped.extend(lane.queue)
            lane.queue.clear()
        self._queued -= len(dropped)
        return dropped

    def block(self, partition: P) -> None:
        """Hand out nothing more from `partition` (circuit breaker open)."""
        self._blocked.add(partition)

    def unblock(self, partition: P) -> None:
        if partition not in self._blocked:
            return
        self._blocked.discard(partition)
        for lane in self._lanes.get(partition, {}).values():
            self._mark_ready(lane)

    def is_blocked(self, partition: P) -> bool:
        return partition in self._blocked

    @property
    def queued(self) -> int:
        """Messages waiting to be handed out."""
        return self._queued


# -- backpressure -------------------------------------------------------------------------------

K = TypeVar("K", bound=Hashable)



@dataclass(frozen=True)
class WindowLimits:
    """The bounded window of fetched-but-uncommitted records.

    `max_uncommitted` bounds the whole worker, and so memory and the records handled again after
    a crash: the runtime never takes more from the consumer than the window has room for.

    Pausing a partition is expensive in librdkafka (it drops the partition's prefetched records
    and refetches them on resume), so it is the last resort, not the first:

    * under pressure (the window at least `pressure_fraction` full for `full_grace_seconds`) a
      partition holding more than its share (`max_uncommitted / assigned`, at least
      `min_per_partition`) is paused, so one slow partition cannot fill the window and starve the
      others; it resumes below half its share or when the pressure is gone;
    * when the window stays full for `full_grace_seconds`, every partition is paused (the worker
      keeps polling, so rebalances are served and max.poll.interval.ms is never reached) until
      the window is down to `resume_fraction`.
    """

    max_uncommitted: int
    min_per_partition: int = 100
    pressure_fraction: float = 0.75
    resume_fraction: float = 0.5
    full_grace_seconds: float = 0.5

    def per_partition(self, assigned: int) -> int:
        return max(self.min_per_partition, self.max_uncommitted // max(1, assigned))


@dataclass(frozen=True)
class FetchDecision(Generic[K]):
    paused: set[K]        # partitions that should not be fetched
    room: int             # records the worker may take from the consumer now (0: do not consume)


class Backpressure(Generic[K]):
    """Which partitions to stop fetching, and how much to take (pure; keeps hysteresis state)."""

    def __init__(self, limits: WindowLimits) -> None:
        self.limits = limits
        self._full_since: float | None = None
        self._pressure_since: float | None = None
        self._all_paused = False
        self._hogs: set[K] = set()

    def update(self, uncommitted: Mapping[K, int], now: float) -> FetchDecision[K]:
        limits = self.limits
        window = limits.max_uncommitted
        total = sum(uncommitted.values())
        # A window that fills for a moment is just the pipeline at work; act only when it stays so.
        self._full_since = _since(self._full_since, total >= window, now)
        self._pressure_since = _since(self._pressure_since, total >= window * limits.pressure_fraction, now)
        if self._full_since is not None and now - self._full_since >= limits.full_grace_seconds:
            self._all_paused = True
        relaxed = total <= window * limits.resume_fraction
        if self._all_paused and relaxed:
            self._all_paused = False
        share = limits.per_partition(len(uncommitted))
        pressure = self._pressure_since is not None and now - self._pressure_since >= limits.full_grace_seconds
        hogs: set[K] = set()
        for tp, count in uncommitted.items():
            stays = tp in self._hogs and not relaxed and count > share * limits.resume_fraction
            if stays or (pressure and count > share):
                hogs.add(tp)
        self._hogs = hogs
        room = max(0, window - total)
        if self._all_paused:
            return FetchDecision(set(uncommitted), room)
        return FetchDecision(set(hogs), room)

    def forget(self, partitions: Iterable[K]) -> None:
        self._hogs.difference_update(partitions)


def _since(since: float | None, condition: bool, now: float) -> float | None:
    if not condition:
        return None
    return now if since is None else since
