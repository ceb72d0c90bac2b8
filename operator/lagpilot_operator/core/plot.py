"""Pictures of simulated (or measured) runs: lag, replicas x pool and end-to-end latency over time.

One column per policy, one row per quantity, every panel on the same time axis and every row on the
same y scale, so columns compare at a glance. matplotlib is an optional extra (`pip install
'lagpilot[plot]'`); without it `figure`/`save` raise `PlotUnavailable` with that instruction.
`series` (pure) turns a run into the plotted columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lagpilot_operator.core.simulate import RunResult

ROWS = ("lag (messages)", "replicas x pool (slots)", "end-to-end latency (s)")


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class Series:
    time: tuple[float, ...]
    lag: tuple[float, ...]
    replicas: tuple[int, ...]
    pool: tuple[int, ...]
    latency: tuple[float, ...]  # NaN where nothing finished (matplotlib leaves a gap)

    @property
    def slots(self) -> tuple[int, ...]:
        return tuple(r * p for r, p in zip(self.replicas, self.pool, strict=True))


def series(result: RunResult) -> Series:
    points = result.points
    return Series(
        time=tuple(p.time for p in points),
        lag=tuple(p.lag for p in points),
        replicas=tuple(p.replicas for p in points),
        pool=tuple(p.pool for p in points),
        latency=tuple(math.nan if p.latency is None else p.latency for p in points),
    )


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and in CI
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'lagpilot[plot]'") from exc
    return plt


def figure(results: Mapping[str, RunResult], title: str = "") -> Any:
    """A matplotlib Figure: rows lag / replicas x pool / latency, one column per policy."""
    if not results:
        raise ValueError("nothing to plot")
    plt = _pyplot()
    names = list(results)
    fig, axes = plt.subplots(len(ROWS), len(names), sharex=True, sharey="row", squeeze=False,
                             figsize=(4.5 * len(names) + 1, 8), layout="constrained")
    for column, name in enumerate(names):
        data = series(results[name])
        lag_axis, slots_axis, latency_axis = (axes[row][column] for row in range(len(ROWS)))
        lag_axis.plot(data.time, data.lag, color="tab:red")
        lag_axis.set_title(name)
        slots_axis.step(data.time, data.slots, where="post", color="tab:blue", label="replicas x pool")
        slots_axis.step(data.time, data.replicas, where="post", color="tab:green", label="replicas")
        latency_axis.plot(data.time, data.latency, color="tab:purple")
        latency_axis.set_xlabel("time (s)")
        for row, axis in enumerate((lag_axis, slots_axis, latency_axis)):
            axis.grid(alpha=0.3)
            if column == 0:
                axis.set_ylabel(ROWS[row])
        if column == 0:
            slots_axis.legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def save(results: Mapping[str, RunResult], path: Path, title: str = "") -> None:
    fig = figure(results, title)
    try:
        fig.savefig(path, format="png", dpi=100)
    finally:
        _pyplot().close(fig)


def panel_titles(fig: Any) -> Sequence[str]:
    """The column titles of a figure made by `figure` (for tests and checks)."""
    return [axis.get_title() for axis in fig.axes if axis.get_title()]
