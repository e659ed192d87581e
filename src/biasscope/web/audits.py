"""Audits in the web app: start, follow, cancel and resume audits; dashboard data; drill-down.

The app reads manifests and images only under the data root given at start
(``biasscope serve --data-root DIR``); without one, every audit route answers 409 with the fix.
Paths from clients are relative to the root: absolute paths and ``..`` are refused (400), and a path
that resolves outside the root (a symlink) is refused (403). Image-bearing routes check again, at
read time, that the stored file still resolves inside the root. Runs live in the runs directory
(default ``DATA_ROOT/.biasscope-runs``); run ids are plain folder names.

Audits run on a small thread pool (one at a time by default) with the same status vocabulary as
explanation jobs (queued, running, done, error, cancelled), progress after every committed batch
and cancellation between batches; the runner is resumable, so a cancelled or interrupted audit
(even from an earlier server) is resumed with ``POST /api/audits/{run_id}/resume``.
"""

from __future__ import annotations

import io
import logging
import math
import re
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
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
    load_concepts,
    load_manifest,
    per_image_frame,
    run_info,
)
from ..audit.face_audit import FACE_DIR, quality_flags
from ..audit.store import DB_NAME, RunStore, json_safe
from ..errors import BiasscopeError, CancelledError, ManifestError
from ..explainers import get_explainer, is_signed, list_explainers
from ..images import load_image
from ..models import ModelAdapter
from .jobs import TERMINAL, BusyError, fast_png
from .jsonio import json_object_body
from .paths import HUB_NAME, scrub_paths
from .state import ModelRegistry, NotFoundError

__all__ = [
    "MSG_ABSOLUTE",
    "MSG_DISABLED",
    "MSG_DOTDOT",
    "MSG_OUTSIDE",
    "AuditManager",
    "AuditsDisabledError",
    "PathRefusedError",
    "audit_api",
    "audit_pages",
    "resolve_in_root",
]

log = logging.getLogger("biasscope.web")

MSG_DISABLED = ("audits are disabled: this server has no data root. Start it with "
                "`biasscope serve --data-root DIR` (manifests and images are read only under DIR)")
MSG_ABSOLUTE = "{what} {path!r} is absolute; give a path relative to the data root"
MSG_DOTDOT = "{what} {path!r} contains '..'; give a path inside the data root"
MSG_OUTSIDE = "{what} {path!r} resolves outside the data root (a symbolic link?); it cannot be read"
MSG_NAME_TOO_LONG = "{what} has a folder or file name of {n} bytes; names are at most {limit} bytes"
MSG_PATH_TOO_LONG = "{what} is {n} bytes long; paths are at most {limit} bytes"
MAX_NAME_BYTES = 255  # the file systems' limit per name (NAME_MAX)
MAX_PATH_BYTES = 4096  # ... and per path (PATH_MAX)
MSG_RUN_OUTSIDE = ("run {run_id!r} audited files outside this server's data root; its images and report "
                   "cannot be served")
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FACE_FILE_RE = re.compile(r"^m\d+_[A-Za-z0-9_.-]+\.png$")

audit_api = Blueprint("audit_api", __name__, url_prefix="/api")
audit_pages = Blueprint("audit_pages", __name__)


class AuditsDisabledError(BiasscopeError):
    """No data root was configured."""

    status = 409


class PathRefusedError(BiasscopeError):
    """A path resolves outside the data root."""

    status = 403


class RunBusyError(BiasscopeError):
    """The run is already queued or running."""

    status = 409


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_in_root(root: Path, rel: Any, what: str = "path") -> Path:
    """``root / rel`` resolved, refusing absolute paths and ``..`` (400) and escapes via links (403)."""
    if not isinstance(rel, str) or not rel.strip():
        raise BiasscopeError(f"'{what}' must be a path relative to the data root")
    text = rel.strip()
    if "\x00" in text:
        raise BiasscopeError(f"{what} contains a NUL character")
    posix = text.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or PurePosixPath(posix).is_absolute():
        raise BiasscopeError(MSG_ABSOLUTE.format(what=what, path=text))
    parts = PurePosixPath(posix).parts
    if ".." in parts:
        raise BiasscopeError(MSG_DOTDOT.format(what=what, path=text))
    longest = max((len(p.encode("utf-8", "surrogatepass")) for p in parts), default=0)
    if longest > MAX_NAME_BYTES:
        raise BiasscopeError(MSG_NAME_TOO_LONG.format(what=what, n=longest, limit=MAX_NAME_BYTES))
    total = len(posix.encode("utf-8", "surrogatepass"))
    if total > MAX_PATH_BYTES:
        raise BiasscopeError(MSG_PATH_TOO_LONG.format(what=what, n=total, limit=MAX_PATH_BYTES))
    base = root.resolve()
    try:
        full = base.joinpath(*parts).resolve()
    except OSError as exc:  # e.g. a symlink loop
        raise BiasscopeError(f"{what} {text[:200]!r} cannot be resolved: {exc.strerror or exc}") from None
    if not _inside(full, base):
        raise PathRefusedError(MSG_OUTSIDE.format(what=what, path=text))
    return full


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


