"""Audits in the web app: start, follow, cancel and resume audits; dashboard data; drill-down.

The app reads manifests and images only under the data root given at start
(``biasscope serve --data-root DIR``); without one, every audit route answers 409 with the fix.
Paths from clients are relative to the root (:mod:`biasscope.web.security`); image-bearing routes
check again, at read time, that the stored file still resolves inside the root. Runs live in the runs
directory (default ``DATA_ROOT/.biasscope-runs``); run ids are plain folder names. A start request is
parsed and checked by :mod:`biasscope.web.audit_requests`; regions are drawn by :mod:`biasscope.web.drawing`.

Audits run on a :class:`~biasscope.jobs.JobPool` (one at a time by default) with the status vocabulary
of every job (queued, running, done, error, cancelled), progress after every committed batch
and cancellation between batches; the runner is resumable, so a cancelled or interrupted audit
(even from an earlier server) is resumed with ``POST /api/audits/{run_id}/resume``.
"""

from __future__ import annotations

import io
import logging
import math
import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from flask import Blueprint, Response, jsonify, render_template, request, send_file
from PIL import Image

from .. import __version__
from ..audit import (
    METRICS_JSON,
    PER_IMAGE_CSV,
    REPORT_HTML,
    AuditConfig,
    ModelSource,
    image_detail,
    load_manifest,
    per_image_frame,
    run_info,
)
from ..audit.face_audit import FACE_DIR, quality_flags
from ..audit.store import DB_NAME, RUNS_SUBDIR, RunStore, json_safe
from ..errors import BiasscopeError, ManifestError
from ..explainers import get_explainer, is_signed, list_explainers
from ..images import load_image
from ..jobs import TERMINAL, BackgroundJob, JobPool, JobStatus, normal_status
from ..models import ModelAdapter
from .audit_requests import RunBusyError, load_root_manifest, parse_audit_request
from .drawing import draw_regions
from .jobs import fast_png
from .jsonio import field_bool as _bool
from .jsonio import field_int as _int
from .jsonio import method_names, method_params
from .jsonio import request_fields as _payload
from .paths import HUB_NAME, scrub_paths
from .security import MSG_OUTSIDE, MSG_RUN_OUTSIDE, RUN_ID_RE, PathRefusedError, inside, resolve_in_root
from .state import ModelRegistry, NotFoundError

__all__ = ["MSG_DISABLED", "AuditManager", "AuditsDisabledError", "WebAudit", "audit_api", "audit_pages", "install"]

log = logging.getLogger("biasscope.web")

MSG_DISABLED = ("audits are disabled: this server has no data root. Start it with "
                "`biasscope serve --data-root DIR` (manifests and images are read only under DIR)")
MSG_STOPPED = "the audit stopped before it finished (the server stopped, or it failed); resume it to continue"
FACE_FILE_RE = re.compile(r"^m\d+_[A-Za-z0-9_.-]+\.png$")

audit_api = Blueprint("audit_api", __name__, url_prefix="/api")
audit_pages = Blueprint("audit_pages", __name__)


class AuditsDisabledError(BiasscopeError):
    """No data root was configured."""

    status = 409


class RegistrySource(ModelSource):
    """A model of the web app's registry (shared with explanation requests), loaded when its turn comes."""

    registry: ModelRegistry | None = None

    def load(self) -> ModelAdapter:
        assert self.registry is not None
        return self.registry.get(self.spec)


def _source(registry: ModelRegistry, name: str) -> RegistrySource:
    src = RegistrySource(spec=name, key=name)
    object.__setattr__(src, "registry", registry)
    return src


@dataclass(kw_only=True, eq=False)
class WebAudit(BackgroundJob):
    """An audit queued or running in this server (its id is the run id; its results live in its folder)."""

    kind = "audit"

    run_dir: Path
    progress: dict = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.id

    def to_dict(self) -> dict:
        return {"status": str(self.status), "progress": self.progress, "error": self.error, "created": self.created,
                "finished": self.finished}


