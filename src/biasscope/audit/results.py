"""Reading runs back: list runs, per-image tables, metrics, heatmaps; and writing the exports.

These are the functions the CLI and the web dashboard call; nothing here runs a model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BiasscopeError
from ..formatting import fmt_number
from ..jobs import normal_status
from .face_audit import face_columns, face_part_names, face_summary, mark_excluded
from .metrics import MetricsOptions, compute_model_metrics
from .store import DB_NAME, RunStore, json_safe
from .values import ImageResult

__all__ = [
    "METRICS_JSON",
    "PER_IMAGE_CSV",
    "REPORT_HTML",
    "answer",
    "finalize_run",
    "findings",
    "fmt_number",
    "gap_sentence",
    "image_detail",
    "list_runs",
    "load_heatmap",
    "load_metrics",
    "metric_words",
    "per_image_frame",
    "per_image_table",
    "run_info",
    "where_explanations_fall",
]

METRICS_JSON = "metrics.json"
PER_IMAGE_CSV = "per_image.csv"
REPORT_HTML = "report.html"


def _store(run_dir: str | Path) -> RunStore:
    store = RunStore(run_dir)
    if not store.exists:
        raise BiasscopeError(f"{run_dir} is not an audit run folder (no {DB_NAME})")
    return store


def run_info(run_dir: str | Path) -> dict:
    """Status, config, manifest summary, models and per-model counts of one run."""
    store = _store(run_dir)
    meta = store.all_meta()
    n = store.n_images()
    counts = store.counts()
    requested = meta.get("models_requested") or [m["key"] for m in store.models()]
    done = sum(c.get("ok", 0) + c.get("error", 0) for c in counts.values())
    return {
        "run_dir": str(Path(run_dir)),
        "name": Path(run_dir).name,
        "status": str(normal_status(meta["status"])) if meta.get("status") else "unknown",
        "created": meta.get("created"),
        "finished": meta.get("finished"),
        "config": meta.get("config", {}),
        "metrics_options": meta.get("metrics_options"),
        "manifest": meta.get("manifest", {}),
        "n_images": n,
        "models": requested,
        "model_info": {m["key"]: m["info"] for m in store.models()},
        "counts": counts,
        "progress": done / (n * len(requested)) if n and requested else 0.0,
        "has_metrics": (Path(run_dir) / METRICS_JSON).is_file(),
        "has_report": (Path(run_dir) / REPORT_HTML).is_file(),
    }


def list_runs(root: str | Path) -> list[dict]:
    """Every run folder directly under ``root`` (and ``root`` itself), newest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    dirs = [base] if (base / DB_NAME).is_file() else []
    dirs += sorted(p for p in base.iterdir() if p.is_dir() and (p / DB_NAME).is_file())
    out = []
    for d in dirs:
        try:
            out.append(run_info(d))
        except Exception as exc:  # a broken run must not hide the others
            out.append({"run_dir": str(d), "name": d.name, "status": "unreadable", "error": str(exc)})
    return sorted(out, key=lambda r: r.get("created") or "", reverse=True)


def per_image_frame(run_dir: str | Path, model: str | None = None) -> pd.DataFrame:
    """One row per model x image: manifest columns, prediction, correctness, regions, error."""
    store = _store(run_dir)
    images = {r["image_id"]: r for r in store.images()}
    meta = store.get_meta("manifest", {}) or {}
    return per_image_table([(rec, images.get(rec.image_id, {})) for rec in store.results(model)],
                           list(meta.get("attribute_columns", [])))


