"""Batch-size measurement: picks the best-throughput candidate of a known cost model.

The model pass is replaced by a sleep whose duration is a hand-set function of the batch size,
so the right answer is known: ``overhead + per_image * bs`` with a dearer per-image cost beyond
batch 8 (cache effects): the best images/second is at batch 8.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from biasscope.models import ModelAdapter, batching, cache


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
    assert timed == [] and adapter.batch_sizes == {}
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


# ---------------------------------------------------------------- the persistent cache of measurements


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Each timed pass 'takes' ``_cost(bs)`` seconds without sleeping; returns the batch sizes timed."""
    calls: list[int] = []

    def fake_timed(_adapter, x, _backward, _engine) -> float:
        calls.append(x.shape[0])
        return _cost(x.shape[0])

    monkeypatch.delenv("BIASSCOPE_BATCH_SIZE", raising=False)
    monkeypatch.setattr(batching, "_timed", fake_timed)
    batching._CACHE.clear()
    return calls


def _lin(size: int = 4, hidden: int = 2) -> ModelAdapter:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, hidden))
    return ModelAdapter(name="lin", model=model, class_names=[f"c{i}" for i in range(hidden)], input_size=size,
                        target_layer=None, supports_hooks=False)


def _new_process() -> None:
    """What a new process starts with: no in-process answers (the files on disk stay)."""
    batching._CACHE.clear()


def _entries(root) -> list:
    return sorted((root / "batch-sizes").glob("*.json"))


def test_a_new_process_reuses_the_stored_measurement_without_timing(clock: list[int], _private_cache_dir) -> None:
    assert _lin().batch_size("forward", work=100) == 8
    assert clock and len(_entries(_private_cache_dir)) == 1
    _new_process()
    n = len(clock)
    fresh = _lin()  # another instance of the same architecture, in a fresh state
    assert fresh.batch_sizes == {}
    assert fresh.batch_size("forward", work=100) == 8 and len(clock) == n  # read, not measured


@pytest.mark.parametrize("change", ["input_size", "architecture", "backward", "cpu", "threads", "torch", "dtype"])
def test_any_change_of_the_key_is_a_miss(clock: list[int], _private_cache_dir, change: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    batching.measure_batch_size(_lin())
    _new_process()
    n = len(clock)
    adapter, backward = _lin(), False
    if change == "input_size":
        adapter = _lin(size=5)
    elif change == "architecture":
        adapter = _lin(hidden=3)
    elif change == "backward":
        backward = True
    elif change == "cpu":
        monkeypatch.setattr(batching, "cpu_model", lambda: "another CPU")
    elif change == "threads":
        monkeypatch.setattr(batching.torch, "get_num_threads", lambda: 977)
    elif change == "torch":
        monkeypatch.setattr(batching.torch, "__version__", "0.0.1")
    elif change == "dtype":
        adapter.fast_dtype = torch.bfloat16
    assert batching.measure_batch_size(adapter, backward=backward) == 8
    assert len(clock) > n  # measured again
    assert len(_entries(_private_cache_dir)) == 2  # both answers kept


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xff\xfe\x00", b"[1, 2]", b'{"key": {}, "value": {}}'])
def test_a_corrupt_or_foreign_entry_is_measured_again_and_replaced(clock: list[int], _private_cache_dir,
                                                                   content: bytes) -> None:
    batching.measure_batch_size(_lin())
    (entry,) = _entries(_private_cache_dir)
    entry.write_bytes(content)
    _new_process()
    n = len(clock)
    assert batching.measure_batch_size(_lin()) == 8
    assert len(clock) > n
    assert json.loads(entry.read_text())["value"]["batch_size"] == 8  # a valid entry again


@pytest.mark.parametrize(("field", "value"), [*[("batch_size", v) for v in (7, 0, -8, 10**9, "8", 8.0, True, None)],
                                              ("measured", "2001-01-01T00:00:00+00:00"),  # older than MAX_AGE
                                              ("measured", "2999-01-01T00:00:00+00:00"), ("measured", "yesterday")])
def test_an_impossible_stored_value_is_never_used(clock: list[int], _private_cache_dir, field: str, value) -> None:
    """Only one of the candidates, measured in the last MAX_AGE, is accepted from disk: a tampered or
    stale entry is measured again."""
    batching.measure_batch_size(_lin())
    (entry,) = _entries(_private_cache_dir)
    stored = json.loads(entry.read_text())
    stored["value"][field] = value
    entry.write_text(json.dumps(stored))
    _new_process()
    n = len(clock)
    assert batching.measure_batch_size(_lin()) == 8 and len(clock) > n


def test_writes_are_atomic_and_a_failed_write_keeps_the_old_entry(_private_cache_dir) -> None:
    key = {"k": 1}
    assert cache.write_entry("batch-sizes", key, {"batch_size": 4})

    def crash(*_a, **_k) -> None:  # the process dies between writing the temporary file and renaming it
        raise OSError("disk full")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cache.os, "replace", crash)
        assert not cache.write_entry("batch-sizes", key, {"batch_size": 16})
    assert cache.read_entry("batch-sizes", key) == {"batch_size": 4}
    assert [p.name for p in (_private_cache_dir / "batch-sizes").iterdir()] == [_entries(_private_cache_dir)[0].name]


