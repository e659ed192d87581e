"""Reading runs back: list runs, per-image tables, metrics, heatmaps; and writing the exports.

These are the functions the CLI and the web dashboard call; nothing here runs a model.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import BiasscopeError
from ..formatting import fmt_number
from ..jobs import normal_status
from .face_audit import face_columns, face_part_names, face_summary, mark_excluded
from .metric_values import ImageError
from .metrics import MetricsOptions, compute_model_metrics
from .model_metrics import ComparisonRow, ModelMetrics
from .store import DB_NAME, RunStore, json_safe
from .values import ImageResult
from .words import answer, findings, gap_sentence, metric_words, scope_words, where_explanations_fall

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
    "run_results",
    "scope_words",
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
    result, df = run_results(run_dir, options)
    out = Path(run_dir)
    (out / METRICS_JSON).write_text(json.dumps(result, indent=2, allow_nan=False), encoding="utf-8")
    df.to_csv(out / PER_IMAGE_CSV, index=False)
    if report:
        from .report import write_report

        write_report(run_dir, result, df)
    return result


def run_results(run_dir: str | Path, options: MetricsOptions | None = None, *,
                faces: bool = True) -> tuple[dict, pd.DataFrame]:
    """The metrics.json content and the per-image table of a run as it is now, over the images scored so far;
    writes nothing to the run folder except, with ``faces`` on a face-parts run, its aligned heatmap sheets.
    ``options`` default to the run's stored ones."""
    store = _store(run_dir)
    if options is None:
        options = MetricsOptions(**(store.get_meta("metrics_options") or {}))
    cfg = store.get_meta("config", {}) or {}
    mmeta = store.get_meta("manifest", {}) or {}
    groups = list(cfg.get("groups", []))
    labels = list(mmeta.get("labels", []))
    methods = list(cfg.get("methods", []))
    regions = list(mmeta.get("region_names", []))
    with_faces = bool(cfg.get("face_parts"))
    if with_faces:
        regions += [r for r in face_part_names() if r not in regions]
    with_faces = with_faces and faces
    df = mark_excluded(per_image_frame(run_dir), options.exclude_flags)
    models = [m["key"] for m in store.models()]
    metrics = {key: _model_metrics(run_dir, key, df[df["model"] == key] if not df.empty else df, options,
                                   groups=groups, labels=labels, methods=methods, regions=regions,
                                   with_faces=with_faces, model_index=i)
               for i, key in enumerate(models)}
    result = {
        "run": {"run_dir": str(Path(run_dir)), "status": str(normal_status(store.get_meta("status"))),
                "config": cfg,
                "manifest": mmeta, "metrics_options": options.to_dict(), "models": models},
        "models": {key: mm.to_json() for key, mm in metrics.items()},
        "comparison": {key: ComparisonRow.of(mm, groups).to_json() for key, mm in metrics.items()},
    }
    return json_safe(result), df


def _model_metrics(run_dir: str | Path, key: str, sub: pd.DataFrame, options: MetricsOptions, *, groups: list[str],
                   labels: list[str], methods: list[str], regions: list[str], with_faces: bool,
                   model_index: int) -> ModelMetrics:
    """One model's metrics from its rows of the per-image table: numbers, errors, findings, answer, faces."""
    ok = sub[sub["status"] == "ok"] if not sub.empty else sub
    if "excluded" in ok:
        ok = ok[~ok["excluded"].astype(bool)]
    mm = (compute_model_metrics(ok, groups=groups, labels=labels, methods=methods, regions=regions, options=options)
          if not ok.empty else ModelMetrics(n_images=0))
    failed = sub[sub["status"] == "error"] if not sub.empty else sub
    mm = replace(mm, n_errors=len(failed),
                 errors=[ImageError(p, e) for p, e in zip(failed["path"], failed["error"])] if not sub.empty else [])
    mm = replace(mm, findings=findings(mm, alpha=options.alpha),
                 answer=answer(mm, options.stereotypical, alpha=options.alpha))
    if with_faces:
        faces = face_summary(run_dir, key, sub, groups=groups, methods=methods, model_index=model_index)
        mm = replace(mm, faces=faces, findings=[*mm.findings, *faces["findings"]])
    return mm
