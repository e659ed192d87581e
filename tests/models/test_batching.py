"""Batch-size measurement: picks the best-throughput candidate of a known cost model.

The model pass is replaced by a sleep whose duration is a hand-set function of the batch size,
so the right answer is known: ``overhead + per_image * bs`` with a dearer per-image cost beyond
batch 8 (cache effects): the best images/second is at batch 8.
"""

from __future__ import annotations

import time

import pytest
import torch

from biasscope.models import ModelAdapter, batching


def _cost(bs: int) -> float:
    """Seconds per pass: images/second 45, 143, 222, 160, 185 at batch 1, 4, 8, 16, 32 (margins far
    above scheduling jitter)."""
    per_image = 0.002 if bs <= 8 else 0.005
    return 0.02 + per_image * bs


@pytest.fixture
def adapter() -> ModelAdapter:
    return ModelAdapter(name="lin", model=torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2)),
                        class_names=["a", "b"], input_size=4, target_layer=None, supports_hooks=False)


@pytest.fixture
def timed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def fake_run(_adapter, x, _backward, _engine=None) -> None:
        calls.append(x.shape[0])
        time.sleep(_cost(x.shape[0]))

    monkeypatch.delenv("BIASSCOPE_BATCH_SIZE", raising=False)
    monkeypatch.setattr(batching, "_run", fake_run)
    batching._CACHE.clear()
    return calls


def test_picks_the_best_throughput_and_caches_it(adapter: ModelAdapter, timed: list[int]) -> None:
    assert batching.measure_batch_size(adapter) == 8
    n = len(timed)
    assert batching.measure_batch_size(adapter) == 8  # cached per model, size, device, kind
    assert len(timed) == n
    assert batching.measure_batch_size(adapter, backward=True) == 8  # measured separately
    assert len(timed) > n


def test_budget_never_stops_before_min_tried(adapter: ModelAdapter, timed: list[int]) -> None:
    # with no time budget at all, 1, 4, 8 and 16 are still measured (a loaded machine used to stop at 1)
    assert batching.measure_batch_size(adapter, budget_s=0.0) == 8
    assert set(timed) == {1, 4, 8, 16}


def test_out_of_memory_keeps_the_last_good_size(adapter: ModelAdapter, timed: list[int],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def oom_above_4(_adapter, x, _backward, _engine=None) -> None:
        if x.shape[0] > 4:
            raise RuntimeError("out of memory")
        time.sleep(_cost(x.shape[0]))

    monkeypatch.setattr(batching, "_run", oom_above_4)
    assert batching.measure_batch_size(adapter) == 4


def test_environment_overrides_measurement(adapter: ModelAdapter, timed: list[int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "5")
    assert batching.measure_batch_size(adapter) == 5
    assert timed == []


def test_small_jobs_run_as_one_batch_without_measuring(adapter: ModelAdapter, timed: list[int]) -> None:
    assert adapter.batch_size("backward", work=3) == 3
    assert adapter.batch_size("forward", work=1) == 1
    assert timed == [] and adapter._batch_sizes == {}
    assert adapter.batch_size("forward", work=100) == 8  # a big job measures once, then it is known
    assert adapter.batch_size("forward", work=3) == 8
    x = torch.rand(20, 3, 4, 4)
    torch.testing.assert_close(adapter.probabilities(x), adapter.probabilities(x, batch_size=20))


def test_out_of_memory_keeps_the_last_good_size_but_real_errors_propagate(adapter, monkeypatch) -> None:
    monkeypatch.delenv("BIASSCOPE_BATCH_SIZE", raising=False)
    batching._CACHE.clear()

    def oom_above_4(_adapter, x, _backward, _engine=None) -> None:
        if x.shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(_cost(x.shape[0]))  # batch 4 beats batch 1 by 3x: no timing noise decides the answer

    monkeypatch.setattr(batching, "_run", oom_above_4)
    assert batching.measure_batch_size(adapter, candidates=(1, 4, 8, 16)) == 4

    def broken(_adapter, _x, _backward, _engine=None) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(batching, "_run", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        batching.measure_batch_size(adapter, backward=True, candidates=(1, 4))


def test_each_forward_engine_gets_its_own_measurement(adapter: ModelAdapter, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime's best batch differs from PyTorch's (MobileNetV2 on 2 cores: 16 vs 1), so the
    adapter measures forwards per engine and keeps both answers."""

    class FakeEngine:
        def logits(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("timed through _run")

    def engine_cost(bs: int) -> float:  # images/second 40, 114, 200, 320, 267: best at 16
        return 0.025 + (0.0025 * bs if bs <= 16 else 0.0035 * bs)

    seen: list[tuple[int, bool]] = []

    def fake_run(_adapter, x, _backward, engine=None) -> None:
        seen.append((x.shape[0], engine is not None))
        time.sleep(engine_cost(x.shape[0]) if engine is not None else _cost(x.shape[0]))

    monkeypatch.delenv("BIASSCOPE_BATCH_SIZE", raising=False)
    monkeypatch.setattr(batching, "_run", fake_run)
    batching._CACHE.clear()
    eng = FakeEngine()
    assert adapter.batch_size("forward", work=100) == 8
    assert adapter.batch_size("forward", work=100, engine=eng) == 16
    assert any(e for _, e in seen) and any(not e for _, e in seen)
    n = len(seen)
    assert adapter.batch_size("forward", engine=eng) == 16 and adapter.batch_size("forward") == 8
    assert len(seen) == n  # both remembered
    assert adapter.batch_size("backward", work=100, engine=eng) == 8  # gradients always run in PyTorch
    assert not any(e for _, e in seen[n:])
    with pytest.raises(ValueError, match="unknown batch kind"):
        adapter.batch_size("sideways")
