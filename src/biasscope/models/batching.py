"""Pick batch sizes by measuring throughput instead of guessing.

The fastest batch size depends on the model, input size, device and cache sizes (on 2 CPU cores
ResNet-18 is faster per image at batch 8 than at 64). We time a few candidates once per model and
engine and remember the winner for the process and, in a persistent cache (:mod:`.cache`), for the
next processes on this machine: a CLI call or a notebook does not pay for measuring again. The engine
matters: on 2 AVX-512 cores MobileNetV2 is fastest at batch 1 in eager PyTorch (channels_last) but at
batch 16 in ONNX Runtime, where batch 1 is 1.8x slower per image. ``BIASSCOPE_BATCH_SIZE`` overrides the measurement.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

import torch
from torch import nn

from .cache import cpu_model, model_fingerprint, read_entry, write_entry

__all__ = ["SMALL_WORK", "BatchPolicy", "ForwardEngine", "Measurable", "measure_batch_size"]

#: jobs this small run as one batch without measuring the best batch size first
SMALL_WORK = 8


class ForwardEngine(Protocol):
    """Another engine for gradient-free forwards (ONNX Runtime's :class:`~.ort.OrtRunner`)."""

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...


class Measurable(Protocol):
    """What measuring needs of a model (a :class:`~.adapter.ModelAdapter` is one)."""

    name: str
    model: nn.Module
    input_size: int
    device: torch.device
    fast_dtype: torch.dtype | None

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager: ...


class BatchPolicy:
    """One adapter's batch sizes per kind ('forward' or 'backward') and engine: fixed by the caller
    (:meth:`set`) or measured once on first use with enough work (:func:`measure_batch_size`)."""

    KINDS = ("forward", "backward")

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}

    @staticmethod
    def _key(kind: str, engine: ForwardEngine | None) -> str:
        if kind not in BatchPolicy.KINDS:
            raise ValueError(f"unknown batch kind {kind!r}; use 'forward' or 'backward'")
        return kind if engine is None or kind == "backward" else f"{kind}:onnxruntime"

    def set(self, *, forward: int | None = None, backward: int | None = None,
            onnxruntime: int | None = None) -> None:
        """Fix batch sizes instead of measuring them: PyTorch forwards, backward passes, and forwards
        through ONNX Runtime (its best size differs)."""
        for key, size in (("forward", forward), ("backward", backward), ("forward:onnxruntime", onnxruntime)):
            if size is not None:
                if int(size) < 1:
                    raise ValueError(f"{key} batch size must be at least 1, got {size}")
                self._sizes[key] = int(size)

    def known(self) -> dict[str, int]:
        """The sizes fixed or measured so far, by key ('forward', 'forward:onnxruntime', 'backward')."""
        return dict(self._sizes)

    def size(self, adapter: Measurable, kind: str = "forward", work: int | None = None,
             engine: ForwardEngine | None = None) -> int:
        """See :meth:`~.adapter.ModelAdapter.batch_size`."""
        key = self._key(kind, engine)
        if key not in self._sizes:
            if work is not None and work <= SMALL_WORK:
                return max(1, int(work))
            backward = kind == "backward"  # gradients always run in PyTorch
            self._sizes[key] = measure_batch_size(adapter, backward=backward, engine=None if backward else engine)
        return self._sizes[key]

_CACHE: dict[tuple, int] = {}
_LOCK = threading.Lock()
CANDIDATES = (1, 4, 8, 16, 32, 64)
#: candidates up to this size are always measured, whatever the time budget
MIN_TRIED = 16
#: bump when the measurement changes what it answers: entries stored by another version are ignored
MEASURE_VERSION = 2
#: a stored measurement older than this is measured again (a machine busy at that time, a new BIOS)
MAX_AGE = timedelta(days=30)


def measure_batch_size(
    adapter: Measurable,
    *,
    backward: bool = False,
    engine: ForwardEngine | None = None,
    candidates: tuple[int, ...] = CANDIDATES,
    budget_s: float = 3.0,
    min_tried: int = MIN_TRIED,
    persist: bool = True,
) -> int:
    """Return the candidate batch size with the best images/second for this adapter.

    ``engine``: time gradient-free forwards through this engine instead of PyTorch (its best batch
    size differs); measured and cached separately.

    The answer is remembered for the process and, with ``persist``, in the on-disk cache
    (:mod:`.cache`) under a key of everything that changes it: the model's architecture fingerprint,
    input size, forward or backward, engine, dtype, device, CPU model, thread count, torch version and
    the candidates. A stored value that is not one of the candidates is ignored and measured again.

    The measurement's own cost is bounded: each candidate runs twice (the first pass also selects
    kernels for the shape; the faster counts), a third time only when its rate is within 15% of the
    best so far (where one noisy pass could decide). Candidates up to ``min_tried`` are always
    measured (stopping on a time budget alone made a loaded 2-core machine settle on batch 1 for
    backward passes, 3x slower per image than batch 8); beyond that the next candidate is measured
    only while throughput still grows by 5% and its predicted cost fits in ``budget_s``.
    """
    env = os.environ.get("BIASSCOPE_BATCH_SIZE")
    if env:
        return max(1, int(env))
    engine_key = "torch" if engine is None else f"{type(engine).__name__}:{id(engine)}"
    key = (id(adapter.model), adapter.input_size, str(adapter.device), backward, adapter.fast_dtype, engine_key)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    disk_key = _disk_key(adapter, backward, engine, candidates, min_tried) if persist else None
    stored = _stored(disk_key, candidates)
    if stored is not None:
        with _LOCK:
            _CACHE[key] = stored
        return stored
    best_bs, rates = _measure(adapter, backward, engine, candidates, budget_s, min_tried)
    with _LOCK:
        _CACHE[key] = best_bs
    if disk_key is not None:
        write_entry("batch-sizes", disk_key, {
            "batch_size": best_bs, "images_per_s": {str(b): round(r, 3) for b, r in rates.items()},
            "measured": datetime.now(UTC).isoformat(timespec="seconds"), "model": adapter.name,
        })
    return best_bs