class AuditManager:
    """Where audits run: a data root, a runs directory and a bounded pool of audit threads."""

    def __init__(self, data_root: str | Path | None, runs_dir: str | Path | None, *, workers: int = 1,
                 max_pending: int = 4) -> None:
        self.data_root = Path(data_root).resolve() if data_root else None
        if self.data_root is not None and not self.data_root.is_dir():
            raise BiasscopeError(f"data root {data_root} is not a folder")
        if runs_dir:
            self.runs_dir: Path | None = Path(runs_dir).resolve()
        else:
            self.runs_dir = self.data_root / RUNS_SUBDIR if self.data_root else None
        self.max_pending = max_pending
        self._pool: JobPool[WebAudit] = JobPool(
            workers=workers, max_pending=max_pending, name="biasscope-audit", public=self.public,
            conflict=RunBusyError, busy="{pending} audits are already queued or running; try again when one finishes",
            internal="internal error while auditing; the details are in the server log")

    @property
    def enabled(self) -> bool:
        return self.data_root is not None

    def public(self, text: str) -> str:
        """``text`` as a client may see it: paths relative to the data root, runs under 'runs/',
        weights under the cache's documented name."""
        from ..models.zoo import hub_checkpoint_dir

        return scrub_paths(text, [(self.data_root, ""), (self.runs_dir, "runs"), (hub_checkpoint_dir(), HUB_NAME)])

    def root(self) -> Path:
        if self.data_root is None or self.runs_dir is None:
            raise AuditsDisabledError(MSG_DISABLED)
        return self.data_root

    def run_dir(self, run_id: str, *, exists: bool = True) -> Path:
        self.root()
        assert self.runs_dir is not None
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise NotFoundError(f"no audit run {run_id!r}")
        d = self.runs_dir / run_id
        if exists and not (d / DB_NAME).is_file():
            raise NotFoundError(f"no audit run {run_id!r} in the runs directory")
        return d

    def live(self, run_id: str) -> WebAudit | None:
        return self._pool.get(run_id)

    def active(self, run_id: str) -> bool:
        j = self.live(run_id)
        return j is not None and j.active

    def submit(self, run_id: str, run_dir: Path, manifest, sources: list, cfg: AuditConfig, *,
               batch_size: int, metrics_options: dict | None) -> WebAudit:
        from ..audit import run_audit

        def work(job: WebAudit) -> None:
            def progress(p) -> None:
                job.progress = {"fraction": round(p.fraction, 4), "done": p.done_all, "total": p.total_all,
                                "model": p.model, "model_index": p.model_index, "n_models": p.n_models,
                                "errors": p.errors, "eta_s": p.eta_s, "stage": p.stage}

            run_audit(manifest, sources, job.run_dir, cfg, batch_size=batch_size, progress=progress,
                      cancel=job.cancel_event, metrics_options=metrics_options)

        return self._pool.submit(WebAudit(id=run_id, run_dir=run_dir), work)

    def cancel(self, run_id: str) -> WebAudit:
        job = self.live(run_id)
        if job is None or not job.active:
            raise RunBusyError(f"audit {run_id!r} is not running in this server")
        self._pool.cancel(run_id)
        return job

    def shutdown(self) -> None:
        self._pool.shutdown()


# ---------------------------------------------------------------------------------------- helpers
def audits() -> AuditManager:
    from .app import state

    return state().audits


