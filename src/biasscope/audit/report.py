"""report.html: one self-contained file (inline CSS, inline SVG charts, base64 PNG thumbnails).

Nothing in the page refers to the network or to other files, so it can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import pandas as pd

from .concepts import NONE_LABEL
from .face_audit import face_report_section
from .results import fmt_number, metric_words
from .store import RunStore

__all__ = ["render_report", "write_report"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:.2em 0}h2{border-bottom:2px solid #d6dae2;padding-bottom:4px;margin-top:1.8em}
h3{margin-top:1.4em}section{background:#fff;border-radius:8px;padding:12px 20px;margin:16px 0;
box-shadow:0 1px 3px rgba(0,0,0,.08)}table{border-collapse:collapse;margin:8px 0;font-size:.9em}
td,th{border:1px solid #d6dae2;padding:4px 8px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}.flag{color:#b3261e;font-weight:600}.muted{color:#667}
.findings li{margin:4px 0}.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:340px;font-size:.8em}figure img{width:165px;height:auto;border:1px solid #ccd}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px}
.answer{background:#eef6ff;border-left:5px solid #3b6fb6}.answer li{margin:6px 0;font-size:1.02em}
details summary{cursor:pointer;font-weight:600}.st-flagged{color:#b3261e;font-weight:600}
.st-small,.st-degenerate{color:#8a6d00}.howto li{margin:3px 0}section>h2:first-child{margin-top:.4em}
"""

#: below this probability a heatmap explains a class the model does not predict (warned about)
LOW_PROBABILITY = 1e-3
#: above this relative completeness error an Integrated Gradients map is flagged as unreliable
COMPLETENESS_LIMIT = 0.10

_COLORS = ["#3b6fb6", "#d9822b", "#3a9d5d", "#b84a62", "#7d5ba6", "#8c7b3a", "#2f8f9d", "#c0504d"]


def _e(x: object) -> str:
    return html.escape(str(x))


def _num(x: float | None, pct: bool = False) -> str:
    return fmt_number(x, pct)


