"""Explanation jobs: a bounded thread pool with progress, cancellation and expiring results.

A job explains one image with one or more methods for one target class. Methods run one after
another so each result appears as soon as it is ready; a progress callback records each method's
progress and raises :class:`~biasscope.errors.CancelledError` once the job is cancelled. Finished
jobs are kept for ``ttl_s`` seconds and at most ``max_jobs`` of them, so memory stays bounded.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..api import explain_batch
from ..errors import BiasscopeError, CancelledError
from ..explainers import Explanation
from ..jobs import TERMINAL, BackgroundJob, BusyError, JobPool, JobStatus
from ..models import ModelAdapter, Prediction
from ..render import colorize, render_overlay, value_limits
from .state import NotFoundError

__all__ = ["TERMINAL", "BusyError", "Job", "JobManager", "MethodResult", "fast_png", "legend"]

log = logging.getLogger("biasscope.web")


def fast_png(img: Image.Image) -> bytes:
    """PNG bytes with light compression (several times faster to encode than the default)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def legend(exp: Explanation, stops: int = 11) -> dict:
    """Colour scale of a heatmap: the map's name, value limits and CSS colour stops."""
    lo, hi = value_limits(exp.heatmap, exp.signed)
    values = np.linspace(lo, hi, stops)
    rgba = colorize(values[None], exp.signed, (lo, hi))[0]
    return {
        "colormap": "RdBu_r" if exp.signed else "inferno",
        "kind": "diverging" if exp.signed else "sequential",
        "min": lo,
        "max": hi,
        "ticks": [lo, 0.0, hi] if exp.signed else [lo, (lo + hi) / 2, hi],
        "stops": ["#" + "".join(f"{int(c):02x}" for c in px[:3]) for px in rgba],
    }


@dataclass
class MethodResult:
    """One method's state inside a job; ``explanation`` and the PNGs are set when it is done."""

    name: str
    label: str
    signed: bool
    status: str = "queued"  # queued | running | done | error | cancelled
    progress: float = 0.0
    error: str | None = None
    explanation: Explanation | None = None
    heatmap_png: bytes | None = None
    overlay_png: bytes | None = None
    legend: dict | None = None


@dataclass(kw_only=True, eq=False)
class Job(BackgroundJob):
    """A unit of explanation work with its results (status, cancel switch and times: :class:`BackgroundJob`)."""

    kind = "job"

    model: str
    image_id: str
    image_meta: dict
    methods: dict[str, MethodResult]
    params: dict[str, dict[str, Any]]
    target: int | None
    faithfulness: bool
    model_info: dict = field(default_factory=dict)
    predictions: list[Prediction] = field(default_factory=list)
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        """Memory held by this job's results (heatmaps and PNGs)."""
        total = self.image.width * self.image.height * 3 if self.image is not None else 0
        for m in self.methods.values():
            for arr in (m.explanation.heatmap, m.explanation.model_heatmap) if m.explanation else ():
                total += arr.nbytes if arr is not None else 0
            total += len(m.heatmap_png or b"") + len(m.overlay_png or b"")
        return total

    def finish(self, status: JobStatus, error: str | None = None) -> None:
        """End the job; its methods that had not finished end with it (cancelled, or failed with its error)."""
        for m in self.methods.values():
            if m.status not in TERMINAL:
                m.status = status
                if status == JobStatus.ERROR:
                    m.error = error
        super().finish(status, error)

    @property
    def progress(self) -> float:
        if not self.methods:
            return 1.0
        done = sum(1.0 if m.status in ("done", "error") else m.progress for m in self.methods.values())
        return float(done / len(self.methods))

    def overlay_png(self, method: str, alpha: float | None = None) -> bytes:
        """The overlay of ``method``'s heatmap on the job's image (default opacity cached)."""
        m = self.methods[method]
        if m.explanation is None or self.image is None:
            raise NotFoundError(f"{m.label} has no result")
        if alpha is None:
            if m.overlay_png is None:
                m.overlay_png = fast_png(render_overlay(self.image, m.explanation))
            return m.overlay_png
        return fast_png(render_overlay(self.image, m.explanation, alpha=alpha))

    def to_dict(self, *, heatmaps: bool = False) -> dict:
        """JSON form: status, progress, predictions and each method's result (URLs for images)."""
        methods = {}
        for name, m in self.methods.items():
            d: dict[str, Any] = {
                "name": name,
                "label": m.label,
                "signed": m.signed,
                "status": m.status,
                "progress": round(m.progress, 4),
                "error": m.error,
            }
            if m.explanation is not None:
                base = f"/api/jobs/{self.id}/methods/{name}"
                d["result"] = m.explanation.to_dict() | {
                    "legend": m.legend,
                    "heatmap_url": f"{base}/heatmap.png",
                    "overlay_url": f"{base}/overlay.png",
                    "npy_url": f"{base}/heatmap.npy",
                }
                if heatmaps and m.explanation.model_heatmap is not None:
                    d["result"]["model_heatmap"] = np.round(m.explanation.model_heatmap, 7).tolist()
            methods[name] = d
        return {
            "id": self.id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "error": self.error,
            "model": self.model_info or {"name": self.model},
            "image": self.image_meta,
            "target": self.target,
            "faithfulness": self.faithfulness,
            "predictions": [p.to_dict() for p in self.predictions],
            "methods": methods,
            "created": self.created,
            "finished": self.finished,
        }


