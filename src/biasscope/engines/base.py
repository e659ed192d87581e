"""The engine contract: where the batches of an audit are computed.

The audit runner (:func:`biasscope.audit.run_audit`) owns everything that defines a run: the
manifest, the configuration, the order of models, the SQLite store, resuming and cancelling. An
engine only turns batches of manifest rows into per-image results for one model, in order, one batch
at a time (a generator: the runner writes each batch before the next result is awaited, so nothing
accumulates). The local engine computes in this process; the Ray engine on a Ray cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from ..audit.concepts import LabelSpace
    from ..audit.config import AuditConfig, ModelSource
    from ..audit.manifest import ManifestRow
    from ..audit.values import ImageResult
    from ..models.adapter import ModelAdapter

__all__ = ["BatchResult", "Engine"]

#: what one batch yields: the rows and their results (with heatmaps; :func:`biasscope.audit.batch.score_batch`)
BatchResult = tuple[Sequence["ManifestRow"], list["ImageResult"]]


class Engine(ABC):
    """Computes the per-image results of audit batches for one model at a time."""

    name: ClassVar[str]

    @abstractmethod
    def map_batches(
        self,
        source: ModelAdapter | ModelSource,
        adapter: ModelAdapter,
        space: LabelSpace,
        config: AuditConfig,
        batches: Iterable[Sequence[ManifestRow]],
    ) -> Iterator[BatchResult]:
        """Yield ``(rows, results)`` for every batch of ``batches``, in order.

        ``source`` is what the runner was given for this model (a loaded adapter or a
        :class:`~biasscope.audit.ModelSource` that remote workers can load themselves);
        ``adapter`` is the model already loaded in this process. ``batches`` is consumed lazily:
        it may raise (e.g. when the run is cancelled), and the engine must then release its workers.
        """

    def close(self) -> None:
        """Release the engine's workers (nothing to do for the local engine)."""
        return None

    def describe(self) -> dict:
        """What to record about the engine in the run's metadata."""
        return {"engine": self.name}
