"""The steps of one decision made with lag in hand (policy.py's steps 2-8), each a pure function. No I/O.

`policy.decide` handles the guards (paused, lag unreadable) and otherwise runs these in order, passing
each step what the earlier ones found:

    DecisionContext.of      the inputs and the current shape, read once
    read_lag                step 2: total lag and the lag more workers can drain
    assess_throughput       step 3's evidence: busy slots, saturation, the backlog's trend, per-slot rate
    read_activation         step 8's reading: idle, waking, staying at or going to zero
    recommend               step 3: the raw recommendation in slots, with its explanation
    within_tolerance        step 4: a recommendation close to the current capacity is the current one
    stabilize, limit_steps  steps 5 and 6 (HPA's windows and step limits, on slots)
    keep_small_shrink       step 4's band again, on what steps 5-6 left
    shape_for               step 7: replicas x pool, the partition cap, bounds, cooldown, rebalance grace
    reason                  the sentence a person reads

Every step returns its result with the notes it adds to the reason; policy.py joins them in step order,
so the reason reads in the order the decision was made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from lagpilot_operator.core import falling_behind as behind
from lagpilot_operator.core.observations import LagSample, PartitionKey, partition_lag, partition_name
from lagpilot_operator.core.stabilization import stabilized
from lagpilot_operator.core.verdicts import STUCK, Verdict

if TYPE_CHECKING:
    # policy.py runs these steps, so its types are only named here: no import cycle at run time.
    from lagpilot_operator.core.policy import Direction, Observation, PolicyConfig, PolicyMemory

SATURATION_BACKLOG_SECONDS = 10.0  # > librdkafka's 5 s auto-commit: commit lag alone never looks saturated
SLOT_RATE_EWMA_WEIGHT = 0.5
FLOOR_HALF_LIFE_SECONDS = 600.0
MAX_NAMED_PARTITIONS = 5
REBALANCE_GRACE_POLLS = 3  # polls after a replica decrease during which replicas do not go back up
# A steady deficit (capacity just below demand) grows the backlog too slowly to cross the saturation
# bar soon: 1 % short takes 1000 s to build 10 s of consumption. The backlog's trend finds it sooner:
# the smallest lag seen in each TREND_BUCKET_SECONDS bucket (the minimum strips most of the commit
# sawtooth) is compared across up to TREND_WINDOW_SECONDS at unchanged capacity; growth by more than
# TREND_BACKLOG_SECONDS of consumption says every slot is busy. A deficit too small to grow that much
# within the window is left to the saturation bar.
TREND_WINDOW_SECONDS = 600.0
TREND_BUCKET_SECONDS = 60.0
TREND_BACKLOG_SECONDS = 3.0
MIN_RATE = 1e-3  # msg/s; below this a consume rate says nothing about per-slot speed
# Work waiting (`_work_waiting`): for workers that declare their commit interval, this many commit steps of
# consumption and at least WORK_WAITING_SECONDS of it (a group that keeps up at 1 s commits reads 0.3-1.8 s).
WORK_WAITING_COMMITS = 2
WORK_WAITING_SECONDS = 5.0
BUSY_SPAN_COMMITS = 10  # commit steps a busy span must last before its rate counts (busy_span_rate)
# The pool grows unread up to this multiple of pool.initial while the lag grows; beyond it, each pool is
# read for a poll (falling_behind.py) before it grows again, so a CPU-bound pod is seen before pool.max.
FREE_POOL_GROWTH = 4
MAX_SLOTS = 1_000_000  # far above any pool.max x replicas.max; keeps arithmetic finite
# The time lag the operator reads dates the oldest *uncommitted* message, so a group that keeps up still reads
# up to about one commit interval behind (the Lagpilot worker commits every 1 s by default; the seed benchmark
# read 0.3-1.8 s with every message done in 10-15 ms). A time-lag target below this floor is held at the floor:
# a time lag within it counts as on target, and a backlog above it drains in the floor's time, not the
# target's (draining one commit interval's lag in 200 ms asks for 5x the produce rate, for messages already done).
# A worker that declares a longer commit interval (`Observation.commit_interval_seconds`) raises the floor to it;
# a shorter one does not lower it (with 100 ms commits the bench still read 0.3-1.8 s: the operator's 5 s polls
# date offsets by interpolation, and fetches come in batches).
COMMITTED_TIME_LAG_FLOOR_SECONDS = 1.0

Notes = tuple[str, ...]


# --- shared by the steps and the guards in policy.py ------------------------------------------------


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def describe_shape(replicas: int, pool: int) -> str:
    return f"{replicas} replica{'s' if replicas != 1 else ''}, pool {pool}"


def owned_partitions(config: PolicyConfig, partitions: int) -> int:
    """Partitions the consumers split among themselves, each owning some; 0 (no bound) for a share group,
    whose consumers all fetch from every partition."""
    return 0 if config.share_group else partitions


def replica_cap(config: PolicyConfig, partitions: int) -> int:
    cap = config.replicas.max
    partitions = owned_partitions(config, partitions)
    if not config.lag_threshold.allow_idle_consumers and partitions > 0:
        cap = min(cap, partitions)
    return max(cap, config.replicas.min)  # min wins over the partition cap


def consumers_at_work(observation: Observation, sample: LagSample, partitions: int) -> int:
    """Consumers working on partitions now (members, else ready pods, else the replica count)."""
    replicas = max(0, observation.current_replicas)
    if replicas == 0:
        return 0  # members of a group scaled to zero are leftovers on their way out
    members = sample.members
    if members is None:
        members = observation.ready_replicas if observation.ready_replicas is not None else replicas
    if partitions > 0:
        members = min(members, partitions)  # idle consumers have no partitions to work on
    return max(0, members)


# --- the context every step reads ----------------------------------------------------------------


@dataclass(frozen=True)
class DecisionContext:
    """The inputs of one decision with a sample, and what follows from them before any step runs."""

    config: PolicyConfig
    observation: Observation
    memory: PolicyMemory
    now: float
    sample: LagSample
    partitions: int
    # What bounds consumers and sizes the busiest pod: the partitions, except in a share group.
    owned: int
    current_replicas: int
    current_pool: int
    # KIP-848: the broker assigns and moves only the partitions that change owner, with no group-wide
    # join barrier, so a pod added or removed costs the others (almost) nothing. A share group's
    # consumers own no partitions at all: one joining or leaving stops nobody.
    incremental: bool
    # The scale-up and scale-down windows' recommendations, seeded for a fresh memory (below).
    recommendations: tuple[tuple[float, int], ...]

    @classmethod
    def of(cls, config: PolicyConfig, observation: Observation, memory: PolicyMemory, now: float) -> DecisionContext:
        sample = observation.sample
        if sample is None:
            raise ValueError("a decision context needs a sample: decide() holds or falls back without one")
        partitions = observation.partitions or len(sample.partitions)
        current_replicas = max(0, observation.current_replicas)
        current_pool = observation.current_pool
        # Fresh memory (first decision, lost status): as if the current capacity was just recommended,
        # so nothing scales down before a full window has been observed.
        recommendations = memory.recommendations
        if memory.last_time is None and current_replicas * current_pool > 0:
            recommendations = (*memory.recommendations, (now, current_replicas * current_pool))
        return cls(
            config=config,
            observation=observation,
            memory=memory,
            now=now,
            sample=sample,
            partitions=partitions,
            owned=owned_partitions(config, partitions),
            current_replicas=current_replicas,
            current_pool=current_pool,
            incremental=sample.protocol == "consumer" or config.share_group,
            recommendations=recommendations,
        )

    @property
    def current_capacity(self) -> int:
        return self.current_replicas * self.current_pool

    @property
    def expected_consumers(self) -> int:
        """Consumers the current replicas make once every pod has joined (an idle consumer works on nothing)."""
        return min(self.current_replicas, self.owned) if self.owned > 0 else self.current_replicas


# --- step 2: lag -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LagView:
    total: int                               # lag of all partitions
    stuck: Mapping[PartitionKey, Verdict]    # excluded partitions with lag, in partition order
    stuck_lag: int
    effective: int                           # lag more workers can drain


def read_lag(ctx: DecisionContext) -> LagView:
    config = ctx.config
    reset = config.lag_threshold.offset_reset_policy
    lags = ctx.observation.lags
    if lags is None:
        lags = {p.key: partition_lag(p, reset) for p in ctx.sample.partitions}
    total = sum(lags.values())
    excluding = config.mode == "drainTime" or config.lag_threshold.exclude_persistent_lag
    stuck: dict[PartitionKey, Verdict] = {}
    # At zero replicas nothing moves anywhere: all lag counts, or a stuck partition could never wake the group.
    if excluding and ctx.current_replicas > 0:
        stuck = dict(sorted(  # the few stuck ones sorted, not every partition's verdict
            (key, verdict) for key, verdict in ctx.observation.verdicts.items()
            if verdict in STUCK and lags.get(key, 0) > 0
        ))
    stuck_lag = sum(lags[key] for key in stuck)
    return LagView(total=total, stuck=stuck, stuck_lag=stuck_lag, effective=total - stuck_lag)


# --- step 3's evidence: how busy the slots are and how fast one is -------------------------------


@dataclass(frozen=True)
class Throughput:
    consumers: int                             # working on partitions now
    busy: tuple[tuple[float, int], ...]        # (since, busy slots), this poll's included
    saturated: bool
    saturated_since: float | None
    trend: tuple[tuple[float, int], ...]       # the lag trend's buckets after this poll
    deficit_since: float | None
    slot_rate: float | None                    # measured msg/s per slot (EWMA), None until measured
    floor: float | None                        # lower bound on the per-slot rate, as of now
    notes: Notes = ()
    growth: Growth | None = None               # the lag's growth span and what it says (falling_behind.py)
    late_run: behind.LateRun | None = None     # the time lag's growth above its target (falling_behind.py)
    late: behind.Late | None = None            # set when that run says the group falls behind its target
    busy_span: behind.Span | None = None       # polls at this settled shape with work waiting at each

    @property
    def falling_behind(self) -> bool:
        return self.growth is not None and self.growth.behind is not None


@dataclass(frozen=True)
class Growth:
    """The lag's growth span after this poll and what the policy reads from it (falling_behind.py)."""

    span: behind.Span | None
    pod_rate: tuple[int, float] | None      # (pool, msg/s per pod) of the last capacity-limited reading
    pool_ceiling: int | None                # pool beyond which a pod's slots add no throughput
    behind: behind.Reading | None = None    # set when falling behind: the span's capacity-limited reading
    unread_pool: bool = False               # growing at a pool no reading has covered yet
    ceiling_found: bool = False             # this poll's reading found the pool ceiling
    observed_slot_rate: float | None = None  # msg/s per slot this poll's reading overrules the estimate with