@dataclass
class WebAudit:
    """An audit queued or running in this server (the run's results live in its folder)."""

    run_id: str
    run_dir: Path
    status: str = "queued"
    progress: dict = field(default_factory=dict)
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Future | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {"status": self.status, "progress": self.progress, "error": self.error, "created": self.created,
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
            self.runs_dir = self.data_root / ".biasscope-runs" if self.data_root else None
        self.max_pending = max_pending
        self._jobs: dict[str, WebAudit] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="biasscope-audit")

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
        with self._lock:
            return self._jobs.get(run_id)

    def active(self, run_id: str) -> bool:
        j = self.live(run_id)
        return j is not None and j.status not in TERMINAL

    def submit(self, run_id: str, run_dir: Path, manifest, sources: list, cfg: AuditConfig, *,
               batch_size: int, metrics_options: dict | None) -> WebAudit:
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if j.status not in TERMINAL)
            cur = self._jobs.get(run_id)
            if cur is not None and cur.status not in TERMINAL:
                raise RunBusyError(f"audit {run_id!r} is already {cur.status}")
            if pending >= self.max_pending:
                raise BusyError(f"{pending} audits are already queued or running; try again when one finishes")
            job = WebAudit(run_id=run_id, run_dir=run_dir)
            self._jobs[run_id] = job
        job.future = self._pool.submit(self._run, job, manifest, sources, cfg, batch_size, metrics_options)
        return job

    def cancel(self, run_id: str) -> WebAudit:
        job = self.live(run_id)
        if job is None or job.status in TERMINAL:
            raise RunBusyError(f"audit {run_id!r} is not running in this server")
        job.cancel_event.set()
        if job.future is not None and job.future.cancel():
            job.status, job.finished = "cancelled", time.time()
        return job

    def shutdown(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: WebAudit, manifest, sources, cfg, batch_size, metrics_options) -> None:
        from ..audit import run_audit

        def progress(p) -> None:
            job.progress = {"fraction": round(p.fraction, 4), "done": p.done_all, "total": p.total_all,
                            "model": p.model, "model_index": p.model_index, "n_models": p.n_models,
                            "errors": p.errors, "eta_s": p.eta_s, "stage": p.stage}

        job.status = "running"
        try:
            run_audit(manifest, sources, job.run_dir, cfg, batch_size=batch_size, progress=progress,
                      cancel=job.cancel_event, metrics_options=metrics_options)
            job.status = "done"
        except CancelledError:
            job.status = "cancelled"
        except BiasscopeError as exc:
            job.status, job.error = "error", self.public(str(exc))
        except Exception:  # a worker must never die silently; the client sees no traceback
            log.exception("audit %s failed", job.run_id)
            job.status, job.error = "error", "internal error while auditing; the details are in the server log"
        finally:
            job.finished = time.time()


# ---------------------------------------------------------------------------------------- helpers
def audits() -> AuditManager:
    from .app import state

    return state().audits


def _payload() -> dict[str, Any]:
    """The JSON object body (empty when the request sends no JSON)."""
    return json_object_body() if request.mimetype == "application/json" else {}


def _list(value: Any, name: str) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise BiasscopeError(f"'{name}' must be a list of strings or a comma-separated string")
    return [v.strip() for v in items if v.strip()]


