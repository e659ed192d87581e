"""Pick batch sizes by measuring throughput instead of guessing.

The fastest batch size depends on the model, input size, device and cache sizes (on 2 CPU cores
ResNet-18 is faster per image at batch 8 than at 64). We time a few candidates once per model and
engine and remember the winner for the process. The engine matters: on 2 AVX-512 cores MobileNetV2 is
fastest at batch 1 in eager PyTorch (channels_last) but at batch 16 in ONNX Runtime, where batch 1 is
1.8x slower per image. ``BIASSCOPE_BATCH_SIZE`` overrides the measurement.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from .adapter import ModelAdapter

__all__ = ["ForwardEngine", "measure_batch_size"]


class ForwardEngine(Protocol):
    """Another engine for gradient-free forwards (ONNX Runtime's :class:`~.ort.OrtRunner`)."""

    def logits(self, x: torch.Tensor) -> torch.Tensor: ...

_CACHE: dict[tuple, int] = {}
_LOCK = threading.Lock()
CANDIDATES = (1, 4, 8, 16, 32, 64)
#: candidates up to this size are always measured, whatever the time budget
MIN_TRIED = 16


def measure_batch_size(
    adapter: ModelAdapter,
    *,
    backward: bool = False,
    engine: ForwardEngine | None = None,
    candidates: tuple[int, ...] = CANDIDATES,
    budget_s: float = 3.0,
    min_tried: int = MIN_TRIED,
    repeats: int = 2,
) -> int:
    """Return the candidate batch size with the best images/second for this adapter.

    ``engine``: time gradient-free forwards through this engine instead of PyTorch (its best batch
    size differs); measured and cached separately.

    Each candidate is warmed up once (kernel selection for the shape) and timed ``repeats`` times
    (the fastest counts: robust to other processes' load). Candidates up to ``min_tried`` are always
    measured; beyond that it stops once throughput drops or the time budget is used. (Stopping on
    the budget alone made a loaded 2-core machine settle on batch 1 for backward passes, 3x
    slower per image than batch 8: see bench/.)
    """
    env = os.environ.get("BIASSCOPE_BATCH_SIZE")
    if env:
        return max(1, int(env))
    engine_key = "torch" if engine is None else f"{type(engine).__name__}:{id(engine)}"
    key = (id(adapter.model), adapter.input_size, str(adapter.device), backward, adapter.fast_dtype, engine_key)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    s = adapter.input_size
    best_bs, best_rate, start = candidates[0], 0.0, time.perf_counter()
    for bs in candidates:
        x = torch.randn(bs, 3, s, s, device=adapter.device)
        try:
            _run(adapter, x, backward, engine)  # warm-up
            dt = float("inf")
            for _ in range(max(1, repeats)):
                t0 = time.perf_counter()
                _run(adapter, x, backward, engine)
                dt = min(dt, time.perf_counter() - t0)
        except RuntimeError as exc:  # out of memory: keep the last good size; anything else is a real error
            if "out of memory" not in str(exc).lower() and not isinstance(exc, torch.OutOfMemoryError):
                raise
            break
        rate = bs / max(dt, 1e-9)
        if rate > best_rate * 1.05:
            best_bs, best_rate = bs, rate
        elif rate < best_rate * 0.9 and bs >= min_tried:
            break
        if time.perf_counter() - start > budget_s and bs >= min_tried:
            break
    with _LOCK:
        _CACHE[key] = best_bs
    return best_bs


def _run(adapter: ModelAdapter, x: torch.Tensor, backward: bool, engine: ForwardEngine | None = None) -> None:
    if engine is not None:
        engine.logits(x)
    elif backward:
        x = x.requires_grad_(True)
        adapter.logits(x)[:, 0].sum().backward()
    else:
        with torch.no_grad(), adapter._autocast(adapter.fast_dtype is not None):
            adapter.logits(x)
    if adapter.device.type == "cuda":
        torch.cuda.synchronize()
