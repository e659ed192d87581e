"""Audits in the web app (routes): start, follow, cancel and resume audits; dashboard data; drill-down.

The app reads manifests and images only under the data root given at start
(``biasscope serve --data-root DIR``); without one, every audit route answers 409 with the fix.
Paths from clients are relative to the root (:mod:`biasscope.web.security`); image-bearing routes
check again, at read time, that the stored file still resolves inside the root. Runs live in the runs
directory (default ``DATA_ROOT/.biasscope-runs``); run ids are plain folder names. Where audits run,
and how a run is described, is :mod:`biasscope.web.audit_manager`; a start request is declared in
:mod:`biasscope.web.audit_schemas` and checked against the root and models by
:mod:`biasscope.web.audit_requests`; regions are drawn by :mod:`biasscope.web.drawing`.
"""

from __future__ import annotations

import io
import logging
import math
import re
import sqlite3
from pathlib import Path

import pandas as pd
from flask import Blueprint, jsonify, render_template, send_file

from .. import __version__
from ..audit import METRICS_JSON, PER_IMAGE_CSV, REPORT_HTML, AuditConfig, load_manifest, per_image_table
from ..audit.face_audit import FACE_DIR, quality_flags
from ..audit.store import DB_NAME, RunStore, json_safe
from ..errors import BiasscopeError, ManifestError
from ..jobs import TERMINAL, JobStatus
from . import audit_schemas as a
from .audit_images import audit_image_api
from .audit_manager import (
    MSG_DISABLED,
    MSG_STOPPED,
    AuditManager,
    AuditsDisabledError,
    WebAudit,
    audits,
    files_allowed,
    registry_source,
    run_status,
    served_run,
)
from .audit_requests import RunBusyError, load_root_manifest, parse_audit_request
from .audit_schemas import AUDIT_ERRORS
from .context import state
from .declare import declare
from .responses import accepted
from .schemas import DownloadQuery
from .security import MSG_RUN_OUTSIDE, RUN_ID_RE, PathRefusedError, inside, resolve_in_root
from .state import NotFoundError

__all__ = ["MSG_DISABLED", "MSG_STOPPED", "AuditManager", "AuditsDisabledError", "WebAudit", "audit_api",
           "audit_pages", "install"]

log = logging.getLogger("biasscope.web")

FACE_FILE_RE = re.compile(r"^m\d+_[A-Za-z0-9_.-]+\.png$")
_HTML_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
             "frame-ancestors 'none'")

audit_api = Blueprint("audit_api", __name__, url_prefix="/api")
audit_pages = Blueprint("audit_pages", __name__)


def _frame_records(df: pd.DataFrame) -> list[dict]:
    if df.empty:
        return []
    out = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return json_safe(out)


def _records_clean(rows: list[dict]) -> list[dict]:
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return rows


# ---------------------------------------------------------------------------------------- pages
@audit_pages.get("/audits")
def audits_page():
    mgr = audits()
    return render_template("audits.html", version=__version__, enabled=mgr.enabled, message=MSG_DISABLED,
                           flags=quality_flags(), min_effect=_default_min_effect())


def _default_min_effect() -> dict[str, float]:
    from ..audit.metrics import DEFAULT_MIN_EFFECT

    return dict(DEFAULT_MIN_EFFECT)


@audit_pages.get("/audits/<run_id>")
def audit_page(run_id: str):
    mgr = audits()
    live = mgr.live(run_id) is not None  # a run this server just started may not have its folder yet
    d = mgr.run_dir(run_id, exists=not live)
    if not live and not files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    return render_template("audit.html", version=__version__, run_id=d.name)


# ---------------------------------------------------------------------------------------- API
@audit_api.get("/audits")
@declare("Audit runs in the runs directory (and whether audits are enabled)", responses={200: a.Audits})
def list_audits():
    mgr = audits()
    if not mgr.enabled:
        return jsonify({"enabled": False, "message": MSG_DISABLED, "runs": []})
    assert mgr.runs_dir is not None
    runs = []
    if mgr.runs_dir.is_dir():
        for d in sorted(p for p in mgr.runs_dir.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name)):
            if (d / DB_NAME).is_file():
                try:
                    if not files_allowed(mgr, d):
                        runs.append({"id": d.name, "name": d.name, "status": JobStatus.ERROR,
                                     "files_allowed": False, "error": MSG_RUN_OUTSIDE.format(run_id=d.name)})
                        continue
                    runs.append(run_status(mgr, d))
                except Exception as exc:  # one broken run must not hide the others
                    runs.append({"id": d.name, "name": d.name, "status": JobStatus.ERROR,
                                 "error": mgr.public(str(exc))})
    runs.sort(key=lambda r: r.get("created") or "", reverse=True)
    return jsonify({"enabled": True, "data_root": str(mgr.data_root), "runs_dir": str(mgr.runs_dir),
                    "quality_flags": quality_flags(), "runs": runs})