def _run_status(mgr: AuditManager, d: Path) -> dict:
    info = run_info(d)
    info.pop("run_dir", None)
    run_id = d.name
    info["id"] = run_id
    job = mgr.live(run_id)
    info["job"] = job.to_dict() if job else None
    stored = info["status"]
    if job is not None and job.active:
        status = job.status
    elif job is not None and job.status == JobStatus.ERROR:
        status, info["error"] = job.status, job.error
    else:  # the store's word; a run still marked running stopped without saying so (the server stopped)
        status = JobStatus.ERROR if stored == "running" else normal_status(stored)
        if status == JobStatus.ERROR and not info.get("error"):
            info["error"] = MSG_STOPPED
    info["status"] = str(status)
    info["resumable"] = not (job is not None and job.active) and (
        stored in ("interrupted", "cancelled", "running") or (status == JobStatus.ERROR and info["progress"] < 1.0))
    man = info.get("manifest") or {}
    root = mgr.data_root
    info["manifest"] = {k: v for k, v in man.items() if k not in ("root", "path")}
    if man.get("path") and root is not None and inside(Path(man["path"]).resolve(), root):
        info["manifest"]["path"] = Path(man["path"]).resolve().relative_to(root).as_posix()
    info["files_allowed"] = _files_allowed(mgr, d)
    if isinstance(info.get("error"), str):
        info["error"] = mgr.public(info["error"])
    return json_safe(info)


def _files_allowed(mgr: AuditManager, d: Path) -> bool:
    man = RunStore(d).get_meta("manifest", {}) or {}
    root = man.get("root")
    return bool(root) and mgr.data_root is not None and inside(Path(root).resolve(), mgr.data_root)


def _run(run_id: str) -> tuple[AuditManager, Path]:
    """The run's folder; refused (403) when the run audited files outside the data root."""
    mgr = audits()
    d = mgr.run_dir(run_id)
    if not _files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    return mgr, d


def _image_file(mgr: AuditManager, d: Path, image_id: int) -> tuple[dict, Path]:
    """The stored image row and its file, checked (now) to resolve inside the data root."""
    if not _files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=d.name))
    row = RunStore(d).image_row(image_id)
    if row is None:
        raise NotFoundError(f"image {image_id} is not in run {d.name!r}")
    f = Path(row["file"]).resolve()
    assert mgr.data_root is not None
    if not inside(f, mgr.data_root):
        raise PathRefusedError(MSG_OUTSIDE.format(what="image", path=row["path"]))
    return row, f


def _png(img: Image.Image) -> Response:
    return send_file(io.BytesIO(fast_png(img)), mimetype="image/png")


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
    if not live and not _files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    return render_template("audit.html", version=__version__, run_id=d.name)


# ---------------------------------------------------------------------------------------- API
@audit_api.get("/audits")
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
                    if not _files_allowed(mgr, d):
                        runs.append({"id": d.name, "name": d.name, "status": JobStatus.ERROR,
                                     "files_allowed": False, "error": MSG_RUN_OUTSIDE.format(run_id=d.name)})
                        continue
                    runs.append(_run_status(mgr, d))
                except Exception as exc:  # one broken run must not hide the others
                    runs.append({"id": d.name, "name": d.name, "status": JobStatus.ERROR,
                                 "error": mgr.public(str(exc))})
    runs.sort(key=lambda r: r.get("created") or "", reverse=True)
    return jsonify({"enabled": True, "data_root": str(mgr.data_root), "runs_dir": str(mgr.runs_dir),
                    "quality_flags": quality_flags(), "runs": runs})


@audit_api.get("/files")
def list_files():
    """Folders and CSV files in one folder of the data root (the manifest picker)."""
    mgr = audits()
    root = mgr.root()
    rel = request.args.get("path", "")
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
def inspect_manifest():
    data = _payload()
    try:
        m = load_root_manifest(audits().root(), data.get("manifest"), [])
    except ManifestError as exc:
        mgr = audits()
        return jsonify({"valid": False, "message": mgr.public(str(exc).split("\n")[0]),
                        "problems": [mgr.public(p) for p in exc.problems]}), 200
    return jsonify({
        "valid": True,
        "manifest": str(data.get("manifest")),
        "n_images": len(m),
        "labels": m.labels,
        "attribute_columns": m.attribute_columns,
        "values": {c: sorted({r.attributes[c] for r in m.rows}) for c in m.attribute_columns},
        "region_names": m.region_names,
    })


def _start(data: dict[str, Any]) -> WebAudit:
    mgr, registry = audits(), _models()
    req = parse_audit_request(data, mgr.root(), lambda name: mgr.run_dir(name, exists=False), registry)
    return mgr.submit(req.name, req.run_dir, req.manifest, [_source(registry, n) for n in req.models], req.config,
                      batch_size=req.batch_size, metrics_options=req.metrics_options)