def per_image_table(pairs: list[tuple[ImageResult, dict]], attr_cols: list[str]) -> pd.DataFrame:
    """The per-image table of (result, manifest row) pairs, e.g. one page of :meth:`RunStore.page`."""
    rows = []
    for rec, img in pairs:
        row: dict[str, Any] = {"model": rec.model, "image_id": rec.image_id, "path": img.get("path"),
                               "label": img.get("label")}
        for c in attr_cols:
            row[c] = img.get("attributes", {}).get(c)
        row["status"] = rec.status
        row["error"] = rec.error
        if rec.ok:
            row.update(_result_columns(rec))
        rows.append(row)
    df = pd.DataFrame(rows)
    for c in df.columns:  # JSON null -> NaN for numeric columns
        if (c.startswith(("share:", "ratio:", "area:", "removal:", "score:", "faith:", "agree:"))
                or c in ("p_true", "pred_prob")):
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def _result_columns(rec: ImageResult) -> dict[str, Any]:
    """The per_image.csv columns of one scored image (prediction, scores, shares, removal, face)."""
    row: dict[str, Any] = {k: getattr(rec, k) for k in ("pred_class", "pred_prob", "pred_label", "correct",
                                                        "correct_top1", "correct_topk", "p_true", "target_class",
                                                        "width", "height")}
    for lab, v in rec.scores.items():
        row[f"score:{lab}"] = v
    for lab, v in rec.predicted.items():
        row[f"predicted:{lab}"] = v
    for method, regs in rec.shares.items():
        for r, d in regs.items():
            row[f"area:{r}"] = d.get("area_share")
            row[f"share:{method}:{r}"] = d.get("share")
            row[f"ratio:{method}:{r}"] = d.get("ratio")
    for method, checks in rec.quality.items():
        for k, v in checks.items():
            row[f"faith:{method}:{k}"] = v
    for pair, rho in rec.agreement.items():
        row[f"agree:{pair}"] = rho
    for r, d in rec.removal.items():
        row[f"removal:{r}"] = d.get("effect")
    row.update(face_columns(rec.face))
    return row


def load_heatmap(run_dir: str | Path, model: str, image_id: int, method: str) -> np.ndarray | None:
    """The stored heatmap (model resolution, downsampled to the run's ``heatmap_size``)."""
    return _store(run_dir).heatmap(model, image_id, method)


def image_detail(run_dir: str | Path, image_id: int) -> dict:
    """Everything about one image: manifest row and each model's stored record (for drill-down).

    Reads only that image's rows."""
    store = _store(run_dir)
    img = store.image_row(int(image_id))
    if img is None:
        raise BiasscopeError(f"image {image_id} is not in run {run_dir}")
    recs = {r.model: {**r.to_json(), "model": r.model} for r in store.results(image_id=int(image_id))}
    return {"image": img, "results": recs, "methods": (store.get_meta("config", {}) or {}).get("methods", [])}


def load_metrics(run_dir: str | Path) -> dict:
    """metrics.json of a run (computed and written first if missing)."""
    p = Path(run_dir) / METRICS_JSON
    if not p.is_file():
        return finalize_run(run_dir, report=False)
    return json.loads(p.read_text(encoding="utf-8"))


_fmt = fmt_number

_METRIC_WORDS = {
    "accuracy": "accuracy",
    "accuracy_top1": "top-1 accuracy",
    "accuracy_topk": "top-k accuracy",
    "mean_p_true": "mean probability of the true label",
    "selection_rate": "selection rate",
    "fpr": "false positive rate",
    "fnr": "false negative rate",
    "mean_score": "mean score",
}

_FAITH_WORDS = {"deletion_auc": "deletion AUC (lower is more faithful)",
                "insertion_auc": "insertion AUC (higher is more faithful)",
                "completeness_relative": "relative completeness error (lower is more faithful)"}


def metric_words(metric: str) -> str:
    """A metric name (``share:gradcam:hair``, ``removal:hair``, ``accuracy``...) in words."""
    if metric.startswith(("share:", "ratio:")):
        kind, method, region = metric.split(":", 2)
        what = "attribution share" if kind == "share" else "attribution share / area share"
        return f"{method} {what} on region '{region}'"
    if metric.startswith("removal:"):
        return f"effect of removing region '{metric.split(':', 1)[1]}' on the true label's probability"
    if metric.startswith("faith:"):
        _, method, key = metric.split(":", 2)
        return f"{method} {_FAITH_WORDS.get(key, key)}"
    if metric.startswith("agree:"):
        a, _, b = metric.split(":", 1)[1].partition("~")
        return f"rank agreement (Spearman) of {a} and {b} maps"
    return _METRIC_WORDS.get(metric, metric)


_metric_words = metric_words


def _pct_metric(metric: str) -> bool:
    return metric.startswith("accuracy") or metric in ("selection_rate", "fpr", "fnr")


