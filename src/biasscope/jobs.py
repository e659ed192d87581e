"""Background jobs: one status vocabulary, a cancel switch and a bounded thread pool.

Explanation jobs, classifier audits and face-verification audits all run on a :class:`JobPool`
and report one vocabulary, :class:`JobStatus`: ``queued`` -> ``running`` -> ``done`` | ``error`` |
``cancelled``. A job's work is a function ``work(job)`` that reports progress on the job and
checks ``job.cancel_event`` (or raises :class:`~biasscope.errors.CancelledError`); the pool turns
its outcome into the job's final status and never lets an exception take a worker down. At most
``max_pending`` jobs are unfinished at once (more is :class:`BusyError`, 503), and finished jobs
are forgotten after ``ttl_s`` seconds, beyond ``max_jobs`` of them or ``max_bytes`` of results.

The audit runner writes these words into its run store too (a run that stopped early on an error
or a server stop is ``error``, a cancelled one ``cancelled``; both are resumable). Run stores written
before (``complete``, ``interrupted``) are read through :func:`normal_status`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from .errors import BiasscopeError, CancelledError

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "BackgroundJob",
    "BusyError",
    "JobConflictError",
    "JobPool",
    "JobStatus",
    "normal_status",
]

log = logging.getLogger("biasscope.jobs")


class JobStatus(StrEnum):
    """Where a job is: the one status vocabulary of every job and run the API reports."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"


#: Statuses a job never leaves.
TERMINAL = frozenset({JobStatus.DONE, JobStatus.ERROR, JobStatus.CANCELLED})
#: Statuses of a job that still holds (or waits for) a worker.
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

#: Words of run stores (the audit runner's meta ``status``) in this vocabulary.
_STORED_WORDS = {"complete": JobStatus.DONE, "interrupted": JobStatus.ERROR, "failed": JobStatus.ERROR}


def normal_status(word: str | None) -> JobStatus:
    """``word`` (a job status or a run store's ``complete``/``interrupted``) as a :class:`JobStatus`;
    an unknown or missing word is ``error`` (the run cannot be read as finished)."""
    text = str(word or "")
    if text in _STORED_WORDS:
        return _STORED_WORDS[text]
    try:
        return JobStatus(text)
    except ValueError:
        return JobStatus.ERROR


class BusyError(BiasscopeError):
    """Too many jobs are queued; the client should retry later."""

    status = 503


class JobConflictError(BiasscopeError):
    """A job with this id is already queued or running."""

    status = 409


@dataclass(kw_only=True, eq=False)
class BackgroundJob:
    """State every job shares: id, status, error, times, cancel switch and the pool's future."""

    kind: ClassVar[str] = "job"

    id: str
    status: JobStatus = JobStatus.QUEUED
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Future | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """Queued or running."""
        return self.status in ACTIVE

    @property
    def nbytes(self) -> int:
        """Memory held by the job's results (counted against the pool's ``max_bytes``)."""
        return 0

    def check_cancelled(self, message: str = "cancelled by the user") -> None:
        """Raise :class:`CancelledError` once the job has been asked to stop."""
        if self.cancel_event.is_set():
            raise CancelledError(message)

    def finish(self, status: JobStatus, error: str | None = None) -> None:
        """Enter a terminal ``status`` (subclasses also settle their parts, e.g. one explanation method)."""
        self.status = status
        if error is not None:
            self.error = error
        if self.finished is None:
            self.finished = time.time()

    def state_dict(self) -> dict[str, Any]:
        """The JSON fields every job has."""
        return {"status": str(self.status), "error": self.error, "created": self.created, "finished": self.finished}


J = TypeVar("J", bound=BackgroundJob)


