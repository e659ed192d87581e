"""Reduced precision for gradient-free forwards: the autocast context and the check against fp32.

A model may run its probability-only forwards in bf16/fp16 autocast (``fast_dtype``). With
``precision='auto'`` that choice is checked once per adapter on representative photos
(:mod:`.calibration`) and dropped (fp32 from then on) where it disagrees with fp32.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

__all__ = ["FAST_PROBE", "FAST_PROB_TOL", "PrecisionState", "autocast", "check_precision", "dtype_name"]

#: largest absolute difference of softmax probabilities accepted from a checked reduced-precision
#: forward vs fp32 (bf16 on ResNet-18 with AMX: 7e-4; LIME's probabilities vary by 1e-2 to 1e-1)
FAST_PROB_TOL = 5e-3
#: images per forward when a checked reduced-precision forward is compared with fp32
FAST_PROBE = 16


@dataclass
class PrecisionState:
    """State of the reduced-precision check: what was asked, whether the check is still to run, its verdict."""

    requested: str = "fp32"
    pending: bool = False
    reason: str = ""
    #: the figures of the check once made: images, per split images / max_dp / top1_flips, verdict
    check: dict | None = None
    lock: threading.Lock | None = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def new(cls, fast_dtype: torch.dtype | None, check_fast: bool) -> PrecisionState:
        """The state of a fresh adapter with ``fast_dtype`` configured, checked when ``check_fast``."""
        st = cls(requested="auto" if check_fast else dtype_name(fast_dtype),
                 pending=check_fast and fast_dtype is not None)
        if check_fast and fast_dtype is None:
            st.reason = "no native reduced precision on this hardware (needs an AMX CPU or a GPU); fp32"
        return st


def dtype_name(dtype: torch.dtype | None) -> str:
    """'fp32', 'bf16' or 'fp16' for a forward dtype (None: fp32)."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def autocast(device: torch.device, dtype: torch.dtype | None,
             enabled: bool = True) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` when ``enabled`` and a dtype is given; otherwise a no-op."""
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def compare(images: Sequence[Image.Image], preprocess: Callable[[list[Image.Image]], torch.Tensor],
            logits: Callable[[torch.Tensor], torch.Tensor], fast: Callable[[], contextlib.AbstractContextManager],
            chunk: int = FAST_PROBE) -> dict:
    """Largest |p_fast - p_fp32| and the number of clear top-1 flips over ``images`` (``fast()``: the
    reduced-precision context)."""
    diff, flips = 0.0, 0
    for i in range(0, len(images), chunk):
        x = preprocess(list(images[i : i + chunk]))
        with torch.no_grad():
            want = torch.softmax(logits(x).float(), dim=1).cpu()
            with fast():
                got = torch.softmax(logits(x).float(), dim=1).cpu()
        diff = max(diff, float((got - want).abs().max()))
        top2 = want.topk(min(2, want.shape[1]), dim=1).values
        clear = (top2[:, 0] - top2[:, -1]) > 2 * FAST_PROB_TOL
        flips += int((clear & (got.argmax(1) != want.argmax(1))).sum())
    return {"images": len(images), "max_dp": diff, "top1_flips": flips}


def check_precision(st: PrecisionState, name: str, compare_on: Callable[[list[Image.Image]], dict]) -> bool:
    """Decide a pending check of the reduced-precision dtype ``name`` (see
    :meth:`~.adapter.ModelAdapter.check_precision`): run ``compare_on`` on the calibration and held-out
    photos, record the figures and reason in ``st``; True when the dtype is kept. The caller holds ``st.lock``."""
    from .calibration import representative_split

    splits = dict(zip(("calibration", "held_out"), representative_split()))
    parts = {k: compare_on([im for _, im in v]) for k, v in splits.items() if v}
    ok = len(parts) == 2 and all(p["max_dp"] <= FAST_PROB_TOL and p["top1_flips"] == 0 for p in parts.values())
    st.check = {"images": sum(p["images"] for p in parts.values()), **parts,
                "tolerance": FAST_PROB_TOL, "verdict": name if ok else "fp32"}
    figures = ", ".join(f"{k.replace('_', '-')} {p['images']}: max |dp| {p['max_dp']:.1e}"
                        + (f", top-1 differs on {p['top1_flips']}" if p["top1_flips"] else "")
                        for k, p in parts.items())
    if ok:
        st.reason = (f"{name} matches fp32 on {st.check['images']} representative photos ({figures}; "
                     f"tolerance {FAST_PROB_TOL:.0e})")
    else:
        why = figures or "no representative photos could be loaded"
        st.reason = f"{name} disagrees with fp32 on representative photos ({why}; " \
                    f"tolerance {FAST_PROB_TOL:.0e}); using fp32"
    st.pending = False
    return ok
