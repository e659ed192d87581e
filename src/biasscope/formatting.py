"""Numbers and images for people, in one place: the audit report, the verification report and the
findings sentences all format through these helpers, and the report templates get them as Jinja filters.

Rules: a missing value (None or NaN) reads ``n/a``; a number that would round to 0 at the shown precision
is written in scientific notation (``2.40e-04``) so that a tiny effect never reads as none.
"""

from __future__ import annotations

import base64
import io
import math
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "FILTERS",
    "fmt_interval",
    "fmt_number",
    "fmt_p",
    "fmt_percent",
    "fmt_rate",
    "is_missing",
    "png_data_uri",
    "render_template",
    "template_environment",
]


def is_missing(x: object) -> bool:
    """None or a float NaN: a value with nothing to show."""
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_number(x: float | None, pct: bool = False) -> str:
    """A number for people: 3 decimals (or a percentage with 1), scientific notation when that would read 0."""
    if is_missing(x):
        return "n/a"
    if pct:
        return f"{100 * x:.1f}%" if x == 0 or abs(100 * x) >= 0.05 else f"{100 * x:.1e}%"
    return f"{x:.3f}" if x == 0 or abs(x) >= 0.0005 else f"{x:.2e}"


def fmt_rate(x: float | None) -> str:
    """An error rate or score of face verification: 4 decimals, scientific below 0.01 (FMRs are tiny)."""
    if is_missing(x):
        return "n/a"
    return f"{x:.2e}" if 0 < x < 1e-2 else f"{x:.4f}"


def fmt_interval(ci: Any, pct: bool = False, *, rate: bool = False) -> str:
    """``[lo, hi]`` with the same rule as :func:`fmt_number` (or :func:`fmt_rate`); missing bounds read n/a."""
    lo, hi = (list(ci) if ci else []) + [None, None][len(ci or []):]
    f = fmt_rate if rate else (lambda v: fmt_number(v, pct))
    return f"[{f(lo)}, {f(hi)}]"


def fmt_percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with a fixed number of decimals (``0.123`` -> ``12.3%``)."""
    return "n/a" if is_missing(x) else f"{x:.{digits}%}"


def fmt_p(x: float | None) -> str:
    """A p-value with 3 significant digits (``nan`` when the test could not run, as before)."""
    return f"{float('nan') if x is None else x:.3g}"


def png_data_uri(img: Any) -> str:
    """A PIL image, PNG bytes or a PNG file as a ``data:`` URI, so a page needs no other file."""
    if isinstance(img, str | Path):
        data = Path(img).read_bytes()
    elif isinstance(img, bytes):
        data = img
    else:
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


#: the filters every report template can use
FILTERS = {"num": fmt_number, "pct": lambda x: fmt_number(x, True), "rate": fmt_rate, "interval": fmt_interval,
           "percent": fmt_percent, "pval": fmt_p}


@cache
def template_environment():
    """The Jinja environment of the reports: package templates, autoescape on, the filters above."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("biasscope", "audit/templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.ChainableUndefined)
    def defined(f):  # an absent key reads like None: "n/a", never an error
        return lambda x, *a, **k: f(None if isinstance(x, jinja2.Undefined) else x, *a, **k)

    env.filters.update({name: defined(f) for name, f in FILTERS.items()})
    env.tests["missing"] = lambda x: isinstance(x, jinja2.Undefined) or is_missing(x)
    return env


def render_template(name: str, **context: Any) -> str:
    """Render one of the report templates (``audit/templates/NAME``) with ``context``."""
    return template_environment().get_template(name).render(**context)
