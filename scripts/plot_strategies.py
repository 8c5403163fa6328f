"""Draw queue depth, delivered and dropped over time for every strategy, as SVG.

The data comes from real runs of the operators: ``examples/strategies.py``
drives each one with the same bursty producer and slow consumer in virtual
time and samples its ``BackpressureMeter`` at every tick. This script writes
one ``docs/img/strategy-<slug>.svg`` per strategy (hand-written SVG, no
plotting dependency). Run ``python scripts/plot_strategies.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

from strategies import STRATEGIES, Timeline, simulate  # noqa: E402

WIDTH, HEIGHT = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 48, 150, 28, 32
SECONDS = 12.0
SERIES = (
    ("depth", "#d62728", "queue depth (left axis)"),
    ("delivered", "#2ca02c", "delivered, cumulative"),
    ("dropped", "#7f7f7f", "dropped, cumulative"),
)


def slug(name: str) -> str:
    """A file-name-safe version of a strategy's name."""
    return re.sub(r"[^a-z0-9]+", "-", name.split("(")[0].lower()).strip("-") + (
        "-" + re.sub(r"[^a-z0-9]+", "-", name.split("(", 1)[1].lower()).strip("-")
        if "(" in name and name.split("(", 1)[1] != ")"
        else ""
    )


def _polyline(xs: list[float], ys: list[int], top: float, color: str) -> str:
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    span = xs[-1] if xs else 1.0
    points = " ".join(
        f"{LEFT + x / span * plot_w:.1f},{TOP + plot_h - (y / top) * plot_h:.1f}"
        for x, y in zip(xs, ys, strict=True)
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{points}"/>'


def svg(timeline: Timeline, meaning: str) -> str:
    """One chart: depth on its own scale, cumulative counts on a shared one."""
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    depth_top = max(1, max(timeline.depth))
    count_top = max(1, max(timeline.delivered[-1], timeline.dropped[-1]))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{timeline.name}</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 6}" fill="#555">{meaning}; '
        f"virtual seconds 0-{timeline.times[-1]:g}</text>",
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#ccc"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 4}" text-anchor="end">{depth_top}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
        f'<text x="{LEFT + plot_w + 4}" y="{TOP + 4}">{count_top} items</text>',
    ]
    tops = {"depth": depth_top, "delivered": count_top, "dropped": count_top}
    for index, (key, color, label) in enumerate(SERIES):
        values: list[int] = getattr(timeline, key)
        parts.append(_polyline(timeline.times, values, tops[key], color))
        y = TOP + 24 + index * 18
        parts.append(
            f'<line x1="{LEFT + plot_w + 6}" y1="{y}" x2="{LEFT + plot_w + 20}" y2="{y}" '
            f'stroke="{color}" stroke-width="2"/>'
        )
        parts.append(f'<text x="{LEFT + plot_w + 24}" y="{y + 4}">{label}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> int:
    """Simulate every strategy and write its chart."""
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    for strategy in STRATEGIES:
        timeline = simulate(strategy, SECONDS)
        path = out / f"strategy-{slug(strategy.name)}.svg"
        path.write_text(svg(timeline, strategy.meaning), encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
