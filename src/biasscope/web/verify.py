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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, send_file

from ..errors import BiasscopeError
from ..jobs import BackgroundJob, JobPool, JobStatus
from . import audit_schemas as a
from .audit_manager import audits
from .audit_requests import RunBusyError
from .audit_schemas import MSG_VERIFY_NAME
from .declare import declare
from .security import MSG_RUN_OUTSIDE, RUN_ID_RE, PathRefusedError, resolve_in_root
from .state import NotFoundError

__all__ = ["VERIFY_DIR", "VerifyJob", "VerifyManager", "install_verify", "verify_api"]

log = logging.getLogger("biasscope.web")
VERIFY_DIR = ".verify"
MSG_VERIFY_STOPPED = ("the verification audit stopped before it finished; start it again with the same name to "
                      "resume it")
verify_api = Blueprint("verify_api", __name__, url_prefix="/api")
_ERRORS = (403, 404, 409)


@dataclass(kw_only=True, eq=False)
class VerifyJob(BackgroundJob):
    """A verification audit queued or running in this server (its id is the run id)."""

    kind = "verification run"

    progress: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": str(self.status), "progress": self.progress} | {
            k: v for k, v in self.state_dict().items() if k != "status"}


class VerifyManager:
    """Verification jobs of this server: one worker thread of a :class:`~biasscope.jobs.JobPool`, one shared
    dlib model."""

    def __init__(self, max_pending: int = 4) -> None:
        self._pool: JobPool[VerifyJob] = JobPool(
            workers=1, max_pending=max_pending, name="biasscope-verify", conflict=RunBusyError,
            busy="{pending} verification audits are already queued or running; try again when one finishes",
            internal="internal error during the verification audit; see the server log")
        self._lock = threading.Lock()
        self._model = None

    def model(self):
        with self._lock:
            if self._model is None:
                from ..verify import load_embedding_model

                self._model = load_embedding_model("dlib-face")
            return self._model

    @property
    def futures(self) -> dict[str, Any]:
        """Each job's future (tests wait on them)."""
        return {j.id: j.future for j in self._pool.jobs()}

    def job_ids(self) -> list[str]:
        return [j.id for j in self._pool.jobs()]

    def job(self, run_id: str) -> dict[str, Any] | None:
        j = self._pool.get(run_id)
        return j.to_dict() if j else None

    def submit(self, run_id: str, run_dir: Path, manifest: Path, groups: list[str], far: float, explain: int) -> dict:
        from ..verify import VerifyOptions, run_verify_audit

        def work(job: VerifyJob) -> None:
            def progress(stage: str, done: int, total: int) -> None:
                job.progress = {"stage": stage, "done": done, "total": total}

            run_verify_audit(manifest, out=run_dir, model=self.model(), groups=groups, options=VerifyOptions(far=far),
                             explain=explain, progress=progress, cancel=job.cancel_event)

        return self._pool.submit(VerifyJob(id=run_id), work).to_dict()

    def cancel(self, run_id: str) -> None:
        j = self._pool.get(run_id)
        if j is None or not j.active:
            raise BiasscopeError(f"verification run {run_id!r} is not running in this server")
        self._pool.cancel(run_id)

    def shutdown(self) -> None:
        self._pool.shutdown()


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
    if job is not None and job["status"] != JobStatus.DONE:  # queued, running, error, cancelled in this server
        out["status"] = job["status"]
    elif mfile.is_file():
        out["status"] = JobStatus.DONE
    else:  # a run of an earlier server that stopped before it finished
        out["status"], out["error"] = JobStatus.ERROR, MSG_VERIFY_STOPPED
    if mfile.is_file() and out["status"] == "done":
        m = json.loads(mfile.read_text(encoding="utf-8"))
        o = m["overall"]
        out["summary"] = {"threshold": o["threshold"], "far": m["options"]["far"], "n_genuine": o["n_genuine"],
                          "n_impostor": o["n_impostor"], "fmr": o["fmr"], "fnmr": o["fnmr"],
                          "n_flagged": len(m["flagged"]), "groups": m.get("manifest", {}).get("groups", [])}
    return out


@verify_api.get("/verify-audits")
@declare("Face verification runs (dlib-face) in the runs directory", responses={200: a.VerifyRuns},
         errors=_ERRORS)
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
                runs.append({"id": d.name, "status": JobStatus.ERROR,
                             "error": MSG_RUN_OUTSIDE.format(run_id=d.name)})
                continue
            runs.append(_summary(d))
        except Exception as exc:  # one broken run must not hide the others
            runs.append({"id": d.name, "status": JobStatus.ERROR, "error": str(exc)})
    return jsonify({"runs": runs})


@verify_api.post("/verify-audits")
@declare("Start (or resume, same name) a verification audit on a pairs or identity manifest",
         body=a.VerifyRequest, responses={202: a.VerifyRun}, errors=(400, *_ERRORS, 503))
def create_verify_audit(body: a.VerifyRequest):
    manifest = resolve_in_root(audits().root(), body.manifest, "manifest")
    if not manifest.is_file():
        raise NotFoundError(f"manifest {body.manifest!r} not found under the data root")
    groups, far, explain = list(body.groups), body.far, body.explain
    name = body.name or datetime.now(UTC).strftime("verify-%Y%m%d-%H%M%S")
    if not RUN_ID_RE.match(name):
        raise BiasscopeError(MSG_VERIFY_NAME)
    from ..verify import load_pairs

    load_pairs(manifest, groups=groups)  # a malformed manifest is a 400 now, not a failed job later
    d = _run_dir(name, exists=False)
    job = _manager().submit(name, d, manifest, groups, far, explain)
    resp = jsonify({"id": name, **job})
    resp.status_code = 202
    resp.headers["Location"] = f"/api/verify-audits/{name}"
    return resp


@verify_api.get("/verify-audits/<verify_id>")
@declare("A verification run: status, summary and metrics", responses={200: a.VerifyRun}, errors=_ERRORS)
def get_verify_audit(verify_id: str):
    d = _served_run_dir(verify_id)
    out = _summary(d)
    if out["status"] == "done":
        out["metrics"] = json.loads((d / "metrics.json").read_text(encoding="utf-8"))
    return jsonify(out)


@verify_api.post("/verify-audits/<verify_id>/cancel")
@declare("Cancel a running verification audit (resumable)", responses={200: a.VerifyRun}, errors=(400, *_ERRORS))
def cancel_verify_audit(verify_id: str):
    d = _served_run_dir(verify_id)
    _manager().cancel(verify_id)
    return jsonify(_summary(d))


@verify_api.get("/verify-audits/<verify_id>/report.html")
@declare("The self-contained verification report", responses={200: "text/html"}, errors=_ERRORS)
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
