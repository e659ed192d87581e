"""report.html against metrics.json: every number in the main tables is the metrics.json value to the
precision shown (a tiny value is never shown as 0), and strings a user controls (labels, group values,
image paths, the run's folder) show as text, never as markup.

The audit is the synthetic planted-bias one (synth.py) with an XSS payload as one label, one group
value, one image path and the run folder's name.
"""

from __future__ import annotations

import csv
import json
import math
import re
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from biasscope.audit import AuditConfig, load_manifest, run_audit
from biasscope.formatting import fmt_interval, fmt_number, fmt_p, fmt_rate
from tests.audit.synth import CONCEPTS, make_adapter, write_dataset

LABEL = "<script>alert('nurse')</script>"
GROUP = '"><img src=x onerror=alert(1)>'
PATH = "img/x<svg onload=alert(2)>.png"
RUN = "run<svg onload=alert(3)>"


@pytest.fixture(scope="module")
def audit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    base = tmp_path_factory.mktemp("report")
    src = write_dataset(base / "data", n_per_cell=12, seed=3, broken=1)
    with src.open(newline="") as f:
        rows = list(csv.reader(f))
    for r in rows[1:]:
        r[1] = LABEL if r[1] == "nurse" else r[1]
        r[2] = GROUP if r[2] == "female" else r[2]
        if "broken" in r[0]:  # the unreadable image gets the payload path (listed in the report's errors)
            (base / "data" / r[0]).rename(base / "data" / PATH)
            r[0] = PATH
    with src.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    concepts = {"doctor": CONCEPTS["doctor"], LABEL: CONCEPTS["nurse"]}
    cfg = AuditConfig(groups=["gender"], methods=["gradcam"], concepts=concepts)
    run_audit(load_manifest(src, groups=["gender"]), [make_adapter(2.0, "biased"), make_adapter(0.0, "fair")],
              base / RUN, cfg, batch_size=16, metrics_options={"n_boot": 200, "n_perm": 200, "min_group_size": 5,
                                                               "stereotypical": ["doctor:male", f"{LABEL}:{GROUP}"]})
    page = (base / RUN / "report.html").read_text(encoding="utf-8")
    return base / RUN, json.loads((base / RUN / "metrics.json").read_text()), page


class _Page(HTMLParser):
    """Tables as lists of rows of cell texts, every tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    return p


def _close(text: str, value: float | None, pct: bool = False) -> None:
    """``text`` shows ``value``: equal to half a unit of its last digit, nonzero when the value is."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        assert text in ("n/a", "nan"), text
        return
    t = text.removesuffix("%")
    shown = Decimal(t)
    unit = Decimal(1).scaleb(shown.as_tuple().exponent)
    want = 100 * value if pct else value
    assert abs(float(shown) - want) <= float(unit) / 2 * (1 + 1e-9), (text, value)
    assert (float(shown) == 0) == (want == 0), (text, value)


_NUM = r"-?\d+(?:\.\d+)?(?:e[-+]\d+)?%?|n/a"


def _nums(text: str) -> list[str]:
    return re.findall(_NUM, text)


def _tables_with(p: _Page, head: list[str]) -> list[list[list[str]]]:
    return [t for t in p.tables if t and t[0] == head]


def test_formatting_rules_by_hand() -> None:
    assert fmt_number(2.4e-4) == "2.40e-04" and fmt_number(0.0123) == "0.012" and fmt_number(None) == "n/a"
    assert fmt_number(float("nan"), pct=True) == "n/a" and fmt_number(-0.0004, pct=True) == "-4.0e-02%"
    assert fmt_interval([0.1, None]) == "[0.100, n/a]" and fmt_interval(None) == "[n/a, n/a]"
    assert fmt_interval([1e-4, 0.5], pct=True) == "[1.0e-02%, 50.0%]"
    assert fmt_rate(0.003) == "3.00e-03" and fmt_rate(0.0) == "0.0000" and fmt_rate(0.25) == "0.2500"
    assert fmt_interval([0.003, 0.25], rate=True) == "[3.00e-03, 0.2500]"
    assert fmt_p(0.000892) == "0.000892" and fmt_p(None) == "nan"


def test_comparison_and_group_tables_match_metrics_json(audit) -> None:
    _, metrics, page = audit
    p = _parse(page)
    comp = _tables_with(p, ["model", "n", "accuracy", "top-k", "mean p(true)", "accuracy gap [95% CI]",
                            "flagged gaps", "bias score", "errors"])
    assert len(comp) == 1 and [r[0] for r in comp[0][1:]] == list(metrics["comparison"])
    for row, c in zip(comp[0][1:], metrics["comparison"].values()):
        assert row[1] == str(c["n"]) and row[6] == str(c["n_flagged"]) and row[8] == str(c["n_errors"])
        _close(row[2], c["accuracy"], pct=True)
        _close(row[3], c["accuracy_topk"], pct=True)
        _close(row[4], c["mean_p_true"])
        gap_nums = _nums(row[5])
        assert len(gap_nums) == 3 * len(c["accuracy_gaps"]) > 0
        for k, g in enumerate(c["accuracy_gaps"]):
            for text, v in zip(gap_nums[3 * k:3 * k + 3], (g["difference"], *g["ci"])):
                _close(text, v)
        for text, v in zip(_nums(row[7]), (c["bias_score"], *c["bias_score_ci"]), strict=True):
            _close(text, v)
    # per group: one table per model and grouping, in metrics.json's order
    by_group = _tables_with(p, ["group", "n", "accuracy", "top-1", "top-k", "mean p(true)"])
    entries = [e for mm in metrics["models"].values() for e in mm["groupings"].values()]
    assert len(by_group) == len(entries) == 2
    for table, entry in zip(by_group, entries):
        assert [r[0] for r in table[1:]] == list(entry["by_group"])
        for row, v in zip(table[1:], entry["by_group"].values()):
            assert row[1] == str(v["n"])
            for text, key in zip(row[2:5], ("accuracy", "accuracy_top1", "accuracy_topk")):
                _close(text, v[key], pct=True)
            _close(row[5], v["mean_p_true"])
    # label x group cells
    cells = _tables_with(p, ["label", "group", "n", "accuracy", "mean p(true)"])
    assert len(cells) == 2
    for table, entry in zip(cells, entries):
        want = [(lab, g, v) for lab, le in entry["by_label"].items() for g, v in le["by_group"].items()]
        assert [tuple(r[:2]) for r in table[1:]] == [(lab, g) for lab, g, _ in want]
        for row, (_, _, v) in zip(table[1:], want):
            assert row[2] == str(v["n"])
            _close(row[3], v["accuracy"], pct=True)
            _close(row[4], v["mean_p_true"])