def _int(value: Any, name: str, lo: int, hi: int, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BiasscopeError(f"'{name}' must be an integer")
    try:
        v = int(value)
    except ValueError:
        raise BiasscopeError(f"'{name}' must be an integer, got {value!r}") from None
    if not lo <= v <= hi:
        raise BiasscopeError(f"'{name}' must be between {lo} and {hi}, got {v}")
    return v


def _bool(value: Any, name: str, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    s = str(value).lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise BiasscopeError(f"'{name}' must be true or false")


def _manifest(rel: Any, groups: list[str]):
    path = resolve_in_root(audits().root(), rel, "manifest")
    if not path.is_file():
        raise NotFoundError(f"manifest {rel!r} not found under the data root")
    return load_manifest(path, groups=groups)


def _run_status(mgr: AuditManager, d: Path) -> dict:
    info = run_info(d)
    info.pop("run_dir", None)
    run_id = d.name
    info["id"] = run_id
    job = mgr.live(run_id)
    info["job"] = job.to_dict() if job else None
    if job is not None and job.status not in TERMINAL:
        info["status"] = job.status
    elif info["status"] == "running":  # the process that ran it stopped without saying so
        info["status"] = "interrupted"
    info["resumable"] = info["status"] in ("interrupted", "cancelled") or (
        info["status"] in ("error", "failed") and info["progress"] < 1.0)
    if job is not None and job.status == "error":
        info["status"], info["error"] = "error", job.error
        info["resumable"] = info["progress"] < 1.0
    man = info.get("manifest") or {}
    root = mgr.data_root
    info["manifest"] = {k: v for k, v in man.items() if k not in ("root", "path")}
    if man.get("path") and root is not None and _inside(Path(man["path"]).resolve(), root):
        info["manifest"]["path"] = Path(man["path"]).resolve().relative_to(root).as_posix()
    info["files_allowed"] = _files_allowed(mgr, d)
    if isinstance(info.get("error"), str):
        info["error"] = mgr.public(info["error"])
    return json_safe(info)


def _files_allowed(mgr: AuditManager, d: Path) -> bool:
    man = RunStore(d).get_meta("manifest", {}) or {}
    root = man.get("root")
    return bool(root) and mgr.data_root is not None and _inside(Path(root).resolve(), mgr.data_root)


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
    row = next((r for r in RunStore(d).images() if r["image_id"] == image_id), None)
    if row is None:
        raise NotFoundError(f"image {image_id} is not in run {d.name!r}")
    f = Path(row["file"]).resolve()
    assert mgr.data_root is not None
    if not _inside(f, mgr.data_root):
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
                           flags=quality_flags())


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
                        runs.append({"id": d.name, "name": d.name, "status": "outside data root",
                                     "files_allowed": False, "error": MSG_RUN_OUTSIDE.format(run_id=d.name)})
                        continue
                    runs.append(_run_status(mgr, d))
                except Exception as exc:  # one broken run must not hide the others
                    runs.append({"id": d.name, "name": d.name, "status": "unreadable", "error": mgr.public(str(exc))})
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
        if not _inside(real, root):
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
        m = _manifest(data.get("manifest"), [])
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


def _start(data: dict[str, Any]):
    mgr = audits()
    st_models = _models()
    groups = _list(data.get("groups"), "groups")
    if not groups:
        raise BiasscopeError("choose at least one group column ('groups')")
    man = _manifest(data.get("manifest"), groups)
    names = _list(data.get("models"), "models")
    if not names:
        raise BiasscopeError("choose at least one model ('models')")
    names = list(dict.fromkeys(st_models.check_name(n) for n in names))
    for n in names:
        s = st_models.status(n)
        if not s["ready"]:
            from ..errors import WeightsMissingError

            raise WeightsMissingError(f"model {n}: {s['reason']}. Fix: {s['fix']}")
    methods = []
    for m in _list(data.get("methods"), "methods"):
        name = get_explainer(m).name
        if name not in methods:
            methods.append(name)
    params = data.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise BiasscopeError("'params' must map method names to objects of parameters")
    concepts_raw = data.get("concepts") or {}
    if isinstance(concepts_raw, str):
        concepts_raw = [ln for ln in concepts_raw.splitlines() if ln.strip()]
    concepts = load_concepts(concepts_raw) if concepts_raw else {}
    removal = str(data.get("removal") or "fill")
    if removal not in ("fill", "blur", "none"):
        raise BiasscopeError("'removal' must be fill, blur or none")
    from ..regions import RemovalConfig

    flags = _list(data.get("exclude_flags"), "exclude_flags")
    face_parts = _bool(data.get("face_parts"), "face_parts")
    unknown = [f for f in flags if f not in quality_flags()]
    if unknown:
        raise BiasscopeError(f"unknown quality flag(s) {', '.join(unknown)}; choose from {', '.join(quality_flags())}")
    if flags and not face_parts:
        raise BiasscopeError("excluding images by quality flag needs face parts ('face_parts': true)")
    cfg = AuditConfig(groups=groups, methods=methods, concepts=concepts,
                      top_k=_int(data.get("top_k"), "top_k", 1, 1000, 5),
                      match="topk" if data.get("match") == "topk" else "top1",
                      method_params={get_explainer(k).name: dict(v) for k, v in params.items()},
                      removal=None if removal == "none" else RemovalConfig(mode=removal),  # type: ignore[arg-type]
                      face_parts=face_parts)
    stereo = _list(data.get("stereotypical"), "stereotypical")
    for s in stereo:
        if ":" not in s:
            raise BiasscopeError(f"stereotypical cell {s!r}: expected LABEL:GROUP, e.g. doctor:male")
    mopts = {"n_boot": _int(data.get("n_boot"), "n_boot", 100, 20000, 1000),
             "n_perm": _int(data.get("n_perm"), "n_perm", 100, 20000, 1000),
             "min_group_size": _int(data.get("min_group_size"), "min_group_size", 1, 100000, 30),
             "stereotypical": stereo, "exclude_flags": flags}
    batch = _int(data.get("batch_size"), "batch_size", 1, 1024, 16)
    # validate stereotypical cells, methods and labels on each model now, not in the worker (which
    # checks again before it creates the run's folder, so a refused run leaves nothing behind)
    from ..audit import LabelSpace
    from ..audit.runner import check_stereotypical

    check_stereotypical(man, stereo, None, groups)

    for n in names:
        adapter = st_models.get(n)
        LabelSpace.build(adapter, man.labels, cfg.concepts, top_k=cfg.top_k, match=cfg.match)
        for m in methods:
            get_explainer(m)(adapter, **dict(cfg.method_params.get(m, {})))
    if face_parts:
        from ..audit.face_audit import check_face_parts

        check_face_parts(man.region_names)
    name = str(data.get("name") or "").strip()
    if name:
        if not RUN_ID_RE.match(name):
            raise BiasscopeError("'name' may use letters, digits, '.', '_' and '-' (at most 100, not starting "
                                 "with '.')")
    else:
        stem = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(str(data.get("manifest"))).stem).strip("-") or "audit"
        name = f"{stem}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    run_dir = mgr.run_dir(name, exists=False)
    if run_dir.exists():
        raise RunBusyError(f"a run named {name!r} already exists; choose another name or resume it")
    return mgr.submit(name, run_dir, man, [_source(st_models, n) for n in names], cfg, batch_size=batch,
                      metrics_options=mopts)


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
    starting = {"id": run_id, "name": run_id, "status": job.status if job else "unknown",
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
    if not man_meta.get("path") or not _inside(path.resolve(), mgr.data_root):
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
    store = RunStore(d)
    img = next((r for r in store.images() if r["image_id"] == image_id), None)
    if img is None:
        raise NotFoundError(f"image {image_id} is not in run {run_id!r}")
    cfg = store.get_meta("config", {}) or {}
    methods = list(cfg.get("methods", []))
    base = f"/api/audits/{run_id}/images/{image_id}"
    results = {}
    for rec in (r for r in store.results() if r["image_id"] == image_id):
        key = rec.pop("model")
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
    view = (RunStore(d).record(model, image_id) or {}).get("view")
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
    from PIL import ImageDraw

    from ..regions import parse_region, region_mask

    d, row, img = _load_run_image(run_id, image_id)
    mgr = audits()
    recs = [r for r in RunStore(d).results() if r["image_id"] == image_id and r.get("face")]
    out = img.copy()
    lm = recs[0]["face"].get("landmarks") if recs else None
    if lm:
        from ..faces import Face, face_part_masks, render_face_parts

        box = tuple(recs[0]["face"].get("box") or (0, 0, 1, 1))
        masks = face_part_masks((img.height, img.width), Face(box=box, landmarks=np.asarray(lm, dtype=float)))
        out = render_face_parts(out, masks)
    draw = ImageDraw.Draw(out)
    palette = [(47, 111, 237), (217, 130, 43), (58, 157, 93), (184, 74, 98), (125, 91, 166)]
    man_root = Path((RunStore(d).get_meta("manifest", {}) or {}).get("root") or "")
    for i, (name, text) in enumerate(sorted(row["regions"].items())):
        spec = parse_region(name, text, man_root)
        if spec.path is not None:
            assert mgr.data_root is not None
            if not _inside(spec.path.resolve(), mgr.data_root):
                raise PathRefusedError(MSG_OUTSIDE.format(what="mask", path=text))
        m = region_mask(spec, (img.height, img.width))
        ys, xs = np.nonzero(m)
        if len(xs):
            c = palette[i % len(palette)]
            draw.rectangle((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())), outline=c,
                           width=max(1, img.width // 150))
            draw.text((int(xs.min()) + 3, int(ys.min()) + 2), name, fill=c)
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
    methods = []
    for m in _list(data.get("methods"), "methods") or ["gradcam"]:
        name = get_explainer(m).name
        if name not in methods:
            methods.append(name)
    raw = data.get("params") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise BiasscopeError("'params' must map method names to objects of parameters")
    params = {m: get_explainer(m)(adapter, **dict(raw.get(m, {}))).config for m in methods}
    target = data.get("target")
    if target in (None, ""):  # default: the class the audit explained for this model and image
        rec = next((r for r in RunStore(d).results(key) if r["image_id"] == image_id), None) if key in (
            m["key"] for m in RunStore(d).models()) else None
        target = rec.get("target_index") if rec and rec.get("status") == "ok" else None
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
