"""Face verification audits in the web app (the Audits page's "Face verification" section).

Same rules as classifier audits (:mod:`biasscope.web.audits`): manifests and images only under the
data root, paths from clients relative to it, runs in the runs directory (``RUNS/.verify/RUN_ID``),
one audit thread, resumable (starting a run again with the same name resumes it). The matcher is
``dlib-face``, loaded once and shared (its calls are serialised by the model).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, send_file

from ..errors import BiasscopeError, CancelledError
from .audits import MSG_RUN_OUTSIDE, RUN_ID_RE, PathRefusedError, _int, _list, _payload, audits, resolve_in_root
from .jobs import TERMINAL
from .state import NotFoundError

__all__ = ["VERIFY_DIR", "VerifyManager", "install_verify", "verify_api"]

log = logging.getLogger("biasscope.web")
VERIFY_DIR = ".verify"
verify_api = Blueprint("verify_api", __name__, url_prefix="/api")


class VerifyManager:
    """Verification jobs of this server: status per run id, one worker thread, one shared dlib model."""

    def __init__(self) -> None:
        self._jobs: dict[str, dict[str, Any]] = {}
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="biasscope-verify")
        self._model = None
        self.futures: dict[str, Any] = {}

    def model(self):
        with self._lock:
            if self._model is None:
                from ..verify import load_embedding_model

                self._model = load_embedding_model("dlib-face")
            return self._model

    def job_ids(self) -> list[str]:
        with self._lock:
            return list(self._jobs)

    def job(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            j = self._jobs.get(run_id)
            return dict(j) if j else None

    def submit(self, run_id: str, run_dir: Path, manifest: Path, groups: list[str], far: float, explain: int) -> dict:
        with self._lock:
            cur = self._jobs.get(run_id)
            if cur is not None and cur["status"] not in TERMINAL:
                raise BiasscopeError(f"verification run {run_id!r} is already {cur['status']}")
            self._jobs[run_id] = {"status": "queued", "progress": None, "error": None, "created": time.time(),
                                  "finished": None}
            self._cancel[run_id] = threading.Event()
        self.futures[run_id] = self._pool.submit(self._run, run_id, run_dir, manifest, groups, far, explain)
        return self.job(run_id) or {}

    def cancel(self, run_id: str) -> None:
        with self._lock:
            ev = self._cancel.get(run_id)
            j = self._jobs.get(run_id)
        if ev is None or j is None or j["status"] in TERMINAL:
            raise BiasscopeError(f"verification run {run_id!r} is not running in this server")
        ev.set()

    def _set(self, run_id: str, **kw: Any) -> None:
        with self._lock:
            self._jobs[run_id].update(kw)

    def _run(self, run_id: str, run_dir: Path, manifest: Path, groups: list[str], far: float, explain: int) -> None:
        from ..verify import VerifyOptions, run_verify_audit

        self._set(run_id, status="running")
        ev = self._cancel[run_id]

        def progress(stage: str, done: int, total: int) -> None:
            self._set(run_id, progress={"stage": stage, "done": done, "total": total})

        try:
            run_verify_audit(manifest, out=run_dir, model=self.model(), groups=groups, options=VerifyOptions(far=far),
                             explain=explain, progress=progress, cancel=ev)
            self._set(run_id, status="done")
        except CancelledError:
            self._set(run_id, status="cancelled")
        except BiasscopeError as exc:
            self._set(run_id, status="error", error=str(exc))
        except Exception:  # the client sees no traceback; the log has it
            log.exception("verification audit %s failed", run_id)
            self._set(run_id, status="error", error="internal error during the verification audit; see the server log")
        finally:
            self._set(run_id, finished=time.time())

    def shutdown(self) -> None:
        with self._lock:
            events = list(self._cancel.values())
        for ev in events:
            ev.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _manager() -> VerifyManager:
    from flask import current_app

    return current_app.extensions["biasscope_verify"]


def _runs_dir() -> Path:
    mgr = audits()
    mgr.root()  # raises the "audits are disabled" error without a data root
    assert mgr.runs_dir is not None
    return mgr.runs_dir / VERIFY_DIR


def _run_dir(run_id: str, *, exists: bool = True) -> Path:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise NotFoundError(f"no verification run {run_id!r}")
    d = _runs_dir() / run_id
    if exists and not (d / "verify.sqlite").is_file() and _manager().job(run_id) is None:
        raise NotFoundError(f"no verification run {run_id!r}")
    return d


def _files_allowed(d: Path) -> bool:
    """Whether the run audited a manifest inside this server's data root (else none of it is served)."""
    if _manager().job(d.name) is not None:
        return True  # started by this server on a manifest checked to be inside the root (maybe still writing)
    db = d / "verify.sqlite"
    if not db.is_file():
        return False
    from ..verify import VerifyStore

    manifest = VerifyStore(d).get_meta("manifest")
    if not isinstance(manifest, str):
        return False
    try:
        Path(manifest).resolve().relative_to(audits().root())
    except ValueError:
        return False
    return True


