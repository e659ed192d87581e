"""Geometry of the report's bar charts (horizontal bars with 95% interval whiskers).

Only numbers live here; ``templates/_charts.html`` draws them as inline SVG, so the chart needs no
script and no network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..formatting import fmt_number, is_missing

__all__ = ["COLORS", "BarChart", "bar_chart"]

COLORS = ["#3b6fb6", "#d9822b", "#3a9d5d", "#b84a62", "#7d5ba6", "#8c7b3a", "#2f8f9d", "#c0504d"]


@dataclass
class BarChart:
    """Everything the SVG template needs; coordinates are pre-formatted strings (one decimal)."""

    title: str
    width: int
    height: int
    left: int
    zero: str
    axis_bottom: int
    rows: list[dict] = field(default_factory=list)
    vmin_text: str = ""
    vmax_text: str = ""
    color: str = COLORS[0]


def bar_chart(title: str, items: list[tuple[str, float | None, float | None, float | None]], *,
              vmin: float = 0.0, vmax: float = 1.0, pct: bool = True, color: str = COLORS[0]) -> BarChart:
    """Lay out ``(name, value, lo, hi)`` bars on one scale from ``vmin`` to ``vmax`` (values are clipped)."""
    width, left, row_h = 560, 170, 24
    height = 30 + row_h * len(items) + 20
    span = (vmax - vmin) or 1.0

    def x(v: float) -> float:
        return left + (min(max(v, vmin), vmax) - vmin) / span * (width - left - 60)

    zero = x(0.0) if vmin < 0 < vmax else x(vmin)
    rows = []
    for i, (name, v, lo, hi) in enumerate(items):
        y = 26 + i * row_h
        row: dict = {"y": y + 14, "name": str(name)[:28], "missing": is_missing(v)}
        if not row["missing"]:
            x0, x1 = sorted((zero, x(v)))
            row.update(x0=f"{x0:.1f}", bar_y=y + 3, bar_w=f"{max(x1 - x0, 1):.1f}", bar_h=row_h - 8,
                       text_x=f"{max(x1, x(hi) if hi is not None else x1) + 4:.1f}", text=fmt_number(v, pct))
            if lo is not None and hi is not None:
                mid = y + row_h / 2 - 1
                row["whisker"] = {"a": f"{x(lo):.1f}", "b": f"{x(hi):.1f}", "mid": mid, "top": mid - 5,
                                  "bottom": mid + 5}
        rows.append(row)
    return BarChart(title=title, width=width, height=height, left=left, zero=f"{zero:.1f}",
                    axis_bottom=height - 18, rows=rows, vmin_text=fmt_number(vmin, pct),
                    vmax_text=fmt_number(vmax, pct), color=color)