@audit_api.get("/files")
@declare("Folders and manifest CSVs in a folder of the data root", query=a.FilesQuery, responses={200: a.Files},
         errors=(400, *AUDIT_ERRORS))
def list_files(query: a.FilesQuery):
    """Folders and CSV files in one folder of the data root (the manifest picker)."""
    mgr = audits()
    root = mgr.root()
    rel = query.path
    folder = resolve_in_root(root, rel, "path") if rel.strip() else root
    if not folder.is_dir():
        raise NotFoundError(f"folder {rel!r} not found under the data root")
    dirs, files = [], []
    for p in sorted(folder.iterdir(), key=lambda p: p.name.lower()):
        if p.name.startswith("."):
            continue
        try:
            real = p.resolve()
        except OSError:
            continue
        if not inside(real, root):
            continue  # links out of the root are not shown
        relp = p.relative_to(root).as_posix()
        if real.is_dir():
            dirs.append({"name": p.name, "path": relp})
        elif p.suffix.lower() == ".csv":
            files.append({"name": p.name, "path": relp, "bytes": real.stat().st_size})
    here = folder.relative_to(root).as_posix() if folder != root else ""
    return jsonify({"path": here, "folders": dirs, "manifests": files})


@audit_api.post("/manifests/inspect")
@declare("Validate a manifest and list its labels, attribute columns (with values) and regions",
         body=a.ManifestRequest, responses={200: a.ManifestSummary}, errors=(400, *AUDIT_ERRORS))
def inspect_manifest(body: a.ManifestRequest):
    try:
        m = load_root_manifest(audits().root(), body.manifest, [])
    except ManifestError as exc:
        mgr = audits()
        return jsonify({"valid": False, "message": mgr.public(str(exc).split("\n")[0]),
                        "problems": [mgr.public(p) for p in exc.problems]}), 200
    return jsonify({
        "valid": True,
        "manifest": str(body.manifest),
        "n_images": len(m),
        "labels": m.labels,
        "attribute_columns": m.attribute_columns,
        "values": {c: sorted({r.attributes[c] for r in m.rows}) for c in m.attribute_columns},
        "region_names": m.region_names,
    })


@audit_api.post("/audits")
@declare("Start an audit on a manifest under the data root; follow GET /api/audits/{run_id}",
         body=a.AuditRequestBody, responses={202: a.AuditStarted}, errors=(400, *AUDIT_ERRORS, 501, 503))
def create_audit(body: a.AuditRequestBody):
    mgr, registry = audits(), state().models
    req = parse_audit_request(body, mgr.root(), lambda name: mgr.run_dir(name, exists=False), registry)
    job = mgr.submit(req.name, req.run_dir, req.manifest, [registry_source(registry, n) for n in req.models],
                     req.config, batch_size=req.batch_size, metrics_options=req.metrics_options)
    return accepted({"id": job.run_id, "status": job.status, "job": job.to_dict(), "url": f"/audits/{job.run_id}"},
                     f"/api/audits/{job.run_id}")


@audit_api.get("/audits/<run_id>")
@declare("Status and progress of a run", responses={200: a.AuditRun}, errors=AUDIT_ERRORS)
def get_audit(run_id: str):
    mgr = audits()
    job = mgr.live(run_id)
    d = mgr.run_dir(run_id, exists=job is None)
    starting = {"id": run_id, "name": run_id, "status": job.status if job else JobStatus.QUEUED,
                "job": job.to_dict() if job else None, "progress": 0.0, "has_metrics": False}
    if not (d / DB_NAME).is_file():  # queued: nothing written yet
        return jsonify(starting)
    if job is None:  # a run this server started was checked when it started
        served_run(run_id)
    try:
        return jsonify(run_status(mgr, d))
    except sqlite3.OperationalError:
        if job is None or job.status in TERMINAL:
            raise
        return jsonify(starting)  # the run's tables are being created


@audit_api.post("/audits/<run_id>/cancel")
@declare("Cancel a running audit (after its current batch; resumable)", responses={200: a.AuditStarted},
         errors=AUDIT_ERRORS)
def cancel_audit(run_id: str):
    mgr = audits()
    mgr.run_dir(run_id, exists=False)
    job = mgr.cancel(run_id)
    return jsonify({"id": run_id, "status": job.status, "job": job.to_dict()})


@audit_api.post("/audits/<run_id>/resume")
@declare("Resume a cancelled or interrupted audit where it stopped", body=a.ResumeRequest, body_required=False,
         responses={202: a.AuditStarted}, errors=(400, *AUDIT_ERRORS, 503))
