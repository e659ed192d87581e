"""Where audits run in the web app: the data root, the runs directory and a pool of audit threads, and
how a stored run is described to clients (status, resumability, whether its files may be served).

Audits run on a :class:`~biasscope.jobs.JobPool` (one at a time by default) with the status vocabulary
of every job (queued, running, done, error, cancelled), progress after every committed batch
and cancellation between batches; the runner is resumable, so a cancelled or interrupted audit
(even from an earlier server) is resumed with ``POST /api/audits/{run_id}/resume``. The routes are
:mod:`biasscope.web.audits`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..audit import AuditConfig, ModelSource, run_info
from ..audit.store import DB_NAME, RUNS_SUBDIR, RunStore, json_safe
from ..errors import BiasscopeError
from ..jobs import BackgroundJob, JobPool, JobStatus, normal_status
from ..models import ModelAdapter
from .audit_requests import RunBusyError
from .paths import HUB_NAME, scrub_paths
from .security import MSG_OUTSIDE, MSG_RUN_OUTSIDE, RUN_ID_RE, PathRefusedError, inside
from .state import ModelRegistry, NotFoundError

__all__ = ["MSG_DISABLED", "MSG_STOPPED", "AuditManager", "AuditsDisabledError", "WebAudit", "audits",
           "files_allowed", "image_file", "registry_source", "run_status", "served_run"]

log = logging.getLogger("biasscope.web")

MSG_DISABLED = ("audits are disabled: this server has no data root. Start it with "
                "`biasscope serve --data-root DIR` (manifests and images are read only under DIR)")
MSG_STOPPED = "the audit stopped before it finished (the server stopped, or it failed); resume it to continue"


class AuditsDisabledError(BiasscopeError):
    """No data root was configured."""

    status = 409


class RegistrySource(ModelSource):
    """A model of the web app's registry (shared with explanation requests), loaded when its turn comes."""

    registry: ModelRegistry | None = None

    def load(self) -> ModelAdapter:
        assert self.registry is not None
        return self.registry.get(self.spec)


def registry_source(registry: ModelRegistry, name: str) -> RegistrySource:
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
    """The app's audit manager."""
    from .context import state

    return state().audits


def run_status(mgr: AuditManager, d: Path) -> dict:
    info = run_info(d)
    info.pop("run_dir", None)
    run_id = d.name
    info["id"] = run_id
    job = mgr.live(run_id)
    info["job"] = job.to_dict() if job else None
    stored = normal_status(info["status"])  # run_info reads old runs' words (complete, interrupted) too
    if job is not None and job.active:
        status = job.status
    elif job is not None and job.status == JobStatus.ERROR:
        status, info["error"] = job.status, job.error
    else:  # the store's word; a run still marked running stopped without saying so (the server stopped)
        status = JobStatus.ERROR if stored == JobStatus.RUNNING else stored
        if status == JobStatus.ERROR and not info.get("error"):
            info["error"] = MSG_STOPPED
    info["status"] = str(status)
    # stopped early (cancelled, failed, or the server stopped while it ran): the runner resumes it
    info["resumable"] = not (job is not None and job.active) and (
        stored in (JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.ERROR)
        or (status == JobStatus.ERROR and info["progress"] < 1.0))
    man = info.get("manifest") or {}
    root = mgr.data_root
    info["manifest"] = {k: v for k, v in man.items() if k not in ("root", "path")}
    if man.get("path") and root is not None and inside(Path(man["path"]).resolve(), root):
        info["manifest"]["path"] = Path(man["path"]).resolve().relative_to(root).as_posix()
    info["files_allowed"] = files_allowed(mgr, d)
    if isinstance(info.get("error"), str):
        info["error"] = mgr.public(info["error"])
    return json_safe(info)


def files_allowed(mgr: AuditManager, d: Path) -> bool:
    man = RunStore(d).get_meta("manifest", {}) or {}
    root = man.get("root")
    return bool(root) and mgr.data_root is not None and inside(Path(root).resolve(), mgr.data_root)


def served_run(run_id: str) -> tuple[AuditManager, Path]:
    """The run's folder; refused (403) when the run audited files outside the data root."""
    mgr = audits()
    d = mgr.run_dir(run_id)
    if not files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=run_id))
    return mgr, d


def image_file(mgr: AuditManager, d: Path, image_id: int) -> tuple[dict, Path]:
    """The stored image row and its file, checked (now) to resolve inside the data root."""
    if not files_allowed(mgr, d):
        raise PathRefusedError(MSG_RUN_OUTSIDE.format(run_id=d.name))
    row = RunStore(d).image_row(image_id)
    if row is None:
        raise NotFoundError(f"image {image_id} is not in run {d.name!r}")
    f = Path(row["file"]).resolve()
    assert mgr.data_root is not None
    if not inside(f, mgr.data_root):
        raise PathRefusedError(MSG_OUTSIDE.format(what="image", path=row["path"]))
    return row, f