def _models() -> ModelRegistry:
    from .app import state

    return state().models


@audit_api.post("/audits")
def create_audit():
    job = _start(_payload())
    body = {"id": job.run_id, "status": job.status, "job": job.to_dict(), "url": f"/audits/{job.run_id}"}
    resp = jsonify(body)
    resp.status_code = 202
    resp.headers["Location"] = f"/api/audits/{job.run_id}"
    return resp


@audit_api.get("/audits/<run_id>")
def get_audit(run_id: str):
    mgr = audits()
    job = mgr.live(run_id)
    d = mgr.run_dir(run_id, exists=job is None)
    starting = {"id": run_id, "name": run_id, "status": job.status if job else JobStatus.QUEUED,
                "job": job.to_dict() if job else None, "progress": 0.0, "has_metrics": False}
    if not (d / DB_NAME).is_file():  # queued: nothing written yet
        return jsonify(starting)
    if job is None:  # a run this server started was checked when it started
        _run(run_id)
    try:
        return jsonify(_run_status(mgr, d))
    except sqlite3.OperationalError:
        if job is None or job.status in TERMINAL:
            raise
        return jsonify(starting)  # the run's tables are being created


@audit_api.post("/audits/<run_id>/cancel")
def cancel_audit(run_id: str):
    mgr = audits()
    mgr.run_dir(run_id, exists=False)
    job = mgr.cancel(run_id)
    return jsonify({"id": run_id, "status": job.status, "job": job.to_dict()})


@audit_api.post("/audits/<run_id>/resume")
def resume_audit(run_id: str):
    mgr, d = _run(run_id)
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
    registry = _models()
    names = list(meta.get("models_requested") or [])
    missing = [n for n in names if n not in registry.names]
    if missing:
        raise BiasscopeError(f"model(s) {', '.join(missing)} of this run are not available in this server")
    opts = meta.get("metrics_options")
    job = mgr.submit(run_id, d, man, [_source(registry, n) for n in names], cfg,
                     batch_size=_int(_payload().get("batch_size"), "batch_size", 1, 1024, 16), metrics_options=opts)
    resp = jsonify({"id": run_id, "status": job.status, "job": job.to_dict()})
    resp.status_code = 202
    return resp


@audit_api.get("/audits/<run_id>/metrics.json")
def audit_metrics(run_id: str):
    _, d = _run(run_id)
    p = d / METRICS_JSON
    if not p.is_file():
        raise NotFoundError(f"run {run_id!r} has no metrics yet (they are written when the audit finishes)")
    download = _bool(request.args.get("download"), "download")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="application/json", as_attachment=download,
                     download_name=f"{run_id}-metrics.json")


@audit_api.get("/audits/<run_id>/per_image.csv")
def audit_csv(run_id: str):
    _, d = _run(run_id)
    p = d / PER_IMAGE_CSV
    if not p.is_file():
        raise NotFoundError(f"run {run_id!r} has no per-image table yet")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="text/csv", as_attachment=True,
                     download_name=f"{run_id}-per_image.csv")


@audit_api.get("/audits/<run_id>/report.html")
def audit_report(run_id: str):
    mgr, d = _run(run_id)
    if not _files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    p = d / REPORT_HTML
    if not p.is_file():
        raise NotFoundError(f"run {run_id!r} has no report yet")
    resp = send_file(io.BytesIO(p.read_bytes()), mimetype="text/html")
    # the report is self-contained (inline CSS, data: images) and needs no script
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return resp


@audit_api.get("/audits/<run_id>/faces/<name>")
def audit_face_sheet(run_id: str, name: str):
    mgr, d = _run(run_id)
    if not FACE_FILE_RE.match(name):
        raise NotFoundError(f"no face heatmap file {name!r}")
    if not _files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    p = d / FACE_DIR / name
    if not p.is_file():
        raise NotFoundError(f"no face heatmap file {name!r} in run {run_id!r}")
    return send_file(io.BytesIO(p.read_bytes()), mimetype="image/png")


