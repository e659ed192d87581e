"""The Ray engine: the same audit on a Ray cluster, with actors that hold the model.

Each actor loads the model once (the driver's already-loaded model is shipped through Ray's object
store; models that cannot be pickled, e.g. TorchScript, are loaded by each actor from the same
``ModelSource``) and computes whole batches with the same code as the local engine
(:func:`biasscope.audit.batch.score_batch`). The driver keeps a bounded number of batches in
flight, takes the results back in submission order and writes them to the run's SQLite store, so
the results equal the local engine's and memory stays flat however many images there are.

Workers read the images themselves: on a multi-node cluster the manifest's image paths must be
readable at the same absolute paths on every node (a shared file system), and biasscope must be
installed in the workers' Python environment.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import BiasscopeError
from .base import BatchResult, Engine

__all__ = ["MSG_NO_RAY", "RayEngine", "import_ray"]

MSG_NO_RAY = "the Ray engine needs Ray: pip install 'biasscope[ray]' (or pip install 'ray[data]')"


def import_ray() -> Any:
    """Import ``ray`` or raise a :class:`BiasscopeError` saying which extra to install."""
    try:
        import ray
    except ImportError:
        raise BiasscopeError(MSG_NO_RAY) from None
    return ray


class _AuditWorker:
    """Ray actor body: holds one model (replaced per audited model) with the audit's label space
    and configuration, and computes whole batches with the local engine's code."""

    def __init__(self, env: dict[str, str], threads: int) -> None:
        os.environ.update(env)  # e.g. BIASSCOPE_BATCH_SIZE, before anything reads it
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        self.adapter: Any = None

    def load(self, model: Any, space: Any, config: Any) -> int:
        from ..audit.config import ModelSource

        self.adapter = None  # free the previous model first
        self.adapter = model.load() if isinstance(model, ModelSource) else model
        self.space = space
        self.config = config
        return os.getpid()

    def process(self, batch: Sequence) -> list:
        from ..audit.batch import score_batch

        return score_batch(self.adapter, self.space, self.config, batch)


class RayEngine(Engine):
    """Compute audit batches on a Ray cluster.

    ``address``: ``None`` starts (or reuses) a Ray instance on this machine; ``"auto"`` joins the
    cluster this machine belongs to (``ray start --head`` / a Ray job); ``"ray://HOST:10001"``
    connects through Ray Client. ``workers``: number of model-holding actors (default: the
    cluster's CPUs divided by ``cpus_per_worker``, or its GPUs when the model is on CUDA).
    ``max_in_flight``: batches submitted but not yet written (default two per worker).
    The workers stay up for the next models and runs until :meth:`close` (or the end of the
    ``with`` block, or of this process).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        max_in_flight: int | None = None,
        init_kwargs: dict | None = None,
    ) -> None:
        if workers is not None and workers < 1:
            raise BiasscopeError("the Ray engine needs at least one worker")
        if cpus_per_worker <= 0:
            raise BiasscopeError("cpus_per_worker must be positive")
        self.address = address
        self.workers = workers
        self.cpus_per_worker = float(cpus_per_worker)
        self.gpus_per_worker = gpus_per_worker
        self.max_in_flight = max_in_flight
        self.init_kwargs = dict(init_kwargs or {})
        self._started = False
        self._actors: list = []
        self._pool_key: tuple | None = None
        self.ray = import_ray()

    # ------------------------------------------------------------------ cluster
    def connect(self) -> None:
        """Join (or start) the Ray cluster once."""
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs = dict(self.init_kwargs)
        if self.address is None:
            kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", False)
        ray.init(address=self.address, **kwargs)
        self._started = True

    def close(self) -> None:
        """Stop the workers, and Ray itself if this engine started it."""
        if self.ray.is_initialized():
            self._kill_actors()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def __enter__(self) -> RayEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _n_workers(self, gpus: float) -> int:
        if self.workers is not None:
            return self.workers
        res = self.ray.cluster_resources()
        if gpus > 0:
            return max(1, int(res.get("GPU", 0) // gpus))
        return max(1, int(res.get("CPU", 1) // self.cpus_per_worker))

    def describe(self) -> dict:
        return {"engine": self.name, "address": self.address, "workers": self.workers,
                "cpus_per_worker": self.cpus_per_worker, "gpus_per_worker": self.gpus_per_worker}

    # ------------------------------------------------------------------ batches
    def _pool(self, n: int, gpus: float) -> list:
        """``n`` model-holding actors, started once and kept for the next models and runs."""
        if self._actors and self._pool_key == (n, gpus):
            return self._actors
        self._kill_actors()
        env = {k: v for k, v in os.environ.items() if k.startswith("BIASSCOPE_")}
        actor_cls = self.ray.remote(_AuditWorker).options(num_cpus=self.cpus_per_worker, num_gpus=gpus)
        threads = max(1, int(self.cpus_per_worker))
        self._actors = [actor_cls.remote(env, threads) for _ in range(n)]
        self._pool_key = (n, gpus)
        return self._actors

    def _kill_actors(self) -> None:
        for a in self._actors:
            self.ray.kill(a)
        self._actors = []

    def map_batches(self, source, adapter, space, config, batches: Iterable[Sequence]) -> Iterator[BatchResult]:
        ray = self.ray
        self.connect()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if adapter.device.type == "cuda" else 0.0
        actors = self._pool(self._n_workers(gpus), gpus)
        n = len(actors)
        model = self._model_for_workers(source, adapter)
        ray.get([a.load.remote(model, space, config) for a in actors])  # fail early if the model cannot load
        limit = self.max_in_flight or 2 * n
        pending: deque[tuple[Sequence, Any]] = deque()
        try:
            for turn, batch in enumerate(batches):
                pending.append((batch, actors[turn % n].process.remote(list(batch))))
                while len(pending) >= limit:
                    rows, ref = pending.popleft()
                    yield rows, ray.get(ref)
            while pending:
                rows, ref = pending.popleft()
                yield rows, ray.get(ref)
        finally:
            for _, ref in pending:  # results nobody will write (cancelled or failed run)
                with contextlib.suppress(Exception):  # already finished, or not cancellable here
                    ray.cancel(ref)

    def _model_for_workers(self, source: Any, adapter: Any) -> Any:
        """The loaded adapter through the object store, or the source to load on each worker."""
        from ..audit.config import ModelSource

        try:
            return self.ray.put(adapter)
        except Exception as exc:  # e.g. TorchScript modules cannot be pickled
            if isinstance(source, ModelSource):
                return source
            raise BiasscopeError(
                f"model {adapter.name} cannot be sent to Ray workers ({exc}); pass it as a ModelSource "
                "(a name or file the workers can load) instead of a loaded model"
            ) from None