def scope_words(g: dict) -> str:
    """What a gap is computed over: label, groups with their n, images."""
    n = g.get("n") or {}
    sizes = ", ".join(f"{k} n={v}" for k, v in n.items())
    scope = g.get("scope", "all")
    where = ("all labels" if scope == "all" else f"label {scope.split('=', 1)[1]}" if scope.startswith("label=")
             else scope.replace("=", " "))
    return f"over {where}; {g.get('grouping')} groups {sizes}; {sum(n.values())} images"


def gap_sentence(g: dict) -> str:
    """One gap (flagged or not) as a sentence with its numbers and what it is computed over."""
    pct = _pct_metric(g["metric"])
    lo, hi = g["difference_ci"]
    lab = g.get("label")
    where = f"Within label {lab}, the" if lab else ("The" if g.get("scope", "all") == "all"
                                                     else f"For {g['scope'].replace('=', ' ')}, the")
    ratio = ""
    if g.get("ratio") is not None and not (isinstance(g["ratio"], float) and math.isnan(g["ratio"])):
        rci = g.get("ratio_ci") or [None, None]
        ratio = f", ratio {_fmt(g['ratio'])}" + (f" [{_fmt(rci[0])}, {_fmt(rci[1])}]" if rci[0] is not None else "")
    return (f"{where} {metric_words(g['metric'])} differs between {g['grouping']} groups: "
            f"{g['high_group']} {_fmt(g['high'], pct)} vs {g['low_group']} {_fmt(g['low'], pct)} "
            f"(difference {_fmt(g['difference'])}, 95% CI [{_fmt(lo)}, {_fmt(hi)}]{ratio}, "
            f"permutation p = {g['p_value']:.3g}, Holm-adjusted {g['p_adjusted']:.3g}; "
            f"{scope_words(g)}).")


def _faith_notes(model_metrics: dict) -> dict[tuple[str, str, str], str]:
    """(grouping, label, method) -> a note when that method's explanations differ in faithfulness by group."""
    notes: dict[tuple[str, str, str], str] = {}
    for gname, entry in model_metrics.get("groupings", {}).items():
        for col, per_label in (entry.get("faithfulness") or {}).get("cells", {}).items():
            if not col.startswith("faith:"):
                continue
            _, method, key = col.split(":", 2)
            for lab, cell in per_label.items():
                g = cell.get("gap")
                if g and g.get("flagged"):
                    worse = g["low_group"] if key == "insertion_auc" else g["high_group"]
                    notes[(gname, lab, method)] = (
                        f" Caution: {method} explanations are less faithful for {gname} = {worse} within label "
                        f"{lab} ({_FAITH_WORDS.get(key, key)}: {g['high_group']} {_fmt(g['high'])} vs "
                        f"{g['low_group']} {_fmt(g['low'])}), so part of this gap may reflect explanation quality.")
    return notes


def _no_gap_sentence(model_metrics: dict, alpha: float) -> str:
    counts = model_metrics.get("n_not_flagged") or {}
    return (f"No gap between groups is significant and large enough to flag: of the "
            f"{model_metrics.get('n_tests', 0)} gaps tested, {counts.get('not significant', 0)} are not significant "
            f"(95% interval or Holm-adjusted permutation p-value at level {alpha}), "
            f"{counts.get('too small', 0)} are significant but below the minimum effect, "
            f"{counts.get('degenerate', 0)} are degenerate (both groups 0).")