@audit_api.get("/audits/<run_id>/images")
def audit_images(run_id: str):
    """Per-image rows; ``order=telling`` puts misclassified images with the lowest p(true) first."""
    _, d = _run(run_id)
    df = per_image_frame(d, request.args.get("model") or None)
    if not df.empty:
        for key, value in request.args.items():
            if key.startswith("where."):
                col = key[6:]
                if col not in df:
                    raise BiasscopeError(f"no column {col!r} to filter on")
                df = df[df[col].astype(str) == value]
        order = request.args.get("order", "telling")
        if order == "telling" and "correct" in df:
            df = df.assign(_wrong=~df["correct"].fillna(True).astype(bool), _p=df["p_true"].fillna(1.0))
            df = df.sort_values(["_wrong", "_p"], ascending=[False, True]).drop(columns=["_wrong", "_p"])
        elif order != "manifest" and order != "telling":
            raise BiasscopeError("'order' must be telling or manifest")
    total = len(df)
    limit = _int(request.args.get("limit"), "limit", 1, 100_000, 200)
    offset = _int(request.args.get("offset"), "offset", 0, 10_000_000, 0)
    rows = _records_clean(_frame_records(df.iloc[offset : offset + limit]))
    return jsonify({"total": total, "offset": offset, "rows": rows})


@audit_api.get("/audits/<run_id>/images/<int:image_id>")
def audit_image(run_id: str, image_id: int):
    mgr, d = _run(run_id)
    if RunStore(d).image_row(image_id) is None:
        raise NotFoundError(f"image {image_id} is not in run {run_id!r}")
    detail = image_detail(d, image_id)
    img, methods = detail["image"], list(detail["methods"])
    base = f"/api/audits/{run_id}/images/{image_id}"
    results = {}
    for key, rec in detail["results"].items():
        rec.pop("model", None)
        if rec.get("face"):
            rec["face"] = {k: v for k, v in rec["face"].items() if k != "landmarks"} | {
                "has_landmarks": bool(rec["face"].get("landmarks"))}
        rec["overlays"] = {m: f"{base}/overlay.png?model={key}&method={m}" for m in methods
                           if rec.get("status") == "ok"}
        results[key] = rec
    explainable = [k for k in results if k in _models().names]
    out = {"run_id": run_id, "image_id": image_id, "path": img["path"], "label": img["label"],
           "attributes": img["attributes"], "regions": img["regions"], "methods": methods, "results": results,
           "files_allowed": _files_allowed(mgr, d), "image_url": f"{base}/image.png",
           "regions_url": f"{base}/regions.png", "explain_url": f"{base}/explain", "explainable_models": explainable,
           "explainers": [{"name": c.name, "label": c.label, "slow": c.slow} for c in list_explainers()]}
    return jsonify(json_safe(out))


def _load_run_image(run_id: str, image_id: int) -> tuple[Path, dict, Image.Image]:
    mgr, d = _run(run_id)
    row, f = _image_file(mgr, d, image_id)
    return d, row, load_image(f)


@audit_api.get("/audits/<run_id>/images/<int:image_id>/image.png")
def audit_image_png(run_id: str, image_id: int):
    _, _, img = _load_run_image(run_id, image_id)
    side = _int(request.args.get("max"), "max", 16, 4096, 768)
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _png(img)


