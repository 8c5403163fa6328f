"""Draw what every backpressure strategy did with the same producer, as PNG charts.

The data comes from real runs of the operators: ``examples/strategies.py``
drives each one with the same bursty producer and slow consumer in virtual
time, samples its ``BackpressureMeter`` at every tick and, for the strategies
that deliver the readings themselves, records what became of each reading.

Writes to ``docs/img/``:

* ``strategy-<slug>.png``, one per strategy, every one on the same axes (time
  0-12 s with a tick each second; one scale for "held by the operator", one
  for the cumulative counts), so two charts can be compared side by side:

  - top: readings held by the operator at each moment;
  - middle: cumulative readings offered by the producer, delivered, dropped
    and held back (never sent: a lossless strategy asked the producer for less);
  - bottom, for the buffer / drop / latest family: one cell per reading, in the
    order produced, coloured by its fate (delivered, dropped, expired, still held).

* ``strategy-items.png``: those cell strips stacked, one row per strategy, so
  *which* readings survive (DROP_OLDEST vs DROP_NEWEST vs LATEST...) shows at a glance.

Needs matplotlib (the ``docs`` extra). Run ``python scripts/plot_strategies.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from strategies import (  # noqa: E402
    BURST_EVERY,
    BURST_SIZE,
    STRATEGIES,
    TICK,
    Strategy,
    Timeline,
    simulate,
)

SECONDS = 12.0
COMPARED_BURSTS = 3  # bursts shown in strategy-items.png (cells wide enough to count)
DPI = 100

# What became of a reading -> (legend label, colour). Drop reasons not listed are "dropped".
FATES: dict[str, tuple[str, str]] = {
    "delivered": ("delivered", "#2ca02c"),
    "dropped": ("dropped", "#d62728"),
    "ttl": ("expired (ttl)", "#9467bd"),
    "held": ("still held at the end", "#9ecae1"),
}
FATE_ORDER = list(FATES)
# Cumulative series: (Timeline attribute, label, colour, line style).
COUNTS = (
    ("offered", "offered by the producer", "#000000", (0, (4, 2))),
    ("delivered", "delivered", FATES["delivered"][1], "-"),
    ("dropped", "dropped", FATES["dropped"][1], "-"),
    ("held_back", "held back (never sent)", "#ff7f0e", "-"),
)
DEPTH_COLOUR = "#1f77b4"
FOLDED_COLOUR = "#17becf"


def slug(name: str) -> str:
    """A file-name-safe version of a strategy's name."""
    head, _, args = name.partition("(")
    parts = [re.sub(r"[^a-z0-9]+", "-", head.lower()).strip("-")]
    args = re.sub(r"[^a-z0-9]+", "-", args.lower()).strip("-")
    if args:
        parts.append(args)
    return "-".join(parts)


def fate_code(fate: str) -> int:
    """The index of ``fate`` in ``FATE_ORDER`` (any drop reason but ttl is "dropped")."""
    return FATE_ORDER.index(fate if fate in FATES else "dropped")


def _shade_bursts(ax: Axes) -> None:
    burst = 3 * TICK  # three ticks of BURST_SIZE // 3 readings
    start = 0.0
    while start < SECONDS:
        ax.axvspan(start, start + burst, color="#000000", alpha=0.08, lw=0)
        start += BURST_EVERY


