"""report.html: one self-contained file (inline CSS, inline SVG charts, base64 PNG thumbnails).

Nothing in the page refers to the network or to other files, so it can be mailed or archived. The page
is ``templates/report.html`` (Jinja2, autoescaped); this module only gathers what the template shows
that is not already in metrics.json: chart geometry, the most telling images and the face figures.
A model's sections are the macros of ``templates/_sections.html``; the web dashboard renders the same
macros from :func:`model_view` and :func:`comparison_charts` (``web/dashboard.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from ..formatting import fmt_number, png_data_uri, render_template
from .charts import COLORS, BarChart, bar_chart
from .concepts import NONE_LABEL
from .store import RunStore
from .words import metric_words

__all__ = ["comparison_charts", "model_view", "render_report", "write_report"]

#: below this probability a heatmap explains a class the model does not predict (warned about)
LOW_PROBABILITY = 1e-3
#: above this relative completeness error an Integrated Gradients map is flagged as unreliable
COMPLETENESS_LIMIT = 0.10


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


def _gallery(run_dir: Path, df: pd.DataFrame, model: str, metrics: dict, groups: list[str]) -> list[dict]:
    """The most telling images of a model: thumbnail, first method's heatmap and what the caption says."""
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
        tiles = [("original", png_data_uri(img))]
        for m in methods[:1]:
            heat = store.heatmap(model, int(row["image_id"]), m)
            if heat is None:
                continue
            scored = store.result(model, int(row["image_id"]))
            view = scored.view if scored else None  # a face chip's place
            h = heatmap_in_image(heat, view, (img.height, img.width), full)
            signed = is_signed(m, metrics["run"]["config"].get("method_params"))
            tiles.append((f"{m} heatmap", png_data_uri(render_overlay(img, h, signed=signed))))
        ratios = [(c.split(":", 2)[2], row[c]) for c in row.index if c.startswith("ratio:")
                  and isinstance(row[c], float) and not math.isnan(row[c])][:4]
        cautions = []
        if isinstance(row.get("p_true"), float) and row["p_true"] < LOW_PROBABILITY:
            cautions.append(f"the explained label has p = {fmt_number(row['p_true'])} (< {LOW_PROBABILITY:g}): the "
                            "heatmap explains a class the model does not see here")
        ce = row.get("faith:integrated_gradients:completeness_relative")
        if isinstance(ce, float) and not math.isnan(ce) and ce > COMPLETENESS_LIMIT:
            cautions.append(f"IG completeness error {100 * ce:.0f}% (> {100 * COMPLETENESS_LIMIT:.0f}%): "
                            "the IG map is unreliable")
        figs.append({"tiles": tiles, "path": row["path"], "label": row["label"],
                     "groups": [(g, row[g]) for g in groups], "correct": bool(row["correct"]),
                     "pred_class": row["pred_class"], "pred_prob": row.get("pred_prob"),
                     "no_label": row["pred_label"] == NONE_LABEL, "pred_label": row["pred_label"],
                     "p_true": row["p_true"], "atypical": bool(row["_atypical"]), "ratios": ratios,
                     "cautions": cautions})
    return figs


def _region_charts(cells: dict) -> list[BarChart]:
    """Share / area and removal-effect bars per label x group; charts of the same quantity share one scale."""
    charts = []
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
            charts.append(bar_chart(f"{title}, {name}, 95% CI (same scale)", items, vmin=-top if signed else 0.0,
                                    vmax=top, pct=False, color=COLORS[2]))
    return charts


def _by_group_items(entry: dict, metric: str) -> list[tuple]:
    cis = entry.get("by_group_ci", {})
    return [(g, v.get(metric), *(cis.get(g, {}).get(metric) or [None, None])) for g, v in entry["by_group"].items()]