def assess_throughput(ctx: DecisionContext, lag: LagView) -> Throughput:
    memory, now, observation = ctx.memory, ctx.now, ctx.observation
    window = observation.consume_rate_window_seconds
    consume = observation.consume_rate
    consumers = consumers_at_work(observation, ctx.sample, ctx.owned)
    busy_now = consumers * ctx.current_pool
    busy = list(memory.busy)
    if not busy or busy[-1][1] != busy_now:
        busy.append((now, busy_now))
    busy_max = _max_in_window(busy, now - window)
    # Without any rate (first sample) there is no telling a backlog from commit lag: not saturated.
    reference = consume if consume is not None else observation.produce_rate
    threshold = max(2.0 * busy_now, (reference or 0.0) * SATURATION_BACKLOG_SECONDS)
    saturated = busy_now > 0 and reference is not None and lag.effective > threshold
    saturated_since = (memory.saturated_since if memory.saturated_since is not None else now) if saturated else None
    stable_since = busy[-1][0]
    # Pods still starting (replicas > members) will change the capacity soon: no trend across that.
    joining = consumers < ctx.expected_consumers
    trend = _next_trend(memory.trend, now, lag.effective, restart=stable_since >= now or joining)
    deficit_now = _steady_deficit(trend, now, window, consume, observation.produce_rate)
    deficit_since = (memory.deficit_since if memory.deficit_since is not None else now) if deficit_now else None
    # Like saturation, the deficit must have lasted a whole consume-rate window before that window's
    # rate counts as every slot's: a step up in load grows the lag at once, but the window before
    # it was mostly idle slots.
    deficit = deficit_since is not None and deficit_since <= now - window
    notes: Notes = ()
    if deficit:
        notes = (f"lag grew {trend[-1][1] - trend[0][1]:,} msgs in "
                 f"{now - trend[0][0]:,.0f} s at unchanged capacity: every slot is busy",)
    saturated_for_a_window = saturated_since is not None and saturated_since <= now - window
    every_slot_busy = (saturated_for_a_window or deficit) and stable_since <= now - window
    # lagThreshold keeps KEDA's meaning: the readings of the lag's own course are drainTime's.
    drain_time = ctx.config.mode == "drainTime" and not observation.lag_only
    drained = drained_total(ctx, lag) if drain_time else 0
    busy_span = behind.next_span(memory.busy_span, now=now, drained=drained, lag=lag.effective,
                                 grew=drain_time and _settled_shape(ctx, consumers)
                                 and _work_waiting(ctx, lag, reference, busy_now),
                                 consumers=consumers, pool=ctx.current_pool)
    busy_rate = consume if every_slot_busy else None
    if busy_rate is None and (span_rate := busy_span_rate(ctx, busy_span, drained, lag)) is not None:
        busy_rate = span_rate
        if memory.slot_rate is None and busy_now > 0:
            notes = (*notes, f"the slots drained {_rate(span_rate)} msg/s over "
                             f"{now - cast(behind.Span, busy_span).start:,.0f} s at this shape with work "
                             f"waiting: {_rate(span_rate / busy_now)} msg/s/slot")
    slot_rate, floor = _per_slot_rate(memory, now, consume, busy_max=busy_max, busy_now=busy_now,
                                      busy_rate=busy_rate)
    growth: Growth | None = None
    late_run: behind.LateRun | None = None
    late: behind.Late | None = None
    if drain_time:
        late_run = _next_late_run(ctx, lag, consumers)
        late = behind.late(late_run, now=now, lag=lag.effective, noise_seconds=committed_time_lag_floor(ctx),
                           backlog=2 * busy_now)
        growth, growth_notes = _read_growth(ctx, lag, consumers, drained, late=late, saturated_since=saturated_since)
        slot_rate, floor = _overruled_slot_rate(growth, slot_rate, floor)
        notes = (*notes, *growth_notes)
    return Throughput(consumers=consumers, busy=tuple(busy), saturated=saturated, saturated_since=saturated_since,
                      trend=trend, deficit_since=deficit_since, slot_rate=slot_rate, floor=floor,
                      notes=notes, growth=growth, late_run=late_run, late=late, busy_span=busy_span)


