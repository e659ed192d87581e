"""Run an audit in a background thread with a progress snapshot and a cancel switch (for the web)."""

from __future__ import annotations

import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BiasscopeError, CancelledError
from ..models.adapter import ModelAdapter
from .manifest import Manifest
from .runner import AuditConfig, AuditProgress, ModelSource, RunResult, run_audit

__all__ = ["AuditJob", "start_audit"]


@dataclass
class AuditJob:
    """A running (or finished) audit. ``state``: running, complete, cancelled, failed."""

    run_dir: Path
    state: str = "running"
    progress: AuditProgress | None = None
    error: str | None = None
    result: RunResult | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Ask the run to stop after its current batch (it can be resumed later)."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run; ``True`` when it has finished."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def to_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "run_dir": str(self.run_dir),
            "state": self.state,
            "error": self.error,
            "fraction": p.fraction if p else 0.0,
            "model": p.model if p else None,
            "done": p.done_all if p else 0,
            "total": p.total_all if p else None,
            "errors": p.errors if p else 0,
            "eta_s": p.eta_s if p else None,
            "stage": p.stage if p else "starting",
        }


def start_audit(
    manifest: Manifest,
    models: Sequence[ModelAdapter | ModelSource | str],
    out_dir: str | Path,
    config: AuditConfig | None = None,
    *,
    batch_size: int = 16,
    metrics_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    finalize: bool = True,
) -> AuditJob:
    """Start :func:`run_audit` in a daemon thread and return its :class:`AuditJob` at once."""
    job = AuditJob(run_dir=Path(out_dir))

    def on_progress(p: AuditProgress) -> None:
        job.progress = p

    def target() -> None:
        try:
            job.result = run_audit(manifest, models, out_dir, config, batch_size=batch_size, progress=on_progress,
                                   cancel=job._cancel, overwrite=overwrite, metrics_options=metrics_options,
                                   finalize=finalize)
            job.state = "complete"
        except CancelledError as exc:
            job.state, job.error = "cancelled", str(exc)
        except BiasscopeError as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # never let a worker thread die silently
            job.state = "failed"
            job.error = f"internal error: {type(exc).__name__}: {exc}"
            traceback.print_exc()

    job._thread = threading.Thread(target=target, name=f"audit-{Path(out_dir).name}", daemon=True)
    job._thread.start()
    return job