def findings(model_metrics: dict, *, alpha: float = 0.05) -> list[str]:
    """The findings of one model in plain sentences with their numbers: each flagged gap once, then the bias score.

    Warnings are not findings: they are in ``warnings`` / ``warning_groups``.
    """
    out: list[str] = []
    ov = model_metrics.get("overall")
    if not ov:
        return ["No image could be evaluated."]
    out.append(f"Over {ov['n']} images: accuracy {_fmt(ov['accuracy'], True)} "
               f"(top-k {_fmt(ov['accuracy_topk'], True)}), "
               f"mean probability of the true label {_fmt(ov['mean_p_true'])}.")
    flagged = model_metrics.get("flagged", [])
    notes = _faith_notes(model_metrics)
    for g in sorted(flagged, key=lambda g: g["p_adjusted"]):
        s = gap_sentence(g)
        if g["metric"].startswith(("share:", "ratio:")) and g.get("label"):
            s += notes.get((g["grouping"], g["label"], g["metric"].split(":")[1]), "")
        out.append(s)
    counts = model_metrics.get("n_not_flagged") or {}
    if not flagged and model_metrics.get("n_tests"):
        out.append(_no_gap_sentence(model_metrics, alpha))
    elif counts.get("too small"):
        out.append(f"{counts['too small']} more gap(s) are significant but below the minimum effect; "
                   "they are listed in the tables, not flagged.")
    bs = model_metrics.get("bias_score")
    if bs:
        verdict = ("flagged" if bs.get("flagged") else "significant but below the minimum effect"
                   if bs["significant"] else "not significant")
        out.append(
            f"Bias score ({bs['group']}): stereotypical images get mean true-label probability "
            f"{_fmt(bs['stereotypical_mean'])}, atypical ones {_fmt(bs['atypical_mean'])}: difference "
            f"{_fmt(bs['score'])}, 95% CI [{_fmt(bs['ci'][0])}, {_fmt(bs['ci'][1])}], "
            f"p = {bs['p_value']:.3g} ({verdict}; {bs['n_stereotypical']} stereotypical, "
            f"{bs['n_atypical']} atypical images)."
        )
    return out


def where_explanations_fall(model_metrics: dict, grouping: str | None = None, limit: int = 6) -> list[str]:
    """Per label x group cell, the region drawing the most attribution relative to its area (with n)."""
    out: list[str] = []
    for gname, entry in model_metrics.get("groupings", {}).items():
        if grouping is not None and gname != grouping:
            continue
        cells = (entry.get("regions") or {}).get("cells", {})
        best: dict[tuple[str, str, str], tuple[float, str, dict]] = {}
        for col, per_label in cells.items():
            if not col.startswith("ratio:"):
                continue
            _, method, region = col.split(":", 2)
            for lab, cell in per_label.items():
                for gval, c in cell["by_group"].items():
                    if c.get("mean") is None:
                        continue
                    key = (method, lab, gval)
                    if key not in best or c["mean"] > best[key][0]:
                        best[key] = (c["mean"], region, c)
        for (method, lab, gval), (ratio, region, c) in sorted(best.items()):
            share = cells.get(f"share:{method}:{region}", {}).get(lab, {}).get("by_group", {}).get(gval, {})
            out.append(f"{lab} x {gname} = {gval} ({method}, {c['n']} images with region '{region}'): "
                       f"'{region}' holds {_fmt(share.get('mean'), True)} of the positive attribution, "
                       f"{_fmt(ratio)}x its area share.")
        break  # the first grouping only: the others repeat the question
    return out[:limit] if limit else out


def answer(model_metrics: dict, stereotypical: list[str] | None = None, *, alpha: float = 0.05) -> list[str]:
    """The answer to the audit's question in a few sentences with numbers (top of report and dashboard)."""
    ov = model_metrics.get("overall")
    if not ov:
        return ["No image could be evaluated."]
    out = [f"Accuracy {_fmt(ov['accuracy'], True)} over {ov['n']} images "
           f"(mean probability of the true label {_fmt(ov['mean_p_true'])})."]
    bs = model_metrics.get("bias_score")
    if bs:
        word = "higher" if bs["score"] > 0 else "lower"
        verdict = ("a flagged difference" if bs.get("flagged") else
                   "significant but below the minimum effect" if bs["significant"] else "not significant")
        out.append(f"Stereotypical cells ({', '.join(bs['stereotypical'])}; {bs['n_stereotypical']} images) get a "
                   f"{word} true-label probability than atypical ones ({bs['n_atypical']} images): "
                   f"{_fmt(bs['stereotypical_mean'])} vs {_fmt(bs['atypical_mean'])}, bias score "
                   f"{_fmt(bs['score'])} (95% CI [{_fmt(bs['ci'][0])}, {_fmt(bs['ci'][1])}], p = {bs['p_value']:.3g}):"
                   f" {verdict}.")
    elif stereotypical:
        out.append("No bias score: the stereotypical cells given have no atypical counterpart in the data.")
    flagged = model_metrics.get("flagged", [])
    if flagged:
        out.append(f"{len(flagged)} of {model_metrics.get('n_tests', 0)} gaps are flagged (significant after Holm "
                   f"and at least the minimum effect); the largest:")
        top = sorted(flagged, key=lambda g: -g["difference"] / max(g.get("min_effect") or 1e-9, 1e-9))[:3]
        out += [gap_sentence(g) for g in top]
    elif model_metrics.get("n_tests"):
        out.append(_no_gap_sentence(model_metrics, alpha))
    out += where_explanations_fall(model_metrics, limit=6)
    return out


