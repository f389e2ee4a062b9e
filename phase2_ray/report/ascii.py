"""The text primitives of report.md's fenced blocks: number cells, bars, a line chart, and wrapping to WIDTH."""

from __future__ import annotations

import math
import textwrap

WIDTH = 100  # report.md's ASCII sections fit this many columns
CURVE_MARKS = "*o+x%@"


def fmt(x, digits: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "not measured"
    return f"{x:,.{digits}f}{unit}"


def bar(value: float | None, scale: float, width: int = 40, ch: str = "■") -> str:
    if value is None or not scale:
        return ""
    return ch * max(1, round(width * value / scale))


def pct(a, b) -> str:
    """Relative change from a to b in percent, signed."""
    if a is None or b is None or not a:
        return "n/a"
    return f"{(b - a) / a * 100:+.1f}%"


def fit(lines: list[str], width: int = WIDTH) -> list[str]:
    """Lines of an ASCII block wrapped to `width` (continuations indented under their line's own indent): names
    and numbers vary in width from run to run and machine to machine."""
    out = []
    for ln in lines:
        indent = " " * (len(ln) - len(ln.lstrip()) + 4)
        out += textwrap.wrap(ln, width, subsequent_indent=indent) if len(ln) > width else [ln]
    return out


def columns(values: list[float], width: int) -> list[float]:
    """`values` resampled to `width` columns, each the mean of the values that fall in it."""
    out = []
    for i in range(width):
        lo = i * len(values) // width
        chunk = values[lo : max((i + 1) * len(values) // width, lo + 1)]
        out.append(sum(chunk) / len(chunk))
    return out


def line_chart(curves: dict[str, list[float]], width: int, height: int) -> tuple[list[str], str]:
    """(chart lines, legend) of `curves` over steps 1..N: one mark per curve, `#` where two meet. Each curve is
    averaged per column, so the chart shows the trend, not per-step noise."""
    steps = max(len(c) for c in curves.values())
    cols = {v: columns(c, width) for v, c in curves.items()}
    lo = min(min(c) for c in cols.values())
    hi = max(max(c) for c in cols.values())
    span = hi - lo or 1.0
    grid = [[" "] * width for _ in range(height)]
    for k, c in enumerate(cols.values()):
        for x, y in enumerate(c):
            row = height - 1 - round((y - lo) / span * (height - 1))
            grid[row][x] = "#" if grid[row][x] not in (" ", CURVE_MARKS[k]) else CURVE_MARKS[k]
    lines = [f"{hi - i * span / (height - 1):7.3f} │{''.join(row)}" for i, row in enumerate(grid)]
    lines.append("        └" + "─" * width)
    lines.append(f"         step 1{' ' * (width - 12 - len(str(steps)))}step {steps}")
    legend = "   ".join(f"{CURVE_MARKS[k]} {v}" for k, v in enumerate(cols)) + "   # overlap"
    return lines, legend