def _time_axis(ax: Axes) -> None:
    ax.set_xlim(0, SECONDS)
    ax.set_xticks([float(s) for s in range(int(SECONDS) + 1)])
    ax.grid(axis="both", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    _shade_bursts(ax)


def _strip(ax: Axes, fates: dict[int, str], total: int, *, edges: bool = False) -> None:
    """One cell per reading (x = its id, in the order produced), coloured by its fate.

    Ticks above and below the strip mark where a burst starts; ``edges`` draws a
    thin line between cells (for strips wide enough to count them).
    """
    codes = [[fate_code(fates[i]) for i in range(total)]]
    cmap = ListedColormap([FATES[f][1] for f in FATE_ORDER])
    ax.pcolormesh(
        [i - 0.5 for i in range(total + 1)],
        [0, 1],
        codes,
        cmap=cmap,
        vmin=-0.5,
        vmax=len(FATE_ORDER) - 0.5,
        edgecolors="#ffffff" if edges else "face",
        linewidth=0.4 if edges else 0,
    )
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, total - 0.5)
    bursts = range(total // BURST_SIZE)
    ax.set_xticks([b * BURST_SIZE - 0.5 for b in bursts], minor=True)
    ax.tick_params(axis="x", which="minor", length=7, width=1.2, top=edges, direction="out")
    ax.set_xticks(
        [b * BURST_SIZE + BURST_SIZE / 2 - 0.5 for b in bursts],
        [
            f"burst {b + 1} (t={b * BURST_EVERY:g} s)\nreadings {b * BURST_SIZE}-"
            f"{(b + 1) * BURST_SIZE - 1}"
            for b in bursts
        ],
        fontsize=7,
    )
    ax.tick_params(axis="x", which="major", length=0)


def _fate_legend(fates: set[str]) -> list[Patch]:
    present = {fate_code(f) for f in fates}
    return [
        Patch(color=FATES[FATE_ORDER[code]][1], label=FATES[FATE_ORDER[code]][0])
        for code in sorted(present)
    ]


def _fate_summary(timeline: Timeline) -> str:
    counts: dict[str, int] = {}
    for fate in timeline.fates.values():
        label = FATES[FATE_ORDER[fate_code(fate)]][0]
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{label} {counts[label]}" for label, _ in FATES.values() if label in counts)


def chart(strategy: Strategy, timeline: Timeline, depth_top: int, count_top: int) -> Figure:
    """One strategy's chart, on the shared scales ``depth_top`` and ``count_top``."""
    strip = bool(timeline.fates)
    fig = plt.figure(figsize=(8.0, 5.3 if strip else 4.3))
    outer = fig.add_gridspec(2 if strip else 1, 1, height_ratios=[2.6, 0.5] if strip else [1])
    outer.update(hspace=0.42)
    inner = outer[0].subgridspec(2, 1, height_ratios=[1.0, 1.6], hspace=0.1)
    depth_ax, count_ax = fig.add_subplot(inner[0]), fig.add_subplot(inner[1])
    fig.suptitle(
        f"{strategy.name}: {strategy.meaning}", x=0.01, ha="left", fontsize=11, weight="bold"
    )

    _time_axis(depth_ax)
    depth_ax.fill_between(
        timeline.times, timeline.depth, step="post", color=DEPTH_COLOUR, alpha=0.35, lw=0
    )
    depth_ax.step(timeline.times, timeline.depth, where="post", color=DEPTH_COLOUR, lw=1.2)
    depth_ax.set_ylim(0, depth_top)
    depth_ax.set_ylabel("held by\nthe operator", fontsize=8)
    depth_ax.tick_params(labelbottom=False, labelsize=8)
    depth_ax.text(
        0.995,
        0.93,
        f"peak {timeline.peak_depth}",
        transform=depth_ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        color=DEPTH_COLOUR,
    )

    _time_axis(count_ax)
    for key, label, colour, style in COUNTS:
        values: list[int] = getattr(timeline, key)
        if key in ("dropped", "held_back") and not values[-1]:
            continue  # a lossless strategy drops nothing; a lossy one holds nothing back
        text = f"{label}: {values[-1]}"
        if key == "dropped" and set(timeline.reasons) == {"reduced"}:
            # Nothing is lost: each of these readings was added into a delivered sum.
            text, colour = f"folded into a delivered sum: {values[-1]}", FOLDED_COLOUR
        elif key == "dropped":
            text += " (" + ", ".join(f"{k} {v}" for k, v in sorted(timeline.reasons.items())) + ")"
        count_ax.step(
            timeline.times,
            values,
            where="post",
            color=colour,
            lw=1.1 if key == "offered" else 1.8,
            ls=style,
            label=text,
        )
    count_ax.set_ylim(0, count_top)
    count_ax.set_ylabel("readings\n(cumulative)", fontsize=8)
    count_ax.set_xlabel("virtual time, s (grey bands: the producer's bursts)", fontsize=8)
    count_ax.tick_params(labelsize=8)
    count_ax.legend(loc="upper left", fontsize=8, frameon=True, framealpha=0.9)

    if strip:
        strip_ax = fig.add_subplot(outer[1])
        _strip(strip_ax, timeline.fates, len(timeline.fates))
        strip_ax.set_title(
            f"each reading, in the order produced: {_fate_summary(timeline)}",
            fontsize=8,
            loc="left",
        )
    fig.subplots_adjust(left=0.1, right=0.98, top=0.91, bottom=0.1 if strip else 0.12)
    return fig


def comparison(strategies: Sequence[Strategy], timelines: Sequence[Timeline]) -> Figure:
    """The item strips of the buffer / drop / latest family, one row each, on one axis."""
    rows = [(s, t) for s, t in zip(strategies, timelines, strict=True) if t.fates]
    total = COMPARED_BURSTS * BURST_SIZE
    fig, axes = plt.subplots(len(rows), 1, figsize=(9.5, 0.55 * len(rows) + 1.3), sharex=True)
    fig.suptitle(
        f"Which readings reach the consumer: one cell per reading, the first {COMPARED_BURSTS} "
        f"bursts of {BURST_SIZE}\n(the later bursts repeat the pattern)",
        x=0.01,
        ha="left",
        fontsize=10,
        weight="bold",
    )
    seen: set[str] = set()
    for ax, (strategy, timeline) in zip(axes, rows, strict=True):
        shown = {i: fate for i, fate in timeline.fates.items() if i < total}
        _strip(ax, shown, total, edges=True)
        ax.set_ylabel(
            strategy.name.replace("on_backpressure_", ""),
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
        )
        ax.tick_params(labelbottom=ax is axes[-1])
        delivered = sum(1 for fate in shown.values() if fate == "delivered")
        ax.text(
            1.01,
            0.5,
            f"{delivered} of {total}\ndelivered",
            transform=ax.transAxes,
            va="center",
            fontsize=8,
        )
        seen.update(shown.values())
    fig.legend(
        handles=_fate_legend(seen),
        loc="lower center",
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    fig.subplots_adjust(left=0.27, right=0.9, top=0.88, bottom=0.12, hspace=0.25)
    return fig


def _round_up(value: int, step: int) -> int:
    return max(step, -(-value // step) * step)


def main() -> int:
    """Simulate every strategy and write its chart, then the comparison of the strips."""
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    timelines = [simulate(strategy, SECONDS) for strategy in STRATEGIES]
    # One scale for every chart: the largest value any strategy reached.
    depth_top = _round_up(max(max(t.depth) for t in timelines) + 2, 5)
    count_top = _round_up(max(t.offered[-1] for t in timelines) + 5, 20)
    for strategy, timeline in zip(STRATEGIES, timelines, strict=True):
        fig = chart(strategy, timeline, depth_top, count_top)
        path = out / f"strategy-{slug(strategy.name)}.png"
        fig.savefig(path, dpi=DPI, metadata={"Software": None})
        plt.close(fig)
        print(f"wrote {path.relative_to(ROOT)}")
    fig = comparison(STRATEGIES, timelines)
    path = out / "strategy-items.png"
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
