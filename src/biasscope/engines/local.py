"""The local engine (default): every batch in this process, one after the other."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .base import BatchResult, Engine

__all__ = ["LocalEngine"]


class LocalEngine(Engine):
    """Compute each batch here with the loaded adapter (batched forward and explanations)."""

    name = "local"

    def map_batches(self, source, adapter, space, config, batches: Iterable[Sequence]) -> Iterator[BatchResult]:
        from ..audit.batch import score_batch

        for batch in batches:
            yield batch, score_batch(adapter, space, config, batch)