class JobPool(Generic[J]):
    """Jobs by id, run on ``workers`` threads; at most ``max_pending`` unfinished at once.

    ``busy`` is the 503 message when the pool is full (``{pending}`` is filled in); ``public`` turns
    an error message into what a client may see; ``internal`` is the message of an unexpected error
    (whose traceback goes to the log only); ``conflict`` is the error raised when a job with the same
    id is still active; ``clock`` tells the time for expiry.
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        max_pending: int = 16,
        name: str = "biasscope-job",
        ttl_s: float | None = None,
        max_jobs: int | None = None,
        max_bytes: int | None = None,
        busy: str = "the server is busy ({pending} jobs pending); try again in a few seconds",
        internal: str = "internal error; the details are in the server log",
        public: Callable[[str], str] = str,
        conflict: type[BiasscopeError] = JobConflictError,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix=name)
        self.max_pending = max_pending
        self.ttl_s = ttl_s
        self.max_jobs = max_jobs
        self.max_bytes = max_bytes
        self.busy = busy
        self.internal = internal
        self.public = public
        self.conflict = conflict
        self.clock = clock
        self._jobs: OrderedDict[str, J] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._jobs)

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return self._pending_locked()

    def get(self, job_id: str) -> J | None:
        """The job with this id, or ``None`` (never started here, or forgotten)."""
        with self._lock:
            self._purge_locked(self.clock())
            return self._jobs.get(str(job_id))

    def jobs(self) -> list[J]:
        """The jobs this pool remembers, oldest first."""
        with self._lock:
            self._purge_locked(self.clock())
            return list(self._jobs.values())

    def add(self, job: J, *, bounded: bool = True) -> J:
        """Remember ``job`` without running it on the pool (see :meth:`run_inline`); refuses like :meth:`submit`
        (``bounded=False``: not for a full pool, for work the caller's own thread does)."""
        with self._lock:
            self._purge_locked(self.clock())
            cur = self._jobs.get(job.id)
            if cur is not None and cur.active:
                raise self.conflict(f"{job.kind} {job.id!r} is already {cur.status}")
            pending = self._pending_locked()
            if bounded and pending >= self.max_pending:
                raise BusyError(self.busy.format(pending=pending, max_pending=self.max_pending))
            self._jobs.pop(job.id, None)
            self._jobs[job.id] = job
        return job

    def submit(self, job: J, work: Callable[[J], Any]) -> J:
        """Queue ``work(job)``; :class:`BusyError` when full, ``conflict`` when ``job.id`` is active."""
        self.add(job)
        job.future = self._pool.submit(self.run_inline, job, work)
        return job

    def run_inline(self, job: J, work: Callable[[J], Any]) -> J:
        """Run ``work(job)`` in the calling thread and settle the job's status; never raises."""
        try:
            if job.cancel_event.is_set():
                job.finish(JobStatus.CANCELLED)
                return job
            job.status = JobStatus.RUNNING
            work(job)
            if job.status not in TERMINAL:
                job.finish(JobStatus.CANCELLED if job.cancel_event.is_set() else JobStatus.DONE)
        except CancelledError:
            job.finish(JobStatus.CANCELLED)
        except BiasscopeError as exc:
            job.finish(JobStatus.ERROR, self.public(str(exc)))
        except Exception:  # a job must never take a worker down; the client sees no traceback
            log.exception("%s %s failed", job.kind, job.id)
            job.finish(JobStatus.ERROR, self.internal)
        finally:
            if job.finished is None:
                job.finished = time.time()
        return job

    def cancel(self, job_id: str) -> J | None:
        """Ask the job to stop: a queued job stops at once, a running one when its work next checks."""
        job = self.get(job_id)
        if job is None:
            return None
        job.cancel_event.set()
        if job.future is not None and job.future.cancel():
            job.finish(JobStatus.CANCELLED)
        return job

    def remove(self, job_id: str) -> None:
        """Cancel the job and forget it."""
        self.cancel(job_id)
        with self._lock:
            self._jobs.pop(str(job_id), None)

    def shutdown(self) -> None:
        """Cancel every job and stop the workers (without waiting for running work)."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ internals
    def _pending_locked(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status not in TERMINAL)

    def _purge_locked(self, now: float) -> None:
        if self.ttl_s is not None:
            for k in [k for k, j in self._jobs.items() if j.finished is not None and now - j.finished > self.ttl_s]:
                del self._jobs[k]
        if self.max_jobs is not None:
            finished = [k for k, j in self._jobs.items() if j.finished is not None]
            for k in finished[: max(0, len(self._jobs) - self.max_jobs)]:
                del self._jobs[k]
        if self.max_bytes is not None:  # memory budget: drop the oldest finished jobs until the results fit
            total = sum(j.nbytes for j in self._jobs.values())
            for k in [k for k, j in self._jobs.items() if j.finished is not None]:
                if total <= self.max_bytes:
                    break
                total -= self._jobs.pop(k).nbytes