def _svg_bars(title: str, items: list[tuple[str, float | None, float | None, float | None]], *,
              vmin: float = 0.0, vmax: float = 1.0, pct: bool = True, color: str = _COLORS[0]) -> str:
    """Horizontal bars with 95% interval whiskers: items are ``(name, value, lo, hi)``."""
    width, left, row_h = 560, 170, 24
    height = 30 + row_h * len(items) + 20
    span = (vmax - vmin) or 1.0

    def x(v: float) -> float:
        return left + (min(max(v, vmin), vmax) - vmin) / span * (width - left - 60)

    parts = [f'<svg width="{width}" height="{height}" role="img" '
             f'aria-label="{_e(title)}"><text x="4" y="16" font-size="13" font-weight="600">{_e(title)}</text>']
    zero = x(0.0) if vmin < 0 < vmax else x(vmin)
    parts.append(f'<line x1="{zero:.1f}" y1="22" x2="{zero:.1f}" y2="{height - 18}" stroke="#999"/>')
    for i, (name, v, lo, hi) in enumerate(items):
        y = 26 + i * row_h
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="12" text-anchor="end">{_e(name)[:28]}</text>')
        if v is None or (isinstance(v, float) and math.isnan(v)):
            parts.append(f'<text x="{left + 4}" y="{y + 14}" font-size="11" fill="#888">n/a</text>')
            continue
        x0, x1 = sorted((zero, x(v)))
        parts.append(f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" height="{row_h - 8}" '
                     f'fill="{color}" opacity="0.8"/>')
        if lo is not None and hi is not None:
            a, b = x(lo), x(hi)
            mid = y + row_h / 2 - 1
            parts.append(f'<line x1="{a:.1f}" y1="{mid}" x2="{b:.1f}" y2="{mid}" stroke="#222" stroke-width="1.5"/>'
                         f'<line x1="{a:.1f}" y1="{mid - 5}" x2="{a:.1f}" y2="{mid + 5}" stroke="#222"/>'
                         f'<line x1="{b:.1f}" y1="{mid - 5}" x2="{b:.1f}" y2="{mid + 5}" stroke="#222"/>')
        parts.append(f'<text x="{max(x1, x(hi) if hi is not None else x1) + 4:.1f}" y="{y + 14}" font-size="11">'
                     f'{_num(v, pct)}</text>')
    axis_y = height - 6
    parts.append(f'<text x="{left}" y="{axis_y}" font-size="10" fill="#666">{_num(vmin, pct)}</text>'
                 f'<text x="{width - 60}" y="{axis_y}" font-size="10" fill="#666" text-anchor="end">'
                 f'{_num(vmax, pct)}</text></svg>')
    return "".join(parts)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _png_b64(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _telling_images(df: pd.DataFrame, model: str, stereotypical: list[str], group: str | None,
                    limit: int = 8) -> pd.DataFrame:
    """Misclassified images first (atypical ones before stereotypical), lowest true-label probability first."""
    sub = df[(df["model"] == model) & (df["status"] == "ok")].copy()
    if sub.empty:
        return sub
    cells = {tuple(s.split(":", 1)) for s in stereotypical}
    labels = {c[0] for c in cells}
    if group and cells:
        sub["_atypical"] = [lab in labels and (lab, str(g)) not in cells for lab, g in zip(sub["label"], sub[group])]
    else:
        sub["_atypical"] = False
    sub["_wrong"] = ~sub["correct"].astype(bool)
    return sub.sort_values(["_wrong", "_atypical", "p_true"], ascending=[False, False, True]).head(limit)


def _gallery(run_dir: Path, df: pd.DataFrame, model: str, metrics: dict, groups: list[str]) -> str:
    from ..explainers import is_signed
    from ..images import load_image
    from ..render import render_overlay
    from .face_audit import heatmap_in_image

    opts = metrics["run"].get("metrics_options", {})
    methods = metrics["run"]["config"].get("methods", [])
    store = RunStore(run_dir)
    group = opts.get("bias_group") or (groups[0] if groups else None)
    picks = _telling_images(df, model, opts.get("stereotypical", []), group)
    files = {r["image_id"]: r["file"] for r in store.images()}
    figs = []
    for _, row in picks.iterrows():
        try:
            img = load_image(files[int(row["image_id"])])
        except Exception:
            continue
        full = img.size
        img.thumbnail((165, 165))
        tiles = [f'<img alt="original" src="{_png_b64(img)}">']
        for m in methods[:1]:
            heat = store.heatmap(model, int(row["image_id"]), m)
            if heat is None:
                continue
            view = (store.record(model, int(row["image_id"])) or {}).get("view")  # a face chip's place
            h = heatmap_in_image(heat, view, (img.height, img.width), full)
            signed = is_signed(m, metrics["run"]["config"].get("method_params"))
            tiles.append(f'<img alt="{_e(m)} heatmap" src="{_png_b64(render_overlay(img, h, signed=signed))}">')
        grp = ", ".join(f"{g}={_e(row[g])}" for g in groups)
        verdict = "correct" if row["correct"] else "<span class='flag'>wrong</span>"
        extra = ""
        share_cols = [c for c in row.index if c.startswith("ratio:") and isinstance(row[c], float)
                      and not math.isnan(row[c])]
        if share_cols:
            extra = "<br>" + ", ".join(f"{_e(c.split(':', 2)[2])}: {row[c]:.2f}x area" for c in share_cols[:4])
        cautions = []
        if isinstance(row.get("p_true"), float) and row["p_true"] < LOW_PROBABILITY:
            cautions.append(f"the explained label has p = {_num(row['p_true'])} (< {LOW_PROBABILITY:g}): the heatmap "
                            "explains a class the model does not see here")
        ce = row.get("faith:integrated_gradients:completeness_relative")
        if isinstance(ce, float) and not math.isnan(ce) and ce > COMPLETENESS_LIMIT:
            cautions.append(f"IG completeness error {100 * ce:.0f}% (> {100 * COMPLETENESS_LIMIT:.0f}%): "
                            "the IG map is unreliable")
        if cautions:
            extra += "<br><span class='warn'>" + "; ".join(_e(c) for c in cautions) + "</span>"
        figs.append(
            f"<figure>{''.join(tiles)}<figcaption><b>{_e(row['path'])}</b><br>label {_e(row['label'])} ({grp}); "
            f"predicted class <b>{_e(row['pred_class'])}</b> (p {_num(row.get('pred_prob'))}), "
            f"{'matching no task label' if row['pred_label'] == NONE_LABEL else 'counted as ' + _e(row['pred_label'])}"
            f" ({verdict}); "
            f"p(true) {_num(row['p_true'])}{'; atypical' if row['_atypical'] else ''}{extra}</figcaption></figure>"
        )
    if not figs:
        return "<p class='muted'>No images to show.</p>"
    return "<div class='gallery'>" + "".join(figs) + "</div>"


_STATUS = {"flagged": "<span class='st-flagged'>flagged</span>",
           "too small": "<span class='st-small'>significant, below minimum effect</span>",
           "degenerate": "<span class='st-degenerate'>degenerate (both 0)</span>",
           "not significant": "<span class='muted'>not significant</span>"}


def _ratio_cell(g: dict) -> tuple[str, str]:
    """Ratio and its interval, or why there is none."""
    ratio = g.get("ratio")
    if ratio is None or (isinstance(ratio, float) and math.isnan(ratio)):
        return "n/a", _e(g.get("ratio_note") or "")
    rci = g.get("ratio_ci") or [None, None]
    if rci[0] is None or (isinstance(rci[0], float) and math.isnan(rci[0])):
        return _num(ratio), f"<span class='muted'>{_e(g.get('ratio_note') or 'n/a')}</span>"
    return _num(ratio), f"[{_num(rci[0])}, {_num(rci[1])}]"


def _gap_rows(gaps: dict) -> list[list[str]]:
    rows = []
    for metric, g in gaps.items():
        lo, hi = g["difference_ci"]
        status = _STATUS.get(g.get("status") or ("flagged" if g.get("flagged") else "not significant"), "")
        pct = g["metric"].startswith("accuracy") or g["metric"] in ("selection_rate", "fpr", "fnr")
        n = g.get("n") or {}
        ratio, rci = _ratio_cell(g)
        rows.append([_e(metric_words(g.get("metric", metric))),
                     f"{_e(g['high_group'])} {_num(g['high'], pct)} (n={n.get(g['high_group'], '?')})",
                     f"{_e(g['low_group'])} {_num(g['low'], pct)} (n={n.get(g['low_group'], '?')})",
                     _num(g["difference"]), f"[{_num(lo)}, {_num(hi)}]", ratio, rci, f"{g['p_value']:.3g}",
                     f"{g.get('p_adjusted', float('nan')):.3g}", status])
    return rows


_GAP_HEAD = ["metric", "highest", "lowest", "difference", "95% CI", "ratio", "ratio CI", "p", "p (Holm)", "verdict"]


def _cell_value(c: dict | None, pct: bool = False) -> str:
    if not c or c.get("mean") is None:
        return "<span class='muted'>-</span>"
    lo, hi = c.get("ci") or [None, None]
    return f"{_num(c['mean'], pct)} <span class='muted'>[{_num(lo, pct)}, {_num(hi, pct)}]</span>"


def _cells_section(title: str, cells: dict, note: str, pct_share: bool = False) -> str:
    """A table of per label x group cells (mean [CI], n, correct vs wrong) and a table of the within-label tests."""
    if not cells:
        return ""
    rows, gaps = [], {}
    for col, per_label in cells.items():
        for lab, cell in per_label.items():
            for gval, c in cell["by_group"].items():
                ok = cell["by_outcome"]["correct"].get(gval) or {}
                bad = cell["by_outcome"]["wrong"].get(gval) or {}
                rows.append([_e(metric_words(col)), _e(lab), _e(gval), str(c["n"]), _cell_value(c),
                             f"{_cell_value(ok)} (n={ok.get('n', 0)})", f"{_cell_value(bad)} (n={bad.get('n', 0)})"])
            if cell.get("gap"):
                gaps[f"{lab}|{col}"] = cell["gap"]
    out = [f"<h4>{_e(title)}</h4><p class='muted'>{_e(note)}</p>",
           _table(["quantity", "label", "group", "n images", "mean [95% CI]", "when correct", "when wrong"], rows)]
    if gaps:
        grows = _gap_rows(gaps)
        for r, key in zip(grows, gaps):
            r[0] = f"{_e(key.split('|', 1)[0])}: {r[0]}"
        out.append("<p class='muted'>Group differences within each label:</p>" + _table(_GAP_HEAD, grows))
    return "".join(out)


def _region_charts(cells: dict) -> str:
    """Share / area and removal-effect bars per label x group; charts of the same quantity share one scale."""
    parts = []
    for prefix, title, signed in (("ratio:", "Share / area", False), ("removal:", "Removal effect on p(true)", True)):
        cols = [c for c in cells if c.startswith(prefix)]
        vals = [abs(v) for c in cols for cell in cells[c].values() for g in cell["by_group"].values()
                for v in (g.get("mean"), *(g.get("ci") or [])) if v is not None]
        if not vals:
            continue
        top = max([*vals, 1.0 if not signed else 0.05])
        for c in cols:
            items = [(f"{lab} x {gval} (n={g['n']})", g.get("mean"), *(g.get("ci") or [None, None]))
                     for lab, cell in cells[c].items() for gval, g in cell["by_group"].items()]
            where = c.split(":", 2)
            name = f"region {where[-1]}" + (f" ({where[1]})" if len(where) == 3 else "")
            parts.append(_svg_bars(f"{title}, {name}, 95% CI (same scale)", items, vmin=-top if signed else 0.0,
                                   vmax=top, pct=False, color=_COLORS[2]))
    return "".join(parts)


def _warnings_block(mm: dict) -> str:
    groups = mm.get("warning_groups")
    if groups is None:
        groups = [{"title": "Warnings", "items": list(mm.get("warnings", []))}] if mm.get("warnings") else []
    if not groups:
        return ""
    n = sum(len(g["items"]) for g in groups)
    body = "".join(f"<p><b>{_e(g['title'])}</b> ({len(g['items'])}): " + "; ".join(_e(i) for i in g["items"]) + "</p>"
                   for g in groups)
    return f"<details class='warn'><summary>{n} warning(s), grouped</summary>{body}</details>"


def _model_section(run_dir: Path, key: str, mm: dict, df: pd.DataFrame, metrics: dict, groups: list[str]) -> str:
    parts = [f"<section><h2>Model {_e(key)}: evidence</h2>"]
    answer = set(mm.get("answer", []))
    rest = [f for f in mm.get("findings", [])[1:] if f not in answer and not f.startswith("Bias score (")]
    if rest:
        parts.append("<h3>Findings</h3><ul class='findings'>" + "".join(f"<li>{_e(f)}</li>" for f in rest) + "</ul>")
    for gname, entry in mm.get("groupings", {}).items():
        parts.append(f"<h3>By {_e(gname)}</h3>")
        bg, cis = entry["by_group"], entry.get("by_group_ci", {})
        for metric, title in (("accuracy", "Accuracy"), ("mean_p_true", "Mean probability of the true label")):
            items = [(g, v.get(metric), *(cis.get(g, {}).get(metric) or [None, None])) for g, v in bg.items()]
            parts.append(_svg_bars(f"{title} by {gname} (95% CI)", items, pct=metric == "accuracy"))
        parts.append(_table(["group", "n", "accuracy", "top-1", "top-k", "mean p(true)"],
                            [[_e(g), str(v.get("n")), _num(v.get("accuracy"), True), _num(v.get("accuracy_top1"), True),
                              _num(v.get("accuracy_topk"), True), _num(v.get("mean_p_true"))] for g, v in bg.items()]))
        if entry.get("gaps"):
            parts.append("<h4>Gaps between groups (all labels)</h4>" + _table(_GAP_HEAD, _gap_rows(entry["gaps"])))
        cell_rows, cell_gaps = [], []
        for lab, le in entry.get("by_label", {}).items():
            for g, v in le["by_group"].items():
                cell_rows.append([_e(lab), _e(g), str(v.get("n")), _num(v.get("accuracy"), True),
                                  _num(v.get("mean_p_true"))])
            for r in _gap_rows(le.get("gaps", {})):
                r[0] = f"{_e(lab)}: {r[0]}"
                cell_gaps.append(r)
        if cell_rows:
            parts.append("<h4>Label × group cells</h4>" + _table(["label", "group", "n", "accuracy", "mean p(true)"],
                                                                 cell_rows))
            parts.append(_table(_GAP_HEAD, cell_gaps))
        c_rows = []
        for lab, ce in entry.get("concepts", {}).items():
            for g, v in ce["by_group"].items():
                c_rows.append([_e(lab), _e(g), _num(v.get("selection_rate"), True), _num(v.get("fpr"), True),
                               _num(v.get("fnr"), True), _num(ce.get("demographic_parity_difference")),
                               _num(ce.get("equalized_odds_difference"))])
        if c_rows:
            parts.append("<h4>Predicted labels (one vs rest)</h4>" + _table(
                ["label", "group", "selection rate", "FPR", "FNR", "DP difference", "EO difference"], c_rows))
        cells = (entry.get("regions") or {}).get("cells") or {}
        if cells:
            parts.append(_cells_section(
                "Regions per label × group", cells,
                "Counted only over the images of each label that have the region. Share: fraction of the positive "
                "attribution inside the region; share / area: 1 means as much as its size; removal effect: change "
                "of the true label's probability when the region is removed (negative: the model needed it)."))
            parts.append(_region_charts(cells))
        faith = (entry.get("faithfulness") or {}).get("cells") or {}
        if faith:
            parts.append(_cells_section(
                "Explanation quality per label × group", faith,
                "Deletion AUC (lower: removing the most attributed pixels first destroys the prediction faster, "
                "more faithful), insertion AUC (higher is more faithful), IG relative completeness error "
                "(|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)|; above 0.1 the IG map is "
                "not trustworthy), rank agreement (Spearman) between the maps of two methods on the same image. "
                "A share gap that comes with a quality gap may reflect the explanations."))
    bs = mm.get("bias_score")
    if bs:
        parts.append("<h3>Bias score</h3>" + _svg_bars(
            f"Stereotypical minus atypical p(true) ({bs['group']})", [("bias score", bs["score"], *bs["ci"])],
            vmin=-1.0, vmax=1.0, pct=False))
    parts.append(face_report_section(run_dir, mm.get("faces")))
    parts.append("<h3>Most telling images</h3>" + _gallery(run_dir, df, key, metrics, groups))
    if mm.get("errors"):
        parts.append("<h3>Images that could not be read</h3><ul>" + "".join(
            f"<li>{_e(e['path'])}: {_e(e['error'])}</li>" for e in mm["errors"]) + "</ul>")
    parts.append(_warnings_block(mm))
    parts.append("</section>")
    return "".join(parts)


_HOWTO = """<section class='howto'><h2>How to read this</h2><ul>
<li><b>Answer first</b>: the blue box per model states the result in sentences; everything below is the evidence.</li>
<li><b>Groups and cells</b>: a <i>group</i> is a value of an attribute column (gender = female); a <i>cell</i> is a
label × group pair (doctor × female). Region and explanation-quality numbers are per cell, counted only over the
images that have the region; <i>n</i> is always the number of images behind a number.</li>
<li><b>Intervals</b>: [a, b] is a 95% bootstrap interval (images resampled within each group). Wide intervals
mean few images.</li>
<li><b>Flagged</b> means both real and large: the interval of the difference excludes 0, the permutation p-value
survives Holm's correction over all tests of the model, <i>and</i> the difference is at least the minimum effect
(default 0.05 absolute; <code>--min-effect KIND=VALUE</code>). Differences that are significant but smaller are
listed as such; comparisons where both groups are 0 are marked degenerate. A ratio has no interval when its
denominator's interval reaches 0.</li>
<li><b>Bias score</b>: mean true-label probability on stereotypical cells minus atypical cells of the same labels.
Positive: the model is more confident when the picture matches the stereotype.</li>
<li>Numbers too small for 3 decimals are written in scientific notation (2.4e-04).</li>
</ul></section>"""


def render_report(run_dir: str | Path, metrics: dict, df: pd.DataFrame) -> str:
    """The report as one HTML string: the answer per model first, a how-to-read section, then the evidence."""
    run_dir = Path(run_dir)
    cfg = metrics["run"]["config"]
    groups = list(cfg.get("groups", []))
    models = metrics["models"]
    opts = metrics["run"].get("metrics_options") or {}
    head = (f"<h1>biasscope audit</h1><p class='muted'>Run {_e(run_dir.name)} · status {_e(metrics['run']['status'])}"
            f" · manifest {_e(metrics['run']['manifest'].get('path'))} · groups {_e(', '.join(groups))} · methods "
            f"{_e(', '.join(cfg.get('methods', [])) or 'none')} · match {_e(cfg.get('match'))}"
            f" (top-k = {_e(cfg.get('top_k'))}) · stereotypical cells "
            f"{_e(', '.join(opts.get('stereotypical') or []) or 'none')}</p>")
    answer = "".join(
        f"<section class='answer'><h2>{_e(k)}: the answer</h2><ul>"
        + "".join(f"<li>{_e(f)}</li>" for f in (mm.get("answer") or mm.get("findings", [])))
        + "</ul></section>" for k, mm in models.items())
    comp = metrics.get("comparison", {})
    comp_rows = []
    for key, c in comp.items():
        gaps = "; ".join(f"{_e(g['grouping'])}: {_num(g['difference'])} [{_num(g['ci'][0])}, {_num(g['ci'][1])}]"
                         + (" <span class='flag'>flagged</span>" if g.get("flagged") else "")
                         for g in c["accuracy_gaps"])
        bsc = c.get("bias_score_ci") or [None, None]
        comp_rows.append([_e(key), str(c["n"]), _num(c["accuracy"], True), _num(c["accuracy_topk"], True),
                          _num(c["mean_p_true"]), gaps or "n/a", str(c["n_flagged"]),
                          f"{_num(c.get('bias_score'))} [{_num(bsc[0])}, {_num(bsc[1])}]", str(c["n_errors"])])
    comparison = "<section><h2>Model comparison</h2>" + _table(
        ["model", "n", "accuracy", "top-k", "mean p(true)", "accuracy gap [95% CI]", "flagged gaps", "bias score",
         "errors"], comp_rows)
    for gname in groups:
        for i, (key, mm) in enumerate(models.items()):
            entry = mm.get("groupings", {}).get(gname)
            if not entry:
                continue
            cis = entry.get("by_group_ci", {})
            items = [(g, v.get("accuracy"), *(cis.get(g, {}).get("accuracy") or [None, None]))
                     for g, v in entry["by_group"].items()]
            comparison += _svg_bars(f"{key}: accuracy by {gname}", items, color=_COLORS[i % len(_COLORS)])
    comparison += "</section>"
    body = "".join(_model_section(run_dir, k, mm, df, metrics, groups) for k, mm in models.items())
    method_note = ("<p class='muted'>Gaps: difference between the highest and lowest group (fairlearn MetricFrame), "
                   "95% percentile bootstrap interval resampling images within groups, permutation-test p-value of "
                   "the range over groups, Holm-adjusted over all gaps of a model. A gap is flagged when its interval "
                   "excludes zero, the adjusted p-value is below alpha and the difference is at least the minimum "
                   f"effect ({_e(', '.join(f'{k} {v:g}' for k, v in (opts.get('min_effect') or {}).items()))}).</p>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>biasscope audit report</title>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<style>{_CSS}</style></head><body><main>"
            f"{head}{answer}{_HOWTO}{comparison}{body}{method_note}</main></body></html>")


def write_report(run_dir: str | Path, metrics: dict, df: pd.DataFrame) -> Path:
    """Write ``report.html`` into the run folder."""
    out = Path(run_dir) / "report.html"
    out.write_text(render_report(run_dir, metrics, df), encoding="utf-8")
    return out

