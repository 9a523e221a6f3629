"""Server-rendered SVG bar charts: no JavaScript, no inline styles (the CSP allows neither)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

COLOURS = ("#175cd3", "#1c7c43", "#9a6200", "#b42318")


def _nice_step(value: float, *, whole: bool) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k at least ``value`` (no 2.5 for whole numbers)."""
    if value <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for factor in ((1, 2, 5, 10) if whole else (1, 2, 2.5, 5, 10)):
        step = factor * magnitude
        if step >= value - 1e-9:
            return max(step, 1.0) if whole else step
    return value  # pragma: no cover - 10 x magnitude is always enough


def bar_chart(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
    unit: str,
    width: int = 1000,
    height: int = 240,
) -> Markup:
    """Grouped bars, one group per label, one bar per series; a legend and a y axis."""
    left, right, top, bottom = 48, 12, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    values_all = [v for _, values in series for v in values]
    whole = all(float(v).is_integer() for v in values_all)
    step = _nice_step(max(values_all, default=0.0) / 4, whole=whole)
    peak = step * 4
    n = max(1, len(labels))
    group_w = plot_w / n
    bar_w = min(36.0, max(2.0, (group_w * 0.8) / max(1, len(series))))
    inset = (group_w - bar_w * len(series)) / 2
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(5):  # grid lines and y labels
        value = peak * i / 4
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
                     'stroke="#d9dee6" stroke-width="1"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="#5b6575">{value:g}</text>')
    parts.append(f'<text x="4" y="14" font-size="11" fill="#5b6575">{escape(unit)}</text>')
    every = max(1, n // 14)
    for index, label in enumerate(labels):
        x0 = left + group_w * index + inset
        for s, (name, values) in enumerate(series):
            value = values[index] if index < len(values) else 0.0
            h = plot_h * value / peak if peak else 0
            x = x0 + s * bar_w
            y = top + plot_h - h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[s % len(COLOURS)]}"><title>{escape(label)}: '
                f'{escape(name)} {value:g}</title></rect>'
            )
        if index % every == 0:
            cx = left + group_w * index + group_w / 2
            parts.append(f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                         f'font-size="11" fill="#5b6575">{escape(label)}</text>')
    lx = left
    for s, (name, _values) in enumerate(series):  # legend
        parts.append(f'<rect x="{lx}" y="{height - 14}" width="10" height="10" '
                     f'fill="{COLOURS[s % len(COLOURS)]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{height - 5}" font-size="11" '
                     f'fill="#1d2430">{escape(name)}</text>')
        lx += 24 + 7 * len(name)
    parts.append("</svg>")
    return Markup("".join(parts))