def test_concurrent_writers_and_readers_never_see_a_partial_entry(_private_cache_dir) -> None:
    key = {"k": "shared"}
    assert cache.write_entry("batch-sizes", key, {"batch_size": 1})
    seen: list[object] = []
    writers_done = threading.Event()

    def writer(i: int) -> None:
        for j in range(30):
            cache.write_entry("batch-sizes", key, {"batch_size": i, "pad": "x" * (1000 * (j % 7))})

    def reader() -> None:
        while not writers_done.is_set() or len(seen) < 50:
            seen.append(cache.read_entry("batch-sizes", key))

    writers = [threading.Thread(target=writer, args=(i,)) for i in (1, 4, 8)]
    read = threading.Thread(target=reader)
    for t in [read, *writers]:
        t.start()
    for t in writers:
        t.join()
    writers_done.set()
    read.join()
    assert all(v is not None and v["batch_size"] in (1, 4, 8) for v in seen)  # always a whole entry
    assert cache.read_entry("batch-sizes", key)["batch_size"] in (1, 4, 8)
    assert len(list((_private_cache_dir / "batch-sizes").iterdir())) == 1  # no temporary file left


def test_an_unwritable_cache_directory_only_costs_the_measurement(clock: list[int], tmp_path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BIASSCOPE_CACHE_DIR", str(blocker / "cache"))
    assert batching.measure_batch_size(_lin()) == 8  # no error


def test_the_cache_can_be_turned_off_and_follows_xdg(clock: list[int], tmp_path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIASSCOPE_CACHE_DIR", "off")
    assert cache.cache_dir() is None
    batching.measure_batch_size(_lin())
    _new_process()
    n = len(clock)
    batching.measure_batch_size(_lin())
    assert len(clock) > n  # nothing was stored
    monkeypatch.delenv("BIASSCOPE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_dir() == tmp_path / "xdg" / "biasscope"
    monkeypatch.setenv("BIASSCOPE_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


def test_an_engine_of_unknown_identity_is_not_stored(clock: list[int], _private_cache_dir) -> None:
    class Anonymous:
        def logits(self, x: torch.Tensor) -> torch.Tensor:
            raise AssertionError("timed through _timed")

    batching.measure_batch_size(_lin(), engine=Anonymous())
    assert _entries(_private_cache_dir) == []


def test_the_measurement_is_bounded(clock: list[int]) -> None:
    """Two passes per candidate (a third only for a close call), and no candidate beyond 16 once the
    rate stops growing: 1, 4, 8 and 16 here, 9 passes, where 3 passes each used to be 12 or more."""
    assert batching.measure_batch_size(_lin()) == 8
    assert sorted(set(clock)) == [1, 4, 8, 16]
    assert len(clock) <= 9
    assert clock.count(16) == 2  # 160 images/s is not within 15% of batch 8's 222: no third pass


def test_the_cache_never_touches_the_users_real_directory() -> None:
    real = Path.home() / ".cache" / "biasscope"
    assert cache.cache_dir() != real and os.environ["BIASSCOPE_CACHE_DIR"]