def _faces_view(run_dir: Path, faces: dict | None, face_src: Callable[[Path], str]) -> dict | None:
    """Quality tables and aligned-heatmap figures of a model's face audit (``face_src``: a sheet's image
    source, an inlined PNG in the report), or None."""
    from .face_audit import quality_flags

    if not faces or not (faces.get("quality") or faces.get("heatmaps")):
        return None
    quality = [{"grouping": g, "rows": by, "excluded": any("n_excluded" in e for e in by.values())}
               for g, by in faces.get("quality", {}).items()]
    heatmaps = []
    for method, m in faces.get("heatmaps", {}).items():
        for g, scopes in m.get("groupings", {}).items():
            for scope, e in scopes.items():
                p = Path(run_dir) / e["file"]
                if p.is_file():
                    heatmaps.append({"method": method, "grouping": g, "src": face_src(p),
                                     "what": "group" if scope == "group" else "label x group cell"})
    return {"flags": quality_flags(), "quality": quality, "heatmaps": heatmaps}


def _warning_groups(mm: dict) -> list[dict]:
    groups = mm.get("warning_groups")
    if groups is None:
        groups = [{"title": "Warnings", "items": list(mm.get("warnings", []))}] if mm.get("warnings") else []
    return [{**g, "n": len(g["items"])} for g in groups]


def model_view(run_dir: str | Path, mm: dict, *, face_src: Callable[[Path], str] = png_data_uri) -> dict:
    """What the sections of one model (``templates/_sections.html``) need besides its metrics: findings
    not in the answer, chart geometry, the face figures and the grouped warnings. The report and the web
    dashboard both render these; ``face_src`` gives a face sheet's image source (inlined in the report)."""
    answer = set(mm.get("answer", []))
    groupings = mm.get("groupings", {})
    bs = mm.get("bias_score")
    return {
        "rest": [f for f in mm.get("findings", [])[1:] if f not in answer and not f.startswith("Bias score (")],
        "group_charts": {g: [bar_chart(f"{title} by {g} (95% CI)", _by_group_items(e, metric),
                                       pct=metric == "accuracy")
                             for metric, title in (("accuracy", "Accuracy"),
                                                   ("mean_p_true", "Mean probability of the true label"))]
                         for g, e in groupings.items()},
        "region_charts": {g: _region_charts((e.get("regions") or {}).get("cells") or {}) for g, e in groupings.items()},
        "bias_chart": bar_chart(f"Stereotypical minus atypical p(true) ({bs['group']})",
                                [("bias score", bs["score"], *bs["ci"])], vmin=-1.0, vmax=1.0, pct=False)
        if bs else None,
        "faces": _faces_view(Path(run_dir), mm.get("faces"), face_src),
        "warning_groups": _warning_groups(mm),
    }


def comparison_charts(metrics: dict) -> list[BarChart]:
    """Accuracy by group of every model, one chart per grouping and model (the report's model comparison)."""
    groups = list(metrics["run"]["config"].get("groups", []))
    return [bar_chart(f"{key}: accuracy by {gname}", _by_group_items(entry, "accuracy"), color=COLORS[i % len(COLORS)])
            for gname in groups for i, (key, mm) in enumerate(metrics["models"].items())
            if (entry := mm.get("groupings", {}).get(gname))]


def render_report(run_dir: str | Path, metrics: dict, df: pd.DataFrame) -> str:
    """The report as one HTML string: the answer per model first, a how-to-read section, then the evidence."""
    run_dir = Path(run_dir)
    cfg = metrics["run"]["config"]
    groups = list(cfg.get("groups", []))
    models = metrics["models"]
    views = {k: model_view(run_dir, mm) | {"gallery": _gallery(run_dir, df, k, metrics, groups)}
             for k, mm in models.items()}
    return render_template(
        "report.html", run_name=run_dir.name, run=metrics["run"], cfg=cfg, groups=groups,
        opts=metrics["run"].get("metrics_options") or {}, models=models, comparison=metrics.get("comparison", {}),
        comparison_charts=comparison_charts(metrics), views=views, words=metric_words)


def write_report(run_dir: str | Path, metrics: dict, df: pd.DataFrame) -> Path:
    """Write ``report.html`` into the run folder."""
    out = Path(run_dir) / "report.html"
    out.write_text(render_report(run_dir, metrics, df), encoding="utf-8")
    return out