class JobManager:
    """Explanation jobs on a :class:`~biasscope.jobs.JobPool` of ``workers`` threads; at most
    ``max_pending`` unfinished jobs at once; finished ones kept ``ttl_s`` seconds, at most ``max_jobs``
    of them and ``max_result_bytes`` of results."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_pending: int = 16,
        max_jobs: int = 64,
        ttl_s: float = 1800.0,
        max_result_bytes: int = 256 * 1024 * 1024,
        top: int = 5,
    ) -> None:
        self._pool: JobPool[Job] = JobPool(
            workers=workers, max_pending=max_pending, name="biasscope-job", ttl_s=ttl_s, max_jobs=max_jobs,
            max_bytes=max_result_bytes, clock=lambda: time.time(),
            busy="the server is busy ({max_pending} jobs pending); try again in a few seconds")
        self.max_pending = max_pending
        self.max_jobs = max_jobs
        self.ttl_s = ttl_s
        self.max_result_bytes = max_result_bytes
        self.top = top

    def __len__(self) -> int:
        return len(self._pool)

    def pending(self) -> int:
        return self._pool.pending()

    def new_job(
        self,
        *,
        model: str,
        adapter: ModelAdapter,
        image: Image.Image,
        image_meta: dict,
        methods: dict[str, tuple[str, bool]],
        params: dict[str, dict[str, Any]],
        target: int | None,
        faithfulness: bool,
    ) -> Job:
        """A job (not yet started) for validated inputs; ``methods`` maps name -> (label, signed)."""
        return Job(
            id=secrets.token_hex(12),
            model=model,
            image_id=image_meta.get("id", ""),
            image_meta=image_meta,
            methods={n: MethodResult(n, lab, signed) for n, (lab, signed) in methods.items()},
            params=params,
            target=target,
            faithfulness=faithfulness,
            model_info=adapter.to_dict() | {"id": model},
            image=image,
        )

    def submit(self, job: Job, adapter: ModelAdapter) -> Job:
        """Queue ``job`` on the pool; raises :class:`BusyError` if too many are pending."""
        return self._pool.submit(job, lambda j: self.run(j, adapter))

    def run_inline(self, job: Job, adapter: ModelAdapter) -> Job:
        """Run ``job`` in the calling thread and keep its results like a background job's."""
        self._pool.add(job, bounded=False)
        return self._pool.run_inline(job, lambda j: self.run(j, adapter))

    def get(self, job_id: str) -> Job:
        job = self._pool.get(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found (results expire after {self.ttl_s:.0f} s)")
        return job

    def cancel(self, job_id: str) -> Job:
        """Ask ``job`` to stop; a queued job stops at once, a running one at its next progress report."""
        self.get(job_id)
        job = self._pool.cancel(job_id)
        if job is None:
            raise NotFoundError(f"job {job_id!r} not found (results expire after {self.ttl_s:.0f} s)")
        return job

    def delete(self, job_id: str) -> None:
        self.get(job_id)
        self._pool.remove(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown()

    # ------------------------------------------------------------------ internals
    def _finish_cancelled(self, job: Job) -> None:
        job.finish(JobStatus.CANCELLED)

    def run(self, job: Job, adapter: ModelAdapter) -> None:
        """Compute predictions, then each method in turn; never raises."""
        try:
            if job.cancel_event.is_set():
                self._finish_cancelled(job)
                return
            job.status = "running"
            image = job.image
            assert image is not None
            # one preprocessing and one (fp32) forward serve the predictions and every method
            x = adapter.preprocess(image)
            probs = adapter.probabilities(x, fast=False)
            job.predictions = adapter.top_predictions(probs[0], self.top)
            for name, m in job.methods.items():
                if job.cancel_event.is_set():
                    break
                self._run_method(job, adapter, image, (x, probs), name, m)
            if job.cancel_event.is_set():
                self._finish_cancelled(job)
                return
            job.status = "done"
        except Exception as exc:  # a job must never take a worker down; the client sees no traceback
            job.status = "error"
            job.error = str(exc) if isinstance(exc, BiasscopeError) else "internal error while explaining"
            if not isinstance(exc, BiasscopeError):
                log.exception("job %s failed", job.id)
            for m in job.methods.values():
                if m.status not in TERMINAL:
                    m.status = "error"
                    m.error = job.error
        finally:
            if job.finished is None:
                job.finished = time.time()

    def _run_method(self, job: Job, adapter: ModelAdapter, image: Image.Image,
                    forward: tuple[torch.Tensor, torch.Tensor], name: str, m: MethodResult) -> None:
        """Run one method on the image's model input and fp32 probabilities ``forward`` (computed once per job)."""
        def progress(_method: str, fraction: float) -> None:
            if job.cancel_event.is_set():
                raise CancelledError("cancelled by the user")
            m.progress = max(m.progress, min(float(fraction), 1.0))

        m.status = "running"
        try:
            exp = explain_batch(
                adapter,
                [image],
                [name],
                target=job.target,
                params={name: job.params.get(name, {})},
                faithfulness=job.faithfulness,
                progress=progress,
                inputs=forward[0],
                probabilities=forward[1],
            )[0][name]
            exp.segments = None  # only needed while rendering; keeps stored results small
            m.legend = legend(exp)
            m.heatmap_png = fast_png(Image.fromarray(colorize(exp.heatmap, exp.signed), mode="RGBA"))
            m.explanation = exp
            m.progress = 1.0
            m.status = "done"
        except CancelledError:
            m.status = "cancelled"
        except BiasscopeError as exc:
            m.status, m.error = "error", str(exc)
        except Exception:
            log.exception("job %s: method %s failed", job.id, name)
            m.status, m.error = "error", f"internal error while running {m.label}"

