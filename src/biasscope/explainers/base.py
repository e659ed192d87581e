"""The explainer contract: one abstract method, declared parameters, and the Explanation value.

An explainer turns a normalised model batch ``x`` of shape ``(N, 3, S, S)`` and target classes
``(N,)`` into an :class:`Attribution` at (or below) model resolution. The API layer
(:mod:`biasscope.api`) resizes maps to each original image, times the work and adds faithfulness
checks, so an explainer only says how attributions are computed.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import CancelledError, ExplainerError, MethodUnavailableError
from ..models.adapter import ModelAdapter, resize_map

__all__ = [
    "SEED_MAX",
    "Attribution",
    "Explainer",
    "Explanation",
    "Param",
    "ProgressFn",
    "TargetSelector",
    "hooked",
]

#: ``progress(fraction)``; may raise :class:`CancelledError` to stop the work.
ProgressFn = Callable[[float], None]

#: ``(fp32 logits of a chunk (n, C) on CPU, index of the chunk's first image) -> targets (n,)``: picks each
#: image's target from the model's output (e.g. its predicted class, or the likeliest class of its label),
#: so that a prediction and its explanation can share one forward pass
#: (:meth:`Explainer.explain_choosing_targets`)
TargetSelector = Callable[[torch.Tensor, int], torch.Tensor]


#: Seeds are integers in ``[0, SEED_MAX]`` (2**32 - 1, the range every random generator used accepts).
SEED_MAX = 2**32 - 1
#: Words a bool parameter accepts from text (the CLI's ``--param``); JSON clients send true/false.
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})


def _num(v: Any) -> str:
    """A bound or value for a message: whole numbers in full (seeds), others in short form."""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e16):
        try:
            text = str(int(v))
        except ValueError:  # beyond Python's int-to-text limit (4,300 digits)
            return "a number of over 4,300 digits"
        return text if len(text) <= 24 else f"{text[:6]}... ({len(text)} digits)"
    return f"{v:g}"


@dataclass(frozen=True)
class Param:
    """A declared explainer parameter: feeds CLI options, web forms and validation.

    Numeric parameters must declare finite ``min`` and ``max`` (checked when the class is defined),
    so no request can pass NaN, infinity or 1e308 into a method. :meth:`coerce` is the one
    validation every caller uses (API, CLI, web, audits); :meth:`parse_text` first turns CLI text
    into a typed value.
    """

    name: str
    type: type
    default: Any
    help: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.type in (int, float) and not all(
            isinstance(b, int | float) and math.isfinite(b) for b in (self.min, self.max)
        ):
            raise TypeError(f"numeric parameter {self.name!r} must declare finite min and max")

    def _fail(self, what: str, value: Any) -> ExplainerError:
        shown = _num(value) if isinstance(value, int) and not isinstance(value, bool) else repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ExplainerError(f"parameter {self.name} must be {what}, got {shown}")

    def coerce(self, value: Any) -> Any:
        """``value`` checked and converted to ``type`` (numbers may come as text from a form field).

        Refused: non-finite floats, a fractional number for an int (3.7 is not silently 3), anything
        but ``true``/``false`` for a bool, and values outside ``min``/``max`` or ``choices``.
        """
        if value is None or value == "":
            return self.default
        if self.type is bool:
            if isinstance(value, bool | np.bool_):
                return bool(value)
            raise self._fail("true or false", value)
        if self.type is int:
            v = self._to_int(value)
        elif self.type is float:
            v = self._to_float(value)
        elif self.type is str:
            if not isinstance(value, str):
                raise self._fail("text", value)
            v = value.strip()
        else:
            v = self.type(value)
        if self.choices is not None and v not in self.choices:
            raise ExplainerError(f"parameter {self.name} must be one of {', '.join(self.choices)}, got {v!r}")
        if self.min is not None and v < self.min:
            raise ExplainerError(f"parameter {self.name} must be >= {_num(self.min)}, got {_num(v)}")
        if self.max is not None and v > self.max:
            raise ExplainerError(f"parameter {self.name} must be <= {_num(self.max)}, got {_num(v)}")
        return v

    def _to_int(self, value: Any) -> int:
        what = f"int in [{_num(self.min)}, {_num(self.max)}] (a whole number)"
        if isinstance(value, bool | np.bool_):
            raise self._fail(what, value)
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            if math.isfinite(value) and float(value).is_integer():
                return int(value)
            raise self._fail(what, value)
        if isinstance(value, str) and len(value) <= 40:
            try:
                return int(value.strip())
            except ValueError:
                raise self._fail(what, value) from None
        raise self._fail(what, value)

    def _to_float(self, value: Any) -> float:
        what = f"float in [{_num(self.min)}, {_num(self.max)}] (a finite number)"
        if isinstance(value, bool | np.bool_):
            raise self._fail(what, value)
        if isinstance(value, int | float | np.integer | np.floating):
            try:
                v = float(value)
            except OverflowError:  # an int beyond float's range
                raise self._fail(what, value) from None
        elif isinstance(value, str) and len(value) <= 40:
            try:
                v = float(value.strip())
            except ValueError:
                raise self._fail(what, value) from None
        else:
            raise self._fail(what, value)
        if not math.isfinite(v):
            raise self._fail(what, value)
        return v

    def parse_text(self, text: str) -> Any:
        """A typed value from command-line text (bools: true/false, 1/0, yes/no), then :meth:`coerce`."""
        if self.type is bool:
            word = text.strip().lower()
            if word in TRUE_WORDS:
                return True
            if word in FALSE_WORDS:
                return False
            raise self._fail("true or false (also 1/0, yes/no)", text)
        return self.coerce(text)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type.__name__,
            "default": self.default,
            "help": self.help,
            "min": self.min,
            "max": self.max,
            "choices": list(self.choices) if self.choices else None,
        }


@dataclass
class Attribution:
    """What :meth:`Explainer.attribute` returns for a batch.

    ``maps``: ``(N, h, w)`` float32 (model resolution, or coarser for CAMs: resized bilinearly).
    ``segments``: optional ``(N, S, S)`` int superpixel labels; maps are then piecewise constant
    and resized with nearest neighbour. ``checks``: per-image dicts of diagnostics
    (e.g. IG's completeness error). ``weights``: optional per-image superpixel weights.
    """

    maps: torch.Tensor
    checks: list[dict] = field(default_factory=list)
    segments: np.ndarray | None = None
    weights: list[np.ndarray] | None = None
    #: the fp32 logits ``(N, C)`` of the explainer's own forward pass and the targets it used, where
    #: the method can choose targets from them (CAMs with a target selector: prediction and
    #: explanation in one forward pass)
    logits: torch.Tensor | None = None
    targets: torch.Tensor | None = None

    def model_maps(self, size: int) -> np.ndarray:
        """The maps at the model's input resolution ``(N, size, size)``: superpixel weights indexed by
        segment (piecewise constant, never interpolated), else ``maps`` resized bilinearly."""
        if self.segments is not None and self.weights is not None:
            return np.stack([w[seg] for w, seg in zip(self.weights, self.segments)]).astype(np.float32)
        return resize_map(self.maps, (size, size))


@dataclass
class Explanation:
    """One method's explanation of one image for one target class (a value, no rendering)."""

    heatmap: np.ndarray  # (H, W) float32, aligned with the original image
    method: str
    label: str
    signed: bool
    target: int
    target_name: str
    target_probability: float
    params: dict
    seconds: float
    checks: dict = field(default_factory=dict)
    model_heatmap: np.ndarray | None = None  # (S, S) at model resolution
    segments: np.ndarray | None = None  # (H, W) superpixels for LIME/SHAP

    def to_dict(self, *, include_heatmap: bool = False) -> dict:
        d = {
            "method": self.method,
            "label": self.label,
            "signed": self.signed,
            "target": self.target,
            "target_name": self.target_name,
            "target_probability": self.target_probability,
            "params": self.params,
            "seconds": self.seconds,
            "checks": self.checks,
            "shape": list(self.heatmap.shape),
            "min": float(np.min(self.heatmap)),
            "max": float(np.max(self.heatmap)),
        }
        if include_heatmap:
            d["heatmap"] = self.heatmap.tolist()
        return d


class Explainer(ABC):
    """Base class. Subclasses set the class attributes and implement :meth:`attribute`."""

    name: ClassVar[str]
    label: ClassVar[str]
    #: signed methods get a diverging colour map (positive supports the target, negative opposes); the
    #: default of the method: a parameter may change it (:meth:`signed_for`), so readers of one
    #: explanation use the instance's ``signed`` (or the :class:`Explanation`'s), never the class's
    signed: bool = False
    #: what the model must offer: 'gradients', 'hooks' (layer hooks), 'relu' (ReLU modules)
    requires: ClassVar[frozenset[str]] = frozenset()
    params: ClassVar[tuple[Param, ...]] = ()
    #: place in listings (CLI, web forms, API): lower first, equal ones by name; the order a module
    #: happens to be imported in does not matter
    order: ClassVar[int] = 100
    #: slow methods run as background jobs in the web app
    slow: ClassVar[bool] = False
    #: whether :meth:`explain_choosing_targets` chooses the targets from the logits of the method's own
    #: fp32 forward pass (before its backward pass), so that predicting and explaining a batch take one
    #: forward pass, not two (the CAM family); other methods predict in a separate forward pass first
    predicts_in_pass: ClassVar[bool] = False
    description: ClassVar[str] = ""

    def __init__(self, adapter: ModelAdapter, **params: Any) -> None:
        self.adapter = adapter
        self.config = self.configure(params)
        self.signed = self.signed_for(self.config)
        self.check_available(adapter)
        self._progress: ProgressFn | None = None

    @classmethod
    def configure(cls, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every parameter's value from ``params`` (validated and coerced; defaults for the rest)."""
        params = dict(params or {})
        known = {p.name: p for p in cls.params}
        unknown = set(params) - set(known)
        if unknown:
            raise ExplainerError(
                f"{cls.name} has no parameter(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(known) or 'none'}"
            )
        return {n: p.coerce(params.get(n)) for n, p in known.items()}

    @classmethod
    def signed_for(cls, config: Mapping[str, Any]) -> bool:
        """Whether maps made with ``config`` (from :meth:`configure`) are signed: the class's ``signed``
        unless a parameter decides (SmoothGrad's ``absolute``)."""
        return cls.signed

    @classmethod
    def cost(cls, config: dict[str, Any], input_size: int) -> float:
        """Estimated work per image, in forward passes of the model (a backward pass counts as two).

        The web app runs a request in the request thread only while the total stays under its bound
        (``MAX_SYNC_COST``); dearer requests become background jobs. Default: one forward and one
        backward pass (CAMs). Methods whose work grows with a parameter override this.
        """
        return 3.0

    @classmethod
    def check_available(cls, adapter: ModelAdapter) -> None:
        """Raise :class:`MethodUnavailableError` if this model cannot run this method."""
        if "hooks" in cls.requires and (not adapter.supports_hooks or adapter.target_layer is None):
            why = adapter.note or "the model has no convolutional layer to hook"
            raise MethodUnavailableError(f"{cls.label} is unavailable for {adapter.name}: {why}")
        if "relu" in cls.requires and not any(isinstance(m, nn.ReLU | nn.ReLU6) for m in adapter.model.modules()):
            raise MethodUnavailableError(
                f"{cls.label} needs ReLU activations (nn.ReLU or nn.ReLU6 modules, for guided backpropagation); "
                f"{adapter.name} uses other activations"
            )

    @classmethod
    def availability(cls, adapter: ModelAdapter) -> str | None:
        """``None`` if available on ``adapter``, else the reason."""
        try:
            cls.check_available(adapter)
        except MethodUnavailableError as exc:
            return str(exc)
        return None

    @abstractmethod
    def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
        """Attributions for normalised inputs ``x`` ``(N, 3, S, S)`` and class indices ``targets``."""

    def explain_choosing_targets(
        self, x: torch.Tensor, select: TargetSelector, progress: ProgressFn | None = None
    ) -> Attribution:
        """Attributions of ``x`` for the targets ``select`` picks from the model's fp32 logits.

        The returned attribution carries those ``logits`` ``(N, C)`` and the chosen ``targets`` ``(N,)``.
        With :attr:`predicts_in_pass` the logits are the method's own forward pass
        (:meth:`attribute` receives ``select`` in place of targets, and ``select`` may be called once per
        chunk); otherwise a separate gradient-free fp32 forward pass comes first and ``select`` is called
        once with every image's logits.
        """
        if self.predicts_in_pass:
            attr = self.run(x, select, progress)  # type: ignore[arg-type]
            if attr.logits is None or attr.targets is None:
                raise ExplainerError(f"{self.label} declares predicts_in_pass but returned no logits or targets")
            return attr
        logits = self.fp32_logits(x)
        targets = torch.as_tensor(select(logits, 0), dtype=torch.long)
        attr = self.run(x, targets, progress)
        attr.logits, attr.targets = logits, targets
        return attr

    def fp32_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch model's fp32 logits ``(N, C)`` of ``x`` on CPU, without gradients, in forward-sized chunks."""
        bs = self.adapter.batch_size("forward", work=x.shape[0])
        with torch.no_grad():
            return torch.cat([self.adapter.logits(x[i : i + bs]).float().cpu() for i in range(0, x.shape[0], bs)])

    # ------------------------------------------------------------------ helpers for subclasses
    def run(self, x: torch.Tensor, targets: torch.Tensor, progress: ProgressFn | None = None) -> Attribution:
        """:meth:`attribute` with a progress callback (which may cancel)."""
        self._progress = progress
        try:
            return self.attribute(x, targets)
        finally:
            self._progress = None

    def report(self, fraction: float) -> None:
        """Report progress in ``[0, 1]``; raises :class:`CancelledError` if the caller cancelled."""
        if self._progress is not None:
            self._progress(min(max(float(fraction), 0.0), 1.0))

    def generator(self) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(int(self.config.get("seed", 0)))
        return g

    @staticmethod
    def target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits.gather(1, targets.view(-1, 1).to(logits.device)).squeeze(1)


@contextlib.contextmanager
def hooked(handles: list) -> Iterator[list]:
    """Remove every hook handle in ``handles`` on exit, also after errors."""
    try:
        yield handles
    finally:
        for h in handles:
            h.remove()
        handles.clear()


__all__ += ["CancelledError"]