@audit_api.get("/audits/<run_id>/images/<int:image_id>/overlay.png")
def audit_overlay(run_id: str, image_id: int):
    from ..audit.face_audit import heatmap_in_image
    from ..render import render_overlay

    d, _, img = _load_run_image(run_id, image_id)
    model, method = request.args.get("model", ""), request.args.get("method", "")
    heat = RunStore(d).heatmap(model, image_id, method)
    if heat is None:
        raise NotFoundError(f"no stored {method!r} heatmap of model {model!r} for image {image_id}")
    scored = RunStore(d).result(model, image_id)
    view = scored.view if scored else None
    full = img.size
    side = _int(request.args.get("max"), "max", 16, 4096, 512)
    if max(img.size) > side:
        img.thumbnail((side, side), Image.Resampling.LANCZOS)
    alpha_raw = request.args.get("alpha")
    alpha = None
    if alpha_raw:
        try:
            alpha = float(alpha_raw)
        except ValueError:
            raise BiasscopeError("'alpha' must be a number between 0 and 1") from None
        if not 0 <= alpha <= 1:
            raise BiasscopeError("'alpha' must be between 0 and 1")
    signed = is_signed(method, (RunStore(d).get_meta("config", {}) or {}).get("method_params"))
    h = heatmap_in_image(heat, view, (img.height, img.width), full)
    kw = {} if alpha is None else {"alpha": alpha}
    return _png(render_overlay(img, h, signed=signed, **kw))


@audit_api.get("/audits/<run_id>/images/<int:image_id>/regions.png")
def audit_regions(run_id: str, image_id: int):
    """The image with its manifest regions outlined and its face parts (if any) tinted."""
    d, row, img = _load_run_image(run_id, image_id)
    mgr = audits()
    faces = [r.face for r in RunStore(d).results(image_id=image_id) if r.face]
    man_root = Path((RunStore(d).get_meta("manifest", {}) or {}).get("root") or "")

    def check_mask(path: Path, text: str) -> None:
        assert mgr.data_root is not None
        if not inside(path.resolve(), mgr.data_root):
            raise PathRefusedError(MSG_OUTSIDE.format(what="mask", path=text))

    out = draw_regions(img, row["regions"], man_root, face=faces[0] if faces else None, check_mask=check_mask)
    side = _int(request.args.get("max"), "max", 16, 4096, 512)
    if max(out.size) > side:
        out.thumbnail((side, side), Image.Resampling.LANCZOS)
    return _png(out)


@audit_api.post("/audits/<run_id>/images/<int:image_id>/explain")
def audit_explain(run_id: str, image_id: int):
    """Explain one audited image at full resolution as a background explanation job (GET /api/jobs/{id})."""
    from .app import state

    data = _payload()
    d, row, img = _load_run_image(run_id, image_id)
    st = state()
    key = st.models.check_name(str(data.get("model") or ""))
    adapter = st.models.get(key)
    methods = method_names(data.get("methods"), ["gradcam"])
    raw = method_params(data.get("params"))
    params = {m: get_explainer(m)(adapter, **dict(raw.get(m, {}))).config for m in methods}
    target = data.get("target")
    if target in (None, ""):  # default: the class the audit explained for this model and image
        scored = RunStore(d).result(key, image_id)  # None when the run did not audit this model
        target = scored.target_index if scored and scored.ok else None
    target_idx = adapter.class_index(target) if target not in (None, "") else None
    rec, work = st.images.put(img, Path(row["path"]).name)
    job = st.jobs.new_job(model=key, adapter=adapter, image=work, image_meta=rec.to_dict(),
                          methods={m: (get_explainer(m).label, get_explainer(m).signed_for(params[m]))
                                   for m in methods},
                          params=params, target=target_idx,
                          faithfulness=_bool(data.get("faithfulness"), "faithfulness"))
    st.jobs.submit(job, adapter)
    resp = jsonify(job.to_dict())
    resp.status_code = 202
    resp.headers["Location"] = f"/api/jobs/{job.id}"
    return resp


def install(app, config: dict) -> AuditManager:
    """Create the audit manager from the app's config and register the blueprints."""
    mgr = AuditManager(config.get("DATA_ROOT"), config.get("RUNS_DIR"), workers=int(config.get("AUDIT_WORKERS", 1)),
                       max_pending=int(config.get("MAX_PENDING_AUDITS", 4)))
    app.register_blueprint(audit_api)
    app.register_blueprint(audit_pages)
    from .verify import install_verify  # face verification audits (the Audits page's section)

    install_verify(app, mgr)
    return mgr
