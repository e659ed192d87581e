"""ModelAdapter: one loaded classifier with its preprocessing, class names and CAM layer.

Geometry: an image of any size is resized (not cropped) to ``input_size x input_size`` so that
every model pixel maps back onto the whole original image; heatmaps computed at model resolution
are resized back to the original ``H x W``. This keeps explanations and region masks aligned.

The adapter holds the model, its preprocessing, labels and target layer, and delegates the rest:
:mod:`.preprocessing` (resize, normalise, maps back), :mod:`.ort` (the checked ONNX Runtime engine),
:mod:`.precision` (reduced-precision autocast and its check against fp32), :mod:`.batching` (batch
sizes: fixed with :meth:`ModelAdapter.set_batch_sizes` or measured once, cached by :mod:`.cache`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import BiasscopeError, ModelError
from .batching import SMALL_WORK, BatchPolicy
from .ort import BACKENDS, MHA_REASON, MIN_WORK, OrtRunner, OrtState, build_checked_runner, has_fused_attention
from .precision import FAST_PROB_TOL, PrecisionState, autocast, check_precision, compare, dtype_name
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, denormalize, normalize, resize_map, to_unit_tensor

__all__ = ["FAST_PROB_TOL", "IMAGENET_MEAN", "IMAGENET_STD", "SMALL_WORK", "VIEW_INFO_KEY", "ModelAdapter",
           "Prediction", "carry_view", "resize_map"]



@dataclass(frozen=True)
class Prediction:
    """One ranked class for one image."""

    index: int
    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "probability": self.probability}


@dataclass
class ModelAdapter:
    """A classifier ready for prediction and explanation.

    ``model`` maps a normalised ``(N, 3, S, S)`` float tensor to logits ``(N, C)``.
    ``target_layer`` is the default layer for CAM methods (``None`` where hooks are unavailable).
    """

    name: str
    model: nn.Module
    class_names: list[str]
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    target_layer: nn.Module | None = None
    target_layer_name: str | None = None
    #: layout of ``target_layer``'s output: 'auto' (from its shape), 'nchw', 'nhwc' (Swin) or 'tokens'
    #: (ViT ``(N, T, C)``, leading class/register tokens dropped); CAM methods reshape it to a grid
    target_layout: str = "auto"
    supports_hooks: bool = True
    source: str = ""  # where the weights came from, for display
    note: str = ""  # e.g. why a fallback model is in use
    #: autocast dtype used for gradient-free forwards (probabilities only), or None for fp32
    fast_dtype: torch.dtype | None = None
    #: check ``fast_dtype`` against fp32 on representative photos (at warm-up or first use) and drop it
    #: (fp32 from then on) where they disagree by more than FAST_PROB_TOL or on a clear top-1; set for
    #: ``precision='auto'`` (see :meth:`check_precision`)
    check_fast: bool = False
    #: engine for gradient-free fp32 forwards: 'torch', 'onnxruntime' or 'auto' (ONNX Runtime where it
    #: exports and matches PyTorch, see :mod:`biasscope.models.ort`); gradients always use PyTorch
    backend: str = "torch"
    #: the user's original ``.onnx`` file (bytes, self-contained) this model was converted from; ONNX
    #: Runtime runs it directly, before trying an export of ``model``. Pickled with the adapter.
    onnx_source: bytes | None = field(default=None, repr=False, compare=False)
    _ort: OrtState = field(init=False, repr=False)
    _fast: PrecisionState = field(init=False, repr=False)
    _hook_lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _batches: BatchPolicy = field(init=False, repr=False)
    #: the model's input is the whole image resized (False: a crop the adapter cuts, e.g. a face chip)
    whole_image: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self.backend not in BACKENDS:
            raise ModelError(f"unknown backend {self.backend!r}; use {', '.join(BACKENDS)}")
        self._ort = OrtState(requested=self.backend)
        self._fast = PrecisionState.new(self.fast_dtype, self.check_fast)
        self._batches = BatchPolicy()

    def __getstate__(self) -> dict:
        """Picklable (Ray actors, process pools): the lock and the measured batch sizes stay here."""
        state = self.__dict__.copy()
        state.pop("_hook_lock", None)
        state.pop("_ort", None)  # an ONNX Runtime session is rebuilt where the adapter lands
        state["_fast"] = dataclasses.replace(self._fast, lock=None)  # the check's verdict travels
        state["_batches"] = BatchPolicy()
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._hook_lock = threading.RLock()
        self._ort = OrtState(requested=self.backend)
        self._fast = dataclasses.replace(self._fast, lock=threading.Lock())

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_model(self, model: nn.Module, **changes: object) -> ModelAdapter:
        """This adapter over another module of the same architecture (e.g. randomised weights): the same
        preprocessing, labels, backend and precision (the reduced-precision verdict carries over, like
        a pickled copy's), its target layer looked up by name in ``model``, a fresh ONNX Runtime engine
        and fresh batch sizes. ``changes`` replace other fields (``name=...``)."""
        layer = self.target_layer
        if self.target_layer_name:
            layer = dict(model.named_modules()).get(self.target_layer_name)
        elif layer is not None:
            names = {id(m): n for n, m in self.model.named_modules()}
            layer = dict(model.named_modules()).get(names.get(id(layer), ""))
        copy = dataclasses.replace(self, model=model, target_layer=layer, **changes)
        if copy.fast_dtype == self.fast_dtype and copy.check_fast == self.check_fast:
            copy._fast = dataclasses.replace(self._fast, lock=threading.Lock())
        return copy

    def set_batch_sizes(self, *, forward: int | None = None, backward: int | None = None,
                        onnxruntime: int | None = None) -> None:
        """Fix batch sizes instead of measuring them (tests, a known machine, a memory limit): PyTorch
        forwards, backward passes, and forwards through ONNX Runtime where that engine is in use."""
        self._batches.set(forward=forward, backward=backward, onnxruntime=onnxruntime)

    @property
    def batch_sizes(self) -> dict[str, int]:
        """The batch sizes fixed or measured so far ('forward', 'forward:onnxruntime', 'backward')."""
        return self._batches.known()

    def autocast(self, enabled: bool = True) -> contextlib.AbstractContextManager:
        """Context for a gradient-free forward in the reduced-precision ``fast_dtype`` when ``enabled``
        and one is configured (a no-op otherwise)."""
        return autocast(self.device, self.fast_dtype, enabled)

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """Resize RGB images to the model's square input and normalise: ``(N, 3, S, S)``."""
        return self.normalize(to_unit_tensor(images, self.input_size)).to(self.device)

    def check_image(self, image: Image.Image) -> None:
        """Raise a :class:`BiasscopeError` saying why this model cannot take ``image`` (every image fits
        a whole-image classifier; a face-attribute model needs a face). Callers use it to report one
        bad image instead of failing a batch."""

    def map_to_image(
        self, m: np.ndarray, image: Image.Image, *, nearest: bool = False, fill: float = 0.0
    ) -> np.ndarray:
        """A ``(S, S)`` map over the model's input, in ``image``'s pixels ``(H, W)``: resized back
        (the input is the whole image); ``fill`` is for pixels the input does not cover (none here)."""
        return resize_map(m, (image.height, image.width), nearest=nearest)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Normalise a ``[0, 1]`` tensor with this model's mean and std."""
        return normalize(x01, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`normalize`: back to ``[0, 1]`` pixel values."""
        return denormalize(x, self.mean, self.std)

    # ------------------------------------------------------------------ forward
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable forward pass (fp32) on a normalised batch."""
        out = self.model(x.to(self.device))
        if isinstance(out, tuple):  # GoogLeNet/Inception aux outputs in train mode
            out = out[0]
        if hasattr(out, "logits"):
            out = out.logits
        return out

    @torch.no_grad()
    def probabilities(
        self, x: torch.Tensor, *, batch_size: int | None = None, fast: bool | None = None
    ) -> torch.Tensor:
        """Softmax probabilities for a (possibly large) batch, computed in chunks, on CPU.

        ``fast`` uses the adapter's reduced-precision autocast dtype when one is configured.
        """
        use_fast = self.fast_dtype is not None if fast is None else (fast and self.fast_dtype is not None)
        use_fast = use_fast and self.fast_forwards(x)
        runner = None if use_fast else self._ort_runner(x)
        bs = batch_size or self.batch_size(work=x.shape[0], engine=runner)
        outs = []
        for i in range(0, x.shape[0], bs):
            if runner is not None:
                logits = runner.logits(x[i : i + bs])
            else:
                with self.autocast(use_fast):
                    logits = self.logits(x[i : i + bs].to(self.device))
            outs.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(outs) if outs else torch.empty(0, self.num_classes)

    def fast_forwards(self, x: torch.Tensor | None = None) -> bool:
        """Whether gradient-free forwards use the reduced-precision ``fast_dtype`` now.

        With ``check_fast``, the check is made once per adapter, at :meth:`warm_up` or on the first
        call with work ``x`` (whose images do not take part: one request must not decide for all),
        by :meth:`check_precision` on a representative set of photos. Until then and without
        ``check_fast`` this only says whether a fast dtype is configured.
        """
        if self.fast_dtype is not None and self._fast.pending and x is not None and x.shape[0] > 0:
            self.check_precision()
        return self.fast_dtype is not None

    def check_precision(self) -> dict | None:
        """Decide a pending ``precision='auto'``: compare ``fast_dtype`` with fp32 on the representative
        photos (:func:`~.calibration.representative_split`: a calibration and a held-out part, split by
        photo) and keep it only if, on both parts, every softmax probability agrees within FAST_PROB_TOL
        and the top-1 class is equal wherever fp32's top-2 margin is clear (above twice the tolerance).
        Otherwise the adapter runs fp32 from then on. The figures go into ``to_dict()['precision']``.
        Returns the check (None when there was nothing to decide)."""
        st = self._fast
        if self.fast_dtype is None or not st.pending:
            return st.check
        with st.lock:
            if st.pending and not check_precision(st, dtype_name(self.fast_dtype), self._compare_fast):
                self.fast_dtype = None
        return st.check

    def _compare_fast(self, images: Sequence[Image.Image]) -> dict:
        """Largest |p_fast - p_fp32| and the number of clear top-1 flips over ``images``."""
        return compare(images, self.preprocess, self.logits, lambda: self.autocast(True))

    @property
    def active_backend(self) -> str:
        """The engine gradient-free fp32 forwards use now ('torch' until ONNX Runtime is ready)."""
        return self._ort.active

    def _ort_runner(self, x: torch.Tensor) -> OrtRunner | None:
        """The checked ONNX Runtime runner, built on first use with enough work; None for PyTorch."""
        st = self._ort
        if st.runner is not None or st.tried or st.requested == "torch" or self.device.type != "cpu":
            return st.runner
        if st.requested == "auto" and x.shape[0] < MIN_WORK:
            return None
        with st.lock:
            if not st.tried:
                st.tried = True
                st.runner, st.reason = self._build_ort(x[: min(8, x.shape[0])])
                if st.runner is None and st.requested == "onnxruntime":
                    raise ModelError(f"backend onnxruntime is not usable for {self.name}: {st.reason}")
        return st.runner

    def _build_ort(self, probe: torch.Tensor) -> tuple[OrtRunner | None, str]:
        """A runner that matches PyTorch on ``probe`` (see :func:`~.ort.build_checked_runner`); a model
        with fused attention and no ONNX file of its own skips the probe and the export's seconds."""
        if has_fused_attention(self.model) and self.onnx_source is None:
            return None, MHA_REASON
        with torch.no_grad():
            want = torch.softmax(self.logits(probe.to(self.device)).float(), dim=1).cpu()
        return build_checked_runner(self.model, self.input_size, self.onnx_source, probe, want)

    def predict(self, images: Sequence[Image.Image] | Image.Image, *, top: int = 5) -> list[list[Prediction]]:
        """Top-``top`` predictions for each image."""
        probs = self.probabilities(self.preprocess(images))
        return [self.top_predictions(p, top) for p in probs]

    def top_predictions(self, probs: torch.Tensor, top: int = 5) -> list[Prediction]:
        k = max(1, min(top, probs.shape[-1]))
        vals, idx = probs.topk(k)
        return [Prediction(int(i), self.class_names[int(i)], float(v)) for v, i in zip(vals.tolist(), idx.tolist())]

    # ------------------------------------------------------------------ helpers
    def class_index(self, target: int | str) -> int:
        """Resolve a class index or (case-insensitive) class name."""
        if isinstance(target, int) or (isinstance(target, str) and target.strip().isdigit()):
            idx = int(target)
            if not 0 <= idx < self.num_classes:
                raise BiasscopeError(f"class index {idx} out of range 0..{self.num_classes - 1}")
            return idx
        want = str(target).strip().lower()
        lowered = [c.lower() for c in self.class_names]
        if want in lowered:
            return lowered.index(want)
        close = [c for c in self.class_names if want in c.lower()][:5]
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise BiasscopeError(f"unknown class {target!r} for model {self.name}{hint}")

    def batch_size(self, kind: str = "forward", work: int | None = None, engine: OrtRunner | None = None) -> int:
        """Batch size for ``kind`` ('forward' or 'backward'), measured once per adapter and engine.

        ``work``: how many inputs are about to run. A job of at most ``SMALL_WORK`` inputs runs as
        one batch without paying for the measurement (seconds) if none was made yet. ``engine``: the
        ONNX Runtime runner gradient-free forwards go through (its best batch size differs from
        PyTorch's); None for PyTorch.
        """
        return self._batches.size(self, kind, work, engine)

    def warm_up(self) -> None:
        """Do the one-off work of the first jobs now: decide a pending ``precision='auto'`` on the
        representative photos (:meth:`check_precision`), build the forward engine (ONNX Runtime export
        and check, where the backend allows it) and measure forward and backward batch sizes for it
        (or read them from the persistent cache). A server calls this at start-up so that no user's
        first request pays for it (seconds)."""
        self.check_precision()
        s = self.input_size
        probe = torch.rand(MIN_WORK, 3, s, s, device=self.device)
        self.probabilities(probe, batch_size=MIN_WORK, fast=False)  # builds ONNX Runtime where allowed
        self.batch_size("forward", engine=self._ort.runner)
        if self._ort.runner is not None:
            self.batch_size("forward")  # reduced-precision and explicit PyTorch forwards
        self.batch_size("backward")

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        """Serialise work that registers hooks on the shared model (thread safety)."""
        with self._hook_lock:
            yield

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "device": str(self.device),
            "target_layer": self.target_layer_name,
            "supports_hooks": self.supports_hooks,
            "source": self.source,
            "note": self.note,
            "backend": self._ort.describe(),
            "precision": {"requested": self._fast.requested, "active": dtype_name(self.fast_dtype),
                          "checked": self.check_fast, "reason": self._fast.reason, "check": self._fast.check},
        }


#: ``Image.info`` key where an adapter that cuts its own input (a face model) keeps what it found in
#: that image: ``(weakref to the image, ...)``, so that copies Pillow makes (which copy ``info``) are
#: not mistaken for the image itself
VIEW_INFO_KEY = "biasscope.view"


def carry_view(variant: Image.Image, original: Image.Image) -> Image.Image:
    """Let ``variant`` (``original`` with pixels changed in place, e.g. a region removed) be cut where
    ``original`` was: a face model then classifies the same face chip with the changed pixels."""
    found = original.info.get(VIEW_INFO_KEY)
    if found is not None and found[0]() is original:
        variant.info[VIEW_INFO_KEY] = (weakref.ref(variant), *found[1:])
    return variant
