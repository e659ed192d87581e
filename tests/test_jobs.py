"""The one background-job mechanism: status vocabulary, cancel, bounds, errors and expiry.

Work functions block on events the test controls, so every state is observed without sleeping.
"""

from __future__ import annotations

import threading

import pytest

from biasscope.errors import BiasscopeError
from biasscope.jobs import (
    TERMINAL,
    BackgroundJob,
    BusyError,
    JobConflictError,
    JobPool,
    JobStatus,
    normal_status,
)


def _wait(job: BackgroundJob) -> BackgroundJob:
    assert job.future is not None
    job.future.result(timeout=30)
    return job


@pytest.fixture
def pool():
    p: JobPool[BackgroundJob] = JobPool(workers=1, max_pending=2, public=lambda t: t.replace("/srv/data/", ""))
    yield p
    p.shutdown()


def test_queued_running_done_and_a_queued_job_cancelled_at_once(pool):
    started, release = threading.Event(), threading.Event()
    ran = []

    def blocking(job):
        started.set()
        assert release.wait(30)

    first = pool.submit(BackgroundJob(id="a"), blocking)
    assert started.wait(30) and first.status == JobStatus.RUNNING and first.active
    second = pool.submit(BackgroundJob(id="b"), ran.append)
    assert second.status == JobStatus.QUEUED and pool.pending() == 2
    pool.cancel("b")  # still queued: cancelled now, its work never runs
    assert second.status == JobStatus.CANCELLED and second.finished is not None
    release.set()
    assert _wait(first).status == JobStatus.DONE and first.error is None and first.finished is not None
    assert ran == [] and pool.pending() == 0
    assert first.state_dict()["status"] == "done" and {str(s) for s in TERMINAL} == {"done", "error", "cancelled"}


def test_running_job_stops_when_its_work_checks(pool):
    started = threading.Event()
    steps = []

    def loop(job):
        started.set()
        while True:
            job.check_cancelled()
            steps.append(1)
            job.cancel_event.wait(30)

    job = pool.submit(BackgroundJob(id="loop"), loop)
    assert started.wait(30)
    pool.cancel("loop")
    assert _wait(job).status == JobStatus.CANCELLED and steps == [1]


def test_errors_become_the_error_status_with_a_public_message(pool):
    def refused(job):
        raise BiasscopeError("manifest /srv/data/a/m.csv has no rows")

    def broken(job):
        raise RuntimeError("secret detail")

    a = _wait(pool.submit(BackgroundJob(id="a"), refused))
    assert a.status == JobStatus.ERROR and a.error == "manifest a/m.csv has no rows"
    b = _wait(pool.submit(BackgroundJob(id="b"), broken))
    assert b.status == JobStatus.ERROR and "secret" not in (b.error or "") and "server log" in (b.error or "")


def test_bounds_conflicts_and_resubmitting_a_finished_id(pool):
    release = threading.Event()

    def blocking(job):
        assert release.wait(30)

    a = pool.submit(BackgroundJob(id="a"), blocking)
    with pytest.raises(JobConflictError, match="'a' is already"):
        pool.submit(BackgroundJob(id="a"), blocking)
    pool.submit(BackgroundJob(id="b"), blocking)
    with pytest.raises(BusyError, match="2 jobs pending"):
        pool.submit(BackgroundJob(id="c"), blocking)
    release.set()
    _wait(a)
    _wait(pool.get("b"))  # type: ignore[arg-type]
    again = _wait(pool.submit(BackgroundJob(id="a"), lambda job: None))  # a finished id may run again (resume)
    assert again.status == JobStatus.DONE and pool.get("a") is again and len(pool) == 2


def test_finished_jobs_expire_by_age_count_and_memory():
    now = [1000.0]

    class Big(BackgroundJob):
        @property
        def nbytes(self) -> int:
            return 100

    p: JobPool[BackgroundJob] = JobPool(ttl_s=30, max_jobs=3, max_bytes=250, clock=lambda: now[0])
    try:
        jobs = [p.run_inline(p.add(Big(id=str(i))), lambda job: None) for i in range(3)]
        assert all(j.status == JobStatus.DONE for j in jobs)
        assert [j.id for j in p.jobs()] == ["1", "2"]  # 300 bytes > 250: the oldest goes
        for j in jobs:
            j.finished = now[0]
        now[0] += 31
        assert p.get("2") is None and len(p) == 0
    finally:
        p.shutdown()


def test_stored_run_words_map_onto_the_vocabulary():
    assert normal_status("complete") == JobStatus.DONE == "done"
    assert normal_status("interrupted") == JobStatus.ERROR and normal_status("failed") == JobStatus.ERROR
    assert normal_status("cancelled") == JobStatus.CANCELLED and normal_status("running") == JobStatus.RUNNING
    assert normal_status(None) == JobStatus.ERROR and normal_status("nonsense") == JobStatus.ERROR