def _work_waiting(ctx: DecisionContext, lag: LagView, reference: float | None, busy_now: int) -> bool:
    """More lag than commits alone can show, so every slot has work waiting: 2 messages a slot, and
    `reference` (msg/s consumed) x the saturation bar's 10 s for consumers whose commit interval nobody
    declared (librdkafka auto-commits every 5 s), or x WORK_WAITING_COMMITS of the declared interval, at
    least WORK_WAITING_SECONDS. The workers' own interval is what bounds their commit lag: under the 10 s bar,
    a backlog of 1,600 msgs at 2 x 3 slots of 36 msg/s took 25 s to drain against a 20 s target (the steady
    scenario in the simulator, pods starting in 15 s)."""
    if busy_now <= 0 or reference is None:
        return False
    declared = ctx.observation.commit_interval_seconds
    seconds = SATURATION_BACKLOG_SECONDS if declared is None else \
        max(WORK_WAITING_SECONDS, WORK_WAITING_COMMITS * declared)
    return lag.effective > max(2.0 * busy_now, reference * seconds)


def busy_span_rate(ctx: DecisionContext, span: behind.Span | None, drained: int, lag: LagView) -> float | None:
    """msg/s the slots drained over the busy span, once it is long enough to stand for every slot's rate.

    The consume-rate window measures the slots only once saturated and at one shape for all of it (30 s): a
    group whose slots are slower than the first step up assumed (a busy node) and whose backlog shrinks
    slowly, up and down with the commits, was held at that step with 2,000 msgs waiting for 45 s (CI, the
    steady scenario). Over a *busy span*, polls at one settled shape with work waiting at each
    (`_work_waiting`), every slot had work, so what the committed offsets moved is what the slots drain,
    whichever way the lag went. It counts after as many polls and seconds as falling behind needs (a busy
    node stalls a group that keeps up for several seconds) and BUSY_SPAN_COMMITS commit steps, so a
    commit that came late or early at either end moves the rate by a tenth at most.
    """
    reading = behind.read(span, now=ctx.now, drained=drained, lag=lag.effective)
    least = max(behind.FALLING_BEHIND_SECONDS, BUSY_SPAN_COMMITS * committed_time_lag_floor(ctx))
    if reading is None or reading.polls < behind.FALLING_BEHIND_POLLS or reading.seconds < least:
        return None
    return reading.rate


def group_time_lag(ctx: DecisionContext, lag: LagView) -> float:
    """The largest time lag of the partitions more workers can drain (stuck ones are the verdicts' to report)."""
    return max((v for k, v in ctx.observation.time_lags.items() if k not in lag.stuck), default=0.0)


def committed_time_lag_floor(ctx: DecisionContext) -> float:
    """How far behind committed offsets show a group that keeps up (`commit_step_seconds`)."""
    return commit_step_seconds(ctx.observation.commit_interval_seconds)


def commit_step_seconds(declared_commit_interval: float | None) -> float:
    """The step in which a group's committed offsets move: COMMITTED_TIME_LAG_FLOOR_SECONDS, or the workers'
    declared commit interval when longer."""
    return max(COMMITTED_TIME_LAG_FLOOR_SECONDS, declared_commit_interval or 0.0)


def held_time_lag_target(ctx: DecisionContext) -> float | None:
    """The time-lag target the policy can hold: the configured one, or the committed-offset floor when that is
    higher (`committed_time_lag_floor`). None without a target."""
    target = ctx.config.drain_time.target_time_lag_seconds
    return None if target is None else max(target, committed_time_lag_floor(ctx))


def _settled_shape(ctx: DecisionContext, consumers: int) -> bool:
    """Every consumer joined and none joined or left since the last poll: the growth span and the late run
    only count such polls (a rebalance's pause grows the lag and ages every message, whatever the capacity)."""
    return consumers >= ctx.expected_consumers and ctx.memory.last_members == consumers


def _next_late_run(ctx: DecisionContext, lag: LagView, consumers: int) -> behind.LateRun | None:
    """The late run after this poll: only with a time-lag target, and only at a settled shape."""
    target = held_time_lag_target(ctx)
    if target is None:
        return None
    time_lag = group_time_lag(ctx, lag)
    return behind.next_late_run(ctx.memory.late, now=ctx.now, time_lag=time_lag, lag=lag.effective,
                                above=time_lag > target, settled=_settled_shape(ctx, consumers), consumers=consumers,
                                pool=ctx.current_pool)