def resume_audit(run_id: str, body: a.ResumeRequest):
    mgr, d = served_run(run_id)
    if mgr.active(run_id):
        raise RunBusyError(f"audit {run_id!r} is already running")
    store = RunStore(d)
    meta = store.all_meta()
    man_meta = meta.get("manifest") or {}
    assert mgr.data_root is not None
    path = Path(man_meta.get("path") or "")
    if not man_meta.get("path") or not inside(path.resolve(), mgr.data_root):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    cfg = AuditConfig.from_dict(meta.get("config") or {})
    man = load_manifest(path.resolve(), groups=cfg.groups)
    registry = state().models
    names = list(meta.get("models_requested") or [])
    missing = [n for n in names if n not in registry.names]
    if missing:
        raise BiasscopeError(f"model(s) {', '.join(missing)} of this run are not available in this server")
    job = mgr.submit(run_id, d, man, [registry_source(registry, n) for n in names], cfg,
                     batch_size=body.batch_size, metrics_options=meta.get("metrics_options"))
    return accepted({"id": run_id, "status": job.status, "job": job.to_dict()})


def _run_file(run_id: str, name: str, what: str) -> Path:
    """A file of a served run, or 404 saying the run has no ``what``."""
    _, d = served_run(run_id)
    p = d / name
    if not p.is_file():
        raise NotFoundError(f"run {run_id!r} has no {what}")
    return p


@audit_api.get("/audits/<run_id>/metrics.json")
@declare("The run's metrics.json", query=DownloadQuery, responses={200: "application/json"},
         errors=(400, *AUDIT_ERRORS))
def audit_metrics(run_id: str, query: DownloadQuery):
    p = _run_file(run_id, METRICS_JSON, "metrics yet (they are written when the audit finishes)")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="application/json", as_attachment=query.download,
                     download_name=f"{run_id}-metrics.json")


@audit_api.get("/audits/<run_id>/per_image.csv")
@declare("The per-image CSV", responses={200: "text/csv"}, errors=AUDIT_ERRORS)
def audit_csv(run_id: str):
    p = _run_file(run_id, PER_IMAGE_CSV, "per-image table yet")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="text/csv", as_attachment=True,
                     download_name=f"{run_id}-per_image.csv")


@audit_api.get("/audits/<run_id>/report.html")
@declare("The self-contained report", responses={200: "text/html"}, errors=AUDIT_ERRORS)
def audit_report(run_id: str):
    p = _run_file(run_id, REPORT_HTML, "report yet")
    resp = send_file(io.BytesIO(p.read_bytes()), mimetype="text/html")
    # the report is self-contained (inline CSS, data: images) and needs no script
    resp.headers["Content-Security-Policy"] = _HTML_CSP
    return resp


@audit_api.get("/audits/<run_id>/faces/<name>")
@declare("An aligned group-heatmap sheet (face parts on); its file name is in metrics.json",
         responses={200: "image/png"}, errors=AUDIT_ERRORS)
def audit_face_sheet(run_id: str, name: str):
    _, d = served_run(run_id)
    if not FACE_FILE_RE.match(name):
        raise NotFoundError(f"no face heatmap file {name!r}")
    p = d / FACE_DIR / name
    if not p.is_file():
        raise NotFoundError(f"no face heatmap file {name!r} in run {run_id!r}")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="image/png")


_IMAGES_DOC = (
    "One page of the per-image rows (the CSV's columns), read from the run's store: 'total' rows match, this "
    "page holds at most 'limit' (1 to 500) from 'offset'. Filter with any number of where.COLUMN=VALUE "
    "parameters on the manifest's columns (path, label, attribute columns), model, image_id, status, error and "
    "the prediction's columns (pred_class, pred_prob, pred_label, correct, correct_top1, correct_topk, p_true, "
    "target_class, width, height); flags compare as True/False. Region shares, scores and face columns are "
    "not filterable (the per-image CSV has them all).")


@audit_api.get("/audits/<run_id>/images")
@declare("Per-image rows, one page at a time, filtered and ordered in the run's store", description=_IMAGES_DOC,
         query=a.AuditImagesQuery, responses={200: a.ImagesPage}, errors=(400, *AUDIT_ERRORS))
def audit_images(run_id: str, query: a.AuditImagesQuery):
    """Per-image rows; ``order=telling`` puts misclassified images with the lowest p(true) first."""
    _, d = served_run(run_id)
    store = RunStore(d)
    total, page = store.page(query.model or None, where=query.where(), order=query.order, offset=query.offset,
                             limit=query.limit)
    attr_cols = list((store.get_meta("manifest", {}) or {}).get("attribute_columns", []))
    rows = _records_clean(_frame_records(per_image_table(page, attr_cols)))
    return jsonify({"total": total, "offset": query.offset, "limit": query.limit, "rows": rows})


def install(app, config: dict) -> AuditManager:
    """Create the audit manager from the app's config and register the blueprints."""
    mgr = AuditManager(config.get("DATA_ROOT"), config.get("RUNS_DIR"), workers=int(config.get("AUDIT_WORKERS", 1)),
                       max_pending=int(config.get("MAX_PENDING_AUDITS", 4)))
    app.register_blueprint(audit_api)
    app.register_blueprint(audit_image_api)
    app.register_blueprint(audit_pages)
    from .verify import install_verify  # face verification audits (the Audits page's section)

    install_verify(app, mgr)
    return mgr