def _cell_nums(text: str) -> list[str]:
    """mean [lo, hi] (n=N) -> [mean, lo, hi] ('-' when there is no value)."""
    return [] if text == "-" or text.startswith("- ") else _nums(text.split("(n=")[0])


def test_region_cell_tables_match_metrics_json(audit) -> None:
    _, metrics, page = audit
    p = _parse(page)
    tables = _tables_with(p, ["quantity", "label", "group", "n images", "mean [95% CI]", "when correct",
                              "when wrong"])
    want = [cells for mm in metrics["models"].values() for entry in mm["groupings"].values()
            for cells in ((entry.get("regions") or {}).get("cells"), (entry.get("faithfulness") or {}).get("cells"))
            if cells]
    assert len(tables) == len(want) == 2
    n_checked = 0
    for table, cells in zip(tables, want):
        rows = [(lab, gval, c, cell["by_outcome"]) for per_label in cells.values() for lab, cell in per_label.items()
                for gval, c in cell["by_group"].items()]
        assert len(table) - 1 == len(rows)
        for row, (lab, gval, c, outcome) in zip(table[1:], rows):
            assert row[1:4] == [lab, gval, str(c["n"])]
            for text, cell in ((row[4], c), (row[5], outcome["correct"].get(gval)),
                               (row[6], outcome["wrong"].get(gval))):
                if not cell or cell.get("mean") is None:
                    assert _cell_nums(text) == [], text
                    continue
                assert f"(n={cell['n']})" in text or text == row[4]
                for shown, v in zip(_cell_nums(text), (cell["mean"], *cell["ci"]), strict=True):
                    _close(shown, v)
                    n_checked += 1
    assert n_checked > 50


def test_gap_tables_match_metrics_json(audit) -> None:
    _, metrics, page = audit
    p = _parse(page)
    head = ["metric", "highest", "lowest", "difference", "95% CI", "ratio", "ratio CI", "p", "p (Holm)", "verdict"]
    tables = _tables_with(p, head)
    # per model and grouping: all labels, then within labels, then within-label tests of regions
    want: list[list[dict]] = []
    for mm in metrics["models"].values():
        for entry in mm["groupings"].values():
            if entry.get("gaps"):
                want.append(list(entry["gaps"].values()))
            want.append([g for le in entry["by_label"].values() for g in le.get("gaps", {}).values()])
            region_gaps = [cell["gap"] for per_label in entry["regions"]["cells"].values()
                           for cell in per_label.values() if cell.get("gap")]
            if region_gaps:
                want.append(region_gaps)
    assert [len(t) - 1 for t in tables] == [len(w) for w in want]
    assert sum(map(len, want)) > 10
    for table, gaps in zip(tables, want):
        for row, g in zip(table[1:], gaps):
            pct = g["metric"].startswith("accuracy")
            assert row[1].startswith(f"{g['high_group']} ") and row[2].startswith(f"{g['low_group']} ")
            _close(_nums(row[1].removeprefix(g["high_group"]))[0], g["high"], pct)
            _close(_nums(row[2].removeprefix(g["low_group"]))[0], g["low"], pct)
            assert f"(n={g['n'][g['high_group']]})" in row[1] and f"(n={g['n'][g['low_group']]})" in row[2]
            _close(row[3], g["difference"])
            for text, v in zip(_nums(row[4]), g["difference_ci"], strict=True):
                _close(text, v)
            _close(row[7], g["p_value"])
            _close(row[8], g["p_adjusted"])
            assert ("flagged" in row[9]) == bool(g["flagged"])


def test_user_strings_are_escaped(audit) -> None:
    run, metrics, page = audit
    assert run.name == RUN and metrics["models"]["biased"]["n_errors"] == 1
    p = _parse(page)
    # no markup came from the payloads: no script element, no event-handler attribute, no injected image
    assert not [t for t, _ in p.tags if t == "script"]
    assert not [(t, a) for t, a in p.tags if any(k.startswith("on") for k in a)]
    assert all(a.get("src", "").startswith("data:image/png;base64,") for t, a in p.tags if t == "img")
    # ... and every payload reads as the text it is
    text = "".join(p.text)
    for s in (LABEL, GROUP, PATH, RUN):
        assert s in text, s
    assert "&lt;script&gt;alert(&#39;nurse&#39;)&lt;/script&gt;" in page