def drained_total(ctx: DecisionContext, lag: LagView) -> int:
    """Committed offsets summed over the partitions more workers can drain: their progress is consumption."""
    stuck = lag.stuck
    # max(committed, start) spelled out, and the key built only when some partition is stuck: every poll.
    return sum(c if (c := p.committed) > p.start_offset else p.start_offset for p in ctx.sample.partitions
               if p.committed is not None and (not stuck or (p.topic, p.partition) not in stuck))


def _read_growth(ctx: DecisionContext, lag: LagView, consumers: int, drained: int, *, late: behind.Late | None,
                 saturated_since: float | None) -> tuple[Growth, Notes]:
    """The growth span after this poll, and the falling-behind and CPU-bound rules' readings of it.

    The span only runs at a settled shape: every consumer joined, none joined or left since the last
    poll (a rebalance's pause grows the lag and says nothing about capacity). A reading is capacity-limited
    when the lag grew by more than the tolerance band of what was drained, when the group is `late` (its
    time lag grew past what commits alone can move it, with the lag), or when the backlog stayed above the
    saturation bar for the whole span (every slot had work waiting all along): a deficit within the band is
    then real, and what the slots drained is what they can drain.
    """
    memory, now, pool = ctx.memory, ctx.now, ctx.current_pool
    grew = (_settled_shape(ctx, consumers) and memory.last_lag is not None and lag.effective > memory.last_lag
            and lag.effective > 2 * consumers * pool)
    span = behind.next_span(memory.span, now=now, drained=drained, lag=lag.effective, grew=grew,
                            consumers=consumers, pool=pool)
    reading = behind.read(span, now=now, drained=drained, lag=lag.effective)
    tolerance = ctx.config.tolerance_percent
    in_band = reading is not None and not reading.capacity_limited(tolerance, committed_time_lag_floor(ctx))
    # Saturated since before the span began: a small deficit (pods a little short of CPU) is then no noise. Left
    # in the band, it was never read, and a pool waiting for its reading held the group for a whole
    # consume-rate window while the lag grew (the steady scenario on a busy node: 2 x 3 slots for 28 s).
    saturated_all_along = span is not None and saturated_since is not None and saturated_since <= span.start
    limited = reading if reading is not None and (late is not None or saturated_all_along or not in_band) else None
    pod_rate, ceiling = memory.pod_rate, memory.pool_ceiling
    notes: Notes = ()
    observed: float | None = None  # msg/s per slot this poll's reading says, when it overrules the estimate
    found = False
    if limited is not None:
        per_pod = limited.rate / consumers
        previous = pod_rate
        ceiling, found = behind.pool_ceiling(previous, pool, per_pod, ceiling)
        pod_rate = (pool, per_pod)
        if found and previous is not None:
            notes = (f"pool {previous[0]}→{pool} raised a pod's drain only {_rate(previous[1])}→{_rate(per_pod)} "
                     f"msg/s with work waiting: CPU-bound, more capacity goes to pods of pool ≤ {ceiling}",)
            pod_rate = previous  # the reading at the ceiling is what pods are sized by from now on
            observed = previous[1] / previous[0]
    falling = limited if limited is not None and limited.polls >= behind.FALLING_BEHIND_POLLS \
        and limited.seconds >= behind.FALLING_BEHIND_SECONDS else None
    if falling is not None:
        notes = (*notes, f"falling behind: lag grew at each of {falling.polls} polls over {falling.seconds:,.0f} s "
                         f"at this shape, draining {_rate(falling.rate)} of {_rate(falling.arrival)} msg/s arriving"
                         + _in_band_words(tolerance, late, saturated_all_along=saturated_all_along, in_band=in_band))
        if observed is None:
            observed = falling.rate / (consumers * pool)
    # Growth beyond the pool last read (or, before any reading, beyond FREE_POOL_GROWTH x pool.initial)
    # waits for this pool to be read: a CPU-bound pod would otherwise grow to pool.max unseen.
    free = pod_rate is None and pool < FREE_POOL_GROWTH * ctx.config.pool.initial
    unread = span is not None and not free and (pod_rate is None or pod_rate[0] != pool)
    growth = Growth(span=span, pod_rate=pod_rate, pool_ceiling=ceiling, behind=falling, unread_pool=unread,
                    ceiling_found=found, observed_slot_rate=observed)
    return growth, notes


def _in_band_words(tolerance: int, late: behind.Late | None, *, saturated_all_along: bool, in_band: bool) -> str:
    """Why a growth within the tolerance band still counts as falling behind (nothing when it was beyond it)."""
    if not in_band:
        return ""
    if late is not None:
        return f" (within the {tolerance}% band, but {_late_words(late)})"
    if saturated_all_along:
        return (f" (within the {tolerance}% band, but the backlog stayed above {SATURATION_BACKLOG_SECONDS:,.0f} s "
                "of consumption all along)")
    return ""


def _overruled_slot_rate(growth: Growth, slot_rate: float | None,
                         floor: float | None) -> tuple[float | None, float | None]:
    """What this poll's reading saw the slots drain caps the per-slot estimate and its lower bound."""
    observed = growth.observed_slot_rate
    if observed is None or not observed > 0:
        return slot_rate, floor
    return (observed if slot_rate is None else min(slot_rate, observed),
            observed if floor is None else min(floor, observed))


def _per_slot_rate(memory: PolicyMemory, now: float, consume: float | None, *, busy_max: int, busy_now: int,
                   busy_rate: float | None) -> tuple[float | None, float | None]:
    """The smoothed measured msg/s per slot and the decayed lower bound on it, after this poll. `busy_rate`:
    msg/s the slots drained with every slot busy (None when not known to be)."""
    floor = memory.slot_rate_floor
    if floor is not None and memory.floor_time is not None:
        floor *= 0.5 ** (max(0.0, now - memory.floor_time) / FLOOR_HALF_LIFE_SECONDS)
    # Slots are never faster than they are busy, so the consume rate over the most slots that were busy
    # in its window bounds the per-slot rate from below.
    if consume is not None and consume >= MIN_RATE and busy_max > 0:
        bound = consume / busy_max
        floor = bound if floor is None else max(floor, bound)
    slot_rate = memory.slot_rate
    # No slot at all (scaled to zero, or no member yet) measures nothing, however long the lag grew.
    if busy_now > 0 and busy_rate is not None and busy_rate >= MIN_RATE:
        measured = busy_rate / busy_now
        slot_rate = measured if slot_rate is None else (
            SLOT_RATE_EWMA_WEIGHT * measured + (1 - SLOT_RATE_EWMA_WEIGHT) * slot_rate)
        floor = measured  # a fresh measurement replaces any older lower bound
    return slot_rate, floor