def finalize_run(
    run_dir: str | Path,
    options: MetricsOptions | dict | None = None,
    *,
    report: bool = True,
) -> dict:
    """Compute metrics for every model of a run and write metrics.json, per_image.csv, report.html."""
    store = _store(run_dir)
    if options is None:
        options = MetricsOptions(**(store.get_meta("metrics_options") or {}))
    elif isinstance(options, dict):
        options = MetricsOptions(**options)
    store.set_meta("metrics_options", options.to_dict())
    cfg = store.get_meta("config", {}) or {}
    mmeta = store.get_meta("manifest", {}) or {}
    groups = list(cfg.get("groups", []))
    labels = list(mmeta.get("labels", []))
    methods = list(cfg.get("methods", []))
    regions = list(mmeta.get("region_names", []))
    with_faces = bool(cfg.get("face_parts"))
    if with_faces:
        regions += [r for r in face_part_names() if r not in regions]
    df = mark_excluded(per_image_frame(run_dir), options.exclude_flags)
    models = [m["key"] for m in store.models()]
    result: dict = {
        "run": {"run_dir": str(Path(run_dir)), "status": str(normal_status(store.get_meta("status"))),
                "config": cfg,
                "manifest": mmeta, "metrics_options": options.to_dict(), "models": models},
        "models": {},
    }
    for key in models:
        sub = df[df["model"] == key] if not df.empty else df
        ok = sub[sub["status"] == "ok"] if not sub.empty else sub
        if "excluded" in ok:
            ok = ok[~ok["excluded"].astype(bool)]
        mm = compute_model_metrics(ok, groups=groups, labels=labels, methods=methods, regions=regions,
                                   options=options) if not ok.empty else {"n_images": 0, "groupings": {},
                                                                          "warnings": []}
        mm["n_errors"] = int((sub["status"] == "error").sum()) if not sub.empty else 0
        mm["errors"] = ([{"path": p, "error": e} for p, e in zip(sub.loc[sub["status"] == "error", "path"],
                                                                   sub.loc[sub["status"] == "error", "error"])]
                        if not sub.empty else [])
        mm["findings"] = findings(mm, alpha=options.alpha)
        mm["answer"] = answer(mm, options.stereotypical, alpha=options.alpha)
        if with_faces:
            mm["faces"] = face_summary(run_dir, key, sub, groups=groups, methods=methods,
                                       model_index=models.index(key))
            mm["findings"] += mm["faces"]["findings"]
        result["models"][key] = mm
    result["comparison"] = _comparison(result["models"], groups)
    result = json_safe(result)
    out = Path(run_dir)
    (out / METRICS_JSON).write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    df.to_csv(out / PER_IMAGE_CSV, index=False)
    if report:
        from .report import write_report

        write_report(run_dir, result, df)
    return result


def _comparison(models: dict, groups: list[str]) -> dict:
    """Side-by-side headline numbers per model."""
    rows = {}
    for key, mm in models.items():
        ov = mm.get("overall") or {}
        gaps = []
        for gname in groups:
            g = mm.get("groupings", {}).get(gname, {}).get("gaps", {}).get("accuracy")
            if g:
                gaps.append({"grouping": gname, "difference": g["difference"], "ci": g["difference_ci"],
                             "p_adjusted": g.get("p_adjusted"), "flagged": g.get("flagged")})
        rows[key] = {
            "n": ov.get("n", 0),
            "accuracy": ov.get("accuracy"),
            "accuracy_topk": ov.get("accuracy_topk"),
            "mean_p_true": ov.get("mean_p_true"),
            "accuracy_gaps": gaps,
            "n_flagged": len(mm.get("flagged", [])),
            "bias_score": (mm.get("bias_score") or {}).get("score"),
            "bias_score_ci": (mm.get("bias_score") or {}).get("ci"),
            "n_errors": mm.get("n_errors", 0),
        }
    return rows