def _measure(adapter: Measurable, backward: bool, engine: ForwardEngine | None, candidates: tuple[int, ...],
             budget_s: float, min_tried: int) -> tuple[int, dict[int, float]]:
    """Time the candidates (see :func:`measure_batch_size`); the best one and each one's images/second."""
    s = adapter.input_size
    best_bs, best_rate, start = candidates[0], 0.0, time.perf_counter()
    rates: dict[int, float] = {}
    for bs in candidates:
        if bs > min_tried and best_rate > 0:
            predicted = 2 * bs / best_rate  # seconds for this candidate's two passes at the best rate so far
            if time.perf_counter() - start + predicted > budget_s:
                break
        x = torch.randn(bs, 3, s, s, device=adapter.device)
        try:
            dt = min(_timed(adapter, x, backward, engine), _timed(adapter, x, backward, engine))
            if best_rate > 0 and 0.85 * best_rate < bs / max(dt, 1e-9) < 1.15 * best_rate:
                dt = min(dt, _timed(adapter, x, backward, engine))  # a close call: one more pass decides
        except RuntimeError as exc:  # out of memory: keep the last good size; anything else is a real error
            if "out of memory" not in str(exc).lower() and not isinstance(exc, torch.OutOfMemoryError):
                raise
            break
        rate = rates[bs] = bs / max(dt, 1e-9)
        if rate > best_rate * 1.05:
            best_bs, best_rate = bs, rate
        elif bs >= min_tried:  # no longer growing by 5%: a larger batch will not pay for measuring it
            break
    return best_bs, rates


def _timed(adapter: Measurable, x: torch.Tensor, backward: bool, engine: ForwardEngine | None) -> float:
    t0 = time.perf_counter()
    _run(adapter, x, backward, engine)
    return time.perf_counter() - t0


def _disk_key(adapter: Measurable, backward: bool, engine: ForwardEngine | None, candidates: tuple[int, ...],
              min_tried: int) -> dict | None:
    """What the answer depends on, as the persistent cache's key; None where it cannot be named (an
    engine without a ``graph_digest``: its identity is unknown, so its answer is not stored)."""
    if engine is None:
        engine_name = "torch"
    else:
        digest = getattr(engine, "graph_digest", None)
        if not digest:
            return None
        engine_name = f"{type(engine).__name__}:{getattr(engine, 'version', '')}:{digest}"
    dev = adapter.device
    device = str(dev)
    if dev.type == "cuda":
        device += f":{torch.cuda.get_device_name(dev)}"
    dtype = adapter.fast_dtype if engine is None and not backward else None
    return {
        "version": MEASURE_VERSION, "architecture": type(adapter.model).__qualname__,
        "fingerprint": model_fingerprint(adapter.model), "input_size": int(adapter.input_size),
        "kind": "backward" if backward else "forward", "engine": engine_name, "dtype": str(dtype or torch.float32),
        "device": device, "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "candidates": [int(c) for c in candidates], "min_tried": int(min_tried),
    }


def _stored(disk_key: dict | None, candidates: tuple[int, ...]) -> int | None:
    """The stored batch size for ``disk_key``, if it is one of the candidates and was measured less than
    MAX_AGE ago (anything else: measure again)."""
    if disk_key is None:
        return None
    entry = read_entry("batch-sizes", disk_key) or {}
    bs = entry.get("batch_size")
    try:
        age = datetime.now(UTC) - datetime.fromisoformat(str(entry.get("measured")))
    except ValueError:
        return None
    if isinstance(bs, int) and not isinstance(bs, bool) and bs in candidates and timedelta(0) <= age <= MAX_AGE:
        return bs
    return None


def _run(adapter: Measurable, x: torch.Tensor, backward: bool, engine: ForwardEngine | None = None) -> None:
    if engine is not None:
        engine.logits(x)
    elif backward:
        x = x.requires_grad_(True)
        adapter.logits(x)[:, 0].sum().backward()
    else:
        with torch.no_grad(), adapter.autocast(adapter.fast_dtype is not None):
            adapter.logits(x)
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