def _max_in_window(values: list[tuple[float, int]], window_start: float) -> int:
    """Largest value in effect at any time after `window_start`; each value holds until the next begins."""
    largest = 0
    for index, (_, value) in enumerate(values):
        ends = values[index + 1][0] if index + 1 < len(values) else math.inf
        if ends > window_start:
            largest = max(largest, value)
    return largest


def _next_trend(trend: tuple[tuple[float, int], ...], now: float, lag: int, *,
                restart: bool) -> tuple[tuple[float, int], ...]:
    """The lag trend's buckets after this poll; `restart` when capacity or membership just changed."""
    if restart or not trend:
        return ((now, lag),)
    buckets = list(trend)
    start, smallest = buckets[-1]
    if now - start >= TREND_BUCKET_SECONDS:
        buckets.append((now, lag))
    else:
        buckets[-1] = (start, min(smallest, lag))
    while len(buckets) > 1 and buckets[0][0] < now - TREND_WINDOW_SECONDS:
        buckets.pop(0)
    return tuple(buckets)


def _steady_deficit(trend: tuple[tuple[float, int], ...], now: float, window: float, consume: float | None,
                    produce: float | None) -> bool:
    """A backlog that grew across the trend at unchanged capacity, and still grows: capacity is below demand."""
    if not trend or consume is None or produce is None or consume < MIN_RATE or produce <= consume:
        return False
    start, first = trend[0]
    growth = trend[-1][1] - first
    return now - start >= 2 * window and growth > TREND_BACKLOG_SECONDS * consume


# --- step 8's reading: idle, waking, zero ------------------------------------------------------------


@dataclass(frozen=True)
class Activation:
    idle_since: float | None   # total lag <= activationLag since
    waking: bool               # at zero replicas with lag above activationLag
    stays_at_zero: bool
    scales_to_zero: bool       # idle for the whole scale-down window, and replicas.min allows zero
    head: str                  # the reason's opening in these cases, "" otherwise

    @property
    def at_zero(self) -> bool:
        return self.stays_at_zero or self.scales_to_zero


def read_activation(ctx: DecisionContext, lag: LagView) -> Activation:
    config, now = ctx.config, ctx.now
    activation = config.lag_threshold.activation_lag
    idle = lag.total <= activation
    zero_allowed = config.replicas.min == 0
    # Only scaling to zero reads how long the group has been idle. Kept where it cannot, the clock flipped
    # with sparse traffic (lag 0, 3, 0: idle, not, idle) and each flip was a status write of the memory; a
    # spec that allows zero starts it on its first poll (a later scale to zero, never an earlier one).
    idle_since = (ctx.memory.idle_since if ctx.memory.idle_since is not None else now) \
        if idle and zero_allowed else None
    idle_long_enough = idle_since is not None and now - idle_since >= config.scale_down.stabilization_seconds
    waking = ctx.current_replicas == 0 and not idle
    stays_at_zero = ctx.current_replicas == 0 and idle and zero_allowed
    scales_to_zero = not stays_at_zero and zero_allowed and idle and idle_long_enough
    head = ""
    if stays_at_zero:
        head = f"stay at zero: lag {lag.total:,} ≤ activation {activation:,}"
    elif scales_to_zero:
        head = (f"scale to zero: lag {lag.total:,} ≤ activation {activation:,} for "
                f"{config.scale_down.stabilization_seconds} s")
    elif waking:
        head = f"wake from zero: lag {lag.total:,} > activation {activation:,}; "
    return Activation(idle_since=idle_since, waking=waking, stays_at_zero=stays_at_zero,
                      scales_to_zero=scales_to_zero, head=head)


# --- step 3: the raw recommendation ----------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    slots: int
    explanation: str
    slot_rate: float | None = None     # msg/s per slot it assumed
    needed_rate: float | None = None   # msg/s it aimed to consume (drainTime)
    notes: Notes = ()


def recommend(ctx: DecisionContext, lag: LagView, throughput: Throughput) -> Recommendation:
    config = ctx.config
    if config.mode == "lagThreshold" or ctx.observation.lag_only:
        per = config.lag_threshold.lag_per_consumer
        slots = math.ceil(lag.effective / per)
        # A lag-only source (Prometheus) never yields produce/consume rates, so drainTime cannot
        # size by throughput; the KEDA-compatible rule is the honest fallback.
        prefix = "lag-only source, sized by lagThreshold: " if config.mode == "drainTime" else ""
        explanation = f"{prefix}lag {lag.effective:,} msgs at {per:,} per consumer needs {slots:,} slots"
        return Recommendation(slots, explanation)
    return _recommend_drain_time(ctx, lag, throughput)


