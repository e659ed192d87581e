from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _fixed_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip throughput measurement: tiny models, deterministic chunking."""
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "64")