def _served_run_dir(run_id: str) -> Path:
    d = _run_dir(run_id)
    if not _files_allowed(d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    return d


def _summary(d: Path) -> dict[str, Any]:
    job = _manager().job(d.name)
    out: dict[str, Any] = {"id": d.name, "job": job}
    mfile = d / "metrics.json"
    if job is not None and job["status"] != "done":  # queued, running, error, cancelled in this server
        out["status"] = job["status"]
    else:
        out["status"] = "done" if mfile.is_file() else "incomplete"
    if mfile.is_file() and out["status"] == "done":
        m = json.loads(mfile.read_text(encoding="utf-8"))
        o = m["overall"]
        out["summary"] = {"threshold": o["threshold"], "far": m["options"]["far"], "n_genuine": o["n_genuine"],
                          "n_impostor": o["n_impostor"], "fmr": o["fmr"], "fnmr": o["fnmr"],
                          "n_flagged": len(m["flagged"]), "groups": m.get("manifest", {}).get("groups", [])}
    return out


@verify_api.get("/verify-audits")
def list_verify_audits():
    root = _runs_dir()
    runs = []
    names = set(_manager().job_ids())  # a run just started may not have its folder yet
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name)}
    for d in (root / n for n in sorted(names)):
        if not (d / "verify.sqlite").is_file() and not _manager().job(d.name):
            continue
        try:
            if not _files_allowed(d):
                runs.append({"id": d.name, "status": "outside data root",
                             "error": MSG_RUN_OUTSIDE.format(run_id=d.name)})
                continue
            runs.append(_summary(d))
        except Exception as exc:  # one broken run must not hide the others
            runs.append({"id": d.name, "status": "unreadable", "error": str(exc)})
    return jsonify({"runs": runs})


@verify_api.post("/verify-audits")
def create_verify_audit():
    data = _payload()
    manifest = resolve_in_root(audits().root(), data.get("manifest"), "manifest")
    if not manifest.is_file():
        raise NotFoundError(f"manifest {data.get('manifest')!r} not found under the data root")
    groups = _list(data.get("groups"), "groups")
    try:
        far = float(data.get("far", 1e-3))
    except (TypeError, ValueError):
        raise BiasscopeError("'far' must be a number between 0 and 1") from None
    if not 0 < far < 1:
        raise BiasscopeError(f"'far' must be between 0 and 1 (exclusive), got {far}")
    explain = _int(data.get("explain"), "explain", 0, 50, 0)
    name = data.get("name") or datetime.now(UTC).strftime("verify-%Y%m%d-%H%M%S")
    if not isinstance(name, str) or not RUN_ID_RE.match(name):
        raise BiasscopeError("'name' may use letters, digits, '.', '_' and '-' (at most 100)")
    from ..verify import load_pairs

    load_pairs(manifest, groups=groups)  # a malformed manifest is a 400 now, not a failed job later
    d = _run_dir(name, exists=False)
    job = _manager().submit(name, d, manifest, groups, far, explain)
    resp = jsonify({"id": name, **job})
    resp.status_code = 202
    resp.headers["Location"] = f"/api/verify-audits/{name}"
    return resp


@verify_api.get("/verify-audits/<verify_id>")
def get_verify_audit(verify_id: str):
    d = _served_run_dir(verify_id)
    out = _summary(d)
    if out["status"] == "done":
        out["metrics"] = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    return jsonify(out)


@verify_api.post("/verify-audits/<verify_id>/cancel")
def cancel_verify_audit(verify_id: str):
    d = _served_run_dir(verify_id)
    _manager().cancel(verify_id)
    return jsonify(_summary(d))


@verify_api.get("/verify-audits/<verify_id>/report.html")
def verify_report(verify_id: str):
    p = _served_run_dir(verify_id) / "report.html"
    if not p.is_file():
        raise NotFoundError(f"verification run {verify_id!r} has no report yet")
    resp = send_file(io.BytesIO(p.read_bytes()), mimetype="text/html")
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return resp


def install_verify(app, audit_manager) -> VerifyManager:
    """Register the verification routes; the audit manager's shutdown also stops verification jobs."""
    vm = VerifyManager()
    app.extensions["biasscope_verify"] = vm
    app.register_blueprint(verify_api)
    stop = audit_manager.shutdown

    def shutdown() -> None:
        vm.shutdown()
        stop()

    audit_manager.shutdown = shutdown
    return vm