def _recommend_drain_time(ctx: DecisionContext, lag: LagView, throughput: Throughput) -> Recommendation:
    settings = ctx.config.drain_time
    observation = ctx.observation
    produce = observation.produce_rate
    if produce is None:
        produce = observation.consume_rate or 0.0
    growth = throughput.growth
    if growth is not None and growth.behind is not None:
        produce = max(produce, growth.behind.arrival)  # the produce window may still average in a lower rate
    drain_seconds, notes = _drain_seconds(ctx, lag)
    headroom = 1 + settings.headroom_percent / 100
    effective = lag.effective
    needed = produce * headroom + effective / drain_seconds
    demand = (f"backlog {effective:,} msgs + {_rate(produce)} msg/s "
              f"(+{settings.headroom_percent}%)")
    drain = f"to drain in {_seconds(drain_seconds)}"

    def slots_at(rate: float) -> int:
        if needed <= 0:
            return 0
        return min(MAX_SLOTS, math.ceil(needed / rate - 1e-9))

    def made(slots: int, explanation: str, slot_rate: float | None) -> Recommendation:
        return Recommendation(slots, explanation, slot_rate, needed, notes)

    capacity = ctx.current_capacity
    if throughput.slot_rate is not None:
        rate = max(throughput.slot_rate, throughput.floor or 0.0)
        slots = slots_at(rate)
        if growth is not None and growth.observed_slot_rate is not None:
            # The lag grew at these slots: never fewer than they are (falling behind: more).
            slots = max(slots, capacity + (1 if growth.behind is not None else 0))
            return made(slots, f"{demand} needs {slots:,} slots at the {_rate(rate)} msg/s/slot drained while "
                               f"the lag grew {drain}", rate)
        return made(slots, f"{demand} needs {slots:,} slots at {_rate(rate)} msg/s/slot {drain}", rate)
    # Nothing measured yet: act on the lag's direction, bounded by what the lower bound proves.
    floor = throughput.floor
    bound_slots = slots_at(floor) if floor else None
    late = throughput.late
    if throughput.saturated or late is not None:
        # Saturated, or late: a time lag above its target grew at every poll with the lag (the saturation bar,
        # 10 s of consumption, takes a small deficit minutes to cross while messages wait ever longer).
        memory = ctx.memory
        lag_grew = throughput.saturated and (memory.last_lag is None or effective > memory.last_lag)
        growing = lag_grew or late is not None
        trend = f"lag {effective:,} msgs growing" if lag_grew or late is None else _late_words(late)
        expected = ctx.expected_consumers
        consumers = throughput.consumers
        settled = consumers >= expected and memory.last_members in (None, consumers)
        if growing and not settled:
            # Pods are still starting or just joined (a rebalance pause): the lag's growth says
            # nothing yet about the capacity already added, so do not double again.
            return made(capacity, f"lag {effective:,} msgs growing while consumers join "
                                  f"({consumers} of {expected}): keeping {capacity:,} slots", floor)
        if growing and growth is not None and growth.unread_pool and not ctx.incremental:
            # The pool already grew with work waiting; growing it further before reading what this pool
            # drains could take a CPU-bound pod to pool.max unseen. (Growth to FREE_POOL_GROWTH x the
            # initial pool is free: it is no sign of a CPU limit, and waiting would only be late.)
            return made(capacity, f"lag {effective:,} msgs growing, reading what pool {ctx.current_pool} drains "
                                  f"before growing it: keeping {capacity:,} slots", floor)
        if growing:
            doubled = max(2 * capacity, ctx.config.pool.initial)
            # The lower bound on the per-slot rate makes `bound_slots` an upper bound on what is
            # needed: doubling past it only overshoots and steps back down a window later. (A bound
            # that asks for no more than the capacity has is stale: the lag says otherwise.)
            if bound_slots is not None and capacity < bound_slots < doubled:
                return made(bound_slots, f"{trend}, per-slot throughput "
                                         f"not measured yet: {demand} needs at most {bound_slots:,} slots at "
                                         f"≥ {_rate(cast(float, floor))} msg/s/slot {drain}", floor)
            slots = max(doubled, bound_slots or 0)
            return made(slots, f"{trend}, per-slot throughput not measured "
                               f"yet: at least doubling {capacity:,}→{slots:,} slots", floor)
        # Draining: keep what works until the drain itself measures the per-slot throughput.
        return made(capacity, f"lag {effective:,} msgs shrinking, per-slot throughput not measured "
                              f"yet: keeping {capacity:,} slots", floor)
    if needed <= 0:
        return made(0, f"no backlog and no production ({_rate(produce)} msg/s)", floor)
    if bound_slots is not None:
        # A lower bound never adds capacity to an unsaturated group: at low load it is far below the
        # real speed. It only proves that less than the current capacity is enough.
        slots = min(capacity, bound_slots) if capacity > 0 else bound_slots
        bound = f"{demand} needs at most {bound_slots:,} slots at ≥ {_rate(cast(float, floor))} msg/s/slot {drain}"
        if slots < bound_slots:
            # Said as it is: the bound asks for more than the capacity, which is kept (not "needs at most").
            return made(slots, f"{bound}; not saturated (a lower bound adds no capacity): keeping {slots:,} slots",
                        floor)
        return made(slots, bound, floor)
    slots = capacity if capacity > 0 else ctx.config.pool.initial
    return made(slots, f"{demand}, per-slot throughput not measured yet: keeping {slots:,} slots", None)


def _drain_seconds(ctx: DecisionContext, lag: LagView) -> tuple[float, Notes]:
    """The time the backlog is to drain in: targetDrainSeconds, or the held time-lag target while the time
    lag is above it. A target below the committed-offset floor is held at the floor, and says so."""
    settings = ctx.config.drain_time
    drain_seconds = float(settings.target_drain_seconds)
    target, held = settings.target_time_lag_seconds, held_time_lag_target(ctx)
    if target is None or held is None:
        return drain_seconds, ()
    time_lag = group_time_lag(ctx, lag)
    if time_lag > held and held < drain_seconds:
        floor_words = f" (held at the {_seconds(held)} committed offsets can show)" if held > target else ""
        return held, (f"time lag {_seconds(time_lag)} > target {_seconds(target)}{floor_words}",)
    if target < time_lag <= held:
        return drain_seconds, (f"time lag {_seconds(time_lag)} is within the {_seconds(held)} committed offsets "
                               f"can show: target {_seconds(target)} counts as met",)
    return drain_seconds, ()


def _late_words(late: behind.Late) -> str:
    return (f"time lag grew at each of {late.polls} polls over {late.seconds:,.0f} s at this shape, "
            f"{_seconds(late.time_lag_from)} → {_seconds(late.time_lag_to)}, with the lag "
            f"{late.lag_from:,} → {late.lag_to:,} msgs")


def _seconds(value: float) -> str:
    """A duration for a reason: "45 s", "1.5 s", below a second in milliseconds ("200 ms")."""
    if value >= 10:
        return f"{value:,.0f} s"
    if value >= 1:
        return f"{value:.1f}".removesuffix(".0") + " s"
    return f"{value * 1000:,.0f} ms"


def _rate(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


# --- steps 4-6: from recommendation to the slots aimed at ---------------------------------------------


@dataclass(frozen=True)
class Slots:
    """A slot count after one step, with what that step adds to the reason."""

    slots: int
    notes: Notes = ()


def within_tolerance(ctx: DecisionContext, slots: int, *, waking: bool) -> Slots:
    """HPA's tolerance: a recommendation this close to the current capacity is no reason to move."""
    if waking:
        return Slots(max(slots, 1))
    capacity = ctx.current_capacity
    percent = ctx.config.tolerance_percent
    if capacity > 0 and abs(slots - capacity) <= percent / 100 * capacity:
        return Slots(capacity, (f"within {percent}% tolerance",) if slots != capacity else ())
    return Slots(slots)


def stabilize(ctx: DecisionContext, recommendation: int) -> Slots:
    """At least the smallest recommendation of the scale-up window, at most the largest of the scale-down one."""
    config, capacity = ctx.config, ctx.current_capacity
    target = stabilized(capacity, recommendation, ctx.recommendations, ctx.now,
                        config.scale_up.stabilization_seconds, config.scale_down.stabilization_seconds)
    notes: list[str] = []
    if recommendation < capacity and target > recommendation:
        notes.append(f"scale-down stabilization keeps {target:,} slots "
                     f"(max over {config.scale_down.stabilization_seconds} s)")
    if recommendation > capacity and target < recommendation:
        notes.append(f"scale-up stabilization keeps {target:,} slots "
                     f"(min over {config.scale_up.stabilization_seconds} s)")
    return Slots(target, tuple(notes))


def limit_steps(ctx: DecisionContext, target: int) -> Slots:
    """At most max(minStep, maxStepPercent % of the capacity at the period's start) per period, each way."""
    config, now, memory = ctx.config, ctx.now, ctx.memory
    capacity = ctx.current_capacity
    if target > capacity:
        up = config.scale_up
        added = sum(b - a for t, a, b in memory.changes if t > now - up.period_seconds and b > a)
        base = max(0, capacity - added)
        limit = base + max(up.min_step, math.ceil(base * up.max_step_percent / 100))
        limited = max(capacity, min(target, limit))
        if limited < target:
            return Slots(limited, (f"scale-up step limit {limited:,} slots "
                                   f"(+max({up.min_step}, {up.max_step_percent}%) per {up.period_seconds} s)",))
        return Slots(limited)
    if target < capacity:
        down = config.scale_down
        removed = sum(a - b for t, a, b in memory.changes if t > now - down.period_seconds and a > b)
        base = capacity + removed
        limit = base - max(down.min_step, math.ceil(base * down.max_step_percent / 100))
        limited = min(capacity, max(target, limit))
        if limited > target:
            return Slots(limited, (f"scale-down step limit {limited:,} slots "
                                   f"(-max({down.min_step}, {down.max_step_percent}%) per {down.period_seconds} s)",))
        return Slots(limited)
    return Slots(target)


def keep_small_shrink(ctx: DecisionContext, target: int) -> Slots:
    """A shrink within the tolerance band is not made: the window's maximum decays one expired
    recommendation at a time, and without this band every small decay would be its own pool change."""
    capacity = ctx.current_capacity
    # Measured against what the current shape gives evenly spread load: a pool sized for the
    # busiest pod's partitions counts more slots than that, and every poll would trim one.
    even = even_capacity(ctx)
    shrink = even - target
    percent = ctx.config.tolerance_percent
    band = max(1.0, percent / 100 * capacity)
    if target < capacity and 0 < shrink < band:
        # What the shape gives evenly is kept (step 7 makes it the current shape again), not the nominal
        # capacity: a target of `even` itself passes as it is, and one slot less must not keep more (more
        # lag never gets fewer workers).
        return Slots(even, (f"shrink of {capacity - target} slots within {percent}% tolerance",))
    return Slots(target)


def even_capacity(ctx: DecisionContext) -> int:
    """Slots the current shape gives load spread evenly over partitions: `pool_for` inverted."""
    partitions, replicas = ctx.owned, ctx.current_replicas
    if partitions <= 0 or replicas <= 0:
        return ctx.current_capacity
    busiest = math.ceil(partitions / min(replicas, partitions))
    return min(ctx.current_capacity, ctx.current_pool * partitions // busiest)


# --- step 7: replicas x pool -----------------------------------------------------------------------


CPU_BOUND_CEILING = "a bigger pool drained no more (CPU-bound)"
"""Why a pool ceiling found by `falling_behind.pool_ceiling` holds pods' pools down (a reason's words)."""


def ceiling_for(ctx: DecisionContext, growth: Growth | None) -> tuple[int | None, str]:
    """The pool `shape_for` puts new capacity in pods of: the ceiling found, or, while the lag grows at a
    pool not read yet (`Growth.unread_pool`), the current pool (a CPU-bound pod gains nothing from more
    slots, another pod always adds some). A consumer-protocol or share group adds pods first anyway.
    With the ceiling, the reason's words for it. None without a growth reading (lagThreshold)."""
    if growth is None:
        return None, ""
    ceiling = growth.pool_ceiling
    why = CPU_BOUND_CEILING
    if growth.unread_pool and not ctx.incremental and (ceiling or math.inf) > ctx.current_pool:
        ceiling = ctx.current_pool
        why = f"the lag grows at pool {ceiling}, not read yet (a CPU-bound pod gains nothing from more slots)"
    return ceiling, why


@dataclass(frozen=True)
class Shape:
    replicas: int
    pool: int
    notes: Notes = ()

    @property
    def capacity(self) -> int:
        return self.replicas * self.pool


def shape_for(ctx: DecisionContext, slots: int, *, forced: bool, ceiling: int | None = None,
              reshape: bool = False, ceiling_why: str = CPU_BOUND_CEILING) -> Shape:
    """Replicas x pool for `slots`: pool first, the partition cap, bounds and cooldown.

    `forced` (waking from zero) skips the cooldown and the rebalance grace: a group at zero has nothing
    to protect from a rebalance. `ceiling`: the pool beyond which a pod's slots were seen to add no
    throughput (falling_behind.py); the slots go to pods of at most that pool while replicas allow, and
    `reshape` (the ceiling was found this poll) moves the current slots there too. Only then: a busiest
    pod's share can put the pool above the ceiling, and reshaping that at every poll would flap.
    """
    config, memory, now = ctx.config, ctx.memory, ctx.now
    current_r, current_pool, capacity = ctx.current_replicas, ctx.current_pool, ctx.current_capacity
    pool_min, pool_max = config.pool.min, config.pool.max
    if slots <= 0:
        return Shape(0, clamp(current_pool, pool_min, pool_max))
    low = max(1, config.replicas.min)
    high = replica_cap(config, ctx.partitions)
    current_ok = (low <= current_r <= high) and pool_min <= current_pool <= pool_max
    capped = ceiling is not None and pool_min <= ceiling < pool_max
    over_ceiling = reshape and capped and current_pool > cast(int, ceiling) and current_r < high
    if slots == capacity and current_ok and not over_ceiling:
        return Shape(current_r, current_pool)
    notes: list[str] = []
    shrinking = slots < capacity
    replicas = math.ceil(slots / pool_max)
    if capped:
        by_ceiling = math.ceil(slots / cast(int, ceiling))
        if clamp(by_ceiling, low, high) > clamp(replicas, low, high):
            what = "kept, not consolidated" if shrinking else "before a bigger pool"
            notes.append(f"pods of pool ≤ {ceiling} {what}: {ceiling_why}")
        replicas = by_ceiling
    if ctx.incremental and not shrinking:
        # Pool first is for the classic protocol, where each new pod is a rebalance of the group.
        # With incremental rebalances, new capacity goes to new pods at the current pool (more
        # CPU and memory, smaller failure domain); the pool grows once pods reach their cap.
        spread = math.ceil(slots / clamp(max(current_pool, config.pool.initial), pool_min, pool_max))
        if clamp(spread, low, high) > clamp(replicas, low, high):
            notes.append(f"{_group_kind(config)}: pods before a bigger pool, as {_cheap_join(config)}")
        replicas = spread
    # Removing capacity never adds pods; adding capacity never removes pods.
    replicas = min(replicas, max(current_r, 1)) if shrinking else max(replicas, current_r)
    replicas = clamp(replicas, low, high)
    # A pod with more partitions than the others needs more slots (the pool is per pod). A scale-down
    # keeps as many of the current pods as the busiest one's share needs to fit in pool.max (9 pods
    # of 10 partitions would leave one pod short at the same slots). A scale-up adds no pods for
    # it: their pools would shrink as they start, a capacity blip; growing, the pool is at its max.
    if shrinking:
        while replicas < min(high, current_r) and pool_for(ctx.owned, slots, replicas) > pool_max:
            replicas += 1
    if replicas == high and pool_for(ctx.owned, slots, high) > pool_max:
        notes.append(f"capped at {high} replicas x pool {pool_max}"
                     + (f" ({ctx.owned} partitions)" if high == ctx.owned else ""))
    last = memory.last_replica_change
    cooling = (
        not forced
        and current_r > 0
        and replicas != current_r
        and last is not None
        and now - last < config.cooldown_seconds
    )
    if cooling:
        held = clamp(current_r, low, high)
        if held != replicas:
            wait = config.cooldown_seconds - (now - cast(float, last))
            notes.append(f"replica change waits {wait:,.0f} s more for the {config.cooldown_seconds} s cooldown")
            replicas = held
    decreased = memory.last_replica_decrease
    grace = max(REBALANCE_GRACE_POLLS * config.poll_interval_seconds, config.scale_down.period_seconds)
    recently_decreased = (
        not forced
        and replicas > current_r > 0
        and decreased is not None
        and now - decreased < grace
        and low <= current_r <= high
    )
    if recently_decreased and ctx.incremental:
        notes.append(f"{_group_kind(config)}: no rebalance grace after removing a pod, {_cheap_leave(config)}")
    elif recently_decreased:
        # Removing a pod paused the whole group for a rebalance; the lag that built up meanwhile
        # is not demand. Let the pool absorb it instead of bouncing the replica count right back.
        notes.append(f"no new pods within {grace} s of removing one (rebalance lag)")
        replicas = current_r
    pool = clamp(pool_for(ctx.owned, slots, replicas), pool_min, pool_max)
    if shrinking and current_ok and replicas * pool >= capacity:
        # Pool rounding after consolidating pods would not actually shrink anything: keep as is.
        return Shape(current_r, current_pool, tuple(notes))
    return Shape(replicas, pool, tuple(notes))


def pool_for(partitions: int, slots: int, replicas: int) -> int:
    """Pool that gives the busiest pod its partitions' share of `slots` (`partitions`: those owned).

    An assignor spreads P partitions over r consumers as evenly as it can, so the busiest pod has
    ceil(P / r) of them and, at a load spread evenly over partitions, that share of the work:
    ceil(P / r) / P of the slots. 10 partitions on 9 pods put 2 on one pod, which then needs twice
    the pool of the others; sizing every pod for slots / 9 leaves that pod short and the lag grows.
    A share group's records go to whichever consumer fetches: slots / r each.
    """
    if partitions <= 0 or replicas <= 0:
        return math.ceil(slots / max(replicas, 1))
    busiest = math.ceil(partitions / min(replicas, partitions))
    return math.ceil(slots * busiest / partitions - 1e-9)


def _group_kind(config: PolicyConfig) -> str:
    return "share group (KIP-932)" if config.share_group else "consumer-protocol group (KIP-848)"


def _cheap_join(config: PolicyConfig) -> str:
    return ("adding one stops no other consumer" if config.share_group
            else "adding one moves only the partitions it takes")


def _cheap_leave(config: PolicyConfig) -> str:
    return ("its consumers share partitions, removing one paused no other" if config.share_group
            else "its rebalance paused only the partitions it moved")


def share_group_note(ctx: DecisionContext, replicas: int) -> Notes:
    """Says why a share group may have more replicas than partitions (a consumer group may not)."""
    if ctx.config.share_group and replicas > ctx.partitions > 0:
        return (f"share group: {replicas} replicas on {ctx.partitions} partitions, not capped at the "
                "partition count (its consumers share partitions)",)
    return ()


def direction_of(before: int, after: int) -> Direction:
    return "up" if after > before else "down" if after < before else "none"


# --- the reason ----------------------------------------------------------------------------------


def reason(ctx: DecisionContext, lag: LagView, activation: Activation, recommendation: Recommendation, shape: Shape,
           direction: Direction, notes: Notes) -> str:
    """What was done and why, then the notes of the steps that changed it, then the lag left out."""
    replicas, pool = shape.replicas, shape.pool
    if activation.stays_at_zero or replicas == 0:
        text = activation.head
    else:
        before_r, before_pool = ctx.current_replicas, ctx.current_pool
        if replicas != before_r:
            verb = "scale up" if direction == "up" else "scale down" if direction == "down" else "reshape"
            action = f"{verb} {before_r}→{replicas} replicas"
            action += f", pool {before_pool}→{pool}" if pool != before_pool else f", pool {pool}"
        elif pool != before_pool:
            verb = "grow" if pool > before_pool else "shrink"
            action = f"{verb} pool {before_pool}→{pool} on {describe_shape(replicas, pool).split(',')[0]}"
        else:
            action = f"hold {describe_shape(replicas, pool)}"
        text = f"{activation.head}{action}: {recommendation.explanation}"
    all_notes = list(notes)
    if lag.stuck:
        names = [f"{partition_name(key)} ({verdict.value})" for key, verdict in lag.stuck.items()]
        shown = ", ".join(names[:MAX_NAMED_PARTITIONS])
        if len(names) > MAX_NAMED_PARTITIONS:
            shown += f" and {len(names) - MAX_NAMED_PARTITIONS} more"
        all_notes.append(f"excluded stuck partitions {shown}: {lag.stuck_lag:,} msgs more workers cannot drain")
    if all_notes:
        text += "; " + "; ".join(all_notes)
    return text
